"""Tests for optx.tree_utils.state_bytes and friends."""

import jax
import jax.numpy as jnp
import optax
import pytest

import optx


def test_state_bytes_counts_exactly_without_allocating() -> None:
    params = {
        "w": jax.ShapeDtypeStruct((1000, 100), jnp.float32),
        "b": jax.ShapeDtypeStruct((100,), jnp.bfloat16),
    }
    n = 1000 * 100
    assert optx.tree_utils.param_count(params) == n + 100
    # adam: mu + nu (param dtype) + int32 count
    assert optx.tree_utils.state_bytes(optax.adam(1e-3), params) == 2 * (4 * n + 2 * 100) + 4
    assert optx.tree_utils.state_bytes(optax.sgd(1e-3), params) == 0
    assert (
        optx.tree_utils.state_bytes(optx.adamw(1e-3, nu_dtype=jnp.float32), params)
        == (4 * n + 2 * 100) + (4 * n + 4 * 100) + 4
    )


def test_muon_state_is_one_momentum_on_matrices() -> None:
    params = {"mlp": {"kernel": jnp.zeros((64, 32))}, "bias": jnp.zeros((32,))}
    b = optx.tree_utils.state_bytes(optx.muon(), params)
    # momentum for the kernel, Adam mu+nu for the bias, two int32 counters
    assert b == 64 * 32 * 4 + 2 * 32 * 4 + 2 * 4
    nb = optx.tree_utils.state_bytes(optx.normuon(), params)
    assert nb == b + 32 * 4 + 4  # one f32 per output neuron, plus its counter
    assert 0 < optx.tree_utils.state_bytes_per_param(optx.muon(), params) < 4.2


# ----------------------------------------------------------------------------
# Memory-efficient family additions (issue 7)
# ----------------------------------------------------------------------------


def _tree() -> dict:
    return {
        "embed": {"embedding": jax.ShapeDtypeStruct((100, 16), jnp.float32)},
        "mlp": {"kernel": jax.ShapeDtypeStruct((16, 64), jnp.float32)},
        "bias": jax.ShapeDtypeStruct((64,), jnp.float32),
    }


def test_state_bytes_by_group_sums_to_total() -> None:
    tx = optx.muon(0.02)
    by = optx.tree_utils.state_bytes_by_group(tx, _tree())
    assert by["matrix"] == 16 * 64 * 4 + 4  # momentum + count
    assert by["fallback"] == 2 * (100 * 16 + 64) * 4 + 4  # AdamW mu, nu + count
    assert sum(by.values()) == optx.tree_utils.state_bytes(tx, _tree())
    per = optx.tree_utils.state_bytes_by_group(tx, _tree(), per_param=True)
    assert per["matrix"] == pytest.approx((16 * 64 * 4 + 4) / (16 * 64))


def test_state_bytes_by_group_other_and_errors() -> None:
    tx = optax.inject_hyperparams(optx.muon, static_args=("ns_steps",))(learning_rate=0.02)
    by = optx.tree_utils.state_bytes_by_group(tx, _tree())
    assert by["(other)"] > 0 and set(by) == {"matrix", "fallback", "(other)"}
    with pytest.raises(ValueError, match="routed"):
        optx.tree_utils.state_bytes_by_group(optax.adam(1e-3), _tree(), per_param=True)
    assert optx.tree_utils.state_bytes_by_group(optax.adam(1e-3), _tree()) == {
        "(other)": optx.tree_utils.state_bytes(optax.adam(1e-3), _tree())
    }
