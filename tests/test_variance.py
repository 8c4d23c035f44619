"""AGVM (optx._src.variance) against a float64 NumPy re-implementation of the official hook."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.signatures import defaults

SHAPES = {"backbone": (5, 4), "neck": (3, 5, 4), "head": (3, 3, 2, 4)}
GROUPS = (r"^backbone/", r"^neck/", r".*")


def _tree(arrays: dict[str, np.ndarray]) -> dict:
    return {k: {"kernel": jnp.asarray(v, jnp.float32)} for k, v in arrays.items()}


def _flat(tree: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v["kernel"], np.float64) for k, v in tree.items()}


def _cos_proxy(a: dict, b: dict, names: list[list[str]]) -> np.ndarray:
    out = []
    for group in names:
        va = np.concatenate([a[n].ravel() for n in group])
        vb = np.concatenate([b[n].ravel() for n in group])
        cos = va @ vb / (max(np.linalg.norm(va), 1e-8) * max(np.linalg.norm(vb), 1e-8))
        out.append(1.0 - cos)
    return np.array(out)


def _data(steps: int, seed: int = 0):
    r = np.random.default_rng(seed)
    noise = {"backbone": 0.5, "neck": 0.6, "head": 0.8}  # different gradient variances
    grads, halves = [], []
    for _ in range(steps):
        base_ = {k: r.normal(size=s) for k, s in SHAPES.items()}
        eps = {k: noise[k] * r.normal(size=s) for k, s in SHAPES.items()}
        ga = {k: base_[k] + eps[k] for k in SHAPES}
        gb = {k: base_[k] - eps[k] for k in SHAPES}
        grads.append(base_)
        halves.append((ga, gb))
    return grads, halves


def test_agvm_sgd_matches_official_hook() -> None:
    """Torch SGD (coupled decay, momentum) + the hook's window/interval logic, 8 steps."""
    lr, mom, wd, alpha = 0.1, 0.9, 1e-4, 0.97
    start, stop, interval, steps = 2, 6, 2, 8
    grads, halves = _data(steps)
    tx = optx.agvm_sgd(
        lr,
        mom,
        weight_decay=wd,
        groups=GROUPS,
        agvm_decay=alpha,
        update_interval=interval,
        start_step=start,
        stop_step=stop,
    )
    r = np.random.default_rng(9)
    w = {k: r.normal(size=s) for k, s in SHAPES.items()}
    params = _tree(w)
    state = tx.init(params)
    update = jax.jit(tx.update)
    names = [["backbone"], ["neck"], ["head"]]
    scales = np.ones(3)
    buf = {k: np.zeros(s) for k, s in SHAPES.items()}
    for it, (g, (ga, gb)) in enumerate(zip(grads, halves)):
        u, state = update(_tree(g), state, params, grads_a=_tree(ga), grads_b=_tree(gb))
        params = optax.apply_updates(params, u)
        # Reference (mmcv iter = it).
        if start <= it <= stop and it % interval == 0:
            d = _cos_proxy(ga, gb, names)
            mu = np.sqrt(np.clip((d[0] + 1e-6) / (d + 1e-6), 0.5, 10.0))
            scales = alpha * scales + (1 - alpha) * mu
            np.testing.assert_allclose(np.asarray(state.inner_state.variance_proxy), d, rtol=1e-5)
        applied = scales if start <= it <= stop else np.ones(3)
        for i, k in enumerate(SHAPES):
            d_p = g[k] + wd * w[k]
            buf[k] = mom * buf[k] + d_p
            w[k] = w[k] - lr * applied[i] * buf[k]
        for k in SHAPES:
            np.testing.assert_allclose(
                np.asarray(params[k]["kernel"]), w[k], rtol=2e-5, atol=2e-6, err_msg=f"it {it}"
            )
        np.testing.assert_allclose(np.asarray(state.inner_state.scales), scales, rtol=1e-6)
    # The noisier groups got smaller learning rates than the backbone.
    assert scales[0] == 1.0 and scales[2] < scales[1] < 1.0


@pytest.mark.parametrize("eps", [1e-8, 0.05])  # 0.05: large enough to see where ε sits
def test_adam_preconditioning_uses_the_inner_second_moment(eps: float) -> None:
    b2 = 0.999
    grads, halves = _data(3, seed=1)
    inner = optx.adamw(1e-3, b2=b2, eps=eps, weight_decay=0.0)
    tx = optx.agvm(
        inner,
        GROUPS,
        start_step=0,
        update_interval=1,
        adam_preconditioning=True,
        adam_b2=b2,
        adam_eps=eps,
    )
    params = _tree({k: np.zeros(s) for k, s in SHAPES.items()})
    state = tx.init(params)
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    names = [["backbone"], ["neck"], ["head"]]
    for g, (ga, gb) in zip(grads, halves):
        _, state = tx.update(_tree(g), state, params, grads_a=_tree(ga), grads_b=_tree(gb))

        def pre(h: dict, v: dict = v) -> dict:
            return {k: h[k] / (np.sqrt(b2 * v[k] + (1 - b2) * h[k] ** 2) + eps) for k in h}

        d = _cos_proxy(pre(ga), pre(gb), names)
        np.testing.assert_allclose(np.asarray(state.variance_proxy), d, rtol=1e-4, atol=1e-6)
        v = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in v}


