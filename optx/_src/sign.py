"""Lion and Lion-𝒦: sign-like reshapers of interpolated momentum.

Lion (Chen et al., arXiv 2302.06675, Alg. 2) updates with ``sign`` of an
interpolation of its momentum and the gradient. Lion-𝒦 (Chen, Liu, Liang,
Liu, ICLR 2024, arXiv 2310.05898, §2–3) replaces ``sign`` by
(a sub-gradient of) any convex 𝒦; ``sign = ∇‖·‖₁`` recovers Lion. In the
gradient-sign convention of optax (the paper's momentum tracks ``−∇f``; every
𝒦 below is even, so the two conventions give the same step):

.. math::

  c_t = β_1 m_{t-1} + (1-β_1) g_t,\\qquad m_t = β_2 m_{t-1} + (1-β_2) g_t,

  x_{t+1} = x_t - η\\,(∇𝒦(c_t) + λ x_t).

With decoupled weight decay λ > 0, Lion-𝒦 minimizes the composite objective
``f(x) + 𝒦*(λx)/λ`` (the paper's abstract and §3: a Lyapunov function
exists, and stationary points satisfy ``∇𝒦(∇f(x)) = −λx``), where 𝒦* is the convex
conjugate. When 𝒦 is a norm, 𝒦* is the indicator of the dual-norm unit ball:
the iterates are driven into the ball ``‖x‖_* ≤ 1/λ`` and ``f`` is minimized
there. The catalogue (:data:`KAPPAS`), with the constraint each one enforces:

==================  ==============================================  =====================================================
``kappa``           𝒦 and ∇𝒦(c)                                     what 𝒦*(λx)/λ does to ``min f``
==================  ==============================================  =====================================================
``'l1'`` (Lion)     ‖c‖₁;  ``sign(c)``                               box ``‖x‖_∞ ≤ 1/λ``
``'l2'``            ‖c‖₂;  ``c/‖c‖₂`` (normalized momentum)          ball ``‖x‖₂ ≤ 1/λ``
``'linf'``          ‖c‖_∞;  ``sign(c_i)`` on the (first) arg-max     cross-polytope ``‖x‖₁ ≤ 1/λ``
                    entry, 0 elsewhere (a vertex of ∂‖c‖_∞)
``'lp'``            ‖c‖_p;  ``sign(c)|c|^{p-1}/‖c‖_p^{p-1}``          ``‖x‖_q ≤ 1/λ``, ``1/p + 1/q = 1``
``'l2_squared'``    ½‖c‖₂²;  ``c`` (momentum SGD)                     L2 penalty ``(λ/2)‖x‖²`` (no constraint)
``'huber'``         Σ Huber_δ(c_i);  ``clip(c/δ, −1, 1)``            box ``‖x‖_∞ ≤ 1/λ`` plus ``(δλ/2)‖x‖²`` inside it
``'relativistic'``  Σ √(c_i² + δ²);  ``c/√(c² + δ²)`` (smooth sign)   box ``‖x‖_∞ ≤ 1/λ`` plus the barrier
                                                                     ``−(δ/λ) Σ √(1 − λ²x_i²)``
``'log_cosh'``      Σ δ log cosh(c_i/δ);  ``tanh(c/δ)``               box ``‖x‖_∞ ≤ 1/λ`` plus the entropy-like
                                                                     ``(δ/λ) Σ [y atanh y + ½ log(1−y²)]_{y=λx_i}``
``'nuclear'``       ‖C‖_*;  ``U Vᵀ`` (polar factor, Newton–Schulz)    spectral ball ``‖X‖₂ ≤ 1/λ`` ("Muon is a nuclear
                                                                     Lion": Muon with decoupled decay)
==================  ==============================================  =====================================================

Norms are taken per *block*: per matrix for leaves with a
:class:`~optx.MatrixLayout` (one block per layer of a scanned stack), per leaf
otherwise. So ``'l2'`` is the group norm ``𝒦 = Σ_b ‖c_b‖₂`` and the
constraint holds block by block (``‖x_b‖₂ ≤ 1/λ``). For ``'nuclear'``, leaves
without a layout (biases, norm scales and, with the default router,
embeddings and the head) are treated as flat vectors, whose nuclear norm (as a
1 × n matrix) is their ℓ2 norm: they get ``c/‖c‖₂``. The Newton–Schulz polar
factor is approximate (Keller's quintic leaves singular values in ≈[0.7, 1.2]);
``ns_coeffs='cubic'`` with more steps is closer to exact. ``optax``
exposes two members: ``scale_by_lion(mode='smooth')`` is ``'log_cosh'`` with
``δ = 1/smooth_beta`` and ``mode='refined'`` is ``'huber'`` with δ = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, orthogonalization, sharding
from optx._src.adaptive import compute_dtype
from optx._src.layouts import LayoutSpec, ResolvedLayout

ELEMENTWISE_KAPPAS = ("l1", "l2_squared", "huber", "relativistic", "log_cosh")
BLOCK_KAPPAS = ("l2", "linf", "lp", "nuclear")
KAPPAS = ELEMENTWISE_KAPPAS + BLOCK_KAPPAS
"""Names of the built-in 𝒦 (see the module docstring for their constraints)."""


class ScaleByLionKappaState(NamedTuple):
    """State of :func:`scale_by_lion_kappa` (the same fields as optax's Lion)."""

    count: jax.Array
    mu: base.Updates


def _elementwise_gradient(c: jax.Array, kappa: str, delta: Any) -> jax.Array:
    if kappa == "l1":
        return jnp.sign(c)
    if kappa == "l2_squared":
        return c
    # Complex c: the same functions of |c| times the phase c/|c| (jnp.sign).
    if kappa == "huber":
        if jnp.iscomplexobj(c):
            return (c / delta) / jnp.maximum(jnp.abs(c) / delta, 1.0)
        return jnp.clip(c / delta, -1.0, 1.0)
    if kappa == "relativistic":
        return c / jnp.sqrt(base.abs_sq(c) + jnp.square(delta))
    if kappa == "log_cosh":
        if jnp.iscomplexobj(c):
            return jnp.sign(c) * jnp.tanh(jnp.abs(c) / delta)
        return jnp.tanh(c / delta)
    raise ValueError(f"Unknown element-wise kappa {kappa!r}.")


def _argmax_indicator(a: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """1 at the first arg-max of ``a`` over ``axes`` (per block), 0 elsewhere.

    An ``argmax`` rather than ``a == max(a)``: XLA may evaluate the two sides
    from differently fused (FMA-contracted) recomputations of ``a``, and then
    no entry equals the maximum.
    """
    dest = tuple(range(a.ndim - len(axes), a.ndim))
    moved = jnp.moveaxis(a, axes, dest)
    lead = moved.shape[: a.ndim - len(axes)]
    flat = moved.reshape(*lead, -1)
    onehot = jax.nn.one_hot(jnp.argmax(flat, axis=-1), flat.shape[-1], dtype=a.dtype)
    return jnp.moveaxis(onehot.reshape(moved.shape), dest, axes)


def _block_gradient(c: jax.Array, kappa: str, axes: tuple[int, ...], p: Any) -> jax.Array:
    """∇ of a norm of ``c`` taken over ``axes`` (one value per block)."""
    if c.size == 0:  # an empty block: nothing to move (argmax/max have no identity)
        return jnp.zeros_like(c)
    if kappa in ("l2", "nuclear"):  # nuclear reaches here only for vectors
        norm = jnp.sqrt(jnp.sum(base.abs_sq(c), axis=axes, keepdims=True))
        return base.safe_divide(c, norm)
    a = jnp.abs(c)
    if kappa == "linf":
        return jnp.sign(c) * sharding.apply_matrix_fn(lambda x: _argmax_indicator(x, axes), a)
    if kappa == "lp":
        # Homogeneous of degree 0: normalize by the block maximum first.
        y = base.safe_divide(a, jnp.max(a, axis=axes, keepdims=True))
        yp1 = y ** (p - 1.0)
        norm_p = jnp.sum(yp1 * y, axis=axes, keepdims=True) ** (1.0 / p)
        return jnp.sign(c) * base.safe_divide(yp1, norm_p ** (p - 1.0))
    raise ValueError(f"Unknown block kappa {kappa!r}.")


def kappa_gradient(
    c: jax.Array,
    kappa: str,
    layout: ResolvedLayout | None = None,
    *,
    delta: float = 1.0,
    p: float = 3.0,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int = 5,
    ns_dtype: base.DTypeLike | None = None,
    strategy: str = "auto",
) -> jax.Array:
    """``∇𝒦(c)`` for one tensor (``layout`` defines the blocks; see the module docstring)."""
    if kappa in ELEMENTWISE_KAPPAS:
        return _elementwise_gradient(c, kappa, delta)
    if kappa == "nuclear" and layout is not None:
        return orthogonalization.orthogonalize_leaf(
            c, layout, ns_coeffs, ns_steps, compute_dtype=ns_dtype, strategy=strategy
        )
    if layout is None:
        axes = tuple(range(c.ndim))
    else:
        axes = layout.reduction_axes + layout.output_axes
    if kappa in BLOCK_KAPPAS:
        return _block_gradient(c, kappa, axes, p)
    raise ValueError(f"Unknown kappa {kappa!r}; choose one of {list(KAPPAS)} or pass a callable.")


@hyperparams.validated(b1=hyperparams.UNIT_CLOSED)
def scale_by_lion_kappa(
    b1: float = 0.9,
    b2: float = 0.99,
    kappa: str | Callable[[jax.Array], jax.Array] = "l1",
    *,
    delta: float = 1.0,
    p: float = 3.0,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int = 5,
    ns_dtype: base.DTypeLike | None = None,
    layout: LayoutSpec = None,
    strategy: str = "auto",
    mu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Lion-𝒦's direction ``∇𝒦(β₁ m + (1 − β₁) g)``, then ``m ← β₂ m + (1 − β₂) g``.

    See the module docstring for the math and the 𝒦 catalogue. The momentum
    is updated *after* it is used (Lion's order); ``sign(0) = 0``.

    Args:
      b1: interpolation weight of the momentum in ``c`` (0.9).
      b2: momentum EMA rate (0.99).
      kappa: a name from :data:`KAPPAS`, or a callable ``c -> ∇𝒦(c)`` applied
        to each leaf (for an even 𝒦 that is the update direction).
      delta: smoothing width δ of ``'huber'``, ``'relativistic'`` and
        ``'log_cosh'`` (injectable).
      p: exponent of ``'lp'`` (> 1; injectable).
      ns_coeffs, ns_steps, ns_dtype, strategy: Newton–Schulz settings of
        ``'nuclear'`` (see :func:`optx.scale_by_newton_schulz`).
      layout: a :data:`~optx.LayoutSpec` defining the matrix blocks (default:
        the default router's layouts).
      mu_dtype: momentum dtype.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms",
      arXiv 2302.06675 (Alg. 2; code: github.com/google/automl/tree/master/lion);
      Chen, Liu, Liang, Liu, "Lion Secretly Solves Constrained Optimization, As
      Lyapunov Predicts", ICLR 2024, arXiv 2310.05898.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_lion_kappa(kappa='huber', delta=0.5)
      >>> u, s = tx.update(jnp.array([0.1, -2.0]), tx.init(jnp.zeros(2)))
      >>> u
      Array([ 0.02, -0.4 ], dtype=float32)
    """
    base.check_in_range("b1", b1, 0.0, 1.0, high_inclusive=True)
    base.check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
    if not callable(kappa):
        base.check_choice("kappa", kappa, KAPPAS)
    base.check_positive_int("ns_steps", ns_steps)
    orthogonalization.check_ns_coeffs(ns_coeffs, ns_steps)
    base.check_choice("strategy", strategy, sharding.STRATEGIES)
    base.check_in_range("delta", delta, 0.0, math.inf, low_inclusive=False)
    base.check_in_range("p", p, 1.0, math.inf, low_inclusive=False)
    mu_dtype = base.canonicalize_dtype(mu_dtype)

    def init_fn(params: base.Params) -> ScaleByLionKappaState:
        return ScaleByLionKappaState(
            count=jnp.zeros([], jnp.int32), mu=base.moment_zeros(params, mu_dtype)
        )

    def direction(c: jax.Array, lay: ResolvedLayout | None) -> jax.Array:
        if callable(kappa):
            return kappa(c)
        return kappa_gradient(
            c,
            kappa,
            lay,
            delta=delta,
            p=p,
            ns_coeffs=ns_coeffs,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            strategy=strategy,
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByLionKappaState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByLionKappaState]:
        del params, extra

        def interpolate(g: jax.Array, mu: jax.Array) -> jax.Array:
            cdt = compute_dtype(g.dtype, mu.dtype)
            return b1 * mu.astype(cdt) + (1.0 - b1) * g.astype(cdt)

        cs = jax.tree.map(interpolate, updates, state.mu)
        if callable(kappa) or kappa in ELEMENTWISE_KAPPAS:
            dirs = jax.tree.map(lambda c: direction(c, None), cs)
        elif kappa == "nuclear":  # the matrices together: FSDP ones share all-to-alls
            dirs = orthogonalization.orthogonalize_tree(
                cs,
                layout,
                ns_coeffs,
                ns_steps,
                compute_dtype=ns_dtype,
                strategy=strategy,
                otherwise=lambda c: direction(c, None),
            )
        else:
            dirs = layouts.map_matrix_leaves(
                direction, layout, cs, otherwise=lambda c: direction(c, None)
            )
        new_updates = jax.tree.map(lambda d, g: d.astype(g.dtype), dirs, updates)

        def moment(g: jax.Array, mu: jax.Array) -> jax.Array:
            cdt = jnp.promote_types(g.dtype, mu.dtype)
            return (b2 * mu.astype(cdt) + (1.0 - b2) * g.astype(cdt)).astype(mu.dtype)

        new_mu = jax.tree.map(moment, updates, state.mu)
        return new_updates, ScaleByLionKappaState(
            count=optax.safe_increment(state.count), mu=new_mu
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
