"""Optimizer-state memory and update time of the memory-efficient family.

Prints, for a GPT-style parameter tree, the exact optimizer-state bytes per
parameter (``optx.state_bytes`` / ``optx.state_bytes_by_group``, from
``jax.eval_shape``: nothing is allocated) of AdamW, AdamW-8bit, APOLLO (rank
256), APOLLO-Mini, GaLore (rank 128), GaLore-8bit, FRUGAL and DCT-AdamW — in
total and on the routed hidden-matrix leaves — and the jitted update time as a
ratio to ``optax.adamw`` measured in the same run (steady-state step and, for
methods with a periodic projector refresh, the refresh step).

Usage::

  python benchmarks/memory_table.py                  # GPT-2-small shapes, timing on a small GPT
  python benchmarks/memory_table.py --time-size gpt2 # time on the GPT-2-small tree too
  python benchmarks/memory_table.py --no-time        # memory only

The memory table is computed for the GPT-2-small shapes (124M parameters:
vocab 50257, d 768, 12 scanned layers) whatever ``--time-size`` says.
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

import optx

SIZES = {
    "small": {"vocab": 4096, "d": 256, "layers": 4, "ctx": 256},
    "gpt2": {"vocab": 50257, "d": 768, "layers": 12, "ctx": 1024},
}


def gpt_params(vocab: int, d: int, layers: int, ctx: int) -> dict[str, Any]:
    """Abstract GPT-2-style parameters, scanned layers stacked on axis 0."""
    f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    return {
        "wte": {"embedding": f(vocab, d)},
        "wpe": {"embedding": f(ctx, d)},
        "blocks": {
            "ln1": {"scale": f(layers, d), "bias": f(layers, d)},
            "attn": {
                "qkv": {"kernel": f(layers, d, 3 * d), "bias": f(layers, 3 * d)},
                "proj": {"kernel": f(layers, d, d), "bias": f(layers, d)},
            },
            "ln2": {"scale": f(layers, d), "bias": f(layers, d)},
            "mlp": {
                "fc": {"kernel": f(layers, d, 4 * d), "bias": f(layers, 4 * d)},
                "proj": {"kernel": f(layers, 4 * d, d), "bias": f(layers, d)},
            },
        },
        "ln_f": {"scale": f(d), "bias": f(d)},
        "lm_head": {"kernel": f(d, vocab)},
    }


def optimizers() -> dict[str, Callable[[], optax.GradientTransformation]]:
    return {
        "adamw (optax)": lambda: optax.adamw(1e-3),
        "adamw_8bit": lambda: optx.adamw_8bit(1e-3),
        "apollo (r=256)": lambda: optx.apollo(1e-2, rank=256),
        "apollo_mini": lambda: optx.apollo_mini(1e-2),
        "galore (r=128)": lambda: optx.galore(1e-2, rank=128),
        "galore_8bit (r=128)": lambda: optx.galore_8bit(1e-2, rank=128),
        "frugal (block, rho=0.25)": lambda: optx.frugal(1e-3),
        "dct_adamw (r=128)": lambda: optx.dct_adamw(1e-3, rank=128),
    }


def memory_table(params: Any) -> str:
    n_total = optx.param_count(params)
    router = optx.default_router()
    n_matrix = sum(
        int(jnp.prod(jnp.array(a.shape))) for a in router.assignments(params) if a.group == "matrix"
    )
    base = optx.state_bytes(optax.adamw(1e-3), params)
    rows = [("optimizer", "state MiB", "B/param", "x AdamW", "matrix B/param", "other B/param")]
    for name, make in optimizers().items():
        tx = make()
        total = optx.state_bytes(tx, params)
        if optx.router_of(tx) is not None:
            per = optx.state_bytes_by_group(tx, params, per_param=True)
            mat, oth = f"{per['matrix']:.4f}", f"{per['fallback']:.3f}"
        else:  # element-wise (unrouted): its state on the same leaves, measured apart
            m_tree, o_tree = _split(params, router)
            mat = f"{optx.state_bytes(tx, m_tree) / optx.param_count(m_tree):.4f}"
            oth = f"{optx.state_bytes(tx, o_tree) / optx.param_count(o_tree):.3f}"
        rows.append(
            (
                name,
                f"{total / 2**20:.1f}",
                f"{total / n_total:.3f}",
                f"{total / base:.3f}",
                mat,
                oth,
            )
        )
    return _format(rows) + (
        f"\n\n{n_total / 1e6:.1f}M parameters, {n_matrix / 1e6:.1f}M in routed hidden matrices"
    )


def _split(params: Any, router: optx.Router) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat {path: leaf} trees of the matrix-routed and the other leaves."""
    matrix, other = {}, {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path)
        (matrix if router.group(optx.path_to_str(path), leaf) == "matrix" else other)[name] = leaf
    return matrix, other


def _format(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _concrete(params: Any, key: jax.Array) -> Any:
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten(
        [0.02 * jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)]
    )


def _time(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_table(params: Any, repeats: int) -> str:
    params = _concrete(params, jax.random.key(0))
    grads = _concrete(params, jax.random.key(1))
    rows = [("optimizer", "steady ms", "x adamw", "refresh ms", "x adamw")]
    base = None
    for name, make in optimizers().items():
        tx = make()
        update = jax.jit(tx.update)
        state0 = jax.jit(tx.init)(params)
        _, state1 = update(grads, state0, params)  # count = 1: no refresh (T = 200)
        steady = _time(lambda u=update, s=state1: u(grads, s, params), repeats)
        refresh = _time(lambda u=update, s=state0: u(grads, s, params), repeats)
        base = steady if base is None else base
        rows.append(
            (
                name,
                f"{1e3 * steady:.1f}",
                f"{steady / base:.2f}",
                f"{1e3 * refresh:.1f}",
                f"{refresh / base:.2f}",
            )
        )
    return _format(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-time", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print("## Optimizer-state memory, GPT-2-small shapes, untied LM head (fp32 params)\n")
    print(memory_table(gpt_params(**SIZES["gpt2"])))
    if not args.no_time:
        cfg = SIZES[args.time_size]
        n = optx.param_count(gpt_params(**cfg))
        print(f"\n## Update time ({args.time_size}: {n / 1e6:.1f}M params), ratio to optax.adamw\n")
        print(time_table(gpt_params(**cfg), args.repeats))


if __name__ == "__main__":
    main()
