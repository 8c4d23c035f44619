"""Element-wise adaptive scalers: AdaBelief (rectified), EXAdam, SGD-SaI, AdamP's Nesterov Adam.

Each primitive returns the *direction* (positive, to be negated by
``optax.scale_by_learning_rate``); decoupled weight decay and the learning
rate are added by the aliases in :mod:`optx._src.aliases.elementwise`.

Conventions shared by this module:

* ``t`` is the step number after the first increment (``t = 1`` on the first
  update); ``bc1 = 1 − β₁ᵗ``, ``bc2 = 1 − β₂ᵗ``.
* Bias corrections are computed in the leaf's compute dtype (f32 for bf16/f32
  leaves, f64 for f64 leaves) as ``−expm1(t·log1p(−(1−β)))`` with ``1 − β``
  formed *before* the conversion, so that a Python ``β₂ = 0.999`` keeps its
  exact ``1 − β₂ = 10⁻³`` (``1 − float32(0.999)`` is off by 1.3e-5 relative,
  which would move AdaBelief's rectification switch).
* The arithmetic runs in ``base.compute_dtype`` = promote(param dtype, f32):
  f32 for bf16/f32 parameters, f64 for f64 parameters; moments keep the
  dtype fixed at ``init`` (``mu_dtype``/``nu_dtype``) and updates come back
  in the gradient's dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout

compute_dtype = base.compute_dtype  # the library-wide rule; kept here for existing callers


def one_minus_power(beta: Any, count: jax.Array, dtype: Any = None) -> jax.Array:
    """``1 − βᵗ`` in ``base.scalar_dtype(dtype)``, accurate for β close to 1 (see the
    module docstring and :func:`optx._src.base.bias_correction`)."""
    return base.bias_correction(beta, count, dtype)


def power(beta: Any, count: jax.Array, dtype: Any = None) -> jax.Array:
    """``βᵗ`` in ``base.scalar_dtype(dtype)`` (the complement of :func:`one_minus_power`)."""
    return base.power(beta, count, dtype)


def _zeros(params: base.Params, dtype: Any) -> base.Updates:
    return optax.tree.zeros_like(params, dtype=dtype)


def _scale_by_two_moments(
    b1: Any,
    b2: Any,
    direction: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array],
    state_type: Any,
    mu_dtype: Any,
    nu_dtype: Any,
) -> optax.GradientTransformationExtraArgs:
    """Adam's two EMAs ``m, v`` with a custom ``direction(g, m, v, count)``.

    ``m = β₁ m + (1−β₁) g``, ``v = β₂ v + (1−β₂) g²`` in at least f32;
    ``count`` is the step number after the increment. The state is
    ``state_type(count, mu, nu)``.
    """
    mu_dtype = base.canonicalize_dtype(mu_dtype)
    nu_dtype = base.canonicalize_dtype(nu_dtype)

    def init_fn(params: base.Params) -> Any:
        return state_type(
            count=jnp.zeros([], jnp.int32),
            mu=base.moment_zeros(params, mu_dtype),
            nu=_zeros(params, nu_dtype),
        )

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra
        count = optax.safe_increment(state.count)

        def leaf(g: Any, mu: Any, nu: Any) -> tuple[Any, Any, Any]:
            if g is None:
                return None, mu, nu
            cdt = compute_dtype(g.dtype, mu.dtype, nu.dtype)
            gc = g.astype(cdt)
            m = b1 * mu.astype(cdt) + (1.0 - b1) * gc
            v = b2 * nu.astype(cdt) + (1.0 - b2) * base.abs_sq(gc)
            u = direction(gc, m, v, count)
            return u.astype(g.dtype), m.astype(mu.dtype), v.astype(nu.dtype)

        out = jax.tree.map(leaf, updates, state.mu, state.nu, is_leaf=base.is_leaf_or_none)
        new_u, new_mu, new_nu = base.unzip_tree(updates, out, 3)
        return new_u, state_type(count=count, mu=new_mu, nu=new_nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# AdaBelief
# ----------------------------------------------------------------------------


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`.

    ``nu`` is the stored belief ``s`` *including* the ε added every step;
    ``nu_max`` is its running maximum with ``amsgrad`` (``optax.EmptyState()``
    otherwise).
    """

    count: jax.Array
    mu: base.Updates
    nu: base.Updates
    nu_max: Any


