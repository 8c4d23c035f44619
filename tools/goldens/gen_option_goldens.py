"""Generates tests/data/options__<method>.{json,npz} (adabelief, adamp, sgdp, lion, exadam,
sgd_sai, mfac, normuon): golden trajectories of the OFFICIAL PyTorch classes over their
options, replayed by tests/aliases/test_option_goldens.py.

Not run by the test suite (torch is not a test dependency); importing this
module only defines the case list: everything that needs torch runs under ``main()``.

Usage (any Python with torch and numpy; run from the repository root)::

    R=/tmp/optx_option_refs; mkdir -p $R
    git -C <clone of juntang-zhuang/Adabelief-Optimizer> archive 2855178 \\
        pypi_packages/adabelief_pytorch0.2.1/adabelief_pytorch/AdaBelief.py | tar -x -C $R
    git -C <clone of clovaai/AdamP> archive 7f6f038 adamp/adamp.py adamp/sgdp.py | tar -x -C $R
    git -C <clone of lucidrains/lion-pytorch> archive 6a74fdc lion_pytorch/lion_pytorch.py \\
        | tar -x -C $R
    for c in 989d7b6 9ff8463; do mkdir -p $R/exadam-$c
        git -C <clone of AhmedMostafa16/EXAdam> archive $c exadam.py | tar -x -C $R/exadam-$c; done
    for c in e213080 3edf2c4 6c13d90; do mkdir -p $R/sgd_sai-$c
        git -C <clone of AnonymousAlethiometer/SGD_SaI> archive $c sgd_sai/sgd_sai.py \\
            | tar -x -C $R/sgd_sai-$c; done
    git -C <clone of IST-DASLab/M-FAC> archive 8116367 optim.py | tar -x -C $R
    git -C <clone of zichongli5/NorMuon> archive d45c9a4 normuon.py | tar -x -C $R
    python tools/goldens/gen_option_goldens.py --official $R --out tests/data [--methods ...]

The official files are imported unmodified by file path from ``--official`` (no official
code is copied here). AdaBelief.py imports ``tabulate``/``colorama`` at module level only to
print its change log; when they are missing, empty stand-ins are registered while the file is
imported (the class is built with ``print_change_log=False``, so they are never used). Run-time
shims that leave the files untouched, listed per reference in the JSON (``shims``):

* EXAdam HEAD uses ``np`` without importing numpy: ``numpy`` is put into the module's namespace
  before it runs (v1 imports it itself).
* NorMuon's Newton-Schulz casts to bfloat16: ``zeropower_via_newtonschulz5`` is re-created from
  its own source with ``X = G.bfloat16()`` -> ``X = G.clone()`` (float64 throughout).
* M-FAC: ``torch.lu(..., pivot=False)`` (not implemented on CPU) is served, while the class is
  built and steps, by an unblocked no-pivot LU in the same dtype (the matrix is SPD);
  ``nn.parallel.parallel_apply`` (needs CUDA) by a sequential loop; ``opt.hinv`` is rebuilt
  right after construction as the file's own ``HInvFastUpMulti`` with a float64 (not float32)
  buffer.
* SGD-SaI prints a banner on its warm-up step: stdout is silenced while it steps.

Problem: every case is float64, T=12 steps (10 for EXAdam / SGD-SaI / M-FAC / NorMuon), one
seed, PyTorch-layout leaves (Linear (out, in), conv (out, in, kh, kw), bias (n,)). Gradients
come from a noisy quadratic that depends on the current weights (``GradGen``); the gradients
actually fed are recorded, so the replay needs no torch. ``radial`` gradients have each output
channel's radial part removed, which makes AdamP/SGDP take their channel projection;
``near_radial`` ones keep 5% of it, so that ``delta`` decides between no projection, the
channel and the layer view.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import json
import math
import pathlib
import sys
import types

import numpy as np

T = 12
DTYPE = "float64"
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}
NEAR_RADIAL_KEEP = 0.05  # 'near_radial' keeps this fraction of each row's radial part
SHAPES = {"tall": [12, 5], "wide": [4, 14], "conv": [4, 3, 2, 2], "bias": [4]}
SHAPES_ZERO = {"tall": [12, 5], "zmat": [4, 14], "conv": [4, 3, 2, 2], "bias": [4]}

REFS = {
    "adabelief": {
        "repo": "juntang-zhuang/Adabelief-Optimizer",
        "commit": "2855178eff6776762793f915ce2c615f776a1e4b",
        "path": "pypi_packages/adabelief_pytorch0.2.1/adabelief_pytorch/AdaBelief.py",
        "class": "AdaBelief",
        "fixed_options": {"print_change_log": False},
    },
    "adamp": {
        "repo": "clovaai/AdamP",
        "commit": "7f6f0383ff6ad3839d5c7f79f1db0a44c5a12fdb",
        "path": "adamp/adamp.py",
        "class": "AdamP",
        "fixed_options": {},
    },
    "sgdp": {
        "repo": "clovaai/AdamP",
        "commit": "7f6f0383ff6ad3839d5c7f79f1db0a44c5a12fdb",
        "path": "adamp/sgdp.py",
        "class": "SGDP",
        "fixed_options": {},
    },
    "lion": {
        "repo": "lucidrains/lion-pytorch",
        "commit": "6a74fdc0ba572ab5683dc0270c66c20ecbc02d09",
        "path": "lion_pytorch/lion_pytorch.py",
        "class": "Lion",
        "fixed_options": {},
    },
}
_NP_SHIM = "numpy injected as `np` into the module namespace before it runs (HEAD lacks the import)"
for _key, _commit, _shims in (
    ("exadam", "989d7b6c74625666095f09d05d25305847fe7f1d", [_NP_SHIM]),
    ("exadam_v1", "9ff8463903924bf5f71efb0b5e49a95f0edc2c4c", []),
):
    REFS[_key] = {
        "repo": "AhmedMostafa16/EXAdam",
        "commit": _commit,
        "dir": f"exadam-{_commit[:7]}",
        "path": "exadam.py",
        "class": "EXAdam",
        "fixed_options": {},
        "shims": _shims,
    }
for _key, _commit in (
    ("sgd_sai_1.0.3", "e21308038ddb46b98b1cc61550bf182fd454de18"),
    ("sgd_sai_1.0.4", "3edf2c467294c5820e54313252ecf58ca215e0a9"),
    ("sgd_sai_1.1.0", "6c13d903414379de7ee61681112259a4b920b6cd"),
):
    REFS[_key] = {
        "repo": "AnonymousAlethiometer/SGD_SaI",
        "commit": _commit,
        "dir": f"sgd_sai-{_commit[:7]}",
        "path": "sgd_sai/sgd_sai.py",
        "class": "SGD_sai",
        "fixed_options": {},
        "shims": ["stdout silenced while stepping (the warm-up step prints a banner)"],
    }
REFS["mfac"] = {
    "repo": "IST-DASLab/M-FAC",
    "commit": "8116367fb537b48484e2e4bde24f11f42b117f8a",
    "path": "optim.py",
    "class": "MFAC",
    "fixed_options": {"moddev": "cpu", "optdev": "cpu"},
    "shims": [
        "torch.lu(A, pivot=False) is not implemented on CPU: while the class is built and steps, "
        "torch.lu with pivot=False is an unblocked no-pivot Doolittle LU in A's dtype "
        "(A = lambda*GG^T + m*I "
        "is SPD)",
        "torch.nn.parallel.parallel_apply (needs CUDA) is a sequential loop while the class is "
        "built and steps",
        "opt.hinv rebuilt right after construction as the file's HInvFastUpMulti(torch.zeros("
        "(ngrads, d), dtype=float64), dev='cpu', gpus=['cpu'], damp=damp): the class hard-codes "
        "a float32 buffer",
    ],
}
_NS_SHIM = (
    "zeropower_via_newtonschulz5 re-created from its own source with 'X = G.bfloat16()' "
    "replaced by 'X = G.clone()' (float64 Newton-Schulz)"
)
for _key, _cls in (
    ("normuon", "SingleDeviceNorMuon"),
    ("normuon_aux", "SingleDeviceNorMuonWithAuxAdam"),
):
    REFS[_key] = {
        "repo": "zichongli5/NorMuon",
        "commit": "d45c9a4280d758e2cf0b2b8333765d040e953937",
        "path": "normuon.py",
        "class": _cls,
        "fixed_options": {},
        "shims": [_NS_SHIM],
    }

FETCH = (
    "R=/tmp/optx_option_refs && mkdir -p $R"
    " && git -C <clone of juntang-zhuang/Adabelief-Optimizer> archive 2855178"
    " pypi_packages/adabelief_pytorch0.2.1/adabelief_pytorch/AdaBelief.py | tar -x -C $R"
    " && git -C <clone of clovaai/AdamP> archive 7f6f038 adamp/adamp.py adamp/sgdp.py"
    " | tar -x -C $R"
    " && git -C <clone of lucidrains/lion-pytorch> archive 6a74fdc lion_pytorch/lion_pytorch.py"
    " | tar -x -C $R"
    " && for c in 989d7b6 9ff8463; do mkdir -p $R/exadam-$c && git -C <clone of"
    " AhmedMostafa16/EXAdam> archive $c exadam.py | tar -x -C $R/exadam-$c; done"
    " && for c in e213080 3edf2c4 6c13d90; do mkdir -p $R/sgd_sai-$c && git -C <clone of"
    " AnonymousAlethiometer/SGD_SaI> archive $c sgd_sai/sgd_sai.py | tar -x -C $R/sgd_sai-$c;"
    " done"
    " && git -C <clone of IST-DASLab/M-FAC> archive 8116367 optim.py | tar -x -C $R"
    " && git -C <clone of zichongli5/NorMuon> archive d45c9a4 normuon.py | tar -x -C $R"
)
T_NEW = 10  # EXAdam / SGD-SaI / M-FAC / NorMuon cases
SCRIPT = "tools/goldens/gen_option_goldens.py"


def _case(
    cid,
    method,
    seed,
    official,
    optx_kwargs,
    grad_kind="quad",
    zero=(),
    *,
    ref=None,
    shapes=None,
    steps=T,
    grad_scale=0.1,
):
    return {
        "id": cid,
        "method": method,
        "ref": ref or method,
        "seed": seed,
        "official_options": official,
        "optx": {"factory": method, "kwargs": optx_kwargs},
        "grad_kind": grad_kind,
        "zero_init": list(zero),
        "shapes": shapes or (SHAPES_ZERO if zero else SHAPES),
        "T": steps,
        "grad_scale": grad_scale,
    }


def build_cases() -> list[dict]:
    cases = []
    adabelief = [
        ("default", {}, {}),
        ("no_rectify", {"rectify": False}, {"rectify": False}),
        ("wd_decoupled", {"weight_decay": 0.1}, {"weight_decay": 0.1}),
        (
            "wd_l2",
            {"weight_decay": 0.1, "weight_decouple": False},
            {"weight_decay": 0.1, "weight_decouple": False},
        ),
        (
            "wd_fixed",
            {"weight_decay": 0.01, "fixed_decay": True},
            {"weight_decay": 0.01, "fixed_decay": True},
        ),
        ("amsgrad", {"amsgrad": True}, {"amsgrad": True}),
        (
            "amsgrad_no_rectify",
            {"amsgrad": True, "rectify": False},
            {"amsgrad": True, "rectify": False},
        ),
        (
            "no_degenerate_wd",
            {"degenerated_to_sgd": False, "weight_decay": 0.1},
            {"degenerated_to_sgd": False, "weight_decay": 0.1},
        ),
        (
            "eps1e-8_betas",
            {"eps": 1e-8, "betas": [0.8, 0.99]},
            {"eps": 1e-8, "b1": 0.8, "b2": 0.99},
        ),
    ]
    for i, (name, off, kw) in enumerate(adabelief):
        cases.append(
            _case(
                f"adabelief_{name}",
                "adabelief",
                5101 + i,
                {"lr": 0.01, **off},
                {"learning_rate": 0.01, **kw},
            )
        )
    adamp = [
        ("wd", "quad", {"weight_decay": 0.01}, ()),
        ("wd_radial", "radial", {"weight_decay": 0.01}, ()),
        ("nesterov_radial", "radial", {"weight_decay": 0.05, "nesterov": True}, ()),
        (
            "delta_wd_ratio",
            "near_radial",
            {"weight_decay": 0.05, "delta": 0.5, "wd_ratio": 0.3},
            (),
        ),
        ("zero_init", "quad", {"weight_decay": 0.01}, ("zmat",)),
    ]
    for i, (name, gk, opts, zero) in enumerate(adamp):
        cases.append(
            _case(
                f"adamp_{name}",
                "adamp",
                5201 + i,
                {"lr": 0.01, **opts},
                {"learning_rate": 0.01, **opts},
                grad_kind=gk,
                zero=zero,
            )
        )
    sgdp = [
        ("nesterov_radial", "radial", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
        ("heavy_ball", "quad", {"momentum": 0.9, "weight_decay": 1e-3}),
        (
            "dampening_near_radial",
            "near_radial",
            {
                "momentum": 0.5,
                "dampening": 0.1,
                "weight_decay": 1e-2,
                "delta": 0.3,
                "wd_ratio": 0.5,
            },
        ),
        ("plain_wd", "quad", {"weight_decay": 1e-2}),
    ]
    for i, (name, gk, opts) in enumerate(sgdp):
        cases.append(
            _case(
                f"sgdp_{name}",
                "sgdp",
                5301 + i,
                {"lr": 0.1, **opts},
                {"learning_rate": 0.1, **opts},
                grad_kind=gk,
            )
        )
    cases.append(
        _case(
            "lion_wd_betas",
            "lion",
            5401,
            {"lr": 1e-3, "betas": [0.95, 0.98], "weight_decay": 0.1},
            {"learning_rate": 1e-3, "b1": 0.95, "b2": 0.98, "weight_decay": 0.1},
        )
    )
    # lion-pytorch's decoupled_weight_decay=True divides weight_decay by the INITIAL lr before
    # its usual p *= 1 - lr * wd: the optx weight_decay is 3e-5 / 3e-4 = 0.1.
    cases.append(
        _case(
            "lion_decoupled_wd",
            "lion",
            5402,
            {"lr": 3e-4, "weight_decay": 3e-5, "decoupled_weight_decay": True},
            {"learning_rate": 3e-4, "weight_decay": 0.1},
        )
    )
    cases += _new_method_cases()
    return cases


def _new_method_cases() -> list[dict]:
    cases = []
    # EXAdam: HEAD (arXiv v2) is optx's dynamic_step_size=False; commit 9ff8463 (v1) scales the
    # step by ln(sqrt(2) sqrt(t + 1)), optx's default dynamic_step_size=True.
    exadam = [
        ("head", "exadam", {}, {"dynamic_step_size": False}),
        (
            "head_betas_eps_wd",
            "exadam",
            {"betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1},
            {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "weight_decay": 0.1, "dynamic_step_size": False},
        ),
        ("v1_wd", "exadam_v1", {"weight_decay": 0.1}, {"weight_decay": 0.1}),
        ("v1", "exadam_v1", {}, {}),
    ]
    for i, (name, ref, off, kw) in enumerate(exadam):
        cases.append(
            _case(
                f"exadam_{name}",
                "exadam",
                5501 + i,
                {"lr": 0.01, **off},
                {"learning_rate": 0.01, **kw},
                ref=ref,
                steps=T_NEW,
            )
        )
    # SGD-SaI: 1.0.3 (gsnr), 1.0.4 (gsnr / max gsnr of the group), 1.1.0 (1 / sqrt(numel)).
    sgd_sai = [
        ("1.0.3_defaults", "sgd_sai_1.0.3", {}, {}),
        (
            "1.0.3_momentum_eps_wd",
            "sgd_sai_1.0.3",
            {"lr": 0.003, "momentum": 0.5, "eps": 1e-6, "weight_decay": 0.1},
            {"learning_rate": 0.003, "b1": 0.5, "eps": 1e-6, "weight_decay": 0.1},
        ),
        (
            "1.0.4_gsnr_max",
            "sgd_sai_1.0.4",
            {"lr": 0.01, "momentum": 0.8, "weight_decay": 0.05},
            {"learning_rate": 0.01, "b1": 0.8, "weight_decay": 0.05, "scale_rule": "gsnr_max"},
        ),
        (
            "1.1.0_sqrt_numel",
            "sgd_sai_1.1.0",
            {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.01},
            {"learning_rate": 0.001, "b1": 0.9, "weight_decay": 0.01, "scale_rule": "sqrt_numel"},
        ),
    ]
    for i, (name, ref, off, kw) in enumerate(sgd_sai):
        cases.append(
            _case(
                f"sgd_sai_{name}",
                "sgd_sai",
                5601 + i,
                off,
                kw,
                ref=ref,
                steps=T_NEW,
                grad_scale=0.01,
            )
        )
    # M-FAC: one flattened vector over all leaves; a ring buffer of ngrads gradients (T_NEW > 4
    # and 5, so those cases wrap around).
    mfac = [
        ("m8", {"lr": 1e-3, "ngrads": 8}, {"learning_rate": 1e-3, "num_grads": 8}),
        (
            "m4_wrap_momentum",
            {"lr": 1e-3, "ngrads": 4, "momentum": 0.9},
            {"learning_rate": 1e-3, "num_grads": 4, "b1": 0.9},
        ),
        (
            "m5_wd_damp_momentum",
            {"lr": 1e-2, "ngrads": 5, "weight_decay": 0.01, "damp": 1e-3, "momentum": 0.5},
            {"learning_rate": 1e-2, "num_grads": 5, "weight_decay": 0.01, "damp": 1e-3, "b1": 0.5},
        ),
    ]
    for i, (name, off, kw) in enumerate(mfac):
        cases.append(_case(f"mfac_{name}", "mfac", 5701 + i, off, kw, steps=T_NEW))
    # NorMuon: SingleDeviceNorMuon takes matrices / convs only; the aux-Adam class takes groups.
    mats = {k: SHAPES[k] for k in ("tall", "wide")}
    normuon = [
        ("defaults", "normuon", mats, {}, {}),
        (
            "lr_betas_wd",
            "normuon",
            mats,
            {"lr": 0.03, "momentum": 0.9, "beta2": 0.8, "weight_decay": 0.1},
            {"learning_rate": 0.03, "b1": 0.9, "b2": 0.8, "weight_decay": 0.1},
        ),
        (
            "conv_torch_wd",
            "normuon",
            {**mats, "conv": SHAPES["conv"]},
            {"weight_decay": 0.05},
            {"weight_decay": 0.05, "conv_view": "torch"},
        ),
        (
            "aux_adam",
            "normuon_aux",
            {**mats, "bias": SHAPES["bias"]},
            {
                "param_groups": [
                    {
                        "params": ["tall", "wide"],
                        "use_muon": True,
                        "lr": 0.02,
                        "weight_decay": 0.05,
                    },
                    {
                        "params": ["bias"],
                        "use_muon": False,
                        "lr": 3e-3,
                        "betas": [0.8, 0.99],
                        "eps": 1e-10,
                        "weight_decay": 0.05,
                    },
                ]
            },
            {
                "learning_rate": 0.02,
                "weight_decay": 0.05,
                "adam_learning_rate": 3e-3,
                "adam_b1": 0.8,
                "adam_b2": 0.99,
                "adam_eps": 1e-10,
                "adam_weight_decay": 0.05,
            },
        ),
    ]
    for i, (name, ref, shapes, off, kw) in enumerate(normuon):
        cases.append(
            _case(
                f"normuon_{name}",
                "normuon",
                5801 + i,
                off,
                kw,
                ref=ref,
                shapes=shapes,
                steps=T_NEW,
            )
        )
    return cases


CASES = build_cases()

INIT_FORMULA = (
    "rng = np.random.default_rng(seed); per leaf in order: matrices/convs "
    "N(0,1)/sqrt(prod(shape[1:])), 1-D 0.1*N(0,1); leaves in zero_init are zeros"
)
GRAD_FORMULA = (
    "g_t = s * (R*C*(W_t - W*) + 0.3*N_t) (torch layout, W_t = current weights; s = the case's "
    "grad_scale, 0.1 where absent); "
    "W* ~ N(0,1)/sqrt(prod(shape[1:])), R = exp(0.5 N(0,1)) per out-row, C = exp(0.5 N(0,1)) "
    "per in-column (rng seed+7919); N_t ~ N(0,1) (rng seed+104729). grad_kind 'radial': "
    "before scaling, each out-channel row of g (ndim > 1) is orthogonalised against the same "
    f"row of W_t; 'near_radial': the same but {NEAR_RADIAL_KEEP} of the radial part is kept "
    "(cosines near the delta thresholds, so delta decides the branch)."
)


def make_init(seed: int, shapes: dict, zero=()) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shp in shapes.items():
        if len(shp) == 1:
            w = 0.1 * rng.standard_normal(shp)
        else:
            w = rng.standard_normal(shp) / np.sqrt(np.prod(shp[1:]))
        out[name] = np.zeros(shp) if name in zero else w
    return out


class GradGen:
    """The noisy quadratic's gradient at the current weights (torch layout); see GRAD_FORMULA."""

    def __init__(self, seed: int, shapes: dict, kind: str = "quad", scale=0.1, noise=0.3):
        rng = np.random.default_rng(seed + 7919)
        self.rng = np.random.default_rng(seed + 104729)
        self.kind, self.scale, self.noise = kind, scale, noise
        self.target, self.rowscale, self.colscale = {}, {}, {}
        for n, s in shapes.items():
            self.target[n] = rng.standard_normal(s) / np.sqrt(max(1, np.prod(s[1:])))
        for n, s in shapes.items():
            self.rowscale[n] = np.exp(0.5 * rng.standard_normal((s[0],) + (1,) * (len(s) - 1)))
        for n, s in shapes.items():
            self.colscale[n] = (
                np.exp(0.5 * rng.standard_normal((1, s[1]) + (1,) * (len(s) - 2)))
                if len(s) > 1
                else 1.0
            )

    def __call__(self, params: dict) -> dict:
        out = {}
        for n, w in params.items():
            w = np.asarray(w, np.float64)
            g = self.rowscale[n] * self.colscale[n] * (w - self.target[n])
            g = g + self.noise * self.rng.standard_normal(w.shape)
            if self.kind in ("radial", "near_radial") and w.ndim > 1:
                wf = w.reshape(w.shape[0], -1)
                gf = g.reshape(w.shape[0], -1)
                nn = (wf * wf).sum(1, keepdims=True)
                keep = NEAR_RADIAL_KEEP if self.kind == "near_radial" else 0.0
                gf = gf - (1.0 - keep) * wf * (wf * gf).sum(1, keepdims=True) / np.maximum(
                    nn, 1e-30
                )
                g = gf.reshape(w.shape)
            out[n] = self.scale * g
        return out


