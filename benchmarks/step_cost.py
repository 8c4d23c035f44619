"""Step cost of every registered optimizer, as ratios to ``optax.adamw``.

``python -m benchmarks.step_cost`` builds a GPT-style parameter tree
(:mod:`benchmarks._trees`; ``--preset`` or explicit sizes), then for every
registered optx optimizer (its registry defaults), ``optax.adamw`` (the
baseline) and ``optax.contrib.muon`` (a reference row) measures

* the jitted optimizer step ``grads, state, params -> updates, state, params``
  (extra arguments built inside the step from a surrogate loss, so curvature
  methods pay for their Hessian-vector products), median over ``--repeats``
  timed calls after compilation; optimizers are timed round-robin so machine
  noise spreads evenly;
* optimizer-state bytes per parameter (``optx.tree_utils.state_bytes``, exact, abstract);

and prints a Markdown table with both as ratios to ``optax.adamw`` measured in
the same run, next to each optimizer's **roofline bound** (:mod:`roofline`: its
cost model's FLOPs and bytes per step at this device's peak matmul FLOP/s and
streaming bandwidth, both measured by a calibration kernel at start) and the
fraction of it reached (``bound / measured``; the bound is the typical step's,
as the median measures it, and the last column adds periodic refreshes and
curvature oracles amortized over their period). The same command runs unchanged
on a GPU/TPU (use a larger ``--preset``, e.g. ``gpt2-small``).

Example::

  python benchmarks/step_cost.py --preset small --repeats 20
  python -m benchmarks.step_cost --preset small --repeats 20
  python -m benchmarks.step_cost --preset gpt2-small --optimizers muon,normuon --csv cost.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optx

# The benchmark scripts import each other as top-level modules, whether run as
# `python benchmarks/step_cost.py` or `python -m benchmarks.step_cost`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _trees
import roofline
from muon_step import contrib_muon_dims

BASELINE = "optax.adamw"


@dataclasses.dataclass
class Entry:
    """One row: a name, a transform and how to build its extra args."""

    name: str
    tx: optax.GradientTransformation
    spec: optx.OptimizerSpec | None = None
    times: list[float] = dataclasses.field(default_factory=list)
    state_bytes: int = 0
    step: Callable[..., Any] | None = None
    state: Any = None
    compile_seconds: float = 0.0
    error: str = ""


def entries(names: Sequence[str], params: Any) -> list[Entry]:
    """The baseline, the optax Muon reference, and the requested optx optimizers.

    ``optax.contrib.muon`` gets its dimension numbers from optx's router, so it
    orthogonalizes the same leaves as ``optx.muon`` (its own ``ndim == 2`` rule
    would send the 3-D attention kernels to Adam and the embedding to Muon).
    """
    rows = [
        Entry(BASELINE, optax.adamw(1e-3, weight_decay=1e-4)),
        Entry(
            "optax.contrib.muon",
            optax.contrib.muon(0.02, muon_weight_dimension_numbers=contrib_muon_dims(params)),
        ),
    ]
    for n in names:
        spec = optx.get_optimizer(n)
        rows.append(Entry(n, spec.build(), spec))
    return rows


def make_step(entry: Entry, loss_fn: Callable[[Any], jax.Array]) -> Callable[..., Any]:
    tx, spec = entry.tx, entry.spec

    def step(grads: Any, state: Any, params: Any, key: jax.Array) -> tuple[Any, Any]:
        extra = {}
        if spec is not None and spec.extra_args is not None:
            ctx = optx.ExtraArgsContext(
                loss_fn=loss_fn, params=params, grads=grads, loss=loss_fn(params), key=key
            )
            extra = spec.make_extra_args(ctx)
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(1,))


def measure(
    rows: list[Entry], params: Any, grads: Any, *, repeats: int, log: Callable[[str], None]
) -> None:
    """Compiles every step, then times ``repeats`` rounds, round-robin."""
    key = jax.random.key(0)
    for e in rows:
        try:
            e.state_bytes = optx.tree_utils.state_bytes(e.tx, params)
            e.step = make_step(e, _trees.quadratic_loss)
            t0 = time.perf_counter()
            e.state = e.tx.init(params)
            out = e.step(grads, e.state, params, key)
            jax.block_until_ready(out)
            e.state = out[1]
            e.compile_seconds = time.perf_counter() - t0
            log(f"compiled {e.name} ({e.compile_seconds:.1f}s)")
        except Exception as err:  # a broken optimizer must not hide the others
            e.error = f"{type(err).__name__}: {err}"[:200]
            log(f"FAILED {e.name}: {e.error}")
    live = [e for e in rows if not e.error]
    for _ in range(repeats):
        for e in live:
            t0 = time.perf_counter()
            out = e.step(grads, e.state, params, key)
            jax.block_until_ready(out)
            e.times.append(time.perf_counter() - t0)
            e.state = out[1]


def table(
    rows: list[Entry],
    n_params: int,
    tree: roofline.TreeInfo | None = None,
    peaks: roofline.Peaks | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    base = next(e for e in rows if e.name == BASELINE)
    base_t = statistics.median(base.times)
    records = []
    head = "| optimizer | ms/step | time / adamw | state bytes/param | state / adamw |"
    rule = "| --- | --- | --- | --- | --- |"
    if peaks is not None:
        head += " GFLOP | MB | bound ms | roofline | amortized bound ms |"
        rule += " --- | --- | --- | --- | --- |"
    lines = [head, rule]
    for e in rows:
        if e.error:
            lines.append(f"| {e.name} | failed: {e.error} | | | |")
            continue
        t = statistics.median(e.times)
        bpp = e.state_bytes / n_params
        rec = {
            "optimizer": e.name,
            "ms_per_step": 1e3 * t,
            "time_ratio": t / base_t,
            "state_bytes_per_param": bpp,
            "state_ratio": e.state_bytes / max(1, base.state_bytes),
            "compile_seconds": e.compile_seconds,
        }
        line = (
            f"| {e.name} | {rec['ms_per_step']:.2f} | {rec['time_ratio']:.2f} | "
            f"{bpp:.2f} | {rec['state_ratio']:.2f} |"
        )
        if peaks is not None and tree is not None:
            cost = roofline.cost_of(e.name, tree)
            bound = cost.seconds(peaks.flops, peaks.bytes)
            rec.update(gflop=cost.flops / 1e9, mbytes=cost.bytes / 1e6, bound_ms=1e3 * bound)
            rec["roofline_fraction"] = bound / t
            rec["amortized_bound_ms"] = 1e3 * cost.seconds(peaks.flops, peaks.bytes, True)
            line += (
                f" {rec['gflop']:.2f} | {rec['mbytes']:.0f} | {rec['bound_ms']:.2f} | "
                f"{rec['roofline_fraction']:.2f} | {rec['amortized_bound_ms']:.2f} |"
            )
        records.append(rec)
        lines.append(line)
    return "\n".join(lines), records


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.step_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--preset", default="small", choices=sorted(_trees.PRESETS))
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--scanned", action="store_true", help="stacked (L, in, out) blocks")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--optimizers", default="all", help="comma-separated registry names or 'all'")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    p.add_argument("--no-roofline", action="store_true", help="skip calibration and bounds")
    return p


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    shape = _trees.PRESETS[args.preset]
    changes = {
        k: v
        for k, v in (
            ("vocab_size", args.vocab),
            ("d_model", args.d_model),
            ("n_layers", args.layers),
            ("n_heads", args.heads),
        )
        if v is not None
    }
    shape = dataclasses.replace(shape, scanned=args.scanned, **changes)
    names = (
        optx.list_optimizers()
        if args.optimizers == "all"
        else [n.strip() for n in args.optimizers.split(",") if n.strip()]
    )
    dtype = jnp.dtype(args.dtype)
    params = _trees.gpt_params(shape, jax.random.key(0), dtype)
    grads = _trees.gpt_params(shape, jax.random.key(1), dtype, std=1e-3)
    n_params = optx.tree_utils.param_count(params)
    rows = entries(names, params)

    def log(msg: str) -> None:
        print(f"[step_cost] {msg}", file=sys.stderr, flush=True)

    log(f"{shape} -> {n_params:,} params, {args.dtype}, device {jax.devices()[0].device_kind}")
    peaks = tree = None
    if not args.no_roofline:
        peaks = roofline.calibrate()
        tree = roofline.TreeInfo.from_params(params)
        log(f"peaks: {peaks.flops / 1e9:.1f} GFLOP/s f32 matmul, {peaks.bytes / 1e9:.1f} GB/s")
    measure(rows, params, grads, repeats=args.repeats, log=log)
    text, records = table(rows, n_params, tree, peaks)
    peak_text = (
        ""
        if peaks is None
        else f"; peaks {peaks.flops / 1e9:.1f} GFLOP/s, {peaks.bytes / 1e9:.1f} GB/s (calibrated)"
    )
    print(
        f"GPT-style tree: d={shape.d_model} L={shape.n_layers} heads={shape.n_heads} "
        f"vocab={shape.vocab_size} scanned={shape.scanned} ({n_params:,} params, {args.dtype}); "
        f"device: {jax.devices()[0].device_kind}; median of {args.repeats} steps{peak_text}\n"
    )
    print(text)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
    return records


if __name__ == "__main__":
    run()
