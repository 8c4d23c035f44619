"""Tests for momentum and Adam moments (optx._src.moments)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx


def momentum_reference(grads, beta, kind, nesterov, bias_correction):
    """float64 NumPy momentum from the formulas in the module docstring."""
    mu = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        if kind == "ema":
            mu = beta * mu + (1 - beta) * g
            mu_hat = mu / (1 - beta**t) if bias_correction else mu
            out.append((1 - beta) * g + beta * mu_hat if nesterov else mu_hat)
        else:
            mu = beta * mu + g
            out.append(g + beta * mu if nesterov else mu)
    return out


@pytest.mark.parametrize(
    "kind,nesterov,bias_correction",
    [
        ("ema", True, False),
        ("ema", False, False),
        ("ema", True, True),
        ("ema", False, True),
        ("sum", True, False),
        ("sum", False, False),
    ],
)
def test_momentum_matches_reference(kind, nesterov, bias_correction) -> None:
    grads = list(np.random.default_rng(0).normal(size=(5, 3, 4)))
    want = momentum_reference(grads, 0.9, kind, nesterov, bias_correction)
    with jax.enable_x64(True):
        tx = optx.scale_by_momentum(
            0.9, kind=kind, nesterov=nesterov, bias_correction=bias_correction
        )
        state = tx.init(jnp.zeros((3, 4), jnp.float64))
        for g, w in zip(grads, want):
            u, state = tx.update(jnp.asarray(g), state)
            np.testing.assert_allclose(np.asarray(u), w, rtol=1e-12)
    assert int(state.count) == 5


def test_keller_and_moonlight_nesterov_differ_by_the_constant_one_minus_beta() -> None:
    """M_ema = (1-β) M_sum, hence U_keller = (1-β) G + β M_ema = (1-β) U_moonlight."""
    grads = [jnp.full((2, 3), float(i + 1)) * jnp.arange(6.0).reshape(2, 3) for i in range(4)]
    ema, sm = optx.scale_by_momentum(0.9, kind="ema"), optx.scale_by_momentum(0.9, kind="sum")
    s1, s2 = ema.init(grads[0]), sm.init(grads[0])
    for g in grads:
        u1, s1 = ema.update(g, s1)
        u2, s2 = sm.update(g, s2)
        np.testing.assert_allclose(u1, (1 - 0.9) * u2, rtol=1e-5)


def test_momentum_dtypes_and_validation() -> None:
    tx = optx.scale_by_momentum(0.9, mu_dtype=jnp.float32)
    p = jnp.zeros(3, jnp.bfloat16)
    s = tx.init(p)
    assert s.mu.dtype == jnp.float32
    u, s2 = tx.update(jnp.ones(3, jnp.bfloat16), s)
    assert u.dtype == jnp.bfloat16 and s2.mu.dtype == jnp.float32
    with pytest.raises(ValueError, match="kind"):
        optx.scale_by_momentum(kind="heavy")
    with pytest.raises(ValueError, match="beta"):
        optx.scale_by_momentum(1.5)
    with pytest.raises(ValueError, match="beta"):
        optx.scale_by_momentum(float("nan"))
    with pytest.raises(ValueError, match="only defined for kind='ema'"):
        optx.scale_by_momentum(kind="sum", bias_correction=True)


def test_adam_equals_optax_and_keeps_nu_dtype() -> None:
    params = {"w": jnp.zeros((3, 2))}
    ours, ref = optx.scale_by_adam(0.9, 0.99), optax.scale_by_adam(0.9, 0.99)
    s1, s2 = ours.init(params), ref.init(params)
    for i in range(3):
        g = {"w": jnp.full((3, 2), float(i + 1))}
        u1, s1 = ours.update(g, s1)
        u2, s2 = ref.update(g, s2)
        np.testing.assert_array_equal(u1["w"], u2["w"])
    bf = {"w": jnp.zeros((3, 2), jnp.bfloat16)}
    tx = optx.scale_by_adam(nu_dtype=jnp.float32)
    s = tx.init(bf)
    assert s.nu["w"].dtype == jnp.float32 and s.mu["w"].dtype == jnp.bfloat16
    u, s = jax.jit(tx.update)({"w": jnp.ones((3, 2), jnp.bfloat16)}, s)
    assert s.nu["w"].dtype == jnp.float32 and u["w"].dtype == jnp.bfloat16


def test_bf16_second_moment_loses_small_updates_that_f32_keeps() -> None:
    """Why nu_dtype exists: (1 - 0.999) g^2 increments vanish against bf16 nu."""
    g = {"w": jnp.ones((4,), jnp.bfloat16)}
    for nu_dtype, expect_growth in ((None, False), (jnp.float32, True)):
        tx = optx.scale_by_adam(b2=0.999, nu_dtype=nu_dtype)
        s = tx.init(g)
        for _ in range(300):
            _, s = tx.update(g, s)
        nu = float(s.nu["w"][0])
        # exact EMA of 1 after 300 steps: 1 - 0.999**300 = 0.259
        assert (abs(nu - (1 - 0.999**300)) < 0.01) == expect_growth
