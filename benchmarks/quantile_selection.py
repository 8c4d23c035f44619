"""ROOT's per-matrix quantile by exact selection: key bits decided per counting pass.

``python benchmarks/quantile_selection.py`` times ``optx.clip_by_quantile`` (ROOT's
soft threshold: one exact 0.9-quantile selection per matrix, then the clip) over the
matrices the default router sends to ROOT in a GPT-style tree of
:mod:`benchmarks._trees` (``--preset``, ``--scanned``), with the selection deciding
``r`` = 1, 2 or 4 key bits per counting pass (``2ʳ − 1`` counts in one variadic
reduction; ``32/r + 2`` passes for float32). Every variant gives the same thresholds
(checked bit for bit before timing). Printed: the median wall time of each,
interleaved over ``--repeats`` rounds, as a ratio to ``r = 1`` (the default,
:func:`optx._src.clipping.bits_per_pass`), and the bytes bound of the passes
(``passes × 4 B × entries`` at the streaming bandwidth that
``benchmarks/roofline.py`` calibrates).

Example::

  python benchmarks/quantile_selection.py --preset small --repeats 15
  python benchmarks/quantile_selection.py --preset gpt2-small --scanned   # a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import jax
import numpy as np
import optax

import optx
from optx._src import clipping

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _trees
import roofline

BITS = (1, 2, 4)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python benchmarks/quantile_selection.py", description=__doc__)
    p.add_argument("--preset", default="small", choices=sorted(_trees.PRESETS))
    p.add_argument("--scanned", action="store_true")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    shape = dataclasses.replace(_trees.PRESETS[args.preset], scanned=args.scanned)
    grads = _trees.gpt_params(shape, jax.random.key(1), std=1e-3)
    tx = optx.clip_by_quantile(0.9, 1e-9, layout=optx.default_router())
    default = clipping.bits_per_pass
    steps = {}
    try:
        for bits in BITS:
            clipping.bits_per_pass = lambda b=bits: b
            lowered = jax.jit(lambda g: tx.update(g, optax.EmptyState())[0]).lower(grads)
            steps[bits] = lowered.compile()
    finally:
        clipping.bits_per_pass = default
    outs = {bits: jax.block_until_ready(step(grads)) for bits, step in steps.items()}
    for bits in BITS[1:]:
        for a, b in zip(jax.tree.leaves(outs[1]), jax.tree.leaves(outs[bits]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    times: dict[int, list[float]] = {bits: [] for bits in BITS}
    for _ in range(args.repeats):
        for bits, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(grads))
            times[bits].append(time.perf_counter() - t0)
    entries = roofline.TreeInfo.from_params(grads).matrix_size
    peaks = roofline.calibrate()
    print(
        f"GPT-style tree {args.preset} (scanned={args.scanned}): {entries:,} routed entries; "
        f"device {jax.devices()[0].device_kind}; streaming {peaks.bytes / 1e9:.0f} GB/s; "
        f"median of {args.repeats} interleaved rounds; thresholds bit-identical across r\n"
    )
    print("| bits per pass | passes | ms | × r = 1 | passes' bytes bound ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    base = statistics.median(times[1])
    for bits in BITS:
        t = statistics.median(times[bits])
        passes = 32 // bits + 2
        bound = passes * 4 * entries / peaks.bytes
        print(f"| {bits} | {passes} | {1e3 * t:.2f} | {t / base:.2f} | {1e3 * bound:.2f} |")


if __name__ == "__main__":
    main()
