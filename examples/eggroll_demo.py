"""Training without backprop: EGGROLL (rank 1) vs OpenES vs Adam on digits.

Run (about a minute on 2 CPU cores at the default size)::

  python -m examples.eggroll_demo
  python -m examples.eggroll_demo --population 512 --hidden 128 --generations 600

A ReLU MLP (64 → hidden → 10) classifies scikit-learn's bundled 8×8 digits.
Three trainers see the same initialization and the same batches:

* **EGGROLL** (``optx.eggroll``, rank 1): every member evaluates the batch with
  ``optx.evolution.perturbed_matmul`` — ``x W + (x B)(σ A)ᵀ``, the base product shared by
  all members, no perturbed weight ever formed — and its fitness is minus the
  batch cross-entropy; the pseudo-gradient feeds Adam.
* **OpenES** (``optx.openes``): the same with full-rank noise; every member
  forms its own ``W + E``.
* **Backprop**: Adam on the true gradient (the reference a zeroth-order
  method is measured against).

Per generation the script records the mean member fitness, the validation
accuracy, wall time (compilation excluded), XLA's FLOP count for one jitted
generation (members' forward passes + noise + pseudo-gradient + Adam) and the
compiled program's temporary memory. Outputs go to ``results/eggroll/``
(``summary.md``, ``summary.json``, ``eggroll.png``).

Sarkar et al., "Evolution Strategies at the Hyperscale", arXiv 2511.16652.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optx
from examples import data

Params = dict[str, Any]


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> Params:
    """``{'layers': {'0': {'kernel', 'bias'}, ...}}``; the last layer is the head."""
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        "layers": {
            str(i): {
                "kernel": jax.random.normal(k, (a, b)) / np.sqrt(a),
                "bias": jnp.zeros((b,)),
            }
            for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
        }
    }


def mlp(params: Params, noise: Params | None, x: jax.Array) -> jax.Array:
    """Logits; ``noise`` is a member's :func:`optx.evolution.es_noise` tree (or None)."""
    layers = params["layers"]
    for i in range(len(layers)):
        p = layers[str(i)]
        n = None if noise is None else noise["layers"][str(i)]
        x = optx.evolution.perturbed_matmul(x, p["kernel"], None if n is None else n["kernel"])
        x = x + p["bias"] + (0.0 if n is None else n["bias"])
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@jax.jit
def _accuracy(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(mlp(params, None, x), -1) == y)


def accuracy(params: Params, x: jax.Array, y: jax.Array) -> float:
    return float(_accuracy(params, x, y))


def es_step(
    method: str, args: argparse.Namespace
) -> tuple[optax.GradientTransformationExtraArgs, Callable[..., Any]]:
    """The optimizer and a jitted ``(params, state, x, y) -> (params, state, mean fitness)``."""
    rank = args.rank if method == "eggroll" else None
    tx = optx.eggroll(args.lr, args.sigma, rank, optimizer=optax.adam)
    key = jax.random.key(args.seed + 1)  # the ES key (fixed; the generation is folded in)

    def generation(params: Params, state: Any, x: jax.Array, y: jax.Array) -> Any:
        gen = optax.tree_utils.tree_get(state, "generation")
        fitness = optx.evolution.es_evaluate(
            lambda p, noise: -xent(mlp(p, noise, x), y),
            params,
            key,
            args.population,
            sigma=args.sigma,
            rank=rank,
            generation=gen,
        )
        updates, state = tx.update(params, state, params, fitness=fitness, key=key)
        return optax.apply_updates(params, updates), state, jnp.mean(fitness)

    return tx, jax.jit(generation)


