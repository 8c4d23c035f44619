"""layouts.map_matrix_groups: same-shape matrix leaves share one call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from optx._src import layouts


def _per_matrix_max(x: jax.Array, lay: optx.ResolvedLayout) -> jax.Array:
    """x / max|matrix|: a per-matrix statistic, batch axes independent."""
    axes = lay.reduction_axes + lay.output_axes
    return x / jnp.max(jnp.abs(x), axis=axes, keepdims=True)


def test_groups_same_shapes_and_matches_per_leaf_map() -> None:
    r = np.random.default_rng(0)
    tree = {
        "blocks": {
            str(i): {
                "up": {"kernel": jnp.asarray(r.standard_normal((4, 6)), jnp.float32)},
                "attn": {"query": {"kernel": jnp.asarray(r.standard_normal((4, 2, 3)))}},
                "norm": {"scale": jnp.ones(4)},
            }
            for i in range(3)
        },
        "stack": {"kernel": jnp.asarray(r.standard_normal((2, 4, 6)), jnp.float32)},
        "none": None,
    }
    calls: list[tuple[int, ...]] = []

    def fn(x: jax.Array, lay: optx.ResolvedLayout) -> jax.Array:
        calls.append(lay.shape)
        assert x.shape == lay.shape
        return _per_matrix_max(x, lay)

    got = layouts.map_matrix_groups(fn, None, tree)
    want = layouts.map_matrix_leaves(_per_matrix_max, None, tree)
    # Three (4, 6) kernels -> one call on (3, 4, 6); three attention kernels -> one
    # call on (3, 4, 2, 3); the lone (2, 4, 6) stack -> its own call.
    assert sorted(calls) == sorted([(3, 4, 6), (3, 4, 2, 3), (2, 4, 6)])
    assert got["none"] is None
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(got["blocks"]["0"]["norm"]["scale"], jnp.ones(4))


def test_explicitly_sharded_leaves_are_not_stacked() -> None:
    mesh = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:2])
    x = jnp.arange(24.0).reshape(4, 6) + 1.0
    sharded = jax.device_put(x, NamedSharding(mesh, P("x", None)))
    tree = {"a": {"kernel": sharded}, "b": {"kernel": sharded}}
    calls: list[tuple[int, ...]] = []

    def fn(v: jax.Array, lay: optx.ResolvedLayout) -> jax.Array:
        calls.append(lay.shape)
        return _per_matrix_max(v, lay)

    out = layouts.map_matrix_groups(fn, None, tree)
    assert calls == [(4, 6), (4, 6)]
    np.testing.assert_allclose(np.asarray(out["a"]["kernel"]), np.asarray(x) / 24.0, rtol=1e-6)
