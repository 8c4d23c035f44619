"""Tests for optx.accumulate_gradients."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx


class _CountState(NamedTuple):
    calls: jax.Array


def _counting_sgd() -> optax.GradientTransformation:
    """SGD whose state counts how many times its update actually ran."""

    def update(updates: Any, state: _CountState, params: Any = None, **extra: Any):
        return jax.tree.map(lambda g: -g, updates), _CountState(state.calls + 1)

    return optax.GradientTransformationExtraArgs(
        lambda p: _CountState(jnp.zeros([], jnp.int32)), update
    )


def test_inner_update_runs_only_on_real_steps() -> None:
    tx = optx.accumulate_gradients(_counting_sgd(), every_k=4)
    state = tx.init(jnp.zeros(3))
    upd = jax.jit(tx.update)
    for i in range(8):
        u, state = upd(jnp.full((3,), float(i)), state)
        if i % 4 != 3:
            np.testing.assert_array_equal(u, 0.0)
    assert int(state.inner_state.calls) == 2  # optax.MultiSteps would count 8
    assert int(state.gradient_step) == 2 and int(state.mini_step) == 0
    np.testing.assert_allclose(u, -np.mean([4.0, 5.0, 6.0, 7.0]) * np.ones(3))


def test_sum_mode_and_extra_args_forwarding() -> None:
    seen = []

    def update(updates, state, params=None, *, value, **extra):
        seen.append(value)
        return updates, state

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
    tx = optx.accumulate_gradients(inner, every_k=2, use_grad_mean=False)
    s = tx.init(jnp.zeros(2))
    _, s = tx.update(jnp.ones(2), s, value=1.0)
    u, s = tx.update(2 * jnp.ones(2), s, value=2.0)
    np.testing.assert_array_equal(u, 3 * np.ones(2))
    with pytest.raises(TypeError, match="value"):
        tx.update(jnp.ones(2), s)


def _inner_with_call_log(log: list) -> optax.GradientTransformation:
    """An inner transform that records (via a host callback) each time it executes."""

    def update(updates: Any, state: Any, params: Any = None, **extra: Any):
        jax.debug.callback(lambda: log.append(1))
        return jax.tree.map(lambda g: -g, updates), state

    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)


def test_inner_work_is_skipped_on_micro_steps_unlike_optax_multisteps() -> None:
    ours_log, theirs_log = [], []
    ours = optx.accumulate_gradients(_inner_with_call_log(ours_log), every_k=4)
    theirs = optax.MultiSteps(_inner_with_call_log(theirs_log), every_k_schedule=4)
    s1, s2 = ours.init(jnp.zeros(3)), theirs.init(jnp.zeros(3))
    u1 = jax.jit(ours.update)
    u2 = jax.jit(theirs.update)
    for i in range(8):
        g = jnp.full((3,), float(i))
        _, s1 = u1(g, s1)
        _, s2 = u2(g, s2)
    jax.effects_barrier()
    assert len(ours_log) == 2
    assert len(theirs_log) == 8  # optax runs the (possibly expensive) inner update every time


def test_bad_every_k() -> None:
    with pytest.raises(ValueError):
        optx.accumulate_gradients(optax.sgd(1.0), every_k=0)
    with pytest.raises(TypeError):
        optx.accumulate_gradients(optax.sgd(1.0), every_k=2.0)


def test_sum_mode_starts_each_window_from_zero() -> None:
    # Sum of the micro-batch gradients of each window of every_k steps, not a running
    # total: window 2 gives 3 + 4 + 5, and the accumulator is zero after each emit.
    tx = optx.accumulate_gradients(optax.sgd(1.0), every_k=3, use_grad_mean=False)
    state = tx.init(jnp.zeros(2))
    upd = jax.jit(tx.update)
    emitted = []
    for i in range(6):
        u, state = upd(jnp.full((2,), float(i)), state)
        if i % 3 == 2:
            emitted.append(np.asarray(u))
            np.testing.assert_array_equal(state.acc_grads, np.zeros(2))
    np.testing.assert_allclose(emitted[0], -(0.0 + 1.0 + 2.0) * np.ones(2))
    np.testing.assert_allclose(emitted[1], -(3.0 + 4.0 + 5.0) * np.ones(2))


def test_bf16_gradients_accumulate_in_float32() -> None:
    # Default accumulator: the leaf's compute dtype (f32 for bf16), so the emitted
    # gradient is the f32 mean rounded once to bf16, not a bf16 running mean.
    tx = optx.accumulate_gradients(optax.sgd(-1.0), every_k=4)
    state = tx.init(jnp.zeros(3, jnp.bfloat16))
    assert state.acc_grads.dtype == jnp.float32
    # (a bf16 running mean of these rounds every entry differently)
    g = np.random.default_rng(10).normal(size=(4, 3)).astype(jnp.bfloat16)
    for row in g:
        u, state = tx.update(jnp.asarray(row), state)
    want = g.astype(np.float32).mean(0).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(u), want)
