"""The element-wise aliases: golden trajectories of the official codes, optax equivalences,
and float64 references for the variants the golden cases do not cover.

Golden cases (``tests/data/*.json|npz``, copied from the shared golden set) store
PyTorch ``(out, in)`` weights: kernels are transposed to Flax ``(in, out)`` on
the way in and back on the way out.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx

DATA = pathlib.Path(__file__).parent.parent / "data"


def _flax(x: np.ndarray) -> np.ndarray:
    return x.T if x.ndim == 2 else x


def _load(case: str) -> tuple[dict, dict]:
    meta = json.loads((DATA / f"{case}.json").read_text())
    z = np.load(DATA / f"{case}.npz")
    return meta, dict(z)


def run_golden(case: str, tx: optax.GradientTransformation) -> tuple[float, list, object]:
    """Runs ``tx`` on a golden case; returns (max |error| / atol, per-step states, final state)."""
    meta, z = _load(case)
    names = meta["param_order"]
    params = {n: jnp.asarray(_flax(z[f"init/{n}"])) for n in names}
    state = tx.init(params)
    update = jax.jit(tx.update)
    worst, states = 0.0, []
    for t in range(meta["T"]):
        grads = {n: jnp.asarray(_flax(z[f"grads/{n}"][t])) for n in names}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        states.append(state)
        for n in names:
            expected = _flax(z[f"params_after/{n}"][t])
            err = np.max(np.abs(np.asarray(params[n], np.float64) - expected))
            scale = np.max(np.abs(expected))
            worst = max(worst, err / (1e-5 * scale))  # acceptance: rtol 1e-5 of the weights
            np.testing.assert_allclose(
                np.asarray(params[n]),
                expected,
                rtol=0,
                atol=meta["tolerance"]["params_after_atol"],
                err_msg=f"{case}: {n} after step {t + 1}",
            )
    return worst, states, state


def _hp(case: str) -> dict:
    return _load(case)[0]["hyperparameters"]


# ----------------------------------------------------------------------------
# Golden trajectories (within the sidecar atol, i.e. ~1e-6 absolute on O(1) weights)
# ----------------------------------------------------------------------------


def test_adamp_golden_and_projection_branches() -> None:
    h = _hp("adamp__public")
    tx = optx.adamp(
        h["lr"], *h["betas"], h["eps"], weight_decay=h["weight_decay"], delta=h["delta"]
    )
    _, states, _ = run_golden("adamp__public", tx)
    _, z = _load("adamp__public")
    for n in ("w1", "w2"):
        got = [int(s[0].branch[n][0, 0]) for s in states]
        np.testing.assert_array_equal(got, z[f"aux/projection_branch/{n}"])
    # w1 takes the channel view every step, w2 once the layer view: both branches run.
    assert set(z["aux/projection_branch/w2"].tolist()) == {0, 2}


def test_sgdp_golden_and_projection_branches() -> None:
    h = _hp("sgdp__public")
    tx = optx.sgdp(h["lr"], h["momentum"], h["nesterov"], weight_decay=h["weight_decay"])
    _, states, final = run_golden("sgdp__public", tx)
    _, z = _load("sgdp__public")
    for n in ("w1", "w2"):
        got = [int(s[0].branch[n][0, 0]) for s in states]
        np.testing.assert_array_equal(got, z[f"aux/projection_branch/{n}"])
    np.testing.assert_allclose(
        final[0].inner_state.mu["w1"], z["state/w1/momentum"].T, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("rectify", [False, True])
def test_adabelief_golden(rectify: bool) -> None:
    case = f"adabelief__public_rectify_{str(rectify).lower()}"
    h = _hp(case)
    tx = optx.adabelief(
        h["lr"], *h["betas"], h["eps"], weight_decay=h["weight_decay"], rectify=rectify
    )
    _, _, final = run_golden(case, tx)
    _, z = _load(case)
    np.testing.assert_allclose(final[0].nu["w1"], z["state/w1/exp_avg_var"].T, rtol=1e-5)


def test_lion_golden() -> None:
    h = _hp("lion__public")
    _, _, final = run_golden(
        "lion__public", optx.lion(h["lr"], *h["betas"], weight_decay=h["weight_decay"])
    )
    _, z = _load("lion__public")
    np.testing.assert_allclose(final[0].mu["w2"], z["state/w2/exp_avg"].T, rtol=1e-5, atol=1e-8)


def test_exadam_repo_rule_golden() -> None:
    """The golden reference is the repo HEAD (arXiv v2): ``dynamic_step_size=False``."""
    h = _hp("exadam__public")
    tx = optx.exadam(
        h["lr"], *h["betas"], h["eps"], weight_decay=h["weight_decay"], dynamic_step_size=False
    )
    run_golden("exadam__public", tx)


def test_exadam_default_is_paper_v1_rule() -> None:
    """The default (paper v1) differs from the HEAD golden exactly by ln(√2·√(t+1)) per step."""
    meta, z = _load("exadam__public")
    h = meta["hyperparameters"]
    w = z["init/b"].astype(np.float64)
    tx = optx.exadam(h["lr"], *h["betas"], h["eps"])
    params = {"b": jnp.asarray(w, jnp.float32)}
    state = tx.init(params)
    w_head = w.copy()
    for t in range(meta["T"]):
        g = z["grads/b"][t]
        u, state = tx.update({"b": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, u)
        head_step = z["params_after/b"][t] - w_head  # the v2 step from the same point
        w_head = z["params_after/b"][t]
        factor = math.log(math.sqrt(2.0) * math.sqrt(t + 2))
        np.testing.assert_allclose(np.asarray(u["b"]), factor * head_step, rtol=2e-4, atol=1e-9)
        # Keep both on the golden trajectory: v1's step from the golden point.
        params = {"b": jnp.asarray(w_head, jnp.float32)}


def test_sgd_sai_golden() -> None:
    h = _hp("sgd_sai__public")
    tx = optx.sgd_sai(h["lr"], h["momentum"], h["eps"], weight_decay=h["weight_decay"])
    _, _, final = run_golden("sgd_sai__public", tx)
    _, z = _load("sgd_sai__public")
    for n in ("w1", "w2", "b"):
        np.testing.assert_allclose(
            np.asarray(final[0].gsnr[n]).ravel(), z[f"state/{n}/gsnr"], rtol=1e-5
        )


def test_golden_acceptance_rtol() -> None:
    """The issue's acceptance bar: every golden case within rtol 1e-5 of the weights."""
    cases = {
        "adamp__public": optx.adamp(1e-3, weight_decay=1e-2),
        "sgdp__public": optx.sgdp(0.1, 0.9, True, weight_decay=1e-5),
        "adabelief__public_rectify_false": optx.adabelief(1e-3, rectify=False),
        "adabelief__public_rectify_true": optx.adabelief(1e-3),
        "lion__public": optx.lion(1e-4),
        "exadam__public": optx.exadam(1e-3, dynamic_step_size=False),
        "sgd_sai__public": optx.sgd_sai(1e-2),
    }
    for case, tx in cases.items():
        worst, _, _ = run_golden(case, tx)
        assert worst < 1.0, f"{case}: max error is {worst:.3g} x (1e-5 · max|w|)"


