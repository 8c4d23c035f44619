"""Newton–Schulz throughput as a fraction of this device's bf16 matmul peak.

``python benchmarks/newton_schulz_peak.py`` takes the matrices the default
router sends to Muon in the GPT-style trees of :mod:`benchmarks._trees`
(``--presets``), and times, for each iteration dtype (bf16 as the official
Muon code, and float32):

* ``per leaf``: :func:`optx.linalg.newton_schulz` on each leaf's matrix view,
  one program per leaf, as ``optx.muon`` runs it on one device (``strategy='auto'``);
* ``stacked``: the same matrices stacked by shape, one iteration per shape
  (``strategy='batched'``);
* ``bare products``: the stacked iteration's 15 matrix products alone (5 steps
  × ``XXᵀ``, ``A²``, ``BX``), with no element-wise work between them — the
  rate these shapes allow on this device, the floor a miss is measured against.

FLOPs are the roofline model's (``benchmarks/roofline.py``,
``2·m·k·n`` per product, 15 products per matrix); the peak is a square bf16
matmul (``--peak-size``; 8192 on an accelerator, 1024 on a CPU), best of five.
Every row is ``FLOPs / median time`` and its fraction of that peak; the
issue's target is ≥ 60 % of the bf16 peak on an accelerator. The same command
runs on a CPU (bf16 matmuls are emulated there: only the f32 rows mean much).

Example::

  python benchmarks/newton_schulz_peak.py --presets small,gpt2-small --reps 20
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp

import optx
from optx._src import layouts

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _trees
import roofline

STEPS = 5
DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}


def matmul_peak(size: int, dtype: Any, repeats: int = 5) -> float:
    """FLOP/s of a ``size``³ matmul in ``dtype`` (best of ``repeats``)."""
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (size, size), dtype)
    b = jax.random.normal(k2, (size, size), dtype)
    mm = jax.jit(lambda a, b: a @ b)
    return 2.0 * size**3 / roofline._best_seconds(lambda: mm(a, b), repeats)


def routed_matrices(shape: _trees.GPTShape) -> list[jax.Array]:
    """Every routed leaf's matrix view, wide side last (random normal)."""
    params = _trees.gpt_params(shape, jax.random.key(0))
    router = optx.default_router()
    mats = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        layout = router.layout(optx.tree_utils.path_to_str(path), leaf)
        if layout is None:
            continue
        m = layouts.to_matrices(leaf, optx.resolve_layout(layout, leaf.shape))
        mats.append(jnp.swapaxes(m, -1, -2) if m.shape[-2] > m.shape[-1] else m)
    return mats


def stacked(mats: list[jax.Array]) -> list[jax.Array]:
    """The matrices concatenated by shape (one stack per distinct ``(m, n)``)."""
    groups: dict[tuple[int, int], list[jax.Array]] = {}
    for m in mats:
        groups.setdefault(m.shape[-2:], []).append(m.reshape(-1, *m.shape[-2:]))
    return [jnp.concatenate(g) for g in groups.values()]


def bare_products(x: jax.Array) -> jax.Array:
    """The 15 products of 5 quintic steps with nothing between them (``x``
    scaled to unit Frobenius norm first, so nothing overflows)."""
    x = x / jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), (-2, -1), keepdims=True)).astype(
        x.dtype
    )

    def step(_: int, x: jax.Array) -> jax.Array:
        a = x @ jnp.swapaxes(x, -1, -2)
        return (a @ a) @ x

    return jax.lax.fori_loop(0, STEPS, step, x)


def rows_for(mats: list[jax.Array], reps: int) -> list[tuple[str, float]]:
    """``(row name, median seconds)`` for every dtype and variant."""
    out = []
    for label, dtype in DTYPES.items():
        leaves = [m.astype(dtype) for m in mats]
        stacks = stacked(leaves)

        def ns(x: jax.Array, dtype: Any = dtype) -> jax.Array:
            return optx.linalg.newton_schulz(x, "keller", STEPS, compute_dtype=dtype)

        orthogonalize = jax.jit(lambda xs: [ns(x) for x in xs])
        bare = jax.jit(lambda xs: [bare_products(x) for x in xs])
        out.append((f"{label} per leaf", roofline.median_seconds(orthogonalize, leaves, reps)))
        out.append((f"{label} stacked", roofline.median_seconds(orthogonalize, stacks, reps)))
        out.append((f"{label} bare products", roofline.median_seconds(bare, stacks, reps)))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python benchmarks/newton_schulz_peak.py", description=__doc__)
    p.add_argument("--presets", default="small,gpt2-small")
    p.add_argument("--scanned", action="store_true", help="stacked (L, in, out) blocks")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--peak-size", type=int, default=None)
    args = p.parse_args(argv)
    accelerator = jax.default_backend() != "cpu"
    size = args.peak_size or (8192 if accelerator else 1024)
    peak = {label: matmul_peak(size, dtype) for label, dtype in DTYPES.items()}
    print(
        f"device {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
        f"{size}³ matmul peak: bf16 {peak['bf16'] / 1e12:.1f} TFLOP/s, "
        f"f32 {peak['f32'] / 1e12:.1f} TFLOP/s\n"
    )
    print("| tree | matrices | GFLOP | row | ms | TFLOP/s | × bf16 peak | × f32 peak |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for name in args.presets.split(","):
        shape = dataclasses.replace(_trees.PRESETS[name], scanned=args.scanned)
        mats = routed_matrices(shape)
        views = [tuple(m.reshape(-1, *m.shape[-2:]).shape) for m in mats]
        flops = sum(roofline.newton_schulz(v, STEPS).flops for v in views)
        n = sum(v[0] for v in views)
        for row, seconds in rows_for(mats, args.reps):
            rate = flops / seconds
            print(
                f"| {name} | {n} | {flops / 1e9:.1f} | {row} | {1e3 * seconds:.3f} | "
                f"{rate / 1e12:.2f} | {rate / peak['bf16']:.2f} | {rate / peak['f32']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