def _load_official(root: pathlib.Path, key: str):
    """The official module (imported unmodified by file path) and its class, with the
    run-time shims of the reference's ``shims`` applied to the module object."""
    ref = REFS[key]
    stubs = []
    if key == "adabelief":
        for name, attrs in (("tabulate", ("tabulate",)), ("colorama", ("Fore", "Back", "Style"))):
            if importlib.util.find_spec(name) is None:  # only used to print the change log
                stub = types.ModuleType(name)
                for a in attrs:
                    setattr(stub, a, None)
                sys.modules[name] = stub
                stubs.append(name)
    path = root / ref.get("dir", "") / ref["path"]
    spec = importlib.util.spec_from_file_location(f"official_{key}", path)
    mod = importlib.util.module_from_spec(spec)
    if key == "exadam":
        mod.np = np  # HEAD uses np without importing it
    try:
        spec.loader.exec_module(mod)
    finally:  # torch itself probes for tabulate later: leave no stand-in behind
        for name in stubs:
            del sys.modules[name]
    if key.startswith("normuon"):
        src = inspect.getsource(mod.zeropower_via_newtonschulz5)
        assert src.count("X = G.bfloat16()") == 1
        exec(
            compile(src.replace("X = G.bfloat16()", "X = G.clone()"), str(path), "exec"), vars(mod)
        )
    return mod, getattr(mod, ref["class"])


