"""A one-minute demo: the same small Flax NNX model trained with optx.normuon and optax.adamw.

Run:  python examples/quick_demo.py

The task is a teacher–student regression (a fixed random 2-layer teacher network
generates the targets), so it needs no data download. Both optimizers get the
same model initialization, batches and number of steps; NorMuon orthogonalizes
the hidden matrices and routes the rest (biases, the output layer) to AdamW.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optx


class MLP(nnx.Module):
    def __init__(self, d_in: int, width: int, d_out: int, rngs: nnx.Rngs) -> None:
        self.hidden1 = nnx.Linear(d_in, width, rngs=rngs)
        self.hidden2 = nnx.Linear(width, width, rngs=rngs)
        self.head = nnx.Linear(width, d_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.gelu(self.hidden1(x))
        x = jax.nn.gelu(self.hidden2(x))
        return self.head(x)


def make_data(key: jax.Array, n: int, d_in: int, d_out: int) -> tuple[jax.Array, jax.Array]:
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (n, d_in))
    w1 = jax.random.normal(k2, (d_in, 64)) / jnp.sqrt(d_in)
    w2 = jax.random.normal(k3, (64, d_out)) / 8.0
    return x, jnp.tanh(x @ w1) @ w2


def train(tx: optax.GradientTransformation, steps: int = 300, batch: int = 128) -> list[float]:
    x, y = make_data(jax.random.key(0), 4096, 32, 8)
    model = MLP(32, 128, 8, nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model: MLP, optimizer: nnx.Optimizer, xb: jax.Array, yb: jax.Array) -> jax.Array:
        def loss_fn(m: MLP) -> jax.Array:
            return jnp.mean((m(xb) - yb) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = []
    for i in range(steps):
        idx = jax.random.choice(jax.random.key(100 + i), x.shape[0], (batch,), replace=False)
        losses.append(float(step(model, optimizer, x[idx], y[idx])))
    return losses


def main() -> None:
    schedule = lambda peak: optax.warmup_cosine_decay_schedule(0.0, peak, 30, 300)  # noqa: E731
    # Route by the model (module types and call order: the head goes to AdamW).
    router = optx.router_for(
        nnx.eval_shape(lambda: MLP(32, 128, 8, nnx.Rngs(1))), jnp.zeros((1, 32))
    )
    runs = {
        "optax.adamw(3e-3)": optax.adamw(schedule(3e-3), weight_decay=0.0),
        "optx.normuon(0.02)": optx.normuon(schedule(0.02), adam_lr_ratio=0.15, router=router),
    }
    for name, tx in runs.items():
        t0 = time.perf_counter()
        losses = train(tx)
        tail = sum(losses[-20:]) / 20
        print(
            f"{name:22s} first loss {losses[0]:.4f}  final loss (mean of last 20) {tail:.5f}"
            f"  ({time.perf_counter() - t0:.1f}s)"
        )


if __name__ == "__main__":
    main()