@pytest.mark.parametrize(
    "inner",
    [optax.lamb(1e-3), optax.lars(1e-2), optax.adamw(1e-3), optax.sgd(1e-2, 0.9)],
    ids=["lamb", "lars", "adamw", "sgd"],
)
def test_agvm_wraps_any_optimizer(inner: optax.GradientTransformation) -> None:
    grads, halves = _data(2, seed=2)
    tx = optx.agvm(inner, start_step=0, update_interval=1)
    params = _tree({k: np.ones(s) for k, s in SHAPES.items()})
    state = tx.init(params)
    plain_state = inner.init(params)
    g, (ga, gb) = grads[0], halves[0]
    u, state = jax.jit(tx.update)(_tree(g), state, params, grads_a=_tree(ga), grads_b=_tree(gb))
    u_plain, _ = inner.update(_tree(g), plain_state, params)
    # groups=None: one group per top-level key, in tree order (backbone first).
    assert state.scales.shape == (3,)
    for i, k in enumerate(sorted(SHAPES)):
        np.testing.assert_allclose(
            u[k]["kernel"], float(state.scales[i]) * u_plain[k]["kernel"], rtol=1e-5, atol=1e-8
        )


def test_half_batch_gradients_in_a_jitted_train_step() -> None:
    r = np.random.default_rng(3)
    x = jnp.asarray(r.normal(size=(8, 5)), jnp.float32)
    y = jnp.asarray(r.normal(size=(8, 4)), jnp.float32)
    params = {"backbone": {"kernel": jnp.zeros((5, 3))}, "head": {"kernel": jnp.zeros((3, 4))}}
    params = jax.tree.map(lambda p: p + 0.1, params)

    def loss_fn(p, batch):
        xb, yb = batch
        return jnp.mean((jnp.tanh(xb @ p["backbone"]["kernel"]) @ p["head"]["kernel"] - yb) ** 2)

    tx = optx.agvm_sgd(0.1, groups=("backbone", ".*"), start_step=0, update_interval=1)

    @jax.jit
    def train_step(p, s, batch):
        loss, g, ga, gb = optx.elementwise.half_batch_gradients(loss_fn, p, batch)
        u, s = tx.update(g, s, p, grads_a=ga, grads_b=gb)
        return optax.apply_updates(p, u), s, loss, g, ga, gb

    _, state, loss, g, ga, gb = train_step(params, tx.init(params), (x, y))
    full_loss, full_g = jax.value_and_grad(loss_fn)(params, (x, y))
    np.testing.assert_allclose(float(loss), float(full_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(full_g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for half, sl in ((ga, slice(0, 4)), (gb, slice(4, 8))):
        half_g = jax.grad(loss_fn)(params, (x[sl], y[sl]))
        for a, b in zip(jax.tree.leaves(half), jax.tree.leaves(half_g)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert bool(jnp.all(jnp.isfinite(state.inner_state.scales)))
    assert math.isclose(float(state.inner_state.scales[0]), 1.0)


def test_bad_input() -> None:
    params = _tree({k: np.ones(s) for k, s in SHAPES.items()})
    g = _tree({k: np.ones(s) for k, s in SHAPES.items()})
    tx = optx.agvm(optax.sgd(0.1), (r"^backbone/", r"^neck/"))
    with pytest.raises(ValueError, match="matches none"):
        tx.init(params)
    tx = optx.agvm(optax.sgd(0.1), GROUPS)
    with pytest.raises(TypeError):
        tx.update(g, tx.init(params), params)  # the half-batch gradients are required
    with pytest.raises(ValueError):
        tx.update(g, tx.init(params), params, grads_a=g, grads_b={"backbone": g["backbone"]})
    with pytest.raises(ValueError, match="nu"):
        bad = optx.agvm(optax.sgd(0.1), GROUPS, adam_preconditioning=True, start_step=0)
        bad.update(g, bad.init(params), params, grads_a=g, grads_b=g)
    with pytest.raises(TypeError):
        optx.agvm(optax.sgd(0.1), "backbone")
    with pytest.raises(ValueError):
        optx.agvm(optax.sgd(0.1), ("[unclosed",))
    with pytest.raises(ValueError):
        optx.agvm(optax.sgd(0.1), start_step=10, stop_step=5)
    with pytest.raises(TypeError):
        optx.agvm(optax.sgd(0.1), update_interval=2.5)
    with pytest.raises(ValueError, match="even"):
        optx.elementwise.half_batch_gradients(lambda p, b: jnp.sum(b), {}, jnp.ones(3))


@pytest.mark.parametrize("wrapper", ["masked", "partition"])
def test_agvm_inside_masked_and_partition_sees_its_own_leaves(wrapper: str) -> None:
    """optax.masked / partition pass extra arguments through whole: the
    half-batch gradients are cut to the inner's leaves, so AGVM on a part of
    the tree is AGVM on that part alone (its groups' statistics from its own
    leaves). Before, the structure check refused the full trees."""
    rng = np.random.default_rng(0)

    def tree() -> dict:
        return {
            "backbone": {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)},
            "neck": {"w": jnp.asarray(rng.standard_normal(5), jnp.float32)},
            "head": {"w": jnp.asarray(rng.standard_normal(2), jnp.float32)},
        }

    params = tree()
    part = {k: params[k] for k in ("backbone", "neck")}
    make = lambda: optx.agvm_sgd(0.1, groups=("backbone", ".*"), start_step=0)  # noqa: E731
    if wrapper == "masked":
        mask = {"backbone": {"w": True}, "neck": {"w": True}, "head": {"w": False}}
        tx = optax.masked(make(), mask)
    else:
        labels = {"backbone": {"w": "a"}, "neck": {"w": "a"}, "head": {"w": "b"}}
        tx = optax.partition({"a": make(), "b": optax.set_to_zero()}, labels)
    alone = make()
    state, state_alone = tx.init(params), alone.init(part)
    for _ in range(3):
        g, ga, gb = tree(), tree(), tree()
        u, state = tx.update(g, state, params, grads_a=ga, grads_b=gb)
        cut = lambda t: {k: t[k] for k in ("backbone", "neck")}  # noqa: E731
        ua, state_alone = alone.update(cut(g), state_alone, part, grads_a=cut(ga), grads_b=cut(gb))
        for k in ("backbone", "neck"):
            np.testing.assert_array_equal(np.asarray(u[k]["w"]), np.asarray(ua[k]["w"]))


def test_agvm_defaults_are_the_official_hooks() -> None:
    """Sense-X/AGVM's hook: scale EMA momentum 0.97, ratio clip (0.5, 10); the Adam
    preconditioner's (β₂, ε) are Adam's (0.999, 1e-8)."""
    official = {
        "decay": 0.97,
        "min_ratio": 0.5,
        "max_ratio": 10.0,
        "adam_b2": 0.999,
        "adam_eps": 1e-8,
    }
    assert defaults(optx.agvm, *official) == official


def test_default_window_starts_at_500_and_measures_every_5_steps() -> None:
    """The official hook's defaults: modulation from iteration 500 on, a measurement
    every 5 iterations (steps 499, 501 are not measured; 500 and 505 are)."""
    grads, halves = _data(1)
    g, (ga, gb) = grads[0], halves[0]
    tx = optx.agvm(optax.sgd(0.1), GROUPS)
    params = _tree({k: np.zeros(s) for k, s in SHAPES.items()})
    state = tx.init(params)
    update = jax.jit(lambda s: tx.update(_tree(g), s, params, grads_a=_tree(ga), grads_b=_tree(gb)))
    want = _cos_proxy(ga, gb, [["backbone"], ["neck"], ["head"]])
    for step, measured in ((499, False), (500, True), (501, False), (505, True)):
        _, new = update(state._replace(count=jnp.asarray(step, jnp.int32)))
        proxy = np.asarray(new.variance_proxy)
        if measured:
            np.testing.assert_allclose(proxy, want, rtol=1e-5, err_msg=f"step {step}")
        else:
            np.testing.assert_array_equal(proxy, np.zeros(3), err_msg=f"step {step}")


def test_group_cosine_pools_leaves_and_is_hermitian_on_complex() -> None:
    """``D_i = 1 − Re⟨gᴬ, gᴮ⟩ / (‖gᴬ‖‖gᴮ‖)`` over the concatenation of a group's leaves
    (leaves of different sizes, a complex one: ``⟨x, y⟩ = Σ x̄ y``), float64 reference."""
    r = np.random.default_rng(5)

    def draw() -> dict:
        return {
            "a": {"kernel": r.normal(size=(4, 3)), "bias": r.normal(size=(2,))},
            "b": {"kernel": r.normal(size=(3, 2)) + 1j * r.normal(size=(3, 2))},
        }

    base_, noise = draw(), draw()
    ga = jax.tree.map(lambda x, e: x + 0.7 * e, base_, noise)
    gb = jax.tree.map(lambda x, e: x - 0.7 * e, base_, noise)
    as_jnp = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jnp.asarray(x, jnp.complex64 if np.iscomplexobj(x) else jnp.float32), t
    )
    tx = optx.agvm(optax.sgd(0.1), start_step=0, update_interval=1)  # groups: top-level keys
    params = as_jnp(jax.tree.map(np.zeros_like, base_))
    _, state = tx.update(
        as_jnp(base_), tx.init(params), params, grads_a=as_jnp(ga), grads_b=as_jnp(gb)
    )
    want = []
    for k in ("a", "b"):
        x = np.concatenate([v.ravel() for v in jax.tree.leaves(ga[k])])
        y = np.concatenate([v.ravel() for v in jax.tree.leaves(gb[k])])
        cos = np.real(np.vdot(x, y)) / (np.linalg.norm(x) * np.linalg.norm(y))
        want.append(1.0 - cos)
    np.testing.assert_allclose(np.asarray(state.variance_proxy), want, rtol=1e-5)
