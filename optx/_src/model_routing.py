"""Routing from a model's structure: :func:`router_for`.

Names alone cannot route every model: linen calls a model's last layer
``Dense_1``, an NNX conv may be called ``c1``, a scanned block's down-projection
may be called ``out``. :func:`router_for` reads the model instead — the type of
the module that owns each parameter decides its layout — and, given example
inputs, the call order decides which layer is the output layer: the last layer
applied, whatever its name (stacked too: the head of an ``nnx.vmap``/``nn.vmap``
ensemble), and none when that is a tied ``Embed.attend``. Only without a call
order (an NNX model without example inputs) do names say which layers are
output layers (``head``, ``classifier``, a top-level ``fc``/``out_proj``, ...; never
a stacked one), besides the last layer of an ``nnx.Sequential``.

* **NNX** (``flax.nnx.Module``): the module graph is walked
  (``nnx.iter_graph``); only ``nnx.Param`` variables are routed (BatchNorm
  statistics, RNG keys and counts, caches are never listed). Leading axes that
  ``nnx.vmap``/``nnx.scan`` added to a variable (its shape against the shape the
  module declares, e.g. ``(in_features, out_features)``) are batch axes. With
  example inputs, one abstract call (``nnx.eval_shape``) records the order in
  which ``Linear``/``LinearGeneral``/``Einsum``/``Conv``/``ConvTranspose``
  modules and ``Embed.attend`` are applied (their ``__call__`` is wrapped for
  the duration of that call; each layer module of the traced copy carries its
  path as a static attribute, so modules that ``nnx.vmap``/``nnx.scan``/
  ``nnx.remat`` rebuild inside the call are known too).
* **linen** (``flax.linen.Module``, example inputs required): the module
  classes, their attributes, the call order and each layer's input feature
  sizes (read from its call's input, as NNX modules declare ``in_features``) are
  recorded with ``flax.linen.intercept_methods`` during an abstract ``init``
  (``jax.eval_shape``); ``nn.scan``/``nn.vmap`` axes are found the same way
  (an axis ``variable_axes`` put between fan-in and fan-out included).

What each module type means (the ``(batch, fan_in, fan_out)`` matrix view):

=====================================  ==================================================
module                                 routing
=====================================  ==================================================
``Linear`` / ``Dense``                 kernel ``(in, out)``: ``dense``
``LinearGeneral`` / ``DenseGeneral``   kernel ``(*batch_axis, *in_features, *out)``:
                                       ``dense`` (in → fan-in, out → fan-out, batch axes);
                                       inside ``MultiHeadAttention`` / linen
                                       ``MultiHeadDotProductAttention``: ``attention-in``
                                       (``query``/``key``/``value``) and ``attention-out``
``Einsum``                             kernel axes contracted with the input (or summed
                                       away) → fan-in, axes only in the output → fan-out,
                                       axes in input and output → batch: ``einsum``
``Conv`` / ``ConvTranspose``           window + input channels → fan-in: ``conv``
                                       (``transpose_kernel=True`` swaps the channel axes)
``Embed``                              ``embedding`` → ``embedding_group`` (fallback)
``LoRA`` / ``LoRALinear``              ``lora_a (in, r)``, ``lora_b (r, out)`` →
                                       ``lora_group`` (fallback), roles ``'lora_a'``/
                                       ``'lora_b'`` with ``pair`` (for :func:`optx.describe`);
                                       the wrapped kernel gets role ``'lora_base'``
norms (Layer/RMS/Batch/Group/Instance) ``norm`` → fallback
biases of the above                    ``bias/scale`` → fallback
the output layer                       ``head`` → ``output_group`` (fallback)
any other module type                  the name rules (:func:`optx.default_rules`);
                                       leaves of rank >= 2 are marked **guessed**
=====================================  ==================================================

**LoRA.** LoRA factors go to the fallback (AdamW) by default — the standard
LoRA recipe, and an ``r × out`` factor is not a hidden weight matrix whose
orthogonalized update means anything (``lora_group='matrix'`` routes them as
dense matrices instead). Methods that need both factors of an adapter together
(LoRA-Pro, LoRA-SB, SoRA) get them from :func:`optx.lora.lora_pairs`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optx._src import base, layouts, routing
from optx._src.layouts import MatrixLayout
from optx._src.routing import FALLBACK, LORA_A, LORA_B, LORA_BASE, MATRIX, Assignment, Router


@dataclasses.dataclass(frozen=True)
class _Decl:
    """What a module says about one of its parameters."""

    kind: str  # 'matrix' | 'bias' | 'embedding' | 'norm' | 'lora_a' | 'lora_b' | 'unknown'
    rule: str = ""
    declared: tuple[int | None, ...] = ()  # the per-layer shape (None: any size)
    red: tuple[int, ...] = ()  # indices into `declared`
    out: tuple[int, ...] = ()


_UNKNOWN = _Decl("unknown")
_BIAS = _Decl("bias", "bias/scale")
_NORM = _Decl("norm", "norm")


def _tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, Sequence) else (x,)


def _block_decl(
    rule: str, batch: tuple[Any, ...], ins: tuple[Any, ...], outs: tuple[Any, ...]
) -> _Decl:
    nb, ni = len(batch), len(ins)
    red = tuple(range(nb, nb + ni))
    out = tuple(range(nb + ni, nb + ni + len(outs)))
    return _Decl("matrix", rule, (*batch, *ins, *outs), red, out)


def _einsum_decl(einsum_str: Any, kernel_shape: Sequence[int | None]) -> _Decl:
    """Kernel axes of ``'<input>,<kernel>-><output>'``: contracted → fan-in, output-only → fan-out."""
    if not isinstance(einsum_str, str):
        return _UNKNOWN
    s = einsum_str.replace(" ", "")
    if s.count("->") != 1:
        return _UNKNOWN
    lhs, out = s.split("->")
    operands = lhs.split(",")
    if len(operands) != 2:
        return _UNKNOWN
    x, k = operands
    if "." in k or len(k) != len(kernel_shape) or len(set(k)) != len(k):
        return _UNKNOWN
    x, out = x.replace("...", ""), out.replace("...", "")
    red = tuple(i for i, c in enumerate(k) if c not in out)
    fan_out = tuple(i for i, c in enumerate(k) if c in out and c not in x)
    if not red or not fan_out:
        return _UNKNOWN
    return _Decl("matrix", "einsum", tuple(kernel_shape), red, fan_out)


def _conv_decl(kernel_shape: Sequence[int | None], transpose_kernel: bool) -> _Decl:
    n = len(kernel_shape) - 2
    if n < 1:
        return _UNKNOWN
    window = tuple(range(n))
    if transpose_kernel:  # (*window, out, in)
        return _Decl("matrix", "conv", tuple(kernel_shape), (*window, n + 1), (n,))
    return _Decl("matrix", "conv", tuple(kernel_shape), (*window, n), (n + 1,))


def _attention_rule(parent: Any, attention_type: type | None, name_in_parent: Any) -> str:
    if attention_type is not None and isinstance(parent, attention_type):
        return "attention-out" if name_in_parent == "out" else "attention-in"
    return "dense"


def _norm_types(mod: Any) -> tuple[type, ...]:
    names = ("LayerNorm", "RMSNorm", "BatchNorm", "GroupNorm", "InstanceNorm")
    return tuple(t for t in (getattr(mod, n, None) for n in names) if isinstance(t, type))


def _nnx_decl(nnx: Any, module: Any, attr: Any, parent: Any, name_in_parent: Any) -> _Decl:
    if isinstance(module, nnx.LoRA):
        if attr == "lora_a":
            return _Decl("lora_a", "lora-a", (module.in_features, None), (0,), (1,))
        if attr == "lora_b":
            return _Decl("lora_b", "lora-b", (None, module.out_features), (0,), (1,))
        return _UNKNOWN
    if attr == "bias" and isinstance(
        module, (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv, nnx.ConvTranspose)
    ):
        return _BIAS
    if attr != "kernel":
        if isinstance(module, nnx.Embed) and attr == "embedding":
            return _Decl(
                "embedding", "embedding", (module.num_embeddings, module.features), (0,), (1,)
            )
        return _NORM if isinstance(module, _norm_types(nnx)) else _UNKNOWN
    if isinstance(module, nnx.Linear):
        return _Decl("matrix", "dense", (module.in_features, module.out_features), (0,), (1,))
    if isinstance(module, nnx.LinearGeneral):
        rule = _attention_rule(parent, nnx.MultiHeadAttention, name_in_parent)
        batch = tuple(module.batch_axis.values())
        return _block_decl(rule, batch, tuple(module.in_features), tuple(module.out_features))
    if isinstance(module, nnx.Einsum):
        return _einsum_decl(module.einsum_str, module.kernel_shape)
    if isinstance(module, nnx.ConvTranspose):
        return _conv_decl(module.kernel_shape, bool(module.transpose_kernel))
    if isinstance(module, nnx.Conv):
        return _conv_decl(module.kernel_shape, False)
    return _UNKNOWN


def _linen_input_sizes(nn: Any, module: Any, args: Any, kw: Any) -> tuple[int, ...] | None:
    """The kernel's input-side sizes a linen layer call implies (as NNX's ``in_features``).

    ``Dense``/``Conv``/``ConvTranspose``: the input features (over
    ``feature_group_count``); ``DenseGeneral``: its ``batch_dims`` sizes, then its
    ``axis`` sizes. ``None`` when the call's input has no shape.
    """
    x = args[0] if args else kw.get("inputs")
    shape = tuple(getattr(x, "shape", ()))
    if not shape:
        return None
    if isinstance(module, nn.DenseGeneral):
        axes = (*_tuple(module.batch_dims), *_tuple(module.axis))
        if not all(isinstance(a, int) and -len(shape) <= a < len(shape) for a in axes):
            return None
        return tuple(int(shape[a]) for a in axes)
    if isinstance(module, nn.Conv):
        return (int(shape[-1]) // max(int(module.feature_group_count), 1),)
    if isinstance(module, (nn.Dense, nn.ConvTranspose)):
        return (int(shape[-1]),)
    return None


def _linen_decl(
    nn: Any,
    input_sizes: dict[int, tuple[int, ...]],
    module: Any,
    attr: Any,
    parent: Any,
    name_in_parent: Any,
) -> _Decl:
    """``module``'s declaration of ``attr``; ``input_sizes`` (by ``id(module)``) from its call."""
    layer_types = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv, nn.ConvTranspose)
    if attr == "bias" and isinstance(module, layer_types):
        return _BIAS
    if attr != "kernel":
        if isinstance(module, nn.Embed) and attr == "embedding":
            table = (module.num_embeddings, module.features)
            return _Decl("embedding", "embedding", table, (0,), (1,))
        return _NORM if isinstance(module, _norm_types(nn)) else _UNKNOWN
    sizes = input_sizes.get(id(module))
    if isinstance(module, nn.Dense):
        fan_in = sizes[0] if sizes else None
        return _Decl("matrix", "dense", (fan_in, module.features), (0,), (1,))
    if isinstance(module, nn.DenseGeneral):
        rule = _attention_rule(
            parent, getattr(nn, "MultiHeadDotProductAttention", None), name_in_parent
        )
        nb, ni = len(_tuple(module.batch_dims)), len(_tuple(module.axis))
        known = sizes if sizes is not None and len(sizes) == nb + ni else (None,) * (nb + ni)
        return _block_decl(rule, known[:nb], known[nb:], _tuple(module.features))
    if isinstance(module, nn.Einsum):
        return _einsum_decl(module.einsum_str, tuple(module.shape))
    if isinstance(module, (nn.Conv, nn.ConvTranspose)):
        window = _tuple(module.kernel_size)
        transpose = isinstance(module, nn.ConvTranspose) and bool(module.transpose_kernel)
        features, fan_in = module.features, sizes[0] if sizes else None
        shape = (*window, features, fan_in) if transpose else (*window, fan_in, features)
        return _conv_decl(shape, transpose)
    return _UNKNOWN


