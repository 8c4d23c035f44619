"""Step cost of 8-bit AdamW against AdamW, with the floors of its structure.

``python benchmarks/quantization_cost.py`` times, on the GPT-style tree of
:mod:`benchmarks._trees` (``--preset``), the jitted step
``update + apply_updates`` of

* ``optax.adamw`` (the baseline) and ``optx.adamw`` (f32 moments);
* ``optx.adamw_8bit``: three loops per parameter, each recomputing
  dequantize → Adam from the codes and the gradient (no moment is written
  out): the block maxima of both moments (one variadic reduction), the
  update, and the codes with optx's exact rounding rule
  (``argmin_k fl(|y − map[k]|)``, two bucket-table lookups per entry);
* reference rows that isolate the cost of each stage (not optimizers):
  ``8bit, one pass (previous)`` — dequantize, Adam and re-quantize traced
  once, as optx did before (XLA:CPU writes the dequantized values and the new
  moments out around a library max-reduction, and the packed code table
  entry before the coding loop); ``8bit, rounding coder`` — the step with the
  code replaced by ``round(127·y)`` (what the exact rule costs on top);
  ``8bit, no re-coding`` — the block maxima and the update loops only, the
  codes replaced by zeros (the floor of the recomputing structure).

With ``--pallas``, the row ``optx.adamw_8bit (pallas)`` times the fused
Pallas kernel (``kernel='pallas'``: one pass per quantized leaf, Triton on
CUDA) next to the XLA path, after checking that its first step's codes and
block scales match the XLA path's (the mismatch counts are printed). Only on
a CUDA backend: elsewhere the kernel runs in Pallas' interpret mode, a
correctness reference that is never timed, and the row is skipped with a
note. A kernel that does not compile raises (the run fails). ``--no-references``
drops the reference rows; ``--require-gpu`` makes a run without a CUDA
device fail instead of skipping the row (``benchmarks/gpu_figures.sh``'s part
``pallas_8bit``, which therefore reports FAILED in a CPU dry run).

Steps run round-robin (``--repeats`` rounds); the table gives the median and
the minimum wall time and the median process CPU time (all threads: the
figure least disturbed by other processes on a shared machine), each as a
ratio to ``optax.adamw`` in the same run.

Example::

  python benchmarks/quantization_cost.py --preset small --repeats 25
  python benchmarks/quantization_cost.py --preset gpt2-small --pallas --no-references  # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optx
from optx._src import moments, quantization

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _trees


@contextlib.contextmanager
def rounding_coder() -> Iterator[None]:
    """Swaps the exact code lookup for ``round(127·y) + 127`` while tracing."""
    exact = quantization._nearest_code

    def coder(y: jax.Array, signed: bool) -> jax.Array:
        if signed:
            return (jnp.round(y * 127.0) + 127.0).astype(jnp.int32)
        return jnp.round(y * 255.0).astype(jnp.int32)

    jitted = quantization._encode_jitted
    quantization._nearest_code = coder
    # A fresh jit of the coder: the module's one caches the exact coder's trace.
    quantization._encode_jitted = jax.jit(
        quantization._encode, static_argnames=("signed", "block_size")
    )
    try:
        yield
    finally:
        quantization._nearest_code = exact
        quantization._encode_jitted = jitted


def _packed_code(y: jax.Array, signed: bool) -> jax.Array:
    """The previous coder (same codes): one packed ``uint32`` entry per
    bucket (first code << 15 | threshold's low bits), read once and unpacked
    twice, so XLA writes the entries out before the coding loop."""
    shift = quantization._BUCKET_SHIFT
    first_bucket, last_bucket = quantization._FIRST_BUCKET, quantization._LAST_BUCKET
    table = jnp.asarray(quantization._code_table(signed))
    bits = jax.lax.bitcast_convert_type(jnp.abs(y), jnp.uint32)
    bucket = jnp.clip(bits >> shift, first_bucket, last_bucket)
    idx = (bucket - first_bucket).astype(jnp.int32)
    if signed:
        idx = idx + jnp.where(y < 0, last_bucket - first_bucket + 1, 0)
    entry = table[idx]
    threshold = (bucket << shift) | (entry & ((1 << shift) - 1))
    k = (entry >> shift).astype(jnp.int32) + (bits > threshold).astype(jnp.int32)
    if not signed:
        return jnp.minimum(k, 255)
    return jnp.where(y < 0, 127 - jnp.minimum(k, 127), 127 + jnp.minimum(k, 128))


def one_pass(learning_rate: float = 1e-3) -> optax.GradientTransformation:
    """8-bit AdamW as optx computed it before: dequantize every moment, one
    Adam step, then per moment a ``max`` reduction and the packed-table coder
    (the same numbers up to XLA:CPU's multiply-add contraction)."""
    inner = moments.scale_by_adam(0.9, 0.999, 1e-8)
    quantized = quantization.quantize_moments(inner)
    block = quantization.REFERENCE_BLOCK_SIZE

    def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        flat, treedef = jax.tree_util.tree_flatten_with_path(state.inner_state)
        scales = treedef.flatten_up_to(state.absmax)
        signs = [not any(getattr(e, "name", "") == "nu" for e in path) for path, _ in flat]
        leaves = [
            x
            if isinstance(s, optax.MaskedNode)
            else quantization.dequantize_blockwise(quantization.QuantizedArray(x, s), signed=sg)
            for (_, x), s, sg in zip(flat, scales, signs)
        ]
        u, new = inner.update(updates, jax.tree_util.tree_unflatten(treedef, leaves), params)
        new_leaves, new_scales = treedef.flatten_up_to(new), list(scales)
        for i, s in enumerate(scales):
            if isinstance(s, optax.MaskedNode):
                continue
            x = new_leaves[i]
            blocks = quantization._blocks(x.astype(jnp.float32), block)
            absmax = jnp.max(jnp.abs(blocks), axis=1)
            scale = jnp.where(absmax > 0, absmax, 1.0)
            y = jnp.clip(blocks / scale[:, None], -1.0 if signs[i] else 0.0, 1.0)
            codes = _packed_code(y, signs[i]).astype(jnp.uint8)
            new_leaves[i] = quantization._unblock(codes, x.shape)
            new_scales[i] = absmax
        u = jax.tree.map(
            lambda g, p: -learning_rate * (g + 1e-4 * p), u, params
        )  # decoupled decay and step, as optx.adamw_8bit's chain
        new_state = quantization.QuantizedState(
            jax.tree_util.tree_unflatten(treedef, new_leaves),
            jax.tree_util.tree_unflatten(treedef, new_scales),
        )
        return u, new_state

    return optax.GradientTransformation(quantized.init, update_fn)


@contextlib.contextmanager
def no_recoding() -> Iterator[None]:
    """Swaps the coding loop for zero codes while tracing: what remains is the
    block-maxima reduction and the update loop (the structure's floor)."""
    exact = quantization._encode

    def encode(x: jax.Array, absmax: jax.Array, signed: bool, block_size: int) -> jax.Array:
        del absmax, signed, block_size
        return jnp.zeros(jnp.shape(x), jnp.uint8)

    jitted = quantization._encode_jitted
    quantization._encode = quantization._encode_jitted = encode
    try:
        yield
    finally:
        quantization._encode = exact
        quantization._encode_jitted = jitted


def timed_steps(
    rows: dict[str, Callable[[], tuple[Callable[..., Any], Any]]],
    params: Any,
    grads: Any,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Compiles every row, then times ``repeats`` round-robin rounds (wall, CPU)."""
    built = {}
    for name, build in rows.items():
        step, state = build()
        out = step(grads, state, params)
        jax.block_until_ready(out)
        built[name] = [step, out[1]]
    times: dict[str, list[float]] = {name: [] for name in built}
    cpu: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(repeats):
        for name, entry in built.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out = entry[0](grads, entry[1], params)
            jax.block_until_ready(out)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            entry[1] = out[1]
    return times, cpu


def check_pallas(params: Any, grads: Any) -> None:
    """One step of ``kernel='pallas'`` against the XLA path from the same state:
    prints how many codes and block scales differ (the same rounding rule; on a
    GPU Triton's multiply-add contraction and its approximate ``/`` and
    ``sqrt`` in the inner update can move a moment, hence a code, by an ulp).
    Raises if the kernel does not compile."""
    xla, fused = optx.adamw_8bit(1e-3), optx.adamw_8bit(1e-3, kernel="pallas")
    state = xla.init(params)
    ux, sx = jax.jit(xla.update)(grads, state, params)
    up, sp = jax.jit(fused.update)(grads, state, params)
    codes = scales = codes_total = scales_total = 0
    for a, b in zip(jax.tree.leaves(sx), jax.tree.leaves(sp)):
        differ = int(jnp.sum(a != b))
        if a.dtype == jnp.uint8:
            codes, codes_total = codes + differ, codes_total + a.size
        elif a.ndim == 1:
            scales, scales_total = scales + differ, scales_total + a.size
    worst = max(
        float(jnp.max(jnp.abs(a - b) / jnp.maximum(jnp.abs(a), 1e-30)))
        for a, b in zip(jax.tree.leaves(ux), jax.tree.leaves(up))
    )
    print(
        f"pallas vs XLA, one step: codes differing {codes} of {codes_total}, block scales "
        f"differing {scales} of {scales_total}, max relative update difference {worst:.2e}\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python benchmarks/quantization_cost.py")
    p.add_argument("--preset", default="small", choices=sorted(_trees.PRESETS))
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--pallas", action="store_true", help="time kernel='pallas' (CUDA only)")
    p.add_argument("--no-references", action="store_true", help="skip the reference rows")
    p.add_argument(
        "--require-gpu", action="store_true", help="with --pallas: fail instead of skipping"
    )
    args = p.parse_args(argv)
    on_gpu = jax.default_backend() == "gpu"
    if args.pallas and args.require_gpu and not on_gpu:
        raise SystemExit(
            f"--pallas --require-gpu: backend {jax.default_backend()!r} has no CUDA device to "
            "time the Pallas kernel on (it would run interpreted)."
        )
    shape = _trees.PRESETS[args.preset]
    params = _trees.gpt_params(shape, jax.random.key(0))
    grads = _trees.gpt_params(shape, jax.random.key(1), std=1e-3)

    def builder(
        make: Callable[[], optax.GradientTransformation],
        coder: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ):
        def build() -> tuple[Callable[..., Any], Any]:
            tx = make()

            def step(g: Any, s: Any, p: Any) -> tuple[Any, Any]:
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s

            jitted = jax.jit(step)
            state = tx.init(params)
            if coder is not None:
                with coder():  # traced and compiled with the swapped coder
                    compiled = jitted.lower(grads, state, params).compile()
                return compiled, state
            return jitted, state

        return build

    rows = {
        "optax.adamw": builder(lambda: optax.adamw(1e-3, weight_decay=1e-4)),
        "optx.adamw": builder(lambda: optx.adamw(1e-3)),
        "optx.adamw_8bit": builder(lambda: optx.adamw_8bit(1e-3)),
    }
    notes = []
    if args.pallas:
        check_pallas(params, grads)  # interpreted off a GPU: checked, not timed
    if args.pallas and on_gpu:
        rows["optx.adamw_8bit (pallas)"] = builder(lambda: optx.adamw_8bit(1e-3, kernel="pallas"))
    elif args.pallas:
        notes.append(
            f"optx.adamw_8bit (pallas) skipped: backend {jax.default_backend()!r} runs the "
            "kernel in Pallas' interpret mode (a correctness reference, never timed)."
        )
    if not args.no_references:
        rows |= {
            "8bit, one pass (previous; reference)": builder(one_pass),
            "8bit, rounding coder (reference)": builder(
                lambda: optx.adamw_8bit(1e-3), coder=rounding_coder
            ),
            "8bit, no re-coding (reference)": builder(
                lambda: optx.adamw_8bit(1e-3), coder=no_recoding
            ),
        }
    times, cpu = timed_steps(rows, params, grads, args.repeats)
    base_med = statistics.median(times["optax.adamw"])
    base_min = min(times["optax.adamw"])
    base_cpu = statistics.median(cpu["optax.adamw"])
    print(
        f"GPT-style tree preset {args.preset} ({optx.tree_utils.param_count(params):,} params, f32); "
        f"device {jax.devices()[0].device_kind}; {args.repeats} rounds\n"
    )
    print(
        "| step | median ms | × optax.adamw | min ms | × optax.adamw (min) "
        "| CPU ms (median) | × optax.adamw (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ts in times.items():
        med, low, c = statistics.median(ts), min(ts), statistics.median(cpu[name])
        print(
            f"| {name} | {1e3 * med:.2f} | {med / base_med:.2f} | {1e3 * low:.2f} | "
            f"{low / base_min:.2f} | {1e3 * c:.2f} | {c / base_cpu:.2f} |"
        )
    for note in notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