def _lu_nopivot(a):
    a = a.clone()
    for k in range(a.shape[0]):
        a[k + 1 :, k] /= a[k, k]
        a[k + 1 :, k + 1 :] -= a[k + 1 :, k, None] * a[None, k, k + 1 :]
    return a, None


@contextlib.contextmanager
def _cpu_shims(torch, key: str):
    """M-FAC's CUDA-only calls served on CPU while a step runs (see REFS['mfac']['shims'])."""
    if key != "mfac":
        yield
        return
    lu, papply = torch.lu, torch.nn.parallel.parallel_apply

    def lu_shim(a, pivot=True, **kw):
        return lu(a, pivot=pivot, **kw) if pivot or kw else _lu_nopivot(a)

    torch.lu = lu_shim
    torch.nn.parallel.parallel_apply = lambda fs, xs: [f(x) for f, x in zip(fs, xs)]
    try:
        yield
    finally:
        torch.lu, torch.nn.parallel.parallel_apply = lu, papply


def _record_projection(opt, names_by_id: dict, branches: dict, margins: list) -> None:
    """Wraps the official AdamP/SGDP ``_projection`` to record, per leaf and step, which view
    fired: 0 none, 1 channel view, 2 layer view (the number of cosine tests it ran and whether
    it returned the group's wd_ratio tell which), and |log(max cos / threshold)| of every
    cosine test it ran (a branch decided by a rounding-level margin would be fragile)."""
    orig_proj, orig_cos = opt._projection, opt._cosine_similarity
    calls = []

    def cos(x, y, eps, view_func):
        res = orig_cos(x, y, eps, view_func)
        calls.append((res.max().item(), view_func(y).size(1)))
        return res

    def proj(p, grad, perturb, delta, wd_ratio, eps):
        calls.clear()
        perturb, wd = orig_proj(p, grad, perturb, delta, wd_ratio, eps)
        fired = not (isinstance(wd, int) and wd == 1)
        branches[names_by_id[id(p)]].append(len(calls) if fired else 0)
        for top, size in calls:
            if top > 0:
                margins.append(abs(math.log(top / (delta / math.sqrt(size)))))
        return perturb, wd

    opt._projection, opt._cosine_similarity = proj, cos