# ----------------------------------------------------------------------------
# Where optx equals optax, and where it does not
# ----------------------------------------------------------------------------


def _trajectory(tx: optax.GradientTransformation, steps: int = 6, seed: int = 0) -> list:
    r = np.random.default_rng(seed)
    params = {"w": jnp.asarray(r.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros(3)}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        g = jax.tree.map(lambda p: jnp.asarray(r.normal(size=p.shape), jnp.float32), params)
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(params)
    return out


def _assert_same(a: list, b: list, rtol: float = 1e-5) -> None:
    for pa, pb in zip(a, b):
        for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7)


def test_adabelief_equals_optax_without_rectification() -> None:
    _assert_same(
        _trajectory(optx.adabelief(3e-3, rectify=False)), _trajectory(optax.adabelief(3e-3))
    )
    # With the official default (rectified) they differ: the first steps are SGD steps.
    a = _trajectory(optx.adabelief(3e-3), steps=1)[0]["w"]
    b = _trajectory(optax.adabelief(3e-3), steps=1)[0]["w"]
    assert not np.allclose(a, b, rtol=1e-3)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_equals_optax_lion(wd: float) -> None:
    _assert_same(
        _trajectory(optx.lion(1e-3, weight_decay=wd)),
        _trajectory(optax.lion(1e-3, weight_decay=wd)),
    )


