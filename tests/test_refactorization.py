"""Tests of optx/_src/refactorization.py (arXiv 2505.22922's techniques)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from optx._src.refactorization import default_factor_pairs


def test_refactorize_is_balanced_and_exact() -> None:
    rng = np.random.default_rng(0)
    L = rng.standard_normal((2, 7, 3)) * [1.0, 10.0, 0.1]  # unbalanced factors
    R = rng.standard_normal((2, 3, 5))
    nl, nr = optx.linalg.refactorize(jnp.asarray(L, jnp.float32), jnp.asarray(R, jnp.float32))
    nl, nr = np.asarray(nl, np.float64), np.asarray(nr, np.float64)
    np.testing.assert_allclose(nl @ nr, L @ R, rtol=1e-4, atol=1e-4)
    # Reference: W = U S V^T; L' = U_r S^1/2, R' = S^1/2 V_r^T, so L'^T L' = R' R'^T = S.
    s = np.linalg.svd(L @ R, compute_uv=False)[:, :3]
    for b in range(2):
        np.testing.assert_allclose(nl[b].T @ nl[b], np.diag(s[b]), atol=1e-3 * s[b].max())
        np.testing.assert_allclose(nr[b] @ nr[b].T, np.diag(s[b]), atol=1e-3 * s[b].max())
    with pytest.raises(ValueError):
        optx.linalg.refactorize(jnp.ones((4, 2)), jnp.ones((3, 5)))


def test_reset_state_every_restarts_moments_and_counter() -> None:
    tx = optx.reset_state_every(optax.adam(0.1), every_k=3)
    ref = optax.adam(0.1)
    w = jnp.ones(3)
    state, rstate = tx.init(w), ref.init(w)
    grads = [jnp.array([1.0, -2.0, 0.5]) * (i + 1) for i in range(6)]
    for i, g in enumerate(grads):
        if i == 3:  # the reset happens before the 4th update
            rstate = ref.init(w)
        u, state = tx.update(g, state, w)
        ru, rstate = ref.update(g, rstate, w)
        np.testing.assert_allclose(np.asarray(u), np.asarray(ru), rtol=1e-6)


def test_refactorize_every_emits_balanced_weights_and_resets() -> None:
    rng = np.random.default_rng(1)
    params = {
        "layer": {
            "lora_a": jnp.asarray(rng.standard_normal((6, 2)) * 5, jnp.float32),
            "lora_b": jnp.asarray(rng.standard_normal((2, 4)) * 0.2, jnp.float32),
        },
        "bias": jnp.zeros(4),
    }
    assert default_factor_pairs(params) == [("layer/lora_a", "layer/lora_b")]
    tx = optx.refactorize_every(optax.sgd(0.01, momentum=0.9), every_k=2)
    state = tx.init(params)
    plain = optax.sgd(0.01, momentum=0.9)
    pstate = plain.init(params)
    p = params
    for i in range(2):
        g = jax.tree.map(lambda x, i=i: jnp.ones_like(x) * (i + 1), p)
        u, state = tx.update(g, state, p)
        pu, pstate = plain.update(g, pstate, p)
        stepped = optax.apply_updates(p, pu)
        p = optax.apply_updates(p, u)
    a, b = np.asarray(p["layer"]["lora_a"]), np.asarray(p["layer"]["lora_b"])
    sa, sb = np.asarray(stepped["layer"]["lora_a"]), np.asarray(stepped["layer"]["lora_b"])
    np.testing.assert_allclose(a @ b, sa @ sb, rtol=1e-4, atol=1e-4)  # same product
    np.testing.assert_allclose(a.T @ a, b @ b.T, rtol=1e-3, atol=1e-3)  # balanced
    np.testing.assert_allclose(np.asarray(p["bias"]), np.asarray(stepped["bias"]))
    # The momentum was reset at the refactorization step.
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(state.inner_state))


def test_refactorize_every_bad_input() -> None:
    with pytest.raises(ValueError, match="no factor pairs"):
        optx.refactorize_every(optax.sgd(0.1), 2).init({"w": jnp.ones((2, 2))})
    tx = optx.refactorize_every(optax.sgd(0.1), 2, pairs=[("a", "missing")])
    with pytest.raises(ValueError, match="missing"):
        tx.init({"a": jnp.ones((2, 1))})
    ok = optx.refactorize_every(optax.sgd(0.1), 2, pairs=[("a", "b")])
    p = {"a": jnp.ones((2, 1)), "b": jnp.ones((1, 2))}
    with pytest.raises(ValueError, match="params"):
        ok.update(p, ok.init(p))
    with pytest.raises(ValueError):
        optx.reset_state_every(optax.sgd(0.1), 0)


def test_quick_recovery_schedule() -> None:
    base = optax.constant_schedule(2.0)
    s = optx.schedules.quick_recovery_schedule(
        base, cycle_length=10, recovery_steps=4, start_factor=0.0
    )
    values = [float(s(t)) for t in range(21)]
    # Official: the first cycle ramps too (to the target at step R - 1 = 3); from the
    # restart on, step t uses lambda(t + 1) (LambdaLR rebuilt with last_epoch = 10).
    np.testing.assert_allclose(values[:10], [0.0, 2 / 3, 4 / 3] + [2.0] * 7, rtol=1e-6)
    np.testing.assert_allclose(values[10:14], [2 / 3, 4 / 3, 2.0, 2.0], rtol=1e-6)
    assert values[19] == 0.0  # lambda(20): the next restart's first ramp value
    with pytest.raises(ValueError):
        optx.schedules.quick_recovery_schedule(1.0, cycle_length=0)


def test_quick_recovery_schedule_with_one_recovery_step_is_the_target() -> None:
    """R = 1: no ramp, the restart step already uses the target ``f(s₀ + 1)`` (formula's
    ``min(1, ·)`` at full progress), never a 0/0."""
    f = optax.linear_schedule(1.0, 0.0, transition_steps=20)
    sched = optx.schedules.quick_recovery_schedule(f, cycle_length=4, recovery_steps=1)
    got = np.array([float(sched(t)) for t in range(9)])
    # Official: s = t before the first restart, t + 1 after; s₀ = 4⌊s/4⌋; since = s − s₀ < 1
    # only at the restart, where the rate is f(s₀ + 1); elsewhere f(s).
    want = []
    for t in range(9):
        s = t + 1 if t >= 4 else t
        s0 = (s // 4) * 4
        want.append(1.0 - (s0 + 1) / 20 if s - s0 < 1 else 1.0 - s / 20)
    np.testing.assert_allclose(got, want, rtol=1e-6)
