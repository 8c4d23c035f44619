"""The compile-time floors (``benchmarks/_compile_floors.py``) model the method they
stand for: the 8-bit floors code exactly the optimizer's quantized state leaves, the
projection floors run Adam on the optimizer's projected moment shapes, and every
changed floor traces and lowers on the tiny tree. Timing is never asserted here."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import optx
from benchmarks import _compile_floors as floors
from benchmarks import _trees


def _tree(scanned: bool) -> Any:
    return _trees.gpt_param_shapes(dataclasses.replace(_trees.PRESETS["tiny"], scanned=scanned))


@pytest.mark.parametrize("scanned", [False, True])
@pytest.mark.parametrize("name", ["adamw_8bit", "lion_8bit", "galore_8bit"])
def test_eight_bit_floor_codes_every_quantized_leaf(name: str, scanned: bool) -> None:
    params = _tree(scanned)
    state = jax.eval_shape(optx.get_optimizer(name).build().init, params)
    coded = sorted(x.shape for x in jax.tree.leaves(state) if x.dtype == jnp.uint8)
    groups = floors._coded_leaves(name, params)
    assert sorted(shape for group in groups for shape, _ in group) == coded
    # A parameter's moments are grouped (Adam: mu signed, nu unsigned; Lion: mu).
    maps = {tuple(signed for _, signed in group) for group in groups}
    assert maps == ({(True,)} if name == "lion_8bit" else {(True, False)})
    prog = floors._coding_program(params, name)
    out = jax.eval_shape(prog.fn, *prog.args)
    assert len(jax.tree.leaves(out)) == 2 * len(coded)  # codes and block scales


@pytest.mark.parametrize("name", ["galore", "dct_adamw", "conda"])
def test_projection_floor_runs_adam_on_the_projected_shapes(name: str) -> None:
    params = _trees.gpt_param_shapes(dataclasses.replace(_trees.PRESETS["small"], scanned=True))
    (prog,) = floors.FLOORS[name](params)
    moments = prog.args[-2]
    floor_shapes = sorted({m[0].shape for m in moments})
    state = jax.eval_shape(optx.get_optimizer(name).build().init, params)
    matrix_mu = {
        x.shape
        for path, x in jax.tree_util.tree_leaves_with_path(state)
        if ".mu" in jax.tree_util.keystr(path) and len(x.shape) >= 2
    }
    if name == "conda":  # moments kept in the parameter's shape, rotated as matrices
        assert all(len(s) == 3 for s in floor_shapes)
    else:
        projected = {s if len(s) == 3 else (1, *s) for s in matrix_mu}
        assert set(floor_shapes) <= projected
    jax.jit(prog.fn).trace(*prog.args).lower()


def test_fallback_leaves_are_the_non_matrix_leaves() -> None:
    params = _tree(scanned=False)
    fallback = floors._fallback_leaves(params, optx.default_router())
    # The norm scales (1-D), the embedding and the head (the default router's
    # fallback); the 4 attention and 2 MLP kernels of each of the 2 blocks are matrices.
    assert len(fallback) == len(jax.tree.leaves(params)) - 12
    assert sum(x.ndim == 1 for x in fallback) == 5
    limited = floors._fallback_leaves(params, optx.default_router().with_rank_limit(64))
    assert len(limited) == len(jax.tree.leaves(params))  # tiny: every side is <= 64


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("name", ["apollo", "apollo_mini", "eggroll"])
def test_random_floors_trace_on_both_trees(name: str, preset: str) -> None:
    """The floors that draw per-leaf randomness build and lower on the unscanned and
    scanned trees, including a tree whose matrices all go to the fallback (tiny:
    APOLLO's rank limit)."""
    for scanned in (False, True):
        shape = dataclasses.replace(_trees.PRESETS[preset], scanned=scanned)
        for prog in floors.FLOORS[name](_trees.gpt_param_shapes(shape)):
            jax.jit(prog.fn).trace(*prog.args).lower()