@pytest.mark.parametrize(
    ("kappa", "mode", "delta"), [("log_cosh", "smooth", 0.5), ("huber", "refined", 1.0)]
)
def test_lion_kappa_members_optax_has(kappa: str, mode: str, delta: float) -> None:
    optax_tx = optax.chain(
        optax.scale_by_lion(mode=mode, smooth_beta=1.0 / delta), optax.scale_by_learning_rate(1e-2)
    )
    _assert_same(
        _trajectory(optx.lion_kappa(1e-2, kappa=kappa, delta=delta)), _trajectory(optax_tx)
    )


def test_lion_returns_gradient_dtype_where_optax_does_not() -> None:
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    g = {"w": jnp.full((3, 2), 0.5, jnp.bfloat16)}
    u, _ = optx.lion(1e-3, mu_dtype=jnp.float32).update(
        g, optx.lion(1e-3, mu_dtype=jnp.float32).init(params), params
    )
    assert u["w"].dtype == jnp.bfloat16
    ox = optax.lion(1e-3, mu_dtype=jnp.float32)
    u_optax, _ = ox.update(g, ox.init(params), params)
    assert u_optax["w"].dtype == jnp.float32


# ----------------------------------------------------------------------------
# Variants the golden cases do not cover (float64 references)
# ----------------------------------------------------------------------------


def _steps(tx, w0: np.ndarray, grads: list[np.ndarray], key: str = "hidden") -> list[np.ndarray]:
    params = {key: {"kernel": jnp.asarray(w0, jnp.float32)}}
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update({key: {"kernel": jnp.asarray(g, jnp.float32)}}, state, params)
        params = optax.apply_updates(params, u)
        out.append(np.asarray(params[key]["kernel"], np.float64))
    return out


def _scale_invariant_grads(w: np.ndarray, steps: int, seed: int) -> list[np.ndarray]:
    """Gradients orthogonal to each output column of a Flax kernel (channel projection)."""
    r = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        g = r.normal(size=w.shape)
        g -= np.sum(g * w, axis=0) / np.sum(w * w, axis=0) * w
        out.append(g)
    return out


def _project_columns(w: np.ndarray, d: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    w_hat = w / (np.linalg.norm(w, axis=0) + eps)
    return d - w_hat * np.sum(w_hat * d, axis=0)


def test_sgdp_without_nesterov_projects_the_stored_buffer() -> None:
    """Official SGDP, nesterov=False: the projection acts in place on the momentum buffer.

    Each gradient is orthogonal to the *current* weights (a scale-invariant
    layer), but the buffer holds gradients orthogonal to older weights: its
    projection changes it, and that carries into later steps.
    """
    r = np.random.default_rng(0)
    w0 = r.normal(size=(6, 4))
    lr, mom, wd = 0.1, 0.9, 1e-2
    txs = {
        True: optx.sgdp(lr, mom, weight_decay=wd),
        False: optx.sgdp(lr, mom, weight_decay=wd, project_momentum_buffer=False),
    }
    params = {k: {"hidden": {"kernel": jnp.asarray(w0, jnp.float32)}} for k in txs}
    states = {k: txs[k].init(params[k]) for k in txs}
    w, buf = w0.copy(), np.zeros_like(w0)
    for step in range(5):
        g = r.normal(size=w.shape)
        g -= np.sum(g * w, axis=0) / np.sum(w * w, axis=0) * w  # ⟂ each output column
        for k, tx in txs.items():
            u, states[k] = tx.update(
                {"hidden": {"kernel": jnp.asarray(g, jnp.float32)}}, states[k], params[k]
            )
            params[k] = optax.apply_updates(params[k], u)
            assert int(states[k][0].branch["hidden"]["kernel"][0, 0]) == 1
        buf = mom * buf + g
        buf = _project_columns(w, buf)  # d_p IS buf: projected in place
        w = w * (1 - lr * wd * 0.1 / (1 - mom)) - lr * buf
        got = np.asarray(params[True]["hidden"]["kernel"])
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        np.testing.assert_allclose(
            states[True][0].inner_state.mu["hidden"]["kernel"], buf, atol=1e-5
        )
    clean = np.asarray(params[False]["hidden"]["kernel"])
    assert np.max(np.abs(clean - w)) > 1e-3


def test_adamp_nesterov_matches_reference() -> None:
    r = np.random.default_rng(2)
    w0 = r.normal(size=(6, 4))
    grads = _scale_invariant_grads(w0, 4, seed=3)
    lr, wd, b1, b2, eps = 1e-2, 1e-2, 0.9, 0.999, 1e-8
    got = _steps(optx.adamp(lr, weight_decay=wd, nesterov=True), w0, grads)
    w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t, (g, a) in enumerate(zip(grads, got), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
        perturb = (b1 * m + (1 - b1) * g) / denom
        cos = np.abs(np.sum(g * w, axis=0)) / (
            np.linalg.norm(g, axis=0) * np.linalg.norm(w, axis=0)
        )
        ratio = 1.0
        if cos.max() < 0.1 / math.sqrt(w.shape[0]):
            perturb, ratio = _project_columns(w, perturb), 0.1
        w = w * (1 - lr * wd * ratio) - lr / (1 - b1**t) * perturb
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["decoupled", "fixed", "coupled"])
def test_adabelief_weight_decay_modes(mode: str) -> None:
    r = np.random.default_rng(4)
    w0 = r.normal(size=(5, 3))
    grads = [r.normal(size=w0.shape) for _ in range(3)]
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-16
    kw = {"weight_decouple": mode != "coupled", "fixed_decay": mode == "fixed"}
    got = _steps(optx.adabelief(lr, weight_decay=wd, rectify=False, **kw), w0, grads)
    w, m, s = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    for t, (g, a) in enumerate(zip(grads, got), start=1):
        if mode == "decoupled":
            w_dec = w * (1 - lr * wd)
        elif mode == "fixed":
            w_dec = w * (1 - wd)
        else:
            w_dec, g = w, g + wd * w
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        w = w_dec - lr / (1 - b1**t) * m / (np.sqrt(s) / math.sqrt(1 - b2**t) + eps)
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)


