"""Jitted update time of optx.muon / optx.normuon vs optax.contrib.muon and optax.adamw.

Run:  python benchmarks/muon_step.py [--size small --reps 20]

Builds a GPT-style parameter tree (``benchmarks/_trees.py``; optax.contrib.muon
gets dimension numbers from optx's router so both send the same leaves to
Newton–Schulz and the embeddings/head to AdamW), times ``jax.jit(tx.update)`` (median of ``--reps`` calls after
warm-up) and prints each time as a ratio to ``optax.adamw`` measured in the same
run. The same script runs unchanged on GPU/TPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from _trees import PRESETS, gpt_params

import optx


def router_dimension_numbers(params: Any, make: Callable[[Any, Any], Any]) -> Any:
    """Dimension numbers for an optax.contrib matrix method from optx's router.

    ``make(path, resolved_layout)`` builds one leaf's dimension numbers; leaves
    the router sends to the fallback get None. (optax's own default,
    ``ndim == 2``, would send the 3-D attention kernels to Adam and the
    embedding/head to the matrix method.)
    """
    router = optx.default_router()

    def dim_nums(path: Any, x: jax.Array) -> Any:
        layout = router.layout(optx.tree_utils.path_to_str(path), x)
        if layout is None:
            return None
        return make(path, optx.resolve_layout(layout, x.shape))

    return jax.tree_util.tree_map_with_path(dim_nums, params)


def contrib_muon_dims(params: Any) -> Any:
    """optax.contrib.muon dimension numbers from optx's router, so both route alike."""
    return router_dimension_numbers(
        params,
        lambda path, r: optax.contrib.MuonDimensionNumbers(r.reduction_axes, r.output_axes),
    )


def time_update(tx: optax.GradientTransformation, params: Any, reps: int) -> float:
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    u, state = update(grads, state, params)
    jax.block_until_ready(u)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        u, state = update(grads, state, params)
        jax.block_until_ready((u, state))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="small", choices=sorted(PRESETS))
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    shape = PRESETS[args.size]
    params = gpt_params(shape, jax.random.key(0))
    n_params = optx.tree_utils.param_count(params)
    contrib_dims = contrib_muon_dims(params)
    candidates = {
        "optax.adamw": optax.adamw(1e-3),
        "optax.contrib.muon": optax.contrib.muon(0.02, muon_weight_dimension_numbers=contrib_dims),
        "optx.muon": optx.muon(0.02),
        "optx.muon (bf16 NS)": optx.muon(0.02, ns_dtype="bfloat16"),
        "optx.muon (batched)": optx.muon(0.02, strategy="batched"),
        "optx.normuon": optx.normuon(0.02),
    }
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
    )
    print(
        f"GPT-style tree '{args.size}': {shape}, {n_params / 1e6:.2f}M params; "
        f"median of {args.reps} jitted updates\n"
    )
    base = None
    rows = []
    for name, tx in candidates.items():
        t = time_update(tx, params, args.reps)
        base = t if base is None else base
        rows.append((name, t * 1e3, t / base, optx.tree_utils.state_bytes(tx, params) / n_params))
    print("| optimizer | update ms | × optax.adamw | state bytes/param |")
    print("| --- | ---: | ---: | ---: |")
    for name, ms, ratio, bpp in rows:
        print(f"| {name} | {ms:.2f} | {ratio:.2f} | {bpp:.2f} |")


if __name__ == "__main__":
    main()
