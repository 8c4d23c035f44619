"""Optimizer states mirror the parameter tree (issue 13 §9, CONTRIBUTING).

Every registered optimizer's state is made of parameter-structured trees (one
array per leaf, ``optax.MaskedNode()`` where a leaf has none) next to fields
whose structure does not depend on the parameters (counters, scalars). What
that buys, checked here per optimizer on a tiny NNX model with an ``Embed``, a
``Conv`` and two ``Linear`` layers:

* ``optax.tree.map_params`` (which rebuilds the state's structure from an
  ``init`` on a placeholder without leaves) maps exactly the parameter-
  structured trees: each call of its function receives a state leaf and the
  parameter at the same path, and mapping parameter specs over the state (the
  documented sharding use) keeps the state's structure;
* ``nnx.Optimizer`` around ``optax.masked`` (one compiled step per optimizer;
  this is the registry's ``nnx.Optimizer`` test, with a ``LayerNorm`` too):
  the state keeps its structure across updates (a per-leaf tuple inside an
  ``nnx.Param`` would come back as a ``State`` dict), losses stay finite and
  the unmasked parameters move.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import optx

NAMES = optx.list_optimizers()
pytestmark = pytest.mark.filterwarnings("ignore:Newton–Schulz coefficient table")


class _Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(7, 3, rngs=rngs)
        self.conv = nnx.Conv(3, 4, (2, 2), rngs=rngs)
        self.hidden = nnx.Linear(4, 5, rngs=rngs)
        self.norm = nnx.LayerNorm(5, rngs=rngs)
        self.head = nnx.Linear(5, 7, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        h = self.conv(self.embed(tokens)).mean((1, 2))
        return self.head(self.norm(jax.nn.gelu(self.hidden(h))))


TOKENS = jnp.arange(2 * 3 * 3).reshape(2, 3, 3) % 7
LABELS = jnp.asarray([1, 4])


def _loss(model: _Model) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(TOKENS), LABELS).mean()


def _tx(name: str) -> optax.GradientTransformationExtraArgs:
    spec = optx.get_optimizer(name)
    return optax.with_extra_args_support(spec.factory(**{**spec.defaults, **spec.test_overrides}))


def _keep_hidden_bias_out(params: Any) -> Any:
    """The mask of the ``optax.masked`` check: everything but one bias (a tree
    of the params' own type: an ``nnx.State`` under ``nnx.Optimizer``)."""

    def keep(path: Any, _: Any) -> bool:
        keys = [getattr(k, "key", None) for k in path]
        return not ("hidden" in keys and "bias" in keys)

    return jax.tree_util.tree_map_with_path(keep, params)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_map_params(name: str) -> None:
    tx = _tx(name)
    params = nnx.to_pure_dict(nnx.state(_Model(nnx.Rngs(0)), nnx.Param))
    state = jax.eval_shape(tx.init, params)
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731

    def f(v: Any, p: Any) -> Any:
        if masked(v):  # a leaf without this state (optax's `is_leaf` convention)
            return v
        seen.append((v.shape, p.shape))
        return "param-shaped" if v.shape == p.shape else v

    mapped = optax.tree.map_params(tx, f, state, params, is_leaf=masked)
    assert jax.tree.structure(mapped) == jax.tree.structure(state), name
    # f only ever sees state leaves at a parameter's path: param-shaped ones
    # (moments), or per-leaf statistics whose leading axes are the parameter's
    # batch/stack axes (SOAP/COSMOS factors, 8-bit scales, projectors).
    assert all(len(v) <= len(p) + 1 for v, p in seen), (name, seen)
    changed = [m for m, s in zip(jax.tree.leaves(mapped), jax.tree.leaves(state)) if m is not s]
    assert len(changed) == sum(v == p for v, p in seen)
    # The sharding use: parameter specs mapped over the state keep its structure.
    specs = jax.tree.map(lambda p: P(*([None] * p.ndim)), params)
    state_specs = optax.tree.map_params(
        tx,
        lambda v, spec: v if masked(v) else spec,
        state,
        specs,
        transform_non_params=lambda _: P(),
        is_leaf=masked,
    )
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    assert jax.tree.structure(state_specs, is_leaf=is_spec) == jax.tree.structure(
        jax.tree.map(lambda _: P(), state), is_leaf=is_spec
    )


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_nnx_optimizer_with_masked(name: str) -> None:
    spec = optx.get_optimizer(name)
    model = _Model(nnx.Rngs(0))
    # optax.masked passes extra arguments through whole: parameter-structured ones
    # (AGVM's half-batch gradients) are cut to the inner's leaves (base.masked_like).
    tx = optax.masked(_tx(name), _keep_hidden_bias_out)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    structure = jax.tree.structure(nnx.as_pure(optimizer.opt_state))

    @nnx.jit
    def train_step(model: _Model, optimizer: nnx.Optimizer, i: jax.Array) -> jax.Array:
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss, grads = nnx.value_and_grad(_loss)(model)
        ctx = optx.ExtraArgsContext(
            loss_fn=lambda p: _loss(nnx.merge(graphdef, p, rest)),
            params=nnx.as_pure(params),
            grads=grads,
            loss=loss,
            key=jax.random.fold_in(jax.random.key(0), i),
            step=i,
        )
        optimizer.update(model, grads, **spec.make_extra_args(ctx))
        return loss

    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    before = jax.tree.map(np.asarray, before)
    losses = [float(train_step(model, optimizer, jnp.asarray(i))) for i in range(3)]
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert np.all(np.isfinite(losses)), (name, losses)
    assert jax.tree.structure(nnx.as_pure(optimizer.opt_state)) == structure, name
    for leaf in jax.tree.leaves(nnx.as_pure(optimizer.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            assert bool(jnp.all(jnp.isfinite(leaf))), name
    moved = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before, after)
    assert moved["conv"]["kernel"] and moved["hidden"]["kernel"], (name, moved)
    assert int(optimizer.step[...]) == 3


def teardown_module() -> None:
    jax.clear_caches()
