"""Step cost of every optx optimizer that has an optax twin, against that twin.

Run:  python benchmarks/twin_cost.py [--size small --rounds 9 --window 10]

Issue 17's rule: an optx optimizer whose method optax already ships must cost
no more than optax's (ratio ≤ 1.0). Each pair below runs the same math with
the same hyper-parameters on the same GPT-style tree (``benchmarks/_trees.py``)
and the same routing (optax's matrix methods get dimension numbers from optx's
router, so both send the same leaves to Newton–Schulz / the projection):

* ``adamw``: ``optax.adamw(1e-3, weight_decay=1e-4)``;
* ``adabelief``: ``optx.adabelief(rectify=False)`` = ``optax.adabelief``;
* ``lion``: weight decay 0.1 on both;
* ``muon``: ``optax.contrib.muon`` with optx's routing, Adam fallback (its
  weight decay 0 on both);
* ``galore``: ``optax.contrib.galore`` (rank 128, gap 200, scale 1,
  optx's ``side='reverse_std'``: both project the larger dimension, but
  on a square matrix optax projects the fan-in and optx the fan-out; the
  projector keeps the state's row-major layout across the refresh ``cond``),
  with optx's routing;
* ``sophia``: ``optax.contrib.sophia`` (Hutchinson with Rademacher probes,
  refresh every 10 steps) against ``optx.sophia_h`` with the same probes,
  period, decay and γ (their rules differ in small ways — bias correction, the
  refresh phase — that cost the same element-wise passes). ``optx.sophia_h``
  also carries optx's non-finite policy (:func:`optx.skip_if_not_finite`: a
  NaN/Inf in the gradient or the Hessian estimate skips the step and keeps the
  state), which optax's has not: the row "sophia (no non-finite skip)" is
  optx's step without it, and "sophia (both skip non-finite steps)" puts
  optax's own policy, ``optax.apply_if_finite`` (a check of the gradient and a
  selection of the state), around optax's Sophia.

Every jitted step is compiled first; then ``--rounds`` interleaved rounds time a
window of ``--window`` consecutive updates of every candidate (a whole Sophia
refresh period, so its oracle is amortized as in training), round-robin, so
machine load drifts hit twins alike. Printed: median wall and median process CPU
time per update (all XLA threads; robust to other processes), and optx / twin
for both. GaLore's refresh (an SVD every 200 steps) falls outside the windows
for both. The same script runs unchanged on GPU/TPU.

``--programs`` prints, instead of times, what XLA compiled for each side (noise-free):
fusions, HLO instructions, and ``cost_analysis()``'s bytes accessed and FLOPs — two
steps with the same four figures run the same kernels, so a ratio off 1.0 is noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from _trees import PRESETS, gpt_params
from muon_step import contrib_muon_dims, router_dimension_numbers

import optx


def contrib_galore_dims(params: Any) -> Any:
    """optax.contrib.galore dimension numbers from optx's router (matrix view)."""

    def make(path: Any, r: Any) -> Any:
        if r.batch_axes:  # optax's GaLore projects one matrix per leaf
            raise ValueError(f"{path}: stacked leaves have no optax.contrib.galore twin.")
        return optax.contrib.GaLoreDimensionNumbers(r.reduction_axes, r.output_axes)

    return router_dimension_numbers(params, make)


def loss_fn(params: Any) -> jax.Array:
    """A cheap closure for the curvature oracles (the optimizer's work is timed)."""
    return sum(jnp.sum(0.5 * x**2 + 0.01 * x**4) for x in jax.tree.leaves(params))


Pair = tuple[Callable[[], optax.GradientTransformation], Callable[[], optax.GradientTransformation]]


def pairs(params: Any) -> dict[str, Pair]:
    """``name -> (optax twin, optx)``, same math and hyper-parameters."""
    muon_dims, galore_dims = contrib_muon_dims(params), contrib_galore_dims(params)
    return {
        "adamw": (lambda: optax.adamw(1e-3, weight_decay=1e-4), lambda: optx.adamw(1e-3)),
        "adabelief": (
            lambda: optax.adabelief(1e-3),
            lambda: optx.adabelief(1e-3, eps_root=1e-16, rectify=False),
        ),
        "lion": (
            lambda: optax.lion(1e-4, weight_decay=0.1),
            lambda: optx.lion(1e-4, weight_decay=0.1),
        ),
        "muon": (
            lambda: optax.contrib.muon(0.02, muon_weight_dimension_numbers=muon_dims),
            lambda: optx.muon(0.02, adam_weight_decay=0.0),
        ),
        "galore": (
            lambda: optax.contrib.galore(
                1e-2, rank=128, update_proj_gap=200, weight_dimension_numbers=galore_dims
            ),
            lambda: optx.galore(
                1e-2,
                rank=128,
                update_proj_gap=200,
                scale=1.0,
                side="reverse_std",
            ),
        ),
        "sophia": (
            lambda: optax.contrib.sophia(1e-3, weight_decay=1e-4, update_interval=10),
            lambda: optx.sophia_h(
                1e-3, weight_decay=1e-4, update_interval=10, distribution="rademacher"
            ),
        ),
        "sophia (no non-finite skip)": (
            lambda: optax.contrib.sophia(1e-3, weight_decay=1e-4, update_interval=10),
            sophia_h_without_skip,
        ),
        "sophia (both skip non-finite steps)": (
            lambda: optax.apply_if_finite(
                optax.contrib.sophia(1e-3, weight_decay=1e-4, update_interval=10), 10**6
            ),
            lambda: optx.sophia_h(
                1e-3, weight_decay=1e-4, update_interval=10, distribution="rademacher"
            ),
        ),
    }


