"""Degenerate shapes: every registered optimizer on one tree of awkward leaves.

The policy (README "Reliability", CONTRIBUTING "Degenerate shapes"): a
zero-size leaf passes through (its update is empty; matrix methods give it no
matrix view), 1×n / n×1 / 1×1 matrices and stacks of them are handled by the
matrix path, scalars and vectors by the fallback, ``None`` leaves pass through
as in optax, and an empty tree is a no-op. Every update is finite and keeps the
leaf's shape and dtype. One compiled call (three steps) per optimizer.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.conformance import problems

NAMES = optx.list_optimizers()
STEPS = 3
# ROOT has fitted Newton–Schulz coefficients for common shapes only; it warns
# and uses Keller's for these tiny ones.
pytestmark = pytest.mark.filterwarnings("ignore:Newton–Schulz coefficient table")


def degenerate_params() -> dict[str, Any]:
    """Small weights (inside the unit spectral ball of Lipschitz-constrained
    methods, as their initialization requires)."""
    r = np.random.default_rng(0)

    def n(*shape: int) -> jax.Array:
        return jnp.asarray(0.1 * r.normal(size=shape) / np.sqrt(max((1, *shape))), jnp.float32)

    return {
        "empty": {"kernel": n(0, 4)},
        "empty_stack": {"kernel": n(2, 0, 3)},
        "row": {"kernel": n(1, 8)},
        "col": {"kernel": n(8, 1)},
        "unit": {"kernel": n(1, 1)},
        "stack": {"kernel": n(2, 1, 3)},
        "hidden": {"kernel": n(4, 3), "bias": n(3)},
        "empty_bias": {"bias": n(0)},
        "scalar": n(),
        "none": None,
    }


def _run(spec: optx.OptimizerSpec, tx: optax.GradientTransformation, params: Any):
    key = jax.random.key(0)

    def body(carry: Any, i: jax.Array) -> tuple[Any, Any]:
        p, s = carry
        _, grads, extra = problems.extra_args_for(spec, problems.mixed_loss, p, i, key)
        u, s = tx.update(grads, s, p, **extra)
        return (optax.apply_updates(p, u), s), u

    (params, state), updates = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(STEPS)))(
        (params, tx.init(params))
    )
    return params, state, updates


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_degenerate_leaves(name: str) -> None:
    spec = optx.get_optimizer(name)
    tx = spec.build(**spec.test_overrides)
    params = degenerate_params()
    new_params, state, updates = _run(spec, tx, params)
    assert updates["none"] is None and new_params["none"] is None
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_u = jax.tree.leaves(updates)
    assert len(flat_u) == len(flat_p)
    for (path, p), u in zip(flat_p, flat_u):
        where = jax.tree_util.keystr(path)
        assert u.shape == (STEPS, *p.shape) and u.dtype == p.dtype, where
        assert bool(jnp.all(jnp.isfinite(u))), f"{name}: non-finite update at {where}"
    # Zero gradient in, zero update out is not required (weight decay); moving the
    # non-degenerate matrix is: the tree was optimized at all.
    assert bool(jnp.any(updates["hidden"]["kernel"] != 0))
    for leaf in problems.floating_state_leaves(state):
        assert bool(jnp.all(jnp.isfinite(leaf))), f"{name}: non-finite state"


# Options that send vectors or N-D leaves down another code path than the defaults.
OPTION_PATHS = [
    ("soap", {"precondition_1d": True}),
    ("soap", {"factorization": "axes", "merge_dims": True, "precondition_1d": True}),
    # The larger side: a (d, k) basis and a projected second moment (k = 0 for empty leaves).
    ("conda", {"side": "reverse_std"}),
    ("conda", {"side": "in"}),
]


@pytest.mark.parametrize(
    ("name", "options"),
    [pytest.param(n, o, marks=pytest.mark.xdist_group(n)) for n, o in OPTION_PATHS],
    ids=[f"{n}-{'-'.join(o)}" for n, o in OPTION_PATHS],
)
def test_degenerate_leaves_with_options(name: str, options: dict[str, Any]) -> None:
    """The same tree through the optional paths: an empty vector under SOAP's
    ``precondition_1d`` is an empty mode, left unrotated (it had failed to trace);
    Conda's larger-side projections of empty, 1×n and n×1 matrices."""
    spec = optx.get_optimizer(name)
    tx = spec.build(**{**spec.test_overrides, **options})
    params = degenerate_params()
    _, state, updates = _run(spec, tx, params)
    for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
        p = functools.reduce(lambda t, k: t[k.key], path, params)
        assert u.shape == (STEPS, *p.shape) and bool(jnp.all(jnp.isfinite(u))), path
    assert bool(jnp.any(updates["hidden"]["bias"] != 0))
    for leaf in problems.floating_state_leaves(state):
        assert bool(jnp.all(jnp.isfinite(leaf))), f"{name}: non-finite state"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_empty_tree(name: str) -> None:
    """An empty parameter tree is a no-op (eager: nothing to compile)."""
    spec = optx.get_optimizer(name)
    tx = spec.build(**spec.test_overrides)
    ctx = optx.ExtraArgsContext(
        loss_fn=lambda p: jnp.zeros([], jnp.float32),
        params={},
        grads={},
        loss=jnp.zeros([], jnp.float32),
        key=jax.random.key(0),
    )
    state = tx.init({})
    updates, state = tx.update({}, state, {}, **spec.make_extra_args(ctx))
    assert updates == {}


def teardown_module() -> None:
    jax.clear_caches()
