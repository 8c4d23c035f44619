"""Sharded-against-unsharded trajectories on the 8-device test mesh."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

BOTH_AXES = P("data", "model")


def apply_steps(tx: optax.GradientTransformation, params: Any, grads: Sequence[Any]) -> Any:
    """``params`` after one jitted ``tx`` step per gradient tree."""
    state, step = tx.init(params), jax.jit(tx.update)
    for g in grads:
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def assert_sharded_run_matches(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Sequence[Any],
    spec: P = BOTH_AXES,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """The trajectory with every leaf sharded by ``spec`` on a ``(data 4, model 2)``
    Explicit mesh ends where the unsharded one does, with and without
    ``jax.set_mesh``."""
    want = apply_steps(tx, params, grads)
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    sharding = NamedSharding(mesh, spec)

    def put(tree: Any) -> Any:
        return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)

    sharded_grads = [put(g) for g in grads]
    runs = [apply_steps(tx, put(params), sharded_grads)]
    with jax.set_mesh(mesh):
        runs.append(apply_steps(tx, put(params), sharded_grads))
    for got in runs:
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)
