"""Tests of the adapter optimizers (optx/_src/aliases/adapters.py, optx/_src/adapters.py).

* LoRA-Pro: golden trajectories of the official ``lorapro_full_adjustment``
  (``tests/data/lora_pro__official_{f64,f32}``, generated from mrflogs/LoRA-Pro
  with the script in the sidecar; PyTorch layout ``A (r, in)``, ``B (out, r)``,
  transposed here), and a float64 NumPy reference of the paper's equations
  (standard bias correction, first-step special case, any scale) on 2-D and
  stacked adapters.
* SoRA: golden trajectory of the official ``SparseAdamW``
  (``tests/data/sora__official``) and its scheduler values; a float64
  reference of the gate step in both threshold modes and of the HF AdamW on
  the other leaves.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import optx
from optx._src import adapters

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"

pytestmark = pytest.mark.xdist_group("adapters")


def _golden(case: str) -> tuple[dict[str, Any], Any]:
    return json.loads((DATA / f"{case}.json").read_text()), np.load(DATA / f"{case}.npz")


# ----------------------------------------------------------------------------
# LoRA-Pro
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "atol"), [("f64", 1e-12), ("f32", 5e-4)])
def test_lora_pro_matches_official_golden(tag: str, atol: float) -> None:
    """Official quirks (t+1 bias correction, bf16 second moment, s = 2).

    Measured max |Δparam| over 8 steps (parameters ~0.5, steps up to ~0.08):
    f64 2.4e-13; f32 1.2e-5 with XLA's default flags and 1.4e-4 under this
    suite's ``--xla_backend_optimization_level=0``. The official second moment
    is accumulated from bf16-rounded gradients, so a 1-ulp f32 difference can
    flip a bf16 rounding (2⁻⁸ relative on that entry of g²); without that
    quirk (``variant='paper'``) optx f32 stays 1.5e-6 from f64.
    """
    meta, z = _golden(f"lora_pro__official_{tag}")
    lr = meta["hyperparameters"]["lr"]
    dtype = np.float64 if tag == "f64" else np.float32
    pairs = range(len(meta["param_order"]) // 2)

    def tree(prefix: str, t: int | None = None) -> dict[str, Any]:
        out = {}
        for k in pairs:
            a, b = z[f"{prefix}/A{k}"], z[f"{prefix}/B{k}"]
            if t is not None:
                a, b = a[t], b[t]
            out[f"p{k}"] = {"lora_a": jnp.asarray(a.T, dtype), "lora_b": jnp.asarray(b.T, dtype)}
        return out

    with jax.enable_x64(tag == "f64"):
        tx = optax.chain(
            optx.scale_by_lora_pro(scaling="official", variant="official"), optax.scale(-lr)
        )
        params = tree("init")
        state = tx.init(params)
        step = jax.jit(tx.update)
        worst = 0.0
        for t in range(meta["T"]):
            updates, state = step(tree("grads", t), state, params)
            params = optax.apply_updates(params, updates)
            for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(tree("params_after", t))):
                assert got.dtype == dtype
                worst = max(worst, float(np.max(np.abs(np.asarray(got) - np.asarray(want)))))
        assert worst < atol, worst


def test_lora_pro_official_variant_rounds_delta_to_float32() -> None:
    """``variant='official'``: the official ``delta * torch.eye(r)`` is a float32
    tensor in a float64 run, so its δ is ``float32(δ)``; with ``B₀ = 0`` (where
    δ alone regularizes ``pinv(BᵀB + δI)``) the steps depend on that rounding.
    The paper variant keeps δ as given."""
    rng = np.random.default_rng(3)
    params = {"p": {"lora_a": rng.normal(size=(4, 3)) / 2, "lora_b": np.zeros((3, 7))}}
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(4)]
    rounded = float(np.float32(1e-8))

    def run(variant: str, delta: float) -> list[np.ndarray]:
        with jax.enable_x64(True):
            tx = optax.chain(
                optx.scale_by_lora_pro(variant=variant, delta=delta), optax.scale(-1e-2)
            )
            p = jax.tree.map(jnp.asarray, params)
            state, out = tx.init(p), []
            for g in grads:
                u, state = jax.jit(tx.update)(jax.tree.map(jnp.asarray, g), state, p)
                p = optax.apply_updates(p, u)
                out.append(np.asarray(p["p"]["lora_b"]))
        return out

    for got, want in zip(run("official", 1e-8), run("official", rounded)):
        np.testing.assert_array_equal(got, want)
    paper, paper_rounded = run("paper", 1e-8), run("paper", rounded)
    assert max(np.max(np.abs(a - b)) for a, b in zip(paper, paper_rounded)) > 0


def _pinv(x: np.ndarray, delta: float) -> np.ndarray:
    return np.linalg.pinv(x + delta * np.eye(x.shape[0]))


def _lora_pro_reference(
    a: np.ndarray, b: np.ndarray, grads: list[tuple[np.ndarray, np.ndarray]], *, s: float, lr: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The paper's LoRA-Pro in PyTorch orientation (A (r, n), B (m, r)), float64.

    Equations (arXiv 2407.18242, Thm 2.1/2.2 and Alg. 1; official δ-ridge
    pinv), standard Adam bias correction, first-step special case at t = 1.
    """
    b1, b2, eps, delta = 0.9, 0.999, 1e-8, 1e-8
    m = np.zeros((b.shape[0], a.shape[1]))
    v = np.zeros_like(m)
    out = []
    for t, (ga, gb) in enumerate(grads, start=1):
        aat_inv, btb_inv = _pinv(a @ a.T, delta), _pinv(b.T @ b, delta)
        proj = np.eye(b.shape[0]) - b @ btb_inv @ b.T
        if t == 1:
            ga_t, gb_t = ga, gb @ aat_inv / s**2
        else:
            ga_t, gb_t = btb_inv @ ga / s**2, proj @ gb @ aat_inv / s**2
        g = s * b @ ga_t + s * gb_t @ a
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        ga_u, gb_u = s * b.T @ u, s * u @ a.T
        if t == 1:
            da, db = ga_u, gb_u @ aat_inv / s**2
        else:
            x = scipy.linalg.solve_sylvester(b.T @ b, a @ a.T, -btb_inv @ ga_u @ a.T / s**2)
            da = btb_inv @ ga_u / s**2 + x @ a
            db = proj @ gb_u @ aat_inv / s**2 - b @ x
        a, b = a - lr * da, b - lr * db
        out.append((a, b))
    return out