def test_exadam_and_sgd_sai_decay_use_the_learning_rate() -> None:
    """Both decay as w ← w(1 − ηλ) with the pre-step weights (EXAdam: η, not α_t·η)."""
    w0 = np.full((3, 2), 2.0)
    zeros = [np.zeros((3, 2))] * 3
    for tx in (optx.exadam(0.1, weight_decay=0.5), optx.sgd_sai(0.1, weight_decay=0.5)):
        got = _steps(tx, w0, zeros)
        np.testing.assert_allclose(got[-1], 2.0 * (1 - 0.05) ** 3, rtol=1e-6)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="`learning_rate`"):
        optx.adamp(None)
    with pytest.raises(TypeError):
        optx.lion("fast")
    with pytest.raises(ValueError):
        optx.lion_kappa(1e-4, kappa="l0")
    with pytest.raises(ValueError):
        optx.sgdp(0.1, momentum=1.0)
    with pytest.raises(ValueError):
        optx.sgd_sai(1e-2, scale_rule="max")
    with pytest.raises(ValueError):
        optx.adabelief(1e-3, b2=1.0)
    with pytest.raises(ValueError):
        optx.exadam(1e-3, eps=-1.0)
    with pytest.raises(TypeError):
        optx.agvm_sgd(0.1, update_interval=0.5)
    with pytest.raises(TypeError):
        optx.adamp(1e-3, router="default")


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamw_equals_optax_adamw_with_non_default_hyperparameters(nesterov: bool) -> None:
    """Distinct, non-default β₁, β₂, ε, ε_root and decay, so a swapped or dropped
    hyper-parameter shows (varying gradients: with constant ones Adam's step is β-free)."""
    hp = {"b1": 0.8, "b2": 0.95, "eps": 1e-3, "eps_root": 1e-4, "weight_decay": 0.1}
    _assert_same(
        _trajectory(optx.adamw(3e-3, nesterov=nesterov, **hp)),
        _trajectory(optax.adamw(3e-3, nesterov=nesterov, **hp)),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda wd: optx.sgdp(0.1, 0.9, weight_decay=wd),
        lambda wd: optx.adabelief(3e-3, weight_decay=wd, fixed_decay=True),
    ],
    ids=["sgdp", "adabelief_fixed_decay"],
)
def test_weight_decay_schedule_equals_the_constant(
    make: Callable[[Any], optax.GradientTransformation],
) -> None:
    """A constant schedule ``λ(t) = λ`` gives the numbers of the float ``λ`` (the
    aliases rescale a schedule the way they rescale a float)."""
    _assert_same(_trajectory(make(lambda count: 0.05)), _trajectory(make(0.05)), rtol=1e-6)
