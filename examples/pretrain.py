"""A pretraining recipe: a GPT-style LM on a ``(data, fsdp, model)`` mesh with any optx optimizer.

``python -m examples.pretrain --preset tiny --mesh 2,2,2 --optimizer muon --steps 50``

What a pretraining run needs, in one file a team can start from:

* **Model presets** (:data:`PRESETS`): ``tiny`` (CPU and CI), ``gpt2-small`` (124 M
  parameters with GPT-2's 50304-token padded vocabulary) and ``gpt2-medium`` (~350 M), built
  from :class:`examples.models.TransformerLM` with scanned blocks (stacked ``(L, ...)`` kernels).
* **A 3-D mesh** ``--mesh D,F,M`` over the axes ``('data', 'fsdp', 'model')``: the batch is
  sharded over ``data × fsdp``; parameters are sharded FSDP-style over ``fsdp`` and
  Megatron-style over ``model`` (:func:`partition_spec`); the optimizer state takes the
  shardings :func:`optx.sharding.state_shardings` derives from the parameters.
* **Any registered optimizer** by name (``--optimizer``), with its registry defaults, the
  model-aware router of :func:`optx.router_for` (embeddings, the head, norms and biases go to
  the method's fallback AdamW) and a warmup-cosine schedule.
* **Gradient accumulation** ``--accum K``: each optimizer step scans over ``K`` micro-batches
  inside one jitted step and applies the mean gradient once.
* **A token data loader** (:class:`TokenLoader`) that memory-maps a flat token file
  (``train.bin``, uint16) in every process and reads only that process's rows of each global
  batch; the batch of step ``i`` depends only on ``(seed, i)``, so a resumed run sees the
  same data. On CPU the Shakespeare corpus is tokenized by character into such a file
  (:func:`prepare_shakespeare`).
* **Checkpoints**: an orbax ``CheckpointManager`` saves ``{params, opt_state, step}`` every
  ``--save-every`` steps asynchronously; a restart restores the latest (or ``--resume-from``)
  checkpoint onto the *current* mesh, which may differ from the one that wrote it.
* **Metrics**: JSONL (``--metrics``) per step and a progress bar; tokens/s, model-FLOPs
  utilization (MFU, :func:`flops_per_token` against :func:`peak_flops` of the device kind,
  ``n/a`` where unknown, e.g. CPU) and the optimizer's share of the step time (the jitted
  optimizer update alone timed against the whole step). ``--profile DIR`` writes a JAX
  profiler trace of a few steps (open it with TensorBoard or Perfetto).
* **Multi-host**: ``--coordinator-address HOST:PORT --num-processes N --process-id I`` calls
  ``jax.distributed.initialize`` (on TPU pods and SLURM clusters ``--distributed`` alone
  lets JAX find them); see README "Pretraining recipe" for the launch lines.

Example (8 CPU devices, a few seconds)::

  python -m examples.pretrain --cpu-devices 8 --preset tiny --mesh 2,2,2 --steps 20 \\
      --optimizer muon --checkpoint-dir /tmp/optx-pretrain --save-every 10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import pathlib
import re
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

#: Model presets: TransformerConfig fields (``vocab_size`` None: the token file's vocabulary).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=32, n_layers=2, n_heads=2, max_len=32, vocab_size=None),
    "gpt2-small": dict(d_model=768, n_layers=12, n_heads=12, max_len=1024, vocab_size=50304),
    "gpt2-medium": dict(d_model=1024, n_layers=24, n_heads=16, max_len=1024, vocab_size=50304),
}

#: Dense bf16 peak FLOP/s per chip (vendor data sheets), matched on ``device.device_kind``.
#: The first matching pattern wins (so ``v5 lite`` is tested before ``v5``).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"TPU v4", 275e12),
    (r"TPU v5 ?lite|TPU v5e", 197e12),
    (r"TPU v5p|TPU v5", 459e12),
    (r"TPU v6 ?lite|TPU v6e", 918e12),
    (r"H200", 989e12),
    (r"H100", 989e12),  # SXM; the PCIe card peaks at 756 TFLOP/s
    (r"A100", 312e12),
)


# ----------------------------------------------------------------------------
# Throughput accounting
# ----------------------------------------------------------------------------


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device of this kind, or None where unknown (CPU).

    Example:
      >>> from examples.pretrain import peak_flops
      >>> peak_flops("TPU v5 lite"), peak_flops("NVIDIA H100 80GB HBM3"), peak_flops("cpu")
      (197000000000000.0, 989000000000000.0, None)
    """
    for pattern, value in PEAK_FLOPS:
        if re.search(pattern, device_kind, flags=re.IGNORECASE):
            return value
    return None


