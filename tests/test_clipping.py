"""clip_by_quantile (ROOT's per-matrix soft threshold) against float64 NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from tests.matrix_views import matrices

SHAPES = {"hidden": (5, 9), "stack": (3, 9, 4), "conv": (3, 3, 2, 6)}


def quantile_linear(v: np.ndarray, q: float) -> float:
    """torch.quantile / 'linear': x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌈h⌉) − x_(⌊h⌋)), h = q(N−1)."""
    s = np.sort(v.ravel())
    h = q * (s.size - 1)
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    return float(s[lo] + (h - lo) * (s[hi] - s[lo]))


def soft_threshold_clip(m: np.ndarray, q: float, eps: float) -> np.ndarray:
    t = quantile_linear(np.abs(m), q) + eps
    return m - np.sign(m) * np.maximum(np.abs(m) - t, 0.0)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.9, 1.0])
def test_clip_by_quantile_matches_reference_per_matrix(q: float) -> None:
    r = np.random.default_rng(0)
    g = {k: r.standard_t(3, size=s) for k, s in SHAPES.items()}  # heavy tails
    with jax.enable_x64(True):
        tx = optx.clip_by_quantile(q, 1e-9)
        u, _ = tx.update({k: {"kernel": jnp.asarray(v)} for k, v in g.items()}, optax.EmptyState())
    for k, v in g.items():
        want = np.stack([soft_threshold_clip(m, q, 1e-9) for m in matrices(v, k)])
        np.testing.assert_allclose(matrices(np.asarray(u[k]["kernel"]), k), want, rtol=1e-14)


def test_quantile_interpolates_like_torch() -> None:
    x = jnp.array([[4.0, 1.0], [3.0, 2.0]])
    lay = optx.MatrixLayout().resolve(x.shape)
    # h = 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
    np.testing.assert_allclose(optx.matrix_quantile(x, 0.9, lay), [[3.7]], rtol=1e-6)
    u, _ = optx.clip_by_quantile(0.9, 0.0).update({"w": x}, optax.EmptyState())
    np.testing.assert_allclose(u["w"], [[3.7, 1.0], [3.0, 2.0]], rtol=1e-6)


def test_traced_quantile_under_inject_hyperparams() -> None:
    tx = optax.inject_hyperparams(optx.clip_by_quantile)(quantile=0.5)
    g = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
    state = tx.init(g)
    u, state = jax.jit(tx.update)(g, state)
    np.testing.assert_allclose(u["w"], jnp.minimum(g["w"], 4.5))
    state.hyperparams["quantile"] = jnp.asarray(1.0)
    u, _ = jax.jit(tx.update)(g, state)
    np.testing.assert_allclose(u["w"], g["w"])


def test_dtype_and_passthrough() -> None:
    g = {"w": jnp.ones((4, 6), jnp.bfloat16), "b": jnp.arange(4.0)}
    u, _ = optx.clip_by_quantile().update(g, optax.EmptyState())
    assert u["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(u["b"], g["b"])


def test_sharded_matrix_matches_unsharded() -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    x = jax.random.normal(jax.random.key(0), (8, 16))
    tx = optx.clip_by_quantile(0.9)
    ref, _ = tx.update({"w": x}, optax.EmptyState())
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data", "model")))
        out, _ = jax.jit(tx.update)({"w": xs}, optax.EmptyState())
        assert jax.typeof(out["w"]).sharding.spec == P("data", "model")
    np.testing.assert_allclose(np.asarray(out["w"]), np.asarray(ref["w"]), rtol=1e-6)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quantile"):
        optx.clip_by_quantile(1.5)
    with pytest.raises(ValueError, match="eps"):
        optx.clip_by_quantile(0.9, eps=-1.0)
    with pytest.raises(ValueError, match="strategy"):
        optx.clip_by_quantile(0.9, strategy="scatter")
