"""The conformance suite (DESIGN §6): every registered optimizer passes all of it.

Adding an optimizer to the registry (``optx.register``) adds it here. Each test
is parametrized over ``optx.list_optimizers()``; per-optimizer settings come
from the :class:`optx.OptimizerSpec` (``defaults``, ``test_overrides``,
``static_args``, ``extra_args``).
"""

from __future__ import annotations

import functools
import inspect
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests import xla_options
from tests.conformance import problems

NAMES = optx.list_optimizers()


def _spec(name: str) -> optx.OptimizerSpec:
    return optx.get_optimizer(name)


def _kwargs(spec: optx.OptimizerSpec, **extra: Any) -> dict[str, Any]:
    return {**spec.defaults, **spec.test_overrides, **extra}


def _build(spec: optx.OptimizerSpec, **extra: Any) -> optax.GradientTransformationExtraArgs:
    return optax.with_extra_args_support(spec.factory(**_kwargs(spec, **extra)))


def _grads(params: Any) -> tuple[Any, Any]:
    loss, grads = jax.value_and_grad(problems.mixed_loss)(params)
    return loss, grads


def _step_fn(
    spec: optx.OptimizerSpec,
    tx: optax.GradientTransformation,
    compiler_options: dict[str, bool] | None = None,
):
    """A jitted (params, state, step) -> (params, state, updates) on the mixed loss.

    It also passes an extra argument no optimizer knows: every optimizer must
    accept and ignore it.
    """
    key = jax.random.key(42)

    def step(params: Any, state: Any, i: jax.Array) -> tuple[Any, Any, Any]:
        _, grads, extra = problems.extra_args_for(spec, problems.mixed_loss, params, i, key)
        updates, state = tx.update(
            grads, state, params, unexpected_extra_arg_optx_ignores=1.0, **extra
        )
        return optax.apply_updates(params, updates), state, updates

    return jax.jit(step, compiler_options=compiler_options)


# Compiling dominates this suite's time. One transform and one jitted step per
# optimizer are shared by the tests that can use them (jit then compiles once per
# input signature: f32, bf16, sharded); `--dist loadgroup` keeps an optimizer's
# tests in one xdist worker so the cache is hit.
@functools.cache
def _shared_tx(name: str) -> optax.GradientTransformationExtraArgs:
    return _build(_spec(name))


@functools.cache
def _shared_step(name: str):
    return _step_fn(_spec(name), _shared_tx(name))


def _group(name: str) -> Any:
    return pytest.param(name, marks=pytest.mark.xdist_group(name), id=name)


GROUPED = [_group(n) for n in NAMES]


# ----------------------------------------------------------------------------
# Registry sanity
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", GROUPED)
def test_spec_is_complete(name: str) -> None:
    spec = _spec(name)
    sig = inspect.signature(spec.factory).parameters
    assert "learning_rate" in sig, "registered factories take `learning_rate`"
    assert spec.paper, "every method cites its paper"
    assert spec.factory.__doc__ and "References" in spec.factory.__doc__
    assert spec.lr_grid, "a learning-rate grid for benchmark sweeps"
    for a in spec.static_args:
        assert a in sig, f"static arg {a!r} is not a factory argument"


# ----------------------------------------------------------------------------
# Convergence
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("problem", sorted(problems.PROBLEMS))
@pytest.mark.parametrize("name", GROUPED)
def test_convergence(name: str, problem: str) -> None:
    spec = _spec(name)
    prob = problems.PROBLEMS[problem]()
    lr = _kwargs(spec)["learning_rate"]
    tx = _build(spec, learning_rate=problems.decaying(lr, prob.steps))
    params, _ = problems.run_steps(spec, tx, prob.loss, prob.init(), prob.steps)
    dist = problems.tree_rel_distance(params, prob.solution)
    assert np.isfinite(dist)
    assert dist < 0.05, f"{name} on {problem}: relative distance to optimum {dist:.3g}"