def _fit(actual: tuple[int, ...], declared: tuple[int | None, ...]) -> tuple[int, ...] | None:
    """Positions of the declared axes in ``actual``; extra (stacked) axes leading if possible."""
    n, k = len(actual), len(declared)
    if k == 0 or n < k:
        return None

    def ok(pos: Sequence[int]) -> bool:
        return all(d is None or actual[p] == d for p, d in zip(pos, declared))

    trailing = tuple(range(n - k, n))
    if ok(trailing):
        return trailing
    for pos in sorted(itertools.combinations(range(n), k), reverse=True):
        if ok(pos):
            return pos
    return None


def _layout(shape: tuple[int, ...], decl: _Decl) -> tuple[MatrixLayout, bool] | None:
    """The layout of ``decl`` on the actual ``shape``, and whether it is stacked."""
    pos = _fit(shape, decl.declared)
    if pos is None:
        return None
    n = len(shape)
    leading = pos == tuple(range(n - len(pos), n))
    red = tuple(pos[i] for i in decl.red)
    out = tuple(pos[i] for i in decl.out)
    if leading:
        red, out = tuple(a - n for a in red), tuple(a - n for a in out)
    return MatrixLayout(red, out), n > len(decl.declared)


def _type_name(t: type) -> str:
    mod = t.__module__ or ""
    if mod.startswith("flax.nnx"):
        return f"nnx.{t.__name__}"
    if mod.startswith("flax.linen"):
        return f"nn.{t.__name__}"
    return t.__name__


