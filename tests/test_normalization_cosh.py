"""AuON's primitives (normalize_by_frobenius, scale_by_cosh_rms) and the
``rms_to_rms`` shape rule, against float64 NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.matrix_views import matrices

SHAPES = {"hidden": (5, 9), "stack": (3, 9, 4), "conv": (3, 3, 2, 6)}


def tree(r: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {k: scale * r.normal(size=s) for k, s in SHAPES.items()}


def apply(tx: optax.GradientTransformation, g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    t = {k: {"kernel": jnp.asarray(v)} for k, v in g.items()}
    t["bias"] = jnp.arange(3.0)
    u, _ = tx.update(t, tx.init(t))
    np.testing.assert_array_equal(u["bias"], t["bias"])  # no layout: untouched
    return {k: np.asarray(u[k]["kernel"]) for k in g}


def test_normalize_by_frobenius_per_matrix() -> None:
    g = tree(np.random.default_rng(0))
    with jax.enable_x64(True):
        got = apply(optx.normalize_by_frobenius(1e-7), g)
    for k, v in g.items():
        m = matrices(v, k)
        want = m / (np.sqrt(np.sum(m**2, axis=(1, 2), keepdims=True)) + 1e-7)
        np.testing.assert_allclose(matrices(got[k], k), want, rtol=1e-13)


@pytest.mark.parametrize(("gamma", "normalize_argument"), [(1.0, False), (1.5, True), (0.3, True)])
def test_scale_by_cosh_rms_matches_reference(gamma: float, normalize_argument: bool) -> None:
    g = tree(np.random.default_rng(1), scale=0.7)
    with jax.enable_x64(True):
        tx = optx.scale_by_cosh_rms(gamma, 1e-8, normalize_argument=normalize_argument)
        got = apply(tx, g)
    for k, v in g.items():
        m = matrices(v, k)
        z = m
        if normalize_argument:
            z = m / (np.sqrt(np.sum(m**2, axis=(1, 2), keepdims=True)) + 1e-7)
        r = np.sqrt(np.mean(np.cosh(gamma * z) ** 2, axis=(1, 2), keepdims=True))
        np.testing.assert_allclose(matrices(got[k], k), m / (r + 1e-8), rtol=1e-13)


def test_cosh_brake_only_shrinks_and_tracks_spikiness() -> None:
    flat = jnp.full((8, 8), 1.0)
    spiky = flat.at[0, 0].set(30.0)
    tx = optx.scale_by_cosh_rms(1.0, 0.0, normalize_argument=True)
    u, _ = tx.update({"w": jnp.stack([flat, spiky])}, optax.EmptyState())
    ratio = u["w"] / jnp.stack([flat, spiky])  # the scalar 1/r per matrix
    assert float(ratio.max()) <= 1.0
    assert float(ratio[1, 0, 0]) < float(ratio[0, 0, 0])  # spiky matrix braked harder


def test_bf16_inputs_keep_their_dtype() -> None:
    g = {"w": jnp.ones((4, 6), jnp.bfloat16)}
    for tx in (optx.normalize_by_frobenius(), optx.scale_by_cosh_rms(1.5, normalize_argument=True)):
        u, _ = tx.update(g, optax.EmptyState())
        assert u["w"].dtype == jnp.bfloat16


def test_rms_to_rms_shape_rule() -> None:
    u, _ = optx.scale_by_shape("rms_to_rms").update({"w": jnp.ones((4, 16))}, optax.EmptyState())
    assert float(u["w"][0, 0]) == 2.0  # √(fan_out / fan_in) = √(16/4)
    u, _ = optx.scale_by_shape("rms_to_rms").update({"w": jnp.ones((16, 4))}, optax.EmptyState())
    assert float(u["w"][0, 0]) == 0.5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="eps"):
        optx.normalize_by_frobenius(-1.0)
    with pytest.raises(ValueError, match="eps"):
        optx.scale_by_cosh_rms(1.0, eps=-1e-8)
    with pytest.raises(ValueError, match="gamma"):
        optx.scale_by_cosh_rms(float("nan"))
    with pytest.raises(ValueError, match="rule"):
        optx.scale_by_shape("rms")
