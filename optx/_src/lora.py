"""LoRA plumbing: adapter pairs, trainable masks, scales and merging.

Low-rank adapters (Hu et al., arXiv 2106.09685) add ``ΔW = s·A B`` to a frozen
kernel ``W₀``. In Flax orientation (kernels are ``(fan_in, fan_out)``, NNX's
``nnx.LoRA``) the *down* factor ``lora_a`` is ``(…, fan_in, r)`` and the *up*
factor ``lora_b`` is ``(…, r, fan_out)``:

.. math::

  y = x W₀ + s\\,(x A) B, \\qquad W = W₀ + s\\,A B.

A PyTorch paper's ``A`` (``r × in``) is ``lora_aᵀ`` and its ``B`` (``out × r``)
is ``lora_bᵀ``; its ``BᵀB`` is ``lora_b lora_bᵀ`` and its ``AAᵀ`` is
``lora_aᵀ lora_a``. Leading axes (``…``) are batch axes (adapters of scanned
layers).

Pair-aware transforms (:func:`optx.lora_pro`) must see ``A`` and ``B``
together. :func:`lora_pairs` finds the pairs once, behind one function:

* from an ``nnx.Module``, by walking the module graph for ``nnx.LoRA``
  instances (this also covers ``nnx.LoRALinear`` and optx's
  :class:`optx.lora.ScaledLoRA`, :class:`optx.lora.GatedLoRA`, :class:`optx.lora.LoRAXS`),
  which also finds each adapter's base kernel and forward scale;
* from a parameter tree (arrays, ``ShapeDtypeStruct`` or an ``nnx.State``),
  by the names the routing rules give roles ``'lora_a'``/``'lora_b'``
  (:func:`optx.default_rules`): sibling leaves ``lora_a``/``lora_b``
  (case-insensitive; also linen/PEFT-style ``lora_A/kernel``), plus
  ``lora_gate`` (SoRA) and ``lora_core`` (LoRA-XS / LoRA-SB) siblings and the
  base kernel at ``<parent>/base_module/kernel`` (``nnx.LoRA`` wrapping a
  module), ``<parent>/base_layer/kernel`` (PEFT), ``<parent>/kernel`` or
  ``<grandparent>/kernel`` (``nnx.LoRALinear``'s ``lora`` child).

The module types are those :func:`optx.router_for` gives the roles
``'lora_a'``/``'lora_b'``/``'lora_base'`` (shown by :func:`optx.describe`).

Optimizer states stay per-leaf (DESIGN §2): a pair's state lives on its ``A``
leaf and its ``B`` leaf gets ``optax.MaskedNode()``, so ``optax.chain``,
``inject_hyperparams``, ``nnx.Optimizer`` and orbax checkpoints work
unchanged. An unpaired factor or a rank mismatch raises a ``ValueError``
naming the leaves.

Example:
  >>> import jax.numpy as jnp, optx
  >>> params = {'mlp': {'kernel': jnp.zeros((8, 16)),
  ...                   'lora': {'lora_a': jnp.zeros((8, 2)), 'lora_b': jnp.zeros((2, 16))}}}
  >>> [(p.a, p.b, p.base, p.rank) for p in optx.lora.lora_pairs(params)]
  [('mlp/lora/lora_a', 'mlp/lora/lora_b', 'mlp/kernel', 2)]
  >>> optx.lora.lora_mask(params)['mlp']['kernel']
  False
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optx._src import base, hyperparams

A_NAME = "lora_a"
B_NAME = "lora_b"
GATE_NAME = "lora_gate"
CORE_NAME = "lora_core"
ADAPTER_NAMES = (A_NAME, B_NAME, GATE_NAME, CORE_NAME)
SCALINGS = ("lora", "rslora")

LORA_GROUP = "lora"
FROZEN_GROUP = "frozen"


@dataclasses.dataclass(frozen=True)
class LoRAPair:
    """One adapter: the paths of its leaves and what is known about it.

    Attributes:
      a: path of the down factor ``(…, fan_in, r)``.
      b: path of the up factor ``(…, r, fan_out)``.
      rank: ``r``.
      base: path of the frozen base kernel, when found (else None).
      gate: path of a SoRA gate ``(…, r)``, if any.
      core: path of a LoRA-XS/LoRA-SB core ``(…, r, r)``, if any
        (``ΔW = s·A R B``; ``A`` and ``B`` are then frozen).
      scale: the module's forward scale ``s`` when the pair was found on a
        module (``nnx.LoRA``: 1.0; :class:`optx.lora.ScaledLoRA`: its ``scale``),
        else None.
      source: ``'module'`` or ``'path'`` (how the pair was found).
    """

    a: str
    b: str
    rank: int
    base: str | None = None
    gate: str | None = None
    core: str | None = None
    scale: float | None = None
    source: str = "path"

    @property
    def adapter_paths(self) -> tuple[str, ...]:
        """Every adapter leaf of this pair (factors, gate, core)."""
        return tuple(p for p in (self.a, self.b, self.gate, self.core) if p is not None)

    @property
    def trainable_paths(self) -> tuple[str, ...]:
        """The leaves a LoRA fine-tuning trains: the core only when there is one
        (LoRA-XS/LoRA-SB freeze ``A`` and ``B``), else ``A``, ``B`` (and the gate)."""
        if self.core is not None:
            return (self.core,)
        return tuple(p for p in (self.a, self.b, self.gate) if p is not None)


# ----------------------------------------------------------------------------
# Scales
# ----------------------------------------------------------------------------


def lora_scale(alpha: Any, rank: int, scaling: str = "lora") -> Any:
    """The adapter scale ``s``: ``α/r`` (LoRA) or ``α/√r`` (rsLoRA).

    rsLoRA (Kalajdzievski, arXiv 2312.03732) keeps the update's magnitude
    rank-independent. ``alpha`` may be a traced value (it is only divided).

    Example:
      >>> import optx
      >>> optx.lora.lora_scale(16, 8), optx.lora.lora_scale(16, 4, 'rslora')
      (2.0, 8.0)
    """
    base.check_choice("scaling", scaling, SCALINGS)
    rank = base.check_positive_int("rank", rank)
    a = base._concrete_float(alpha)
    if a is not None:
        if not math.isfinite(a) or a <= 0:
            raise ValueError(f"`alpha` must be a positive finite number, got {alpha!r}.")
        return a / (rank if scaling == "lora" else math.sqrt(rank))
    return alpha / (rank if scaling == "lora" else math.sqrt(rank))


# ----------------------------------------------------------------------------
# Pair detection
# ----------------------------------------------------------------------------


def _nnx() -> Any:
    return sys.modules.get("flax.nnx")


def is_nnx_module(x: Any) -> bool:
    """Whether ``x`` is a Flax NNX module (without importing Flax)."""
    nnx = _nnx()
    return nnx is not None and isinstance(x, nnx.Module)


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(np.shape(leaf))


def _leaves_by_path(tree: Any) -> dict[str, Any]:
    flat, _ = base.flatten_with_paths(tree)
    return dict(flat)


def _check_pair(pair: LoRAPair, leaves: dict[str, Any]) -> LoRAPair:
    """Validates shapes (rank, batch axes, gate/core) and returns the pair with its rank."""
    a_shape, b_shape = _shape(leaves[pair.a]), _shape(leaves[pair.b])
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise ValueError(
            f"LoRA factors must be at least 2-D: '{pair.a}' has shape {a_shape}, "
            f"'{pair.b}' has shape {b_shape}."
        )
    rank = a_shape[-1]
    if b_shape[-2] != rank or a_shape[:-2] != b_shape[:-2]:
        raise ValueError(
            f"LoRA rank mismatch: '{pair.a}' {a_shape} (…, fan_in, r) and '{pair.b}' {b_shape} "
            f"(…, r, fan_out) must share r and their leading (batch) axes."
        )
    batch = a_shape[:-2]
    if pair.gate is not None and _shape(leaves[pair.gate]) != (*batch, rank):
        raise ValueError(
            f"SoRA gate '{pair.gate}' has shape {_shape(leaves[pair.gate])}; "
            f"expected {(*batch, rank)} for rank {rank}."
        )
    if pair.core is not None and _shape(leaves[pair.core]) != (*batch, rank, rank):
        raise ValueError(
            f"LoRA core '{pair.core}' has shape {_shape(leaves[pair.core])}; "
            f"expected {(*batch, rank, rank)} for rank {rank}."
        )
    base_path = pair.base
    if base_path is not None:
        size = math.prod(_shape(leaves[base_path]))
        if size != math.prod(batch) * a_shape[-2] * b_shape[-1]:
            base_path = None  # not the adapted kernel (e.g. a differently shaped sibling)
    return dataclasses.replace(pair, rank=rank, base=base_path)


def _pairs_from_paths(leaves: dict[str, Any], skip: frozenset[str] = frozenset()) -> list[LoRAPair]:
    by_parent: dict[str, dict[str, str]] = {}
    for path in leaves:
        if path in skip:
            continue
        parent, name = _split(path)
        key = name.lower()
        if key == "kernel" and _split(parent)[1].lower() in (A_NAME, B_NAME):
            parent, key = _split(parent)  # linen / PEFT style: `<parent>/lora_A/kernel`
            key = key.lower()
        if key in ADAPTER_NAMES:
            slot = by_parent.setdefault(parent, {})
            if key in slot:
                raise ValueError(
                    f"LoRA adapter '{parent or '/'}' has two '{key}' leaves: "
                    f"'{slot[key]}' and '{path}'."
                )
            slot[key] = path
    pairs = []
    for parent, found in sorted(by_parent.items()):
        a, b = found.get(A_NAME), found.get(B_NAME)
        if a is None and b is None:
            continue  # a gate or core without factors in this tree (frozen A and B)
        if a is None or b is None:
            have = ", ".join(f"'{p}'" for p in found.values())
            missing = B_NAME if a is not None else A_NAME
            raise ValueError(
                f"Unpaired LoRA leaves under '{parent or '/'}': {have} has no sibling "
                f"'{missing}'. Both factors must be in the tree the transform sees "
                "(route them to the same group)."
            )
        grandparent, parent_name = _split(parent)
        candidates = [
            _join(parent, "base_module", "kernel"),
            _join(parent, "base_layer", "kernel"),
            _join(parent, "kernel"),
        ]
        if parent_name.lower() == "lora":  # nnx.LoRALinear keeps its adapter in `lora`
            candidates.append(_join(grandparent, "kernel"))
        base_path = next((c for c in candidates if c in leaves), None)
        pair = LoRAPair(a, b, 0, base_path, found.get(GATE_NAME), found.get(CORE_NAME))
        pairs.append(_check_pair(pair, leaves))
    return pairs


def _pairs_from_module(model: Any) -> list[LoRAPair]:
    nnx = _nnx()
    nodes = dict(nnx.iter_graph(model))
    pairs = []
    for path, node in nodes.items():
        if not isinstance(node, nnx.LoRA):
            continue
        prefix = "/".join(str(p) for p in path)
        base_path = None
        base_module = getattr(node, "base_module", None)
        if base_module is not None and isinstance(
            getattr(base_module, "kernel", None), nnx.Variable
        ):
            base_path = _join(prefix, "base_module", "kernel")
        elif path and isinstance(nodes.get(path[:-1]), nnx.LoRALinear):
            base_path = _join("/".join(str(p) for p in path[:-1]), "kernel")
        gate = _join(prefix, GATE_NAME) if hasattr(node, GATE_NAME) else None
        core = _join(prefix, CORE_NAME) if hasattr(node, CORE_NAME) else None
        scale = float(getattr(node, "scale", 1.0))
        pairs.append(
            LoRAPair(
                _join(prefix, A_NAME),
                _join(prefix, B_NAME),
                0,
                base_path,
                gate,
                core,
                scale,
                "module",
            )
        )
    return pairs


def lora_pairs(model_or_params: Any) -> tuple[LoRAPair, ...]:
    """Every LoRA adapter of a model or parameter tree, as :class:`LoRAPair`\\ s.

    For an ``nnx.Module`` the module graph is walked for ``nnx.LoRA`` instances
    (their forward scale and base kernel are recorded), then any remaining
    ``lora_a``/``lora_b`` siblings in its state are added by name. For a
    parameter tree, pairs are found by name only (see the module docstring).

    Raises:
      ValueError: an ``lora_a`` without a sibling ``lora_b`` (or vice versa),
        two leaves of the same kind in one adapter, factors whose ranks or
        leading axes disagree, or a gate/core whose shape does not match the rank.

    Example:
      >>> import optx
      >>> from flax import nnx
      >>> layer = nnx.LoRALinear(4, 3, lora_rank=2, rngs=nnx.Rngs(0))
      >>> pair, = optx.lora.lora_pairs(layer)
      >>> pair.a, pair.b, pair.base, pair.rank, pair.scale
      ('lora/lora_a', 'lora/lora_b', 'kernel', 2, 1.0)
    """
    if is_nnx_module(model_or_params):
        nnx = _nnx()
        leaves = _leaves_by_path(nnx.state(model_or_params))
        found = [_check_pair(p, leaves) for p in _pairs_from_module(model_or_params)]
        taken = frozenset(x for p in found for x in p.adapter_paths)
        found += _pairs_from_paths(leaves, taken)
    else:
        leaves = _leaves_by_path(model_or_params)
        found = _pairs_from_paths(leaves)
    return tuple(sorted(found, key=lambda p: p.a))


def resolve_pairs(
    tree: Any, pairs: Sequence[LoRAPair] | None, *, method: str = "optx"
) -> tuple[LoRAPair, ...]:
    """The pairs of ``tree``: ``pairs`` if given (checked against the tree), else by name.

    Pairs whose leaves are all absent from ``tree`` (masked away by a
    partition) are dropped; a pair with only some of its leaves present raises.
    """
    leaves = _leaves_by_path(tree)
    if pairs is None:
        return tuple(_pairs_from_paths(leaves))
    out = []
    for p in pairs:
        if not isinstance(p, LoRAPair):
            raise TypeError(f"{method}: `pairs` must hold optx.lora.LoRAPair objects, got {p!r}.")
        present = [x in leaves for x in (p.a, p.b)]
        if not any(present):
            continue
        if not all(present):
            missing = p.b if present[0] else p.a
            raise ValueError(
                f"{method}: LoRA pair ('{p.a}', '{p.b}') is incomplete in this tree: "
                f"'{missing}' is missing (route both factors to the same group)."
            )
        out.append(_check_pair(dataclasses.replace(p, base=None), leaves))
    return tuple(out)


# ----------------------------------------------------------------------------
# Masks, labels, filters, freezing
# ----------------------------------------------------------------------------


def _path_set(tree: Any, pairs: Sequence[LoRAPair] | None, which: str) -> frozenset[str]:
    found = lora_pairs(tree) if pairs is None else tuple(pairs)
    if which == "trainable":
        # Gates and cores are trained even when their (frozen) factors are not in the tree.
        named = {
            path
            for path, _ in base.flatten_with_paths(tree)[0]
            if _split(path)[1].lower() in (GATE_NAME, CORE_NAME)
        }
        return frozenset(x for p in found for x in p.trainable_paths) | named
    return frozenset(x for p in found for x in p.adapter_paths)


def lora_mask(tree: Any, pairs: Sequence[LoRAPair] | None = None) -> Any:
    """A boolean tree: True on the leaves a LoRA fine-tuning trains.

    Those are each pair's ``A``, ``B`` (and SoRA gate), or only its core for
    LoRA-XS/LoRA-SB adapters; base weights and everything else are False. Use
    it with ``optax.masked`` or :func:`freeze_base`.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> p = {'w': {'lora_a': jnp.ones((3, 1)), 'lora_b': jnp.ones((1, 2))}, 'b': jnp.ones(2)}
      >>> optx.lora.lora_mask(p)
      {'b': False, 'w': {'lora_a': True, 'lora_b': True}}
    """
    train = _path_set(tree, pairs, "trainable")
    return base.tree_map_with_path_str(lambda p, _: p in train, tree)


def lora_labels(
    tree: Any,
    pairs: Sequence[LoRAPair] | None = None,
    *,
    lora_group: str = LORA_GROUP,
    other_group: str = "fallback",
) -> Any:
    """Group labels for ``optax.partition``: every adapter leaf → ``lora_group``."""
    adapters = _path_set(tree, pairs, "adapters")
    return base.tree_map_with_path_str(
        lambda p, _: lora_group if p in adapters else other_group, tree
    )


@hyperparams.validated()
def freeze_base(
    tx: optax.GradientTransformation, pairs: Sequence[LoRAPair] | None = None
) -> optax.GradientTransformationExtraArgs:
    """``tx`` on the trainable LoRA leaves (:func:`lora_mask`), zero updates elsewhere.

    For a parameter tree that holds the base weights too (with an
    ``nnx.Optimizer`` prefer ``wrt=optx.lora.lora_filter``, which keeps no state
    for the frozen weights at all).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> p = {'kernel': jnp.ones((3, 2)),
      ...      'lora': {'lora_a': jnp.ones((3, 1)), 'lora_b': jnp.zeros((1, 2))}}
      >>> tx = optx.lora.freeze_base(optax.adam(1e-2))
      >>> u, _ = tx.update(p, tx.init(p), p)
      >>> float(abs(u['kernel']).max())
      0.0
    """

    def labels(tree: Any) -> Any:
        train = _path_set(tree, pairs, "trainable")
        return base.tree_map_with_path_str(
            lambda p, _: LORA_GROUP if p in train else FROZEN_GROUP, tree
        )

    return optax.with_extra_args_support(
        optax.partition({LORA_GROUP: tx, FROZEN_GROUP: optax.set_to_zero()}, labels)
    )


def lora_filter(path: tuple[Any, ...], value: Any) -> bool:
    """An NNX filter selecting the trainable adapter parameters.

    ``nnx.Optimizer(model, tx, wrt=optx.lora.lora_filter)`` trains ``nnx.LoRAParam``
    variables and ``nnx.Param``\\ s named ``lora_a``/``lora_b``/``lora_gate``/
    ``lora_core``; frozen factors (:class:`optx.lora.LoRAFrozen`, LoRA-XS's ``A``
    and ``B``) and base weights are left out (no optimizer state, no update).

    Example:
      >>> import optx
      >>> from flax import nnx
      >>> layer = nnx.LoRALinear(4, 3, lora_rank=2, rngs=nnx.Rngs(0))
      >>> state = nnx.state(layer, optx.lora.lora_filter)
      >>> [(p.a, p.b) for p in optx.lora.lora_pairs(state)], optx.tree_utils.param_count(state)
      ([('lora/lora_a', 'lora/lora_b')], 14)
    """
    nnx = _nnx()
    if nnx is None or not isinstance(value, nnx.Param):
        return False
    if isinstance(value, nnx.LoRAParam):
        return True
    return bool(path) and str(path[-1]).lower() in ADAPTER_NAMES


# ----------------------------------------------------------------------------
# Merging
# ----------------------------------------------------------------------------


def lora_delta(
    a: jax.Array,
    b: jax.Array,
    *,
    scale: float = 1.0,
    gate: jax.Array | None = None,
    core: jax.Array | None = None,
) -> jax.Array:
    """``s·A diag(g) R B`` as a ``(…, fan_in, fan_out)`` matrix (gate/core optional)."""
    cdt = base.compute_dtype(a.dtype, b.dtype)
    left = a.astype(cdt)
    if gate is not None:
        left = left * gate.astype(cdt)[..., None, :]
    if core is not None:
        left = left @ core.astype(cdt)
    return scale * (left @ b.astype(cdt))


def merge_lora(
    model_or_params: Any, pairs: Sequence[LoRAPair] | None = None, *, scale: float | None = None
) -> Any:
    """Folds every adapter into its base kernel: ``W₀ ← W₀ + s·A (diag g) (R) B``.

    The adapter is then reset so the model computes the same function: ``B``
    (or the core ``R`` of a LoRA-XS adapter) is zeroed. A model is updated in
    place and returned; a parameter tree is returned as a new tree with the
    same structure. Base kernels of any shape with the right size are
    accepted (``LinearGeneral``'s ``(d, heads, head_dim)``).

    Args:
      model_or_params: an ``nnx.Module`` or a parameter tree.
      pairs: the adapters (default: :func:`lora_pairs`).
      scale: ``s``; default each pair's module scale, or 1.0 for pairs found
        by name (``nnx.LoRA`` applies no scale).

    Raises:
      ValueError: an adapter whose base kernel was not found.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> p = {'kernel': jnp.zeros((3, 2)),
      ...      'lora': {'lora_a': jnp.ones((3, 1)), 'lora_b': jnp.ones((1, 2))}}
      >>> m = optx.lora.merge_lora(p, scale=0.5)
      >>> float(m['kernel'][0, 0]), float(m['lora']['lora_b'].sum())
      (0.5, 0.0)
    """
    if is_nnx_module(model_or_params):
        nnx = _nnx()
        state = nnx.state(model_or_params)
        found = lora_pairs(model_or_params) if pairs is None else tuple(pairs)
        merged = _merge_tree(state, found, scale)
        nnx.update(model_or_params, merged)
        return model_or_params
    found = lora_pairs(model_or_params) if pairs is None else tuple(pairs)
    return _merge_tree(model_or_params, found, scale)


def _merge_tree(tree: Any, pairs: Sequence[LoRAPair], scale: Any) -> Any:
    leaves = _leaves_by_path(tree)
    new: dict[str, Any] = {}
    for p in pairs:
        if p.base is None or p.base not in leaves:
            raise ValueError(
                f"merge_lora: no base kernel found for the adapter ('{p.a}', '{p.b}'); "
                "expected '<parent>/base_module/kernel' or the kernel next to a 'lora' child."
            )
        s = (p.scale if p.scale is not None else 1.0) if scale is None else scale
        w0 = leaves[p.base]
        delta = lora_delta(
            leaves[p.a],
            leaves[p.b],
            scale=s,
            gate=None if p.gate is None else leaves[p.gate],
            core=None if p.core is None else leaves[p.core],
        )
        cdt = base.compute_dtype(w0.dtype)
        new[p.base] = (w0.astype(cdt) + delta.reshape(w0.shape)).astype(w0.dtype)
        reset = p.core if p.core is not None else p.b
        new[reset] = jnp.zeros_like(leaves[reset])
    return base.tree_map_with_path_str(lambda path, x: new.get(path, x), tree)
