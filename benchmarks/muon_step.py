"""Jitted update time of optx.muon / optx.normuon vs optax.contrib.muon and optax.adamw.

Run:  python benchmarks/muon_step.py [--d-model 256 --layers 4 --vocab 4096 --reps 20]

Builds a GPT-style parameter tree (per-layer 2-D kernels, so optax.contrib.muon's
``ndim == 2`` rule routes them as optx's router does; embeddings and the head go
to AdamW in both), times ``jax.jit(tx.update)`` (median of ``--reps`` calls after
warm-up) and prints each time as a ratio to ``optax.adamw`` measured in the same
run. The same script runs unchanged on GPU/TPU.
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


def gpt_tree(d: int, layers: int, vocab: int) -> dict[str, Any]:
    key = iter(jax.random.split(jax.random.key(0), 8 * layers + 4))
    n = lambda *s: 0.02 * jax.random.normal(next(key), s)  # noqa: E731
    tree: dict[str, Any] = {"embed": {"embedding": n(vocab, d)}, "lm_head": {"kernel": n(d, vocab)}}
    for i in range(layers):
        tree[f"block_{i}"] = {
            "ln1": {"scale": jnp.ones(d)},
            "attn_qkv": {"kernel": n(d, 3 * d)},
            "attn_out": {"kernel": n(d, d)},
            "ln2": {"scale": jnp.ones(d)},
            "mlp_up": {"kernel": n(d, 4 * d), "bias": jnp.zeros(4 * d)},
            "mlp_down": {"kernel": n(4 * d, d), "bias": jnp.zeros(d)},
        }
    return tree


def contrib_muon_labels(params: Any) -> Any:
    """optax.contrib.muon's default rule, but with embeddings/heads on Adam as optx does."""

    def dim_nums(path: Any, x: jax.Array) -> Any:
        p = optx.path_to_str(path)
        if x.ndim != 2 or "embed" in p or "lm_head" in p:
            return None
        return optax.contrib.MuonDimensionNumbers(0, 1)

    return jax.tree_util.tree_map_with_path(dim_nums, params)


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
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    params = gpt_tree(args.d_model, args.layers, args.vocab)
    n_params = optx.param_count(params)
    contrib_dims = contrib_muon_labels(params)
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
        f"GPT-style tree: d_model={args.d_model}, layers={args.layers}, vocab={args.vocab}, "
        f"{n_params / 1e6:.2f}M params; median of {args.reps} jitted updates\n"
    )
    base = None
    rows = []
    for name, tx in candidates.items():
        t = time_update(tx, params, args.reps)
        base = t if base is None else base
        rows.append((name, t * 1e3, t / base, optx.state_bytes(tx, params) / n_params))
    print("| optimizer | update ms | × optax.adamw | state bytes/param |")
    print("| --- | ---: | ---: | ---: |")
    for name, ms, ratio, bpp in rows:
        print(f"| {name} | {ms:.2f} | {ratio:.2f} | {bpp:.2f} |")


if __name__ == "__main__":
    main()
