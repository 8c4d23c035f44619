"""Neuron-level sparsity with WGSEF: accuracy vs active neurons on digits.

Run (about a minute on 2 CPU cores at the default size)::

  python -m examples.group_sparse
  python -m examples.group_sparse --keep 4 8 16 32 --steps 3000

A ReLU MLP (64 → 128 → 128 → 10, :class:`examples.models.MLP`, Flax NNX)
classifies scikit-learn's bundled 8×8 digits. The groups are the hidden
neurons: all weights feeding one unit (the output axis of each hidden kernel,
the default router's layout; the classifier head is not pruned). For every
target ``k`` (neurons kept per hidden layer):

* **WGSEF** (``optx.wgsef``): SGD-momentum followed by the group sparse
  envelope prox with ``k`` groups per layer, from scratch. Reported: the
  number of neurons still active at the end, the accuracy as trained, and
  the accuracy after keeping only the ``k`` largest groups per layer (a no-op
  when training already reached ``k``).
* **Magnitude pruning**: the dense model (same optimizer, no prox), cut to its
  ``k`` largest neurons per layer (ℓ2 norm of the incoming weights), then
  fine-tuned with the mask fixed for ``--finetune`` steps.
* **Dense**: the unpruned model.

A neuron whose incoming weights are all zero outputs the constant
``relu(bias)``, which folds into the next layer's bias: it can be removed from
the layer without changing the function, so "active neurons" is the real
width of the compacted network (biases are kept for every method).

Outputs go to ``results/group_sparse/`` (``summary.md``, ``summary.json``,
``group_sparse.png``).

Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural Networks
Using Group Envelope Regularization", arXiv 2212.12921.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optx
from examples import data, models

HIDDEN = ("layers/0/kernel", "layers/1/kernel")


def make_model(args: argparse.Namespace) -> models.MLP:
    return models.MLP(64, tuple(args.hidden), 10, rngs=nnx.Rngs(args.seed))


def hidden_masks(params: Any, keep: int | None) -> dict[str, jax.Array]:
    """Per hidden kernel, a (1, out) mask of its ``keep`` largest neurons (all if None)."""
    masks = {}
    for path, norms in optx.sparsity.group_norms(params).items():
        norms = norms[0]
        if keep is None or keep >= norms.shape[0]:
            masks[path] = jnp.ones((1, norms.shape[0]))
        else:
            cut = jnp.sort(norms)[-keep]
            masks[path] = (norms >= cut).astype(jnp.float32)[None]
    return masks


def apply_masks(params: Any, masks: dict[str, jax.Array]) -> Any:
    def leaf(path: Any, x: Any) -> Any:
        m = masks.get(optx.tree_utils.path_to_str(path))
        return x if m is None else x * m.astype(x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)


def train(
    args: argparse.Namespace,
    ds: data.ImageDataset,
    tx: optax.GradientTransformation,
    *,
    steps: int,
    model: models.MLP | None = None,
    masks: dict[str, jax.Array] | None = None,
) -> models.MLP:
    """SGD-style training of ``model`` (fresh if None); ``masks`` stay applied."""
    model = make_model(args) if model is None else model
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model: models.MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> None:
        grads = nnx.grad(models.classification_loss)(model, (x, y))
        optimizer.update(model, grads)
        if masks is not None:
            params = nnx.state(model, nnx.Param)
            nnx.update(model, apply_masks(params, masks))

    batches = data.image_batches(ds.x_train, ds.y_train, batch_size=args.batch, seed=args.seed)
    for _ in range(steps):
        x, y = next(batches)
        step(model, optimizer, jnp.asarray(x), jnp.asarray(y))
    return model


def evaluate(model: models.MLP, ds: data.ImageDataset, masks: dict | None = None) -> float:
    if masks is not None:
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        model = nnx.merge(graphdef, apply_masks(params, masks), rest)
    return float(models.accuracy(model, (jnp.asarray(ds.x_val), jnp.asarray(ds.y_val))))


def active(model: models.MLP) -> list[int]:
    counts = optx.sparsity.group_sparsity(nnx.state(model, nnx.Param))
    return [counts[p][0][0] for p in HIDDEN]


def schedule(args: argparse.Namespace, steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(args.lr, steps, alpha=0.05)


def run(args: argparse.Namespace) -> dict[str, Any]:
    ds = data.load_digits(seed=args.seed)
    sgd = optax.sgd(schedule(args, args.steps), momentum=0.9)
    dense = train(args, ds, sgd, steps=args.steps)
    report: dict[str, Any] = {
        "dense": {"acc": evaluate(dense, ds), "active": active(dense)},
        "wgsef": [],
        "magnitude": [],
    }
    dense_params = nnx.state(dense, nnx.Param)
    for k in args.keep:
        tx = optx.wgsef(schedule(args, args.steps), k, args.penalty, momentum=0.9)
        model = train(args, ds, tx, steps=args.steps)
        params = nnx.state(model, nnx.Param)
        report["wgsef"].append(
            {
                "k": k,
                "active": active(model),
                "acc": evaluate(model, ds),
                "acc_top_k": evaluate(model, ds, hidden_masks(params, k)),
            }
        )
        masks = hidden_masks(dense_params, k)
        pruned = nnx.clone(dense)
        nnx.update(pruned, apply_masks(nnx.state(pruned, nnx.Param), masks))
        one_shot = evaluate(pruned, ds)
        ft = optax.sgd(schedule(args, args.finetune), momentum=0.9)
        pruned = train(args, ds, ft, steps=args.finetune, model=pruned, masks=masks)
        report["magnitude"].append(
            {"k": k, "acc_one_shot": one_shot, "acc_finetuned": evaluate(pruned, ds)}
        )
    return report


def write_outputs(report: dict[str, Any], args: argparse.Namespace) -> pathlib.Path:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width = args.hidden[0]
    lines = [
        f"digits MLP (64, {', '.join(map(str, args.hidden))}, 10), {args.steps} SGD-momentum steps "
        f"(lr {args.lr}, cosine), batch {args.batch}, WGSEF penalty {args.penalty}, "
        f"magnitude pruning fine-tuned {args.finetune} steps, seed {args.seed}; "
        f"dense accuracy {report['dense']['acc']:.3f}",
        "",
        "| k / layer | WGSEF active neurons | WGSEF acc | WGSEF acc (top-k) "
        "| magnitude acc (one-shot) | magnitude acc (fine-tuned) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w, m in zip(report["wgsef"], report["magnitude"], strict=True):
        lines.append(
            f"| {w['k']} of {width} | {' / '.join(map(str, w['active']))} | {w['acc']:.3f} | "
            f"{w['acc_top_k']:.3f} | {m['acc_one_shot']:.3f} | {m['acc_finetuned']:.3f} |"
        )
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), **report}, indent=1))
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the examples extra
        return out
    ks = np.asarray(args.keep) / width
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.axhline(report["dense"]["acc"], color="k", ls="--", label="dense")
    ax.plot(ks, [w["acc_top_k"] for w in report["wgsef"]], "o-", label="WGSEF (top-k kept)")
    ax.plot(
        ks, [m["acc_finetuned"] for m in report["magnitude"]], "s-", label="magnitude + fine-tune"
    )
    ax.plot(ks, [m["acc_one_shot"] for m in report["magnitude"]], "x:", label="magnitude, one-shot")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("fraction of hidden neurons kept per layer")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "group_sparse.png", dpi=120)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keep", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--hidden", type=int, nargs=2, default=[128, 128])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--finetune", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--penalty", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/group_sparse")
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    report = run(args)
    write_outputs(report, args)
    return report


if __name__ == "__main__":  # pragma: no cover
    main()
