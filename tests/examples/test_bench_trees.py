"""Tests for benchmarks/_trees.py (the GPT-style tree shared by benchmark scripts)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optx
from benchmarks import _trees
from examples import models


@pytest.mark.parametrize("scanned", [False, True])
def test_tree_matches_the_example_transformer(scanned: bool) -> None:
    shape = _trees.GPTShape(vocab_size=11, d_model=16, n_layers=2, n_heads=2, scanned=scanned)
    cfg = models.TransformerConfig(
        vocab_size=11, d_model=16, n_layers=2, n_heads=2, max_len=8, scan_layers=scanned
    )
    model = models.TransformerLM(cfg, rngs=nnx.Rngs(0))
    model_tree = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    model_shapes = {
        a.path: (a.shape, a.group) for a in optx.default_router().assignments(model_tree)
    }
    tree = _trees.gpt_param_shapes(shape)
    tree_shapes = {a.path: (a.shape, a.group) for a in optx.default_router().assignments(tree)}
    assert tree_shapes == model_shapes
    assert _trees.gpt_param_count(shape) == sum(int(np.prod(s)) for s, _ in tree_shapes.values())


def test_tree_options_and_params() -> None:
    shape = dataclasses.replace(_trees.PRESETS["tiny"], tie_embeddings=True, max_len=16)
    tree = _trees.gpt_shapes(shape)
    assert "lm_head" not in tree and tree["pos_embed"]["embedding"] == (16, 64)
    params = _trees.gpt_params(shape, jax.random.key(0), dtype=jnp.bfloat16)
    leaves = jax.tree.leaves(params)
    assert all(x.dtype == jnp.bfloat16 for x in leaves)
    assert bool(jnp.all(params["final_norm"]["scale"] == 1))
    assert 0.01 < float(jnp.std(params["embed"]["embedding"].astype(jnp.float32))) < 0.03
    loss, grads = jax.value_and_grad(_trees.quadratic_loss)(params)
    assert np.isfinite(float(loss))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="divisible"):
        _trees.GPTShape(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="positive"):
        _trees.GPTShape(n_layers=0)


def test_step_cost_reports_ratios_to_optax_adamw(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import step_cost

    records = step_cost.run(["--preset", "tiny", "--optimizers", "muon", "--repeats", "2"])
    by = {r["optimizer"]: r for r in records}
    assert set(by) == {"optax.adamw", "optax.contrib.muon", "muon"}
    assert by["optax.adamw"]["time_ratio"] == 1.0 and by["optax.adamw"]["state_ratio"] == 1.0
    # Muon keeps one momentum for hidden matrices where AdamW keeps two moments.
    assert by["muon"]["state_ratio"] < 1.0 and by["muon"]["state_bytes_per_param"] < 8.0
    assert all(r["ms_per_step"] > 0 for r in records)
    out = capsys.readouterr().out
    assert "| optax.contrib.muon |" in out and "time / adamw" in out
