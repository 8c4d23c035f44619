"""Conformance of the adapter optimizers (registry family ``"adapters"``) on trees
that hold LoRA pairs.

The standard problems of ``tests/test_conformance.py`` have no adapters, so
there ``lora_pro``/``sora`` only exercise their AdamW fallback. Here the same
contract is checked where the pair-aware path runs: convergence of the
effective weights on the adapter problems of ``problems.ADAPTER_PROBLEMS``,
abstract init, no recompilation, dtypes (f32, bf16), ``inject_hyperparams``,
``optax.MultiSteps``, ``lax.cond`` and zero gradients, an 8-device Explicit
mesh with the factors sharded, and ``nnx.Optimizer(..., wrt=optx.lora.lora_filter)``
on a model wrapped by ``optx.lora.add_lora``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from tests.conformance import problems

NAMES = optx.list_optimizers(family="adapters")
# Gated problems need gate-aware methods; plain pairs are for every adapter optimizer.
GATED = ("sora",)


def _problem(name: str) -> problems.AdapterProblem:
    key = "gated_lora_least_squares" if name in GATED else "lora_least_squares"
    return problems.ADAPTER_PROBLEMS[key]()


def _build(name: str, **kw: Any) -> optax.GradientTransformationExtraArgs:
    spec = optx.get_optimizer(name)
    return optax.with_extra_args_support(spec.factory(**{**spec.defaults, **kw}))


def _params(name: str, dtype: Any = jnp.float32) -> Any:
    """The problem's init with non-zero up factors (the general LoRA-Pro branch)."""
    params = _problem(name).init()
    leaves = jax.tree_util.tree_leaves_with_path(params)
    keys = iter(jax.random.split(jax.random.key(7), len(leaves)))

    def perturb(path: Any, x: jax.Array) -> jax.Array:
        k = next(keys)
        if optx.tree_utils.path_to_str(path).endswith("lora_b"):
            x = x + 0.2 * jax.random.normal(k, x.shape)
        return x.astype(dtype)

    return jax.tree_util.tree_map_with_path(perturb, params)


@functools.cache
def _tx(name: str) -> optax.GradientTransformationExtraArgs:
    return _build(name)


@functools.cache
def _step(name: str) -> Any:
    loss, tx = _problem(name).loss, _tx(name)

    def step(params: Any, state: Any) -> tuple[Any, Any, Any]:
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params, unknown_extra_arg=1.0)
        return optax.apply_updates(params, updates), state, updates

    return jax.jit(step)


def _group(name: str) -> Any:
    return pytest.param(name, marks=pytest.mark.xdist_group(name), id=name)


CASES = [
    pytest.param(n, p, marks=pytest.mark.xdist_group(n), id=f"{n}-{p}")
    for n in NAMES
    for p in problems.ADAPTER_PROBLEMS
    if n in GATED or not p.startswith("gated")
]


@pytest.mark.parametrize(("name", "problem"), CASES)
def test_adapter_convergence(name: str, problem: str) -> None:
    prob = problems.ADAPTER_PROBLEMS[problem]()
    spec = optx.get_optimizer(name)
    kw = {}
    if name in GATED:  # ξ decays with the learning rate (ξ·η as the repo's *_multiply_lr.py)
        kw["threshold"] = problems.decaying(1e-4, prob.steps)
    tx = _build(name, learning_rate=problems.decaying(1e-2, prob.steps), **kw)
    params, _ = problems.run_steps(spec, tx, prob.loss, prob.init(), prob.steps)
    dist = problems.tree_rel_distance(prob.effective(params), prob.target)
    assert np.isfinite(dist) and dist < 0.05, f"{name} on {problem}: {dist:.3g}"


@pytest.mark.parametrize("name", [_group(n) for n in NAMES])
def test_adapter_contract(name: str) -> None:
    tx, step = _tx(name), _step(name)
    params = _params(name)
    state = tx.init(params)
    # Abstract init, per-leaf state (MaskedNode where a leaf has none).
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shapes = jax.eval_shape(tx.init, abstract)
    assert jax.tree.structure(shapes) == jax.tree.structure(state)
    assert jax.tree.structure(tx.init(abstract)) == jax.tree.structure(state)
    # Two steps: no recompilation, dtypes kept, finite.
    p1, s1, u1 = step(params, state)
    size = step._cache_size()
    _, s2, u2 = step(p1, s1)
    assert step._cache_size() == size
    assert jax.tree.map(lambda x: x.dtype, s2) == jax.tree.map(lambda x: x.dtype, state)
    for u, p in zip(jax.tree.leaves(u1), jax.tree.leaves(params)):
        assert u.dtype == p.dtype
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u2))
    # bf16 params: bf16 updates, stable state types.
    pb = _params(name, jnp.bfloat16)
    sb = tx.init(pb)
    _, sb1, ub = step(pb, sb)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(ub))
    assert jax.tree.map(jax.typeof, sb1) == jax.tree.map(jax.typeof, sb)