def flops_per_token(n_matmul_params: int, n_layers: int, seq_len: int, d_model: int) -> float:
    """Training FLOPs per token: ``6 N + 12 L T d`` (forward + backward).

    ``N`` counts the parameters that take part in matrix multiplies (every kernel and the
    output head; not the input embedding, a lookup). ``12 L T d`` is the attention score and
    value products (Kaplan et al. 2020, arXiv 2001.08361, Table 1; Chowdhery et al. 2022,
    arXiv 2204.02311, App. B), counting the full ``T × T`` matrix as MFU conventionally does.

    Example:
      >>> from examples.pretrain import flops_per_token
      >>> flops_per_token(1000, 2, 8, 4)
      6768.0
    """
    return 6.0 * n_matmul_params + 12.0 * n_layers * seq_len * d_model


def mfu(
    tokens_per_s: float, flops_token: float, n_devices: int, peak: float | None
) -> float | None:
    """Model FLOPs utilization: achieved model FLOP/s over the devices' peak (None if unknown)."""
    if peak is None or tokens_per_s <= 0:
        return None
    return tokens_per_s * flops_token / (n_devices * peak)


# ----------------------------------------------------------------------------
# Token files and the per-process loader
# ----------------------------------------------------------------------------


def write_token_files(directory: str | os.PathLike[str], corpus: Any) -> pathlib.Path:
    """Writes ``train.bin``/``val.bin`` (uint16 token ids) and ``meta.json`` for a CharCorpus."""
    root = pathlib.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        ids = np.asarray(getattr(corpus, split), np.uint16)
        tmp = root / f"{split}.bin.tmp"
        ids.tofile(tmp)
        tmp.replace(root / f"{split}.bin")
    meta = {"vocab": corpus.vocab, "vocab_size": corpus.vocab_size, "credit": corpus.credit}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def prepare_shakespeare(directory: str | os.PathLike[str]) -> pathlib.Path:
    """The Shakespeare corpus tokenized by character into ``directory`` (once)."""
    from examples import data

    root = pathlib.Path(directory)
    if (root / "meta.json").is_file():
        return root
    return write_token_files(root, data.load_shakespeare())


class TokenLoader:
    """Reads this process's rows of each global batch from a memory-mapped token file.

    The global batch of step ``i`` is ``accum × batch`` random windows of ``seq_len + 1``
    tokens whose offsets come from ``numpy.random.default_rng((seed, i))`` — the same in every
    process and in a resumed run. Process ``p`` of ``P`` reads rows
    ``[p·batch/P, (p+1)·batch/P)`` of every micro-batch, the rows its devices hold when the
    batch axis is sharded over the leading mesh axes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch: int,
        seq_len: int,
        accum: int = 1,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        if batch % process_count:
            raise ValueError(f"batch {batch} is not divisible by {process_count} processes.")
        self.tokens = np.memmap(path, dtype=np.uint16, mode="r")
        if len(self.tokens) <= seq_len + 1:
            raise ValueError(f"{path} holds {len(self.tokens)} tokens, too few for {seq_len}.")
        self.batch, self.seq_len, self.accum, self.seed = batch, seq_len, accum, seed
        local = batch // process_count
        self.rows = slice(process_index * local, (process_index + 1) * local)

    def local_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, targets)`` int32 ``(accum, batch / processes, seq_len)`` of ``step``."""
        rng = np.random.default_rng((self.seed, step))
        high = len(self.tokens) - self.seq_len - 1
        starts = rng.integers(0, high, size=(self.accum, self.batch))[:, self.rows]
        windows = self.tokens[starts[..., None] + np.arange(self.seq_len + 1)].astype(np.int32)
        return windows[..., :-1], windows[..., 1:]


# ----------------------------------------------------------------------------
# Mesh and shardings
# ----------------------------------------------------------------------------


def make_mesh(shape: Sequence[int]) -> Any:
    """An Auto ``('data', 'fsdp', 'model')`` mesh on the first ``prod(shape)`` devices."""
    import jax
    from jax.sharding import AxisType

    n = math.prod(shape)
    if len(shape) != 3 or n > jax.device_count():
        raise ValueError(
            f"--mesh needs 3 sizes (data,fsdp,model) over at most {jax.device_count()} devices, "
            f"got {tuple(shape)}."
        )
    return jax.make_mesh(
        tuple(shape), AXES, axis_types=(AxisType.Auto,) * 3, devices=jax.devices()[:n]
    )


