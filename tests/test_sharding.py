"""Tests for optx._src.sharding (8 virtual CPU devices from conftest)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from optx._src import sharding


def _mesh(kind=AxisType.Explicit):
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind,) * 2)


def test_eight_devices_available() -> None:
    assert len(jax.devices()) == 8


def test_zeros_like_spec_keeps_kept_axes_only() -> None:
    mesh = _mesh()
    with jax.set_mesh(mesh):
        w = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P("data", "model")))
        row = sharding.zeros_like_spec((1, 4), jnp.float32, w)
        col = sharding.zeros_like_spec((8, 1), jnp.float32, w)
        factor = sharding.zeros_like_spec((8, 8), jnp.float32, w, keep=[True, False])
        assert jax.typeof(row).sharding.spec == P(None, "model")
        assert jax.typeof(col).sharding.spec == P("data", None)
        assert jax.typeof(factor).sharding.spec == P("data", None)
    plain = sharding.zeros_like_spec((1, 4), jnp.float32, jnp.ones((8, 4)))
    assert plain.shape == (1, 4)


@pytest.mark.parametrize("strategy", ["auto", "replicate"])
def test_apply_matrix_fn_keeps_sharding(strategy) -> None:
    mesh = _mesh()
    x = jax.random.normal(jax.random.key(0), (16, 8))
    fn = lambda m: m @ m.T @ m  # noqa: E731
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data", "model")))
        y = jax.jit(lambda v: sharding.apply_matrix_fn(fn, v, strategy))(xs)
        assert jax.typeof(y).sharding.spec == P("data", "model")
    np.testing.assert_allclose(np.asarray(y), np.asarray(fn(x)), rtol=1e-5)
    with pytest.raises(ValueError, match="strategy"):
        sharding.apply_matrix_fn(fn, x, "nope")


def test_state_shardings_under_auto_mesh_gives_sharded_state() -> None:
    mesh = _mesh(AxisType.Auto)
    params = {"mlp": {"kernel": jnp.ones((8, 4))}, "bias": jnp.ones(4)}
    specs = {"mlp": {"kernel": P("data", "model")}, "bias": P()}
    sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)
    tx = optx.normuon()
    # Plain jitted init under Auto axes loses the sharding (the pitfall) ...
    naive = jax.jit(tx.init)(sharded)
    mu = naive.inner_states["matrix"].inner_state[0].mu["mlp"]["kernel"]
    assert not isinstance(mu.sharding, NamedSharding) or mu.sharding.spec != P("data", "model")
    # ... state_shardings fixes it, including the neuron-wise row statistic.
    shardings = optx.sharding.state_shardings(tx, sharded)
    state = jax.jit(tx.init, out_shardings=shardings)(sharded)
    inner = state.inner_states["matrix"].inner_state
    assert inner[0].mu["mlp"]["kernel"].sharding.spec == P("data", "model")
    nu = inner[2][0].nu["mlp"]["kernel"]
    assert nu.shape == (1, 4) and nu.sharding.spec == P(None, "model")


def test_state_shardings_requires_sharded_params() -> None:
    with pytest.raises(ValueError, match="NamedSharding"):
        optx.sharding.state_shardings(optax.adam(1e-3), {"w": jnp.ones(3)})
