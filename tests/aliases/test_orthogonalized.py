"""Muon and NorMuon: float64 references from the math, golden trajectories, bad input."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx

DATA = Path(__file__).parent.parent / "data"
KELLER = (3.4445, -4.7750, 2.0315)


# ----------------------------------------------------------------------------
# float64 NumPy references, written from the update rules (PyTorch (out, in)
# view: a Flax (in, out) matrix M is handled as M.T)
# ----------------------------------------------------------------------------


def ns5(g: np.ndarray) -> np.ndarray:
    x = g
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(5):
        A = x @ x.T
        x = KELLER[0] * x + (KELLER[1] * A + KELLER[2] * A @ A) @ x
    return x.T if tall else x


def muon_direction(u_mat: np.ndarray) -> np.ndarray:
    """O for one (fan_in, fan_out) matrix: NS5 and sqrt(max(1, out/in))."""
    fan_in, fan_out = u_mat.shape
    return ns5(u_mat) * math.sqrt(max(1.0, fan_out / fan_in))


def normuon_direction(u_mat: np.ndarray, v: np.ndarray, beta2: float):
    o = ns5(u_mat)  # (in, out); a "row" is a column here
    v = beta2 * v + (1 - beta2) * np.mean(o * o, axis=0, keepdims=True)
    oh = o / (np.sqrt(v) + 1e-10)
    oh = oh * np.linalg.norm(o) / (np.linalg.norm(oh) + 1e-10)
    fan_in, fan_out = u_mat.shape
    return oh * math.sqrt(max(1.0, fan_out / fan_in)), v


def reference_run(kind: str, w0: np.ndarray, grads, view, lr=0.02, beta=0.95, wd=0.01, beta2=0.95):
    """Several steps of Muon/NorMuon on one leaf; `view(x)` gives its (B, in, out) matrices."""
    w = w0.copy()
    m = np.zeros_like(w)
    v = None
    out = []
    for g in grads:
        m = beta * m + (1 - beta) * g
        u = (1 - beta) * g + beta * m  # Keller-style Nesterov, no bias correction
        dirs, vs = [], []
        for i, mat in enumerate(view(u)):
            if kind == "muon":
                dirs.append(muon_direction(mat))
            else:
                vi = np.zeros((1, mat.shape[1])) if v is None else v[i]
                d, vi = normuon_direction(mat, vi, beta2)
                dirs.append(d)
                vs.append(vi)
        v = vs or None
        w = w - lr * (np.stack(dirs).reshape(w.shape) + wd * w)
        out.append(w.copy())
    return out


VIEWS = {
    "dense": lambda x: x.reshape(1, *x.shape),
    "stacked": lambda x: x,
    "conv": lambda x: x.reshape(1, -1, x.shape[-1]),
}
SHAPES = {"dense": (6, 10), "stacked": (3, 8, 5), "conv": (3, 3, 2, 4)}
NAMES = {"dense": "mlp", "stacked": "mlp", "conv": "conv"}


@pytest.mark.parametrize("kind", ["muon", "normuon"])
@pytest.mark.parametrize("case", ["dense", "stacked", "conv"])
def test_matches_float64_reference(kind, case) -> None:
    rng = np.random.default_rng(0)
    shape = SHAPES[case]
    w0 = rng.normal(size=shape) * 0.3
    grads = [rng.normal(size=shape) for _ in range(4)]
    want = reference_run(kind, w0, grads, VIEWS[case])
    factory = optx.muon if kind == "muon" else optx.normuon
    name = NAMES[case]
    with jax.enable_x64(True):
        tx = factory(0.02, weight_decay=0.01)
        params = {name: {"kernel": jnp.asarray(w0)}}
        state = tx.init(params)
        for g, w in zip(grads, want):
            u, state = tx.update({name: {"kernel": jnp.asarray(g)}}, state, params)
            params = optax.apply_updates(params, u)
            np.testing.assert_allclose(np.asarray(params[name]["kernel"]), w, rtol=1e-9, atol=1e-12)


def _golden(case: str):
    meta = json.loads((DATA / f"{case}.json").read_text())
    arrays = np.load(DATA / f"{case}.npz")
    return meta, arrays


@pytest.mark.parametrize(
    "case,factory,kwargs,dtype",
    [
        ("muon__public_f32ns", optx.muon, {}, jnp.float32),
        ("normuon__public_f32ns", optx.normuon, {}, jnp.float32),
        ("muon__public_bf16ns", optx.muon, {"ns_dtype": "bfloat16"}, jnp.float32),
        ("normuon__public_bf16", optx.normuon, {"ns_dtype": "bfloat16"}, jnp.bfloat16),
    ],
)
def test_golden_trajectories(case, factory, kwargs, dtype) -> None:
    """The official implementations' trajectories (PyTorch (out, in) -> Flax (in, out))."""
    meta, z = _golden(case)
    names, hp = meta["param_order"], meta["hyperparameters"]
    extra = {"b2": hp["beta2"]} if "beta2" in hp else {}
    tx = factory(
        learning_rate=hp["lr"],
        b1=hp["momentum"],
        weight_decay=hp["weight_decay"],
        **extra,
        **kwargs,
    )
    params = {n: jnp.asarray(z[f"init/{n}"].T, dtype) for n in names}
    state = tx.init(params)
    update = jax.jit(tx.update)
    atol = meta["tolerance"]["params_after_atol"]
    tight = "f32ns" in case
    for t in range(meta["T"]):
        grads = {n: jnp.asarray(z[f"grads/{n}"][t].T, dtype) for n in names}
        u, state = update(grads, state, params)
        params = optax.apply_updates(params, u)
        for n in names:
            got = np.asarray(params[n], np.float32)
            want = z[f"params_after/{n}"][t].T
            np.testing.assert_allclose(got, want, rtol=0, atol=atol)
            if tight:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # the final momentum buffer matches the reference state too
    mu = state.inner_states["matrix"].inner_state[0].mu
    for n in names:
        np.testing.assert_allclose(
            np.asarray(mu[n], np.float32), z[f"state/{n}/momentum_buffer"].T, atol=10 * atol
        )