_SPECS: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"attn/(query|key|value)/kernel$", ("fsdp", "model", None)),
    (r"attn/out/kernel$", ("model", None, "fsdp")),
    (r"mlp/up/kernel$", ("fsdp", "model")),
    (r"mlp/down/kernel$", ("model", "fsdp")),
    (r"(^|/)(pos_)?embed/embedding$", ("model", "fsdp")),
    (r"(^|/)lm_head/kernel$", ("fsdp", "model")),
)


def partition_spec(path: str, shape: tuple[int, ...], mesh: Any) -> Any:
    """PartitionSpec of one parameter: FSDP over ``fsdp``, tensor parallel over ``model``.

    Leading (scanned layer) axes, norms and axes that do not divide evenly stay replicated.
    """
    from jax.sharding import PartitionSpec as P

    for pattern, trailing in _SPECS:
        if re.search(pattern, path) and len(shape) >= len(trailing):
            axes = (None,) * (len(shape) - len(trailing)) + trailing
            return P(
                *(a if a is None or s % mesh.shape[a] == 0 else None for s, a in zip(shape, axes))
            )
    return P()


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class PretrainResult:
    """What :func:`run` returns (process 0's view)."""

    losses: dict[int, float]
    start_step: int
    tokens_per_s: float
    mfu: float | None
    optimizer_share: float | None
    n_params: int
    flops_per_token: float
    mesh_shape: dict[str, int]


