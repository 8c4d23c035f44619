"""Tests for examples/training.py: schedule, traced hyper-parameters, divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest

import optx
from examples import data, training


@pytest.fixture(scope="module")
def task(tiny_corpus: data.CharCorpus) -> training.Task:
    return training.lm_task(
        d_model=16,
        n_layers=2,
        n_heads=2,
        seq_len=16,
        batch_size=4,
        eval_batches=2,
        corpus=tiny_corpus,
    )


def test_lr_shape_warms_up_then_decays_to_zero() -> None:
    s = training.lr_shape(100, 10)
    assert float(s(0)) == 0.0
    assert np.isclose(float(s(10)), 1.0)
    assert 0.0 < float(s(55)) < 1.0
    assert np.isclose(float(s(100)), 0.0, atol=1e-7)


def test_traced_sweep_compiles_once_and_matches_static_build(task: training.Task) -> None:
    spec = optx.get_optimizer("muon")
    traced = training.Trainer(task, spec, steps=6, warmup=2, chunk=3)
    a = training.train(traced, learning_rate=0.02, weight_decay=None, steps=6)
    b = training.train(traced, learning_rate=0.04, weight_decay=None, steps=6)
    assert traced.traced_hparams and a.compile_seconds > 0 and b.compile_seconds == 0.0
    assert len(traced._compiled) == 1
    static = training.Trainer(task, spec, steps=6, warmup=2, chunk=3)
    static.traced_hparams = False
    c = training.train(static, learning_rate=0.04, weight_decay=None, steps=6)
    np.testing.assert_allclose(b.val_loss, c.val_loss, rtol=2e-5)
    assert a.steps == [0, 3, 6] and len(a.train_seconds) == 3
    assert a.val_loss[-1] < a.val_loss[0]
    assert a.state_bytes_per_param > 0 and a.ms_per_step > 0


def test_weight_decay_is_swept_when_asked(task: training.Task) -> None:
    spec = optx.get_optimizer("adamw")
    assert training.takes_weight_decay(spec)
    tr = training.Trainer(task, spec, steps=3, warmup=1, chunk=3, with_weight_decay=True)
    lo = training.train(tr, learning_rate=0.01, weight_decay=0.0, steps=3)
    hi = training.train(tr, learning_rate=0.01, weight_decay=10.0, steps=3)
    assert lo.val_loss[-1] != hi.val_loss[-1]


def test_divergence_is_a_miss(task: training.Task) -> None:
    tr = training.Trainer(task, optx.get_optimizer("adamw"), steps=4, warmup=1, chunk=2)
    # Learning rates are validated finite, so divergence comes from a huge one.
    r = training.train(tr, learning_rate=1e30, weight_decay=None, steps=4)
    assert r.diverged and r.final_val_loss == math.inf


def test_steps_to_target_and_bad_inputs(task: training.Task) -> None:
    r = training.RunResult(
        "x", 1.0, None, [0, 5, 10], [3.0, 2.0, 1.5], [0, 1, 2], [0, 0, 0], 0.0, 8.0
    )
    assert r.steps_to(2.0) == 5 and r.steps_to(1.5) == 10 and r.steps_to(1.0) is None
    tr = training.Trainer(task, optx.get_optimizer("adamw"), steps=5, warmup=1, chunk=2)
    with pytest.raises(ValueError, match="multiple"):
        training.train(tr, learning_rate=1e-3, weight_decay=None, steps=5)
    with pytest.raises(ValueError, match="'cnn' or 'mlp'"):
        training.image_task("resnet")