def test_lora_pro_matches_float64_reference_2d_and_stacked() -> None:
    """Paper variant, α/r and rsLoRA scales, B₀ = 0 and B₀ ≠ 0, 2-D and stacked pairs."""
    rng = np.random.default_rng(0)
    steps, lr = 4, 1e-2
    # (batch, fan_in, r, fan_out, B0 nonzero)
    shapes = {"dense": ((), 5, 2, 4, False), "stack": ((2,), 4, 3, 6, True)}
    init, grads = {}, []
    for name, (lead, n, r, m_out, nonzero) in shapes.items():
        a = rng.normal(size=(*lead, n, r)) / np.sqrt(n)
        b = rng.normal(size=(*lead, r, m_out)) * (0.3 if nonzero else 0.0)
        init[name] = {"lora_a": a, "lora_b": b}
    for _ in range(steps):
        grads.append(
            {
                k: {
                    "lora_a": rng.normal(size=v["lora_a"].shape),
                    "lora_b": rng.normal(size=v["lora_b"].shape),
                }
                for k, v in init.items()
            }
        )
    for alpha, scaling in ((4.0, "rslora"),):  # s = 4/√r: 2.83 (r = 2) and 2.31 (r = 3)
        with jax.enable_x64(True):
            tx = optax.chain(optx.scale_by_lora_pro(alpha=alpha, scaling=scaling), optax.scale(-lr))
            params = jax.tree.map(jnp.asarray, init)
            state = tx.init(params)
            step = jax.jit(tx.update)
            got = []
            for g in grads:
                u, state = step(jax.tree.map(jnp.asarray, g), state, params)
                params = optax.apply_updates(params, u)
                got.append(jax.tree.map(np.asarray, params))
        for name, (lead, _, r, _, _) in shapes.items():
            s = optx.lora.lora_scale(alpha, r, scaling)
            for idx in np.ndindex(*lead):
                a0, b0 = init[name]["lora_a"][idx], init[name]["lora_b"][idx]
                seq = [(g[name]["lora_a"][idx].T, g[name]["lora_b"][idx].T) for g in grads]
                ref = _lora_pro_reference(a0.T, b0.T, seq, s=s, lr=lr)
                for t, (ra, rb) in enumerate(ref):
                    np.testing.assert_allclose(got[t][name]["lora_a"][idx], ra.T, atol=1e-10)
                    np.testing.assert_allclose(got[t][name]["lora_b"][idx], rb.T, atol=1e-10)