def _str_path(path: Sequence[Any]) -> str:
    return "/".join(str(k) for k in path)


def _owner(path: tuple[Any, ...], modules: dict[tuple[Any, ...], Any]) -> tuple[Any, ...]:
    for i in range(len(path) - 1, -1, -1):
        if path[:i] in modules:
            return path[:i]
    return ()


class _Leaf(NamedTuple):
    path: tuple[Any, ...]
    shape: tuple[int, ...]


class _Walk(NamedTuple):
    """What a model trace found: modules, parameter leaves, call order."""

    modules: dict[tuple[Any, ...], Any]
    leaves: list[_Leaf]
    calls: list[tuple[Any, ...] | None]  # layer modules in call order (None: unknown)
    decl: Callable[[Any, Any, Any, Any], _Decl]  # (module, attr, parent, name_in_parent)
    embed_type: type
    sequential_last: tuple[Any, ...] | None = None


# -- NNX ------------------------------------------------------------------------


def _variable_shape(var: Any) -> tuple[int, ...]:
    value = var.get_value() if hasattr(var, "get_value") else var.value
    shape = value.shape if hasattr(value, "shape") else jnp.shape(value)  # ShapeDtypeStruct too
    return tuple(int(d) for d in shape)


_PATH_TAG = "_optx_router_for_path"  # a static attribute, so NNX transforms carry it