# ----------------------------------------------------------------------------
# The optax contract
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", GROUPED)
def test_extra_args_accepted_and_no_recompile(name: str) -> None:
    tx, step = _shared_tx(name), _shared_step(name)
    params = problems.mixed_params()
    state = tx.init(params)
    params1, state, u1 = step(params, state, jnp.asarray(0))
    compiled = step._cache_size()
    _, state2, u2 = step(params1, state, jnp.asarray(1))
    assert step._cache_size() == compiled, "the second call recompiled"
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u2))
    # f32 in, f32 out; the state keeps its dtypes.
    for u, p in zip(jax.tree.leaves(u1), jax.tree.leaves(params)):
        assert u.dtype == p.dtype
    assert jax.tree.map(lambda x: x.dtype, state2) == jax.tree.map(lambda x: x.dtype, state)


# Injected hyper-parameters are float32 arrays, so ``1 − β`` is formed from
# float32(β), while a Python β gives ``1 − β`` exactly (base.one_minus): for
# β = 0.95 the two differ by 2.4e-7 relative. SOAP and Conda rotate into the
# eigenbasis of a rank-deficient Kronecker factor (the problem's matrices are
# non-square); the rotated gradient's components in the null space are pure
# round-off, and Adam's m/(√v + ε) scales them to O(1) — so a 1e-7 change in
# 1 − β became a 2e-2 change of one update element. With coefficients exactly
# representable in float32 (dyadic), both forms compute the same inputs. What
# remains is the two programs' round-off in that null space, which the suite's
# classic XLA:CPU emitters make 3.7e-6 (4e-4 of SOAP's update scale): these
# optimizers' steps here are compiled apart anyway, so they compile with the
# emitters users run (tests/xla_options.py) and keep the spec's tolerance.
EXACT_BETAS = {
    "soap": {"b1": 0.875, "b2": 0.9375},
    "conda": {"b1": 0.875, "b2": 0.9375},
}


@pytest.mark.parametrize("name", GROUPED)
def test_inject_hyperparams_equivalence(name: str) -> None:
    spec = _spec(name)
    kwargs = _kwargs(spec)
    plain = _shared_tx(name)
    options = None
    if name in EXACT_BETAS:
        kwargs.update(EXACT_BETAS[name])
        plain = _build(spec, **EXACT_BETAS[name])
        options = xla_options.PRODUCTION
    injected = optax.inject_hyperparams(spec.factory, static_args=spec.all_static_args())(**kwargs)
    params = problems.mixed_params()
    s_inj, s_plain = injected.init(params), plain.init(params)
    step_inj = _step_fn(spec, injected, options)
    step_plain = _step_fn(spec, plain, options) if options else _shared_step(name)
    p_inj = p_plain = params
    for i in range(3):
        p_inj, s_inj, u_inj = step_inj(p_inj, s_inj, jnp.asarray(i))
        p_plain, s_plain, u_plain = step_plain(p_plain, s_plain, jnp.asarray(i))
        for a, b in zip(jax.tree.leaves(u_inj), jax.tree.leaves(u_plain)):
            tol = spec.equivalence_tolerance
            np.testing.assert_allclose(a, b, rtol=1e-5 * tol, atol=1e-7 * tol)
    assert "learning_rate" in s_inj.hyperparams


@pytest.mark.parametrize("name", GROUPED)
def test_bf16_params_keep_their_dtype(name: str) -> None:
    """bf16 params and grads give bf16 updates (f32 is checked with the extra args)."""
    tx, step = _shared_tx(name), _shared_step(name)
    params = problems.mixed_params(jnp.bfloat16)
    state = tx.init(params)
    new_params, new_state, updates = step(params, state, jnp.asarray(0))
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.dtype == p.dtype
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
        assert a.dtype == b.dtype
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)


@pytest.mark.parametrize("name", GROUPED)
def test_bf16_params_with_f32_state(name: str) -> None:
    """Moments requested in f32 for bf16 params stay f32 through ``update``.

    A property of types: the step is traced and lowered (which runs every lowering
    rule's dtype checks) but not compiled; the bf16 step itself is compiled and run
    in the test above."""
    spec = _spec(name)
    sig = inspect.signature(spec.factory).parameters
    dtype_args = {a: jnp.float32 for a in ("mu_dtype", "nu_dtype") if a in sig}
    if not dtype_args:
        pytest.skip("this optimizer has no moment-dtype arguments")
    tx = _build(spec, **dtype_args)
    params = problems.mixed_params(jnp.bfloat16)
    state = tx.init(params)
    for leaf in problems.floating_state_leaves(state):
        assert leaf.dtype != jnp.bfloat16, "moment requested in f32 is stored in bf16"
    lowered = _step_fn(spec, tx).lower(params, state, jnp.asarray(0))
    _new_params, new_state, updates = lowered.out_info
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))


