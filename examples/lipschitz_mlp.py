"""Lipschitz-constrained training of a Flax NNX MLP with ``optx.lipschitz_muon``.

Run:  python examples/lipschitz_mlp.py [--steps 300 --w-max 2 --projection soft_cap]

Trains an MLP (64 → 128 → 128 → 10, ReLU) on scikit-learn's bundled 8×8
digits twice — with ``optx.lipschitz_muon`` (every layer, head included,
projected into the RMS→RMS ball of radius ``w_max`` after each step) and with
plain ``optx.muon`` — and prints the validation accuracy, every layer's
operator norm and the network's Lipschitz upper bound (``optx.constraints.lipschitz_bound``:
the product of the per-layer spectral norms; ReLU is 1-Lipschitz). With the
constraint, each layer's RMS→RMS norm stays ≤ ``w_max``, so the ℓ2 bound is at
most ``w_max^L · √(d_out/d_in)``.

Newhouse et al., "Training Transformers with Enforced Lipschitz Constants",
arXiv 2507.13338.
"""

from __future__ import annotations

import argparse
import itertools
import math
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

if __package__ in (None, ""):  # `python examples/lipschitz_mlp.py` from the repo root
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import optx
from examples.data import load_digits


class MLP(nnx.Module):
    def __init__(self, sizes: tuple[int, ...], rngs: nnx.Rngs) -> None:
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes[:-1])]
        )
        self.head = nnx.Linear(sizes[-2], sizes[-1], rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


def all_layers_router() -> optx.Router:
    """The default router, with the classifier head trained (and capped) as a matrix."""
    return optx.default_router().with_rules(
        optx.Rule(r"(^|/)head/kernel$", "matrix", optx.DENSE, name="head as matrix")
    )


def train(
    tx: optax.GradientTransformation,
    data: Any,
    *,
    steps: int,
    batch: int,
    seed: int,
    init_cap: float | None,
    router: optx.Router,
) -> MLP:
    model = MLP((64, 128, 128, 10), nnx.Rngs(seed))
    if init_cap is not None:  # start inside the ball: one exact projection
        params = nnx.state(model, nnx.Param)
        cap = optx.constraints.spectral_svd_cap(init_cap, layout=router)
        u, _ = cap.update(jax.tree.map(jnp.zeros_like, params), cap.init(params), params)
        nnx.update(model, optax.apply_updates(params, u))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x_all = jnp.asarray(data.x_train.reshape(len(data.x_train), -1))
    y_all = jnp.asarray(data.y_train)

    @nnx.jit
    def step(model: MLP, optimizer: nnx.Optimizer, idx: jax.Array) -> jax.Array:
        def loss_fn(m: MLP) -> jax.Array:
            logits = m(x_all[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        step(model, optimizer, jnp.asarray(rng.integers(0, len(x_all), batch)))
    return model


def accuracy(model: MLP, data: Any) -> float:
    logits = model(jnp.asarray(data.x_val.reshape(len(data.x_val), -1)))
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data.y_val)))


def main(argv: Any = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--w-max", type=float, default=2.0)
    ap.add_argument(
        "--projection",
        default="soft_cap",
        choices=("soft_cap", "hard_cap", "svd_cap", "normalize", "hammer", "spectral_wd"),
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = load_digits(seed=args.seed)
    router = all_layers_router()
    runs = {
        f"lipschitz_muon ({args.projection}, w_max={args.w_max:g})": (
            optx.lipschitz_muon(
                args.lr, projection=args.projection, w_max=args.w_max, router=router
            ),
            args.w_max,
        ),
        "muon (unconstrained)": (optx.muon(args.lr, scaling="keller", router=router), None),
    }
    report: dict[str, Any] = {}
    for name, (tx, init_cap) in runs.items():
        model = train(
            tx,
            data,
            steps=args.steps,
            batch=args.batch,
            seed=args.seed,
            init_cap=init_cap,
            router=router,
        )
        bound = optx.constraints.lipschitz_bound(model)
        rms = optx.constraints.spectral_norms(model, geometry="rms")
        acc = accuracy(model, data)
        report[name] = {"accuracy": acc, "bound": float(bound.bound), "rms_norms": rms}
        print(f"\n{name}: validation accuracy {acc:.3f} after {args.steps} steps")
        print(f"  {'layer':<18} {'σ_max (ℓ2)':>11} {'RMS→RMS':>9}")
        for path, sigma in bound.norms.items():
            print(f"  {path:<18} {float(sigma):>11.3f} {float(rms[path]):>9.3f}")
        print(f"  Lipschitz upper bound (ℓ2→ℓ2, product of σ_max): {float(bound.bound):.4g}")
    depth = 3
    print(
        f"\nGuarantee under the constraint: ℓ2 bound ≤ w_max^{depth}·√(10/64) = "
        f"{args.w_max**depth * math.sqrt(10 / 64):.4g}"
    )
    return report


if __name__ == "__main__":
    main()
