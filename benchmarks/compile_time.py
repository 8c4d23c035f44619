"""Compile time of every registered optimizer, as ratios to ``optax.adamw``.

``python benchmarks/compile_time.py`` builds the GPT-style tree of
:mod:`benchmarks._trees` (``--preset``; unscanned ``blocks/0/…`` leaves and the
scanned ``(L, …)`` stack, or one of them with ``--tree``), then for every
registered optx optimizer (registry defaults), ``optax.adamw`` (the baseline)
and ``optax.contrib.muon`` (a reference row) measures what a user pays before
the first step:

* **trace** — ``jax.jit(step).trace(...)`` + ``.lower()`` (Python tracing and
  StableHLO emission; grows with the number of leaves and Python-side loops);
* **compile** — ``lowered.compile()`` (XLA: grows with the number of HLO
  ops, e.g. one Newton–Schulz region per matrix, ``lax.cond`` branches
  duplicated per leaf);

for the same jitted step as :mod:`benchmarks.step_cost` (``tx.update`` plus
``optax.apply_updates``, extra arguments built in the step). Each row is the
minimum over ``--repeats`` fresh ``jax.jit`` objects (no compilation cache),
optimizers measured round-robin, and printed as a ratio to ``optax.adamw`` in
the same run. The HLO size (instructions after optimization) is printed too:
it explains most of the compile time. Where :mod:`benchmarks._compile_floors`
declares a measured floor for an optimizer (the programs its math cannot
avoid), the floor's trace+lower+compile seconds (minimum over ``--repeats``,
measured in the same run after the optimizers) and ``total / floor`` are
printed; the cells are blank where no floor is declared.

Example::

  python benchmarks/compile_time.py --preset small --repeats 1
  python benchmarks/compile_time.py --tree scanned --optimizers muon,soap,root
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

import optx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _compile_floors
import _trees
from step_cost import BASELINE, Entry, entries, make_step


@dataclasses.dataclass
class CompileRow:
    """One optimizer on one tree: best trace and compile seconds over repeats."""

    name: str
    trace: float = float("inf")
    compile: float = float("inf")
    hlo_ops: int = 0
    error: str = ""
    floor: float | None = None

    @property
    def total(self) -> float:
        return self.trace + self.compile


def hlo_instruction_count(compiled: Any) -> int:
    """Instructions in the optimized HLO module (all computations)."""
    text = compiled.as_text()
    return sum(1 for line in text.splitlines() if " = " in line and line.startswith("  "))


def measure_once(entry: Entry, params: Any, grads: Any) -> tuple[float, float, int]:
    """Trace+lower and XLA compile seconds of a fresh jitted step."""
    step = make_step(entry, _trees.quadratic_loss)
    state = jax.eval_shape(entry.tx.init, params)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    lowered = step.trace(grads, state, params, key).lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, hlo_instruction_count(compiled)


def measure(names: Sequence[str], params: Any, repeats: int, log: Any = print) -> list[CompileRow]:
    rows = entries(names, params)
    out = [CompileRow(e.name) for e in rows]
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    for _ in range(repeats):
        for e, r in zip(rows, out):
            if r.error:
                continue
            try:
                tr, co, n = measure_once(e, params, grads)
            except Exception as err:  # one broken optimizer must not hide the others
                r.error = f"{type(err).__name__}: {err}"[:160]
                log(f"FAILED {e.name}: {r.error}")
                continue
            r.trace, r.compile, r.hlo_ops = min(r.trace, tr), min(r.compile, co), n
            log(f"{e.name}: trace {tr:.2f}s compile {co:.2f}s ({n} HLO instructions)")
            jax.clear_caches()
    for r in out:
        if r.error or r.name not in _compile_floors.FLOORS:
            continue
        for _ in range(repeats):
            f = _compile_floors.floor_seconds(r.name, params)
            r.floor = f if r.floor is None else min(r.floor, f)
        log(f"{r.name}: measured floor {r.floor:.2f}s")
    return out


def table(rows: list[CompileRow], title: str) -> tuple[str, list[dict[str, Any]]]:
    base = next(r for r in rows if r.name == BASELINE)
    lines = [
        f"{title}",
        "",
        "| optimizer | trace+lower s | XLA compile s | total / adamw | HLO instr. | HLO / adamw "
        "| floor s | total / floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    records = []
    for r in rows:
        if r.error:
            lines.append(f"| {r.name} | failed: {r.error} | | | | | | |")
            continue
        rec = {
            "optimizer": r.name,
            "trace_s": r.trace,
            "compile_s": r.compile,
            "total_ratio": r.total / base.total,
            "hlo_ops": r.hlo_ops,
            "hlo_ratio": r.hlo_ops / max(1, base.hlo_ops),
            "floor_s": r.floor,
            "floor_ratio": None if r.floor is None else r.total / r.floor,
        }
        records.append(rec)
        floor = "| | |" if r.floor is None else f"| {r.floor:.2f} | {rec['floor_ratio']:.2f} |"
        lines.append(
            f"| {r.name} | {r.trace:.2f} | {r.compile:.2f} | {rec['total_ratio']:.2f} | "
            f"{r.hlo_ops} | {rec['hlo_ratio']:.1f} {floor}"
        )
    return "\n".join(lines), records


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/compile_time.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--preset", default="small", choices=sorted(_trees.PRESETS))
    p.add_argument("--tree", default="both", choices=("both", "unscanned", "scanned"))
    p.add_argument("--optimizers", default="all", help="comma-separated registry names or 'all'")
    p.add_argument("--repeats", type=int, default=1, help="fresh compilations per row (min)")
    return p


def run(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    args = build_parser().parse_args(argv)
    names = (
        optx.list_optimizers()
        if args.optimizers == "all"
        else [n.strip() for n in args.optimizers.split(",") if n.strip()]
    )
    trees = ("unscanned", "scanned") if args.tree == "both" else (args.tree,)

    def log(msg: str) -> None:
        print(f"[compile_time] {msg}", file=sys.stderr, flush=True)

    results = {}
    for kind in trees:
        shape = dataclasses.replace(_trees.PRESETS[args.preset], scanned=kind == "scanned")
        params = _trees.gpt_params(shape, jax.random.key(0))
        n_leaves = len(jax.tree.leaves(params))
        log(f"{kind} tree: {optx.tree_utils.param_count(params):,} params in {n_leaves} leaves")
        rows = measure(names, params, args.repeats, log)
        title = (
            f"{kind} GPT-style tree (preset {args.preset}: {n_leaves} leaves, "
            f"{optx.tree_utils.param_count(params):,} params); device {jax.devices()[0].device_kind}; "
            f"min of {args.repeats} fresh compilations"
        )
        text, records = table(rows, title)
        print(text + "\n", flush=True)
        results[kind] = records
    return results


if __name__ == "__main__":
    run()