def _build(torch, mod, cls, key: str, params: list, names: list, opts: dict, fixed: dict):
    if "param_groups" in opts:  # NorMuon's aux-Adam class: groups of named leaves
        groups = []
        for g in opts["param_groups"]:
            g = dict(g, params=[params[names.index(n)] for n in g["params"]])
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
            groups.append(g)
        return cls(groups, **fixed)
    opts = dict(opts)
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    with _cpu_shims(torch, key):  # M-FAC's constructor already factorises
        opt = cls(params, **opts, **fixed)
    if key == "mfac":  # float64 buffer instead of the hard-coded float32 one
        d = sum(p.numel() for p in params)
        buf = torch.zeros((opts["ngrads"], d), dtype=torch.float64)
        with _cpu_shims(torch, key):
            opt.hinv = mod.HInvFastUpMulti(
                buf, dev="cpu", gpus=["cpu"], damp=opts.get("damp", 1e-5)
            )
    return opt


def run_case(torch, loaded, case: dict, fixed: dict) -> tuple[dict, dict]:
    mod, cls = loaded
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(case["seed"])
    shapes = {k: tuple(v) for k, v in case["shapes"].items()}
    names = list(shapes)
    steps = case["T"]
    init = make_init(case["seed"], shapes, zero=case["zero_init"])
    gen = GradGen(case["seed"], shapes, kind=case["grad_kind"], scale=case["grad_scale"])
    params = [torch.nn.Parameter(torch.tensor(init[n], dtype=torch.float64)) for n in names]
    opts = case["official_options"]
    opt = _build(torch, mod, cls, case["ref"], params, names, opts, fixed)
    branches = {n: [] for n in names if len(shapes[n]) > 1}
    margins = []
    if case["method"] in ("adamp", "sgdp"):
        _record_projection(opt, {id(p): n for n, p in zip(names, params)}, branches, margins)
    grads = {n: [] for n in names}
    after = {n: [] for n in names}
    for _ in range(steps):
        cur = {n: p.detach().numpy().astype(np.float64) for n, p in zip(names, params)}
        g = gen(cur)
        for n, p in zip(names, params):
            gt = torch.tensor(g[n], dtype=torch.float64)
            grads[n].append(gt.numpy().copy())
            p.grad = gt.clone()  # AdaBelief's L2 decay adds to p.grad in place
        with _cpu_shims(torch, case["ref"]), contextlib.redirect_stdout(io.StringIO()):
            opt.step()
        for n, p in zip(names, params):
            after[n].append(p.detach().numpy().copy())
    cid = case["id"]
    arrays = {}
    for n in names:
        arrays[f"{cid}/init/{n}"] = init[n]
        arrays[f"{cid}/grads/{n}"] = np.stack(grads[n])
        arrays[f"{cid}/params_after/{n}"] = np.stack(after[n])
    aux = {}
    if case["method"] in ("adamp", "sgdp"):
        for n, b in branches.items():
            assert len(b) == steps, (cid, n, b)
            arrays[f"{cid}/aux/projection_branch/{n}"] = np.asarray(b, np.int8)
        aux = {
            "projection_branch": {n: "".join(map(str, b)) for n, b in branches.items()},
            "min_log_margin_of_projection_test": round(min(margins), 4),
        }
    return arrays, aux


