"""Step cost of the element-wise family relative to ``optax.adamw`` (DESIGN §7).

For every method: the jitted ``update`` time and the optimizer-state bytes per
parameter on a GPT-style parameter tree, both as ratios to ``optax.adamw``
measured in the same run. Timings are medians over interleaved rounds (all
methods are timed round-robin, so machine load drifts hit them alike).

Run:  python benchmarks/elementwise_cost.py [--size small --rounds 15 --reps 5]

The tree is the shared GPT-style one of ``benchmarks/_trees.py`` (the key paths
of ``examples.models.TransformerLM``, so the default router sees embeddings,
attention ``(d, heads, head_dim)`` kernels, MLP kernels, norms and the head).
The same script runs unchanged on GPU/TPU.

The row "floor: adamw + AdamP's channel sums" is a reference, not a method:
AdamW plus the one extra read of ``(g, w)`` that AdamP's cosine test needs
before any update can be written. No AdamP/SGDP step can cost less than it
relative to its base optimizer, so AdamP's ≤ 1.1× target is out of reach by
construction where the step is memory-bound (it is here: 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from _trees import PRESETS, gpt_params

import optx
from optx._src import layouts, radial


def adamw_with_radial_sums(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """Reference row: ``optax.adamw`` plus AdamP's three channel sums.

    Before AdamP can write any update it must read ``g`` and ``w`` of every
    projectable leaf once more for the cosine test (Σg·w, Σg·g, Σw·w per
    output channel). This row does exactly that much extra work and nothing
    else (the sums are kept in the state so XLA cannot drop them): it is the
    floor for any AdamP implementation with XLA on this machine.
    """
    adamw = optax.adamw(learning_rate)
    router = optx.default_router()

    def sums(g: jax.Array, lay: layouts.ResolvedLayout, w: jax.Array) -> tuple:
        return radial.sums_over_axes((g * w, g * g, w * w), lay.reduction_axes)

    def init_fn(params: optax.Params) -> tuple:
        return adamw.init(params), layouts.map_matrix_leaves(
            sums, router, params, params, otherwise=lambda *_: optax.MaskedNode()
        )

    def update_fn(updates: optax.Updates, state: tuple, params: optax.Params) -> tuple:
        new_updates, adamw_state = adamw.update(updates, state[0], params)
        stats = layouts.map_matrix_leaves(
            sums, router, updates, params, otherwise=lambda *_: optax.MaskedNode()
        )
        return new_updates, (adamw_state, stats)

    return optax.GradientTransformation(init_fn, update_fn)


def methods() -> dict[str, Callable[[], optax.GradientTransformation]]:
    return {
        "optax.adamw": lambda: optax.adamw(1e-3),
        "optx.adamw": lambda: optx.adamw(1e-3),
        "floor: adamw + AdamP's channel sums": adamw_with_radial_sums,
        "adamp": lambda: optx.adamp(1e-3, weight_decay=1e-2),
        "sgdp": lambda: optx.sgdp(0.1, 0.9, True, weight_decay=1e-5),
        "adabelief": lambda: optx.adabelief(1e-3),
        "optax.adabelief": lambda: optax.adabelief(1e-3),
        "lion": lambda: optx.lion(1e-4, weight_decay=0.1),
        "optax.lion": lambda: optax.lion(1e-4, weight_decay=0.1),
        "lion_kappa[l2]": lambda: optx.lion_kappa(1e-4, kappa="l2", weight_decay=0.1),
        "lion_kappa[huber]": lambda: optx.lion_kappa(1e-4, kappa="huber", weight_decay=0.1),
        "lion_kappa[nuclear]": lambda: optx.lion_kappa(1e-4, kappa="nuclear", weight_decay=0.1),
        "exadam": lambda: optx.exadam(1e-3),
        "sgd_sai": lambda: optx.sgd_sai(1e-2),
        "agvm_sgd": lambda: optx.agvm_sgd(0.1, start_step=0, update_interval=1),
    }


NEEDS_HALVES = {"agvm_sgd"}
MATRIX_METHODS = {"lion_kappa[nuclear]"}  # Newton–Schulz: not element-wise
REFERENCES = {"floor: adamw + AdamP's channel sums"}  # not a method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(PRESETS))
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--reps", type=int, default=5, help="updates per round (median taken)")
    args = ap.parse_args()

    shape = PRESETS[args.size]
    params = gpt_params(shape, jax.random.key(0))
    n_params = optx.tree_utils.param_count(params)
    grads = jax.tree.map(
        lambda p: 1e-3 * jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape) + 1e-4, params
    )
    halves = {
        "grads_a": jax.tree.map(lambda g: 1.1 * g, grads),
        "grads_b": jax.tree.map(lambda g: 0.9 * g, grads),
    }

    runners = {}
    for name, make in methods().items():
        tx = make()
        extra = halves if name in NEEDS_HALVES else {}
        state = tx.init(params)
        step = jax.jit(lambda g, s, p, tx=tx, extra=extra: tx.update(g, s, p, **extra))
        jax.block_until_ready(step(grads, state, params))  # compile
        jax.block_until_ready(step(grads, state, params))
        runners[name] = (step, state, optx.tree_utils.state_bytes(tx, params) / n_params)

    # Wall time, and process CPU time (all XLA threads): on a shared machine
    # other processes inflate the first much more than the second.
    times: dict[str, list[float]] = {n: [] for n in runners}
    cpu: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.rounds):
        for name, (step, state, _) in runners.items():
            samples, cpu_samples = [], []
            for _ in range(args.reps):
                t0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(step(grads, state, params))
                samples.append(time.perf_counter() - t0)
                cpu_samples.append(time.process_time() - c0)
            times[name].append(min(samples))
            cpu[name].append(min(cpu_samples))

    base_t = statistics.median(times["optax.adamw"])
    base_c = statistics.median(cpu["optax.adamw"])
    base_b = runners["optax.adamw"][2]
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(
        f"GPT-style tree '{args.size}': {shape}, {n_params / 1e6:.2f}M params, f32; "
        f"median over {args.rounds} interleaved rounds of the best of {args.reps} updates"
    )
    print(f"optax.adamw: {1e3 * base_t:.2f} ms/update, {base_b:.2f} state bytes/param\n")
    print(
        "| method | ms/update | time / adamw | CPU time / adamw | state B/param "
        "| state / adamw | time ≤ 1.1x |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, ts in times.items():
        t, c = statistics.median(ts), statistics.median(cpu[name])
        b = runners[name][2]
        if name in REFERENCES:
            ok = "n/a (reference)"
        elif name in MATRIX_METHODS:
            ok = "n/a (matrix)"
        else:
            ok = "yes" if t / base_t <= 1.1 else "no"
        print(
            f"| {name} | {1e3 * t:.2f} | {t / base_t:.2f} | {c / base_c:.2f} | {b:.2f} "
            f"| {b / base_b:.2f} | {ok} |"
        )


if __name__ == "__main__":
    main()
