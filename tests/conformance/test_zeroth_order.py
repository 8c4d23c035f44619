"""Conformance for zeroth-order optimizers (registry family ``'evolution'``).

The standard problems (``tests/test_conformance.py``) run for them too, with
the fitness of every member computed from the problem's loss by the spec's
``extra_args`` builder. Here they also minimize a loss whose gradient is zero
almost everywhere, which no gradient method can.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import optx
from tests.conformance import problems

NAMES = optx.list_optimizers(family="evolution")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_minimizes_a_piecewise_constant_loss(name: str) -> None:
    spec = optx.get_optimizer(name)
    prob = problems.quantized_least_squares()
    params = prob.init()
    grads = jax.grad(prob.loss)(params)
    assert all(not np.any(g) for g in jax.tree.leaves(grads)), "the gradient carries no signal"
    kwargs = {**spec.defaults, **spec.test_overrides}
    lr = kwargs.pop("learning_rate")
    tx = optax.with_extra_args_support(
        spec.factory(learning_rate=problems.decaying(lr, prob.steps), **kwargs)
    )
    start = float(prob.loss(params))
    params, _ = problems.run_steps(spec, tx, prob.loss, params, prob.steps)
    assert float(prob.loss(params)) < 0.01 * start
    assert problems.tree_rel_distance(params, prob.solution) < 0.1