def radam_rectification(
    b2: Any, count: jax.Array, dtype: Any = None
) -> tuple[jax.Array, jax.Array]:
    """RAdam's ``(ρ_t, r_t)`` (Liu et al., arXiv 1908.03265, Alg. 2) in ``base.scalar_dtype(dtype)``.

    .. math::

      ρ_∞ = \\frac{2}{1-β_2} - 1,\\quad
      ρ_t = ρ_∞ - \\frac{2 t β_2^t}{1-β_2^t},\\quad
      r_t = \\sqrt{\\frac{(1-β_2^t)(ρ_t-4)(ρ_t-2)ρ_∞}{(ρ_∞-4)(ρ_∞-2)ρ_t}}

    ``r_t`` here includes AdaBelief's ``(1 − β₂ᵗ)`` factor (its rectified
    denominator is the *uncorrected* ``√s``). ``r_t`` is 0 where ``ρ_t < 4``.

    In float64 this is the closed form above, with ``β₂ᵗ`` and ``1 − β₂ᵗ``
    from :func:`optx._src.base.power` / :func:`~optx._src.base.bias_correction`
    (the official code evaluates the same expression in Python doubles; they
    agree to ~1e-13 relative, the cancellation ρ∞ − … costs ~3 digits).

    In float32 the direct formula loses those ~3 digits to cancellation
    (ρ∞ ≈ 2000 minus ≈ 1995 for β₂ = 0.999) while ρ₅ = 4.996 sits next to the
    threshold 5. With ``δ = 1 − β₂``, ``ℓ = −log(1 − δ)`` and ``u = tℓ`` it is
    then evaluated as

    .. math::

      ρ_t = \\Big(\\frac{2}{δ} - \\frac{2}{ℓ} - 1\\Big) + t - 2t\\,h(u),\\qquad
      h(u) = \\frac{1}{e^u - 1} - \\frac{1}{u} + \\frac12
           = \\frac{u}{12} - \\frac{u^3}{720} + \\frac{u^5}{30240} - …

    for ``u < 1`` (the bracket in float64 when β₂ is a Python number, by its
    series otherwise; ``h`` by its series, whose truncation error ~1e-8 is
    below float32's resolution), and directly for ``u ≥ 1``, where nothing
    cancels. Relative error ~1e-6.
    """
    dt = base.scalar_dtype(dtype)
    t = count.astype(dt)
    omd = base.one_minus(b2, dt)
    rho_inf = 2.0 / omd - 1.0
    if jnp.finfo(dt).bits >= 64:
        beta_t = base.power(b2, count, dt)
        bc2 = base.bias_correction(b2, count, dt)
        rho_t = rho_inf - 2.0 * t * beta_t / bc2
    else:
        delta = 1.0 - b2
        if isinstance(delta, numbers.Real):
            # β₂ = 0: ℓ = ∞ (then u = ∞ and ρ_t = ρ_∞ = 1 < 4 at every step).
            ell = -math.log1p(-float(delta)) if delta < 1 else math.inf
            offset = jnp.asarray(2.0 / delta - 2.0 / ell - 1.0, dt)
        else:
            d = jnp.asarray(delta, dt)
            ell_minus_d_series = sum(d**k / k for k in range(2, 12))
            ell_minus_d = jnp.where(d < 0.1, ell_minus_d_series, -jnp.log1p(-d) - d)
            ell_ = d + ell_minus_d
            offset = 2.0 * ell_minus_d / (d * ell_) - 1.0
        u = t * -jnp.log1p(-omd)
        h = u / 12.0 - u**3 / 720.0 + u**5 / 30240.0 - u**7 / 1209600.0
        rho_small = offset + t - 2.0 * t * h
        rho_large = rho_inf - 2.0 * t * jnp.exp(-u) / -jnp.expm1(-jnp.maximum(u, 1.0))
        rho_t = jnp.where(u < 1.0, rho_small, rho_large)
        bc2 = -jnp.expm1(-u)
    ratio = (
        bc2 * (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
    )
    r_t = jnp.sqrt(jnp.maximum(ratio, 0.0))
    return rho_t.astype(dt), r_t.astype(dt)


@hyperparams.validated()
def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float | None = None,
    *,
    rectify: bool = True,
    degenerated_to_sgd: bool = True,
    amsgrad: bool = False,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaBelief's direction, as the official ``adabelief-pytorch`` 0.2.1 computes it.

    AdaBelief (Zhuang et al., arXiv 2010.07468, Alg. 2) replaces Adam's
    second moment by the EMA of the squared *prediction error* ``g − m``:

    .. math::

      m_t = β_1 m_{t-1} + (1-β_1) g_t,\\qquad
      s_t = β_2 s_{t-1} + (1-β_2)(g_t - m_t)^2 + ε_{root}

      u_t = \\frac{m_t / (1-β_1^t)}{\\sqrt{s_t / (1-β_2^t)} + ε}
      \\quad\\text{(rectify=False)}

    With ``rectify=True`` (the official default; RAdam-style, see
    :func:`radam_rectification`):

    .. math::

      u_t = \\begin{cases}
        \\dfrac{r_t}{1-β_1^t}\\,\\dfrac{m_t}{\\sqrt{s_t} + ε} & ρ_t ≥ 5 \\\\
        m_t / (1-β_1^t) & ρ_t < 5,\\ \\text{degenerated\\_to\\_sgd} \\\\
        0 & \\text{otherwise}
      \\end{cases}

    Official-code quirks reproduced:

    * ε is added **in place** to the stored ``s`` every step (so ``ε_root``
      defaults to ``eps``; it accumulates in the state), and again outside the
      square root.
    * The residual uses the **new** ``m_t``.
    * The rectified branch divides by the *uncorrected* ``√s_t`` (the
      ``1 − β₂ᵗ`` correction lives in ``r_t``); with β₂ = 0.999 the first five
      steps take the SGD branch.
    * ``amsgrad`` keeps ``s_max = max(s_max, s_t)`` for the non-rectified
      denominator only: the official rectified branch still uses ``s_t``.

    ``rectify=False, eps_root=eps`` is exactly ``optax.scale_by_belief``.

    Args:
      b1, b2: the two EMA rates.
      eps: ε outside the square root (official default 1e-16; the README
        recommends 1e-8 for CNN image classification).
      eps_root: ε added to the stored ``s`` each step; ``None`` = ``eps``
        (official).
      rectify: RAdam-style rectification (official default True).
      degenerated_to_sgd: take an SGD-momentum step while ``ρ_t < 5``
        (official default True; else no step).
      amsgrad: AMSGrad maximum of ``s`` (see the quirk above).
      mu_dtype, nu_dtype: moment dtypes (default: the parameter dtype).

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
      Observed Gradients", NeurIPS 2020, arXiv 2010.07468 (code:
      github.com/juntang-zhuang/Adabelief-Optimizer, adabelief-pytorch 0.2.1);
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond",
      arXiv 1908.03265.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_belief(rectify=False)
      >>> u, s = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
    """
    base.check_in_range("b1", b1, 0.0, 1.0)
    base.check_in_range("b2", b2, 0.0, 1.0)
    base.check_nonnegative("eps", eps)
    if eps_root is None:
        eps_root = eps
    base.check_nonnegative("eps_root", eps_root)
    mu_dtype = base.canonicalize_dtype(mu_dtype)
    nu_dtype = base.canonicalize_dtype(nu_dtype)

    def init_fn(params: base.Params) -> ScaleByBeliefState:
        return ScaleByBeliefState(
            count=jnp.zeros([], jnp.int32),
            mu=base.moment_zeros(params, mu_dtype),
            nu=_zeros(params, nu_dtype),
            nu_max=_zeros(params, nu_dtype) if amsgrad else optax.EmptyState(),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByBeliefState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByBeliefState]:
        del params, extra
        count = optax.safe_increment(state.count)
        bc1 = one_minus_power(b1, count)
        bc2 = one_minus_power(b2, count)
        if rectify:
            rho_t, r_t = radam_rectification(b2, count)
            use_adaptive = rho_t >= 5.0
            sgd_scale = 1.0 / bc1 if degenerated_to_sgd else jnp.zeros([], bc1.dtype)

        def leaf(g: Any, mu: Any, nu: Any, nu_max: Any) -> tuple[Any, Any, Any, Any]:
            if g is None:
                return None, mu, nu, nu_max
            cdt = compute_dtype(g.dtype, mu.dtype, nu.dtype)
            gc = g.astype(cdt)
            new_mu = b1 * mu.astype(cdt) + (1.0 - b1) * gc
            new_nu = b2 * nu.astype(cdt) + (1.0 - b2) * base.abs_sq(gc - new_mu) + eps_root
            if amsgrad:
                new_max = jnp.maximum(nu_max.astype(cdt), new_nu)
                denom_nu, out_max = new_max, new_max.astype(nu_max.dtype)
            else:
                denom_nu, out_max = new_nu, nu_max
            if rectify:
                rect = (r_t / bc1).astype(cdt) / (jnp.sqrt(new_nu) + eps)
                scale = jnp.where(use_adaptive, rect, sgd_scale.astype(cdt))
                u = new_mu * scale
            else:
                u = (new_mu / bc1.astype(cdt)) / (jnp.sqrt(denom_nu / bc2.astype(cdt)) + eps)
            return u.astype(g.dtype), new_mu.astype(mu.dtype), new_nu.astype(nu.dtype), out_max

        nu_max_tree = state.nu_max if amsgrad else jax.tree.map(lambda _: None, updates)
        out = jax.tree.map(
            leaf, updates, state.mu, state.nu, nu_max_tree, is_leaf=base.is_leaf_or_none
        )
        new_u, new_mu, new_nu, new_max = base.unzip_tree(updates, out, 4)
        return new_u, ScaleByBeliefState(
            count=count,
            mu=new_mu,
            nu=new_nu,
            nu_max=new_max if amsgrad else state.nu_max,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# EXAdam
# ----------------------------------------------------------------------------


class ScaleByExAdamState(NamedTuple):
    """State of :func:`scale_by_exadam`."""

    count: jax.Array
    mu: base.Updates
    nu: base.Updates


@hyperparams.validated()
def scale_by_exadam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    dynamic_step_size: bool = True,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """EXAdam's direction (Adly, arXiv 2412.20302).

    .. math::

      m_t = β_1 m_{t-1} + (1-β_1) g_t,\\qquad v_t = β_2 v_{t-1} + (1-β_2) g_t^2

      d_1 = 1 + β_2^t \\frac{v_t}{v_t + ε},\\qquad d_2 = 1 + β_1^t \\frac{m_t^2}{m_t^2 + ε}

      \\tilde m_t = \\frac{m_t}{1-β_1^t} d_1,\\quad
      \\tilde v_t = \\frac{v_t}{1-β_2^t} d_2,\\quad
      \\tilde g_t = \\frac{g_t}{1-β_1^t} d_1

      u_t = α_t \\frac{\\tilde m_t + \\tilde g_t}{\\sqrt{\\tilde v_t} + ε},\\qquad
      α_t = \\begin{cases} \\ln(\\sqrt 2 \\sqrt{t+1}) & \\text{dynamic\\_step\\_size (paper v1)} \\\\
                           1 & \\text{otherwise (repo HEAD, arXiv v2)} \\end{cases}

    The debiasing terms ``d₁``, ``d₂`` and the "gradient acceleration" ``g̃``
    are the paper's §3 (v1 and v2); ``α_t`` is v1's dynamic step size
    (its first commit, ``9ff8463``), removed by commit ``6e3a170`` and from
    arXiv v2. Because of ``g̃`` the steady-state step is about twice Adam's, and
    with ``α_t`` it keeps growing like ``½ ln t``: learning rates are not
    interchangeable with Adam's.

    Args:
      b1, b2: EMA rates.
      eps: ε in the debiasing ratios and outside the square root.
      dynamic_step_size: multiply by ``ln(√2·√(t+1))`` (paper v1, default) or
        not (the repo's HEAD rule, arXiv v2).
      mu_dtype, nu_dtype: moment dtypes.

    References:
      Adly, "EXAdam: The Power of Adaptive Cross-Moments", arXiv 2412.20302
      (code: github.com/AhmedMostafa16/EXAdam, commits 9ff8463 (v1) and
      989d7b6 (HEAD)).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_exadam()
      >>> u, s = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
    """
    base.check_in_range("b1", b1, 0.0, 1.0)
    base.check_in_range("b2", b2, 0.0, 1.0)
    base.check_nonnegative("eps", eps)

    def saturation(x: jax.Array) -> jax.Array:
        # x / (x + ε) → 1 as x → ∞: an overflowed moment (a gradient entry
        # whose square exceeds the float range) gives 1, not inf/inf = NaN,
        # so its step is 0 as Adam's is (finite / √∞).
        # (A complex leaf's v is stored complex with a zero imaginary part.)
        return jnp.where(jnp.isposinf(jnp.real(x)), jnp.ones([], x.dtype), x / (x + eps))

    def direction(g: jax.Array, m: jax.Array, v: jax.Array, count: jax.Array) -> jax.Array:
        cdt = g.dtype
        bc1 = one_minus_power(b1, count).astype(cdt)
        bc2 = one_minus_power(b2, count).astype(cdt)
        d1 = 1.0 + power(b2, count).astype(cdt) * saturation(v)
        d2 = 1.0 + power(b1, count).astype(cdt) * saturation(base.abs_sq(m))
        if dynamic_step_size:
            alpha = (0.5 * jnp.log(2.0 * (count.astype(base.scalar_dtype(cdt)) + 1.0))).astype(cdt)
        else:
            alpha = jnp.ones([], cdt)
        return alpha * ((m + g) * d1 / bc1) / (jnp.sqrt(v * d2 / bc2) + eps)

    return _scale_by_two_moments(b1, b2, direction, ScaleByExAdamState, mu_dtype, nu_dtype)


# ----------------------------------------------------------------------------
# Adam with the AdamP/official Nesterov look-ahead
# ----------------------------------------------------------------------------


@hyperparams.validated()
def scale_by_adam_lookahead(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam with the Nesterov look-ahead of the official AdamP code.

    .. math::

      u_t = \\frac{(β_1 m_t + (1-β_1) g_t)/(1-β_1^t)}{\\sqrt{v_t/(1-β_2^t)} + ε}

    (``clovaai/AdamP`` ``adamp.py``, ``nesterov=True``). optax's
    ``scale_by_adam(nesterov=True)`` is NAdam instead (the momentum term is
    corrected with ``1 − β₁ᵗ⁺¹``), which differs at every step. The state is
    ``optax.ScaleByAdamState``.

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights", ICLR 2021, arXiv 2006.08217 (Alg. 2).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_adam_lookahead()
      >>> u, s = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
    """
    base.check_in_range("b1", b1, 0.0, 1.0)
    base.check_in_range("b2", b2, 0.0, 1.0)
    base.check_nonnegative("eps", eps)

    def direction(g: jax.Array, m: jax.Array, v: jax.Array, count: jax.Array) -> jax.Array:
        bc1 = one_minus_power(b1, count).astype(g.dtype)
        bc2 = one_minus_power(b2, count).astype(g.dtype)
        return ((b1 * m + (1.0 - b1) * g) / bc1) / (jnp.sqrt(v / bc2) + eps)

    return _scale_by_two_moments(b1, b2, direction, optax.ScaleByAdamState, mu_dtype, nu_dtype)


# ----------------------------------------------------------------------------
# SGD-SaI
# ----------------------------------------------------------------------------

SAI_SCALE_RULES = ("gsnr", "gsnr_max", "sqrt_numel")


class ScaleBySaiState(NamedTuple):
    """State of :func:`scale_by_sai`.

    ``gsnr`` holds one scale (in the parameter's real compute dtype: f32, or
    f64 for f64 parameters) per parameter block (per matrix for leaves
    with a layout, in :meth:`ResolvedLayout.matrix_norm_shape`; per tensor
    otherwise, with every axis kept as size 1), frozen after the first step.
    """

    count: jax.Array
    gsnr: base.Updates
    mu: base.Updates


def _block_axes(x: Any, lay: ResolvedLayout | None) -> tuple[int, ...]:
    if lay is None:
        return tuple(range(jnp.ndim(x)))
    return lay.reduction_axes + lay.output_axes


def _block_shape(x: Any, lay: ResolvedLayout | None) -> tuple[int, ...]:
    if lay is None:
        return (1,) * jnp.ndim(x)
    return lay.matrix_norm_shape()


def block_gsnr(g: jax.Array, lay: ResolvedLayout | None, eps: Any) -> jax.Array:
    """``‖g‖₂ / (std(g) + ε)`` per block, with torch's *unbiased* std.

    A single-element block has an undefined unbiased std. The official code
    turns it into 0 (``nan_to_num``), so its scale is ``|g|/ε`` (≈ 1e8·|g|) and
    any scalar or 1×1 parameter diverges; optx gives such a block the scale
    ``√numel = 1`` (the official 1.1.0 ``sqrt_numel`` rule), so the update stays
    finite: momentum SGD on that element.
    """
    axes = _block_axes(g, lay)
    n = math.prod(jnp.shape(g)[a] for a in axes)
    g32 = g.astype(compute_dtype(g.dtype))
    norm = jnp.sqrt(jnp.sum(base.abs_sq(g32), axis=axes, keepdims=True))
    if n > 1:
        mean = jnp.mean(g32, axis=axes, keepdims=True)
        var = jnp.sum(base.abs_sq(g32 - mean), axis=axes, keepdims=True) / (n - 1)
        std = jnp.sqrt(var)
    else:
        return jnp.ones_like(norm)
    return norm / (std + eps)


@hyperparams.validated()
def scale_by_sai(
    beta: float = 0.9,
    eps: float = 1e-8,
    *,
    scale_rule: str = "gsnr",
    layout: LayoutSpec = None,
    mu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD-SaI's direction: momentum times a per-block g-SNR frozen at step 1.

    SGD-SaI (Xu et al., arXiv 2412.11768, Alg. 1) measures at the first step
    the gradient signal-to-noise ratio of every parameter block and uses it as
    a fixed learning-rate multiplier:

    .. math::

      \\mathrm{gsnr}_b = \\frac{\\|g_1^{(b)}\\|_2}{\\mathrm{std}(g_1^{(b)}) + ε}
      \\quad\\text{(frozen)},\\qquad
      M_1 = g_1,\\; M_t = μ M_{t-1} + (1-μ) g_t,\\qquad u_t = \\mathrm{gsnr}_b\\, M_t

    Official-code (``sgd-sai`` 1.0.3) details reproduced: the std is torch's
    **unbiased** (n − 1) std over the block; the first momentum buffer is a
    *copy* of ``g`` (not ``(1 − μ) g``); a block whose first gradient is zero
    is frozen forever (``gsnr = 0``).

    Deviation from the official code: a **single-element** block (a scalar, a
    1×1 matrix) has no unbiased std; the official ``nan_to_num`` makes it 0 and
    the scale ``|g|/ε`` (≈ ``1e8·|g|``: the parameter diverges, and under
    ``'gsnr_max'`` that scale divides every other block's), optx uses 1
    (``√numel``). The official code computes one scale per
    *tensor*; optx uses one per matrix for leaves with a layout, so a scanned
    ``(L, in, out)`` stack gets the L scales its L PyTorch tensors would get
    (leaves without a layout, e.g. stacked biases, get one scale per leaf).

    ``scale_rule`` picks the repo version: ``'gsnr'`` (1.0.3, the paper and
    the golden reference), ``'gsnr_max'`` (1.0.4: divided by the largest block
    g-SNR of the whole tree) or ``'sqrt_numel'`` (1.1.0: ``√(block size)``, the
    repo's "faster approximation" — no statistics at all).

    Args:
      beta: μ, the EMA coefficient of the momentum (the official ``momentum``, 0.9).
      eps: ε of the g-SNR (1e-8).
      scale_rule: see above (static).
      layout: a :data:`~optx.LayoutSpec` defining the blocks (default: the
        default router's matrix layouts).
      mu_dtype: momentum dtype.

    References:
      Xu et al., "No More Adam: Learning Rate Scaling at Initialization is All
      You Need", arXiv 2412.11768 (code: github.com/AnonymousAlethiometer/SGD_SaI,
      PyPI sgd-sai 1.0.3).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_sai()
      >>> g = jnp.array([1.0, 3.0])
      >>> u, s = tx.update(g, tx.init(jnp.zeros(2)))
      >>> round(float(s.gsnr[0]), 4)  # ||g|| / unbiased std = sqrt(10) / sqrt(2)
      2.2361
    """
    base.check_nonnegative("eps", eps)
    base.check_choice("scale_rule", scale_rule, SAI_SCALE_RULES)
    mu_dtype = base.canonicalize_dtype(mu_dtype)
    resolve = layouts.resolved_layout_fn(layout)

    def init_fn(params: base.Params) -> ScaleBySaiState:
        def gsnr_leaf(path: Any, p: Any) -> jax.Array:
            lay = resolve(base.path_to_str(path), p)
            dtype = base.real_dtype(compute_dtype(p.dtype))
            return sharding.zeros_like_spec(_block_shape(p, lay), dtype, p)

        return ScaleBySaiState(
            count=jnp.zeros([], jnp.int32),
            gsnr=jax.tree_util.tree_map_with_path(gsnr_leaf, params),
            mu=base.moment_zeros(params, mu_dtype),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleBySaiState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleBySaiState]:
        del params, extra
        first = state.count == 0

        def measure(_: Any) -> Any:
            def leaf(path: Any, g: Any, old: Any) -> jax.Array:
                lay = resolve(base.path_to_str(path), g)
                if scale_rule == "sqrt_numel":
                    n = math.prod(jnp.shape(g)[a] for a in _block_axes(g, lay))
                    return jnp.full_like(old, math.sqrt(n))
                return block_gsnr(g, lay, eps).astype(old.dtype)

            out = jax.tree_util.tree_map_with_path(leaf, updates, state.gsnr)
            if scale_rule == "gsnr_max":
                top = jnp.max(jnp.stack([jnp.max(x) for x in jax.tree.leaves(out)]))
                out = jax.tree.map(lambda x: x / top, out)
            return out

        gsnr = base.cond(first, measure, lambda _: state.gsnr, None)

        def leaf(g: Any, mu: Any, scale: Any) -> tuple[Any, Any]:
            cdt = compute_dtype(g.dtype, mu.dtype)
            gc = g.astype(cdt)
            new_mu = jnp.where(first, gc, beta * mu.astype(cdt) + (1.0 - beta) * gc)
            return (scale.astype(cdt) * new_mu).astype(g.dtype), new_mu.astype(mu.dtype)

        out = jax.tree.map(leaf, updates, state.mu, gsnr)
        new_u, new_mu = base.unzip_tree(updates, out)
        return new_u, ScaleBySaiState(count=optax.safe_increment(state.count), gsnr=gsnr, mu=new_mu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