def _build_optimizer(args: argparse.Namespace, model_abstract: Any, example: Any) -> Any:
    import optax

    import optx

    spec = optx.get_optimizer(args.optimizer)
    params = inspect.signature(spec.factory).parameters
    peak = (
        args.learning_rate
        if args.learning_rate is not None
        else spec.defaults.get("learning_rate", 1e-3)
    )
    warmup = max(1, min(args.warmup, args.steps // 10 or 1))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        peak,
        warmup_steps=warmup,
        decay_steps=max(args.steps, warmup + 1),
        end_value=0.1 * peak,
    )
    kwargs: dict[str, Any] = {"learning_rate": schedule} if "learning_rate" in params else {}
    if "router" in params:
        kwargs["router"] = optx.router_for(model_abstract, example, warn_guessed=False)
    if args.weight_decay is not None and "weight_decay" in params:
        kwargs["weight_decay"] = args.weight_decay
    tx = spec.build(**kwargs)
    if args.clip:
        tx = optax.chain(optax.clip_by_global_norm(args.clip), tx)
    return spec, tx


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return contextlib.nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the examples extra
        return contextlib.nullcontext(None)
    return tqdm(total=total, initial=initial, desc="pretrain", unit="step", file=sys.stderr)


@dataclasses.dataclass
class _Program:
    """The run's model, shardings and jitted functions (built by :func:`_build_program`)."""

    cfg: Any
    mesh: Any
    abstract_params: Any
    param_sh: Any
    state_sh: dict[str, Any]
    batch_sh: Any
    init: Any  # () -> {params, opt_state, step}
    apply: Any  # (state, grads, loss, batch) -> state: the optimizer update alone
    train_step: Any  # jitted (state, batch) -> (state, loss), state donated


def _model_config(args: argparse.Namespace, data_dir: pathlib.Path) -> Any:
    """The preset's :class:`examples.models.TransformerConfig` (the token file made if missing)."""
    import jax.numpy as jnp

    from examples import models

    if not (data_dir / "meta.json").is_file():
        prepare_shakespeare(data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    preset = dict(PRESETS[args.preset])
    vocab = preset.pop("vocab_size") or meta["vocab_size"]
    vocab = -(-max(vocab, meta["vocab_size"]) // 64) * 64  # padded: shards evenly
    if args.seq_len:
        preset["max_len"] = args.seq_len
    return models.TransformerConfig(
        vocab_size=vocab,
        scan_layers=True,
        dtype=jnp.bfloat16 if args.bf16 else None,
        **preset,
    )


def _shardings(tx: Any, abstract_params: Any, mesh: Any) -> tuple[Any, dict[str, Any], Any]:
    """(parameter shardings, train-state shardings, batch sharding) on ``mesh``."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import optx

    param_sh = jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(
            mesh, partition_spec(optx.tree_utils.path_to_str(p), x.shape, mesh)
        ),
        abstract_params,
    )
    sharded_abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params, param_sh
    )
    state_sh = {
        "params": param_sh,
        "opt_state": optx.sharding.state_shardings(tx, sharded_abstract),
        "step": NamedSharding(mesh, P()),
    }
    return param_sh, state_sh, NamedSharding(mesh, P(None, BATCH_AXES, None))


def _build_program(args: argparse.Namespace, cfg: Any, mesh: Any) -> _Program:
    """Model, optimizer, shardings and the jitted train step (gradient accumulation inside)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import optx
    from examples import models

    model_abstract = nnx.eval_shape(lambda: models.TransformerLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(model_abstract, nnx.Param)
    example = jax.ShapeDtypeStruct((1, cfg.max_len), jnp.int32)
    spec, tx = _build_optimizer(args, model_abstract, example)
    param_sh, state_sh, batch_sh = _shardings(tx, abstract_params, mesh)
    key = jax.random.key(args.seed)

    def init() -> dict[str, Any]:
        model = models.TransformerLM(cfg, rngs=nnx.Rngs(args.seed))
        params = nnx.split(model, nnx.Param)[1]
        return {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}

    def loss_on(p: Any, mb: Any) -> jax.Array:
        return models.lm_loss(nnx.merge(graphdef, p), mb)

    def gradients(params: Any, batch: Any) -> tuple[jax.Array, Any]:
        def micro(acc: Any, mb: Any) -> tuple[Any, jax.Array]:
            loss, g = jax.value_and_grad(loss_on)(params, mb)
            return jax.tree.map(jnp.add, acc, g), loss

        zeros = jax.tree.map(jnp.zeros_like, params)
        total, losses = jax.lax.scan(micro, zeros, batch)
        return losses.mean(), jax.tree.map(lambda g: g / args.accum, total)

    def apply(state: dict[str, Any], grads: Any, loss: jax.Array, batch: Any) -> dict[str, Any]:
        first = jax.tree.map(lambda a: a[0], batch)
        ctx = optx.ExtraArgsContext(
            loss_fn=lambda q: loss_on(q, first),
            params=state["params"],
            grads=grads,
            loss=loss,
            key=jax.random.fold_in(key, state["step"]),
            step=state["step"],
            batch=first,
            aux={"logits_fn": lambda q: nnx.merge(graphdef, q)(first[0])},
        )
        extra = spec.make_extra_args(ctx)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], **extra)
        params = jax.tree.map(jnp.add, state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}

    def train_step(state: dict[str, Any], batch: Any) -> tuple[dict[str, Any], jax.Array]:
        loss, grads = gradients(state["params"], batch)
        return apply(state, grads, loss, batch), loss

    jitted = jax.jit(
        train_step,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, None),
        donate_argnums=0,
    )
    return _Program(cfg, mesh, abstract_params, param_sh, state_sh, batch_sh, init, apply, jitted)


def _checkpoints(args: argparse.Namespace) -> Any:
    """An orbax ``CheckpointManager`` with async saves, or None without ``--checkpoint-dir``."""
    import orbax.checkpoint as ocp

    if not args.checkpoint_dir:
        return None
    options = ocp.CheckpointManagerOptions(max_to_keep=args.keep, enable_async_checkpointing=True)
    return ocp.CheckpointManager(pathlib.Path(args.checkpoint_dir).absolute(), options=options)


def _initial_state(args: argparse.Namespace, program: _Program, manager: Any) -> Any:
    """A fresh sharded state, or the checkpoint restored onto this run's mesh."""
    import jax
    import orbax.checkpoint as ocp

    resume = None
    if manager is not None:
        resume = args.resume_from if args.resume_from is not None else manager.latest_step()
    if resume is None:
        return jax.jit(program.init, out_shardings=program.state_sh)()
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(program.init),
        program.state_sh,
    )
    return manager.restore(resume, args=ocp.args.StandardRestore(target))


def _flop_model(program: _Program) -> tuple[int, float]:
    """(parameter count, training FLOPs per token) of the model."""
    import jax

    import optx

    cfg, abstract_params = program.cfg, program.abstract_params
    n_params = optx.tree_utils.param_count(abstract_params)
    n_embed = sum(  # lookup tables: no matmul unless tied to the head
        math.prod(x.shape)
        for path, x in jax.tree_util.tree_leaves_with_path(abstract_params)
        if re.search(r"(^|/)(pos_)?embed/embedding$", optx.tree_utils.path_to_str(path))
    )
    matmul_params = n_params - (0 if cfg.tie_embeddings else n_embed)
    return n_params, flops_per_token(matmul_params, cfg.n_layers, cfg.max_len, cfg.d_model)


