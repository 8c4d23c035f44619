"""Sharded training: the transformer LM on a 2-D (data × model) device mesh.

``python -m examples.sharded --optimizer muon --mesh 4x2`` trains the
character transformer with any registered optx optimizer on a ``('data',
'model')`` mesh: the batch is sharded over ``data``; hidden kernels are
sharded Megatron-style over ``model`` (attention heads, the MLP hidden axis)
and, with ``--fsdp``, their other axis over ``data``; optimizer states get the
shardings :func:`optx.sharding.state_shardings` derives from the parameters (so
momentum is sharded like its parameter, and row statistics keep the shardings
of the axes they keep). On a CPU it runs with 8 virtual devices
(``--devices 8``, i.e. ``XLA_FLAGS=--xla_force_host_platform_device_count=8``);
on a GPU/TPU slice it runs unchanged on the real devices.

:func:`count_collectives` counts the collectives (all-gather, all-reduce,
reduce-scatter, all-to-all, collective-permute) in a compiled program, and
:func:`optimizer_step_collectives` applies it to the optimizer update alone,
so a user can see whether Newton–Schulz on sharded matrices gathers them —
e.g. for ``optx.muon(strategy=...)`` with ``'auto'`` (FSDP-sharded matrices
through two all-to-alls, one matrix per device; other shardings under
``auto_axes``: XLA inserts the collectives of the sharded matmuls), ``'replicate'`` (gather each
matrix, orthogonalize everywhere, slice back) and ``'batched'`` (stack
same-shape matrices and shard the stack so each device orthogonalizes whole
matrices). The strategies differ under an *Explicit* mesh (``jax.make_mesh``'s
default in jax 0.10); under an Auto mesh the compiler chooses for all three.

Example (8 CPU devices)::

  python -m examples.sharded --devices 8 --mesh 4x2 --optimizer muon --steps 20 --fsdp
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from examples import data, models, training

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_RE = re.compile(r"=\s*[^=]*?\b(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def make_mesh(data_size: int, model_size: int, *, explicit: bool = False) -> jax.sharding.Mesh:
    """A ``('data', 'model')`` mesh of ``data_size × model_size`` devices."""
    n = data_size * model_size
    if n > jax.device_count():
        raise ValueError(
            f"A {data_size}x{model_size} mesh needs {n} devices, {jax.device_count()} available "
            "(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=8)."
        )
    kind = AxisType.Explicit if explicit else AxisType.Auto
    return jax.make_mesh(
        (data_size, model_size),
        ("data", "model"),
        axis_types=(kind, kind),
        devices=jax.devices()[:n],
    )


def _divisible(size: int, mesh: jax.sharding.Mesh, axis: str | None) -> bool:
    return axis is None or size % mesh.shape[axis] == 0


def partition_spec(path: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh, fsdp: bool) -> P:
    """The PartitionSpec of one transformer parameter (by key path).

    Megatron-style tensor parallelism over ``model``: query/key/value
    ``(d, heads, hd)`` are sharded on heads, ``out`` ``(heads, hd, d)`` on heads,
    ``mlp/up`` ``(d, f)`` on ``f``, ``mlp/down`` ``(f, d)`` on ``f``, the embedding
    on ``d``. With ``fsdp`` the remaining ``d`` axis of those kernels is sharded
    over ``data``. Leading (scanned) axes, norms and biases are replicated; an
    axis that does not divide evenly is left replicated.
    """
    f = "data" if fsdp else None
    table: list[tuple[str, tuple[str | None, ...]]] = [
        (r"attn/(query|key|value)/kernel$", (f, "model", None)),
        (r"attn/out/kernel$", ("model", None, f)),
        (r"mlp/up/kernel$", (f, "model")),
        (r"mlp/down/kernel$", ("model", f)),
        (r"(^|/)embed/embedding$", (None, "model")),
        (r"(^|/)lm_head/kernel$", ("model", None)),
    ]
    for pattern, trailing in table:
        if re.search(pattern, path) and len(shape) >= len(trailing):
            lead = (None,) * (len(shape) - len(trailing))
            axes = lead + trailing
            axes = tuple(a if _divisible(s, mesh, a) else None for s, a in zip(shape, axes))
            return P(*axes)
    return P()


def param_shardings(params: Any, mesh: jax.sharding.Mesh, *, fsdp: bool = False) -> Any:
    """A tree of ``NamedSharding`` for ``params`` (see :func:`partition_spec`)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(
            mesh, partition_spec(optx.tree_utils.path_to_str(p), tuple(jnp.shape(x)), mesh, fsdp)
        ),
        params,
    )


