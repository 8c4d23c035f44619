"""One process of the multi-process check (tests/test_multiprocess.py; issue 16).

Run as ``python -m tests.multiprocess_worker --num-processes N --process-id I ...``. With
``N = 2`` each process owns 4 CPU devices and joins a ``jax.distributed`` job on localhost
(gloo CPU collectives); with ``N = 1`` one process owns all 8 devices. Either way the same
``(data 2, model 4)`` mesh spans 8 devices (Auto axes, or Explicit ones with
``--axis-types explicit``: sharded types, the optimizers' FSDP paths), the parameters are
global arrays sharded FSDP-style (hidden matrices over both axes), and every named
optimizer runs a few jitted
steps. Process 0 writes the gathered parameters to ``--out`` (an ``.npz``), plus, per
optimizer, whether an orbax save/restore of the state across processes continued the run
exactly.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--num-processes", type=int, required=True)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--names", required=True, help="comma-separated registry names")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint-dir", default="")
    p.add_argument(
        "--axis-types",
        choices=("auto", "explicit"),
        default="auto",
        help="the mesh's axis types: Auto (the compiler partitions) or Explicit (sharded types)",
    )
    return p.parse_args()


def main() -> None:
    args = _parse()
    local = 8 // args.num_processes
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if "device_count" not in f)
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_force_host_platform_device_count={local} --xla_backend_optimization_level=0"
    )
    import jax

    jax.config.update("jax_num_cpu_devices", local)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=120,
        )
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import optx
    from tests.conformance import problems

    assert jax.device_count() == 8, jax.devices()
    kind = AxisType.Explicit if args.axis_types == "explicit" else AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(kind,) * 2)
    # A tiny tree (compile time dominates): an FSDP x tensor-parallel matrix, a stack
    # sharded over `data` alone (FSDP: the whole-matrix-per-device paths, e.g. Muon's and
    # GaLore's all-to-alls, run across the processes), a model-sharded fallback matrix
    # (embedding) and a replicated vector.
    mixed = jax.tree.map(np.asarray, problems.mixed_params())
    host = {
        "embed": {"embedding": mixed["embed"]["embedding"]},  # (12, 8)
        "hidden": mixed["hidden"],  # kernel (8, 16), bias (16,)
        "stack": {"kernel": mixed["stack"]["kernel"][:2]},  # (2, 16, 8)
    }
    specs = jax.tree.map(lambda x: P(), host)
    specs["hidden"]["kernel"] = P("data", "model")
    specs["stack"]["kernel"] = P(None, "data", None)
    specs["embed"]["embedding"] = P(None, "model")

    def global_array(x: np.ndarray, spec: P) -> jax.Array:
        sharding = NamedSharding(mesh, spec)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    params0 = jax.tree.map(global_array, host, specs)
    key = jax.random.key(0)
    results: dict[str, np.ndarray] = {}
    resume: dict[str, tuple] = {}  # name -> (step, params before the last step)
    states: dict[str, object] = {}  # name -> state before the last step (one checkpoint)

    def gather(tree: object) -> object:
        return multihost_utils.process_allgather(tree, tiled=True)

    replicated = NamedSharding(mesh, P())

    def loss(p: object) -> jax.Array:
        """The loss of the parameters gathered on every device: its value (and ES
        fitness, whose standardization amplifies round-off) does not depend on how the
        processes split a reduction; the gradient still comes back sharded like ``p``."""
        whole = jax.tree.map(
            lambda x: (
                jax.sharding.reshard(x, replicated)
                if kind == AxisType.Explicit
                else jax.lax.with_sharding_constraint(x, replicated)
            ),
            p,
        )
        return problems.mixed_loss(whole)

    for name in args.names.split(","):
        t0 = time.perf_counter()
        try:
            spec = optx.get_optimizer(name)
            kwargs = {**spec.defaults, **spec.test_overrides}
            tx = optax.with_extra_args_support(spec.factory(**kwargs))

            def step(p, s, i, spec=spec, tx=tx):
                _, grads, extra = problems.extra_args_for(spec, loss, p, i, key)
                u, s = tx.update(grads, s, p, **extra)
                return optax.apply_updates(p, u), s

            step = jax.jit(step)
            shardings = optx.sharding.state_shardings(tx, params0)
            state = jax.jit(tx.init, out_shardings=shardings)(params0)
            params = params0
            for i in range(args.steps - 1):
                params, state = step(params, state, jnp.asarray(i))
            final_params, _ = step(params, state, jnp.asarray(args.steps - 1))
            for path, leaf in optx._src.base.flatten_with_paths(gather(final_params))[0]:
                results[f"{name}/{path}"] = np.asarray(leaf)
            resume[name], states[name] = (step, params), state
        except Exception as e:  # reported by the parent: one failure must not hide the others
            results[f"{name}/__error__"] = np.asarray(f"{type(e).__name__}: {e}"[:2000])
        print(f"[worker {args.process_id}] {name} {time.perf_counter() - t0:.1f}s", flush=True)

    if args.checkpoint_dir and states:
        # One orbax checkpoint of every optimizer's state, written and read by all processes.
        import orbax.checkpoint as ocp

        t0 = time.perf_counter()
        directory = os.path.join(args.checkpoint_dir, "states")
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(directory, states)
            ckpt.wait_until_finished()
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), states
            )
            restored = ckpt.restore(directory, abstract)
        for name, (step, params) in resume.items():
            resumed, _ = step(params, restored[name], jnp.asarray(args.steps - 1))
            expected = {k: v for k, v in results.items() if k.startswith(name + "/")}
            got = optx._src.base.flatten_with_paths(gather(resumed))[0]
            same = all(np.array_equal(np.asarray(v), expected[f"{name}/{k}"]) for k, v in got)
            results[f"{name}/__restored_exactly__"] = np.asarray(same)
        print(f"[worker {args.process_id}] orbax {time.perf_counter() - t0:.1f}s", flush=True)

    if jax.process_index() == 0:
        np.savez(args.out, **results)
    if args.num_processes > 1:
        multihost_utils.sync_global_devices("done")
        jax.distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
