"""Tests of optx/_src/state_utils.py: exact state bytes, per routing group."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import optx


def _tree() -> dict:
    return {
        "embed": {"embedding": jax.ShapeDtypeStruct((100, 16), jnp.float32)},
        "mlp": {"kernel": jax.ShapeDtypeStruct((16, 64), jnp.float32)},
        "bias": jax.ShapeDtypeStruct((64,), jnp.float32),
    }


def test_state_bytes_by_group_sums_to_total() -> None:
    tx = optx.muon(0.02)
    by = optx.state_bytes_by_group(tx, _tree())
    assert by["matrix"] == 16 * 64 * 4 + 4  # momentum + count
    assert by["fallback"] == 2 * (100 * 16 + 64) * 4 + 4  # AdamW mu, nu + count
    assert sum(by.values()) == optx.state_bytes(tx, _tree())
    per = optx.state_bytes_by_group(tx, _tree(), per_param=True)
    assert per["matrix"] == pytest.approx((16 * 64 * 4 + 4) / (16 * 64))


def test_state_bytes_by_group_other_and_errors() -> None:
    tx = optax.inject_hyperparams(optx.muon, static_args=("ns_steps",))(learning_rate=0.02)
    by = optx.state_bytes_by_group(tx, _tree())
    assert by["(other)"] > 0 and set(by) == {"matrix", "fallback", "(other)"}
    with pytest.raises(ValueError, match="routed"):
        optx.state_bytes_by_group(optax.adam(1e-3), _tree(), per_param=True)
    assert optx.state_bytes_by_group(optax.adam(1e-3), _tree()) == {
        "(other)": optx.state_bytes(optax.adam(1e-3), _tree())
    }
