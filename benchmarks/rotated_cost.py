"""Step cost and state memory of the rotated-basis family (SOAP, Conda, COSMOS).

Run:  python benchmarks/rotated_cost.py [--size rotated-cpu --steps 100]

On a GPT-style parameter tree (``benchmarks/_trees.py``, routed by
:func:`optx.default_router`), for ``optax.adamw``, ``optx.muon``, ``optx.soap``,
``optx.conda`` and ``optx.cosmos`` it measures, in one run:

* the jitted ``update`` time **amortized over** ``--steps`` consecutive steps
  from a fresh state (so SOAP's first-step eigh and its power-QR refreshes every
  10 steps, Conda's SVD every 50 and COSMOS's per-step QR are all included), and
  the median of single steps after that (the steady state between refreshes);
* the optimizer-state bytes per parameter (:func:`optx.tree_utils.state_bytes`),

each as a ratio to ``optax.adamw`` measured in the same run. The same script
runs unchanged on GPU/TPU (pick a larger ``--size``).

On a shared or small CPU, run with ``OPENBLAS_NUM_THREADS=1``: JAX's CPU eigh,
QR and SVD call LAPACK, whose threads oversubscribe busy cores (measured on a
loaded 2-core machine: a 512 x 512 QR took 560 ms multi-threaded, 25 ms with
one thread).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import jax
import optax
from _trees import PRESETS, GPTShape, gpt_params

import optx

SIZES: dict[str, GPTShape] = {
    **PRESETS,
    # ~1 M params: big enough that the factor sizes matter, small enough for a
    # shared 2-core CPU (SOAP's 1024 x 1024 embedding/head factors included).
    "rotated-cpu": GPTShape(vocab_size=1024, d_model=128, n_layers=4, n_heads=4),
}


def candidates(rank: int) -> dict[str, optax.GradientTransformation]:
    return {
        "optax.adamw": optax.adamw(1e-3),
        "optx.muon": optx.muon(0.02),
        "optx.soap": optx.soap(3e-3),
        "optx.soap (matrices only)": optx.soap(3e-3, rotate_fallback_matrices=False),
        "optx.conda": optx.conda(3e-3),
        f"optx.cosmos (rank {rank})": optx.cosmos(2e-3, rank=rank),
        f"optx.cosmos (rank {rank // 4})": optx.cosmos(2e-3, rank=rank // 4),
    }


def gradient_trees(params: Any, n: int) -> list[Any]:
    keys = jax.random.split(jax.random.key(1), n)
    return [
        jax.tree.map(lambda p, k=k: 0.01 * jax.random.normal(k, p.shape, p.dtype), params)
        for k in keys
    ]


def time_steps(
    tx: optax.GradientTransformation, params: Any, grads: list[Any], steps: int, reps: int
) -> tuple[float, float]:
    """(amortized seconds per step over ``steps`` from a fresh state, median single step)."""
    update = jax.jit(tx.update)
    state = tx.init(params)
    for g in grads[:2]:  # compile; both branches of the first-step cond are traced
        u, state = update(g, state, params)
    jax.block_until_ready((u, state))
    state = tx.init(params)
    t0 = time.perf_counter()
    for i in range(steps):
        u, state = update(grads[i % len(grads)], state, params)
    jax.block_until_ready((u, state))
    amortized = (time.perf_counter() - t0) / steps
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        u, state = update(grads[i % len(grads)], state, params)
        jax.block_until_ready((u, state))
        times.append(time.perf_counter() - t0)
    return amortized, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="rotated-cpu", choices=sorted(SIZES))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=10, help="single steps for the median")
    ap.add_argument("--rank", type=int, default=64, help="COSMOS rank (also rank/4)")
    args = ap.parse_args()
    shape = SIZES[args.size]
    params = gpt_params(shape, jax.random.key(0))
    n_params = optx.tree_utils.param_count(params)
    grads = gradient_trees(params, 4)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    print(
        f"GPT-style tree '{args.size}': {shape}, {n_params / 1e6:.2f}M params; "
        f"update time amortized over {args.steps} steps from a fresh state, and the "
        f"median of {args.reps} single steps after them\n"
    )
    rows = []
    for name, tx in candidates(args.rank).items():
        amortized, single = time_steps(tx, params, grads, args.steps, args.reps)
        rows.append((name, amortized, single, optx.tree_utils.state_bytes(tx, params) / n_params))
    base_t, base_s, base_b = rows[0][1], rows[0][2], rows[0][3]
    print(
        "| optimizer | ms/step (amortized) | × adamw | ms/step (median) | × adamw "
        "| state bytes/param | × adamw |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, t, s, b in rows:
        print(
            f"| {name} | {t * 1e3:.2f} | {t / base_t:.2f} | {s * 1e3:.2f} | {s / base_s:.2f} "
            f"| {b:.2f} | {b / base_b:.2f} |"
        )


if __name__ == "__main__":
    main()
