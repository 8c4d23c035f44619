"""Tests of the memory-efficient family (optx/_src/aliases/memory.py).

Golden trajectories of the official implementations (``tests/data/``, copied
from ``shared/golden``; PyTorch ``(out, in)`` layout, transposed here to Flax
``(in, out)``), float64 NumPy references written from the papers' math, and the
optimizer-state bytes each method allocates.
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
from tests.matrix_views import matrices
from tests.projection_reference import (
    adam_moments,
    columns_projection,
    dct_indices,
    dct_projection,
    down,
    jax_columns_projection,
    projected_axis,
    up,
)
from tests.references import goldens

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def _golden(case: str) -> tuple[dict[str, Any], Any]:
    meta = json.loads((DATA / f"{case}.json").read_text())
    return meta, np.load(DATA / f"{case}.npz")


def _flax(x: np.ndarray) -> np.ndarray:
    """PyTorch (out, in) -> Flax (in, out); vectors unchanged."""
    return x.T if x.ndim == 2 else x


def _run_golden(tx: optax.GradientTransformation, meta: dict[str, Any], z: Any) -> None:
    goldens.replay(
        tx,
        z,
        meta["param_order"],
        meta["T"],
        rtol=0,
        atol=meta["tolerance"]["params_after_atol"],
        label=meta["case_id"],
        to_flax=_flax,
    )


# ----------------------------------------------------------------------------
# Golden trajectories
# ----------------------------------------------------------------------------


def _injected_projection(z: Any, names: list[str], rank: int) -> Any:
    """A custom projection returning the reference's injected draw (/ sqrt(rank)).

    w1 (24, 40) has out < in: the official code projects the out axis with
    P (out, r) — Flax fan-out, used as is. w2 (40, 24) projects the in axis with
    P (r, in): Flax fan-in, transposed.
    """
    table = {}
    for n in names:
        draw = z[f"inject/{n}/step0"] / math.sqrt(rank)
        out, inp = z[f"init/{n}"].shape
        table[(inp, out)] = draw if out < inp else draw.T

    def projection(key: Any, x: jax.Array, r: int, axis: str) -> jax.Array:
        del key, axis
        return jnp.asarray(table[tuple(x.shape[1:])], jnp.float32)[None]

    return projection


@pytest.mark.parametrize("case", ["apollo__public", "apollo_mini__public"])
def test_apollo_matches_official_golden(case: str) -> None:
    meta, z = _golden(case)
    group = meta["hyperparameters"]["lowrank_group"]
    rank = group["rank"]
    factory = optx.apollo if group["scale_type"] == "channel" else optx.apollo_mini
    tx = factory(
        learning_rate=1e-3,
        rank=rank,
        scale=group["scale"],
        update_proj_gap=group["update_proj_gap"],
        projection=_injected_projection(z, meta["hyperparameters"]["lowrank_params"], rank),
    )
    _run_golden(tx, meta, z)


def test_galore_matches_official_golden() -> None:
    meta, z = _golden("galore__public")
    group = meta["hyperparameters"]["galore_group"]
    tx = optx.galore(
        learning_rate=1e-3,
        rank=group["rank"],
        update_proj_gap=group["update_proj_gap"],
        scale=group["scale"],
    )
    _run_golden(tx, meta, z)


def test_galore_projector_spans_official_subspace() -> None:
    """Our SVD projector spans the reference's (signs may differ)."""
    _, z = _golden("galore__public")
    params = {n: jnp.asarray(_flax(z[f"init/{n}"])) for n in ("w1", "w2")}
    tx = optx.scale_by_subspace(rank=4, layout=optx.DENSE)
    grads = {n: jnp.asarray(_flax(z[f"grads/{n}"][0])) for n in params}
    _, state = tx.update(grads, tx.init(params))
    for n in params:
        ours = np.asarray(state.projector[n][0])
        ref = z[f"aux/projector/{n}"][0]
        ref = ref if ref.shape[0] > ref.shape[1] else ref.T  # (d, r)
        overlap = np.abs(ours.T @ ref)
        np.testing.assert_allclose(overlap, np.eye(4), atol=2e-4)


