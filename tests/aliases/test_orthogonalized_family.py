"""AuON, Hybrid-AuON, ROOT and Lipschitz-constrained Muon against float64 references.

The references below are written from the papers' update rules (and the
official codes' quirks where optx pins them), in NumPy float64, independently
of optx. Each optimizer runs several steps on a 2-D kernel, a stacked
``(L, in, out)`` kernel and a conv kernel ``(kh, kw, in, out)`` seen through
their layouts; golden trajectories of the official AuON repository are checked
in float32.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optx
from tests.matrix_views import matrices as to_mats

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
KELLER = (3.4445, -4.7750, 2.0315)
KINDS = {"hidden": (6, 10), "stack": (3, 10, 6), "conv": (3, 3, 2, 5)}
STEPS = 4


# ----------------------------------------------------------------------------
# float64 NumPy references
# ----------------------------------------------------------------------------


def from_mats(m: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    return m.reshape(shape)


def ns_np(g: np.ndarray, table: list[tuple[float, float, float]]) -> np.ndarray:
    """Newton–Schulz quintic with X/(‖X‖_F + 1e-7), transposing tall matrices."""
    x = g.copy()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for a, b, c in table:
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def cosh_brake_np(x: np.ndarray, z: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    return x / (np.sqrt(np.mean(np.cosh(z) ** 2)) + eps)


def quantile_np(v: np.ndarray, q: float) -> float:
    """torch.quantile's linear interpolation between order statistics."""
    s = np.sort(v.ravel())
    h = q * (s.size - 1)
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    return float(s[lo] + (h - lo) * (s[hi] - s[lo]))


def soft_cap_alpha_np(w_max: float, delta: float, decay: float) -> float:
    """Smallest non-negative real root of the paper's quartic (np.roots)."""
    k = w_max * (1 - decay) + delta
    roots = np.roots([-(k**9), 3 * k**7, -3 * k**5, 0.0, k - w_max])
    real = roots[(np.abs(roots.imag) < 1e-9) & (roots.real >= 0)].real
    return float(real.min())