def _nnx_calls(
    nnx: Any, model: Any, inputs: tuple[Any, ...], method: Any, kwargs: dict[str, Any]
) -> list[tuple[Any, ...] | None]:
    """The layer modules an abstract call applies, in order (wrapping their methods).

    Inside the traced call each layer module of the (traced copy of the) model
    carries its path as a static attribute, which NNX transforms (``nnx.vmap``,
    ``nnx.scan``, ``nnx.remat``, ``nnx.jit``) copy into the modules they rebuild;
    a layer call whose module has none (one that is not part of the model, e.g.
    built during the call) is recorded as ``None``.
    """
    hooked = [
        (nnx.Linear, "__call__"),
        (nnx.LinearGeneral, "__call__"),
        (nnx.Einsum, "__call__"),
        (nnx.Conv, "__call__"),
        (nnx.ConvTranspose, "__call__"),
        (nnx.Embed, "attend"),
    ]
    layer_types = tuple(cls for cls, _ in hooked)
    calls: list[tuple[Any, ...] | None] = []

    def hook(orig: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(orig)
        def wrapper(self: Any, *args: Any, **kw: Any) -> Any:
            calls.append(vars(self).get(_PATH_TAG))
            return orig(self, *args, **kw)

        return wrapper

    def run(m: Any, *xs: Any) -> Any:
        # `m` is eval_shape's own copy of the model: tagging it leaves the model as it was.
        for p, node in nnx.iter_graph(m):
            if isinstance(node, layer_types):
                object.__setattr__(node, _PATH_TAG, tuple(p))
        if method is None:
            return m(*xs, **kwargs)
        if isinstance(method, str):
            return getattr(m, method)(*xs, **kwargs)
        return method(m, *xs, **kwargs)

    patched = []
    try:
        for cls, name in hooked:
            own = cls.__dict__.get(name)
            setattr(cls, name, hook(getattr(cls, name)))
            patched.append((cls, name, own))
        nnx.eval_shape(run, model, *inputs)
    except Exception as e:
        e.add_note(
            "(raised while optx.router_for traced one call of the model on its example inputs)"
        )
        raise
    finally:
        for cls, name, own in reversed(patched):
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
    return calls


def _sequential_last(
    nnx: Any, model: Any, ids: dict[int, tuple[Any, ...]]
) -> tuple[Any, ...] | None:
    """The last layer module of an ``nnx.Sequential`` model (recursively), if any."""
    layer_types = (
        nnx.Linear,
        nnx.LinearGeneral,
        nnx.Einsum,
        nnx.Conv,
        nnx.ConvTranspose,
        nnx.Embed,
    )
    node = model
    while isinstance(node, nnx.Sequential):
        mods = [m for m in node.layers if isinstance(m, nnx.Module)]
        if not mods:
            return None
        node = mods[-1]
    if node is model or not isinstance(node, layer_types):
        return None
    return ids.get(id(node))


def _walk_nnx(
    nnx: Any, model: Any, inputs: tuple[Any, ...], method: Any, kwargs: dict[str, Any]
) -> _Walk:
    modules: dict[tuple[Any, ...], Any] = {}
    leaves: list[_Leaf] = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            modules[tuple(path)] = node
        elif isinstance(node, nnx.Param):
            leaves.append(_Leaf(tuple(path), _variable_shape(node)))
    ids = {id(m): p for p, m in modules.items()}
    calls = _nnx_calls(nnx, model, inputs, method, kwargs) if inputs else []
    return _Walk(
        modules,
        leaves,
        calls,
        functools.partial(_nnx_decl, nnx),
        nnx.Embed,
        None if inputs else _sequential_last(nnx, model, ids),
    )


# -- linen ----------------------------------------------------------------------


def _walk_linen(
    nn: Any, model: Any, inputs: tuple[Any, ...], method: Any, rngs: Any, kwargs: dict[str, Any]
) -> _Walk:
    if not inputs:
        raise ValueError(
            "router_for(linen_module) needs example inputs (arrays or jax.ShapeDtypeStruct): "
            "linen modules create their parameters when first called, e.g. "
            "optx.router_for(model, jnp.zeros((1, 28, 28, 1)))."
        )
    layer_types = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv, nn.ConvTranspose)
    modules: dict[tuple[Any, ...], Any] = {}
    calls: list[tuple[Any, ...] | None] = []
    input_sizes: dict[int, tuple[int, ...]] = {}  # by id of the module in `modules`

    def interceptor(next_fun: Any, args: Any, kw: Any, context: Any) -> Any:
        m = context.module
        path = tuple(m.path)
        stored = modules.setdefault(path, m)
        name = context.method_name
        if name == "__call__" and isinstance(m, layer_types):
            calls.append(path)
            sizes = _linen_input_sizes(nn, m, args, kw)
            if sizes is not None:
                input_sizes.setdefault(id(stored), sizes)
        elif name == "attend" and isinstance(m, nn.Embed):
            calls.append(path)
        return next_fun(*args, **kw)

    key = jax.random.key(0) if rngs is None else rngs

    def init(*xs: Any) -> Any:
        return model.init(key, *xs, method=method, **kwargs)

    try:
        with nn.intercept_methods(interceptor):
            variables = jax.eval_shape(init, *inputs)
    except Exception as e:
        e.add_note("(raised while optx.router_for initialized the model on its example inputs)")
        raise
    params = variables.get("params", {}) if hasattr(variables, "get") else {}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    leaves = [_Leaf(tuple(base.path_entry_name(k) for k in p), tuple(x.shape)) for p, x in flat]
    decl = functools.partial(_linen_decl, nn, input_sizes)
    return _Walk(modules, leaves, calls, decl, nn.Embed)


