"""Generates tests/data/options__{adabelief,adamp,sgdp,lion}.{json,npz}: golden trajectories
of the OFFICIAL AdaBelief / AdamP / SGDP / Lion PyTorch classes over their options, replayed
by tests/aliases/test_option_goldens.py.

Not run by the test suite (torch is not a test dependency); importing this
module only defines the case list: everything that needs torch runs under ``main()``.

Usage (any Python with torch and numpy; run from the repository root)::

    R=/tmp/optx_option_refs; mkdir -p $R
    git -C <clone of juntang-zhuang/Adabelief-Optimizer> archive 2855178 \\
        pypi_packages/adabelief_pytorch0.2.1/adabelief_pytorch/AdaBelief.py | tar -x -C $R
    git -C <clone of clovaai/AdamP> archive 7f6f038 adamp/adamp.py adamp/sgdp.py | tar -x -C $R
    git -C <clone of lucidrains/lion-pytorch> archive 6a74fdc lion_pytorch/lion_pytorch.py \\
        | tar -x -C $R
    python tools/goldens/gen_option_goldens.py --official $R --out tests/data

The official files are imported unmodified by file path from ``--official`` (no official
code is copied here). AdaBelief.py imports ``tabulate``/``colorama`` at module level only to
print its change log; when they are missing, empty stand-ins are registered while the file is
imported (the class is built with ``print_change_log=False``, so they are never used).

Problem: every case is float64, T=12 steps, one seed, PyTorch-layout leaves (Linear
(out, in), conv (out, in, kh, kw), bias (n,)). Gradients come from a noisy quadratic that
depends on the current weights (``GradGen``); the gradients actually fed are recorded, so
the replay needs no torch. ``radial`` gradients have each output channel's radial part
removed, which makes AdamP/SGDP take their channel projection; ``near_radial`` ones keep 5%
of it, so that ``delta`` decides between no projection, the channel and the layer view.
"""

from __future__ import annotations

import argparse
import importlib.util
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

FETCH = (
    "R=/tmp/optx_option_refs && mkdir -p $R"
    " && git -C <clone of juntang-zhuang/Adabelief-Optimizer> archive 2855178"
    " pypi_packages/adabelief_pytorch0.2.1/adabelief_pytorch/AdaBelief.py | tar -x -C $R"
    " && git -C <clone of clovaai/AdamP> archive 7f6f038 adamp/adamp.py adamp/sgdp.py"
    " | tar -x -C $R"
    " && git -C <clone of lucidrains/lion-pytorch> archive 6a74fdc lion_pytorch/lion_pytorch.py"
    " | tar -x -C $R"
)
SCRIPT = "tools/goldens/gen_option_goldens.py"


def _case(cid, method, seed, official, optx_kwargs, grad_kind="quad", zero=()):
    return {
        "id": cid,
        "method": method,
        "seed": seed,
        "official_options": official,
        "optx": {"factory": method, "kwargs": optx_kwargs},
        "grad_kind": grad_kind,
        "zero_init": list(zero),
        "shapes": SHAPES_ZERO if zero else SHAPES,
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
    return cases


CASES = build_cases()

INIT_FORMULA = (
    "rng = np.random.default_rng(seed); per leaf in order: matrices/convs "
    "N(0,1)/sqrt(prod(shape[1:])), 1-D 0.1*N(0,1); leaves in zero_init are zeros"
)
GRAD_FORMULA = (
    "g_t = 0.1 * (R*C*(W_t - W*) + 0.3*N_t) (torch layout, W_t = current weights); "
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


def _load_official(root: pathlib.Path, method: str):
    ref = REFS[method]
    stubs = []
    if method == "adabelief":
        for name, attrs in (("tabulate", ("tabulate",)), ("colorama", ("Fore", "Back", "Style"))):
            if importlib.util.find_spec(name) is None:  # only used to print the change log
                stub = types.ModuleType(name)
                for a in attrs:
                    setattr(stub, a, None)
                sys.modules[name] = stub
                stubs.append(name)
    spec = importlib.util.spec_from_file_location(f"official_{method}", root / ref["path"])
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    finally:  # torch itself probes for tabulate later: leave no stand-in behind
        for name in stubs:
            del sys.modules[name]
    return getattr(mod, ref["class"])


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


def run_case(torch, cls, case: dict, fixed: dict) -> tuple[dict, dict]:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(case["seed"])
    shapes = {k: tuple(v) for k, v in case["shapes"].items()}
    names = list(shapes)
    init = make_init(case["seed"], shapes, zero=case["zero_init"])
    gen = GradGen(case["seed"], shapes, kind=case["grad_kind"])
    params = [torch.nn.Parameter(torch.tensor(init[n], dtype=torch.float64)) for n in names]
    opts = dict(case["official_options"])
    if "betas" in opts:
        opts["betas"] = tuple(opts["betas"])
    opt = cls(params, **opts, **fixed)
    branches = {n: [] for n in names if len(shapes[n]) > 1}
    margins = []
    if case["method"] in ("adamp", "sgdp"):
        _record_projection(opt, {id(p): n for n, p in zip(names, params)}, branches, margins)
    grads = {n: [] for n in names}
    after = {n: [] for n in names}
    for _ in range(T):
        cur = {n: p.detach().numpy().astype(np.float64) for n, p in zip(names, params)}
        g = gen(cur)
        for n, p in zip(names, params):
            gt = torch.tensor(g[n], dtype=torch.float64)
            grads[n].append(gt.numpy().copy())
            p.grad = gt.clone()  # AdaBelief's L2 decay adds to p.grad in place
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
            assert len(b) == T, (cid, n, b)
            arrays[f"{cid}/aux/projection_branch/{n}"] = np.asarray(b, np.int8)
        aux = {
            "projection_branch": {n: "".join(map(str, b)) for n, b in branches.items()},
            "min_log_margin_of_projection_test": round(min(margins), 4),
        }
    return arrays, aux


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, type=pathlib.Path, help="git-archive root")
    ap.add_argument("--out", default="tests/data", type=pathlib.Path)
    args = ap.parse_args(argv)
    import torch  # needed only to generate

    command = f"{FETCH} && {sys.executable} {SCRIPT} --official {args.official} --out {args.out}"
    for method, ref in REFS.items():
        cls = _load_official(args.official, method)
        arrays, cases = {}, {}
        for case in (c for c in CASES if c["method"] == method):
            arr, aux = run_case(torch, cls, case, ref["fixed_options"])
            arrays.update(arr)
            cases[case["id"]] = {
                "reference": {k: ref[k] for k in ("repo", "commit", "path", "class")},
                "official_options": {**case["official_options"], **ref["fixed_options"]},
                "optx": case["optx"],
                "shapes": case["shapes"],
                "param_order": list(case["shapes"]),
                "seed": case["seed"],
                "grad_kind": case["grad_kind"],
                "zero_init": case["zero_init"],
                "T": T,
                "dtype": DTYPE,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "tolerance": TOLERANCE,
                "command": command,
                **aux,
            }
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out / f"options__{method}.npz", **arrays)
        meta = {
            "method": method,
            "set": "options",
            "reference": {
                "kind": "github",
                **{k: ref[k] for k in ("repo", "commit", "path", "class")},
                "import": "the file at `path` from `git archive <commit>`, imported unmodified "
                "by file path",
            },
            "torch": torch.__version__,
            "numpy": np.__version__,
            "T": T,
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