def test_lora_pro_state_mirrors_params_and_fallback_gets_adamw() -> None:
    params = {
        "layer": {"lora_a": jnp.ones((4, 2)), "lora_b": jnp.zeros((2, 3))},
        "head": {"kernel": jnp.ones((3, 2))},
    }
    pro = optx.scale_by_lora_pro().init(params)
    assert pro.mu["layer"]["lora_a"].shape == (4, 3)
    assert isinstance(pro.mu["layer"]["lora_b"], optax.MaskedNode)
    assert isinstance(pro.mu["head"]["kernel"], optax.MaskedNode)
    tx = optx.lora_pro(1e-2)
    grads = jax.tree.map(jnp.ones_like, params)
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # torch's AdamW (the official code's): m̂ = v̂ = 1 exactly after one step of g = 1,
    # so u = −η/(1 + ε); optax's float32 1 − 0.999ᵗ would make it 6.7e-6 larger.
    np.testing.assert_allclose(u["head"]["kernel"], -1e-2 / (1 + 1e-8), rtol=1e-7)
    # A = const, B = 0: the first step only moves B.
    assert float(jnp.max(jnp.abs(u["layer"]["lora_a"]))) == 0.0
    pair = optx.lora.LoRAPair("x/lora_a", "x/lora_b", 2, scale=3.0)
    assert adapters._pair_scale(pair, 8.0, "lora") == 4.0
    assert adapters._pair_scale(pair, 8.0, "rslora") == pytest.approx(8.0 / np.sqrt(2.0))
    assert adapters._pair_scale(pair, None, "lora") == 3.0  # the module's scale
    assert adapters._pair_scale(pair, 8.0, "official") == 2.0


def test_lora_pro_bad_inputs() -> None:
    with pytest.raises(ValueError, match="b1"):
        optx.lora_pro(b1=1.5)
    with pytest.raises(ValueError, match="eps"):
        optx.lora_pro(eps=-1.0)
    with pytest.raises(ValueError, match="delta"):
        optx.scale_by_lora_pro(delta=-1.0)
    with pytest.raises(ValueError, match="scaling"):
        optx.lora_pro(scaling="peft")
    with pytest.raises(ValueError, match="variant"):
        optx.lora_pro(variant="v2")
    with pytest.raises(ValueError, match="alpha"):
        optx.lora_pro(alpha=-2.0)
    with pytest.raises(ValueError, match="weight_decay"):
        optx.lora_pro(weight_decay=-0.1)
    tx = optx.scale_by_lora_pro()
    p = {"l": {"lora_a": jnp.ones((3, 2)), "lora_b": jnp.zeros((2, 4))}}
    with pytest.raises(ValueError, match="params"):
        tx.update(p, tx.init(p))
    with pytest.raises(ValueError, match="Unpaired"):
        tx.init({"l": {"lora_a": jnp.ones((3, 2))}})
    with pytest.raises(ValueError, match="rank mismatch"):
        tx.init({"l": {"lora_a": jnp.ones((3, 2)), "lora_b": jnp.zeros((3, 4))}})
    with pytest.raises(TypeError, match="complex"):
        tx.init({"l": {"lora_a": jnp.ones((3, 2), jnp.complex64), "lora_b": jnp.zeros((2, 4))}})
    with pytest.raises(TypeError, match="LoRAPair"):
        optx.scale_by_lora_pro(pairs=["l/lora_a"]).init(p)
    pair = optx.lora.LoRAPair("l/lora_a", "x/lora_b", 2)
    with pytest.raises(ValueError, match="incomplete"):
        optx.scale_by_lora_pro(pairs=[pair]).init(p)


# ----------------------------------------------------------------------------
# SoRA
# ----------------------------------------------------------------------------