# -- the table --------------------------------------------------------------------


class _Output(NamedTuple):
    """Which layer is the model's output layer, and whether names may say so."""

    module: tuple[Any, ...] | None  # the output layer's path (None: no layer is known)
    by_name: bool  # no call order: layers with head names are output layers too


def _output_layer(walk: _Walk) -> _Output:
    """The last layer applied; without a call order, the ``nnx.Sequential``'s last and names.

    A tied output (``Embed.attend`` applied last) leaves no layer as the output layer.
    """
    if not walk.calls:
        return _Output(walk.sequential_last, True)
    last = walk.calls[-1]
    if last is None:
        warnings.warn(
            "optx.router_for could not tell which module the last layer call applied "
            "(a layer module that is not part of the model, e.g. one built during the "
            "call): the output layer is left to the name rules (head, lm_head, out, ...); "
            "check optx.describe.",
            stacklevel=4,
        )
        return _Output(None, True)
    if isinstance(walk.modules.get(last), walk.embed_type):
        return _Output(None, False)
    return _Output(last, False)


_HEAD_PATH = routing.Rule(routing._component(routing.HEAD_NAMES), FALLBACK)
_TOP_HEAD_PATH = routing.Rule(rf"(?i)^({routing.TOP_LEVEL_HEAD_NAMES})(/|$)", FALLBACK)


