"""Differentiating through a step, for every registered optimizer.

Meta-learning a learning rate (``optax.inject_hyperparams``) and MAML-style
unrolls take ``jax.grad`` of a loss of the parameters after an optimizer step.
Here, in float64: ``F(lr, w) = L(w after one step from w, at lr)`` — the
gradient (and every extra input: curvature closures, captures, half-batch
gradients, fitness) computed from ``w`` inside ``F`` — after warm-up steps,
so moments and bases are non-trivial (two, see ``WARM_UP``). ``jax.grad`` of ``F`` with respect to
both arguments, projected on a random direction, must match a central
difference along it. A ``while_loop`` on the differentiated path (which
reverse mode cannot transpose), a ``stop_gradient`` where the math is
differentiable, or a custom rule with a wrong derivative fails it.

Where the method holds something fixed under differentiation it says so
(SOAP's bases: README "Differentiating through steps"); the tolerance covers
that share (measured ≤ 1.2e-4 relative for SOAP, ≤ 2e-5 for the others).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.conformance import problems

NAMES = optx.list_optimizers()
# Three steps before the differentiated one. SOAP's first step only builds its
# basis, so its second sees the same gradient, whose rotated off-diagonal
# coordinates are eigenvector round-off that Adam's first step turns into ±1
# with second moments of round-off size; the next step is then curved on a
# 1e-6 scale (the float64 central difference of its ``stack`` kernel moves
# from 8.3 to 5.8 to 21.54 at h = 1e-4, 1e-6, 1e-8; reverse mode gives 21.51),
# and smooth again one step later.
WARM_UP = 3


def _loss(params: Any) -> jax.Array:
    """:func:`problems.mixed_loss` in the parameters' dtype (float64 here)."""

    def leaf(x: jax.Array) -> jax.Array:
        w = jnp.linspace(0.5, 1.5, x.size, dtype=x.dtype).reshape(x.shape)
        return jnp.sum(w * (x - 0.1) ** 2) + 0.05 * jnp.sum(x**4)

    return sum(jax.tree.leaves(jax.tree.map(leaf, params)))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_reverse_mode_through_a_step_matches_central_differences(name: str) -> None:
    spec = optx.get_optimizer(name)
    key = jax.random.key(0)
    with jax.enable_x64(True):
        tx = optax.inject_hyperparams(spec.factory, static_args=spec.all_static_args())(
            **spec.defaults
        )
        w1 = problems.mixed_params(jnp.float64)
        state = tx.init(w1)

        @jax.jit
        def warm_up(w: Any, state: Any, step: int) -> tuple[Any, Any]:
            _, grads, extra = problems.extra_args_for(spec, _loss, w, step, key)
            updates, state = tx.update(grads, state, w, **extra)
            return optax.apply_updates(w, updates), state

        for step in range(WARM_UP):
            w1, state = warm_up(w1, state, step)
        lr = state.hyperparams["learning_rate"]

        def after_step(learning_rate: jax.Array, w: Any, state: Any) -> jax.Array:
            # The state is an argument: traced, as in an unrolled loop.
            s = state._replace(hyperparams={**state.hyperparams, "learning_rate": learning_rate})
            _, g, ex = problems.extra_args_for(spec, _loss, w, WARM_UP, key)
            u, _ = tx.update(g, s, w, **ex)
            return _loss(optax.apply_updates(w, u))

        d_lr, d_w = jax.jit(jax.grad(after_step, argnums=(0, 1)))(lr, w1, state)
        assert np.isfinite(float(d_lr))
        for leaf in jax.tree.leaves(d_w):
            assert bool(jnp.isfinite(leaf).all())
        rng = np.random.default_rng(1)
        v = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), w1)
        a = float(lr)  # the learning rate moves by lr·t along the direction
        along = float(d_lr) * a + sum(
            float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(d_w), jax.tree.leaves(v))
        )
        f = jax.jit(after_step)
        h = 1e-6

        def moved(t: float) -> float:
            return float(f(lr + t * a, jax.tree.map(lambda x, d: x + t * d, w1, v), state))

        central = (moved(h) - moved(-h)) / (2 * h)
        np.testing.assert_allclose(along, central, rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_reverse_mode_through_init_and_the_first_steps(name: str) -> None:
    """MAML's form: ``init`` and the first two steps inside the differentiated
    function (the first step builds bases, draws projections, fills buffers;
    the second uses them). Reverse mode must trace and give finite
    derivatives. (No central difference here: SOAP's second step is the
    round-off sign of a repeated gradient, see ``WARM_UP``.)"""
    spec = optx.get_optimizer(name)
    key = jax.random.key(0)
    with jax.enable_x64(True):
        tx = optax.inject_hyperparams(spec.factory, static_args=spec.all_static_args())(
            **spec.defaults
        )

        def first_steps(learning_rate: jax.Array, w: Any) -> jax.Array:
            state = tx.init(w)
            hyperparams = {**state.hyperparams, "learning_rate": learning_rate}
            state = state._replace(hyperparams=hyperparams)
            for step in range(2):
                _, g, ex = problems.extra_args_for(spec, _loss, w, step, key)
                u, state = tx.update(g, state, w, **ex)
                w = optax.apply_updates(w, u)
            return _loss(w)

        lr = jnp.asarray(spec.defaults.get("learning_rate", 1e-3), jnp.float64)
        d_lr, d_w = jax.jit(jax.grad(first_steps, argnums=(0, 1)))(
            lr, problems.mixed_params(jnp.float64)
        )
        for leaf in [d_lr, *jax.tree.leaves(d_w)]:
            assert bool(jnp.isfinite(leaf).all())