def run_reference(
    direction: Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray],
    params: dict[str, np.ndarray],
    grads: list[dict[str, np.ndarray]],
    *,
    post: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Runs ``W ← post(W − direction(G, W, state))`` per matrix of each leaf."""
    out = {}
    for kind, w0 in params.items():
        mats = to_mats(w0.astype(np.float64), kind).copy()
        states = [{} for _ in range(mats.shape[0])]
        for g in grads:
            gm = to_mats(g[kind].astype(np.float64), kind)
            for i in range(mats.shape[0]):
                mats[i] = mats[i] - direction(gm[i], mats[i], states[i])
                if post is not None:
                    mats[i] = post(mats[i])
        out[kind] = from_mats(mats, kind, w0.shape)
    return out


def ema_nesterov(g: np.ndarray, st: dict[str, Any], beta: float) -> np.ndarray:
    m = st.get("m", np.zeros_like(g))
    m = beta * m + (1 - beta) * g
    st["m"] = m
    return (1 - beta) * g + beta * m


def sum_nesterov(g: np.ndarray, st: dict[str, Any], mu: float) -> np.ndarray:
    m = st.get("m", np.zeros_like(g))
    m = mu * m + g
    st["m"] = m
    return g + mu * m


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


def make_problem(
    seed: int = 0, scale: float = 0.3
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    r = np.random.default_rng(seed)
    params = {k: scale * r.normal(size=s) for k, s in KINDS.items()}
    drift = {k: r.normal(size=s) for k, s in KINDS.items()}
    grads = [
        {k: (1 + 0.2 * t) * drift[k] + r.normal(size=s) for k, s in KINDS.items()}
        for t in range(STEPS)
    ]
    return params, grads


def tree_of(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: {"kernel": v} for k, v in flat.items()}


def run_optx(
    tx: optax.GradientTransformation,
    params: dict[str, np.ndarray],
    grads: list[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    p = tree_of({k: jnp.asarray(v) for k, v in params.items()})
    state = tx.init(p)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for g in grads:
        u, state = step(tree_of({k: jnp.asarray(v) for k, v in g.items()}), state, p)
        p = optax.apply_updates(p, u)
    return {k: np.asarray(v["kernel"]) for k, v in p.items()}


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float) -> None:
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=atol, err_msg=k)


def fan(kind: str) -> tuple[int, int]:
    shape = KINDS[kind]
    m = to_mats(np.zeros(shape), kind)
    return m.shape[1], m.shape[2]


# ----------------------------------------------------------------------------
# AuON / Hybrid-AuON
# ----------------------------------------------------------------------------


def auon_paper_direction(lr: float, beta: float, wd: float, ns_steps: int | None = None):
    def direction(g: np.ndarray, w: np.ndarray, st: dict[str, Any]) -> np.ndarray:
        u = ema_nesterov(g, st, beta)
        if ns_steps is None:
            x = u / (np.linalg.norm(u) + 1e-7)
        else:
            x = ns_np(u, [KELLER] * ns_steps)
        o = cosh_brake_np(x, x)
        fan_in, fan_out = w.shape
        return lr * (np.sqrt(max(1.0, fan_out / fan_in)) * o + wd * w)

    return direction


def auon_repo_direction(lr: float, beta: float, wd: float, gamma: float, ns_steps: int = 0):
    def direction(g: np.ndarray, w: np.ndarray, st: dict[str, Any]) -> np.ndarray:
        u = ema_nesterov(g, st, beta)
        if ns_steps:
            u = ns_np(u, [KELLER] * ns_steps)
        z = gamma * u / (np.linalg.norm(u) + 1e-7)
        return lr * (cosh_brake_np(u, z) + wd * w)

    return direction


def test_auon_paper_form_matches_float64_reference() -> None:
    params, grads = make_problem(0)
    with jax.enable_x64(True):
        got = run_optx(optx.auon(0.05, b1=0.9, weight_decay=0.01), params, grads)
    assert_close(got, run_reference(auon_paper_direction(0.05, 0.9, 0.01), params, grads), 1e-12)


def test_auon_repo_form_matches_float64_reference() -> None:
    params, grads = make_problem(1)
    with jax.enable_x64(True):
        got = run_optx(optx.auon(0.2, b1=0.95, weight_decay=0.01, form="repo"), params, grads)
    want = run_reference(auon_repo_direction(0.2, 0.95, 0.01, 1.5), params, grads)
    assert_close(got, want, 1e-12)


def test_hybrid_auon_paper_form_matches_float64_reference() -> None:
    params, grads = make_problem(2)
    with jax.enable_x64(True):
        got = run_optx(optx.hybrid_auon(0.05, b1=0.95, weight_decay=0.0), params, grads)
    want = run_reference(auon_paper_direction(0.05, 0.95, 0.0, ns_steps=1), params, grads)
    assert_close(got, want, 1e-10)


def test_hybrid_auon_repo_form_matches_float64_reference() -> None:
    params, grads = make_problem(3)
    with jax.enable_x64(True):
        got = run_optx(optx.hybrid_auon(0.1, b1=0.95, form="repo", gamma=1.2), params, grads)
    want = run_reference(auon_repo_direction(0.1, 0.95, 0.0, 1.2, ns_steps=5), params, grads)
    assert_close(got, want, 1e-10)


def test_auon_has_no_matrix_products() -> None:
    """Linear time: AuON's jaxpr contains no dot_general (Hybrid's does)."""
    p = {"hidden": {"kernel": jnp.ones((16, 32))}}
    for tx, expect_dot in ((optx.auon(0.05), False), (optx.hybrid_auon(0.05), True)):
        jaxpr = jax.make_jaxpr(lambda g, s, tx=tx: tx.update(g, s, p))(p, tx.init(p))
        assert ("dot_general" in str(jaxpr)) == expect_dot


def load_golden(case: str) -> tuple[dict[str, Any], Any]:
    meta = json.loads((DATA / f"{case}.json").read_text())
    return meta, np.load(DATA / f"{case}.npz")


@pytest.mark.parametrize(
    ("case", "factory"),
    [
        ("auon__public", lambda: optx.auon(0.24, b1=0.95, form="repo")),
        ("hybrid_auon__public", lambda: optx.hybrid_auon(0.24, b1=0.95, form="repo")),
    ],
)
def test_repo_form_matches_golden_trajectory(case: str, factory: Callable[[], Any]) -> None:
    """The official repository (PyTorch (out, in) weights: transposed to Flax)."""
    meta, z = load_golden(case)
    atol = meta["tolerance"]["params_after_atol"]
    assert meta["hyperparameters"]["gamma"] == 1.5
    # Matrices through the alias (Flax (in, out) = PyTorch weight transposed).
    tx = factory()
    p = {n: {"kernel": jnp.asarray(z[f"init/{n}"].T)} for n in ("w1", "w2")}
    state = tx.init(p)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    # The 1-D bias gets the repository's brake only: the primitive on a (40, 1) view.
    brake = optax.chain(
        optx.scale_by_momentum(0.95),
        optx.scale_by_cosh_rms(1.5, normalize_argument=True, layout=optx.MatrixLayout()),
        optax.scale_by_learning_rate(0.24),
    )
    b = {"b": jnp.asarray(z["init/b"])[:, None]}
    b_state = brake.init(b)
    for t in range(meta["T"]):
        g = {n: {"kernel": jnp.asarray(z[f"grads/{n}"][t].T)} for n in ("w1", "w2")}
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
        ub, b_state = brake.update({"b": jnp.asarray(z["grads/b"][t])[:, None]}, b_state)
        b = optax.apply_updates(b, ub)
        for n in ("w1", "w2"):
            np.testing.assert_allclose(
                np.asarray(p[n]["kernel"]).T, z[f"params_after/{n}"][t], rtol=0, atol=atol
            )
        np.testing.assert_allclose(np.asarray(b["b"])[:, 0], z["params_after/b"][t], atol=atol)


def test_auon_bad_arguments() -> None:
    with pytest.raises(ValueError, match="form"):
        optx.auon(0.05, form="v2")
    with pytest.raises(ValueError, match="scaling"):
        optx.auon(0.05, scaling="spectral")
    with pytest.raises(ValueError, match="ns_steps"):
        optx.hybrid_auon(0.05, ns_steps=0)
    with pytest.raises(TypeError, match="learning_rate"):
        optx.auon("fast")


# ----------------------------------------------------------------------------
# ROOT
# ----------------------------------------------------------------------------

ROOT_TABLE = {(6, 10): (3.3, -4.4, 1.9), (5, 18): (3.1, -4.0, 1.8)}


def root_direction(lr: float, mu: float, wd: float, q: float = 0.9):
    def direction(g: np.ndarray, w: np.ndarray, st: dict[str, Any]) -> np.ndarray:
        u = sum_nesterov(g, st, mu)
        eps = quantile_np(np.abs(u), q) + 1e-9
        b = u - np.sign(u) * np.maximum(np.abs(u) - eps, 0.0)
        key = (min(w.shape), max(w.shape))
        o = ns_np(b, [ROOT_TABLE.get(key, KELLER)] * 5)
        return lr * (0.2 * np.sqrt(max(w.shape)) * o + wd * w)

    return direction


def test_root_matches_float64_reference() -> None:
    params, grads = make_problem(4)
    table = optx.linalg.ShapeCoefficientTable(ROOT_TABLE, name="test")
    with jax.enable_x64(True):
        got = run_optx(optx.root(0.01, table, b1=0.9, weight_decay=0.1), params, grads)
    assert_close(got, run_reference(root_direction(0.01, 0.9, 0.1), params, grads), 1e-10)


def test_root_default_table_and_fallback_adamw_decay() -> None:
    tx = optx.root(1e-3)
    p = {"hidden": {"kernel": jnp.ones((4, 4))}, "bias": jnp.ones(4)}
    g = jax.tree.map(jnp.zeros_like, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (4, 4) is not in ROOT's table
        u, _ = tx.update(g, tx.init(p), p)
    # The fallback AdamW decays with the same λ = 0.1 and lr as the matrices.
    np.testing.assert_allclose(u["bias"], -1e-3 * 0.1 * np.ones(4), rtol=1e-6)
    table = optx.linalg.ROOT_COEFFICIENTS
    assert table(8192, 2048).table == ((2.9794, -3.6674, 1.6207),)
    assert table(2048, 2048).table == ((3.4916, -4.8224, 2.1095),)


# ----------------------------------------------------------------------------
# Lipschitz-constrained Muon
# ----------------------------------------------------------------------------


def lipschitz_direction(lr: float, beta: float, wd: float):
    def direction(g: np.ndarray, w: np.ndarray, st: dict[str, Any]) -> np.ndarray:
        u = ema_nesterov(g, st, beta)
        fan_in, fan_out = w.shape
        o = ns_np(u, [KELLER] * 5) * np.sqrt(fan_out / fan_in)
        return lr * (o + wd * w)

    return direction


def soft_cap_np(w: np.ndarray, w_max: float, delta: float, decay: float) -> np.ndarray:
    fan_in, fan_out = w.shape
    s = np.sqrt(fan_out / fan_in)
    alpha = soft_cap_alpha_np(w_max, delta, decay)
    u, sig, vt = np.linalg.svd(w / s, full_matrices=False)
    y = sig - alpha * sig**3
    return s * (u * (y + alpha * y**3)) @ vt


def test_lipschitz_muon_soft_cap_matches_float64_reference() -> None:
    params, grads = make_problem(5, scale=0.05)  # start inside the ball
    lr, wd, w_max = 0.05, 0.1, 0.6
    overshoot = optx.linalg.composed_polynomial_max("keller", 5)
    assert abs(overshoot - 1.2024) < 1e-3
    with jax.enable_x64(True):
        tx = optx.lipschitz_muon(lr, b1=0.9, weight_decay=wd, w_max=w_max, preset=None)
        got = run_optx(tx, params, grads)
    want = run_reference(
        lipschitz_direction(lr, 0.9, wd),
        params,
        grads,
        post=lambda w: soft_cap_np(w, w_max, lr * overshoot, lr * wd),
    )
    assert_close(got, want, 1e-9)


@pytest.mark.parametrize(("projection", "atol"), [("svd_cap", 1e-10), ("normalize", 1e-6)])
def test_lipschitz_muon_other_projections_match_reference(projection: str, atol: float) -> None:
    """(normalize: up to the convergence of 60 power iterations per step.)"""
    params, grads = make_problem(6)
    lr, w_max = 0.2, 0.5

    def project(w: np.ndarray) -> np.ndarray:
        fan_in, fan_out = w.shape
        s = np.sqrt(fan_out / fan_in)
        u, sig, vt = np.linalg.svd(w / s, full_matrices=False)
        if projection == "svd_cap":
            return s * (u * np.minimum(sig, w_max)) @ vt
        return w / max(1.0, sig[0] / w_max)

    with jax.enable_x64(True):
        tx = optx.lipschitz_muon(
            lr, b1=0.9, projection=projection, w_max=w_max, power_iterations=60, preset=None
        )
        got = run_optx(tx, params, grads)
    want = run_reference(lipschitz_direction(lr, 0.9, 0.0), params, grads, post=project)
    assert_close(got, want, atol)


def test_lipschitz_muon_bad_arguments() -> None:
    with pytest.raises(ValueError, match="projection"):
        optx.lipschitz_muon(0.02, projection="clip")
    with pytest.raises(ValueError, match="geometry"):
        optx.lipschitz_muon(0.02, geometry="linf")
    with pytest.raises(ValueError, match="max_update_norm"):
        optx.lipschitz_muon(0.02, ns_coeffs=optx.linalg.ROOT_COEFFICIENTS)
    with pytest.raises(ValueError, match="w_max"):
        optx.lipschitz_muon(0.02, w_max=0.0)
    tx = optx.lipschitz_muon(0.02)
    p = {"hidden": {"kernel": jnp.ones((4, 4))}}
    with pytest.raises(ValueError, match="params"):
        tx.update(p, tx.init(p))


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.inp = nnx.Linear(6, 16, rngs=rngs)
        self.hidden1 = nnx.Linear(16, 16, rngs=rngs)
        self.hidden2 = nnx.Linear(16, 24, rngs=rngs)
        self.head = nnx.Linear(24, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.inp(x))
        x = jax.nn.relu(self.hidden1(x))
        return self.head(jax.nn.relu(self.hidden2(x)))


def train_mlp(projection: str, w_max: float, steps: int = 25) -> float:
    """Trains the MLP on a regression that wants large weights; returns the
    largest RMS→RMS norm of a hidden (Muon-routed) kernel seen after any step."""
    model = MLP(nnx.Rngs(0))
    hidden = ("inp/kernel", "hidden1/kernel", "hidden2/kernel")
    # Start inside the ball (a soft cap keeps a feasible start feasible).
    params = nnx.state(model, nnx.Param)
    cap = optx.constraints.spectral_svd_cap(w_max)
    u, _ = cap.update(jax.tree.map(jnp.zeros_like, params), cap.init(params), params)
    nnx.update(model, optax.apply_updates(params, u))
    tx = optx.lipschitz_muon(0.1, projection=projection, w_max=w_max, adam_lr_ratio=0.1)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(64, 6)), jnp.float32)
    y = 20.0 * jnp.asarray(r.normal(size=(64, 3)), jnp.float32)

    @nnx.jit
    def step(model: MLP, optimizer: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    worst = 0.0
    for _ in range(steps):
        step(model, optimizer)
        norms = optx.constraints.spectral_norms(model, geometry="rms")
        worst = max(worst, *(float(norms[h]) for h in hidden))
    return worst


@pytest.mark.parametrize("projection", ["soft_cap", "svd_cap"])
def test_mlp_trained_with_lipschitz_muon_stays_in_the_ball(projection: str) -> None:
    w_max = 1.0
    assert train_mlp(projection, w_max) <= w_max * (1 + 1e-4)


def test_mlp_without_projection_leaves_the_ball() -> None:
    """The same run without a projection exceeds w_max: the cap is what holds it."""
    assert train_mlp("none", 1.0) > 1.1


def test_lipschitz_example_reports_a_bound_within_the_guarantee() -> None:
    pytest.importorskip("sklearn")
    from examples import lipschitz_mlp

    report = lipschitz_mlp.main(["--steps", "3", "--batch", "32", "--w-max", "1.5"])
    constrained = next(v for k, v in report.items() if k.startswith("lipschitz_muon"))
    assert all(float(n) <= 1.5 * (1 + 1e-4) for n in constrained["rms_norms"].values())
    assert constrained["bound"] <= 1.5**3 * np.sqrt(10 / 64) * (1 + 1e-3)
