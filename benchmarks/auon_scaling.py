"""AuON's linear-time update vs Muon's Newton–Schulz, square matrices 256..4096.

Run:  python benchmarks/auon_scaling.py [--sizes 256 512 1024 2048 4096] [--budget 4]

For one ``n × n`` hidden matrix, times ``jax.jit(tx.update)`` of ``optx.auon``,
``optx.hybrid_auon`` (1 Newton–Schulz step), ``optx.muon`` (5 steps) and
``optax.adamw`` in the same run (median of repeated calls after a warm-up
call; the number of repetitions adapts to ``--budget`` seconds per cell, at
least one, so the 4096² Muon cell stays within a minute on a laptop CPU).
Prints milliseconds, ratios to ``optax.adamw`` and to AuON, and the time per
element (``ns / n²``) — flat for a linear-time method — and per ``n³`` for
Muon. The same script runs unchanged on GPU/TPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optx


def time_update(tx: optax.GradientTransformation, n: int, budget: float) -> float:
    params = {"hidden": {"kernel": jnp.ones((n, n), jnp.float32) / n}}
    grads = {"hidden": {"kernel": jax.random.normal(jax.random.key(n), (n, n)) / n}}
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = update(grads, state, params)  # compile + first call
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    jax.block_until_ready(update(grads, state, params))
    first = time.perf_counter() - t0
    reps = max(1, min(50, int(budget / max(first, 1e-6))))
    times = [first]
    for _ in range(reps - 1):
        t0 = time.perf_counter()
        jax.block_until_ready(update(grads, state, params))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: Any = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per timing cell")
    args = ap.parse_args(argv)
    candidates = {
        "adamw": optax.adamw(1e-3),
        "auon": optx.auon(0.055),
        "hybrid_auon": optx.hybrid_auon(0.055),
        "muon": optx.muon(0.02),
    }
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    header = (
        f"{'n':>5} | {'adamw ms':>9} {'auon ms':>9} {'hybrid ms':>9} {'muon ms':>10} | "
        f"{'auon/adamw':>10} {'muon/adamw':>10} {'muon/auon':>9} | "
        f"{'auon ns/n²':>10} {'muon ns/n³':>10}"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        t = {name: time_update(tx, n, args.budget) for name, tx in candidates.items()}
        print(
            f"{n:>5} | {1e3 * t['adamw']:>9.2f} {1e3 * t['auon']:>9.2f} "
            f"{1e3 * t['hybrid_auon']:>9.2f} {1e3 * t['muon']:>10.1f} | "
            f"{t['auon'] / t['adamw']:>10.2f} {t['muon'] / t['adamw']:>10.1f} "
            f"{t['muon'] / t['auon']:>9.1f} | "
            f"{1e9 * t['auon'] / n**2:>10.3f} {1e9 * t['muon'] / n**3:>10.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