def count_collectives(compiled_or_text: Any) -> dict[str, int]:
    """Counts collective ops in a compiled XLA program (or its HLO text).

    Accepts a ``jax.stages.Compiled`` (``jax.jit(f).lower(...).compile()``) or
    HLO text. Async pairs (``all-gather-start``/``-done``) count once.
    """
    text = compiled_or_text if isinstance(compiled_or_text, str) else compiled_or_text.as_text()
    counts = collections.Counter(m.group(1) for m in _COLLECTIVE_RE.finditer(text))
    return {c: int(counts.get(c, 0)) for c in COLLECTIVES}


def optimizer_step_collectives(
    tx: optax.GradientTransformation,
    params: Any,
    shardings: Any,
    mesh: jax.sharding.Mesh,
) -> dict[str, int]:
    """Collectives in the compiled ``tx.update`` alone, for params sharded by ``shardings``.

    Under an Explicit mesh the update is traced inside ``jax.set_mesh(mesh)``
    (where optx's sharding strategies apply); under an Auto mesh it is jitted
    with ``in_shardings``/``out_shardings``. Nothing is executed.
    """
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=s), params, shardings
    )
    state_sh = optx.sharding.state_shardings(tx, abstract)
    abstract_state = jax.eval_shape(tx.init, abstract)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sh
    )

    def update(grads: Any, state: Any, p: Any) -> tuple[Any, Any]:
        return tx.update(grads, state, p)

    explicit = all(t == AxisType.Explicit for t in mesh.axis_types)
    fn = jax.jit(
        update,
        in_shardings=(shardings, state_sh, shardings),
        out_shardings=(shardings, state_sh),
    )
    if explicit:
        with jax.set_mesh(mesh):
            compiled = fn.lower(abstract, abstract_state, abstract).compile()
    else:
        compiled = fn.lower(abstract, abstract_state, abstract).compile()
    return count_collectives(compiled)


@dataclasses.dataclass
class ShardedRun:
    """What :func:`train_sharded` returns."""

    losses: list[float]
    params: Any
    opt_state: Any
    param_shardings: Any
    state_shardings: Any
    step_collectives: dict[str, int]