METHODS = ("adabelief", "adamp", "sgdp", "lion", "exadam", "sgd_sai", "mfac", "normuon")


def _ref_meta(key: str) -> dict:
    ref = REFS[key]
    out = {k: ref[k] for k in ("repo", "commit", "path", "class")}
    if ref.get("dir"):
        out["extracted_to"] = ref["dir"]
    if ref.get("shims"):
        out["shims"] = ref["shims"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, type=pathlib.Path, help="git-archive root")
    ap.add_argument("--out", default="tests/data", type=pathlib.Path)
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    args = ap.parse_args(argv)
    import torch  # needed only to generate

    command = f"{FETCH} && {sys.executable} {SCRIPT} --official {args.official} --out {args.out}"
    for method in args.methods:
        arrays, cases, keys, loaded = {}, {}, [], {}
        for case in (c for c in CASES if c["method"] == method):
            key = case["ref"]
            ref = REFS[key]
            if key not in loaded:
                loaded[key] = _load_official(args.official, key)
                keys.append(key)
            arr, aux = run_case(torch, loaded[key], case, ref["fixed_options"])
            arrays.update(arr)
            extra = {} if case["grad_scale"] == 0.1 else {"grad_scale": case["grad_scale"]}
            cases[case["id"]] = {
                "reference": _ref_meta(key),
                "official_options": {**case["official_options"], **ref["fixed_options"]},
                "optx": case["optx"],
                "shapes": case["shapes"],
                "param_order": list(case["shapes"]),
                "seed": case["seed"],
                "grad_kind": case["grad_kind"],
                **extra,
                "zero_init": case["zero_init"],
                "T": case["T"],
                "dtype": DTYPE,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "tolerance": TOLERANCE,
                "command": command,
                **aux,
            }
        steps = sorted({c["T"] for c in cases.values()})
        imp = "the file at `path` from `git archive <commit>`, imported unmodified by file path"
        refs = [{"kind": "github", **_ref_meta(k), "import": imp} for k in keys]
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out / f"options__{method}.npz", **arrays)
        meta = {
            "method": method,
            "set": "options",
            # one reference, or (several commits / classes) a list; each case names its own
            "reference": refs[0] if len(refs) == 1 else refs,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "T": steps[0] if len(steps) == 1 else steps,
            "dtype": DTYPE,
            "tolerance": TOLERANCE,
            "inputs": {"init": INIT_FORMULA, "grads": GRAD_FORMULA},
            "cases": cases,
            "generator": {
                "command": command,
                "script_name": SCRIPT,
                "note": "the script imports the official file by path at run time; no official "
                "code is stored in this repository",
            },
            "format_note": "npz keys '<case>/init/<p>' initial value; '<case>/grads/<p>' (T, "
            "*shape) gradient fed before step t (index 0 = first step); "
            "'<case>/params_after/<p>' (T, *shape) value after step t; AdamP/SGDP also "
            "'<case>/aux/projection_branch/<p>' (T,) int8: 0 no projection, 1 channel view, "
            "2 layer view (as taken by the official code; also a string per leaf in the case's "
            "'projection_branch').",
            "layout_note": "Weights are stored in PyTorch layout: Linear (out, in), conv "
            "(out, in, kh, kw). A Flax Dense kernel is the transpose (in, out); a Flax Conv "
            "kernel is (kh, kw, in, out) = transpose(2, 3, 1, 0).",
        }
        (args.out / f"options__{method}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print("wrote", method, sorted(cases))


if __name__ == "__main__":
    main()
