"""Where an optimizer's XLA:CPU compile time goes: the kernels LLVM compiles.

``python benchmarks/compile_kernels.py --optimizers sophia_h,adahessian`` compiles
the same jitted step as :mod:`benchmarks.compile_time` (``tx.update`` plus
``optax.apply_updates``, extra arguments built in the step) in a fresh
subprocess with XLA:CPU's compiler logging on
(``TF_CPP_VMODULE=cpu_compiler=2,ir_compiler=2``) and prints, for that step
alone: the LLVM modules (kernels) compiled, their summed LLVM seconds, and the
kernel kinds that cost most. XLA:CPU compiles a kernel once per *distinct*
fusion (identical fusions reuse it), so the kernel count, not the HLO size,
is what a compile-time change has to move: each kernel costs about 10 ms here.

``floor:NAME`` compiles :mod:`benchmarks._compile_floors`' floor programs of
``NAME`` instead. ``--probe isfinite`` compares the two ways of checking a
tree for non-finite values over the benchmark tree's leaves: a boolean
``jnp.all(jnp.isfinite(x))`` per leaf and optx's check
(``optx._src.nonfinite.all_finite``, a uint8 minimum per leaf).

The log lines parsed are XLA's (``Compiled LLVM module: … time: …``); another
jaxlib may word them differently, in which case the script says it found none.

Example::

  python benchmarks/compile_kernels.py --optimizers adamw,sophia_h --top 5
  python benchmarks/compile_kernels.py --optimizers floor:sophia_h
  python benchmarks/compile_kernels.py --probe isfinite
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from collections.abc import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))

_STEP = """
import dataclasses, sys, time
sys.path.insert(0, {here!r})
import jax, jax.numpy as jnp, optax, optx
import _trees
from step_cost import Entry, make_step
shape = dataclasses.replace(_trees.PRESETS[{preset!r}], scanned={scanned!r})
params = _trees.gpt_params(shape, jax.random.key(0))
grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
name = {name!r}
if name.startswith("floor:"):
    import _compile_floors
    progs = [jax.jit(p.fn).trace(*p.args).lower() for p in _compile_floors.FLOORS[name[6:]](params)]
else:
    if name == "optax.adamw":
        tx, spec = optax.adamw(1e-3, weight_decay=1e-4), None
    else:
        spec = optx.get_optimizer(name)
        tx = spec.build()
    step = make_step(Entry(name, tx, spec), _trees.quadratic_loss)
    state = jax.eval_shape(tx.init, params)
    progs = [step.trace(grads, state, params, jax.random.key(0)).lower()]
print("MARK", flush=True)
sys.stderr.write("=== COMPILE START ===\\n"); sys.stderr.flush()
t0 = time.perf_counter()
for p in progs:
    p.compile()
print("SECONDS", time.perf_counter() - t0, flush=True)
"""

_PROBE = """
import dataclasses, sys, time
sys.path.insert(0, {here!r})
import jax, jax.numpy as jnp
import _trees
from optx._src import nonfinite
params = _trees.gpt_params(_trees.PRESETS[{preset!r}], jax.random.key(0))
if {variant!r} == "bool":
    fn = lambda p: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(p)]))
else:
    fn = nonfinite.all_finite
lowered = jax.jit(fn).trace(params).lower()
sys.stderr.write("=== COMPILE START ===\\n"); sys.stderr.flush()
t0 = time.perf_counter()
lowered.compile()
print("SECONDS", time.perf_counter() - t0, flush=True)
"""

_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def kernels(stderr: str) -> collections.Counter[str]:
    """LLVM seconds per kernel kind logged after the compile marker (``kind#n`` counts)."""
    tail = stderr.split("=== COMPILE START ===", 1)[-1]
    out: collections.Counter[str] = collections.Counter()
    for m in re.finditer(r"Compiled LLVM module: (\S+) time: ([\d.]+) (s|ms|us)\b", tail):
        kind = re.sub(r"__compute_module_|_kernel_module|\.\d+", "", m.group(1))
        out[kind] += float(m.group(2)) * _UNIT[m.group(3)]
        out[kind + "#n"] += 1
    return out


def run_logged(code: str) -> tuple[float, collections.Counter[str]]:
    """Compile seconds and kernel table of ``code`` run in a fresh logged subprocess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="cpu_compiler=2,ir_compiler=2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    seconds = float(re.search(r"SECONDS (\S+)", proc.stdout).group(1))
    return seconds, kernels(proc.stderr)


def report(label: str, seconds: float, table: collections.Counter[str], top: int) -> str:
    counts = {k[:-2]: v for k, v in table.items() if k.endswith("#n")}
    total = sum(v for k, v in table.items() if not k.endswith("#n"))
    if not counts:
        return f"{label}: compile {seconds:.2f} s; no LLVM module lines found in XLA's log"
    lines = [
        f"{label}: compile {seconds:.2f} s, {int(sum(counts.values()))} kernels, "
        f"{total:.2f} s of LLVM time"
    ]
    by_time = sorted(counts, key=lambda k: -table[k])[:top]
    lines += [f"    {table[k] * 1e3:7.1f} ms  x{int(counts[k]):3d}  {k}" for k in by_time]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizers", default="optax.adamw", help="comma-separated; floor:NAME")
    p.add_argument("--preset", default="small")
    p.add_argument("--tree", default="unscanned", choices=("unscanned", "scanned"))
    p.add_argument("--top", type=int, default=8, help="kernel kinds shown per step")
    p.add_argument("--probe", choices=("isfinite",), help="the finiteness-check comparison")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.probe == "isfinite":
        for variant, label in (("bool", "jnp.all(isfinite) per leaf"), ("uint8", "all_finite")):
            code = _PROBE.format(here=HERE, preset=args.preset, variant=variant)
            print(report(label, *run_logged(code), args.top))
        return
    for name in args.optimizers.split(","):
        code = _STEP.format(
            here=HERE, preset=args.preset, scanned=args.tree == "scanned", name=name
        )
        print(report(f"{name} ({args.tree})", *run_logged(code), args.top))


if __name__ == "__main__":
    main()
