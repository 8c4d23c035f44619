"""REX schedules against the paper's profile and pytorch-optimizer's REXScheduler (golden)."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx

DATA = pathlib.Path(__file__).parent / "data"


def _rex_ref(t: np.ndarray, total: int, lr_max: float, lr_min: float) -> np.ndarray:
    z = np.minimum(t / total, 1.0)
    return lr_min + (lr_max - lr_min) * (1 - z) / (0.5 + 0.5 * (1 - z))


def test_rex_matches_paper_profile_and_golden() -> None:
    meta = json.loads((DATA / "rex__public.json").read_text())
    z = np.load(DATA / "rex__public.npz")
    hp = meta["hyperparameters"]
    total, lr_max, lr_min = hp["total_steps"], hp["max_lr"], hp["min_lr"]
    sched = jax.jit(optx.schedules.rex_schedule(lr_max, total, lr_min))
    counts = np.arange(total + 1)
    got = np.asarray(jax.vmap(sched)(jnp.asarray(counts)), np.float64)
    np.testing.assert_allclose(got, _rex_ref(counts, total, lr_max, lr_min), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got, z["lr/profile_t_0_to_total"], rtol=1e-6, atol=1e-12)
    # The torch-scheduler offset: the (k+1)-th step() returns lr(k+1) ...
    np.testing.assert_allclose(got[1:], z["lr/returned_by_step"], rtol=1e-6, atol=1e-12)
    # ... and the optimizer's step c sees min_lr at c = 0, then lr(c).
    torch_loop = np.where(counts[:-1] == 0, lr_min, got[:-1])
    np.testing.assert_allclose(torch_loop, z["lr/used_by_optimizer_step"], rtol=1e-6, atol=1e-12)


def test_rex_after_the_budget_and_midpoint() -> None:
    sched = optx.schedules.rex_schedule(2.0, 10, 0.5)
    assert float(sched(0)) == pytest.approx(2.0)
    assert float(sched(5)) == pytest.approx(0.5 + 1.5 * 2 / 3, rel=1e-6)
    assert float(sched(10)) == pytest.approx(0.5)
    assert float(sched(25)) == pytest.approx(0.5)


def test_warmup_rex() -> None:
    sched = optx.schedules.warmup_rex_schedule(
        0.0, 1.0, warmup_steps=4, decay_steps=14, end_value=0.1
    )
    counts = np.arange(20)
    got = np.array([float(sched(c)) for c in counts])
    warm = counts / 4.0
    rex = _rex_ref(counts - 4.0, 10, 1.0, 0.1)
    np.testing.assert_allclose(got, np.where(counts < 4, warm, rex), rtol=1e-6, atol=1e-7)
    assert optx.schedules.warmup_rex_schedule(0.0, 1.0, 0, 10)(0) == pytest.approx(1.0)


def test_rex_drives_an_optimizer_under_inject_hyperparams() -> None:
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=optx.schedules.rex_schedule(1.0, 4))
    params = jnp.zeros(())
    state = tx.init(params)
    lrs = []
    for _ in range(5):  # sgd's update is −lr·g: the learning rate used by each step
        u, state = tx.update(jnp.ones(()), state, params)
        lrs.append(-float(u))
    np.testing.assert_allclose(lrs, _rex_ref(np.arange(5), 4, 1.0, 0.0), rtol=1e-6, atol=1e-7)


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        optx.schedules.rex_schedule(1.0, 0)
    with pytest.raises(TypeError):
        optx.schedules.rex_schedule(1.0, 10.0)
    with pytest.raises(ValueError):
        optx.schedules.rex_schedule(float("nan"), 10)
    with pytest.raises(ValueError):
        optx.schedules.warmup_rex_schedule(0.0, 1.0, warmup_steps=10, decay_steps=10)


def test_default_end_value_is_zero() -> None:
    """REX decays to η_min = 0 unless told otherwise (the paper's profile, and
    ``optax.warmup_cosine_decay_schedule``'s default): the last step's value is 0."""
    assert float(optx.schedules.rex_schedule(1.0, 10)(10)) == 0.0
    assert float(optx.schedules.warmup_rex_schedule(0.0, 1.0, 4, 14)(14)) == 0.0