@pytest.mark.parametrize("name", [_group(n) for n in NAMES])
def test_adapter_inject_multisteps_and_cond(name: str) -> None:
    spec = optx.get_optimizer(name)
    loss, plain = _problem(name).loss, _tx(name)
    params = _params(name)
    grads = jax.grad(loss)(params)
    injected = optax.inject_hyperparams(spec.factory, static_args=spec.all_static_args())(
        **spec.defaults
    )
    plain_update = jax.jit(plain.update)
    ref_u, _ = plain_update(grads, plain.init(params), params)
    inj_u, inj_s = jax.jit(injected.update)(grads, injected.init(params), params)
    for a, b in zip(jax.tree.leaves(inj_u), jax.tree.leaves(ref_u)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert "learning_rate" in inj_s.hyperparams
    # MultiSteps over 3 micro-batches = one step on their mean.
    micro = [jax.tree.map(lambda g, i=i: g * (1.0 + 0.1 * i), grads) for i in range(3)]
    mean = jax.tree.map(lambda *g: sum(g) / 3.0, *micro)
    want, _ = plain_update(mean, plain.init(params), params)
    multi = optax.MultiSteps(_build(name), every_k_schedule=3).gradient_transformation()
    ms = multi.init(params)
    upd = jax.jit(lambda g, s: multi.update(g, s, params))
    for g in micro:
        got, ms = upd(g, ms)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)

    # lax.cond keeps the state types; zero gradients stay finite.
    @jax.jit
    def maybe(state: Any, g: Any, pred: jax.Array) -> Any:
        return jax.lax.cond(
            pred,
            lambda s: plain.update(g, s, params),
            lambda s: (jax.tree.map(jnp.zeros_like, g), s),
            state,
        )

    state = plain.init(params)
    zeros = jax.tree.map(jnp.zeros_like, grads)
    for pred in (True, False):
        _, new = maybe(state, grads, jnp.asarray(pred))
        assert jax.tree.map(jax.typeof, new) == jax.tree.map(jax.typeof, state)
    for _ in range(2):
        u, state = maybe(state, zeros, jnp.asarray(True))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((u, state)))


@pytest.mark.parametrize("name", [_group(n) for n in NAMES])
def test_adapter_sharded_factors(name: str) -> None:
    """Factors sharded on an 8-device Explicit mesh: same numbers, stable state,
    ``optx.sharding.state_shardings`` agrees with the state ``init`` builds."""
    tx, step = _tx(name), _step(name)
    params = _params(name)
    _, _, ref = step(params, tx.init(params))
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)

    def spec(path: Any, x: jax.Array) -> P:
        p = optx.tree_utils.path_to_str(path)
        if p.endswith("lora_a") and x.ndim == 2:
            return P("data", None)  # fan_in 8 over 4 devices
        if p.endswith("lora_b") and x.ndim == 2:
            return P(None, "model")  # fan_out 6 over 2 devices
        return P()

    specs = jax.tree_util.tree_map_with_path(spec, params)
    with jax.set_mesh(mesh):
        sharded = jax.tree.map(
            lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs
        )
        s0 = tx.init(sharded)
        p1, s1, updates = step(sharded, s0)
        assert jax.tree.map(jax.typeof, s1) == jax.tree.map(jax.typeof, s0)
        assert jax.typeof(p1["dense"]["lora"]["lora_a"]).sharding.spec == P("data", None)
        for s, a in zip(
            jax.tree.leaves(s0), jax.tree.leaves(optx.sharding.state_shardings(tx, sharded))
        ):
            assert s.sharding.is_equivalent_to(a, s.ndim)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


class _Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(6, 8, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jnp.tanh(self.hidden(x)))


@pytest.mark.parametrize("name", [_group(n) for n in NAMES])
def test_adapter_nnx_optimizer(name: str) -> None:
    model = _Model(nnx.Rngs(0))
    kind = "gated" if name in GATED else "lora"
    optx.lora.add_lora(model, 2, rngs=nnx.Rngs(1), kind=kind, targets="hidden", alpha=4.0)
    pairs = optx.lora.lora_pairs(model)
    kw = {"pairs": pairs} if name == "lora_pro" else {}
    optimizer = nnx.Optimizer(
        model, _build(name, learning_rate=1e-2, **kw), wrt=optx.lora.lora_filter
    )
    x = jax.random.normal(jax.random.key(0), (5, 6))
    y = jax.random.normal(jax.random.key(1), (5, 4))
    base = model.hidden.base_module.kernel[...]

    @nnx.jit
    def train_step(model: _Model, optimizer: nnx.Optimizer) -> jax.Array:
        def loss_fn(m: _Model) -> jax.Array:
            return jnp.mean((m(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, optx.lora.lora_filter))(
            model
        )
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    np.testing.assert_array_equal(model.hidden.base_module.kernel[...], base)
    assert float(jnp.max(jnp.abs(model.hidden.lora_b[...]))) > 0.0
