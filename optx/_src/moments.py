"""First and second moment estimates: momentum and Adam with ``nu_dtype``.

Conventions (``notes/methods_matrix.md`` §0):

* *EMA momentum* ``M ← β M + (1−β) G``; *sum momentum* ``M ← μ M + G``.
* *Keller-style Nesterov* (EMA): ``U = (1−β) G + β M``.
* *Moonlight-style Nesterov* (sum): ``U = G + μ M``.

The two Nesterov forms differ by the constant 1/(1−β), which an orthogonalizer's
Frobenius normalization removes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams

MOMENTUM_KINDS = ("ema", "sum")
EPS_PLACEMENTS = ("corrected", "uncorrected")


class ScaleByMomentumState(NamedTuple):
    """State of :func:`scale_by_momentum`."""

    count: jax.Array
    mu: base.Updates


@hyperparams.validated()
def scale_by_momentum(
    beta: float = 0.95,
    *,
    kind: str = "ema",
    nesterov: bool = True,
    bias_correction: bool = False,
    mu_dtype: base.DTypeLike | None = None,
    dampening: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Momentum in the EMA or sum form, with Keller/Moonlight-style Nesterov.

    .. math::

      \\text{ema:}\\; M_t = β M_{t-1} + (1-β) G_t, \\quad
      U_t = \\begin{cases} (1-β) G_t + β \\hat M_t & \\text{nesterov} \\\\
                           \\hat M_t & \\text{otherwise} \\end{cases}

      \\text{sum:}\\; M_t = β M_{t-1} + G_t, \\quad
      U_t = \\begin{cases} G_t + β M_t & \\text{nesterov} \\\\
                           M_t & \\text{otherwise} \\end{cases}

    with ``M̂_t = M_t / (1 − βᵗ)`` when ``bias_correction`` (EMA only) and
    ``M̂_t = M_t`` otherwise. Keller Jordan's Muon and NorMuon use EMA +
    Nesterov without bias correction (the default); Moonlight, ROOT and levanter
    use the sum form.

    Args:
      beta: momentum coefficient (injectable; a schedule is not supported).
      kind: ``'ema'`` or ``'sum'``.
      nesterov: use the Nesterov look-ahead.
      bias_correction: divide the EMA by ``1 − βᵗ`` (EMA only).
      mu_dtype: dtype of ``M`` (default: the parameter dtype).
      dampening: torch.optim.SGD's dampening ``d`` (``kind='sum'`` only):
        ``M_t = β M_{t-1} + (1 − d) G_t``; the Nesterov term stays ``G_t + β M_t``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_momentum(0.9, nesterov=False)
      >>> s = tx.init(jnp.zeros(2))
      >>> u, s = tx.update(jnp.ones(2), s)
      >>> u
      Array([0.1, 0.1], dtype=float32)
    """
    base.check_choice("kind", kind, MOMENTUM_KINDS)
    base.check_in_range("beta", beta, 0.0, 1.0)
    if bias_correction and kind != "ema":
        raise ValueError("bias_correction is only defined for kind='ema'.")
    base.check_in_range("dampening", dampening, 0.0, 1.0, high_inclusive=True)
    value = base._concrete_float(dampening)  # None when traced (injected): applied as is
    if kind != "sum" and value not in (None, 0.0):
        raise ValueError("`dampening` is only defined for kind='sum' (torch.optim.SGD's buffer).")
    damped = kind == "sum" and value != 0.0
    mu_dtype = base.canonicalize_dtype(mu_dtype)

    def init_fn(params: base.Params) -> ScaleByMomentumState:
        return ScaleByMomentumState(
            count=jnp.zeros([], jnp.int32),
            mu=base.moment_zeros(params, mu_dtype),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByMomentumState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByMomentumState]:
        del params, extra
        count = optax.safe_increment(state.count)
        if bias_correction:
            correction = base.bias_correction(beta, count)
        else:
            correction = base.at_least_f32(1.0)

        def leaf(g: jax.Array, mu: jax.Array) -> tuple[jax.Array, jax.Array]:
            if g is None:
                return None, mu
            cdt = base.compute_dtype(g.dtype, mu.dtype)
            gc, muc = g.astype(cdt), mu.astype(cdt)
            if kind == "ema":
                new_mu = beta * muc + (1.0 - beta) * gc
                mu_hat = new_mu / correction.astype(cdt)
                u = (1.0 - beta) * gc + beta * mu_hat if nesterov else mu_hat
            else:
                new_mu = beta * muc + ((1.0 - dampening) * gc if damped else gc)
                u = gc + beta * new_mu if nesterov else new_mu
            return u.astype(g.dtype), new_mu.astype(mu.dtype)

        out = jax.tree.map(leaf, updates, state.mu, is_leaf=base.is_leaf_or_none)
        new_u, new_mu = base.unzip_tree(updates, out)
        return new_u, ScaleByMomentumState(count=count, mu=new_mu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@hyperparams.validated()
def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    nesterov: bool = False,
    eps_placement: str = "corrected",
    bias_correction: bool = True,
    exact_bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_adam`` with an explicit second-moment dtype.

    .. math::

      m_t = β_1 m_{t-1} + (1-β_1) g_t,\\quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\\quad
      u_t = \\hat m_t / (\\sqrt{\\hat v_t + ε_{root}} + ε)

    Identical numbers to ``optax.scale_by_adam`` (it is reused); the only
    addition is ``nu_dtype``, which optax lacks: with bf16 params optax keeps
    ``v`` in bf16, where ``1 − 0.999`` updates round away. ``nu_dtype=jnp.float32``
    keeps ``v`` in f32 (the state dtype is fixed at ``init`` and kept by
    ``update``).

    ``eps_placement`` chooses where ε sits relative to the bias correction
    (the references disagree, ``notes/methods_memory.md`` §19.3):

    * ``'corrected'`` (default, optax, bitsandbytes, PyTorch ``Adam``):
      ``u = m̂ / (√v̂ + ε)`` with ``m̂ = m/(1−β₁ᵗ)``, ``v̂ = v/(1−β₂ᵗ)``;
    * ``'uncorrected'`` (Hugging Face ``transformers.AdamW``, and the official
      GaLore and APOLLO code built on it): ``u = √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε)``,
      i.e. ε is added to the *uncorrected* ``√v`` and the correction is folded
      into the step size.

    ``bias_correction=False`` drops the correction altogether
    (``u = m / (√v + ε)``, HF's ``correct_bias=False``; APOLLO's norm ratios are
    measured on this quantity). Both options are static; ``nesterov`` is only
    available with the defaults.

    ``exact_bias_correction=True`` forms ``1 − βᵗ`` exactly
    (``base.bias_correction``, a few ulps) as PyTorch's Adam and
    the official codes built on it do in Python doubles; optax raises the
    float32 ``β`` to the power ``t``, and ``1 − float32(0.999)`` is 1.3e-5 off,
    so with float32 states every step of optax's Adam is about 6.4e-6 larger
    (relative) than PyTorch's, always in the same direction. The aliases whose
    reference is PyTorch code set it (AdamP, MKOR's inner Adam/AdamW, FRUGAL's
    and DCT-AdamW's Adam, and the AdamW fallback of the matrix methods and
    LoRA-Pro); :func:`optx.adamw` keeps optax's numbers. The other two options
    already use the exact correction.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv 1412.6980.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_adam(nu_dtype=jnp.float32)
      >>> s = tx.init(jnp.zeros(3, jnp.bfloat16))
      >>> s.nu.dtype
      dtype('float32')
    """
    base.check_choice("eps_placement", eps_placement, EPS_PLACEMENTS)
    nu_dtype = base.canonicalize_dtype(nu_dtype)
    if eps_placement != "corrected" or not bias_correction or exact_bias_correction:
        if nesterov:
            raise ValueError(
                "nesterov=True is only supported with eps_placement='corrected', "
                "bias_correction=True and exact_bias_correction=False."
            )
        return _scale_by_adam_exact_correction(
            b1, b2, eps, eps_root, mu_dtype, nu_dtype, eps_placement, bias_correction
        )
    inner = with_moment_dtype(
        optax.scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov), "mu", mu_dtype
    )

    def init_fn(params: base.Params) -> optax.ScaleByAdamState:
        state = inner.init(params)
        if nu_dtype is not None:
            state = state._replace(nu=optax.tree.zeros_like(params, dtype=nu_dtype))
        return state

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        new_updates, new_state = inner.update(updates, state, params, **extra)
        new_state = new_state._replace(nu=optax.tree.cast_like(new_state.nu, state.nu))
        # f32 moments with bf16 gradients give f32 updates in optax; keep the
        # gradient dtype (apply_updates would cast anyway).
        return optax.tree.cast_like(new_updates, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_moment_dtype(
    inner: optax.GradientTransformation, field: str, dtype: base.DTypeLike | None
) -> optax.GradientTransformationExtraArgs:
    """An optax moment transform with its signed moment ``field`` in ``dtype``.

    For optax's ``scale_by_adam`` (``mu``), ``scale_by_lion`` (``mu``) and
    ``trace`` (``trace``), built without their dtype argument: the moment is
    created with :func:`optx._src.base.moment_dtype` per leaf (a real ``dtype``
    on a complex leaf gives a complex moment of that precision) and cast back
    to its stored dtype after each step, where optax would cast it to the
    given dtype (dropping a complex leaf's imaginary part). The numbers are
    optax's: its updates are computed before its own cast.
    """
    dtype = base.canonicalize_dtype(dtype)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: base.Params) -> Any:
        return inner.init(params)._replace(**{field: base.moment_zeros(params, dtype)})

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        new_updates, new_state = inner.update(updates, state, params, **extra)
        moment = optax.tree.cast_like(getattr(new_state, field), getattr(state, field))
        return new_updates, new_state._replace(**{field: moment})

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _scale_by_adam_exact_correction(
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    mu_dtype: Any,
    nu_dtype: Any,
    eps_placement: str,
    bias_correction: bool,
) -> optax.GradientTransformationExtraArgs:
    """Adam with the exact ``1 − βᵗ``: ε on the corrected or the uncorrected
    ``√v``, or no correction (see :func:`scale_by_adam`)."""
    corrected = bias_correction and eps_placement == "corrected"
    mu_dtype = base.canonicalize_dtype(mu_dtype)

    def init_fn(params: base.Params) -> optax.ScaleByAdamState:
        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=base.moment_zeros(params, mu_dtype),
            nu=optax.tree.zeros_like(params, dtype=nu_dtype),
        )

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra
        count = optax.safe_increment(state.count)
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        if corrected:  # m̂ / (√(v̂ + ε_root) + ε), as optax but with the exact 1 − βᵗ
            bc1, bc2 = base.bias_correction(b1, count), base.bias_correction(b2, count)

            def direction(mc: jax.Array, vc: jax.Array) -> jax.Array:
                cdt = mc.dtype
                return mc / bc1.astype(cdt) / (jnp.sqrt(vc / bc2.astype(cdt) + eps_root) + eps)

        else:  # the correction (or none) folded into the step: ε on the uncorrected √v
            step = step_size_correction(b1, b2, count) if bias_correction else None

            def direction(mc: jax.Array, vc: jax.Array) -> jax.Array:
                scaled = mc if step is None else step.astype(mc.dtype) * mc
                return scaled / (jnp.sqrt(vc + eps_root) + eps)

        def leaf(g: Any, m: Any, v: Any) -> Any:
            if g is None:
                return None
            cdt = base.compute_dtype(m.dtype, v.dtype)
            return direction(m.astype(cdt), v.astype(cdt)).astype(g.dtype)

        new_updates = jax.tree.map(leaf, updates, mu, nu, is_leaf=base.is_leaf_or_none)
        return new_updates, optax.ScaleByAdamState(
            count=count,
            mu=optax.tree.cast_like(mu, state.mu),
            nu=optax.tree.cast_like(nu, state.nu),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def step_size_correction(b1: Any, b2: Any, count: jax.Array) -> jax.Array:
    """``√(1−β₂ᵗ)/(1−β₁ᵗ)``: Adam's correction folded into the step.

    In the widest enabled float (f64 under ``jax_enable_x64``): cast it to each
    leaf's compute dtype at use.
    """
    return jnp.sqrt(base.bias_correction(b2, count)) / base.bias_correction(b1, count)


class BiasCorrectionState(NamedTuple):
    """State of :func:`scale_by_bias_correction`."""

    count: jax.Array


@hyperparams.validated()
def scale_by_bias_correction(
    b1: float = 0.9, b2: float = 0.999
) -> optax.GradientTransformationExtraArgs:
    """Multiplies the updates by Adam's step-size correction ``√(1−β₂ᵗ)/(1−β₁ᵗ)``.

    The bias correction the Hugging Face ``AdamW`` and the official APOLLO code
    fold into the learning rate (``step_size = lr·√(1−β₂ᵗ)/(1−β₁ᵗ)``), as a
    separate transform for chains whose direction is not a plain Adam ratio
    (APOLLO scales the raw gradient, then limits its norm, then applies this).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_bias_correction(0.9, 0.999)
      >>> u, _ = tx.update(jnp.ones(1), tx.init(jnp.ones(1)))
      >>> round(float(u[0]), 5)   # sqrt(0.001) / 0.1
      0.31623
    """

    def init_fn(params: base.Params) -> BiasCorrectionState:
        del params
        return BiasCorrectionState(jnp.zeros([], jnp.int32))

    def update_fn(
        updates: base.Updates,
        state: BiasCorrectionState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, BiasCorrectionState]:
        del params, extra
        count = optax.safe_increment(state.count)
        factor = step_size_correction(b1, b2, count)
        new = jax.tree.map(
            lambda u: None if u is None else (u * factor.astype(u.dtype)).astype(u.dtype),
            updates,
            is_leaf=base.is_leaf_or_none,
        )
        return new, BiasCorrectionState(count)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
