"""Sophia and AdaHessian scalings: float64 references from the papers' math.

The references are NumPy implementations of arXiv 2305.14342 Alg. 3 (Sophia)
and arXiv 2006.00719 Eq. 8–11 (AdaHessian, official image version), fed with
exact Hessians: a separable loss (diagonal Hessian, so Rademacher probes give
the exact diagonal) on 2-D, stacked ``(L, in, out)`` and conv-shaped leaves,
and a small MLP whose full Hessian comes from ``jax.hessian`` in float64.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.signatures import defaults

SHAPES = {"dense": (6, 4), "stack": (3, 4, 2), "conv": (3, 3, 2, 4), "bias": (4,)}


def _separable_problem(seed: int = 0):
    r = np.random.default_rng(seed)
    target = {k: r.normal(size=s) for k, s in SHAPES.items()}
    coef = {k: r.uniform(0.5, 2.0, size=s) for k, s in SHAPES.items()}
    alpha = 0.1

    def tree(d):
        return {
            "dense": {"kernel": d["dense"]},
            "stack": {"kernel": d["stack"]},
            "conv": {"kernel": d["conv"]},
            "bias": d["bias"],
        }

    def loss_fn(p):
        flat = {
            "dense": p["dense"]["kernel"],
            "stack": p["stack"]["kernel"],
            "conv": p["conv"]["kernel"],
            "bias": p["bias"],
        }
        return sum(
            jnp.sum(coef[k] * (flat[k] - target[k]) ** 2) + alpha * jnp.sum(flat[k] ** 4)
            for k in SHAPES
        )

    def grad_np(x: dict) -> dict:
        return {k: 2 * coef[k] * (x[k] - target[k]) + 4 * alpha * x[k] ** 3 for k in SHAPES}

    def hdiag_np(x: dict) -> dict:
        return {k: 2 * coef[k] + 12 * alpha * x[k] ** 2 for k in SHAPES}

    init = {k: r.normal(size=s) for k, s in SHAPES.items()}
    return tree, loss_fn, grad_np, hdiag_np, init


def _flat(p) -> dict:
    return {
        "dense": np.asarray(p["dense"]["kernel"]),
        "stack": np.asarray(p["stack"]["kernel"]),
        "conv": np.asarray(p["conv"]["kernel"]),
        "bias": np.asarray(p["bias"]),
    }


def _trajectory(tx, loss_fn, tree, init, steps: int) -> list[dict]:
    """The parameters after each of ``steps`` jitted updates, as flat NumPy dicts."""
    params = tree({n: jnp.asarray(v) for n, v in init.items()})
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn))
    out = []
    for _ in range(steps):
        u, state = step(jax.grad(loss_fn)(params), state, params)
        params = optax.apply_updates(params, u)
        out.append(_flat(params))
    return out


@pytest.mark.parametrize("refresh_at_start", [False, True])
def test_sophia_matches_float64_reference(refresh_at_start: bool) -> None:
    tree, loss_fn, grad_np, hdiag_np, init = _separable_problem(0)
    lr, b1, b2, rho, wd, eps, k, steps = 0.05, 0.9, 0.95, 0.3, 0.1, 1e-12, 2, 6
    with jax.enable_x64(True):
        tx = optx.sophia_h(
            lr,
            b1,
            b2,
            eps,
            wd,
            gamma=rho,
            update_interval=k,
            refresh_at_start=refresh_at_start,
            distribution="rademacher",
        )
        got = _trajectory(tx, loss_fn, tree, init, steps)
    # Reference.
    x = {n: v.copy() for n, v in init.items()}
    m = {n: np.zeros_like(v) for n, v in x.items()}
    h = {n: np.zeros_like(v) for n, v in x.items()}
    for t in range(steps):
        g = grad_np(x)
        if t % k == 0 and (refresh_at_start or t > 0):
            hd = hdiag_np(x)
            h = {n: b2 * h[n] + (1 - b2) * hd[n] for n in x}
        m = {n: b1 * m[n] + (1 - b1) * g[n] for n in x}
        u = {n: np.clip(m[n] / np.maximum(rho * h[n], eps), -1, 1) for n in x}
        x = {n: x[n] - lr * (u[n] + wd * x[n]) for n in x}
        for n in x:
            np.testing.assert_allclose(got[t][n], x[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block_size", [None, 2, -1])
def test_adahessian_matches_float64_reference(block_size) -> None:
    tree, loss_fn, grad_np, hdiag_np, init = _separable_problem(1)
    lr, b1, b2, eps, wd, power, steps = 0.05, 0.9, 0.99, 1e-4, 0.01, 0.5, 4
    with jax.enable_x64(True):
        tx = optx.adahessian(
            lr, b1, b2, eps, weight_decay=wd, hessian_power=power, block_size=block_size
        )
        got = _trajectory(tx, loss_fn, tree, init, steps)

    def average(name: str, d: np.ndarray) -> np.ndarray:
        if name == "conv":  # (kh, kw, in, out): mean over the window
            return np.broadcast_to(d.mean(axis=(0, 1), keepdims=True), d.shape)
        if name == "bias" or block_size is None:
            return d
        mats = d.reshape(-1, *d.shape[-2:])  # (B, in, out)
        size = mats.shape[1] if block_size == -1 else block_size
        blocks = mats.reshape(mats.shape[0], -1, size, mats.shape[2])
        return np.broadcast_to(blocks.mean(axis=2, keepdims=True), blocks.shape).reshape(d.shape)

    x = {n: v.copy() for n, v in init.items()}
    m = {n: np.zeros_like(v) for n, v in x.items()}
    v = {n: np.zeros_like(v) for n, v in x.items()}
    for t in range(1, steps + 1):
        g, hd = grad_np(x), hdiag_np(x)  # Rademacher: |Hz| = |diag H| for a diagonal H
        for n in x:
            d = average(n, np.abs(hd[n]))
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * d**2
            denom = (np.sqrt(v[n]) / np.sqrt(1 - b2**t)) ** power + eps
            x[n] = x[n] - lr * (m[n] / (1 - b1**t) / denom + wd * x[n])
        for n in x:
            np.testing.assert_allclose(got[t - 1][n], x[n], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# A small MLP with its exact Hessian (jax.hessian in float64)
# ----------------------------------------------------------------------------


def _mlp_problem():
    r = np.random.default_rng(3)
    x_data = r.normal(size=(8, 3))
    y_data = r.normal(size=(8, 2))
    params = {
        "l1": {"kernel": r.normal(size=(3, 4)) * 0.5, "bias": r.normal(size=(4,)) * 0.1},
        "l2": {"kernel": r.normal(size=(4, 2)) * 0.5},
    }

    def loss_fn(p):
        h = jnp.tanh(x_data @ p["l1"]["kernel"] + p["l1"]["bias"])
        return 0.5 * jnp.mean(jnp.sum((h @ p["l2"]["kernel"] - y_data) ** 2, -1))

    return params, loss_fn


def _exact_hessian(loss_fn, params):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hess = jax.hessian(lambda v: loss_fn(unravel(v)))(flat)
    return np.asarray(hess), unravel


@pytest.mark.parametrize("kind", ["sophia_h", "adahessian"])
def test_mlp_with_exact_hessian(kind: str) -> None:
    """Probe z drawn from the ``key`` extra argument; ĥ = z ⊙ Hz / D = |Hz| from the exact H."""
    lr, b1, b2, steps = 0.05, 0.9, 0.95, 4
    with jax.enable_x64(True):
        params0, loss_fn = _mlp_problem()
        params = jax.tree.map(jnp.asarray, params0)
        if kind == "sophia_h":
            tx = optx.sophia_h(lr, b1, b2, 1e-12, weight_decay=0.0, gamma=0.5, update_interval=2)
        else:
            tx = optx.adahessian(lr, b1, b2, 1e-4, weight_decay=0.0)
        state = tx.init(params)
        keys = [jax.random.key(10 + t) for t in range(steps)]
        dist = "gaussian" if kind == "sophia_h" else "rademacher"
        traj, probes = [], []
        for t in range(steps):
            g = jax.grad(loss_fn)(params)
            probes.append(optx.curvature.random_probes(keys[t], params, dist))
            u, state = tx.update(g, state, params, loss_fn=loss_fn, key=keys[t])
            traj.append(params)
            params = optax.apply_updates(params, u)
        final = jax.flatten_util.ravel_pytree(params)[0]
        # Reference in float64 NumPy from the exact Hessian.
        x = jax.flatten_util.ravel_pytree(params0)[0]
        x = np.asarray(x)
        m = np.zeros_like(x)
        h = np.zeros_like(x)
        for t in range(steps):
            p_t = jax.flatten_util.ravel_pytree(traj[t])[0]
            np.testing.assert_allclose(np.asarray(p_t), x, rtol=1e-10, atol=1e-12)
            hess, unravel = _exact_hessian(loss_fn, unravel_like(params0, x))
            g = np.asarray(jax.flatten_util.ravel_pytree(jax.grad(loss_fn)(unravel(x)))[0])
            z = np.asarray(jax.flatten_util.ravel_pytree(probes[t])[0])
            m = b1 * m + (1 - b1) * g
            if kind == "sophia_h":
                if t % 2 == 0:
                    h = b2 * h + (1 - b2) * z * (hess @ z)
                x = x - lr * np.clip(m / np.maximum(0.5 * h, 1e-12), -1, 1)
            else:
                h = b2 * h + (1 - b2) * np.abs(hess @ z) ** 2
                denom = np.sqrt(h) / np.sqrt(1 - b2 ** (t + 1)) + 1e-4
                x = x - lr * (m / (1 - b1 ** (t + 1)) / denom)
        np.testing.assert_allclose(np.asarray(final), x, rtol=1e-10, atol=1e-12)


def unravel_like(tree, flat):
    return jax.flatten_util.ravel_pytree(tree)[1](jnp.asarray(flat))


# ----------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------


def _quadratic():
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    diag = jnp.array([1.0, 4.0, 0.25])

    def loss_fn(p):
        return 0.5 * jnp.sum(diag * p["w"] ** 2)

    return params, loss_fn, diag


def test_sophia_refresh_phase_and_win_rate() -> None:
    params, loss_fn, diag = _quadratic()
    gamma = 0.3  # |m| < γh for 2 of 3 coordinates at step 3, 1 of 3 at step 4
    tx = optx.scale_by_sophia(
        gamma=gamma, b2=0.5, estimator=optx.curvature.Hutchinson(), update_interval=3
    )
    state = tx.init(params)
    step = jax.jit(lambda s: tx.update(jax.grad(loss_fn)(params), s, params, loss_fn=loss_fn))
    hs, mus, wins = [], [], []
    for _ in range(7):
        _, state = step(state)
        hs.append(np.asarray(state.hessian["w"]))
        mus.append(np.asarray(state.mu["w"]))
        wins.append(float(state.win_rate))
    # The win rate is counted on refresh steps (3 and 6) and held in between.
    assert wins[:3] == [0.0, 0.0, 0.0]
    assert wins[3] == pytest.approx(2 / 3)
    assert wins[3] == pytest.approx(np.mean(np.abs(mus[3]) < gamma * hs[3]))
    assert np.mean(np.abs(mus[4]) < gamma * hs[4]) == pytest.approx(1 / 3)
    assert wins[4] == wins[5] == wins[3]
    assert wins[6] == pytest.approx(np.mean(np.abs(mus[6]) < gamma * hs[6]))
    # Official phase: nothing before step 3, refreshes at steps 3 and 6 only.
    np.testing.assert_allclose(hs[0], 0.0)
    np.testing.assert_allclose(hs[2], 0.0)
    np.testing.assert_allclose(hs[3], 0.5 * np.asarray(diag), rtol=1e-6)
    np.testing.assert_allclose(hs[4], hs[3])
    np.testing.assert_allclose(hs[6], 0.75 * np.asarray(diag), rtol=1e-6)
    assert int(state.count) == 7


def test_sophia_negative_curvature_takes_full_clipped_step() -> None:
    params = {"w": jnp.array([1.0, 1.0])}

    def loss_fn(p):  # concave in w[0]
        return jnp.sum(jnp.array([-1.0, 1.0]) * p["w"] ** 2)

    tx = optx.scale_by_sophia(
        b2=0.0, gamma=1.0, estimator=optx.curvature.Hutchinson(), refresh_at_start=True, eps=1e-12
    )
    u, _ = tx.update(jax.grad(loss_fn)(params), tx.init(params), params, loss_fn=loss_fn)
    # w[0]: h < 0 → max(ρh, ε) = ε → the ratio is clipped to sign(m) (= sign(g) = -1).
    assert float(u["w"][0]) == pytest.approx(-1.0)
    assert abs(float(u["w"][1])) < 1.0


def test_hessian_is_untouched_between_refreshes() -> None:
    """Off-refresh steps never use the estimate (here a NaN Hessian) and keep h."""
    params = {"w": jnp.array([1.0, 2.0])}

    def loss_fn(p):  # sqrt of a negative number: NaN gradient and Hessian
        return jnp.sum(jnp.sqrt(p["w"] - 10.0))

    g = {"w": jnp.array([0.5, -0.5])}
    tx = optx.scale_by_sophia(estimator=optx.curvature.Hutchinson(), update_interval=4)
    state = tx.init(params)
    for _ in range(4):
        u, state = tx.update(g, state, params, loss_fn=loss_fn)
        assert np.all(np.isfinite(u["w"]))
    np.testing.assert_array_equal(state.hessian["w"], 0.0)
    assert bool(state.estimate_finite)
    u, kept = tx.update(g, state, params, loss_fn=loss_fn)  # step 4 refreshes: NaN estimate
    # The primitive keeps itself on a non-finite estimate: flag down, nothing else moves.
    assert not bool(kept.estimate_finite)
    _equal_trees(kept._replace(estimate_finite=state.estimate_finite), state)
    np.testing.assert_array_equal(u["w"], 0.0)


def test_adahessian_estimate_whose_square_overflows_keeps_the_state() -> None:
    """A finite Hessian estimate whose square overflows float32 (ν ← β₂ν + (1−β₂)·d²)
    is caught by the check of the new state, not only Inf/NaN estimates: nothing moves."""
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.ones((3,))}

    def loss_fn(p):  # Hessian diagonal 2e20 on w (finite; its square is not), 2 on b
        return 1e20 * jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)

    tx = optx.scale_by_adahessian()
    g = {"w": jnp.array([0.5, -0.5]), "b": jnp.full((3,), 0.25)}
    state = tx.init(params)
    u, kept = jax.jit(lambda s: tx.update(g, s, params, loss_fn=loss_fn))(state)
    assert not bool(kept.estimate_finite)
    _equal_trees(kept._replace(estimate_finite=state.estimate_finite), state)
    for leaf in jax.tree.leaves(u):
        np.testing.assert_array_equal(leaf, 0.0)
    # The same problem scaled into range refreshes normally.
    u, state = jax.jit(lambda s: tx.update(g, s, params, loss_fn=lambda p: 1e-20 * loss_fn(p)))(
        state
    )
    assert bool(state.estimate_finite) and int(state.hessian_count) == 1


def test_sophia_win_rate_counts_every_leaf_exactly() -> None:
    """The float32 count equals NumPy's integer count over a multi-leaf tree."""
    r = np.random.default_rng(3)
    params = {
        "a": jnp.asarray(r.normal(size=(37, 29)), jnp.float32),
        "b": jnp.asarray(r.normal(size=(5,)), jnp.float32),
        "c": jnp.asarray(r.normal(size=(3, 7, 11)), jnp.float32),
    }
    coef = jax.tree.map(lambda p: jnp.asarray(r.uniform(0.0, 2.0, p.shape), jnp.float32), params)

    def loss_fn(p):
        return sum(jnp.sum(c * x**2) for c, x in zip(jax.tree.leaves(coef), jax.tree.leaves(p)))

    gamma = 0.7
    tx = optx.scale_by_sophia(
        gamma=gamma, b2=0.0, estimator=optx.curvature.Hutchinson(), refresh_at_start=True
    )
    g = jax.tree.map(lambda p: jnp.asarray(r.normal(size=p.shape), jnp.float32), params)
    _, state = jax.jit(lambda s: tx.update(g, s, params, loss_fn=loss_fn))(tx.init(params))
    wins = sum(
        int(np.sum(np.abs(np.asarray(m)) < np.float32(gamma) * np.asarray(h)))
        for m, h in zip(jax.tree.leaves(state.mu), jax.tree.leaves(state.hessian))
    )
    size = sum(p.size for p in jax.tree.leaves(params))
    assert float(state.win_rate) == np.float32(wins) / np.float32(size)
    assert 0 < wins < size


