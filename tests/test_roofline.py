"""The roofline cost models of benchmarks/roofline.py (no timing, no compilation)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

import optx
from benchmarks import _trees, roofline


@pytest.fixture(scope="module")
def tiny() -> roofline.TreeInfo:
    return roofline.TreeInfo.from_params(_trees.gpt_param_shapes(_trees.PRESETS["tiny"]))


def test_every_registered_optimizer_has_a_cost_model(tiny: roofline.TreeInfo) -> None:
    missing = sorted(set(optx.list_optimizers()) - set(roofline.COST_MODELS))
    assert not missing, f"add cost models for {missing} to benchmarks/roofline.py"
    for name in [*roofline.REFERENCE_MODELS, *optx.list_optimizers()]:
        cost = roofline.cost_of(name, tiny)
        assert math.isfinite(cost.flops) and cost.flops >= 0, name
        assert math.isfinite(cost.bytes) and cost.bytes > 0, name
    with pytest.raises(KeyError, match="cost model"):
        roofline.cost_of("no_such_optimizer", tiny)


def test_elementwise_and_newton_schulz_counts() -> None:
    """AdamW moves 28 bytes per parameter (g, p, p', m, m', v, v'); Muon's
    Newton–Schulz on an m×n matrix (m ≤ n) costs 5·(4m²n + 2m³) flops."""
    params = {
        "blocks": {"0": {"mlp": {"up": {"kernel": jax.ShapeDtypeStruct((8, 32), jnp.float32)}}}},
        "final_norm": {"scale": jax.ShapeDtypeStruct((8,), jnp.float32)},
    }
    tree = roofline.TreeInfo.from_params(params)
    assert tree.size == 8 * 32 + 8 and tree.matrix_size == 8 * 32
    assert tree.matrices[0].view == (1, 8, 32)
    adamw = roofline.cost_of("adamw", tree)
    assert adamw.flops == 0 and adamw.bytes == 28 * tree.size
    muon = roofline.cost_of("muon", tree)
    m, n = 8, 32
    assert muon.flops == 5 * (4 * m * m * n + 2 * m**3)
    assert muon.bytes > 20 * tree.size  # AdamW fallback + momentum + matmul operands
    peaks = roofline.Peaks(flops=1e9, bytes=1e9)
    assert muon.seconds(peaks.flops, peaks.bytes) == muon.flops / 1e9 + muon.bytes / 1e9
    # 8-bit states (quantize_moments' three recomputing loops) on leaves of at
    # least 4096 entries: Adam reads codes+g (block maxima), codes+g+p (update),
    # code+g per moment (codes) = 26 B and writes p + 2 codes = 6 B; Lion and
    # momentum 19 + 5 B. Smaller leaves keep float32 moments (28 and 20 B).
    coded = roofline.TreeInfo.from_params(
        {
            "w": jax.ShapeDtypeStruct((64, 64), jnp.float32),
            "b": jax.ShapeDtypeStruct((8,), jnp.float32),
        }
    )
    assert roofline.cost_of("adamw_8bit", coded).bytes == 32 * 4096 + 28 * 8
    assert roofline.cost_of("lion_8bit", coded).bytes == 24 * 4096 + 20 * 8
    assert roofline.cost_of("sgd_momentum_8bit", coded).bytes == 24 * 4096 + 20 * 8