def _is_head_name(module_path: str) -> bool:
    return bool(module_path) and (
        _HEAD_PATH.matches(module_path, 2) or _TOP_HEAD_PATH.matches(module_path, 2)
    )


def _is_output(
    output: _Output, owner: tuple[Any, ...], decl: _Decl, stacked: bool, module_path: str
) -> bool:
    """Whether the layer at ``owner`` is the output layer.

    The last layer applied is, stacked or not (an ``nnx.vmap``/``nn.vmap``
    ensemble's head is one). The name rules only speak without a call order, and
    never for stacked layers (a scanned block's ``out`` projection is hidden).
    """
    if output.module is not None and owner == output.module:
        return True
    return (
        output.by_name
        and not stacked
        and decl.rule in ("dense", "einsum")
        and _is_head_name(module_path)
    )


def _lora_base_path(
    walk: _Walk, lora_path: tuple[Any, ...], params: set[tuple[Any, ...]]
) -> tuple[Any, ...] | None:
    """The kernel a LoRA module adapts: its LoRALinear's, or its ``base_module``'s."""
    module = walk.modules[lora_path]
    base_module = getattr(module, "base_module", None)
    if base_module is not None:
        for p, m in walk.modules.items():
            if m is base_module and (*p, "kernel") in params:
                return (*p, "kernel")
    parent = _owner(lora_path, walk.modules)
    if lora_path and (*parent, "kernel") in params and lora_path[-1] == "lora":
        return (*parent, "kernel")
    return None


def _matrix_layout_for(
    group: str, router: Router, shape: tuple[int, ...], decl: _Decl
) -> MatrixLayout | None:
    if group not in router.matrix_groups:
        return None
    fitted = _layout(shape, decl) if decl.declared else None
    return fitted[0] if fitted is not None else layouts.DENSE


