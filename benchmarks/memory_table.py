"""Optimizer-state memory and update time of the memory-efficient family.

Prints, for a GPT-style parameter tree (:mod:`benchmarks._trees`, scanned
layers), the exact optimizer-state bytes per parameter (``optx.tree_utils.state_bytes`` /
``optx.tree_utils.state_bytes_by_group``, from ``jax.eval_shape``: nothing is allocated) of
AdamW, AdamW-8bit, APOLLO (rank 256), APOLLO-Mini, GaLore (rank 128),
GaLore-8bit, FRUGAL and DCT-AdamW — in total and split into the routed hidden
matrices and the other leaves — and the jitted update time as a ratio to
``optax.adamw`` measured in the same run: the steady-state step and the step
that refreshes the projectors (every 200 steps for GaLore/APOLLO/FRUGAL, every
step for DCT-AdamW).

Usage::

  python benchmarks/memory_table.py                          # memory: gpt2-small; time: small
  python benchmarks/memory_table.py --time-preset gpt2-small # time the big tree too (GPU)
  python benchmarks/memory_table.py --no-time                # memory only

On a shared CPU run it with ``OPENBLAS_NUM_THREADS=1``: the SVD/QR refreshes
call LAPACK, whose worker threads otherwise spin against other processes and
make the refresh step 10-100x slower than the arithmetic warrants.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import optax

import optx

# The benchmark scripts import each other as top-level modules.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _trees


def _shape(preset: str) -> _trees.GPTShape:
    return dataclasses.replace(_trees.PRESETS[preset], scanned=True)


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
    n_total = optx.tree_utils.param_count(params)
    router = optx.default_router()
    n_matrix = optx.tree_utils.param_count(_split(params, router)[0])
    base = optx.tree_utils.state_bytes(optax.adamw(1e-3), params)
    rows = [("optimizer", "state MiB", "B/param", "x AdamW", "matrix B/param", "other B/param")]
    for name, make in optimizers().items():
        tx = make()
        total = optx.tree_utils.state_bytes(tx, params)
        if optx.router_of(tx) is not None:
            per = optx.tree_utils.state_bytes_by_group(tx, params, per_param=True)
            mat, oth = f"{per['matrix']:.4f}", f"{per['fallback']:.3f}"
        else:  # element-wise (unrouted): its state on the same leaves, measured apart
            m_tree, o_tree = _split(params, router)
            mat = f"{optx.tree_utils.state_bytes(tx, m_tree) / optx.tree_utils.param_count(m_tree):.4f}"
            oth = f"{optx.tree_utils.state_bytes(tx, o_tree) / optx.tree_utils.param_count(o_tree):.3f}"
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
        (matrix if router.group(optx.tree_utils.path_to_str(path), leaf) == "matrix" else other)[
            name
        ] = leaf
    return matrix, other


def _format(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _time(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_table(shape: _trees.GPTShape, repeats: int) -> str:
    params = _trees.gpt_params(shape, jax.random.key(0))
    grads = _trees.gpt_params(shape, jax.random.key(1))
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
    parser.add_argument("--memory-preset", choices=sorted(_trees.PRESETS), default="gpt2-small")
    parser.add_argument("--time-preset", choices=sorted(_trees.PRESETS), default="small")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-time", action="store_true")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print(f"## Optimizer-state memory, {args.memory_preset} (scanned layers, fp32 params)\n")
    print(memory_table(_trees.gpt_param_shapes(_shape(args.memory_preset))))
    if not args.no_time:
        shape = _shape(args.time_preset)
        n = _trees.gpt_param_count(shape)
        print(f"\n## Update time, {args.time_preset} ({n / 1e6:.1f}M params), x optax.adamw\n")
        print(time_table(shape, args.repeats))


if __name__ == "__main__":
    main()