_COND_KEY = jax.random.key(0)


@functools.cache
def _shared_cond_update(name: str):
    """A jitted ``(state, grads, pred) -> lax.cond(pred, update, skip)`` at the mixed
    params (step 0's extra arguments), shared by the cond test and the accumulation
    test's reference step (one compile for both)."""
    spec, tx = _spec(name), _shared_tx(name)
    params = problems.mixed_params()
    _, grads, extra = problems.extra_args_for(spec, problems.mixed_loss, params, 0, _COND_KEY)

    @jax.jit
    def maybe_update(state: Any, grads: Any, pred: jax.Array) -> Any:
        def update(s: Any) -> Any:
            return tx.update(grads, s, params, **extra)

        def skip(s: Any) -> Any:
            return jax.tree.map(jnp.zeros_like, grads), s

        return jax.lax.cond(pred, update, skip, state)

    return maybe_update, grads, extra


@pytest.mark.parametrize("name", GROUPED)
def test_lax_cond_type_stability_and_zero_gradients(name: str) -> None:
    """The state keeps its types through ``lax.cond(update, identity)``; all-zero
    gradients give finite updates and states for several steps."""
    tx = _shared_tx(name)
    maybe_update, grads, _ = _shared_cond_update(name)
    state = tx.init(problems.mixed_params())
    zeros = jax.tree.map(jnp.zeros_like, grads)
    for pred in (True, False):
        _, new = maybe_update(state, grads, jnp.asarray(pred))
        assert jax.tree.map(jax.typeof, new) == jax.tree.map(jax.typeof, state)
    for _ in range(3):
        u, state = maybe_update(state, zeros, jnp.asarray(True))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in problems.floating_state_leaves(state))


@pytest.mark.parametrize("name", GROUPED)
def test_gradient_accumulation(name: str) -> None:
    """optax.MultiSteps over 3 micro-batches equals one step on their mean.

    (``optx.accumulate_gradients`` is tested against the same property in
    tests/test_accumulation.py.) The one-step reference is the cond test's
    compiled update (``pred = True``)."""
    spec = _spec(name)
    params = problems.mixed_params()
    maybe_update, grads, extra = _shared_cond_update(name)
    micro = [jax.tree.map(lambda g, i=i: g * (1.0 + 0.1 * i), grads) for i in range(3)]
    # The mean as MultiSteps forms it (a running mean, acc + (g - acc) / (k + 1)):
    # the same bits reach both updates. (sum / 3 differs in the last bit, and
    # GaLore's rank-r subspace of a gradient with close singular values turns
    # that into 1e-3 relative.)
    mean_g = micro[0]
    for k, g_k in enumerate(micro[1:], start=1):
        mean_g = jax.tree.map(lambda g, acc, k=k: acc + (g - acc) / (k + 1), g_k, mean_g)

    ref_u, _ = maybe_update(_shared_tx(name).init(params), mean_g, jnp.asarray(True))

    wrapped = optax.MultiSteps(_build(spec), every_k_schedule=3).gradient_transformation()
    state = wrapped.init(params)
    upd = jax.jit(lambda g, s: wrapped.update(g, s, params, **extra))
    for i, g in enumerate(micro):
        u, state = upd(g, state)
        if i < 2:
            assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref_u)):
        tol = spec.equivalence_tolerance
        np.testing.assert_allclose(a, b, rtol=2e-5 * tol, atol=1e-7 * tol)


def _subtree(tree: Any, keys: set[str], like: Any) -> Any:
    """``tree``'s entries at ``keys`` when it is shaped like ``like`` (a tree extra
    argument such as AGVM's ``grads_a``); anything else (a loss function, a key) as is."""
    if isinstance(tree, dict) and tree.keys() == like.keys():
        return {k: tree[k] for k in keys}
    return tree


