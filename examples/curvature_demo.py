"""Curvature optimizers on the benchmark CNN and transformer: steps and time to a target.

Run (a few minutes on a laptop CPU at the default size)::

  python -m examples.curvature_demo                 # both tasks, 300 steps
  python -m examples.curvature_demo --tasks cnn --steps 400
  python -m examples.curvature_demo --sweep         # pick each learning rate from a grid

Two tasks from :mod:`examples.models` / :mod:`examples.data`:

* ``cnn``: the CNN (two 3×3 convs, a hidden Dense layer, a head) on
  scikit-learn's 8×8 digits, batch 64;
* ``lm``: the character transformer (d=64, 2 blocks, 4 heads, context 64,
  un-scanned blocks so every layer is captured) on the Shakespeare corpus,
  batch 16.

Six optimizers, each with a warmup + cosine schedule and the same
initialization and batches: SGD-momentum, **MKOR(SGD-momentum)**, AdamW,
**MKOR(AdamW)**, **Sophia-G** and **AdaHessian**. MKOR gets its per-layer
statistics from :func:`optx.curvature.value_grad_and_captures` (inputs and output
gradients of every Dense/LinearGeneral/Conv layer), Sophia-G its
Gauss–Newton–Bartlett estimate from labels sampled from the model's logits and
AdaHessian its Hutchinson diagonal from the loss closure, both through
:func:`optx.curvature.nnx_curvature_args`.

The table reports, per task, each method's final validation loss and the
number of steps and training seconds (compilation and evaluation excluded) it
needs to reach its **reference's final validation loss**: MKOR(SGD) against
SGD-momentum, MKOR(AdamW), Sophia-G and AdaHessian against AdamW. MKOR's claim
(arXiv 2306.01685) is fewer steps than its first-order inner optimizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optx
from examples import data, models

Batch = tuple[Any, Any]


@dataclasses.dataclass
class Task:
    name: str
    make_model: Callable[[], nnx.Module]
    loss: Callable[[nnx.Module, Batch], jax.Array]
    logits: Callable[[nnx.Module, Batch], jax.Array]
    batches: Callable[[int], Iterator[Batch]]
    eval_batches: list[Batch]
    tokens_per_batch: int
    description: str


def cnn_task(batch_size: int = 64) -> Task:
    ds = data.load_digits()
    n_eval = len(ds.x_val) // batch_size
    evals = [
        (
            ds.x_val[i * batch_size : (i + 1) * batch_size],
            ds.y_val[i * batch_size : (i + 1) * batch_size],
        )
        for i in range(n_eval)
    ]
    return Task(
        "cnn",
        lambda: models.CNN(ds.image_shape, ds.num_classes, rngs=nnx.Rngs(0)),
        models.classification_loss,
        lambda m, b: m(b[0]),
        lambda s: data.image_batches(ds.x_train, ds.y_train, batch_size=batch_size, seed=s),
        evals,
        batch_size,
        f"CNN on the 8x8 digits ({len(ds.x_train)} train images), batch {batch_size}",
    )


def lm_task(batch_size: int = 16, seq_len: int = 64) -> Task:
    corpus = data.load_shakespeare()
    cfg = models.TransformerConfig(
        vocab_size=corpus.vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        max_len=seq_len,
        scan_layers=False,
    )
    evals = data.char_lm_eval_batches(
        corpus.val, batch_size=batch_size, seq_len=seq_len, num_batches=8
    )
    return Task(
        "lm",
        lambda: models.TransformerLM(cfg, rngs=nnx.Rngs(0)),
        models.lm_loss,
        lambda m, b: m(b[0]),
        lambda s: data.char_lm_batches(
            corpus.train, batch_size=batch_size, seq_len=seq_len, seed=s
        ),
        evals,
        batch_size * seq_len,
        f"char transformer d=64 L=2 H=4 ctx={seq_len} on Shakespeare, batch {batch_size}",
    )


# Learning rates: the winners of ``--sweep`` at the default size (300 steps).
LEARNING_RATES = {
    "cnn": {
        "sgd": 0.1,
        "mkor_sgd": 0.03,
        "adamw": 3e-2,
        "mkor_adamw": 1e-2,
        "sophia_g": 3e-3,
        "adahessian": 0.3,
    },
    "lm": {
        "sgd": 0.3,
        "mkor_sgd": 0.1,
        "adamw": 1e-2,
        "mkor_adamw": 1e-2,
        "sophia_g": 1e-3,
        "adahessian": 0.3,
    },
}
SWEEP = {
    "sgd": (0.03, 0.1, 0.3, 1.0),
    "mkor_sgd": (0.03, 0.1, 0.3),
    "adamw": (1e-3, 3e-3, 1e-2, 3e-2),
    "mkor_adamw": (1e-3, 3e-3, 1e-2, 3e-2),
    "sophia_g": (3e-4, 1e-3, 3e-3),
    "adahessian": (0.03, 0.1, 0.3, 1.0),
}
REFERENCE = {"mkor_sgd": "sgd", "mkor_adamw": "adamw", "sophia_g": "adamw", "adahessian": "adamw"}
LABELS = {
    "sgd": "SGD-momentum",
    "mkor_sgd": "MKOR(SGD-momentum)",
    "adamw": "AdamW",
    "mkor_adamw": "MKOR(AdamW)",
    "sophia_g": "Sophia-G",
    "adahessian": "AdaHessian",
}


def make_optimizer(name: str, lr: Any, task: Task) -> optax.GradientTransformation:
    if name == "sgd":
        return optax.sgd(lr, momentum=0.9)
    if name == "mkor_sgd":
        return optx.mkor(lr, inner="sgd", momentum=0.9)
    if name == "adamw":
        return optx.adamw(lr, weight_decay=0.0)
    if name == "mkor_adamw":
        return optx.mkor(lr, inner="adamw")
    if name == "sophia_g":
        return optx.sophia_g(
            lr, tokens_per_batch=task.tokens_per_batch, gamma=0.05, weight_decay=0.0
        )
    if name == "adahessian":
        return optx.adahessian(lr)
    raise ValueError(name)


@dataclasses.dataclass
class Run:
    name: str
    lr: float
    steps: list[int]
    val: list[float]
    seconds: list[float]


def train(task: Task, name: str, lr: float, steps: int, eval_every: int) -> Run:
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps)
    model = task.make_model()
    opt = nnx.Optimizer(model, make_optimizer(name, schedule, task), wrt=nnx.Param)

    @nnx.jit
    def step(model: nnx.Module, opt: nnx.Optimizer, batch: Batch, i: jax.Array) -> jax.Array:
        if name.startswith("mkor"):
            loss, grads, captures = optx.curvature.value_grad_and_captures(task.loss, model, batch)
            opt.update(model, grads, captures=captures)
        elif name in ("sophia_g", "adahessian"):
            loss, grads = nnx.value_and_grad(task.loss)(model, batch)
            extra = optx.curvature.nnx_curvature_args(
                model,
                batch,
                task.loss,
                logits_fn=task.logits,
                key=jax.random.fold_in(jax.random.key(0), i),
            )
            opt.update(model, grads, **extra)
        else:
            loss, grads = nnx.value_and_grad(task.loss)(model, batch)
            opt.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model: nnx.Module, batch: Batch) -> jax.Array:
        return task.loss(model, batch)

    def val_loss() -> float:
        return float(np.mean([float(evaluate(model, b)) for b in task.eval_batches]))

    batches = task.batches(1)
    run = Run(name, lr, [0], [val_loss()], [0.0])
    elapsed, first = 0.0, None
    for i in range(1, steps + 1):
        batch = next(batches)
        t0 = time.perf_counter()
        jax.block_until_ready(step(model, opt, batch, jnp.asarray(i)))
        dt = time.perf_counter() - t0
        if first is None:  # the first step compiles: count it as the median step instead
            first = dt
            dt = 0.0
        elapsed += dt
        if i % eval_every == 0 or i == steps:
            run.steps.append(i)
            run.val.append(val_loss())
            run.seconds.append(elapsed)
    per_step = elapsed / max(1, steps - 1)
    run.seconds = [s + per_step for s in run.seconds]  # the compiled first step, estimated
    run.seconds[0] = 0.0
    return run


def reach(run: Run, target: float) -> tuple[int | None, float | None]:
    for s, v, t in zip(run.steps, run.val, run.seconds):
        if v <= target:
            return s, t
    return None, None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="cnn,lm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="pick learning rates from a grid")
    args = parser.parse_args(argv)
    for task_name in args.tasks.split(","):
        task = cnn_task() if task_name == "cnn" else lm_task()
        print(f"\n== {task.description}; {args.steps} steps, eval every {args.eval_every}")
        runs: dict[str, Run] = {}
        for name in LABELS:
            grid = SWEEP[name] if args.sweep else (LEARNING_RATES[task_name][name],)
            t0 = time.perf_counter()
            candidates = [train(task, name, lr, args.steps, args.eval_every) for lr in grid]
            best = min(candidates, key=lambda r: r.val[-1] if np.isfinite(r.val[-1]) else np.inf)
            runs[name] = best
            sweep = "  sweep: " + ", ".join(f"{r.lr:g}->{r.val[-1]:.4f}" for r in candidates)
            print(
                f"  {LABELS[name]:20s} lr={best.lr:g} final val {best.val[-1]:.4f} "
                f"({time.perf_counter() - t0:.0f}s){sweep if args.sweep else ''}"
            )
        print(
            "\n| method | lr | val loss at half budget | final val loss | s/step | "
            "reference (final) | steps to reference | train s to reference | "
            "reference steps / s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name, run in runs.items():
            per_step = run.seconds[-1] / max(1, run.steps[-1])
            ref = REFERENCE.get(name)
            if ref is None:
                cells = ["-", "-", "-", "-"]
            else:
                target = runs[ref].val[-1]
                s, t = reach(run, target)
                rs, rt = runs[ref].steps[-1], runs[ref].seconds[-1]
                cells = [
                    f"{LABELS[ref]} ({target:.4f})",
                    "not reached" if s is None else f"{s}",
                    "-" if t is None else f"{t:.1f}",
                    f"{rs} / {rt:.1f}",
                ]
            half = run.val[int(np.searchsorted(run.steps, run.steps[-1] // 2))]
            print(
                f"| {LABELS[name]} | {run.lr:g} | {half:.4f} | {run.val[-1]:.4f} | "
                f"{per_step * 1e3:.1f} ms | " + " | ".join(cells) + " |"
            )


if __name__ == "__main__":
    main()
