"""Per-matrix robust clipping of updates (ROOT's outlier suppression).

ROOT (He et al., "ROOT: Robust Orthogonalized Optimizer for Neural Network
Training", arXiv 2511.20626) separates the momentum ``M`` of every matrix into
outliers and a robust base before orthogonalizing it. The official code picks
the threshold as a per-matrix quantile of ``|M|`` and applies a soft threshold:

.. math::

  ε = \\mathrm{quantile}_q(|M|) + 10^{-9}, \\qquad
  O = \\mathrm{sign}(M) \\max(|M| - ε, 0), \\qquad B = M - O,

so ``B`` is ``M`` clipped elementwise to ``[−ε, ε]``. The quantile uses
linear interpolation between order statistics, as ``torch.quantile`` (and
``jnp.quantile``'s default ``method='linear'``): with ``N`` entries sorted
``x₍₀₎ ≤ … ≤ x₍N−1₎`` and ``h = q (N − 1)``,
``quantile_q = x₍⌊h⌋₎ + (h − ⌊h⌋)(x₍⌈h⌉₎ − x₍⌊h⌋₎)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout


def matrix_quantile(x: jax.Array, q: Any, layout: ResolvedLayout) -> jax.Array:
    """The ``q``-quantile of each matrix of ``x`` (linear interpolation).

    Returns an array of :meth:`ResolvedLayout.matrix_norm_shape` (reduction and
    output axes kept as size 1), computed in f32 or wider. Batch axes (stacked
    layers, ...) get one quantile each.
    """
    cdt = jnp.promote_types(x.dtype, jnp.float32)
    mats = layouts.to_matrices(x.astype(cdt), layout)
    flat = jnp.reshape(mats, (mats.shape[0], -1))
    qs = jnp.quantile(flat, jnp.asarray(q, cdt), axis=-1, method="linear")
    return jnp.reshape(qs, layout.matrix_norm_shape())


@hyperparams.validated()
def clip_by_quantile(
    quantile: Any = 0.9,
    eps: Any = 1e-9,
    *,
    layout: LayoutSpec = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Soft-thresholds each matrix at a quantile of its magnitudes (ROOT).

    Per matrix ``M`` of the layout (arXiv 2511.20626: the proximal
    soft-thresholding steps ``O_t = T_ε[M_t]``, ``B_t = M_t − O_t`` of the ROOT
    algorithm, with the official code's threshold rule):

    .. math::

      ε = \\mathrm{quantile}_q(|M|) + \\mathrm{eps}, \\qquad
      B = M - \\mathrm{sign}(M)\\,\\max(|M| - ε, 0)

    which equals ``clip(M, −ε, ε)``; the official form is evaluated as written.
    The quantile is taken over all entries of the matrix (linear interpolation,
    ``torch.quantile``'s rule), in f32 like the official ``g.abs().float()``;
    the result is returned in the update's dtype. Cost: one sort per matrix,
    ``O(N log N)``. Leaves without a layout pass through. Stateless.

    Args:
      quantile: q in [0, 1] (0.9 official; injectable).
      eps: added to the quantile (1e-9 official).
      layout: a :data:`~optx.LayoutSpec` (default: the default router's).
      strategy: sharding strategy for sharded leaves (see
        :func:`optx.apply_matrix_fn`).

    References:
      He, Han, Zhou, Chen, Liu, Chen, Wang, "ROOT: Robust Orthogonalized
      Optimizer for Neural Network Training", arXiv 2511.20626 (code:
      github.com/huawei-noah/noah-research/tree/master/ROOT).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.clip_by_quantile(0.5, eps=0.0)
      >>> g = {'w': jnp.array([[1.0, -2.0], [3.0, -4.0]])}
      >>> u, _ = tx.update(g, optax.EmptyState())
      >>> u['w']   # median of |g| is 2.5
      Array([[ 1. , -2. ],
             [ 2.5, -2.5]], dtype=float32)
    """
    base.check_in_range("quantile", quantile, 0.0, 1.0, high_inclusive=True)
    base.check_nonnegative("eps", eps)
    base.check_choice("strategy", strategy, sharding.STRATEGIES)

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra

        def leaf(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
            def fn(v: jax.Array) -> jax.Array:
                cdt = jnp.promote_types(v.dtype, jnp.float32)
                vc = v.astype(cdt)
                threshold = matrix_quantile(jnp.abs(vc), quantile, lay) + eps
                outliers = jnp.sign(vc) * jax.nn.relu(jnp.abs(vc) - threshold)
                return (vc - outliers).astype(v.dtype)

            return sharding.apply_matrix_fn(fn, x, strategy)

        return layouts.map_matrix_leaves(leaf, layout, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
