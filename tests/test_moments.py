"""Tests of optx/_src/moments.py additions: Adam's ε placement and the
bias-correction step factor (float64 NumPy references)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx


def _grads(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((3, 4)) * 10.0 ** rng.uniform(-3, 0, (3, 4)) for _ in range(n)]


@pytest.mark.parametrize("placement", ["corrected", "uncorrected"])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_eps_placement_matches_reference(placement: str, bias_correction: bool) -> None:
    b1, b2, eps = 0.9, 0.999, 1e-3  # a large eps makes the placement visible
    tx = optx.scale_by_adam(b1, b2, eps, eps_placement=placement, bias_correction=bias_correction)
    state = tx.init(jnp.zeros((3, 4)))
    m = v = 0.0
    for t, g in enumerate(_grads(), start=1):
        u, state = tx.update(jnp.asarray(g, jnp.float32), state)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        if not bias_correction:
            ref = m / (np.sqrt(v) + eps)
        elif placement == "corrected":  # optax / bitsandbytes / PyTorch Adam
            ref = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        else:  # Hugging Face AdamW, official GaLore/APOLLO
            ref = np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(np.asarray(u), ref, rtol=2e-5)


def test_default_placement_is_optax() -> None:
    g = jnp.asarray(_grads(1)[0], jnp.float32)
    a, _ = optx.scale_by_adam().update(g, optx.scale_by_adam().init(g))
    b, _ = optax.scale_by_adam().update(g, optax.scale_by_adam().init(g))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_placement_dtypes_and_bad_arguments() -> None:
    tx = optx.scale_by_adam(eps_placement="uncorrected", mu_dtype="bfloat16", nu_dtype="float32")
    s = tx.init(jnp.zeros(3, jnp.float32))
    assert s.mu.dtype == jnp.bfloat16 and s.nu.dtype == jnp.float32
    u, s2 = tx.update(jnp.ones(3, jnp.bfloat16), s)
    assert u.dtype == jnp.bfloat16 and s2.mu.dtype == jnp.bfloat16
    with pytest.raises(ValueError):
        optx.scale_by_adam(eps_placement="inside")
    with pytest.raises(ValueError):
        optx.scale_by_adam(eps_placement="uncorrected", nesterov=True)


def test_bias_correction_factor() -> None:
    tx = optx.scale_by_bias_correction(0.9, 0.99)
    state = tx.init(jnp.zeros(2))
    for t in range(1, 4):
        u, state = tx.update(jnp.ones(2), state)
        np.testing.assert_allclose(np.asarray(u), np.sqrt(1 - 0.99**t) / (1 - 0.9**t), rtol=1e-5)