def test_sora_matches_official_sparse_adamw_golden() -> None:
    """Measured max |Δparam| 2.2e-6 over 12 steps (f32; gates ~0.5), zeros at the
    same entries. The gap is optx's f32 Adam step-size correction
    ``√(1−β₂ᵗ)/(1−β₁ᵗ)`` with f32 β (PyTorch uses Python doubles): 1e-5 relative
    at small t."""
    meta, z = _golden("sora__official")
    hp = meta["hyperparameters"]
    names = meta["param_order"]
    # The official gates are (1, r); the gate dimension is the last axis here too.
    params = {n: {"lora_gate": jnp.asarray(z[f"init/{n}"])} for n in names}
    tx = optx.sora(
        learning_rate=hp["lr"], threshold=hp["sparse_lambda"], gate_weight_decay=hp["weight_decay"]
    )
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(meta["T"]):
        grads = {n: {"lora_gate": jnp.asarray(z[f"grads/{n}"][t])} for n in names}
        u, state = step(grads, state, params)
        params = optax.apply_updates(params, u)
        for n in names:
            want = z[f"params_after/{n}"][t]
            got = np.asarray(params[n]["lora_gate"])
            np.testing.assert_allclose(got, want, rtol=0, atol=5e-6)
            np.testing.assert_array_equal(got == 0, want == 0)
    for kind, cfg in meta["schedules"].items():
        values = z[f"aux/schedule/{kind}"][:-1]  # the last entry repeats the held value
        got = optx.lora.sparsifying_thresholds(
            cfg["sparse_lambda"], cfg["max_lambda"], cfg["lambda_num"], kind
        )
        np.testing.assert_allclose(got, values, rtol=1e-12)


def _hf_adam(
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    t: int,
    eps: float,
    betas: tuple[float, float] = (0.9, 0.999),
    correct_bias: bool = True,
) -> tuple:
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = np.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else 1.0
    return step * m / (np.sqrt(v) + eps), m, v


def _official_threshold(x: np.ndarray, xi: float) -> np.ndarray:
    x = x.copy()
    x[x > xi] -= xi
    x[x < -xi] += xi
    x[np.abs(x) < xi] = 0.0
    return x


@pytest.mark.parametrize(
    ("mode", "betas", "correct_bias"),
    [
        ("official", (0.9, 0.999), True),
        ("soft", (0.9, 0.999), True),
        ("official", (0.8, 0.98), False),
    ],
)
def test_sora_matches_float64_reference(
    mode: str, betas: tuple[float, float], correct_bias: bool
) -> None:
    """The official trainer: HF AdamW (the user's betas, ``correct_bias``) on
    the non-gate leaves and ``SparseAdamW`` built with only ``params`` and
    ``lr`` on the gates (transformers' defaults: betas (0.9, 0.999), ε 1e-6,
    bias correction on), whatever the main optimizer's betas."""
    rng = np.random.default_rng(1)
    lr, glr, wd, gwd, xi, steps = 0.05, 0.1, 0.1, 0.01, 0.03, 5
    init = {
        "l": {
            "lora_a": rng.normal(size=(4, 3)),
            "lora_b": rng.normal(size=(2, 3, 5)),
            "lora_gate": rng.normal(size=(3,)) * 0.2,
        }
    }
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), init) for _ in range(steps)]
    with jax.enable_x64(True):
        tx = optx.sora(
            lr,
            weight_decay=wd,
            threshold=xi,
            threshold_mode=mode,
            gate_learning_rate=glr,
            gate_weight_decay=gwd,
            b1=betas[0],
            b2=betas[1],
            bias_correction=correct_bias,
        )
        params = jax.tree.map(jnp.asarray, init)
        state = tx.init(params)
        step = jax.jit(tx.update)
        for g in grads:
            u, state = step(jax.tree.map(jnp.asarray, g), state, params)
            params = optax.apply_updates(params, u)
    ref = {k: v.copy() for k, v in init["l"].items()}
    mom = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in ref.items()}
    for t, g in enumerate(grads, start=1):
        for k in ref:
            if k == "lora_gate":
                d, m, v = _hf_adam(g["l"][k], *mom[k], t, 1e-6)
            else:
                d, m, v = _hf_adam(g["l"][k], *mom[k], t, 1e-8, betas, correct_bias)
            mom[k] = (m, v)
            if k == "lora_gate":  # SparseAdamW: pre-step decay, then the threshold
                x = ref[k] - glr * d - glr * gwd * ref[k]
                soft = np.sign(x) * np.maximum(np.abs(x) - xi, 0.0)
                ref[k] = _official_threshold(x, xi) if mode == "official" else soft
            else:  # HF AdamW: step, then decay of the updated weights
                ref[k] = (ref[k] - lr * d) * (1 - lr * wd)
    for k in ref:
        # add_decayed_weights_after_step takes η and λ in f32 (rtol ~1e-7 on the
        # non-gate leaves); the gate path is float64 throughout.
        rtol = 1e-13 if k == "lora_gate" else 1e-6
        np.testing.assert_allclose(np.asarray(params["l"][k]), ref[k], rtol=rtol, atol=1e-13)


