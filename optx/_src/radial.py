"""Projecting out the radial component of updates on scale-invariant weights (AdamP/SGDP).

A weight ``w`` followed by a normalization layer is *scale-invariant*: the loss
does not change along ``w``, so the gradient is orthogonal to it. Momentum
nevertheless accumulates a radial component, which inflates ``‖w‖`` and
shrinks the effective step size. AdamP/SGDP (Heo et al., arXiv 2006.08217,
§3, Algorithms 1 (SGDP) and 2 (AdamP)) detect such weights with a cosine test and remove the
radial component of the update:

.. math::

  \\text{if}\\ \\max_i |\\cos(g_i, w_i)| < δ / \\sqrt{\\dim(w_i)}:\\qquad
  p_i ← p_i - \\hat w_i \\langle \\hat w_i, p_i \\rangle,\\quad
  \\hat w_i = w_i / (\\|w_i\\| + ε)

and the weight decay of that tensor is multiplied by ``wd_ratio``. The test is
tried first per *channel* (``i`` = each output neuron), then per *layer*
(``i`` = the whole matrix); the first view that passes is used.

Orientation: the official code's channel is PyTorch's dim 0 of ``(out, in,
kh, kw)``, i.e. the **output** axis of a Flax kernel ``(in, out)`` /
``(kh, kw, in, out)``. optx reads it from the leaf's :class:`~optx.MatrixLayout`
(rows = output neurons, reduced over the fan-in axes). For a stacked
``(L, in, out)`` leaf each of the L matrices is tested and projected on its own
(the decision, the channel maximum and the layer view are per matrix), as the
L separate PyTorch tensors would be. Leaves without a layout are never
projected (the official code projects every tensor with ≥ 2 dims, including
embeddings and output heads; route those with a layout to reproduce that).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, sharding
from optx._src.adaptive import compute_dtype
from optx._src.layouts import LayoutSpec, ResolvedLayout

NO_PROJECTION, CHANNEL_PROJECTION, LAYER_PROJECTION = 0, 1, 2


class ProjectOutRadialState(NamedTuple):
    """State of :func:`project_out_radial`.

    ``branch`` records, per matrix of every leaf with a layout, which view the
    last step projected (0: none, 1: channel, 2: layer; int32 in
    :meth:`ResolvedLayout.matrix_norm_shape`; ``optax.MaskedNode()`` for leaves
    without a layout).
    """

    count: jax.Array
    branch: base.Updates
    inner_state: optax.OptState


def _blocked_sums(xs: tuple[jax.Array, ...], axes: tuple[int, ...], block: int) -> tuple:
    """``sums_over_axes`` as one variadic reduce over blocks of ``block`` slices."""
    shape = xs[0].shape
    a0, size = axes[0], math.prod(shape[a] for a in axes)
    split = (*shape[:a0], size // block, block, *shape[a0 + len(axes) :])
    keep = tuple(1 if i in axes else n for i, n in enumerate(shape))
    zeros = tuple(jnp.zeros((), x.dtype) for x in xs)

    def add(a: tuple, b: tuple) -> tuple:
        return tuple(x + y for x, y in zip(a, b))

    partial = jax.lax.reduce(tuple(x.reshape(split) for x in xs), zeros, add, (a0 + 1,))
    return tuple(p.reshape(keep) for p in jax.lax.reduce(partial, zeros, add, (a0,)))


def sums_over_axes(
    xs: tuple[jax.Array, ...], axes: tuple[int, ...], block: int = 8
) -> tuple[jax.Array, ...]:
    """``tuple(jnp.sum(x, axes, keepdims=True) for x in xs)``, in one pass on CPU.

    XLA:CPU does not fuse sibling reductions over a leading (non-contiguous)
    axis, so three channel sums cost three passes over memory. When ``axes``
    are consecutive, this splits them into ``(size/block, block)`` and sums
    the products with a single variadic reduce over the ``block`` axis, then
    over the rest: one pass (``benchmarks/elementwise_cost.py``, 2-core CPU:
    AdamP's step 1.68× → 1.30–1.42× ``optax.adamw``). Other platforms (GPU/TPU
    fuse sibling reductions), non-consecutive axes and leaves sharded under an
    Explicit mesh on any axis (JAX has no sharding rule for the split's reshape,
    even when the summed axes are unsharded) use ``jnp.sum``. The
    summation order differs from ``jnp.sum``'s, so results agree to rounding.
    """
    axes = tuple(sorted(a % xs[0].ndim for a in axes))
    size = math.prod(xs[0].shape[a] for a in axes)

    def plain(*xs: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(jnp.sum(x, axis=axes, keepdims=True) for x in xs)

    consecutive = axes == tuple(range(axes[0], axes[0] + len(axes)))
    split_sharded = sharding.is_sharded(xs[0])
    mixed = len({x.dtype for x in xs}) > 1  # complex ⟨g, w⟩ with real norms
    if not consecutive or split_sharded or mixed or size % block or size < 2 * block:
        return plain(*xs)
    return jax.lax.platform_dependent(
        *xs, cpu=lambda *xs: _blocked_sums(xs, axes, block), default=plain
    )


def radial_projection(
    grad: jax.Array,
    param: jax.Array,
    direction: jax.Array,
    layout: ResolvedLayout,
    delta: float = 0.1,
    eps: float = 1e-8,
) -> tuple[jax.Array, jax.Array]:
    """AdamP's test and projection for one tensor; returns ``(direction, branch)``.

    ``cos`` is ``torch.nn.functional.cosine_similarity`` (each norm clamped at
    ``eps``) of the **gradient** and the weight; the projection uses
    ``ŵ = w/(‖w‖ + eps)`` of the pre-step weight and acts on ``direction``.
    All reductions are over the layout's axes (no reshape), so sharded leaves
    stay sharded. ``branch`` has shape ``layout.matrix_norm_shape()``. The
    program is two reductions (the four channel sums ``⟨g, w⟩, ‖g‖², ‖w‖²,
    ⟨w, d⟩`` in one pass, then the per-matrix sums with the count of failing
    channels) and one element-wise pass, with no ``lax.cond``: XLA compiles a
    handful of kernels per distinct leaf shape (issue 17 compile time).
    """
    cdt = compute_dtype(grad.dtype, param.dtype, direction.dtype)
    g, w, d = grad.astype(cdt), param.astype(cdt), direction.astype(cdt)
    red, out = layout.reduction_axes, layout.output_axes
    # Complex leaves: Hermitian inner products ⟨g, w⟩ = Σ ḡ w and |·|² norms.
    products = (jnp.conj(g) * w, base.abs_sq(g), base.abs_sq(w), jnp.conj(w) * d)
    gw_c, gg_c, ww_c, wd_c = sums_over_axes(products, red)

    def abs_cos(gw: jax.Array, gg: jax.Array, ww: jax.Array) -> jax.Array:
        return jnp.abs(gw) / (jnp.maximum(jnp.sqrt(gg), eps) * jnp.maximum(jnp.sqrt(ww), eps))

    rdt = base.real_dtype(cdt)
    channel_bound = delta / jnp.sqrt(jnp.asarray(layout.fan_in, rdt))
    layer_bound = delta / jnp.sqrt(jnp.asarray(layout.fan_in * layout.fan_out, rdt))
    # max_i cos_i < bound  ⇔  no channel fails (a NaN cosine fails, as in max);
    # the failures are counted in the same reduction as the layer sums, so the
    # whole test is two reductions (fewer XLA kernels: compile time).
    failed = jnp.logical_not(abs_cos(gw_c, gg_c, ww_c) < channel_bound).astype(cdt)
    per_matrix = jnp.sum(
        jnp.stack((gw_c, gg_c, ww_c, wd_c, failed)), axis=tuple(a + 1 for a in out), keepdims=True
    )
    gw_l, gg_l, ww_l, wd_l, n_failed = per_matrix[0], *jnp.real(per_matrix[1:3]), *per_matrix[3:]
    channel = jnp.real(n_failed) == 0
    layer = abs_cos(gw_l, gg_l, ww_l) < layer_bound
    branch = jnp.where(channel, CHANNEL_PROJECTION, jnp.where(layer, LAYER_PROJECTION, 0))
    # coef = ⟨w, d⟩/(‖w‖+ε)² per row (channel) or per matrix (layer), so
    # d - w·coef = d - ŵ⟨ŵ, d⟩ with ŵ = w/(‖w‖+ε).
    coef_c = wd_c / jnp.square(jnp.sqrt(ww_c) + eps)
    coef_l = wd_l / jnp.square(jnp.sqrt(ww_l) + eps)
    coef = jnp.where(channel, coef_c, jnp.where(layer, coef_l, jnp.zeros_like(coef_c)))
    projected = (d - w * coef).astype(direction.dtype)
    return projected, branch.astype(jnp.int32)


def _matrix_view_projection(
    grad: jax.Array,
    param: jax.Array,
    direction: jax.Array,
    layout: ResolvedLayout,
    delta: Any,
    eps: float,
) -> tuple[jax.Array, jax.Array]:
    """:func:`radial_projection` on the ``(batch, fan_in, fan_out)`` view when it is free.

    When the layout's axes are already in (batch, fan-in, fan-out) order the
    view is a reshape (a bitcast), and leaves with equal matrix shapes — an
    attention input ``(d, h, k)`` and output ``(h, k, d)`` kernel with ``h·k =
    d``, say — then run identical XLA kernels, which XLA compiles once
    (compile time, issue 17). Leaves whose type carries an Explicit sharding,
    or other axis orders, use their own axes (no reshape).
    """
    in_order = layout.permutation == tuple(range(len(layout.shape)))
    if not in_order or layouts._has_sharded_type(grad) or layouts._has_sharded_type(param):
        return radial_projection(grad, param, direction, layout, delta, eps)
    view = layouts.DENSE.resolve(layout.matrix_shape)
    mats = (x.reshape(layout.matrix_shape) for x in (grad, param, direction))
    projected, branch = radial_projection(*mats, view, delta, eps)
    return projected.reshape(layout.shape), branch.reshape(layout.matrix_norm_shape())


def _decay_factors(mask: base.Mask | None, params: base.Params) -> Any:
    """A tree like ``params`` of 1.0 (decayed) / 0.0 (masked out) Python floats (``mask``:
    optax's, a prefix tree of bools too)."""
    flags = base.expand_mask(mask, params)
    return jax.tree.map(lambda _, keep: 1.0 if keep else 0.0, params, flags)


@hyperparams.validated()
def project_out_radial(
    inner: optax.GradientTransformation,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    weight_decay: base.ScalarOrSchedule = 0.0,
    eps: float = 1e-8,
    *,
    layout: LayoutSpec = None,
    project_inner_state: Callable[[Any, Any], Any] | None = None,
    mask: base.Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` with AdamP's radial projection and the matching decay.

    For every leaf: ``d = inner(g)``; on leaves with a layout,
    ``(d, branch) = radial_projection(g, w, d)`` (see the module docstring);
    then

    .. math::

      u = d + λ\\, ρ\\, w,\\qquad ρ = \\begin{cases} \\text{wd\\_ratio} & \\text{projected} \\\\
                                               1 & \\text{otherwise} \\end{cases}

    so ``chain(project_out_radial(scale_by_adam(), weight_decay=λ),
    scale_by_learning_rate(η))`` is AdamP (decoupled decay ``w(1 − ηλρ)``
    before the step, as the official code). Any direction transform can be
    wrapped (e.g. Lion's sign, :func:`optx.scale_by_momentum`).

    Args:
      inner: the transform producing the direction from the raw gradient.
      delta: δ of the cosine test (0.1).
      wd_ratio: decay multiplier for projected tensors (0.1).
      weight_decay: λ (scalar or schedule of this transform's step count).
      eps: ε of the cosine and of ``ŵ`` (1e-8).
      layout: a :data:`~optx.LayoutSpec` (default: the default router's
        layouts: hidden Dense/conv/attention kernels; embeddings, heads, norms
        and biases are not projected).
      project_inner_state: optional ``(inner_state, projected_directions) ->
        inner_state``, to write the projected direction back into ``inner``'s
        state — the official SGDP with ``nesterov=False``, whose direction
        *is* the momentum buffer, projects the buffer in place.
      mask: optional weight-decay mask (a tree of bools like the params, or a
        callable returning one), as in ``optax.add_decayed_weights``: leaves
        where it is False get no decay (the projection still applies).

    Raises:
      ValueError: from ``update`` if ``params`` is not given.

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights", ICLR 2021, arXiv 2006.08217 (§3, Algorithms 1–2;
      code: github.com/clovaai/AdamP).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.project_out_radial(optax.scale_by_adam(), weight_decay=1e-2)
      >>> params = {'hidden': {'kernel': jnp.ones((3, 4))}}
      >>> u, s = tx.update(params, tx.init(params), params)
      >>> int(s.branch['hidden']['kernel'][0, 0])  # g ∥ w: no projection
      0
    """
    base.check_nonnegative("delta", delta)
    base.check_nonnegative("wd_ratio", wd_ratio)
    base.check_nonnegative("eps", eps)
    if not callable(weight_decay):
        base.check_nonnegative("weight_decay", weight_decay)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: base.Params) -> ProjectOutRadialState:
        branch = layouts.init_per_matrix_state(
            lambda p, lay: sharding.zeros_like_spec(lay.matrix_norm_shape(), jnp.int32, p),
            layout,
            params,
        )
        return ProjectOutRadialState(
            count=jnp.zeros([], jnp.int32), branch=branch, inner_state=inner.init(params)
        )

    def update_fn(
        updates: base.Updates,
        state: ProjectOutRadialState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ProjectOutRadialState]:
        if params is None:
            raise ValueError(
                "project_out_radial (AdamP/SGDP) needs the parameters: call "
                "update(grads, state, params)."
            )
        directions, inner_state = inner.update(updates, state.inner_state, params, **extra)
        wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
        decayed = _decay_factors(mask, params)

        def matrix_leaf(
            g: jax.Array, lay: ResolvedLayout, w: jax.Array, d: jax.Array, _: Any, on: float
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
            projected, branch = _matrix_view_projection(g, w, d, lay, delta, eps)
            ratio = jnp.where(branch > 0, wd_ratio, 1.0)
            cdt = compute_dtype(d.dtype, w.dtype)
            u = projected.astype(cdt) + (on * wd * ratio).astype(cdt) * w.astype(cdt)
            return u.astype(g.dtype), projected, branch

        def other_leaf(g: jax.Array, w: jax.Array, d: jax.Array, branch: Any, on: float) -> Any:
            cdt = compute_dtype(d.dtype, w.dtype)
            u = d.astype(cdt) + jnp.asarray(on * wd, cdt) * w.astype(cdt)
            return u.astype(g.dtype), d, branch

        out = layouts.map_matrix_leaves(
            matrix_leaf,
            layout,
            updates,
            params,
            directions,
            state.branch,
            decayed,
            otherwise=other_leaf,
        )
        new_updates, projected, branch = base.unzip_tree(updates, out, 3)
        if project_inner_state is not None:
            inner_state = project_inner_state(inner_state, projected)
        return new_updates, ProjectOutRadialState(
            count=optax.safe_increment(state.count), branch=branch, inner_state=inner_state
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