def test_adamw_8bit_matches_bitsandbytes_teacher_forced() -> None:
    """bitsandbytes' CPU quantizer is not exact nearest rounding: feed its codes
    after step t-1, apply step t, compare params_after[t] (golden README)."""
    meta, z = _golden("adam8bit__public")
    tx = optx.adamw_8bit(learning_rate=1e-3, weight_decay=0.0)
    n8 = "w8"  # 64 x 72 >= 4096 entries: 8-bit state; w1 and b keep float32
    params = {n: jnp.asarray(z[f"init/{n}"]) for n in meta["param_order"]}
    state = tx.init(params)
    scales = state[0].absmax  # mirrors the inner Adam state: scales only for w8
    assert scales.mu[n8].shape == scales.nu[n8].shape == (18,)
    assert all(isinstance(scales.mu[n], optax.MaskedNode) for n in ("w1", "b"))
    step = jax.jit(tx.update)
    atol = meta["tolerance"]["params_after_atol"]
    mismatched = total = 0
    dynamic_signed = optx.quantization.dynamic_map(signed=True).astype(np.float64)
    for t in range(meta["T"]):
        if t > 0:
            qs = state[0]
            adam = qs.inner_state
            mu = {**adam.mu, n8: jnp.asarray(z[f"aux/state1_per_step/{n8}"][t - 1])}
            nu = {**adam.nu, n8: jnp.asarray(z[f"aux/state2_per_step/{n8}"][t - 1])}
            absmax = qs.absmax._replace(
                mu={**qs.absmax.mu, n8: jnp.asarray(z[f"aux/absmax1_per_step/{n8}"][t - 1])},
                nu={**qs.absmax.nu, n8: jnp.asarray(z[f"aux/absmax2_per_step/{n8}"][t - 1])},
            )
            state = (
                qs._replace(inner_state=adam._replace(mu=mu, nu=nu), absmax=absmax),
                *state[1:],
            )
            params = {**params, n8: jnp.asarray(z[f"params_after/{n8}"][t - 1])}
        grads = {n: jnp.asarray(z[f"grads/{n}"][t]) for n in params}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        for n in params:
            np.testing.assert_allclose(
                np.asarray(params[n]), z[f"params_after/{n}"][t], rtol=0, atol=atol
            )
        # Re-derive the new first moment from the reference's previous codes
        # (float64) and check that our codes are the nearest map entries.
        qmap = z[f"state/{n8}/qmap1"].astype(np.float64)
        if t == 0:
            m_prev = np.zeros(z[f"init/{n8}"].size)
        else:
            codes = z[f"aux/state1_per_step/{n8}"][t - 1].reshape(-1, 256)
            m_prev = (qmap[codes] * z[f"aux/absmax1_per_step/{n8}"][t - 1][:, None]).reshape(-1)
        m_new = (0.9 * m_prev + 0.1 * z[f"grads/{n8}"][t].reshape(-1)).reshape(-1, 256)
        np.testing.assert_allclose(
            np.abs(m_new).max(axis=1), z[f"aux/absmax1_per_step/{n8}"][t], rtol=1e-5
        )
        y = (m_new / np.abs(m_new).max(axis=1, keepdims=True)).reshape(-1)
        ours = np.asarray(state[0].inner_state.mu[n8]).reshape(-1)
        ref = z[f"aux/state1_per_step/{n8}"][t].reshape(-1)
        ours_err = np.abs(y - dynamic_signed[ours])
        ref_err = np.abs(y - qmap[ref])
        assert np.all(ours_err <= ref_err + 1e-6), "a reference code is nearer than ours"
        mismatched += int(np.sum(ours != ref))
        total += ours.size
    # The reference's grid lookup misses the nearest code for ~2% of these entries
    # (up to 12% on heavier-tailed moments; see the quantization module notes).
    assert mismatched / total < 0.05


# ----------------------------------------------------------------------------
# Float64 references of the full aliases (2-D, stacked, conv; routed fallback)
# ----------------------------------------------------------------------------

SHAPES = {"hidden": (10, 6), "stack": (3, 6, 10), "conv": (3, 3, 2, 5), "bias": (5,)}