def backprop_step(
    args: argparse.Namespace,
) -> tuple[optax.GradientTransformation, Callable[..., Any]]:
    tx = optax.adam(args.backprop_lr)

    def step(params: Params, state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(lambda p: xent(mlp(p, None, x), y))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, -loss

    return tx, jax.jit(step)


def compile_with_cost(step: Any, *example: Any) -> tuple[Callable[..., Any], float, int]:
    """The compiled step, its XLA FLOP count and its temporary bytes."""
    compiled = step.lower(*example).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    flops = float(cost.get("flops", float("nan")))
    return compiled, flops, int(getattr(memory, "temp_size_in_bytes", -1))


def train(method: str, args: argparse.Namespace, ds: data.ImageDataset) -> dict[str, Any]:
    sizes = (64, *args.hidden, 10)
    params = init_mlp(jax.random.key(args.seed), sizes)
    tx, step = backprop_step(args) if method == "backprop" else es_step(method, args)
    state = tx.init(params)
    x_val = jnp.asarray(ds.x_val.reshape(len(ds.x_val), -1))
    y_val = jnp.asarray(ds.y_val)
    batches = data.image_batches(ds.x_train, ds.y_train, batch_size=args.batch, seed=args.seed)
    xb, yb = next(batches)
    example = (params, state, jnp.asarray(xb.reshape(len(xb), -1)), jnp.asarray(yb))
    step, flops, temp_bytes = compile_with_cost(step, *example)  # compiled outside the timing
    history: dict[str, list[float]] = {"generation": [], "fitness": [], "val_acc": [], "time": []}
    elapsed = 0.0
    for gen in range(1, args.generations + 1):
        xb, yb = next(batches)
        x, y = jnp.asarray(xb.reshape(len(xb), -1)), jnp.asarray(yb)
        t0 = time.perf_counter()
        params, state, fit = step(params, state, x, y)
        fit = float(fit)  # blocks
        elapsed += time.perf_counter() - t0
        if gen % args.eval_every == 0 or gen == args.generations:
            history["generation"].append(gen)
            history["fitness"].append(fit)
            history["val_acc"].append(accuracy(params, x_val, y_val))
            history["time"].append(elapsed)
    return {
        "method": method,
        "final_val_acc": history["val_acc"][-1],
        "ms_per_generation": 1e3 * elapsed / args.generations,
        "flops_per_generation": flops,
        "temp_bytes": temp_bytes,
        "params": int(sum(p.size for p in jax.tree.leaves(params))),
        "history": history,
    }


def noise_floats(args: argparse.Namespace, method: str) -> int:
    """Noise numbers drawn per generation for the update (antithetic pairs)."""
    sizes = (64, *args.hidden, 10)
    pairs = args.population // 2
    total = 0
    for a, b in itertools.pairwise(sizes):
        total += b  # bias: full rank in both
        total += args.rank * (a + b) if method == "eggroll" else a * b
    return pairs * total


def write_outputs(runs: list[dict[str, Any]], args: argparse.Namespace) -> pathlib.Path:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = {"eggroll": f"EGGROLL r={args.rank}", "openes": "OpenES", "backprop": "Adam (backprop)"}
    lines = [
        f"digits MLP {(64, *args.hidden, 10)}, population {args.population}, batch {args.batch}, "
        f"{args.generations} generations, sigma {args.sigma}, ES lr {args.lr} (Adam), "
        f"backprop lr {args.backprop_lr}, seed {args.seed}",
        "",
        "| method | final val acc | ms / generation | XLA GFLOP / generation | temp MiB "
        "| noise floats / generation |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        noise = "—" if r["method"] == "backprop" else f"{noise_floats(args, r['method']):,}"
        lines.append(
            f"| {label[r['method']]} | {r['final_val_acc']:.3f} | {r['ms_per_generation']:.2f} | "
            f"{r['flops_per_generation'] / 1e9:.3f} | {r['temp_bytes'] / 2**20:.2f} | {noise} |"
        )
    table = "\n".join(lines)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is in the examples extra
        return out
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in runs:
        h = r["history"]
        axes[0].plot(h["generation"], h["val_acc"], label=label[r["method"]])
        axes[1].plot(h["time"], h["val_acc"], label=label[r["method"]])
    axes[0].set_xlabel("generation (backprop: step)")
    axes[1].set_xlabel("training seconds")
    for ax in axes:
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"digits, population {args.population}, batch {args.batch}")
    fig.tight_layout()
    fig.savefig(out / "eggroll.png", dpi=120)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--generations", type=int, default=300)
    ap.add_argument("--population", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64])
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--backprop-lr", type=float, default=0.003)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--methods", default="eggroll,openes,backprop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/eggroll")
    return ap


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    ds = data.load_digits(seed=args.seed)
    runs = [train(m, args, ds) for m in args.methods.split(",")]
    write_outputs(runs, args)
    return runs


if __name__ == "__main__":  # pragma: no cover
    main()
