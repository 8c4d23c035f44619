"""Option coverage of AdaBelief, AdamP, SGDP, Lion, EXAdam, SGD-SaI, M-FAC and NorMuon against
their official PyTorch codes.

Each case of ``tests/data/options__<method>.{json,npz}`` is a float64 trajectory (12 steps; 10
for EXAdam, SGD-SaI, M-FAC and NorMuon) of the official class (repository, commit, file and
class in the case's ``reference``, with any run-time ``shims`` the generator applied) run with
one option combination on small leaves: a tall (12, 5) and a wide (4, 14) Linear weight, a
(4, 3, 2, 2) conv kernel and a (4,) bias (NorMuon: only the leaves its class takes). The
recorded gradients are replayed through the optx factory with the mapped kwargs (the JSON's
``optx``), and the weights must match after every step to rtol 1e-10 / atol 1e-12 (the
JSON's ``tolerance``). Covered:

* AdaBelief: defaults (rectified, eps 1e-16), rectify=False, decoupled decay, L2 decay
  (weight_decouple=False), fixed_decay, amsgrad with and without rectification (with
  rectify=True the official code has amsgrad inert: the rectified step divides by the
  current, not the max, variance and the early steps use no denominator; the two differ in
  that case's rectified steps, so dividing by the max there fails),
  degenerated_to_sgd=False (no update before N_sma >= 5), eps=1e-8 with betas (0.8, 0.99).
* AdamP: weight decay with plain and radial (scale-invariant) gradients, nesterov,
  delta=0.5 / wd_ratio=0.3 with near-radial gradients (no / channel / layer projection,
  decided by delta), a zero-initialised matrix.
* SGDP: nesterov, heavy ball, dampening 0.1 / momentum 0.5 / delta 0.3 / wd_ratio 0.5,
  plain SGD with weight decay.
* Lion: weight decay with betas (0.95, 0.98), and lion-pytorch's
  ``decoupled_weight_decay=True`` (wd divided by the initial lr) mapped to optx's weight_decay.
* EXAdam: HEAD (989d7b6, arXiv v2) as ``dynamic_step_size=False``, defaults and with betas
  (0.8, 0.99) / eps 1e-6 / weight decay; v1 (9ff8463, step scaled by ln(sqrt(2) sqrt(t + 1)))
  as the default ``dynamic_step_size=True``, with and without weight decay.
* SGD-SaI: release 1.0.3 (e213080) with its defaults and with momentum 0.5 / eps 1e-6 /
  weight decay 0.1; 1.0.4 (3edf2c4) as ``scale_rule='gsnr_max'``; 1.1.0 (6c13d90) as
  ``scale_rule='sqrt_numel'``.
* M-FAC (8116367; one flattened vector over all leaves): m=8 with the defaults; m=4 with
  momentum 0.9 (the ring buffer wraps); m=5 with weight decay, damp 1e-3 and momentum 0.5.
* NorMuon (d45c9a4; float64 Newton-Schulz): defaults; lr / momentum / beta2 / weight decay;
  a conv kernel as ``conv_view='torch'``; SingleDeviceNorMuonWithAuxAdam groups mapped to the
  ``adam_*`` arguments (the bias takes the Adam branch).

The data are PyTorch-layout: Linear (out, in) -> Flax (in, out) by a transpose, conv
(out, in, kh, kw) -> Flax (kh, kw, in, out). The generator is
``tools/goldens/gen_option_goldens.py`` (needs torch; never run here).
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import numpy as np
import pytest

import optx
from tests.references import goldens

DATA = pathlib.Path(__file__).parent.parent / "data"
METHODS = ("adabelief", "adamp", "sgdp", "lion", "exadam", "sgd_sai", "mfac", "normuon")


@functools.cache
def _load(method: str) -> tuple[dict, dict]:
    meta = json.loads((DATA / f"options__{method}.json").read_text())
    with np.load(DATA / f"options__{method}.npz") as z:
        return meta, dict(z)


CASES = [(m, cid) for m in METHODS for cid in _load(m)[0]["cases"]]


def _replay(method: str, cid: str, optx_kwargs: dict) -> None:
    meta, z = _load(method)
    case = meta["cases"][cid]
    tol = case["tolerance"]
    with jax.enable_x64(True):
        tx = getattr(optx, case["optx"]["factory"])(**optx_kwargs)
        assert all(z[f"{cid}/init/{n}"].dtype == np.float64 for n in case["param_order"])
        goldens.replay(
            tx,
            z,
            case["param_order"],
            case["T"],
            rtol=tol["rtol"],
            atol=tol["atol"],
            label=cid,
            prefix=f"{cid}/",
        )


@pytest.mark.parametrize(("method", "cid"), CASES, ids=[cid for _, cid in CASES])
def test_option_golden(method: str, cid: str) -> None:
    _replay(method, cid, _load(method)[0]["cases"][cid]["optx"]["kwargs"])


@pytest.mark.parametrize("method", ["adamp", "sgdp"])
def test_goldens_take_every_projection_branch(method: str) -> None:
    """The recorded official branches (0 none, 1 channel view, 2 layer view) cover all three,
    with no test decided by a rounding-level margin, so the replay exercises each of them."""
    meta, z = _load(method)
    taken = set()
    for cid, case in meta["cases"].items():
        assert case["min_log_margin_of_projection_test"] > 1e-3, cid
        for n in case["projection_branch"]:
            taken.update(z[f"{cid}/aux/projection_branch/{n}"].tolist())
    assert taken == {0, 1, 2}
