"""The aliases' numeric defaults are the official ones (CONTRIBUTING "Defaults policy").

A default is what most users run: a slip in one (``b2`` 0.999 → 0.99, ε 1e-16 →
1e-8) changes every step of every run that does not pass the argument, and the
reference tests, which pass their hyper-parameters explicitly, cannot see it.
The expected values are written here from the official codes / optax (the
drop-in twins), never read back from optx.
"""

from __future__ import annotations

import optax
import pytest

import optx
from tests.signatures import defaults

# (optimizer, {argument: official default}, source)
OFFICIAL = [
    # Lion: google/automl lion_pytorch.py Lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0).
    ("lion", {"learning_rate": 1e-4, "b1": 0.9, "b2": 0.99, "weight_decay": 0.0}),
    # bitsandbytes Lion8bit: the same defaults as the full-precision Lion.
    ("lion_8bit", {"learning_rate": 1e-4, "b1": 0.9, "b2": 0.99, "weight_decay": 0.0}),
    # Lion-K (arXiv 2310.05898) uses Lion's betas.
    ("lion_kappa", {"b1": 0.9, "b2": 0.99}),
    # clovaai/AdamP AdamP(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, delta=0.1, wd_ratio=0.1).
    (
        "adamp",
        {
            "learning_rate": 1e-3,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "delta": 0.1,
            "wd_ratio": 0.1,
        },
    ),
    # clovaai/AdamP SGDP(momentum=0, dampening=0, weight_decay=0, eps=1e-8, delta=0.1, wd_ratio=0.1).
    (
        "sgdp",
        {
            "momentum": 0.0,
            "dampening": 0.0,
            "weight_decay": 0.0,
            "eps": 1e-8,
            "delta": 0.1,
            "wd_ratio": 0.1,
        },
    ),
    # adabelief-pytorch 0.2.1 AdaBelief(lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0).
    (
        "adabelief",
        {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-16, "weight_decay": 0.0},
    ),
    # ExAdam (arXiv 2412.20302): Adam's (0.9, 0.999, 1e-8), no decay.
    ("exadam", {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
    # SGD-SaI 1.0.3 SGD_sai(lr=1e-2, momentum=0.9, eps=1e-8, weight_decay=1e-2).
    ("sgd_sai", {"learning_rate": 1e-2, "b1": 0.9, "eps": 1e-8, "weight_decay": 1e-2}),
    # AGVM's official hook: momentum (the scale EMA) 0.97; the paper's SGD: momentum 0.9,
    # coupled decay 1e-4.
    ("agvm_sgd", {"agvm_decay": 0.97, "momentum": 0.9, "weight_decay": 1e-4}),
    # Liuhong99/Sophia SophiaG(lr=1e-4, betas=(0.965, 0.99), rho=0.04, weight_decay=1e-1),
    # denominator ε 1e-15, the training script's gradient clip 1.0.
    (
        "sophia_g",
        {
            "learning_rate": 1e-4,
            "b1": 0.965,
            "b2": 0.99,
            "eps": 1e-15,
            "weight_decay": 0.1,
            "gamma": 0.04,
            "gnb_clip_norm": 1.0,
        },
    ),
    # Sophia-H: SophiaG's betas; the paper's γ = 0.01 for the Hutchinson estimator.
    ("sophia_h", {"b1": 0.965, "b2": 0.99, "gamma": 0.01}),
    # amirgholami/adahessian Adahessian(lr=0.15, betas=(0.9, 0.999), eps=1e-4,
    # weight_decay=0, hessian_power=1).
    (
        "adahessian",
        {
            "learning_rate": 0.15,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-4,
            "weight_decay": 0.0,
            "hessian_power": 1.0,
        },
    ),
    # IST-DASLab/M-FAC: lr=1e-3, momentum=0, weight_decay=0, damp=1e-5.
    ("mfac", {"learning_rate": 1e-3, "b1": 0.0, "weight_decay": 0.0, "damp": 1e-5}),
    # GaLore's GaLoreAdamW (transformers' AdamW): betas (0.9, 0.999), eps 1e-6, no decay,
    # scale 0.25; GaLoreAdamW8bit (bitsandbytes): eps 1e-8.
    ("galore", {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "weight_decay": 0.0, "scale": 0.25}),
    ("galore_8bit", {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "scale": 0.25}),
    # APOLLO: AdamW's eps 1e-6, scale 1 (APOLLO) / 128 (APOLLO-Mini), norm-growth limit 1.01.
    (
        "apollo",
        {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "scale": 1.0, "norm_growth_limit": 1.01},
    ),
    (
        "apollo_mini",
        {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "scale": 128.0, "norm_growth_limit": 1.01},
    ),
    # FRUGAL and DCT-AdamW: Adam's (0.9, 0.999, 1e-8).
    ("frugal", {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
    ("dct_adamw", {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
    # Muon: Keller Jordan's (lr 0.02, momentum 0.95, Nesterov); NorMuon's official
    # neuron-wise beta2 0.95, eps 1e-10 and Moonlight's RMS 0.2.
    ("muon", {"learning_rate": 0.02, "b1": 0.95, "weight_decay": 0.0, "nesterov": True}),
    (
        "normuon",
        {
            "learning_rate": 0.02,
            "b1": 0.95,
            "b2": 0.95,
            "eps": 1e-10,
            "rms": 0.2,
            "weight_decay": 0.0,
            "nesterov": True,
        },
    ),
    # AuON: the paper's LM runs (0.055, beta 0.95, eps 1e-8); ROOT's official settings.
    ("auon", {"learning_rate": 0.055, "b1": 0.95, "eps": 1e-8, "weight_decay": 0.0}),
    ("hybrid_auon", {"learning_rate": 0.055, "b1": 0.95, "eps": 1e-8, "weight_decay": 0.0}),
    (
        "root",
        {"learning_rate": 1e-3, "b1": 0.95, "weight_decay": 0.1, "quantile": 0.9, "clip_eps": 1e-9},
    ),
    # SOAP's official (3e-3, betas (0.95, 0.95), eps 1e-8, decay 0.01); Conda's and
    # COSMOS's class defaults.
    ("soap", {"learning_rate": 3e-3, "b1": 0.95, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.01}),
    ("conda", {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "scale": 1.0}),
    (
        "cosmos",
        {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "lr_ratio": 0.1, "gamma": 0.2},
    ),
    # LoRA-Pro's DeepSpeed adjustment: ridge delta 1e-8, its Adam's hard-coded
    # (0.9, 0.999) and 1e-8; SoRA: xi 1e-3 (sparse_lambda_2), the gate Adam
    # (0.9, 0.999, eps 1e-6, no decay).
    ("lora_pro", {"delta": 1e-8, "b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    (
        "sora",
        {
            "threshold": 1e-3,
            "gate_b1": 0.9,
            "gate_b2": 0.999,
            "gate_eps": 1e-6,
            "gate_weight_decay": 0.0,
        },
    ),
]


@pytest.mark.parametrize(("name", "expected"), OFFICIAL, ids=[n for n, _ in OFFICIAL])
def test_official_defaults(name: str, expected: dict[str, float]) -> None:
    got = defaults(getattr(optx, name))
    assert {k: got.get(k) for k in expected} == expected


@pytest.mark.parametrize("name", ["adamw", "adamw_8bit"])
def test_adamw_defaults_are_optax_adamw(name: str) -> None:
    """``adamw`` and ``adamw_8bit`` are drop-ins for ``optax.adamw``: same defaults."""
    ref = defaults(optax.adamw)
    got = defaults(getattr(optx, name))
    for k in ("b1", "b2", "eps", "eps_root", "weight_decay"):
        assert got[k] == ref[k], k


def test_lion_betas_are_optax_lion() -> None:
    ref, got = defaults(optax.lion), defaults(optx.lion)
    assert (got["b1"], got["b2"]) == (ref["b1"], ref["b2"])


@pytest.mark.parametrize("name", ["mkor", "mkor_h"])
def test_mkor_defaults_are_the_primitives(name: str) -> None:
    """The aliases document their MKOR arguments as ``optx.scale_by_mkor``'s: the same
    defaults; their inner Adam's are optax's."""
    prim, adam = defaults(optx.scale_by_mkor), defaults(optax.adam)
    got = defaults(getattr(optx, name))
    for k in ("factor_decay", "stabilization_factor", "reset_threshold", "clip_value"):
        assert got[k] == prim[k], k
    assert got["switch_threshold"] == prim["switch_threshold"]
    assert (got["b1"], got["b2"], got["eps"]) == (adam["b1"], adam["b2"], adam["eps"])
