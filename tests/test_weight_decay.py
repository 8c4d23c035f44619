"""Tests for optx._src.weight_decay: decoupled decay of the post-step weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx


def test_decay_after_step_matches_numpy_over_steps() -> None:
    """W_{t+1} = (W_t - η_t U_t)(1 - η_t λ_t), schedules and skip_steps included."""
    lr = optax.linear_schedule(0.1, 0.02, 5)
    wd = optax.linear_schedule(0.5, 0.1, 5)
    tx = optax.chain(
        optx.add_decayed_weights_after_step(wd, lr, skip_steps=1),
        optax.scale_by_learning_rate(lr),
    )
    r = np.random.default_rng(0)
    w = r.normal(size=(3, 4))
    params = jnp.asarray(w, jnp.float32)
    state = tx.init(params)
    for t in range(5):
        u = r.normal(size=(3, 4))
        out, state = tx.update(jnp.asarray(u, jnp.float32), state, params)
        params = params + out
        eta, lam = float(lr(t)), float(wd(t))
        w = (w - eta * u) * (1 - (0.0 if t == 0 else eta * lam))
        np.testing.assert_allclose(params, w, rtol=1e-5, atol=1e-6)


def test_mask_and_dtype() -> None:
    tx = optx.add_decayed_weights_after_step(0.5, 0.1, mask={"w": True, "b": False})
    params = {"w": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.bfloat16)}
    updates = {"w": jnp.zeros(2, jnp.bfloat16), "b": jnp.zeros(2, jnp.bfloat16)}
    out, _ = tx.update(updates, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), 0.5)
    np.testing.assert_array_equal(np.asarray(out["b"], np.float32), 0.0)
    assert out["w"].dtype == jnp.bfloat16


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        optx.add_decayed_weights_after_step(-1.0, 0.1)
    with pytest.raises(TypeError, match="`learning_rate`"):
        optx.add_decayed_weights_after_step(0.1, None)
    with pytest.raises(ValueError):
        optx.add_decayed_weights_after_step(0.1, 0.1, skip_steps=-1)
    tx = optx.add_decayed_weights_after_step(0.1, 0.1)
    with pytest.raises(ValueError):
        tx.update(jnp.ones(2), tx.init(jnp.ones(2)))  # params are required


def test_literal_zero_decay_skips_the_parameters() -> None:
    """λ = 0 as a Python number: the updates come back as they are, the counter advances,
    and the values equal the full formula's (λ = 0 as an array takes the full path)."""
    params = {"w": jnp.arange(6.0).reshape(2, 3) - 2.0, "b": jnp.ones(3, jnp.bfloat16)}
    updates = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.full(3, 0.5, jnp.bfloat16)}
    literal = optx.add_decayed_weights_after_step(0.0, 0.1)
    full = optx.add_decayed_weights_after_step(jnp.asarray(0.0), 0.1)
    out, state = literal.update(updates, literal.init(params), params)
    ref, ref_state = full.update(updates, full.init(params), params)
    for k in params:
        assert out[k] is updates[k]  # not recomputed: the parameters are not read
        np.testing.assert_array_equal(out[k], ref[k])
        assert out[k].dtype == ref[k].dtype
    assert int(state.count) == int(ref_state.count) == 1
    # The jitted step does not read the parameters (a NaN there would show with λW).
    nan_params = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    out, _ = jax.jit(literal.update)(updates, state, nan_params)
    np.testing.assert_array_equal(out["w"], updates["w"])
    with pytest.raises(ValueError):
        literal.update(updates, state)  # params are still required, as in optax
