"""The dense factorizations of the basis methods, timed on this device.

SOAP, COSMOS, GaLore, DCT-AdamW and MKOR refresh or track bases with QR, eigh and
SVD (:mod:`optx._src.linalg`, :mod:`optx._src.bases`). On an H200 COSMOS's step
(one QR power step per matrix per step) ran at 0.18 of its roofline bound and
5.4× Muon's, against 0.73 and about 1.06× on this project's CPU, which points at
the factorizations: ``python benchmarks/linalg_cost.py`` times, jitted, median of
``--reps``, for each ``BxMxN`` of ``--shapes``:

* ``qr (optx)``: :func:`optx._src.linalg.qr` as the methods call it
  (``jnp.linalg.qr`` on an accelerator, a JAX Householder QR on a CPU);
* ``qr (householder)``: the JAX Householder QR on every platform;
* ``qr (cholesky², reference)``: CholeskyQR2 — ``R = chol(AᵀA)``, ``Q = A R⁻¹``,
  twice — matrix products and an ``N × N`` Cholesky only (a reference for what a
  product-based QR costs here, not used by optx: its ``Q`` differs from
  Householder's by column signs);
* ``eigh`` (of ``XXᵀ``, the product included) and ``svd`` (``jnp.linalg``) for square
  shapes.

Example::

  python benchmarks/linalg_cost.py --shapes 12x768x64,12x3072x64,12x768x768 --reps 10
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optx._src import linalg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import roofline


def cholesky_qr2(a: jax.Array) -> jax.Array:
    """``Q`` of ``A`` (``… × m × n``, ``m ≥ n``) by two rounds of CholeskyQR."""

    def once(x: jax.Array) -> jax.Array:
        r = jnp.linalg.cholesky(jnp.swapaxes(x, -1, -2) @ x)
        # Q = X R⁻¹: solve Rᵀ Qᵀ = Xᵀ (R upper triangular = Lᵀ).
        qt = jax.scipy.linalg.solve_triangular(r, jnp.swapaxes(x, -1, -2), lower=True)
        return jnp.swapaxes(qt, -1, -2)

    return once(once(a))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python benchmarks/linalg_cost.py", description=__doc__)
    p.add_argument("--shapes", default="12x768x64,12x3072x64,12x768x768")
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args(argv)
    print(f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print("\n| shape | operation | ms |\n| --- | --- | ---: |")
    for spec in args.shapes.split(","):
        b, m, n = (int(v) for v in spec.split("x"))
        x = jax.random.normal(jax.random.key(0), (b, m, n), jnp.float32)
        ops: dict[str, Callable[[jax.Array], Any]] = {
            "qr (optx)": linalg.qr,
            "qr (householder)": linalg.householder_qr,
            "qr (cholesky², reference)": cholesky_qr2,
        }
        if m == n:
            ops["eigh (of XXᵀ, product included)"] = lambda y: jnp.linalg.eigh(
                y @ jnp.swapaxes(y, -1, -2)
            )
            ops["svd"] = jnp.linalg.svd
        for name, fn in ops.items():
            print(
                f"| {spec} | {name} | {1e3 * roofline.median_seconds(jax.jit(fn), x, args.reps):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
