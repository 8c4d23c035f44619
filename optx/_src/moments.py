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

from optx._src import base

MOMENTUM_KINDS = ("ema", "sum")


class ScaleByMomentumState(NamedTuple):
    """State of :func:`scale_by_momentum`."""

    count: jax.Array
    mu: base.Updates


def scale_by_momentum(
    beta: Any = 0.95,
    *,
    kind: str = "ema",
    nesterov: bool = True,
    bias_correction: bool = False,
    mu_dtype: Any = None,
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
    mu_dtype = base.canonicalize_dtype(mu_dtype)

    def init_fn(params: base.Params) -> ScaleByMomentumState:
        return ScaleByMomentumState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
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
            cdt = jnp.promote_types(g.dtype, mu.dtype)
            gc, muc = g.astype(cdt), mu.astype(cdt)
            if kind == "ema":
                new_mu = beta * muc + (1.0 - beta) * gc
                mu_hat = new_mu / correction.astype(cdt)
                u = (1.0 - beta) * gc + beta * mu_hat if nesterov else mu_hat
            else:
                new_mu = beta * muc + gc
                u = gc + beta * new_mu if nesterov else new_mu
            return u.astype(g.dtype), new_mu.astype(mu.dtype)

        out = jax.tree.map(leaf, updates, state.mu, is_leaf=base.is_leaf_or_none)
        new_u, new_mu = base.unzip_tree(updates, out)
        return new_u, ScaleByMomentumState(count=count, mu=new_mu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_adam(
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    *,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
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

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv 1412.6980.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_adam(nu_dtype=jnp.float32)
      >>> s = tx.init(jnp.zeros(3, jnp.bfloat16))
      >>> s.nu.dtype
      dtype('float32')
    """
    nu_dtype = base.canonicalize_dtype(nu_dtype)
    inner = optax.scale_by_adam(b1, b2, eps, eps_root, mu_dtype=mu_dtype, nesterov=nesterov)

    def init_fn(params: base.Params) -> optax.ScaleByAdamState:
        state = inner.init(params)
        if nu_dtype is not None:
            state = state._replace(nu=optax.tree.zeros_like(params, dtype=nu_dtype))
        return state

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del extra
        new_updates, new_state = inner.update(updates, state, params)
        new_state = new_state._replace(nu=optax.tree.cast_like(new_state.nu, state.nu))
        # f32 moments with bf16 gradients give f32 updates in optax; keep the
        # gradient dtype (apply_updates would cast anyway).
        return optax.tree.cast_like(new_updates, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
