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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"


def _golden(case: str) -> tuple[dict[str, Any], Any]:
    meta = json.loads((DATA / f"{case}.json").read_text())
    return meta, np.load(DATA / f"{case}.npz")


def _flax(x: np.ndarray) -> np.ndarray:
    """PyTorch (out, in) -> Flax (in, out); vectors unchanged."""
    return x.T if x.ndim == 2 else x


def _run_golden(tx: optax.GradientTransformation, meta: dict[str, Any], z: Any) -> None:
    names = meta["param_order"]
    params = {n: jnp.asarray(_flax(z[f"init/{n}"])) for n in names}
    state = tx.init(params)
    step = jax.jit(tx.update)
    atol = meta["tolerance"]["params_after_atol"]
    for t in range(meta["T"]):
        grads = {n: jnp.asarray(_flax(z[f"grads/{n}"][t])) for n in names}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        for n in names:
            np.testing.assert_allclose(
                np.asarray(params[n]),
                _flax(z[f"params_after/{n}"][t]),
                rtol=0,
                atol=atol,
                err_msg=f"{meta['case_id']}: {n} after step {t}",
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
    meta, z = _golden("galore__public")
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
    flat_index = {n: i for i, n in enumerate(sorted(params))}  # mu leaves: b, w1, w8
    mu_key, nu_key = str(flat_index[n8] + 1), str(flat_index[n8] + 1 + len(params))
    assert set(state[0].absmax) == {mu_key, nu_key}
    step = jax.jit(tx.update)
    atol = meta["tolerance"]["params_after_atol"]
    mismatched = total = 0
    dynamic_signed = optx.dynamic_map(signed=True).astype(np.float64)
    for t in range(meta["T"]):
        if t > 0:
            qs = state[0]
            adam = qs.inner_state
            mu = {**adam.mu, n8: jnp.asarray(z[f"aux/state1_per_step/{n8}"][t - 1])}
            nu = {**adam.nu, n8: jnp.asarray(z[f"aux/state2_per_step/{n8}"][t - 1])}
            absmax = {
                mu_key: jnp.asarray(z[f"aux/absmax1_per_step/{n8}"][t - 1]),
                nu_key: jnp.asarray(z[f"aux/absmax2_per_step/{n8}"][t - 1]),
            }
            state = (qs._replace(inner_state=adam._replace(mu=mu, nu=nu), absmax=absmax),
                     *state[1:])
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
    # The reference rounds ~2% of codes to a neighbour of the nearest one.
    assert mismatched / total < 0.05