def train_sharded(
    optimizer: str = "muon",
    *,
    mesh: jax.sharding.Mesh,
    cfg: models.TransformerConfig | None = None,
    corpus: data.CharCorpus | None = None,
    steps: int = 20,
    batch_size: int = 16,
    learning_rate: float | None = None,
    fsdp: bool = False,
    seed: int = 0,
    optimizer_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> ShardedRun:
    """Trains the transformer LM on ``mesh`` with the registered ``optimizer``.

    The step is ``jax.jit`` with explicit ``in_shardings``/``out_shardings`` for
    params, optimizer state (:func:`optx.sharding.state_shardings`) and batch
    (``P('data', None)``). Returns the per-step losses, the final sharded
    params/state and the collective count of the whole training step.
    """
    corpus = data.load_shakespeare() if corpus is None else corpus
    cfg = cfg or models.TransformerConfig(
        vocab_size=corpus.vocab_size,
        d_model=64,
        n_layers=2,
        n_heads=4,
        max_len=64,
        scan_layers=True,
    )
    if batch_size % mesh.shape["data"]:
        raise ValueError(f"batch_size {batch_size} is not divisible by the data axis.")
    spec = optx.get_optimizer(optimizer)
    kwargs = dict(optimizer_kwargs or {})
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    tx = spec.build(**kwargs)
    graphdef, params = nnx.split(models.TransformerLM(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    p_sh = param_shardings(params, mesh, fsdp=fsdp)
    params = jax.device_put(params, p_sh)
    s_sh = optx.sharding.state_shardings(tx, params)
    opt_state = jax.jit(tx.init, out_shardings=s_sh)(params)
    batch_sh = NamedSharding(mesh, P("data", None))

    def loss_of(p: Any, batch: Any) -> jax.Array:
        return models.lm_loss(nnx.merge(graphdef, p), batch)

    def step(p: Any, s: Any, batch: Any, i: jax.Array) -> tuple[Any, Any, jax.Array]:
        return training.optimizer_step(
            tx,
            spec,
            lambda q: loss_of(q, batch),
            p,
            s,
            key=jax.random.key(seed),
            step=i,
            batch=batch,
        )

    step_fn = jax.jit(
        step,
        in_shardings=(p_sh, s_sh, (batch_sh, batch_sh), None),
        out_shardings=(p_sh, s_sh, None),
        donate_argnums=(0, 1),
    )
    it = data.char_lm_batches(corpus.train, batch_size=batch_size, seq_len=cfg.max_len, seed=seed)
    first = next(it)
    compiled = step_fn.lower(params, opt_state, first, jnp.int32(0)).compile()
    collectives = count_collectives(compiled)
    losses = []
    batch = first
    for i in range(steps):
        if i:
            batch = next(it)
        batch = jax.device_put(batch, (batch_sh, batch_sh))
        params, opt_state, loss = compiled(params, opt_state, batch, jnp.int32(i))
        losses.append(float(loss))
        if log is not None and (i % 5 == 0 or i == steps - 1):
            log(f"step {i:4d}  loss {losses[-1]:.4f}")
    return ShardedRun(losses, params, opt_state, p_sh, s_sh, collectives)


def strategy_table(
    params: Any, mesh_shape: tuple[int, int], *, fsdp: bool, optimizer: str = "muon"
) -> str:
    """Collectives of ``optimizer``'s update for each NS strategy, Explicit and Auto meshes."""
    lines = [
        "| mesh | strategy | " + " | ".join(COLLECTIVES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in COLLECTIVES) + " |",
    ]
    for explicit in (True, False):
        mesh = make_mesh(*mesh_shape, explicit=explicit)
        sh = param_shardings(params, mesh, fsdp=fsdp)
        for strategy in ("auto", "replicate", "batched"):
            tx = optx.get_optimizer(optimizer).build(strategy=strategy)
            counts = optimizer_step_collectives(tx, params, sh, mesh)
            kind = "Explicit" if explicit else "Auto"
            lines.append(
                f"| {kind} | {strategy} | " + " | ".join(str(counts[c]) for c in COLLECTIVES) + " |"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.sharded", description=__doc__.split("\n")[0]
    )
    p.add_argument("--optimizer", default="muon")
    p.add_argument("--mesh", default="4x2", help="DATAxMODEL, e.g. 4x2")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="number of virtual CPU devices to create (CPU only)",
    )
    p.add_argument("--fsdp", action="store_true", help="also shard kernels over the data axis")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    training.add_model_arguments(p)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--no-strategy-table", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> ShardedRun:
    args = build_parser().parse_args(argv)
    if args.devices:
        jax.config.update("jax_num_cpu_devices", args.devices)
    d, m = (int(v) for v in args.mesh.lower().split("x"))
    corpus = data.load_shakespeare()
    cfg = models.TransformerConfig(
        vocab_size=corpus.vocab_size,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        max_len=args.seq_len,
        scan_layers=True,
    )
    mesh = make_mesh(d, m)
    print(
        f"[sharded] {jax.device_count()} devices ({jax.devices()[0].device_kind}); "
        f"mesh {dict(mesh.shape)}; optimizer {args.optimizer}; fsdp={args.fsdp}"
    )
    run = train_sharded(
        args.optimizer,
        mesh=mesh,
        cfg=cfg,
        corpus=corpus,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        fsdp=args.fsdp,
        log=lambda s: print(f"[sharded] {s}", flush=True),
    )
    print(f"[sharded] collectives in the whole training step: {run.step_collectives}")
    flat = jax.tree_util.tree_flatten_with_path(run.state_shardings)[0]
    sharded_state = [(optx.tree_utils.path_to_str(p), s.spec) for p, s in flat if any(s.spec)]
    for path, spec in sharded_state[:6]:
        print(f"[sharded] state {path}: {spec}")
    if not args.no_strategy_table:
        params = nnx.split(models.TransformerLM(cfg, rngs=nnx.Rngs(0)), nnx.Param)[1]
        print("\nCollectives in the optimizer update alone (optx.muon strategies):\n")
        print(strategy_table(params, (d, m), fsdp=args.fsdp, optimizer="muon"))
    return run


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
