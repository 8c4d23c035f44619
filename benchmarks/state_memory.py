"""Per-device optimizer-state bytes under FSDP x tensor parallelism (issue 16 §2).

For every registered optimizer, the state of ``tx.init`` on a GPT-2-small-shaped tree
(124 M params, abstract: nothing is allocated) over an 8-device ``(data, model)`` mesh, with
every parameter sharded FSDP-style: its largest axis divisible by ``data`` over ``data``
and, for matrices, another axis divisible by ``model`` over ``model``. The state's shardings
come from :func:`optx.sharding.state_shardings`, exactly what ``jax.jit(tx.init, out_shardings=...)``
uses. Reported per optimizer: total state bytes, the largest per-device share, and that
share against the ideal ``total / devices`` (target ≤ 1.15×); a miss names the leaf that
contributes the most replicated bytes. A state under ``--exempt-bytes`` in all (64 KiB: scalar
counters and keys, replicated on purpose) is reported as exempt with its bytes per device.

Run (abstract, a few seconds per optimizer; 8 virtual CPU devices)::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=. \\
      python benchmarks/state_memory.py --preset gpt2-small --mesh 4,2
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from benchmarks import _trees
from optx._src import base


def fsdp_spec(shape: tuple[int, ...], data: int, model: int) -> P:
    """Largest data-divisible axis over ``data``; for ≥ 2-D, another model-divisible axis."""
    axes: list[str | None] = [None] * len(shape)
    order = sorted(range(len(shape)), key=lambda a: -shape[a])
    for a in order:
        if shape[a] % data == 0 and shape[a] >= data:
            axes[a] = "data"
            break
    if len(shape) >= 2:
        for a in order:
            if axes[a] is None and shape[a] % model == 0 and shape[a] >= model:
                axes[a] = "model"
                break
    return P(*axes)


def sharded_abstract_params(preset: str, data: int, model: int) -> Any:
    mesh = jax.make_mesh((data, model), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    shapes = _trees.gpt_param_shapes(_trees.PRESETS[preset])
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(
            s.shape, s.dtype, sharding=NamedSharding(mesh, fsdp_spec(s.shape, data, model))
        ),
        shapes,
    )


def _nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    return math.prod(shape) * jnp.dtype(dtype).itemsize


def per_device_state(tx: Any, params: Any) -> tuple[int, int, list[tuple[str, int]]]:
    """(total bytes, max per-device bytes, [(leaf path, replicated excess bytes)])."""
    state = jax.eval_shape(tx.init, params)
    shardings = optx.sharding.state_shardings(tx, params)
    mesh = jax.tree.leaves(shardings)[0].mesh
    devices = mesh.devices.size
    per_device = dict.fromkeys(range(devices), 0)
    total = 0
    excess: list[tuple[str, int]] = []
    flat_state, _ = base.flatten_with_paths(state)
    for (path, leaf), sharding in zip(flat_state, jax.tree.leaves(shardings)):
        full = _nbytes(leaf.shape, leaf.dtype)
        total += full
        shard = _nbytes(sharding.shard_shape(leaf.shape), leaf.dtype)
        for d in range(devices):
            per_device[d] += shard
        excess.append((path, shard - full // devices))
    excess.sort(key=lambda t: -t[1])
    return total, max(per_device.values()), excess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-small", choices=sorted(_trees.PRESETS))
    parser.add_argument("--mesh", default="4,2", help="data,model sizes (product = devices)")
    parser.add_argument("--optimizers", default="all")
    parser.add_argument("--target", type=float, default=1.15)
    parser.add_argument(
        "--exempt-bytes",
        type=int,
        default=2**16,
        help="a state smaller than this in all (counters, keys) is exempt from the target",
    )
    args = parser.parse_args()
    data, model = (int(v) for v in args.mesh.split(","))
    params = sharded_abstract_params(args.preset, data, model)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    names = optx.list_optimizers() if args.optimizers == "all" else args.optimizers.split(",")
    print(
        f"{args.preset}: {n_params / 1e6:.1f} M params, mesh data={data} x model={model} "
        f"({data * model} devices), f32 params; state per device vs total/devices\n"
    )
    print("| optimizer | state MB | max MB/device | × total/devices | target | largest excess |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for name in names:
        spec = optx.get_optimizer(name)
        tx = spec.build()
        total, worst, excess = per_device_state(tx, params)
        ideal = total / (data * model)
        ratio = worst / ideal if ideal else 1.0
        ok = "yes" if ratio <= args.target else "**no**"
        if ratio > args.target and total < args.exempt_bytes:
            ok = f"exempt ({worst} B/device)"
        leaf = (
            f"{excess[0][0]} (+{excess[0][1] / 1e6:.1f} MB)" if excess and excess[0][1] > 0 else "-"
        )
        print(f"| {name} | {total / 1e6:.1f} | {worst / 1e6:.1f} | {ratio:.2f} | {ok} | {leaf} |")


if __name__ == "__main__":
    main()
