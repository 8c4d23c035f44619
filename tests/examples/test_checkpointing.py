"""Tests for examples/checkpointing.py: resume gives the same next-step loss."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optx
from examples import checkpointing, data, models


@pytest.mark.parametrize("optimizer", ["adamw", "normuon"])
def test_resume_gives_the_same_next_step_loss(
    optimizer: str,
    tmp_path: pathlib.Path,
    tiny_corpus: data.CharCorpus,
    tiny_cfg: models.TransformerConfig,
) -> None:
    continued, resumed = checkpointing.resume_check(
        optimizer, tmp_path, cfg=tiny_cfg, corpus=tiny_corpus, steps=2, batch_size=4
    )
    assert np.isfinite(continued) and continued == resumed
    assert checkpointing.latest_step(tmp_path) == 2


def test_restore_keeps_namedtuples_and_dtypes(tmp_path: pathlib.Path) -> None:
    params = {"hidden": {"kernel": jnp.ones((4, 3))}, "bias": jnp.zeros((3,), jnp.bfloat16)}
    tx = optx.muon(0.02)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(7)}
    checkpointing.save(tmp_path, 7, state)
    fresh = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}
    restored = checkpointing.restore(tmp_path, None, fresh)
    assert int(restored["step"]) == 7
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.dtype == b.dtype and a.shape == b.shape


def test_restore_without_checkpoint_raises(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        checkpointing.restore(tmp_path / "empty", None, {"x": jnp.zeros(2)})