def test_moonlight_scaling_and_match_rms_variants() -> None:
    g = {"mlp": {"kernel": jax.random.normal(jax.random.key(0), (16, 64))}}
    params = jax.tree.map(jnp.zeros_like, g)
    tx = optx.muon(1.0, scaling="moonlight", nesterov=False, b1=0.0)
    u, _ = tx.update(g, tx.init(params), params)
    rms = float(jnp.sqrt(jnp.mean(u["mlp"]["kernel"] ** 2)))
    assert abs(rms - 0.2) < 0.03  # ~0.2 RMS: NS5 singular values are ~1 (not exactly)
    tx = optx.normuon(1.0, scaling="match_rms")
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(u["mlp"]["kernel"] ** 2)), 0.2, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,ref",
    [
        # drop-in defaults: 0.2 × lr, Keller's betas and eps, weight_decay reaches it
        ({"weight_decay": 0.1}, dict(learning_rate=0.004, b2=0.95, eps=1e-10, weight_decay=0.1)),
        # Keller's aux-Adam: 3e-4 at lr 0.02, betas (0.9, 0.95), eps 1e-10, no decay
        (
            {"weight_decay": 0.1, "preset": "official"},
            dict(learning_rate=3e-4, b2=0.95, eps=1e-10, weight_decay=0.0),
        ),
        # an explicit argument wins over the preset
        (
            {"preset": "official", "adam_b2": 0.99, "adam_weight_decay": 0.5},
            dict(learning_rate=3e-4, b2=0.99, eps=1e-10, weight_decay=0.5),
        ),
    ],
)
def test_fallback_defaults_and_official_preset(kwargs, ref) -> None:
    params = {"embed": {"embedding": jnp.ones((5, 4))}, "b": jnp.ones(4)}
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    for factory in (optx.muon, optx.normuon):
        ours = factory(0.02, **kwargs)
        want = optax.adamw(b1=0.9, **ref)
        u1, _ = ours.update(grads, ours.init(params), params)
        u2, _ = want.update(grads, want.init(params), params)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_schedules_drive_both_groups() -> None:
    sched = optax.linear_schedule(0.02, 0.0, 10)
    params = {"mlp": {"kernel": jnp.ones((4, 4))}, "b": jnp.ones(4)}
    tx = optx.muon(sched)
    s = tx.init(params)
    for _ in range(10):
        _, s = tx.update(params, s, params)
    u, _ = tx.update(params, s, params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))


@pytest.mark.parametrize("factory", [optx.muon, optx.normuon])
def test_bad_input(factory) -> None:
    with pytest.raises(ValueError, match="finite"):
        factory(float("nan"))
    with pytest.raises(TypeError, match="static Python int"):
        factory(0.02, ns_steps=2.5)
    with pytest.raises(ValueError, match="`ns_steps` must be a static Python int >= 1"):
        factory(0.02, ns_steps=0)
    with pytest.raises(ValueError, match=r"`ns_coeffs`.*preset"):
        factory(0.02, ns_coeffs="fast")
    with pytest.raises(ValueError, match="scaling"):
        factory(0.02, scaling="huge")
    with pytest.raises(ValueError, match=r"`b1` must be .* in \[0, 1\)"):
        factory(0.02, b1=1.5)
    with pytest.raises(ValueError, match="`preset`"):
        factory(0.02, preset="keller")
    bad_router = optx.Router(
        [optx.Rule(r".*", "matrix", optx.MatrixLayout((0,), (3,)), min_ndim=2)]
    )
    tx = factory(0.02, router=bad_router)
    with pytest.raises(ValueError, match="mlp/kernel"):
        tx.init({"mlp": {"kernel": jnp.ones((4, 4))}})
    tx = factory(0.02)
    params = {"mlp": {"kernel": jnp.ones((4, 4))}}
    state = tx.init(params)
    with pytest.raises(ValueError, match="same tree structure"):
        tx.update({"mlp": {"kernel": jnp.ones((4, 4))}, "extra": jnp.ones(2)}, state, params)