def _table(
    walk: _Walk,
    name_router: Router,
    output_group: str | None,
    embedding_group: str,
    lora_group: str,
) -> list[Assignment]:
    output = _output_layer(walk) if output_group is not None else None
    param_paths = {leaf.path for leaf in walk.leaves}
    entries: list[Assignment] = []
    bases: dict[tuple[Any, ...], str] = {}
    for leaf in walk.leaves:
        owner = _owner(leaf.path, walk.modules)
        module = walk.modules.get(owner)
        parent_path = _owner(owner, walk.modules) if owner else None
        parent = walk.modules.get(parent_path) if parent_path is not None else None
        name_in_parent = owner[len(parent_path)] if parent_path is not None and owner else None
        attr = leaf.path[len(owner)] if len(leaf.path) > len(owner) else None
        decl = walk.decl(module, attr, parent, name_in_parent) if module is not None else _UNKNOWN
        path, mod_path = _str_path(leaf.path), _str_path(owner)
        mtype = _type_name(type(module)) if module is not None else ""
        common = dict(module=mod_path, module_type=mtype)
        fitted = _layout(leaf.shape, decl) if decl.kind == "matrix" else None
        if decl.kind == "matrix" and fitted is None:
            decl = _UNKNOWN
        if decl.kind == "unknown":
            a = name_router.assign(path, jax.ShapeDtypeStruct(leaf.shape, jnp.float32))
            guessed = a.guessed or len(leaf.shape) >= 2
            entries.append(dataclasses.replace(a, guessed=guessed, **common))
            continue
        if decl.kind == "matrix":
            layout, stacked = fitted  # type: ignore[misc]
            if output is not None and _is_output(output, owner, decl, stacked, mod_path):
                group = output_group
                lay = layout if group in name_router.matrix_groups else None
                entries.append(Assignment(path, leaf.shape, group, lay, "head", **common))  # type: ignore[arg-type]
            else:
                entries.append(Assignment(path, leaf.shape, MATRIX, layout, decl.rule, **common))
            continue
        if decl.kind in (LORA_A, LORA_B):
            lay = _matrix_layout_for(lora_group, name_router, leaf.shape, decl)
            entries.append(
                Assignment(
                    path,
                    leaf.shape,
                    lora_group,
                    lay,
                    decl.rule,
                    role=decl.kind,
                    pair=mod_path,
                    **common,
                )
            )
            base_path = _lora_base_path(walk, owner, param_paths)
            if base_path is not None:
                bases[base_path] = mod_path
            continue
        if decl.kind == "embedding":
            lay = _matrix_layout_for(embedding_group, name_router, leaf.shape, decl)
            entries.append(
                Assignment(path, leaf.shape, embedding_group, lay, "embedding", **common)
            )
            continue
        entries.append(Assignment(path, leaf.shape, FALLBACK, None, decl.rule, **common))
    by_path = {_str_path(p): pair for p, pair in bases.items()}
    return [
        dataclasses.replace(a, role=LORA_BASE, pair=by_path[a.path]) if a.path in by_path else a
        for a in entries
    ]


