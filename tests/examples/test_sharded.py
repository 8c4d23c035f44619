"""Tests for examples/sharded.py on 8 virtual CPU devices (tests/conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import optx
from examples import data, models, sharded


@pytest.fixture(scope="module")
def mesh() -> jax.sharding.Mesh:
    if jax.device_count() < 8:
        pytest.fail("tests/conftest.py must provide 8 CPU devices")
    return sharded.make_mesh(4, 2)


def test_partition_specs(mesh: jax.sharding.Mesh) -> None:
    spec = sharded.partition_spec
    assert spec("blocks/attn/query/kernel", (2, 16, 2, 8), mesh, False) == P(
        None, None, "model", None
    )
    assert spec("blocks/attn/out/kernel", (2, 2, 8, 16), mesh, True) == P(
        None, "model", None, "data"
    )
    assert spec("blocks/mlp/up/kernel", (16, 64), mesh, True) == P("data", "model")
    assert spec("blocks/mlp/down/kernel", (64, 16), mesh, False) == P("model", None)
    assert spec("embed/embedding", (11, 16), mesh, False) == P(None, "model")
    assert spec("blocks/attn_norm/scale", (2, 16), mesh, True) == P()
    # An axis the mesh does not divide stays replicated.
    assert spec("blocks/mlp/up/kernel", (6, 3), mesh, True) == P(None, None)
    with pytest.raises(ValueError, match="devices"):
        sharded.make_mesh(8, 8)


def test_count_collectives_parses_hlo(mesh: jax.sharding.Mesh) -> None:
    text = (
        "%ag = f32[8] all-gather-start(f32[2] %x), dimensions={0}\n"
        "%agd = f32[8] all-gather-done(%ag)\n"
        "%ar = f32[] all-reduce(f32[] %y), to_apply=%add\n"
        "ROOT %t = (f32[8]) tuple(%agd)\n"
    )
    counts = sharded.count_collectives(text)
    assert counts["all-gather"] == 1 and counts["all-reduce"] == 1 and counts["all-to-all"] == 0

    x = jax.device_put(jnp.ones((8, 4)), jax.sharding.NamedSharding(mesh, P("data", None)))
    compiled = jax.jit(lambda a: jnp.sum(a)).lower(x).compile()
    assert sharded.count_collectives(compiled)["all-reduce"] >= 1


def test_sharded_training_matches_one_device(
    mesh: jax.sharding.Mesh, tiny_corpus: data.CharCorpus, tiny_cfg: models.TransformerConfig
) -> None:
    kw = dict(
        cfg=tiny_cfg,
        corpus=tiny_corpus,
        steps=3,
        batch_size=8,
        fsdp=True,
        optimizer_kwargs={"adam_lr_ratio": 1.0},
    )
    run = sharded.train_sharded("muon", mesh=mesh, **kw)
    single = sharded.train_sharded("muon", mesh=sharded.make_mesh(1, 1), **kw)
    np.testing.assert_allclose(run.losses, single.losses, rtol=2e-4)
    assert run.losses[-1] < run.losses[0]
    up = run.params["blocks"]["mlp"]["up"]["kernel"][...]
    assert up.sharding.spec == P(None, "data", "model")
    # Momentum is sharded like its parameter (found by shape among the state leaves).
    mu_specs = [
        s.spec
        for s, x in zip(jax.tree.leaves(run.state_shardings), jax.tree.leaves(run.opt_state))
        if x.shape == up.shape
    ]
    assert mu_specs and all(s == P(None, "data", "model") for s in mu_specs)
    for x, s in zip(jax.tree.leaves(run.opt_state), jax.tree.leaves(run.state_shardings)):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    assert sum(run.step_collectives.values()) > 0


def test_optimizer_step_collectives_by_strategy(tiny_cfg: models.TransformerConfig) -> None:
    params = nnx.split(models.TransformerLM(tiny_cfg, rngs=nnx.Rngs(0)), nnx.Param)[1]
    explicit = sharded.make_mesh(4, 2, explicit=True)
    sh = sharded.param_shardings(params, explicit, fsdp=True)
    counts = {
        s: sharded.optimizer_step_collectives(optx.muon(strategy=s), params, sh, explicit)
        for s in ("auto", "replicate", "batched")
    }
    # Replicating sharded matrices for Newton-Schulz gathers them.
    assert counts["replicate"]["all-gather"] > 0
    assert all(set(c) == set(sharded.COLLECTIVES) for c in counts.values())
    # AdamW needs no collective at all: every update is element-wise.
    adamw = sharded.optimizer_step_collectives(optx.adamw(1e-3), params, sh, explicit)
    assert sum(adamw.values()) == 0
    table = sharded.strategy_table(params, (4, 2), fsdp=True)
    assert table.count("\n") == 7 and "| Explicit | batched |" in table