@pytest.mark.parametrize("name", GROUPED)
def test_inside_optax_partition_equals_the_subtree_alone(name: str) -> None:
    """``optax.partition`` hands the optimizer its leaves with ``MaskedNode`` in place
    of the others: routing, grouping and any coupling across leaves (AGVM's groups,
    EGGROLL's fitness, M-FAC's gradient window) see exactly the labelled leaves.

    The updates equal the same optimizer run on the subtree alone (up to the round-off
    of a differently fused program), and the other partition's leaves get plain SGD."""
    spec = _spec(name)
    sgd_keys = {"ln", "stack"}
    params = problems.mixed_params()
    keys = set(params) - sgd_keys
    sub = functools.partial(_subtree, keys=keys, like=params)
    labels = {
        k: jax.tree.map(lambda _, k=k: "sgd" if k in sgd_keys else "opt", v)
        for k, v in params.items()
    }
    tx = optax.partition({"opt": _build(spec), "sgd": optax.sgd(0.1)}, labels)
    alone = _build(spec)
    key = jax.random.key(5)

    @jax.jit
    def step(p: Any, s: Any, s_alone: Any, i: jax.Array) -> tuple[Any, ...]:
        _, grads, extra = problems.extra_args_for(spec, problems.mixed_loss, p, i, key)
        u, s = tx.update(grads, s, p, **extra)
        sub_extra = {a: sub(v) for a, v in extra.items()}
        u_alone, s_alone = alone.update(sub(grads), s_alone, sub(p), **sub_extra)
        return optax.apply_updates(p, u), s, s_alone, u, u_alone, grads

    state, alone_state = tx.init(params), alone.init(sub(params))
    tol = spec.equivalence_tolerance
    for i in range(2):
        params, state, alone_state, u, u_alone, grads = step(
            params, state, alone_state, jnp.asarray(i)
        )
        for a, b in zip(jax.tree.leaves(sub(u)), jax.tree.leaves(u_alone), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5 * tol, atol=1e-7 * tol)
        for k in sgd_keys:
            for a, g in zip(jax.tree.leaves(u[k]), jax.tree.leaves(grads[k]), strict=True):
                np.testing.assert_array_equal(a, -0.1 * g)
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", GROUPED)
def test_abstract_init(name: str) -> None:
    tx = _shared_tx(name)
    params = problems.mixed_params()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    concrete = tx.init(params)
    shapes = jax.eval_shape(tx.init, abstract)
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(concrete)):
        assert a.shape == b.shape and a.dtype == b.dtype
    direct = tx.init(abstract)
    assert jax.tree.structure(direct) == jax.tree.structure(concrete)


# Sharding (8 CPU devices, Explicit and Auto axes, with and without a mesh
# context) is checked in tests/conformance/test_mesh.py.


# ----------------------------------------------------------------------------
# Checkpointing and Flax NNX
# ----------------------------------------------------------------------------


def _uncommitted(x: jax.Array) -> jax.Array:
    """``x``'s values as an uncommitted array (a host round trip; PRNG keys too)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jnp.asarray(np.asarray(jax.random.key_data(x)))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jnp.asarray(np.asarray(x))


@pytest.mark.parametrize("name", GROUPED)
def test_checkpoint_round_trip(name: str) -> None:
    import orbax.checkpoint as ocp

    tx, step = _shared_tx(name), _shared_step(name)
    params = problems.mixed_params()
    state = tx.init(params)
    for i in range(2):
        params, state, _ = step(params, state, jnp.asarray(i))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ckpt")
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(path, {"params": params, "state": state})
        ckptr.wait_until_finished()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "state": state})
        restored = ckptr.restore(path, target)
    assert jax.tree.structure(restored["state"]) == jax.tree.structure(state)
    a_params, a_state = params, state
    # Orbax restores committed arrays; the step's inputs so far were uncommitted, and
    # jit compiles again for committed ones. The restored values, re-placed through the
    # host as the originals were, reuse the shared step's program.
    b_params, b_state = jax.tree.map(_uncommitted, (restored["params"], restored["state"]))
    for i in range(2, 4):
        a_params, a_state, _ = step(a_params, a_state, jnp.asarray(i))
        b_params, b_state, _ = step(b_params, b_state, jnp.asarray(i))
    for a, b in zip(jax.tree.leaves((a_params, a_state)), jax.tree.leaves((b_params, b_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# The nnx.Optimizer step (Embed + Conv + Linear + LayerNorm, under
# optax.masked, state structure kept across updates) is in
# tests/conformance/test_state_structure.py.