def router_for(
    model: Any,
    *example_inputs: Any,
    method: str | Callable[..., Any] | None = None,
    rngs: Any = None,
    name_router: Router | None = None,
    output_group: str | None = FALLBACK,
    embedding_group: str = FALLBACK,
    lora_group: str = FALLBACK,
    warn_guessed: bool = True,
    **call_kwargs: Any,
) -> Router:
    """A :class:`~optx.Router` built from a Flax model's structure (NNX or linen).

    The owning module's type decides each parameter's group and layout (see the
    module table in :mod:`optx._src.model_routing`); leading axes added by
    ``nnx.vmap``/``nnx.scan``/``nn.scan``/``nn.vmap`` are batch axes. The output
    layer goes to ``output_group`` (AdamW in the aliases), as embeddings do: with
    example inputs it is the last layer applied, whatever its name (stacked
    too: a vmapped ensemble's head; none when the model ends in a tied
    ``Embed.attend``); without a call order (NNX without example inputs) it is
    the last layer of an ``nnx.Sequential`` and any unstacked layer with a head
    name (``head``, ``classifier``, a top-level ``fc``/``out_proj``, ...). Leaves
    of module types it does not know are routed by ``name_router``'s rules and
    marked as guessed. The result is an ordinary, hashable :class:`~optx.Router`: pass it
    as ``router=`` to any matrix method, extend it with
    :meth:`~optx.Router.with_rules` (those rules override the model table), and
    look at it with :func:`optx.describe`.

    Args:
      model: an ``nnx.Module`` (concrete, or abstract from ``nnx.eval_shape``:
        only shapes are read) or a ``flax.linen.Module``.
      *example_inputs: inputs of one call (arrays or ``jax.ShapeDtypeStruct``;
        only shapes and dtypes are used, nothing is computed). Optional for
        NNX (then the output layer is found only for ``nnx.Sequential`` models
        and by name), required for linen (whose parameter shapes need a call).
      method: the method to call instead of ``__call__`` (a name, or for NNX a
        function ``(model, *inputs, **call_kwargs)``; for linen as
        ``Module.init``'s ``method``).
      rngs: linen only: the ``init`` rngs (default ``jax.random.key(0)``; pass
        ``{'params': k, 'dropout': k}`` for models that need more streams).
      name_router: the router whose rules decide leaves of unknown module types
        (default :func:`optx.default_router`); its ``default_group``,
        ``matrix_groups`` and ``rank_limit`` carry over.
      output_group: group of the output layer's kernel (default ``'fallback'``);
        ``None`` routes it by its type like any other layer.
      embedding_group: group of embedding tables (default ``'fallback'``; a
        matrix group views ``(vocab, d)`` as one dense matrix).
      lora_group: group of LoRA factors (default ``'fallback'``).
      warn_guessed: warn at ``init`` about guessed leaves (see :class:`~optx.Router`).
      **call_kwargs: keyword arguments of the model call (``train=False``, ...).

    Returns:
      the model's :class:`~optx.Router`.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> from flax import nnx
      >>> def make(rngs):
      ...     return nnx.Sequential(
      ...         nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs),
      ...         lambda x: x.reshape(x.shape[0], -1),
      ...         nnx.Linear(4 * 8 * 8, 16, rngs=rngs), nnx.relu,
      ...         nnx.Linear(16, 10, rngs=rngs))
      >>> model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))  # or make(nnx.Rngs(0))
      >>> router = optx.router_for(model, jnp.zeros((1, 8, 8, 1)))
      >>> table = optx.describe(router, model)
      >>> [(r.path, r.group, r.rule) for r in table if r.path.endswith('kernel')]
      [('layers/0/kernel', 'matrix', 'conv'), ('layers/2/kernel', 'matrix', 'dense'), ('layers/4/kernel', 'fallback', 'head')]
      >>> tx = optx.muon(0.02, router=router)
    """
    name_router = routing.as_router(name_router)
    for name, group in (("embedding_group", embedding_group), ("lora_group", lora_group)):
        if not isinstance(group, str) or not group:
            raise TypeError(f"{name} must be a non-empty string, got {group!r}.")
    if output_group is not None and (not isinstance(output_group, str) or not output_group):
        raise TypeError(f"output_group must be a non-empty string or None, got {output_group!r}.")
    nnx = routing._nnx()
    if nnx is not None and isinstance(model, nnx.Module):
        walk = _walk_nnx(nnx, model, example_inputs, method, call_kwargs)
    elif routing._is_linen_module(model):
        import flax.linen as nn

        walk = _walk_linen(nn, model, example_inputs, method, rngs, call_kwargs)
    else:
        raise TypeError(
            f"router_for needs a flax.nnx.Module or a flax.linen.Module, got {type(model).__name__}. "
            "For a bare parameter tree use the name rules: optx.default_router()."
        )
    entries = _table(walk, name_router, output_group, embedding_group, lora_group)
    return Router(
        name_router.rules,
        default_group=name_router.default_group,
        matrix_groups=name_router.matrix_groups,
        warn_guessed=warn_guessed,
        rank_limit=name_router.rank_limit,
        table=entries,
        overrides=name_router.overrides,
    )