def _equal_trees(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_extra_key_overrides_state_key() -> None:
    params, loss_fn, _ = _quadratic()
    tx = optx.scale_by_adahessian(distribution="gaussian")
    s0 = tx.init(params)
    g = jax.grad(loss_fn)(params)
    _, a = tx.update(g, s0, params, loss_fn=loss_fn, key=jax.random.key(1))
    _, b = tx.update(g, s0, params, loss_fn=loss_fn, key=jax.random.key(1))
    _, c = tx.update(g, s0, params, loss_fn=loss_fn, key=jax.random.key(2))
    _, d = tx.update(g, s0, params, loss_fn=loss_fn)
    np.testing.assert_array_equal(a.nu["w"], b.nu["w"])
    assert not np.allclose(a.nu["w"], c.nu["w"])
    assert not np.allclose(a.nu["w"], d.nu["w"])


def test_adahessian_update_interval_bias_corrects_by_refreshes() -> None:
    params, loss_fn, diag = _quadratic()
    tx = optx.scale_by_adahessian(b1=0.0, b2=0.5, eps=0.0, update_interval=2)
    state = tx.init(params)
    g = jax.grad(loss_fn)(params)
    for _ in range(3):
        u, state = tx.update(g, state, params, loss_fn=loss_fn)
    assert int(state.hessian_count) == 2
    # v bias-corrected by 2 refreshes of the same |diag H|: u = g / |diag H|.
    np.testing.assert_allclose(u["w"], g["w"] / diag, rtol=1e-5)


def test_custom_spatial_axes_and_none() -> None:
    params = {"conv": {"kernel": jnp.ones((2, 2, 1, 1))}}
    w = jnp.arange(1.0, 5.0).reshape(2, 2, 1, 1)

    def loss_fn(p):
        return 0.5 * jnp.sum(w * p["conv"]["kernel"] ** 2)

    g = jax.grad(loss_fn)(params)
    out = {}
    for mode in ("conv", "none"):
        tx = optx.scale_by_adahessian(b1=0.0, b2=0.0, eps=0.0, spatial_axes=mode)
        u, _ = tx.update(g, tx.init(params), params, loss_fn=loss_fn)
        out[mode] = np.asarray(u["conv"]["kernel"]).ravel()
    np.testing.assert_allclose(out["none"], 1.0, rtol=1e-6)  # g / |h| = w / w
    np.testing.assert_allclose(out["conv"], np.arange(1.0, 5.0) / 2.5, rtol=1e-6)
    tx = optx.scale_by_adahessian(spatial_axes=lambda path, leaf: (0,))
    u, _ = tx.update(g, tx.init(params), params, loss_fn=loss_fn)
    assert u["conv"]["kernel"].shape == (2, 2, 1, 1)


def test_linen_style_conv_names_are_detected() -> None:
    fn = optx.curvature.conv_window_axes()
    assert fn("Conv_0/kernel", jnp.zeros((3, 3, 2, 4))) == (0, 1)
    assert fn("conv1/kernel", jnp.zeros((3, 3, 2, 4))) == (0, 1)
    assert fn("dense/kernel", jnp.zeros((3, 3, 2, 4))) is None
    assert fn("Conv_0/bias", jnp.zeros((4,))) is None


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        optx.scale_by_sophia(b1=1.5)
    with pytest.raises(ValueError):
        optx.scale_by_sophia(gamma=-1.0)
    with pytest.raises(TypeError):
        optx.scale_by_sophia(update_interval=2.0)
    with pytest.raises(ValueError):
        optx.scale_by_sophia(update_interval=0)
    with pytest.raises(TypeError):
        optx.scale_by_sophia(estimator="hutchinson")
    with pytest.raises(ValueError):
        optx.scale_by_adahessian(hessian_power=1.5)
    with pytest.raises(ValueError):
        optx.scale_by_adahessian(spatial_axes="window")
    with pytest.raises(TypeError):
        optx.scale_by_adahessian(spatial_axes=3)
    with pytest.raises(ValueError):
        optx.scale_by_adahessian(distribution="uniform")
    with pytest.raises(ValueError):
        optx.scale_by_adahessian(block_size=0)
    tx = optx.scale_by_adahessian(block_size=4)
    with pytest.raises(ValueError, match="does not divide"):
        tx.init({"dense": {"kernel": jnp.zeros((6, 3))}})


def test_missing_extra_args_raise_type_error() -> None:
    params = {"w": jnp.ones(2)}
    for tx, match in [
        (optx.scale_by_sophia(), "sampled_loss_fn"),
        (optx.scale_by_sophia(estimator=optx.curvature.Hutchinson()), "loss_fn"),
        (optx.scale_by_adahessian(), "loss_fn"),
    ]:
        with pytest.raises(TypeError, match=match):
            tx.update(params, tx.init(params), params)


def test_optax_obj_fn_alias_is_accepted() -> None:
    params, loss_fn, _ = _quadratic()
    tx = optx.scale_by_adahessian()
    g = jax.grad(loss_fn)(params)
    a, _ = tx.update(g, tx.init(params), params, obj_fn=loss_fn, key=jax.random.key(0))
    b, _ = tx.update(g, tx.init(params), params, loss_fn=loss_fn, key=jax.random.key(0))
    np.testing.assert_array_equal(a["w"], b["w"])


def test_primitive_defaults_are_the_official_ones() -> None:
    """Liuhong99/Sophia SophiaG (betas (0.965, 0.99), rho 0.04, the denominator's 1e-15)
    and amirgholami/adahessian (betas (0.9, 0.999), eps 1e-4, hessian_power 1)."""
    sophia = {"b1": 0.965, "b2": 0.99, "gamma": 0.04, "eps": 1e-15, "tokens_per_batch": 1.0}
    adahessian = {"b1": 0.9, "b2": 0.999, "eps": 1e-4, "hessian_power": 1.0}
    assert defaults(optx.scale_by_sophia, *sophia) == sophia
    assert defaults(optx.scale_by_adahessian, *adahessian) == adahessian


def test_sophia_default_refresh_period_is_10() -> None:
    """SophiaG's ``k = 10``: without ``update_interval`` the curvature is refreshed at
    steps 10, 20, … (not 0, 9, 11). Rademacher Hutchinson on a diagonal quadratic is exact,
    so a refresh from ``h = 0`` gives ``(1 − β₂)·diag(H)``."""
    a = jnp.asarray([1.0, 2.0, 3.0])
    loss_fn = lambda w: 0.5 * jnp.sum(a * w**2)  # noqa: E731
    b2 = 0.9
    w = jnp.ones(3)
    cases = {
        None: ((0, False), (9, False), (10, True), (11, False), (20, True)),
        1: ((0, False), (1, True), (2, True)),  # k = 1: every step but the first
    }
    for k, steps in cases.items():
        tx = optx.scale_by_sophia(b2=b2, estimator=optx.curvature.Hutchinson(), update_interval=k)
        state = tx.init(w)
        update = jax.jit(lambda s, tx=tx: tx.update(a * w, s, w, loss_fn=loss_fn)[1].hessian)
        for step, refreshed in steps:
            h = np.asarray(update(state._replace(count=jnp.asarray(step, jnp.int32))))
            want = (1 - b2) * np.asarray(a) if refreshed else np.zeros(3)
            np.testing.assert_allclose(h, want, rtol=1e-6, err_msg=f"k {k}, step {step}")


def test_sophia_win_rate_of_a_single_element_tree() -> None:
    """One element, unclipped (``|m| < γh``): the win rate is 1 (wins / size, size 1)."""
    w = jnp.asarray(1.0)
    tx = optx.scale_by_sophia(
        gamma=1.0, b2=0.0, estimator=optx.curvature.Hutchinson(), refresh_at_start=True
    )
    loss_fn = lambda p: p**2  # noqa: E731  (h = 2)
    _, state = tx.update(jnp.asarray(0.1), tx.init(w), w, loss_fn=loss_fn)
    assert float(state.win_rate) == 1.0
