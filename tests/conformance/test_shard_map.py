"""Conformance: the update inside ``jax.shard_map`` (manual SPMD, ``check_vma=True``).

A train step written with ``jax.shard_map`` runs ``init`` and ``update`` on each
device's block of the parameters. With a layer stack sharded over its layer
axis every device holds whole matrices, so a per-matrix method computes on the
block what it computes on the whole stack: every registered optimizer must run
there under ``shard_map``'s default type checks (``check_vma=True``: a state
made from constants by ``init`` and refreshed from the local gradients differs
in its varying-axes type between a ``lax.cond``'s branches or a loop's carry;
``base.cond``/``scan``/``while_loop``/``fori_loop`` mark them) and give the
unsharded run's numbers, except the methods in :data:`DEVICE_LOCAL`, whose
step reads more than one matrix or draws by the local shape, and on the bias
for :data:`PER_LEAF_ON_THE_BIAS` (README "Inside ``jax.shard_map``").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from tests.conformance import problems

NAMES = optx.list_optimizers()
GROUPED = [pytest.param(n, marks=pytest.mark.xdist_group(n), id=n) for n in NAMES]
LAYERS = 4
SPECS = {"stack": {"kernel": P("x", None, None), "bias": P("x", None)}}

# Steps that are not per matrix: on a device's block they differ from the whole
# stack's (they must still run and stay finite).
DEVICE_LOCAL = {
    "agvm_sgd": "gradient-variance statistics over the whole tree",
    "apollo": "random projection drawn by the local leaf shape",
    "apollo_mini": "random projection drawn by the local leaf shape",
    "eggroll": "perturbations drawn by the local leaf shape, fitness of the local block",
    "frugal": "the active blocks are chosen among the local matrices",
    "mfac": "inner products of whole-tree gradients",
    "sophia_h": "Hutchinson probes drawn by the local leaf shape",
    "adahessian": "Hutchinson probes drawn by the local leaf shape",
    "sophia_g": "labels sampled by the local key and block",
}

# A per-leaf statistic of the stacked bias ``(LAYERS, 6)``, which the name
# router does not know is a stack (``optx.router_for`` on a scanned model
# does): only the kernel must match.
PER_LEAF_ON_THE_BIAS = {
    "adamw_8bit": "8-bit blocks of the flattened leaf span layers",
    "galore_8bit": "8-bit blocks of the flattened leaf span layers",
    "sgd_momentum_8bit": "8-bit blocks of the flattened leaf span layers",
    "lion_kappa": "the nuclear κ's polar factor of a non-matrix leaf is per leaf",
    "sgd_sai": "the g-SNR of a non-matrix leaf is per leaf",
}


def _loss(params: Any) -> jax.Array:
    """Separable, so a block's gradient is the whole gradient's block."""
    return sum(jnp.sum((x - 0.1) ** 2 + 0.05 * x**4) for x in jax.tree.leaves(params))


def _train(
    spec: optx.OptimizerSpec, tx: Any, params: Any, loss: Callable[[Any], jax.Array] = _loss
) -> Any:
    key = jax.random.key(0)
    state = tx.init(params)
    for step in range(2):
        _, grads, extra = problems.extra_args_for(spec, loss, params, step, key)
        updates, state = tx.update(grads, state, params, **extra)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name", GROUPED)
def test_update_inside_shard_map_on_a_layer_sharded_stack(name: str) -> None:
    spec = optx.get_optimizer(name)
    tx = spec.build(**spec.test_overrides)
    k1, k2 = jax.random.split(jax.random.key(3))
    params = {
        "stack": {
            "kernel": 0.3 * jax.random.normal(k1, (LAYERS, 8, 6)),
            "bias": 0.1 * jax.random.normal(k2, (LAYERS, 6)),
        }
    }
    mesh = jax.make_mesh((LAYERS,), ("x",), devices=jax.devices()[:LAYERS])
    train = functools.partial(_train, spec, tx)
    in_mesh = jax.shard_map(train, mesh=mesh, in_specs=(SPECS,), out_specs=SPECS)
    placed = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), SPECS))
    got = jax.jit(in_mesh)(placed)
    for leaf in jax.tree.leaves(got):
        assert bool(jnp.isfinite(leaf).all())
    if name in DEVICE_LOCAL:
        return
    want = jax.jit(train)(params)
    if name in PER_LEAF_ON_THE_BIAS:
        got, want = got["stack"]["kernel"], want["stack"]["kernel"]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adahessian", "sophia_h"])
def test_curvature_probes_are_tangents_of_sharded_blocks(name: str) -> None:
    """FSDP written with ``shard_map``: each device holds a column block of the
    kernel and the loss gathers the blocks. The Hutchinson probes (drawn from
    a key, device-invariant) are marked varying like their leaves
    (``base.vary_like``), so the loss's ``all_gather`` takes them as tangents;
    before, it raised that its operand was not device-varying."""
    spec = optx.get_optimizer(name)
    tx = spec.build(**spec.test_overrides)
    params = {"hidden": {"kernel": 0.3 * jax.random.normal(jax.random.key(1), (6, 8))}}
    specs = {"hidden": {"kernel": P(None, "x")}}
    mesh = jax.make_mesh((LAYERS,), ("x",), devices=jax.devices()[:LAYERS])

    def loss(p: Any) -> jax.Array:
        whole = jax.lax.all_gather(p["hidden"]["kernel"], "x", axis=1, tiled=True)
        return _loss(whole) / LAYERS

    train = functools.partial(_train, spec, tx, loss=loss)
    in_mesh = jax.shard_map(train, mesh=mesh, in_specs=(specs,), out_specs=specs)
    placed = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    got = jax.jit(in_mesh)(placed)
    assert bool(jnp.isfinite(got["hidden"]["kernel"]).all())