@dataclasses.dataclass
class _Meter:
    """Per-step metrics: JSONL records, the progress bar, step times (the first compiles)."""

    tokens_per_step: int
    fpt: float
    n_devices: int
    peak: float | None
    metrics: Any
    bar: Any
    times: list[float] = dataclasses.field(default_factory=list)

    def record(self, i: int, loss: float, dt: float, first: bool) -> None:
        if not first:
            self.times.append(dt)
        tps = self.tokens_per_step / dt
        record = {"step": i, "loss": loss, "step_time_s": dt, "tokens_per_s": tps}
        record["mfu"] = mfu(tps, self.fpt, self.n_devices, self.peak)
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
            self.bar.update(1)


def _train(
    args: argparse.Namespace,
    program: _Program,
    state: Any,
    start: int,
    global_batch: Any,
    manager: Any,
    meter: _Meter,
) -> tuple[Any, dict[int, float]]:
    """Steps ``start .. args.steps − 1``: periodic async saves, a profile of steps 1–3."""
    import jax
    import orbax.checkpoint as ocp

    losses: dict[int, float] = {}
    tracing = False
    for i in range(start, args.steps):
        if args.profile and i == start + 1:  # after the compiling step
            jax.profiler.start_trace(args.profile)
            tracing = True
        batch = global_batch(i)
        t0 = time.perf_counter()
        state, loss = program.train_step(state, batch)
        losses[i] = float(loss)
        dt = time.perf_counter() - t0
        if tracing and i == start + 3:
            jax.profiler.stop_trace()
            tracing = False
        due = manager is not None and (i + 1) % args.save_every == 0
        if due and (i + 1) not in manager.all_steps():
            manager.save(i + 1, args=ocp.args.StandardSave(state))
        meter.record(i, losses[i], dt, first=i == start)
    if tracing:
        jax.profiler.stop_trace()
    if manager is not None:
        if args.steps > start and args.steps not in manager.all_steps():
            manager.save(args.steps, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
        manager.close()
    return state, losses


def run(args: argparse.Namespace) -> PretrainResult:
    """Trains (or resumes) as configured by :func:`build_parser`'s arguments."""
    import jax

    mesh = make_mesh([int(s) for s in args.mesh.split(",")])
    data_dir = pathlib.Path(args.data)
    cfg = _model_config(args, data_dir)
    loader = TokenLoader(
        data_dir / "train.bin",
        batch=args.batch,
        seq_len=cfg.max_len,
        accum=args.accum,
        seed=args.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    program = _build_program(args, cfg, mesh)
    manager = _checkpoints(args)
    state = _initial_state(args, program, manager)
    start = int(state["step"])

    def global_batch(step: int) -> Any:
        x, y = loader.local_batch(step)
        shape = (args.accum, args.batch, cfg.max_len)
        return tuple(
            jax.make_array_from_process_local_data(program.batch_sh, a, shape) for a in (x, y)
        )

    n_params, fpt = _flop_model(program)
    peak = peak_flops(jax.devices()[0].device_kind)
    tokens_per_step = args.batch * args.accum * cfg.max_len
    lead = jax.process_index() == 0
    metrics = open(args.metrics, "a") if (args.metrics and lead) else None  # noqa: SIM115
    with _progress(args.steps, start, lead and not args.no_progress) as bar:
        meter = _Meter(tokens_per_step, fpt, mesh.devices.size, peak, metrics, bar)
        state, losses = _train(args, program, state, start, global_batch, manager, meter)

    step_time = statistics.median(meter.times) if meter.times else float("nan")
    tokens_per_s = tokens_per_step / step_time if meter.times else float("nan")
    share = None
    if args.measure_optimizer and args.steps > start:
        apply = jax.jit(
            program.apply,
            in_shardings=(program.state_sh, program.param_sh, None, program.batch_sh),
            out_shardings=program.state_sh,
        )
        share = _optimizer_share(
            apply, program.train_step, state, global_batch(args.steps), repeats=args.timing_repeats
        )
    util = mfu(tokens_per_s, fpt, mesh.devices.size, peak)
    result = PretrainResult(
        losses, start, tokens_per_s, util, share, n_params, fpt, dict(mesh.shape)
    )
    _report(args, result, step_time, metrics, lead)
    return result


def _report(
    args: argparse.Namespace, result: PretrainResult, step_time: float, metrics: Any, lead: bool
) -> None:
    """The summary record (JSONL) and line (stdout) of process 0."""
    import jax

    summary = {
        "summary": True,
        "optimizer": args.optimizer,
        "preset": args.preset,
        "mesh": result.mesh_shape,
        "params": result.n_params,
        "flops_per_token": result.flops_per_token,
        "tokens_per_s": result.tokens_per_s,
        "step_time_s": step_time,
        "mfu": result.mfu,
        "optimizer_share": result.optimizer_share,
        "device_kind": jax.devices()[0].device_kind,
    }
    if metrics is not None:
        metrics.write(json.dumps(summary) + "\n")
        metrics.close()
    if lead:
        last = result.losses.get(args.steps - 1, float("nan"))
        print(
            f"[pretrain] {args.optimizer} {args.preset} ({result.n_params:,} params) mesh "
            f"{result.mesh_shape}: steps {result.start_step}..{args.steps}, "
            f"last loss {last:.4f}, {result.tokens_per_s:,.0f} tokens/s, "
            f"MFU {_pct(result.mfu)}, optimizer share {_pct(result.optimizer_share)}"
        )


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _optimizer_share(apply: Any, train_step: Any, state: Any, batch: Any, *, repeats: int) -> float:
    """Median time of the jitted optimizer update alone over the median whole-step time.

    The update is timed on stand-in gradients (the parameters: same shapes and shardings);
    its cost does not depend on their values. ``state`` is consumed (``train_step`` donates).
    """
    import jax
    import jax.numpy as jnp

    def timed(fn: Any) -> float:
        jax.block_until_ready(fn())  # compile (or warm)
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    t_opt = timed(lambda: apply(state, state["params"], jnp.float32(0.0), batch))
    box = [state]

    def step() -> Any:
        box[0], loss = train_step(box[0], batch)
        return loss

    return min(1.0, t_opt / timed(step))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.pretrain", description=__doc__.split("\n")[0]
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--mesh", default="1,1,1", help="data,fsdp,model sizes (product ≤ devices)")
    p.add_argument("--optimizer", default="muon", help="a registry name (optx.list_optimizers())")
    p.add_argument("--learning-rate", type=float, default=None, help="peak lr (registry default)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0, help="global-norm clip (0: none)")
    p.add_argument("--steps", type=int, default=100, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=16, help="global micro-batch (sequences)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=int, default=0, help="context (0: the preset's)")
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (params stay f32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data",
        default=None,
        help="directory with train.bin/meta.json (default: Shakespeare chars in the cache)",
    )
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--resume-from", type=int, default=None, help="step (default: the latest)")
    p.add_argument("--metrics", default=None, help="JSONL file to append metrics to")
    p.add_argument("--profile", default=None, help="write a profiler trace of 3 steps here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--measure-optimizer", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--timing-repeats", type=int, default=3)
    p.add_argument("--cpu-devices", type=int, default=0, help="virtual CPU devices (CPU only)")
    dist = p.add_argument_group("multi-host (jax.distributed.initialize)")
    dist.add_argument("--distributed", action="store_true", help="initialize with no arguments")
    dist.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0")
    dist.add_argument("--num-processes", type=int, default=None)
    dist.add_argument("--process-id", type=int, default=None)
    dist.add_argument("--local-devices", default=None, help="comma-separated local device ids")
    return p


def setup_runtime(args: argparse.Namespace) -> None:
    """CPU device count and ``jax.distributed.initialize``: before any JAX computation."""
    import jax

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    if args.coordinator_address or args.distributed:
        if args.cpu_devices:  # CPU processes talk over gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs: dict[str, Any] = {}
        if args.coordinator_address:
            kwargs = dict(
                coordinator_address=args.coordinator_address,
                num_processes=args.num_processes,
                process_id=args.process_id,
            )
        if args.local_devices:
            kwargs["local_device_ids"] = [int(d) for d in args.local_devices.split(",")]
        jax.distributed.initialize(**kwargs)


def main(argv: Sequence[str] | None = None) -> PretrainResult:
    args = build_parser().parse_args(argv)
    setup_runtime(args)
    if args.data is None:
        from examples import data

        args.data = str(data.cache_dir() / "shakespeare_tokens")
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    main()
