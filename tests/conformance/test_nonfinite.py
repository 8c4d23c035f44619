"""Conformance: a NaN or Inf in any extra input skips the step (README "Reliability").

For every registered optimizer whose ``update`` takes extra inputs, each input
is poisoned (NaN, then Inf) at step 2 of 4. The poisoned step must leave the
parameters and the inner state exactly as they were, count the skip as
``optax.apply_if_finite`` does, and the later steps must equal those of a run
that never saw the bad step. Inputs that are functions (``loss_fn``,
``sampled_loss_fn``) are poisoned by scaling the loss they return. One compiled
function per optimizer serves the clean, the skipping and the poisoned runs.
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

STEPS, BAD = 4, 1  # poison at step index 1 (the second of four)

# The extra inputs each optimizer consumes (every registered optimizer with an
# ``extra_args`` builder must be listed: the test below checks the registry).
INPUTS = {
    "adahessian": ("loss_fn",),
    "agvm_sgd": ("grads_a", "grads_b"),
    "eggroll": ("fitness",),
    "mkor": ("captures",),
    "mkor_h": ("captures", "loss"),
    "sophia_g": ("sampled_loss_fn",),
    "sophia_h": ("loss_fn",),
}
# Refresh every step so that each poisoned input is consumed at the bad step.
OVERRIDES = {
    "sophia_g": {"update_interval": 1},
    "sophia_h": {"update_interval": 1},
    "mkor": {"update_interval": 1},
    "mkor_h": {"update_interval": 1, "switch_window": 2},
}


def test_every_optimizer_with_extra_inputs_is_covered() -> None:
    specs = (optx.get_optimizer(n) for n in optx.list_optimizers())
    with_extra = {s.name for s in specs if s.extra_args is not None}
    assert with_extra == set(INPUTS)


def _params() -> dict[str, Any]:
    r = np.random.default_rng(0)
    return {
        "hidden": {
            "kernel": jnp.asarray(0.3 * r.normal(size=(4, 3)), jnp.float32),
            "bias": jnp.asarray(0.1 * r.normal(size=(3,)), jnp.float32),
        },
    }


def _captures(key: jax.Array) -> dict[str, optx.curvature.LayerStatistics]:
    ka, kg = jax.random.split(key)
    return {
        "hidden/kernel": optx.curvature.LayerStatistics(
            0.5 * jax.random.normal(ka, (4,)), 0.5 * jax.random.normal(kg, (3,))
        )
    }


def _poison(name: str, value: Any, m: jax.Array) -> Any:
    """``value`` with ``m`` (1, NaN or Inf) multiplied into it."""
    if name == "loss_fn":
        return lambda p: value(p) * m
    if name == "sampled_loss_fn":
        return lambda p, k: value(p, k) * m
    return jax.tree.map(lambda x: x * m.astype(x.dtype), value)


def _runner(spec: optx.OptimizerSpec, tx: optax.GradientTransformation):
    names = INPUTS[spec.name]
    key = jax.random.key(0)

    def body(carry: Any, xs: Any) -> tuple[Any, Any]:
        p, s = carry
        step, active, mults = xs
        sk = jax.random.fold_in(key, step)
        loss, grads = jax.value_and_grad(problems.mixed_loss)(p)
        ctx = optx.ExtraArgsContext(
            loss_fn=problems.mixed_loss,
            params=p,
            grads=grads,
            loss=loss,
            key=sk,
            step=step,
            aux={"captures": _captures(sk)} if "captures" in names else {},
        )
        extra = spec.make_extra_args(ctx)
        for n in names:
            extra[n] = _poison(n, extra[n], mults[n])
        u, s_new = tx.update(grads, s, p, **extra)
        p_new = optax.apply_updates(p, u)
        # ``active = False``: the step never happens (the reference run).
        p, s = jax.tree.map(lambda a, b: jnp.where(active, a, b), (p_new, s_new), (p, s))
        return (p, s), (p, s)

    @jax.jit
    def run(params: Any, active: jax.Array, mults: dict[str, jax.Array]) -> Any:
        _, trace = jax.lax.scan(body, (params, tx.init(params)), (jnp.arange(STEPS), active, mults))
        return trace

    return run


def _equal(a: Any, b: Any, where: str) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in sorted(INPUTS)]
)
def test_nonfinite_extra_input_skips_the_step(name: str) -> None:
    spec = optx.get_optimizer(name)
    tx = spec.build(**{**spec.test_overrides, **OVERRIDES.get(name, {})})
    run = _runner(spec, tx)
    params = _params()
    ones = {n: jnp.ones((STEPS,), jnp.float32) for n in INPUTS[name]}
    skip = jnp.arange(STEPS) != BAD

    clean_p, clean_s = run(params, jnp.ones((STEPS,), bool), ones)
    # A clean run never skips, and moves the parameters at every step.
    assert int(clean_s.total_notfinite[-1]) == 0 and bool(jnp.all(clean_s.last_finite))
    leaves = jax.tree.leaves(clean_p)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert any(not np.array_equal(x[0], x[1]) for x in leaves)

    ref_p, ref_s = run(params, skip, ones)
    for n in INPUTS[name]:
        for bad in (np.nan, np.inf):
            where = f"{name}: {n} = {bad} at step {BAD}"
            mults = {**ones, n: ones[n].at[BAD].set(bad)}
            p, s = run(params, jnp.ones((STEPS,), bool), mults)
            at = lambda t, i: jax.tree.map(lambda x: x[i], t)  # noqa: E731
            # The bad step: parameters and inner state unchanged, the skip counted.
            _equal(at(p, BAD), at(p, BAD - 1), where)
            _equal(at(s.inner_state, BAD), at(s.inner_state, BAD - 1), where)
            np.testing.assert_array_equal(s.notfinite_count, [0, 1, 0, 0], err_msg=where)
            np.testing.assert_array_equal(s.total_notfinite, [0, 1, 1, 1], err_msg=where)
            np.testing.assert_array_equal(s.last_finite, [True, False, True, True], err_msg=where)
            # Every step equals the run that skipped the step altogether.
            _equal(p, ref_p, where)
            _equal(s.inner_state, ref_s.inner_state, where)


def test_skip_if_not_finite_wrapper() -> None:
    """The primitive on its own: counting as optax.apply_if_finite, keys, functions."""
    tx = optx.skip_if_not_finite(optax.sgd(0.1, momentum=0.9), inputs=("loss", "fn"))
    ref = optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), max_consecutive_errors=100)
    p = {"w": jnp.ones(2)}
    s, r = tx.init(p), ref.init(p)

    @jax.jit
    def step(s: Any, r: Any, loss: jax.Array) -> Any:
        g = jax.tree.map(lambda x: x * loss, p)  # NaN loss, NaN gradient
        return tx.update(g, s, p, loss=loss, fn=lambda q: q), ref.update(g, r, p)

    for bad in (False, True, True, False):
        (u, s), (v, r) = step(s, r, jnp.asarray(jnp.nan if bad else 1.0))
        _equal(u, v, "updates")
        for f in ("notfinite_count", "last_finite", "total_notfinite"):
            assert int(getattr(s, f)) == int(getattr(r, f)), f
        _equal(s.inner_state, r.inner_state, "inner state")
    # A missing or None input is not checked (the inner transform decides).
    u, s2 = tx.update(p, s, p, loss=None)
    assert bool(s2.last_finite)
    # Inputs given as a single string are refused.
    with pytest.raises(TypeError, match="inputs"):
        optx.skip_if_not_finite(optax.sgd(0.1), inputs="loss")


@pytest.mark.parametrize("name", ["sophia_h", "adahessian"])
def test_nonfinite_gradient_skips_the_step(name: str) -> None:
    """The aliases check the gradient itself (they do not check every output leaf)."""
    spec = optx.get_optimizer(name)
    tx = spec.build(**{**spec.test_overrides, **OVERRIDES.get(name, {})})
    p = _params()
    s = tx.init(p)
    grads = jax.grad(problems.mixed_loss)(p)
    extra = {"loss_fn": problems.mixed_loss}
    _, s = tx.update(grads, s, p, **extra)
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    u, s_bad = tx.update(bad, s, p, **extra)
    assert int(s_bad.total_notfinite) == 1 and not bool(s_bad.last_finite)
    _equal(s_bad.inner_state, s.inner_state, name)
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))


@pytest.mark.parametrize(
    ("primitive", "refresh_steps"),
    [
        (lambda: optx.scale_by_adahessian(), (0, 1, 2)),
        (lambda: optx.scale_by_adahessian(update_interval=2), (0, 2)),
        (
            lambda: optx.scale_by_sophia(
                tokens_per_batch=1, estimator=optx.curvature.Hutchinson(1), update_interval=2
            ),
            (2,),
        ),
    ],
)
def test_estimate_finite_flag(primitive: Any, refresh_steps: tuple[int, ...]) -> None:
    """The primitives report a non-finite estimate in ``estimate_finite``; the wrapper
    skips on it without checking the outputs, and only at the steps that refresh."""
    p = _params()
    grads = jax.grad(problems.mixed_loss)(p)
    nan_loss = lambda q: problems.mixed_loss(q) * jnp.nan  # noqa: E731
    inner = primitive()
    tx = optx.skip_if_not_finite(inner, check_outputs=False)
    clean = jax.jit(lambda t: tx.update(grads, t, p, loss_fn=problems.mixed_loss))
    raw = jax.jit(lambda s: inner.update(grads, s, p, loss_fn=nan_loss))
    t = tx.init(p)
    assert bool(t.inner_state.estimate_finite)
    for i in range(3):
        refresh = i in refresh_steps
        u_raw, s_raw = raw(t.inner_state)
        assert bool(s_raw.estimate_finite) != refresh, i  # the primitive's own flag
        if refresh:  # the primitive keeps itself: state unchanged but the flag, zero updates
            _equal(s_raw._replace(estimate_finite=True), t.inner_state, f"kept step {i}")
            assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u_raw))
        u, t_bad = jax.jit(lambda t: tx.update(grads, t, p, loss_fn=nan_loss))(t)
        assert int(t_bad.total_notfinite) == int(refresh), i
        if refresh:
            _equal(t_bad.inner_state, t.inner_state, f"skipped step {i}")
            assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))
        else:  # no refresh: the NaN loss is never evaluated, the step is kept
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(t_bad))
        _, t = clean(t)
        assert int(t.total_notfinite) == 0


def test_two_self_keeping_primitives_are_selected_by_the_wrapper() -> None:
    """With two flagged states in the chain, one's bad estimate must also revert the
    other: the wrapper selects both (each keeps itself only on its own estimate)."""
    p = _params()
    grads = jax.grad(problems.mixed_loss)(p)
    hutchinson = optx.curvature.Hutchinson(1)
    inner = optax.chain(
        optx.scale_by_adahessian(),
        # No refresh at step 0: Sophia's own estimate is fine, so it takes its step,
        # and only the wrapper can revert it when AdaHessian's estimate is not finite.
        optx.scale_by_sophia(tokens_per_batch=1, estimator=hutchinson),
    )
    tx = optx.skip_if_not_finite(inner, check_outputs=False)
    t = tx.init(p)
    nan_loss = lambda q: problems.mixed_loss(q) * jnp.nan  # noqa: E731
    u, t1 = jax.jit(lambda t: tx.update(grads, t, p, loss_fn=nan_loss))(t)
    assert int(t1.total_notfinite) == 1
    _equal(t1.inner_state, t.inner_state, "both states kept")
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(u))


def teardown_module() -> None:
    jax.clear_caches()


def test_misspelled_input_name_warns() -> None:
    """A named input that is absent is not checked (by design); when a close spelling
    was passed instead, the check would silently be off: it warns, naming both."""
    tx = optx.skip_if_not_finite(optax.sgd(0.1), inputs=("fitnes",))
    p = {"w": jnp.ones(2)}
    with pytest.warns(UserWarning, match=r"'fitnes'.*'fitness'"):
        tx.update(p, tx.init(p), p, fitness=jnp.asarray([jnp.nan, 1.0]))
    right = optx.skip_if_not_finite(optax.sgd(0.1), inputs=("fitness",))
    _, state = right.update(p, right.init(p), p, fitness=jnp.asarray([jnp.nan, 1.0]))
    assert int(state.total_notfinite) == 1