def test_gate_threshold_dead_zone_and_sora_bad_inputs() -> None:
    x = jnp.array([0.5, 1.0, 1.5, 1.99, 2.0, 3.0, -1.5, -2.5])
    np.testing.assert_allclose(
        optx.lora.gate_threshold(x, 1.0), [0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 0.0, -1.5]
    )
    np.testing.assert_allclose(
        optx.lora.gate_threshold(x, 1.0, "soft"),
        [0.0, 0.0, 0.5, 0.99, 1.0, 2.0, -0.5, -1.5],
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="threshold"):
        optx.sora(threshold=-1.0)
    with pytest.raises(ValueError, match="threshold_mode"):
        optx.sora(threshold_mode="hard")
    with pytest.raises(ValueError, match="gate_eps"):
        optx.sora(gate_eps=-1.0)
    with pytest.raises(ValueError, match="b2"):
        optx.sora(b2=1.0)
    with pytest.raises(ValueError, match="mode"):
        optx.lora.gate_threshold(x, 1.0, "hard")
    with pytest.raises(ValueError, match="params"):
        tx = optx.scale_by_gate_threshold(0.1)
        tx.update({"lora_gate": x}, tx.init({"lora_gate": x}))
    with pytest.raises(ValueError, match="kind"):
        optx.lora.sparsifying_thresholds(0.0, 1.0, 3, "cosine")
    with pytest.raises(ValueError, match="exp_linear"):
        optx.lora.sparsifying_thresholds(0.0, 1.0, 3, "exp_linear")
    with pytest.raises(ValueError, match="num_stages"):
        optx.lora.sparsifying_thresholds(0.0, 1.0, 0)
    with pytest.raises(ValueError, match="stage_steps"):
        optx.schedules.sparsifying_schedule(0.0, 1.0, 3, stage_steps=0)


@pytest.mark.parametrize("kind", ["linear", "log_linear", "exp_linear"])
def test_sparsifying_schedule_is_float64_under_x64(kind: str) -> None:
    """Under x64 the ξ values are the official float64 ones (the table had been
    float32, so a float64 run got float32-rounded thresholds)."""
    want = optx.lora.sparsifying_thresholds(1e-4, 3e-3, 4, kind)
    with jax.enable_x64(True):
        sched = optx.schedules.sparsifying_schedule(1e-4, 3e-3, 4, stage_steps=2, kind=kind)
        got = [sched(t) for t in (0, 2, 4, 6)]
    assert all(x.dtype == jnp.float64 for x in got)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float64))


def test_sora_penalty_and_schedule_drive_the_threshold() -> None:
    p = {"a": {"lora_gate": jnp.array([1.0, -3.0, 0.0])}, "b": {"lora_gate": jnp.array([2.0])}}
    assert float(optx.lora.sora_l1_penalty(p, 1e-3)) == pytest.approx(1e-3 * 6.0 / 4)
    assert float(optx.lora.sora_l1_penalty({"w": jnp.ones(2)})) == 0.0
    sched = optx.schedules.sparsifying_schedule(0.1, 0.3, 3, stage_steps=2, first_stage_steps=3)
    values = [float(sched(t)) for t in range(8)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.3], rtol=1e-6)
    # ξ follows the schedule inside the transform: a gate of 0.25 survives ξ = 0.1
    # (dead zone 0.2, shrunk to 0.15) and is zeroed once ξ = 0.2 (dead zone 0.4).
    tx = optx.scale_by_gate_threshold(sched)
    w = {"lora_gate": jnp.array([0.25])}
    state = tx.init(w)
    zero = {"lora_gate": jnp.zeros(1)}
    for t in range(5):
        u, state = tx.update(zero, state, w)  # same weights, the count advances
        after = float(optax.apply_updates(w, u)["lora_gate"][0])
        assert after == (0.0 if t >= 3 else pytest.approx(0.15))


def test_sym_pinv_drops_eigenvalues_at_the_cutoff() -> None:
    """``torch.linalg.pinv`` drops eigenvalues with ``|λ| ≤ r·ε·max|λ|``: an
    eigenvalue exactly at the cutoff (every eigenvalue of ``S = 0`` with δ = 0,
    as for ``B₀ = 0`` without a ridge) gives 0, not ``1/0``."""
    with jax.enable_x64(True):
        for s, delta in ((np.zeros((3, 3)), 0.0), (np.diag([3.0, 1.0, 0.0]), 0.0)):
            w, v = jnp.linalg.eigh(jnp.asarray(s))
            got = np.asarray(adapters._sym_pinv(w, v, delta))
            np.testing.assert_allclose(got, np.linalg.pinv(s), atol=1e-12)
