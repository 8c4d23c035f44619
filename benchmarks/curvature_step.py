"""Optimizer-side update cost and state memory of the curvature family vs optax.adamw.

Run:  python benchmarks/curvature_step.py [--size small --reps 5]

Builds a GPT-style parameter tree (``benchmarks/_trees.py``) and times
``jax.jit`` of ``update`` for every curvature optimizer, as a ratio to
``optax.adamw`` measured in the same run. Each timing is the median over
``--reps`` windows of 10 consecutive updates (one full Sophia refresh period,
ten MKOR steps with one factor refresh), divided by 10.

What is measured is the *optimizer's own* work: the loss closure is a cheap
elementwise function of the parameters (no model), so an HVP here costs two
elementwise passes; on a real model the Hessian-vector product or the sampled
backward pass dominates (see ``examples/curvature_demo.py`` for end-to-end step
times). MKOR derives its rank-1 statistics from the gradients (no activations
without a model); M-FAC uses ``--mfac-grads`` gradients (its state is m × d).
``optax.contrib.sophia`` (Sophia-H, Hutchinson) is timed with the same closure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from _trees import PRESETS, gpt_params

import optx


def loss_fn(params: Any) -> jax.Array:
    leaves = jax.tree.leaves(params)
    return sum(jnp.sum(0.5 * x**2 + 0.01 * x**4) for x in leaves)


def sampled_loss_fn(params: Any, key: jax.Array) -> jax.Array:
    return loss_fn(params)


def time_updates(tx: optax.GradientTransformation, params: Any, reps: int, window: int = 10):
    grads = jax.grad(loss_fn)(params)
    state = tx.init(params)
    extra = {
        "loss_fn": loss_fn,
        "obj_fn": loss_fn,
        "sampled_loss_fn": sampled_loss_fn,
        "full_params": params,
        "loss": jnp.asarray(1.0),
    }

    @jax.jit
    def update(state: Any) -> tuple[Any, Any]:
        return tx.update(grads, state, params, **extra)

    u, state = update(state)
    jax.block_until_ready(u)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(window):
            u, state = update(state)
        jax.block_until_ready((u, state))
        times.append((time.perf_counter() - t0) / window)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="small", choices=sorted(PRESETS))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--mfac-grads", type=int, default=16)
    args = ap.parse_args()
    shape = PRESETS[args.size]
    params = gpt_params(shape, jax.random.key(0))
    n_params = optx.tree_utils.param_count(params)
    m = args.mfac_grads
    candidates = {
        "optax.adamw": optax.adamw(1e-3),
        "optax.contrib.sophia (H)": optax.contrib.sophia(1e-3),
        "optx.sophia_g": optx.sophia_g(1e-3, tokens_per_batch=1024),
        "optx.sophia_h": optx.sophia_h(1e-3),
        "optx.adahessian": optx.adahessian(0.1),
        f"optx.mfac (m={m})": optx.mfac(1e-3, num_grads=m),
        f"optx.mfac (m={m}, blockwise)": optx.mfac(1e-3, num_grads=m, blockwise=True),
        "optx.mkor (SGD)": optx.mkor(0.1),
        "optx.mkor (AdamW)": optx.mkor(1e-3, inner="adamw"),
        "optx.mkor_h (SGD)": optx.mkor_h(0.1),
    }
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}"
    )
    print(
        f"GPT-style tree '{args.size}': {shape}, {n_params / 1e6:.2f}M params; "
        f"median of {args.reps} windows of 10 jitted updates\n"
    )
    base = None
    rows = []
    for name, tx in candidates.items():
        t = time_updates(tx, params, args.reps)
        base = t if base is None else base
        rows.append((name, t * 1e3, t / base, optx.tree_utils.state_bytes(tx, params) / n_params))
    print("| optimizer | update ms | × optax.adamw | state bytes/param |")
    print("| --- | ---: | ---: | ---: |")
    for name, ms, ratio, bpp in rows:
        print(f"| {name} | {ms:.2f} | {ratio:.2f} | {bpp:.2f} |")


if __name__ == "__main__":
    main()