def _tree(seed: int, scale: float = 1.0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    t = {k: rng.standard_normal(s) * scale for k, s in SHAPES.items()}
    return {
        "hidden": {"kernel": t["hidden"]},
        "stack": {"kernel": t["stack"]},
        "conv": {"kernel": t["conv"]},
        "bias": t["bias"],
    }


def _leaves(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        "hidden": tree["hidden"]["kernel"],
        "stack": tree["stack"]["kernel"],
        "conv": tree["conv"]["kernel"],
        "bias": tree["bias"],
    }


def _simulate(tx: optax.GradientTransformation, steps: int) -> list[dict[str, np.ndarray]]:
    """Runs tx on a fixed quadratic-free gradient sequence; returns the params."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree(100, 0.5))
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for t in range(steps):
        g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _tree(t))
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        out.append({k: np.asarray(v, np.float64) for k, v in _leaves(params).items()})
    return out


def _np_official_adamw(w, g, st, t, lr, wd, b1=0.9, b2=0.999, eps=1e-6):
    adam_moments(st, g, b1, b2)
    w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * st["m"] / (np.sqrt(st["v"]) + eps)
    return w - lr * wd * w  # decay after the step (HF AdamW)


def _projected_moments(st: dict, x: np.ndarray, name: str, t: int, gap: int) -> tuple:
    """Refresh P every ``gap`` steps, project, update the subspace moments."""
    X = matrices(x, name)
    axis = projected_axis(*X.shape[1:])
    if (t - 1) % gap == 0:
        st["P"] = columns_projection(X, 2, axis)
    R = down(X, st["P"], axis)
    adam_moments(st, R)
    return X, R, axis


def _official_reference(steps: int, lr: float, wd: float, matrix_step: Any) -> list[dict]:
    """Float64 run of a GaLore/APOLLO-style alias: ``matrix_step(x, g, st, name, t)``
    returns the matrix's post-step (pre-decay) weights; the bias gets the official
    AdamW; every parameter is then decayed after the step."""
    w = {k: v.astype(np.float64) for k, v in _leaves(_tree(100, 0.5)).items()}
    st: dict[str, dict] = {k: {} for k in w}
    out = []
    for t in range(1, steps + 1):
        g = _leaves(_tree(t - 1))
        for k in w:
            if k == "bias":
                w[k] = _np_official_adamw(w[k], g[k], st[k], t, lr, wd)
            else:
                w[k] = matrix_step(w[k], g[k], st[k], k, t)
                w[k] = w[k] - lr * wd * w[k]
        out.append(dict(w))
    return out


def _assert_trajectories(ours: list[dict], ref: list[dict]) -> None:
    for t, (a, b) in enumerate(zip(ours, ref)):
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=5e-6, err_msg=f"{k}, t={t}")


def test_galore_alias_matches_reference() -> None:
    lr, wd, alpha, gap, b1, b2, eps = 0.05, 0.1, 0.25, 2, 0.9, 0.999, 1e-6
    tx = optx.galore(
        lr,
        weight_decay=wd,
        rank=2,
        update_proj_gap=gap,
        scale=alpha,
        projection=jax_columns_projection,
    )

    def matrix_step(w: np.ndarray, g: np.ndarray, st: dict, name: str, t: int) -> np.ndarray:
        _, _, axis = _projected_moments(st, g, name, t, gap)
        N = np.sqrt(1 - b2**t) / (1 - b1**t) * st["m"] / (np.sqrt(st["v"]) + eps)
        return w - lr * alpha * up(N, st["P"], axis).reshape(w.shape)

    _assert_trajectories(_simulate(tx, 5), _official_reference(5, lr, wd, matrix_step))


@pytest.mark.parametrize("scale_type,scale_front", [("channel", False), ("tensor", True)])
def test_apollo_alias_matches_reference(scale_type: str, scale_front: bool) -> None:
    lr, wd, alpha, gap, b1, b2, eps = 0.02, 0.05, 4.0, 2, 0.9, 0.999, 1e-6
    tx = optx.apollo(
        lr,
        weight_decay=wd,
        rank=2,
        scale=alpha,
        scale_type=scale_type,
        update_proj_gap=gap,
        scale_front=scale_front,
        projection=jax_columns_projection,
    )

    def matrix_step(w: np.ndarray, g: np.ndarray, st: dict, name: str, t: int) -> np.ndarray:
        X, R, axis = _projected_moments(st, g, name, t, gap)
        N = st["m"] / (np.sqrt(st["v"]) + eps)
        ax = (1, 2) if scale_type == "tensor" else (1 if axis == "in" else 2)
        s = np.linalg.norm(N, axis=ax, keepdims=True) / (
            np.linalg.norm(R, axis=ax, keepdims=True) + 1e-8
        )
        G = X * s  # the RAW gradient is scaled
        if scale_front:
            G = G * np.sqrt(alpha)
        norm = np.linalg.norm(G, axis=(1, 2), keepdims=True)
        lim = 1.0 if t == 1 else np.maximum(norm / (st["n"] + 1e-8), 1.01) / 1.01
        G, st["n"] = G / lim, norm / lim
        if not scale_front:
            G = G * np.sqrt(alpha)  # the scale enters as sqrt(alpha)
        return w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * G.reshape(w.shape)

    _assert_trajectories(_simulate(tx, 5), _official_reference(5, lr, wd, matrix_step))


def test_dct_adamw_alias_matches_reference() -> None:
    lr, wd, b1, b2, eps, rank = 0.01, 0.1, 0.9, 0.999, 1e-8, 2
    tx = optx.dct_adamw(lr, weight_decay=wd, rank=rank)  # official T = 1: every step
    ours = _simulate(tx, 4)
    w = {k: v.astype(np.float64) for k, v in _leaves(_tree(100, 0.5)).items()}
    st: dict[str, dict] = {k: {} for k in w}
    for t in range(1, 5):
        g = _leaves(_tree(t - 1))
        for k in w:
            w[k] = w[k] * (1 - lr * wd)  # decay before the step (official)
            if k == "bias":
                d = g[k]
            else:
                X = matrices(g[k], k)
                axis = projected_axis(*X.shape[1:])
                prev = st[k].get("idx", np.zeros((X.shape[0], rank), int))
                st[k]["idx"] = dct_indices(X, rank, axis, prev)  # slot_order='stable'
                Pm = dct_projection(X, rank, axis, prev)
                d = down(X, Pm, axis)
            adam_moments(st[k], d, b1, b2)
            u = st[k]["m"] / (np.sqrt(st[k]["v"]) + eps * np.sqrt(1 - b2**t))
            if k != "bias":
                u = up(u, Pm, axis).reshape(w[k].shape)
            w[k] = w[k] - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * u
        for k in w:
            np.testing.assert_allclose(ours[t - 1][k], w[k], rtol=1e-5, atol=5e-6, err_msg=k)


def test_frugal_block_alias_matches_reference() -> None:
    """Block FRUGAL: active stacked layers get Adam, the rest signSGD; lr scales."""
    lr, wd, s_p, s_i = 0.01, 0.1, 0.5, 0.3
    tx = optx.frugal(
        lr,
        weight_decay=wd,
        density=0.34,
        update_proj_gap=2,
        order="ascending",
        inactive_lr_scale=s_i,
        proj_lr_scale=s_p,
    )
    ours = _simulate(tx, 4)
    w = {k: v.astype(np.float64) for k, v in _leaves(_tree(100, 0.5)).items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    fb: dict[str, Any] = {}
    blk: dict[str, Any] = {"start": 0}
    # Groups: stack (6x10, N=3) -> round(0.34·3) = 1 active; dense (10x6, N=1) and
    # conv (18x5, N=1) -> round(0.34) = 0, raised to 1 (with a warning): Adam only.
    one: dict[str, Any] = {}
    for t in range(1, 5):
        g = _leaves(_tree(t - 1))
        for k in w:
            w[k] = w[k] - lr * wd * w[k]  # decay before the step, every parameter
        fb["m"] = b1 * fb.get("m", 0.0) + (1 - b1) * g["bias"]
        fb["v"] = b2 * fb.get("v", 0.0) + (1 - b2) * g["bias"] ** 2
        w["bias"] -= lr * (fb["m"] / (1 - b1**t)) / (np.sqrt(fb["v"] / (1 - b2**t)) + eps)
        if (t - 1) % 2 == 0:
            blk.update(active=blk["start"], t=0, m=0.0, v=0.0)
            one = {k: (0.0, 0.0) for k in ("hidden", "conv")}
            blk["start"] = (blk["start"] + 1) % 3
        blk["t"] += 1
        a = g["stack"][blk["active"]]
        blk["m"] = b1 * blk["m"] + (1 - b1) * a
        blk["v"] = b2 * blk["v"] + (1 - b2) * a**2
        upd = s_i * np.sign(g["stack"])
        upd[blk["active"]] = (blk["m"] / (1 - b1 ** blk["t"])) / (
            np.sqrt(blk["v"] / (1 - b2 ** blk["t"])) + eps
        )
        w["stack"] -= lr * s_p * upd
        for k in ("hidden", "conv"):
            m, v = one[k]
            m, v = b1 * m + (1 - b1) * g[k], b2 * v + (1 - b2) * g[k] ** 2
            one[k] = (m, v)
            w[k] -= (
                lr * s_p * (m / (1 - b1 ** blk["t"])) / (np.sqrt(v / (1 - b2 ** blk["t"])) + eps)
            )
        for k in w:
            np.testing.assert_allclose(ours[t - 1][k], w[k], rtol=1e-5, atol=5e-6, err_msg=k)


# ----------------------------------------------------------------------------
# 8-bit aliases against their 32-bit twins
# ----------------------------------------------------------------------------


def _quadratic_run(tx: optax.GradientTransformation, steps: int = 15) -> np.ndarray:
    rng = np.random.default_rng(7)
    target = jnp.asarray(rng.standard_normal((64, 48)), jnp.float32)
    curv = jnp.asarray(rng.uniform(0.5, 2.0, (64, 48)), jnp.float32)
    loss = lambda p: 0.5 * jnp.sum(curv * (p["w"] - target) ** 2)  # noqa: E731
    params = {"w": jnp.zeros((64, 48))}
    state = tx.init(params)

    @jax.jit
    def step(p: Any, s: Any) -> tuple[Any, Any]:
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return np.asarray(params["w"])


@pytest.mark.parametrize(
    "eight_bit,reference",
    [
        (
            lambda: optx.adamw_8bit(1e-2, weight_decay=0.1),
            lambda: optax.adamw(1e-2, weight_decay=0.1),
        ),
        (
            lambda: optx.lion_8bit(1e-2, weight_decay=0.1),
            lambda: optax.lion(1e-2, weight_decay=0.1),
        ),
        (
            lambda: optx.sgd_momentum_8bit(1e-2, 0.9, weight_decay=0.1),
            lambda: optax.chain(optax.add_decayed_weights(0.1), optax.sgd(1e-2, 0.9)),
        ),
    ],
    ids=["adamw", "lion", "sgd_momentum"],
)
def test_8bit_aliases_track_32bit(eight_bit: Any, reference: Any) -> None:
    a, b = _quadratic_run(eight_bit()), _quadratic_run(reference())
    assert np.abs(a - b).mean() <= 0.03 * np.abs(b).mean()
    assert np.abs(a - b).max() <= 0.25 * np.abs(b).max()


def test_galore_8bit_quantizes_subspace_moments() -> None:
    params = {"mlp": {"kernel": jnp.ones((256, 512))}, "bias": jnp.zeros(512)}
    tx = optx.galore_8bit(1e-2, rank=16)
    state = tx.init(params)
    codes = [x for x in jax.tree.leaves(state) if x.dtype == jnp.uint8]
    # subspace mu, nu (1, 16, 512) = 8192 entries >= 4096: 8-bit; bias 512: f32
    assert sorted(c.shape for c in codes) == [(1, 16, 512), (1, 16, 512)]
    scales = [x for x in jax.tree.leaves(state) if x.shape == (16 * 512 // 256,)]
    assert len(scales) == 2 and all(x.dtype == jnp.float32 for x in scales)
    # 32-bit subspace moments would take 2·8192·4 bytes; 8-bit: codes + scales.
    tx32 = optx.galore(1e-2, rank=16, eps=1e-8)
    saved = optx.tree_utils.state_bytes(tx32, params) - optx.tree_utils.state_bytes(tx, params)
    assert saved == 2 * 8192 * 4 - (2 * 8192 + 2 * 32 * 4) + 4  # + the decay counter


# ----------------------------------------------------------------------------
# Memory: the state each method allocates (GPT-style tree)
# ----------------------------------------------------------------------------


def _gpt(vocab: int = 1000, d: int = 128, layers: int = 4) -> dict[str, Any]:
    f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    return {
        "embed": {"embedding": f(vocab, d)},
        "blocks": {
            "attn": {"qkv": {"kernel": f(layers, d, 3 * d)}, "proj": {"kernel": f(layers, d, d)}},
            "mlp": {"up": {"kernel": f(layers, d, 4 * d)}, "down": {"kernel": f(layers, 4 * d, d)}},
            "ln": {"scale": f(layers, d)},
        },
        "lm_head": {"kernel": f(d, vocab)},
    }


def test_memory_claims_on_a_gpt_tree() -> None:
    params = _gpt()
    adamw = optx.tree_utils.state_bytes(optax.adamw(1e-3), params)
    assert optx.tree_utils.state_bytes(optx.adamw_8bit(1e-3), params) <= 0.27 * adamw
    mini = optx.tree_utils.state_bytes_by_group(optx.apollo_mini(1e-2), params, per_param=True)
    assert mini["matrix"] < 0.1  # the paper's SGD-level memory claim
    # Exact APOLLO-Mini matrix state: per (m, n) matrix 2·max + min floats (moments,
    # projection) + a limiter norm; per leaf a PRNG key; 5 int32 counters (subspace,
    # Adam, limiter, bias correction, decay).
    d, layers = 128, 4
    shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]
    expected = sum(layers * (2 * max(s) + min(s) + 1) * 4 + 8 for s in shapes) + 5 * 4
    by = optx.tree_utils.state_bytes_by_group(optx.apollo_mini(1e-2), params)
    assert by["matrix"] == expected
    # GaLore rank r: moments r·max(m, n), projector min(m, n)·r per matrix.
    r = 16
    galore = optx.tree_utils.state_bytes_by_group(optx.galore(1e-2, rank=r), params)
    expected = sum(layers * (2 * r * max(s) + r * min(s)) * 4 for s in shapes) + 3 * 4
    assert galore["matrix"] == expected


def test_bad_alias_arguments() -> None:
    with pytest.raises(TypeError, match="`learning_rate`"):
        optx.galore(None)
    with pytest.raises(ValueError):
        optx.galore(1e-2, projection="qr")
    with pytest.raises(ValueError):
        optx.galore(1e-2, rank=0)
    with pytest.raises(ValueError):
        optx.apollo(1e-2, scale=-1.0)
    with pytest.raises(ValueError):
        optx.apollo(1e-2, scale_type="row")
    with pytest.raises(ValueError):
        optx.frugal(1e-3, projection="dct")
    with pytest.raises(ValueError):
        optx.frugal(1e-3, density=1.5)
    with pytest.raises(ValueError):
        optx.frugal(1e-3, inactive_update_rule="adam")
    with pytest.raises(ValueError):
        optx.dct_adamw(1e-3, update_proj_gap=0)
    with pytest.raises(ValueError):
        optx.adamw_8bit(1e-3, block_size=0)
    with pytest.raises(TypeError):
        optx.lion_8bit(1e-4, full_precision=1)


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamw_8bit_full_precision_leaves_are_optax_adamw(nesterov: bool) -> None:
    """Leaves below ``min_size`` keep full-precision moments: there
    ``adamw_8bit`` is ``optax.adamw`` with the same arguments, ``nesterov``
    (optax's keyword) included."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)}
    kwargs = dict(weight_decay=0.1, nesterov=nesterov)
    txs = [optx.adamw_8bit(1e-2, **kwargs), optax.adamw(1e-2, **kwargs)]
    states = [tx.init(params) for tx in txs]
    for _ in range(4):
        g = {"w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)}
        (u, states[0]), (ref, states[1]) = (tx.update(g, s, params) for tx, s in zip(txs, states))
        np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(ref["w"]), rtol=1e-6, atol=1e-9)
        params = optax.apply_updates(params, ref)


@pytest.mark.parametrize("name", ["galore", "galore_8bit", "apollo"])
def test_default_projector_refresh_period_is_200(name: str) -> None:
    """GaLore's and APOLLO's official ``update_proj_gap`` 200: without the argument the
    projector is kept at step 199 and recomputed at step 200."""
    r = np.random.default_rng(0)
    params = {"hidden": {"kernel": jnp.zeros((6, 8))}}
    g1, g2 = (
        {"hidden": {"kernel": jnp.asarray(r.normal(size=(6, 8)), jnp.float32)}} for _ in range(2)
    )
    tx = getattr(optx, name)(1e-2, rank=2)

    def projectors(state: object) -> list[jax.Array]:
        found = []
        has = lambda x: hasattr(x, "projector")  # noqa: E731
        jax.tree.map(lambda x: found.append(x.projector) if has(x) else None, state, is_leaf=has)
        return jax.tree.leaves(found)

    _, state = tx.update(g1, tx.init(params), params)
    before = projectors(state)
    assert before
    for step, refreshed in ((199, False), (200, True)):
        at = optax.tree_utils.tree_set(state, count=jnp.asarray(step, jnp.int32))
        _, new = tx.update(g2, at, params)
        changed = [not np.allclose(a, b) for a, b in zip(before, projectors(new))]
        assert changed == [refreshed] * len(before), step


@pytest.mark.parametrize(
    ("name", "rank"), [("galore", 128), ("galore_8bit", 128), ("apollo", 256), ("dct_adamw", 128)]
)
def test_default_rank(name: str, rank: int) -> None:
    """The documented default ranks (GaLore 128, APOLLO 256, DCT-AdamW 128): a matrix
    whose smaller side is ``rank`` goes to the fallback; one side longer, it is projected
    to ``rank`` rows (abstract ``init``, nothing compiled)."""
    tx = getattr(optx, name)(1e-3)
    for n, projected in ((rank, False), (rank + 1, True)):
        params = {"hidden": {"kernel": jax.ShapeDtypeStruct((n, rank + 8), jnp.float32)}}
        matrix = jax.eval_shape(tx.init, params).inner_states["matrix"]
        shapes = [x.shape for x in jax.tree.leaves(matrix)]
        moments = [s for s in shapes if len(s) == 3 and s[-1] == rank + 8]
        assert moments == ([(1, rank, rank + 8)] * 2 if projected else []), (n, shapes)


@pytest.mark.parametrize(
    "make",
    [
        # DCT-AdamW's bias leaf: the PyTorch-form AdamW fallback (``torch_adamw``: exact
        # ``1 − βᵗ``, ε on the corrected ``√v̂``).
        lambda lr, b1, b2, eps: optx.dct_adamw(lr, b1, b2, eps, weight_decay=0.0),
        # GaLore-8bit's leaf below ``min_size`` (kept in full precision): optax-form Adam.
        lambda lr, b1, b2, eps: optx.galore_8bit(lr, b1=b1, b2=b2, eps=eps),
    ],
    ids=["dct_adamw", "galore_8bit"],
)
def test_fallback_adam_uses_the_betas_passed(
    make: Callable[..., optax.GradientTransformation],
) -> None:
    """A vector leaf goes to the fallback Adam with the β₁, β₂, ε passed: float64
    reference, distinct non-default betas and varying gradients (with constant ones Adam's
    step does not depend on β)."""
    lr, b1, b2, eps = 0.1, 0.8, 0.95, 1e-3
    tx = make(lr, b1, b2, eps)
    r = np.random.default_rng(6)
    params = {"bias": jnp.zeros(6)}
    state, update = tx.init(params), jax.jit(tx.update)
    m = v = np.zeros(6)
    for t in range(1, 5):
        g = r.normal(size=6)
        u, state = update({"bias": jnp.asarray(g, jnp.float32)}, state, params)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        want = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(
            np.asarray(u["bias"]), want, rtol=2e-5, atol=1e-7, err_msg=f"step {t}"
        )
