"""``optax.inject_hyperparams(optx.X)(learning_rate=...)`` works as written.

optax's wrapper applies every default of the factory's signature and turns
every number and callable it sees into an array, so structural arguments (step
counts, ranks, seeds, dtypes, coefficient tables) must default to values that
survive it (``None``, strings). This is the literal form a user writes — no
``static_args`` — for every registered optimizer (and every one added later).
Only arguments without a default are added (Sophia-G's ``tokens_per_batch``).

Tracing is enough to catch every failure of this kind (structural arrays,
Python branches on tracers, callables taken for schedules), so init and update
run under ``jax.eval_shape``: nothing is compiled.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import optax
import pytest

import optx
from optx._src import hyperparams
from tests.conformance import problems

NAMES = optx.list_optimizers()


def _required(spec: optx.OptimizerSpec) -> dict[str, Any]:
    params = inspect.signature(spec.factory).parameters
    return {
        k: v
        for k, v in spec.defaults.items()
        if k in params and params[k].default is inspect.Parameter.empty and k != "learning_rate"
    }


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_inject_hyperparams_literal_form(name: str) -> None:
    spec = optx.get_optimizer(name)
    lr = spec.defaults.get("learning_rate", 1e-3)
    tx = optax.inject_hyperparams(spec.factory)(learning_rate=lr, **_required(spec))
    params = problems.mixed_params()
    key = jax.random.key(0)

    state = jax.eval_shape(tx.init, params)
    assert "learning_rate" in state.hyperparams
    # Only numeric hyper-parameters are injected: no structural argument became an array.
    constraints = hyperparams.constraints_of(spec.factory)
    injected_structural = [hp for hp in state.hyperparams if constraints[hp].static]
    assert not injected_structural

    def step(state: Any) -> Any:
        _, grads, extra = problems.extra_args_for(spec, problems.mixed_loss, params, 0, key)
        return tx.update(grads, state, params, **extra)

    updates, new_state = jax.eval_shape(step, state)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.shape == p.shape and u.dtype == p.dtype
    assert jax.tree.map(lambda x: (x.shape, x.dtype), new_state) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state
    )
