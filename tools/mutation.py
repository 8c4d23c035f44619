"""Mutation testing over optx's math modules: plant one small bug, run its tests.

Each mutant below is one realistic slip (a coefficient, an axis, a bias
correction step, a refresh off by one, the order of decay and step, a rounding
rule, a missing factor, ``int`` for ``round``, the sign of zero, ...). The
harness copies the tracked files of the repository into a scratch directory,
applies one mutant at a time (an exact, unique text replacement: a mutant whose
text no longer matches is reported as ``stale``), runs the mutant's tests with
``pytest -x``, and counts the mutant as **killed** when they fail. The score is
killed / (killed + survived).

Usage (from the repository root)::

  python tools/mutation.py                 # every mutant
  python tools/mutation.py --list          # ids and descriptions
  python tools/mutation.py --only lion_sign_zero,sophia_no_b
  python tools/mutation.py --timeout 600   # per-mutant limit (s); a timeout is not scored

Needs no network and nothing beyond the test dependencies (``mutmut`` assumes
a ``src``/flat layout and rewrites every operator; this list is curated and
each mutant runs only the tests that own its code).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


S = "optx/_src/"
T_MOM = ("tests/test_moments.py",)
T_ADA = ("tests/test_adaptive.py", "tests/aliases/test_elementwise.py")
T_DIAG = ("tests/test_diagonal_preconditioning.py", "tests/aliases/test_curvature.py")
T_SOPHIA = ("tests/test_wrong_math.py", *T_DIAG, "tests/test_faithfulness.py")
T_SIGN = ("tests/test_wrong_math.py", "tests/test_sign.py", "tests/aliases/test_elementwise.py")
T_PROJ = ("tests/test_projection.py", "tests/aliases/test_memory.py")
T_FRUGAL = ("tests/test_wrong_math.py", *T_PROJ)
T_FISHER = ("tests/test_stability.py", "tests/test_fisher.py")
T_NORM = ("tests/test_normalization.py",)
T_KRON = ("tests/test_kronecker.py", "tests/test_faithfulness.py")
T_WD = ("tests/test_weight_decay.py",)
T_QUANT = ("tests/test_quantization.py",)
T_QUANT_KERNEL = ("tests/test_quantization_kernels.py",)
T_ORTHO = ("tests/test_orthogonalization.py",)
T_RADIAL = ("tests/test_radial.py", "tests/aliases/test_elementwise.py")
T_VAR = ("tests/test_variance.py",)
T_NONFINITE = ("tests/conformance/test_nonfinite.py",)

MUTANTS = (
    # --- moments / Adam-likes ---
    Mutant(
        "ema_coeff_swap",
        S + "moments.py",
        "new_mu = beta * muc + (1.0 - beta) * gc",
        "new_mu = (1.0 - beta) * muc + beta * gc",
        T_MOM,
        "EMA coefficients swapped",
    ),
    Mutant(
        "adam_eps_inside",
        S + "moments.py",
        "u = step.astype(cdt) * mc / (jnp.sqrt(vc + eps_root) + eps)",
        "u = step.astype(cdt) * mc / jnp.sqrt(vc + eps_root + eps)",
        T_MOM,
        "ε inside the root",
    ),
    Mutant(
        "adam_bc_sqrt",
        S + "moments.py",
        "return jnp.sqrt(base.bias_correction(b2, count)) / base.bias_correction(b1, count)",
        "return base.bias_correction(b2, count) / base.bias_correction(b1, count)",
        T_MOM,
        "second bias correction without the root",
    ),
    Mutant(
        "belief_square",
        S + "adaptive.py",
        "jnp.square(gc - new_mu) + eps_root",
        "jnp.square(gc - mu.astype(cdt)) + eps_root",
        T_ADA,
        "AdaBelief: g − m_{t−1} for g − m_t",
    ),
    Mutant(
        "belief_b2",
        S + "adaptive.py",
        "new_nu = b2 * nu.astype(cdt) + (1.0 - b2)",
        "new_nu = b1 * nu.astype(cdt) + (1.0 - b1)",
        T_ADA,
        "AdaBelief: β₁ for β₂",
    ),
    Mutant(
        "exadam_d1_power",
        S + "adaptive.py",
        "d1 = 1.0 + power(b2, count)",
        "d1 = 1.0 + power(b1, count)",
        T_ADA,
        "EXAdam: β₁ᵗ in the v debias",
    ),
    Mutant(
        "exadam_eps",
        S + "adaptive.py",
        "/ (jnp.sqrt(v * d2 / bc2) + eps)",
        "/ (jnp.sqrt(v * d2 / bc2 + eps))",
        T_ADA,
        "EXAdam: ε inside the root",
    ),
    Mutant(
        "sai_first",
        S + "adaptive.py",
        "new_mu = jnp.where(first, gc, beta",
        "new_mu = jnp.where(first, 0.0 * gc, beta",
        T_ADA,
        "SGD-SaI: momentum not seeded with g₁",
    ),
    Mutant(
        "gsnr_eps",
        S + "adaptive.py",
        "    return norm / (std + eps)",
        "    return norm / (std + 10.0 * eps)",
        T_ADA,
        "g-SNR ε ×10",
    ),
    # --- Sophia / AdaHessian ---
    Mutant(
        "sophia_no_b",
        S + "diagonal_preconditioning.py",
        "scale = gamma * tokens_per_batch",
        "scale = gamma",
        T_SOPHIA,
        "Sophia-G without the B factor",
    ),
    Mutant(
        "sophia_refresh_offby1",
        S + "diagonal_preconditioning.py",
        "        due = count % k == 0\n",
        "        due = count % k == 1\n",
        T_SOPHIA,
        "Sophia refresh one step late",
    ),
    Mutant(
        "sophia_clip",
        S + "diagonal_preconditioning.py",
        "u = jnp.clip(mc / jnp.maximum(curv, eps), -1.0, 1.0)",
        "u = jnp.clip(mc / jnp.maximum(curv, eps), -2.0, 2.0)",
        T_SOPHIA,
        "Sophia clip at 2",
    ),
    Mutant(
        "hessian_ema_swap",
        S + "diagonal_preconditioning.py",
        "out = beta * old.astype(cdt) + (1.0 - beta) * new.astype(cdt)",
        "out = (1.0 - beta) * old.astype(cdt) + beta * new.astype(cdt)",
        T_DIAG,
        "curvature EMA coefficients swapped",
    ),
    Mutant(
        "adahessian_bc2",
        S + "diagonal_preconditioning.py",
        "root = jnp.sqrt(v.astype(cdt)) / jnp.sqrt(bc2)",
        "root = jnp.sqrt(v.astype(cdt)) / bc2",
        T_DIAG,
        "AdaHessian: bias correction without the root",
    ),
    # --- sign methods ---
    Mutant(
        "lion_sign_zero",
        S + "sign.py",
        "        return jnp.sign(c)\n",
        "        return jnp.where(c >= 0, 1.0, -1.0).astype(c.dtype)\n",
        T_SIGN,
        "Lion: sign(0) = +1 (a step of −lr at g = 0)",
    ),
    Mutant(
        "lion_interp_b2",
        S + "sign.py",
        "return b1 * mu.astype(cdt) + (1.0 - b1) * g.astype(cdt)",
        "return b2 * mu.astype(cdt) + (1.0 - b2) * g.astype(cdt)",
        T_SIGN,
        "Lion: β₂ in the interpolation",
    ),
    Mutant(
        "lion_state_b1",
        S + "sign.py",
        "(b2 * mu.astype(cdt) + (1.0 - b2) * g.astype(cdt)).astype(mu.dtype)",
        "(b1 * mu.astype(cdt) + (1.0 - b1) * g.astype(cdt)).astype(mu.dtype)",
        T_SIGN,
        "Lion: β₁ in the momentum update",
    ),
    Mutant(
        "huber_delta",
        S + "sign.py",
        "return c / jnp.sqrt(jnp.square(c) + jnp.square(delta))",
        "return c / jnp.sqrt(jnp.square(c) + delta)",
        T_SIGN,
        "Lion-K Huber: δ not squared",
    ),
    # --- projections, FRUGAL ---
    Mutant(
        "frugal_int_blocks",
        S + "projection.py",
        "n_active = round(float(density) * n)",
        "n_active = int(float(density) * n)",
        T_FRUGAL,
        "FRUGAL: int(ρN) for round(ρN)",
    ),
    Mutant(
        "frugal_sign_zero",
        S + "projection.py",
        "full = residual_scale * jnp.sign(stack)",
        "full = residual_scale * jnp.where(stack >= 0, 1.0, -1.0).astype(stack.dtype)",
        T_FRUGAL,
        "FRUGAL: sign(0) = +1 in the state-free part",
    ),
    Mutant(
        "rank_round",
        S + "projection.py",
        "        r = round(float(density) * d)",
        "        r = int(float(density) * d)",
        T_PROJ,
        "projection rank int for round",
    ),
    Mutant(
        "qr_sign_fix",
        S + "projection.py",
        "signs = jnp.sign(jnp.diagonal(r, axis1=1, axis2=2))",
        "signs = jnp.ones_like(jnp.diagonal(r, axis1=1, axis2=2))",
        T_PROJ,
        "QR without the sign fix",
    ),
    Mutant(
        "apollo_norm_axis",
        S + "projection.py",
        "num = jnp.sqrt(jnp.sum(jnp.square(n), axis=rank_axis, keepdims=True))",
        "num = jnp.sqrt(jnp.sum(jnp.square(n), keepdims=True))",
        T_PROJ,
        "APOLLO channel scale over the whole matrix",
    ),
    # --- M-FAC ---
    Mutant(
        "mfac_damp_m",
        S + "fisher.py",
        "system = gram.astype(compute_dtype) + (m * damp)",
        "system = gram.astype(compute_dtype) + (damp)",
        T_FISHER,
        "M-FAC: λ for mλ",
    ),
    Mutant(
        "mfac_scale_m",
        S + "fisher.py",
        "    return m * (G.astype(compute_dtype).T @ coef)",
        "    return (G.astype(compute_dtype).T @ coef)",
        T_FISHER,
        "M-FAC: missing m",
    ),
    Mutant(
        "mfac_slot",
        S + "fisher.py",
        "rhs = jax.nn.one_hot(slot, m, dtype=compute_dtype)",
        "rhs = jax.nn.one_hot((slot + 1) % m, m, dtype=compute_dtype)",
        T_FISHER,
        "M-FAC: ring-buffer slot off by one",
    ),
    Mutant(
        "mfac_gram_row",
        S + "fisher.py",
        "gram = gram.at[slot, :].set(row).at[:, slot].set(row)",
        "gram = gram.at[slot, :].set(row)",
        T_FISHER,
        "M-FAC: Gram column not updated",
    ),
    # --- normalization ---
    Mutant(
        "norm_eps_placement",
        S + "normalization.py",
        "denom = jnp.sqrt(nu_hat) + eps",
        "denom = jnp.sqrt(nu_hat + eps)",
        T_NORM,
        "row-RMS ε inside the root",
    ),
    Mutant(
        "norm_ema",
        S + "normalization.py",
        "new_nu = beta * nu.astype(cdt) + (1.0 - beta) * mean_sq",
        "new_nu = beta * nu.astype(cdt) + mean_sq",
        T_NORM,
        "row-RMS EMA without 1 − β",
    ),
    Mutant(
        "norm_growth_eps",
        S + "normalization.py",
        "return (y.astype(nx.dtype) * (nx / (ny + eps))).astype(y.dtype)",
        "return (y.astype(nx.dtype) * (nx / (nx + eps))).astype(y.dtype)",
        T_NORM,
        "norm rescale by the wrong norm",
    ),
    # --- orthogonalization ---
    Mutant(
        "ns_prenorm",
        S + "orthogonalization.py",
        "X = (X / (norm * coeffs.norm_scale + coeffs.eps).astype(compute_dtype)).astype(compute_dtype)",
        "X = (X / (norm + coeffs.eps).astype(compute_dtype)).astype(compute_dtype)",
        T_ORTHO,
        "Newton–Schulz pre-normalization without norm_scale",
    ),
    Mutant(
        "ns_sum_axes",
        S + "orthogonalization.py",
        "norm = jnp.sqrt(jnp.sum(jnp.square(X.astype(scalar_dtype)), axis=(-2, -1), keepdims=True))",
        "norm = jnp.sqrt(jnp.sum(jnp.square(X.astype(scalar_dtype)), axis=-1, keepdims=True))",
        T_ORTHO,
        "Newton–Schulz normalizes rows, not the matrix",
    ),
    # --- MKOR ---
    Mutant(
        "mkor_refresh",
        S + "kronecker.py",
        "due = (count % k == 0) | (count < warmup_steps)",
        "due = (count % k == 1) | (count < warmup_steps)",
        T_KRON,
        "MKOR refresh off by one",
    ),
    Mutant(
        "mkor_zeta",
        S + "kronecker.py",
        "zeta = jnp.asarray(stabilization, jnp.promote_types(cdt, jnp.float32))",
        "zeta = jnp.asarray(0.0, jnp.promote_types(cdt, jnp.float32))",
        T_KRON,
        "MKOR ζ ignored",
    ),
    # --- weight decay ---
    Mutant(
        "decay_after_order",
        S + "weight_decay.py",
        "out = (1.0 - lr * wd) * u.astype(cdt) + wd * p.astype(cdt)",
        "out = u.astype(cdt) + wd * p.astype(cdt)",
        T_WD,
        "decay-after-step: decay before the step",
    ),
    # --- quantization ---
    Mutant(
        "quant_tie",
        S + "quantization.py",
        "+ (bits > threshold).astype(jnp.int32)",
        "+ (bits >= threshold).astype(jnp.int32)",
        T_QUANT,
        "8-bit ties to the upper code",
    ),
    Mutant(
        "quant_signed_clip",
        S + "quantization.py",
        "zero_code - jnp.minimum(k, 127)",
        "zero_code - jnp.minimum(k, 128)",
        T_QUANT,
        "8-bit negative code range",
    ),
    Mutant(
        "quant_kernel_tail_mask",
        S + "quantization_kernels.py",
        "jnp.max(jnp.where(valid_entries, jnp.abs(x), 0.0), axis=1)",
        "jnp.max(jnp.abs(x), axis=1)",
        T_QUANT_KERNEL,
        "Pallas 8-bit kernel: padding entries in the last block's maximum",
    ),
    # --- AdamP / SGDP ---
    Mutant(
        "radial_channel_delta",
        S + "radial.py",
        "channel = cos_c < delta / jnp.sqrt(jnp.asarray(layout.fan_in, cdt))",
        "channel = cos_c < delta / jnp.sqrt(jnp.asarray(layout.fan_out, cdt))",
        T_RADIAL,
        "AdamP: channel test over fan_out",
    ),
    # --- AGVM ---
    Mutant(
        "agvm_ratio",
        S + "variance.py",
        "ratio = jnp.clip((proxy[0] + _D_EPS) / (proxy + _D_EPS), min_ratio, max_ratio)",
        "ratio = jnp.clip((proxy + _D_EPS) / (proxy[0] + _D_EPS), min_ratio, max_ratio)",
        T_VAR,
        "AGVM ratio inverted",
    ),
    # --- the non-finite policy ---
    Mutant(
        "nonfinite_outputs",
        S + "nonfinite.py",
        "            ok = ok & all_finite((new_updates, new_inner))",
        "            pass",
        T_NONFINITE,
        "skip_if_not_finite ignores what the step computes",
    ),
    Mutant(
        "nonfinite_state",
        S + "nonfinite.py",
        "inner_state=_select(ok, new_inner, state.inner_state)",
        "inner_state=new_inner",
        T_NONFINITE,
        "a skipped step still writes the inner state",
    ),
)


def _copy_tree(dst: pathlib.Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def run(mutants: list[Mutant], timeout: float) -> int:
    with tempfile.TemporaryDirectory(prefix="optx-mutation-") as tmp:
        work = pathlib.Path(tmp)
        _copy_tree(work)
        env = {**os.environ, "PYTHONPATH": str(work), "JAX_PLATFORMS": "cpu"}
        results = {"killed": 0, "survived": 0, "stale": 0, "timeout": 0}
        for m in mutants:
            target = work / m.path
            text = target.read_text()
            if text.count(m.old) != 1:
                print(f"{m.id:24s} stale     ({m.path}: the mutated text is not there once)")
                results["stale"] += 1
                continue
            target.write_text(text.replace(m.old, m.new))
            tests = [t for t in m.tests if (work / t).exists()]
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-x",
                "-q",
                "-n",
                "0",
                "-p",
                "no:cacheprovider",
                "--no-header",
                "-o",
                "addopts=",
                *tests,
            ]
            t0 = time.time()
            try:
                rc = subprocess.run(
                    cmd, cwd=work, env=env, capture_output=True, timeout=timeout
                ).returncode
                verdict = "survived" if rc == 0 else "killed"
            except subprocess.TimeoutExpired:
                verdict = "timeout"  # undecided: not in the score
            finally:
                target.write_text(text)
            results[verdict] += 1
            print(f"{m.id:24s} {verdict:9s} {time.time() - t0:6.1f}s  {m.what}", flush=True)
        scored = results["killed"] + results["survived"]
        print(
            f"\nmutation score: {results['killed']}/{scored} killed"
            f" ({100.0 * results['killed'] / max(scored, 1):.0f}%), {results['stale']} stale,"
            f" {results['timeout']} timed out"
        )
        return 0 if results["stale"] == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", default="", help="comma-separated mutant ids")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    args = ap.parse_args()
    chosen = list(MUTANTS)
    if args.only:
        ids = set(args.only.split(","))
        unknown = ids - {m.id for m in MUTANTS}
        if unknown:
            ap.error(f"unknown mutant ids: {sorted(unknown)}")
        chosen = [m for m in MUTANTS if m.id in ids]
    if args.list:
        for m in chosen:
            print(f"{m.id:24s} {m.path:40s} {m.what}")
        return 0
    return run(chosen, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
