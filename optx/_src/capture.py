"""Capturing per-layer input activations and output gradients (for MKOR).

Kronecker-factored methods need, per Dense/Conv layer, the layer's inputs and
the gradient of the loss with respect to its outputs — PyTorch gets them from
forward/backward hooks. Here a small, explicit mechanism returns them next to
the gradients, in one forward/backward pass:

* while the loss runs, the ``__call__`` of ``nnx.Linear``, ``nnx.LinearGeneral``
  and ``nnx.Conv`` (or, for linen, ``nn.Dense``, ``nn.DenseGeneral`` and
  ``nn.Conv`` through ``nn.intercept_methods``) is wrapped: the wrapper records
  the batch mean of the layer's input (conv: of its im2col patches) and passes
  the output through an identity **tap** (a ``jax.custom_vjp``);
* the tap's backward returns the output cotangent unchanged and, as the
  cotangent of a small zero "probe" input of shape ``(fan_out,)``, the reduced
  output-gradient statistic. Differentiating with respect to the probes gives
  the statistics; no output-sized perturbation is allocated and the forward
  values are exactly the model's (tested).

The statistics are MKOR's rank-1 vectors (official ``mkor/utils/factors.py``
``ComputeI``/``ComputeG`` followed by the batch mean of ``low_rank_approx``):

.. math::

  \\bar a = \\frac1N \\sum_{n} \\mathrm{clip}(a_n), \\qquad
  \\bar g = \\frac1N \\sum_{n} \\mathrm{clip}\\big(N\\,∂L/∂y_n\\big),

where for Dense layers ``n`` runs over all rows (batch × tokens) and for conv
layers over samples, with ``a_n`` the patch and ``∂L/∂y_n`` the output gradient
summed over the ``L`` output positions and divided by ``L``; ``clip`` clamps to
``±clip_value`` (official 100). The bias column of ones is **not** included
here: :func:`optx.scale_by_mkor` appends it for layers whose bias it folds in.

Captures are a dict from the kernel's '/'-joined parameter path (e.g.
``'blocks/0/mlp/up/kernel'``) to :class:`LayerStatistics`; pass them to the
optimizer as the ``captures`` extra argument. Layers that run inside
``nnx.scan``/``nnx.vmap``/``nnx.remat`` or a nested ``jit`` are not captured
(their module objects are rebuilt inside the transform), nor linen layers
inside ``nn.scan``/``nn.remat``/``nn.vmap`` (their values live in the lifted
transform's trace); MKOR then derives their statistics from their gradients
(see :func:`optx.scale_by_mkor`). Capturing patches the
layer classes while the loss is traced: do not trace two captures concurrently
from different threads.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optx._src import base


class LayerStatistics(NamedTuple):
    """Rank-1 statistics of one layer (batch axes of stacked layers lead).

    Attributes:
      inputs: ``(*batch, fan_in)`` batch mean of the (clipped) layer inputs.
      output_grads: ``(*batch, fan_out)`` batch mean of the (clipped) output
        gradients scaled by the number of rows.
    """

    inputs: jax.Array
    output_grads: jax.Array


_LOCK = threading.RLock()


# ----------------------------------------------------------------------------
# Statistics of inputs and output cotangents
# ----------------------------------------------------------------------------


def _rows_mean(x: jax.Array, clip_value: float) -> jax.Array:
    x = x.astype(base.compute_dtype(x.dtype))
    return jnp.mean(jnp.clip(x, -clip_value, clip_value), axis=0)


def dense_input_statistic(x: jax.Array, fan_in: int, clip_value: float) -> jax.Array:
    """Mean over all rows of ``x (..., fan_in)`` (clipped elementwise)."""
    return _rows_mean(x.reshape(-1, fan_in), clip_value)


def conv_input_statistic(
    x: jax.Array,
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    padding: Any,
    input_dilation: tuple[int, ...],
    kernel_dilation: tuple[int, ...],
    clip_value: float,
) -> jax.Array:
    """Per-sample mean im2col patch of a channels-last conv input, clipped, batch-meaned.

    Returns ``(prod(kernel_size) * in_channels,)`` flattened in the Flax kernel's
    ``(*window, in)`` order (the fan-in order of :func:`optx.conv_layout`).
    """
    nsp = len(kernel_size)
    x = base.merge_leading(x, nsp + 1)
    lhs_spec = "N" + "HWD"[:nsp] + "C" if nsp <= 3 else None
    if lhs_spec is None:
        raise NotImplementedError("conv capture supports 1 to 3 spatial dimensions")
    rhs_spec = "HWD"[:nsp] + "IO"
    patches = jax.lax.conv_general_dilated_patches(
        x.astype(base.compute_dtype(x.dtype)),
        filter_shape=kernel_size,
        window_strides=strides,
        padding=padding,
        lhs_dilation=input_dilation,
        rhs_dilation=kernel_dilation,
        dimension_numbers=(lhs_spec, rhs_spec, lhs_spec),
    )
    channels = x.shape[-1]
    per_sample = jnp.mean(patches.reshape(patches.shape[0], -1, patches.shape[-1]), axis=1)
    # The patch features come out as (C, *window); the kernel's fan-in is (*window, C).
    per_sample = per_sample.reshape(-1, channels, math.prod(kernel_size))
    per_sample = jnp.swapaxes(per_sample, 1, 2).reshape(per_sample.shape[0], -1)
    return _rows_mean(per_sample, clip_value)


def _output_statistic(ct: jax.Array, kind: str, clip_value: float, fan_out: int, spatial: int):
    ct = ct.astype(base.compute_dtype(ct.dtype))
    if kind == "conv":
        per_sample = ct.reshape(-1, math.prod(ct.shape[ct.ndim - spatial - 1 : -1]), fan_out)
        n = per_sample.shape[0]
        summed = jnp.mean(n * per_sample, axis=1)  # sum over positions / L
        return _rows_mean(summed, clip_value)
    rows = ct.reshape(-1, fan_out)
    return _rows_mean(rows.shape[0] * rows, clip_value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _tap(y: jax.Array, probe: jax.Array, kind: str, clip_value: float, fan_out: int, spatial: int):
    del probe
    return y


def _tap_fwd(y, probe, kind, clip_value, fan_out, spatial):
    return y, jnp.zeros((), probe.dtype)


def _tap_bwd(kind, clip_value, fan_out, spatial, like, ct):
    stat = _output_statistic(ct, kind, clip_value, fan_out, spatial)
    return ct, stat.astype(like.dtype)


_tap.defvjp(_tap_fwd, _tap_bwd)


def tap(y: jax.Array, probe: jax.Array, kind: str, *, clip_value: float = 100.0, spatial: int = 0):
    """Identity on ``y``; the gradient w.r.t. ``probe`` is the output statistic.

    ``kind`` is ``'dense'`` (rows = all leading axes) or ``'conv'`` (``spatial``
    window dimensions before the channel axis; per-sample sums over positions).
    """
    return _tap(y, probe, kind, float(clip_value), int(probe.shape[-1]), int(spatial))


# ----------------------------------------------------------------------------
# Flax NNX
# ----------------------------------------------------------------------------


def _nnx_layer_info(mod: Any) -> tuple[str, int, int] | None:
    """(kind, fan_in, fan_out) of a supported NNX layer, or None."""
    from flax import nnx

    if isinstance(mod, nnx.Conv):
        if mod.feature_group_count != 1:
            return None
        return "conv", math.prod(mod.kernel_size) * mod.in_features, mod.out_features
    if isinstance(mod, nnx.LinearGeneral):
        if mod.batch_axis:
            return None
        return "general", math.prod(mod.in_features), math.prod(mod.out_features)
    if isinstance(mod, nnx.Linear):
        return "dense", mod.in_features, mod.out_features
    return None


def _broadcast(x: Any, n: int) -> tuple[int, ...]:
    if x is None:
        return (1,) * n
    if isinstance(x, int):
        return (x,) * n
    return tuple(x)


def _conv_padding(padding: Any, kernel_size: tuple[int, ...], kernel_dilation: tuple[int, ...]):
    """Lax padding for the patches of a conv whose ``padding`` flax accepts (or None)."""
    n = len(kernel_size)
    if isinstance(padding, str):
        if padding in ("SAME", "VALID"):
            return padding, None
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
        if padding in ("CIRCULAR", "REFLECT"):
            pads = [((k - 1) // 2, k // 2) for k in dilated]
            return "VALID", ({"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding], pads)
        if padding == "CAUSAL" and n == 1:
            return "VALID", ("constant", [(kernel_dilation[0] * (kernel_size[0] - 1), 0)])
        return None, None
    if isinstance(padding, int):
        return [(padding, padding)] * n, None
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) == 1:
        pads = pads * n
    return pads, None


def _conv_statistic(mod: Any, x: jax.Array, clip_value: float) -> jax.Array | None:
    ks = tuple(mod.kernel_size)
    n = len(ks)
    strides = _broadcast(mod.strides, n)
    in_dil = _broadcast(mod.input_dilation, n)
    k_dil = _broadcast(mod.kernel_dilation, n)
    padding, pre = _conv_padding(mod.padding, ks, k_dil)
    if padding is None:
        return None
    if pre is not None:
        mode, pads = pre
        full = [(0, 0)] * (x.ndim - n - 1) + list(pads) + [(0, 0)]
        x = jnp.pad(x, full, mode=mode)
    return conv_input_statistic(x, ks, strides, padding, in_dil, k_dil, clip_value)


def _general_statistic(mod: Any, x: jax.Array, clip_value: float) -> jax.Array:
    """Rows × contracted features of a ``LinearGeneral``/``DenseGeneral`` input."""
    axes = _axes(mod.axis, x.ndim)
    fan_in = math.prod(x.shape[a] for a in axes)
    x = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    return dense_input_statistic(x, fan_in, clip_value)


def _tapped_call(
    mod: Any,
    kind: str,
    x: jax.Array,
    call: Callable[[], jax.Array],
    path: str,
    probe: jax.Array,
    inputs: dict[str, list],
    clip_value: float,
) -> jax.Array:
    """Runs the layer (``call()``), records its input statistic and taps its output."""
    if kind == "conv":
        stat = _conv_statistic(mod, x, clip_value)
    elif kind == "general":
        stat = _general_statistic(mod, x, clip_value)
    else:
        stat = dense_input_statistic(x, x.shape[-1], clip_value)
    y = call()
    if stat is None:
        warnings.warn(
            f"optx capture: layer {path!r} has an unsupported padding; skipped.", stacklevel=3
        )
        return y
    inputs.setdefault(path, []).append(stat)
    if kind == "conv":
        return tap(y, probe, "conv", clip_value=clip_value, spatial=len(mod.kernel_size))
    return tap(y, probe, "dense", clip_value=clip_value)


@contextlib.contextmanager
def _patched_nnx_calls(
    ids: dict[int, str], probes: dict[str, jax.Array], inputs: dict[str, list], clip_value: float
) -> Iterator[None]:
    from flax import nnx

    classes = (nnx.Linear, nnx.LinearGeneral, nnx.Conv)
    originals = {cls: cls.__dict__["__call__"] for cls in classes}

    def wrap(orig: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(orig)
        def call(self: Any, x: jax.Array, *args: Any, **kwargs: Any) -> Any:
            path = ids.get(id(self))
            info = _nnx_layer_info(self) if path is not None else None
            if info is None:
                return orig(self, x, *args, **kwargs)
            return _tapped_call(
                self,
                info[0],
                x,
                lambda: orig(self, x, *args, **kwargs),
                path,
                probes[path],
                inputs,
                clip_value,
            )

        return call

    with _LOCK:
        try:
            for cls, orig in originals.items():
                cls.__call__ = wrap(orig)
            yield
        finally:
            for cls, orig in originals.items():
                cls.__call__ = orig


def _nnx_layers(model: Any) -> dict[str, tuple[str, int, int]]:
    from flax import nnx

    found = {}
    for path, mod in nnx.iter_modules(model):
        info = _nnx_layer_info(mod)
        if info is not None:
            found[base.path_to_str(path)] = info
    return found


def value_grad_and_captures(
    loss_fn: Callable[..., Any],
    model: Any,
    *args: Any,
    wrt: Any = None,
    has_aux: bool = False,
    clip_value: float = 100.0,
) -> tuple[Any, Any, dict[str, LayerStatistics]]:
    """``nnx.value_and_grad(loss_fn)(model, *args)`` plus per-layer statistics.

    Runs ``loss_fn(model, *args)`` once forward and once backward with every
    ``nnx.Linear``/``nnx.LinearGeneral``/``nnx.Conv`` of ``model`` tapped, and
    returns ``(loss, grads, captures)`` (``((loss, aux), grads, captures)`` with
    ``has_aux``). ``grads`` is exactly what ``nnx.grad`` returns (an ``nnx.State``
    of the ``wrt`` filter, ``nnx.Param`` by default); ``captures`` maps each
    captured layer's kernel path to its :class:`LayerStatistics`. Call it inside
    ``nnx.jit``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> from flax import nnx
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> mse = lambda m, x: jnp.mean(m(x) ** 2)
      >>> loss, grads, caps = optx.curvature.value_grad_and_captures(mse, model, jnp.ones((4, 3)))
      >>> caps['kernel'].inputs.shape, caps['kernel'].output_grads.shape
      ((3,), (2,))
    """
    from flax import nnx

    wrt = nnx.Param if wrt is None else wrt
    layers = _nnx_layers(model)
    # Probes in the widest enabled float (f64 under x64), so the output-gradient
    # statistics of an f64 model are not rounded to f32.
    probes = {
        p: jnp.zeros((fan_out,), base.scalar_dtype()) for p, (_, _, fan_out) in layers.items()
    }

    def wrapped(model: Any, probes: dict[str, jax.Array]) -> tuple[jax.Array, Any]:
        ids = {
            id(mod): base.path_to_str(path)
            for path, mod in nnx.iter_modules(model)
            if _nnx_layer_info(mod) is not None
        }
        inputs: dict[str, list] = {}
        with _patched_nnx_calls(ids, probes, inputs, clip_value):
            out = loss_fn(model, *args)
        loss, aux = out if has_aux else (out, None)
        return loss, (aux, inputs)

    grad_fn = nnx.value_and_grad(wrapped, argnums=(nnx.DiffState(0, wrt), 1), has_aux=True)
    (loss, (aux, inputs)), (grads, probe_grads) = grad_fn(model, probes)
    return ((loss, aux) if has_aux else loss), grads, _statistics(inputs, probe_grads)


def _statistics(inputs: dict[str, list], probe_grads: dict[str, Any]) -> dict[str, LayerStatistics]:
    """Averages over the calls of each layer (a layer called twice sums its probe gradients)."""
    return {
        _kernel_path(p): LayerStatistics(sum(v) / len(v), probe_grads[p] / len(v))
        for p, v in inputs.items()
    }


def _kernel_path(module_path: str) -> str:
    return f"{module_path}/kernel" if module_path else "kernel"


# ----------------------------------------------------------------------------
# Flax linen
# ----------------------------------------------------------------------------


def _linen_layer_info(mod: Any) -> tuple[str, int] | None:
    """(kind, fan_out) of a supported linen layer, or None."""
    import flax.linen as nn

    if isinstance(mod, nn.Conv):
        if mod.feature_group_count != 1:
            return None
        return "conv", int(mod.features)
    if isinstance(mod, nn.DenseGeneral):
        if mod.batch_dims:
            return None
        feats = mod.features if isinstance(mod.features, tuple) else (mod.features,)
        return "general", math.prod(feats)
    if isinstance(mod, nn.Dense):
        return "dense", int(mod.features)
    return None


def _trace_state() -> Any:
    """JAX's current trace (as Flax compares them): a layer applied inside a
    lifted transform (``nn.scan``, ``nn.remat``, ``nn.vmap``) runs in another
    trace than the loss, and its values cannot leave it."""
    from jax.extend import core

    return core.get_opaque_trace_state(convention="flax")


def linen_value_grad_and_captures(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
    clip_value: float = 100.0,
) -> tuple[Any, Any, dict[str, LayerStatistics]]:
    """``jax.value_and_grad(loss_fn)(params, *args)`` plus per-layer statistics (linen).

    ``loss_fn(params, *args)`` must apply a linen model (``model.apply({'params':
    params}, ...)``); every ``nn.Dense``/``nn.DenseGeneral``/``nn.Conv`` call is
    intercepted with ``nn.intercept_methods``. A first abstract pass
    (``jax.eval_shape``) finds the layers; captures are keyed by the kernel path
    inside ``params`` (e.g. ``'Dense_0/kernel'``).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> import flax.linen as nn
      >>> model = nn.Dense(2)
      >>> x = jnp.ones((4, 3))
      >>> params = model.init(jax.random.key(0), x)['params']
      >>> loss_fn = lambda p, x: jnp.mean(model.apply({'params': p}, x) ** 2)
      >>> loss, grads, caps = optx.curvature.linen_value_grad_and_captures(loss_fn, params, x)
      >>> sorted(caps)
      ['kernel']
    """
    import flax.linen as nn

    found: dict[str, tuple[str, int]] = {}
    outer: list[Any] = []  # the trace of the loss (a layer inside a lifted transform has another)

    def discover(next_fun: Callable[..., Any], a: Any, kw: Any, context: Any) -> Any:
        if context.method_name == "__call__" and _trace_state() == outer[0]:
            info = _linen_layer_info(context.module)
            if info is not None:
                found["/".join(context.module.path)] = info
        return next_fun(*a, **kw)

    def traced_loss(p: Any) -> Any:
        outer.append(_trace_state())
        return loss_fn(p, *args)

    with _LOCK, nn.intercept_methods(discover):
        jax.eval_shape(traced_loss, params)
    probes = {p: jnp.zeros((fan_out,), base.scalar_dtype()) for p, (_, fan_out) in found.items()}

    def wrapped(params: Any, probes: dict[str, jax.Array]) -> tuple[jax.Array, Any]:
        inputs: dict[str, list] = {}
        loss_trace = _trace_state()

        def intercept(next_fun: Callable[..., Any], a: Any, kw: Any, context: Any) -> Any:
            mod = context.module
            info = _linen_layer_info(mod) if context.method_name == "__call__" else None
            path = "/".join(mod.path)
            if info is None or path not in probes or _trace_state() != loss_trace:
                return next_fun(*a, **kw)
            return _tapped_call(
                mod,
                info[0],
                a[0],
                lambda: next_fun(*a, **kw),
                path,
                probes[path],
                inputs,
                clip_value,
            )

        with nn.intercept_methods(intercept):
            out = loss_fn(params, *args)
        loss, aux = out if has_aux else (out, None)
        return loss, (aux, inputs)

    with _LOCK:
        (loss, (aux, inputs)), (grads, probe_grads) = jax.value_and_grad(
            wrapped, argnums=(0, 1), has_aux=True
        )(params, probes)
    return ((loss, aux) if has_aux else loss), grads, _statistics(inputs, probe_grads)


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(a % ndim for a in axes)
