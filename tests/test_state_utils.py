"""Tests for optx.state_bytes and friends."""

import jax
import jax.numpy as jnp
import optax

import optx


def test_state_bytes_counts_exactly_without_allocating() -> None:
    params = {
        "w": jax.ShapeDtypeStruct((1000, 100), jnp.float32),
        "b": jax.ShapeDtypeStruct((100,), jnp.bfloat16),
    }
    n = 1000 * 100
    assert optx.param_count(params) == n + 100
    # adam: mu + nu (param dtype) + int32 count
    assert optx.state_bytes(optax.adam(1e-3), params) == 2 * (4 * n + 2 * 100) + 4
    assert optx.state_bytes(optax.sgd(1e-3), params) == 0
    assert (
        optx.state_bytes(optx.adamw(1e-3, nu_dtype=jnp.float32), params)
        == (4 * n + 2 * 100) + (4 * n + 4 * 100) + 4
    )


def test_muon_state_is_one_momentum_on_matrices() -> None:
    params = {"mlp": {"kernel": jnp.zeros((64, 32))}, "bias": jnp.zeros((32,))}
    b = optx.state_bytes(optx.muon(), params)
    # momentum for the kernel, Adam mu+nu for the bias, two int32 counters
    assert b == 64 * 32 * 4 + 2 * 32 * 4 + 2 * 4
    nb = optx.state_bytes(optx.normuon(), params)
    assert nb == b + 32 * 4 + 4  # one f32 per output neuron, plus its counter
    assert 0 < optx.state_bytes_per_param(optx.muon(), params) < 4.2