def sophia_h_without_skip() -> optax.GradientTransformation:
    """``optx.sophia_h`` without its :func:`optx.skip_if_not_finite` wrapper.

    A reference row, not a method: optax.contrib.sophia has no non-finite
    policy, so this row shows what the policy (checking the gradient and the
    estimate for NaN/Inf and selecting the kept state) costs on this device.
    """
    return optax.chain(
        optx.scale_by_sophia(
            b1=0.965,
            b2=0.99,
            gamma=0.01,
            tokens_per_batch=1.0,
            eps=1e-12,
            estimator=optx.curvature.Hutchinson(1, "rademacher"),
            update_interval=10,
            refresh_at_start=True,
        ),
        optax.add_decayed_weights(1e-4),
        optax.scale_by_learning_rate(1e-3),
    )


def make_step(tx: optax.GradientTransformation, params: Any) -> tuple[Callable[..., Any], Any]:
    """The jitted update as ``state -> (updates, state)``.

    The gradient and the parameters are arguments of the compiled program, not
    constants folded into it: a folded gradient would let XLA decide a finiteness
    check (``optax.apply_if_finite``) at compile time and drop its selection.
    """
    grads = jax.tree.map(
        lambda p: 1e-3 * jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape) + 1e-4, params
    )
    extra = {"obj_fn": loss_fn, "loss_fn": loss_fn}
    update = jax.jit(lambda s, g, p: tx.update(g, s, p, **extra))

    def step(state: Any) -> tuple[Any, Any]:
        return update(state, grads, params)

    step.update, step.args = update, (grads, params)  # type: ignore[attr-defined]
    state = tx.init(params)
    jax.block_until_ready(step(state))  # compile
    return step, state


def program_figures(step: Callable[..., Any], state: Any) -> tuple[int, int, float, float]:
    """``(fusions, HLO instructions, bytes accessed, FLOPs)`` of a step's compiled update."""
    update, args = step.update, (state, *step.args)
    compiled = update.lower(*args).compile()
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    fusions = sum(1 for line in text.splitlines() if " fusion(" in line and " = " in line)
    instructions = sum(1 for line in text.splitlines() if " = " in line)
    return fusions, instructions, cost.get("bytes accessed", 0.0), cost.get("flops", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(PRESETS))
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    ap.add_argument("--window", type=int, default=10, help="consecutive updates per round")
    ap.add_argument("--pairs", default=None, help="comma-separated subset of the pairs")
    ap.add_argument("--programs", action="store_true", help="compiled-program figures, no timing")
    args = ap.parse_args()

    params = gpt_params(PRESETS[args.size], jax.random.key(0))
    chosen = pairs(params)
    if args.pairs:
        chosen = {k: chosen[k] for k in args.pairs.split(",")}
    runners: dict[tuple[str, str], list[Any]] = {}
    for name, (twin, ours) in chosen.items():
        for side, make in (("optax", twin), ("optx", ours)):
            t0 = time.perf_counter()
            runners[name, side] = list(make_step(make(), params))
            print(
                f"[twin_cost] compiled {side} {name} ({time.perf_counter() - t0:.1f}s)",
                file=sys.stderr,
                flush=True,
            )

    if args.programs:
        print("| method | side | fusions | HLO instructions | bytes accessed | FLOPs |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for (name, side), (step, state) in runners.items():
            fus, ins, nbytes, flops = program_figures(step, state)
            print(f"| {name} | {side} | {fus} | {ins} | {nbytes:,.0f} | {flops:,.0f} |")
        return

    wall: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for key, runner in runners.items():
            step, state = runner
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.window):
                _, state = step(state)
            jax.block_until_ready(state)
            wall[key].append((time.perf_counter() - t0) / args.window)
            cpu[key].append((time.process_time() - c0) / args.window)
            runner[1] = state

    dev = jax.devices()[0]
    n = optx.tree_utils.param_count(params)
    print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(
        f"GPT-style tree '{args.size}' ({n:,} params); median of {args.rounds} interleaved "
        f"rounds of {args.window} updates\n"
    )
    print("| method | optax ms | optx ms | optx / optax (wall) | optx / optax (CPU) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in chosen:
        tw, to = (statistics.median(wall[name, s]) for s in ("optax", "optx"))
        cw, co = (statistics.median(cpu[name, s]) for s in ("optax", "optx"))
        print(f"| {name} | {tw * 1e3:.2f} | {to * 1e3:.2f} | {to / tw:.2f} | {co / cw:.2f} |")


if __name__ == "__main__":
    main()
