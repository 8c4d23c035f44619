"""Tests of optx/_src/weight_decay.py: decay of the post-step weights."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx


@pytest.mark.parametrize("schedule", [False, True])
def test_decay_after_step_matches_official_order(schedule: bool) -> None:
    lr = optax.linear_schedule(0.1, 0.05, 4) if schedule else 0.1
    wd = 0.3
    tx = optax.chain(optx.add_decayed_weights_after_step(wd, lr), optax.scale_by_learning_rate(lr))
    w = jnp.array([1.0, -2.0, 0.5])
    state = tx.init(w)
    w_ref = np.asarray(w, np.float64)
    for t in range(4):
        d = np.array([0.3, -0.1, 2.0]) * (t + 1)
        u, state = tx.update(jnp.asarray(d, jnp.float32), state, w)
        w = optax.apply_updates(w, u)
        eta = lr(t) if schedule else lr
        w_ref = w_ref - eta * d  # the step, then W <- W - eta·wd·W (official)
        w_ref = w_ref - eta * wd * w_ref
        np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-6)


def test_decay_after_step_needs_params_and_masks() -> None:
    tx = optx.add_decayed_weights_after_step(0.1, 1.0, mask={"a": True, "b": False})
    p = {"a": jnp.ones(2), "b": jnp.ones(2)}
    u, _ = tx.update({"a": jnp.zeros(2), "b": jnp.zeros(2)}, tx.init(p), p)
    np.testing.assert_allclose(np.asarray(u["a"]), 0.1)
    np.testing.assert_allclose(np.asarray(u["b"]), 0.0)
    bare = optx.add_decayed_weights_after_step(0.1, 1.0)
    with pytest.raises(ValueError, match="params"):
        bare.update(jnp.ones(2), bare.init(jnp.ones(2)))
