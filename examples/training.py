"""Training loops for the examples: tasks, schedules and one benchmark run.

A :class:`Task` bundles a model (as an NNX graph definition + parameter
``nnx.State``), its loss, a seeded training-batch iterator and fixed
validation batches. :func:`train` runs one optimizer at one hyper-parameter
point with a warmup + cosine-decay schedule, ``eval_every`` steps of
``lax.scan`` at a time, and records validation loss against steps and against
training wall time (compilation and evaluation excluded).

The learning rate and weight decay enter the jitted step as *traced* values
(the optimizer is built inside the trace, as ``optax.inject_hyperparams``
does), so a learning-rate sweep compiles once per optimizer. Optimizers whose
factory needs concrete values fall back to one compilation per point.

Every optimizer is built by registry name (``optx.get_optimizer(name)``) and
gets its extra arguments from ``spec.make_extra_args(optx.ExtraArgsContext(...))``
with the loss closure of the current batch, so curvature methods run too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optx
from examples import data, models

Batch = tuple[Any, Any]


@dataclasses.dataclass
class Task:
    """A model + data to train.

    Attributes:
      name: short name used in tables.
      graphdef: the NNX graph definition of the model.
      params: the initial parameters (an ``nnx.State`` of ``nnx.Param``).
      loss: ``(model, batch) -> scalar``.
      train_batches: ``seed -> iterator`` of numpy training batches.
      eval_batches: fixed validation batches (numpy).
      description: one line for reports.
    """

    name: str
    graphdef: Any
    params: Any
    loss: Callable[[nnx.Module, Batch], jax.Array]
    train_batches: Callable[[int], Iterator[Batch]]
    eval_batches: list[Batch]
    description: str = ""

    def loss_of(self, params: Any, batch: Batch) -> jax.Array:
        """The loss as a pure function of the parameter state."""
        return self.loss(nnx.merge(self.graphdef, params), batch)

    def logits_of(self, params: Any, batch: Batch) -> jax.Array:
        """The model's logits on the batch inputs (for Sophia-G's sampled labels)."""
        return nnx.merge(self.graphdef, params)(batch[0])

    @property
    def num_params(self) -> int:
        return optx.tree_utils.param_count(self.params)


def lm_task(
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    seq_len: int = 64,
    batch_size: int = 32,
    eval_batches: int = 8,
    positions: str = "rope",
    tie_embeddings: bool = False,
    scan_layers: bool = True,
    seed: int = 0,
    corpus: data.CharCorpus | None = None,
) -> Task:
    """The character-level transformer LM on the Shakespeare corpus."""
    corpus = data.load_shakespeare() if corpus is None else corpus
    cfg = models.TransformerConfig(
        vocab_size=corpus.vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        max_len=seq_len,
        positions=positions,
        tie_embeddings=tie_embeddings,
        scan_layers=scan_layers,
    )
    graphdef, params = nnx.split(models.TransformerLM(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    evals = data.char_lm_eval_batches(
        corpus.val, batch_size=batch_size, seq_len=seq_len, num_batches=eval_batches
    )

    def batches(s: int) -> Iterator[Batch]:
        return data.char_lm_batches(corpus.train, batch_size=batch_size, seq_len=seq_len, seed=s)

    desc = (
        f"char transformer d={d_model} L={n_layers} H={n_heads} ctx={seq_len} batch={batch_size} "
        f"({optx.tree_utils.param_count(params):,} params) on Shakespeare ({len(corpus.train):,} train chars)"
    )
    return Task("shakespeare-lm", graphdef, params, models.lm_loss, batches, evals, desc)


def add_model_arguments(parser: Any) -> None:
    """The transformer-size flags shared by the example CLIs (``argparse``)."""
    parser.add_argument("--d-model", type=int, default=64, help="residual width")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--seq-len", type=int, default=64, help="context length (characters)")


def image_task(
    model: str = "cnn",
    *,
    dataset: data.ImageDataset | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> Task:
    """The CNN or MLP classifier on the digits (default) or another :class:`ImageDataset`."""
    ds = data.load_digits() if dataset is None else dataset
    rngs = nnx.Rngs(seed)
    if model == "cnn":
        net: nnx.Module = models.CNN(ds.image_shape, ds.num_classes, rngs=rngs)
    elif model == "mlp":
        net = models.MLP(int(np.prod(ds.image_shape)), num_classes=ds.num_classes, rngs=rngs)
    else:
        raise ValueError(f"model must be 'cnn' or 'mlp', got {model!r}.")
    graphdef, params = nnx.split(net, nnx.Param)
    n_eval = len(ds.x_val) // batch_size
    if n_eval < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(ds.x_val)} validation images.")
    evals = [
        (
            ds.x_val[i * batch_size : (i + 1) * batch_size],
            ds.y_val[i * batch_size : (i + 1) * batch_size],
        )
        for i in range(n_eval)
    ]

    def batches(s: int) -> Iterator[Batch]:
        return data.image_batches(ds.x_train, ds.y_train, batch_size=batch_size, seed=s)

    desc = f"{model.upper()} ({optx.tree_utils.param_count(params):,} params) on {ds.credit}, batch {batch_size}"
    return Task(
        f"digits-{model}", graphdef, params, models.classification_loss, batches, evals, desc
    )


def lr_shape(steps: int, warmup: int) -> optax.Schedule:
    """Linear warmup from 0 to 1 over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup_steps=max(1, warmup), decay_steps=max(steps, warmup + 1), end_value=0.0
    )


def build_optimizer(
    spec: optx.OptimizerSpec,
    learning_rate: Any,
    weight_decay: Any,
    schedule: optax.Schedule,
    overrides: dict[str, Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``spec.build`` with ``learning_rate = learning_rate × schedule(count)``."""
    kwargs = dict(overrides or {})
    kwargs["learning_rate"] = lambda count: learning_rate * schedule(count)
    if weight_decay is not None:
        kwargs["weight_decay"] = weight_decay
    return spec.build(**kwargs)


def takes_weight_decay(spec: optx.OptimizerSpec) -> bool:
    """Whether the optimizer's factory has a ``weight_decay`` argument."""
    return "weight_decay" in inspect.signature(spec.factory).parameters


@dataclasses.dataclass
class RunResult:
    """One training run (one optimizer at one hyper-parameter point)."""

    optimizer: str
    learning_rate: float
    weight_decay: float | None
    steps: list[int]
    val_loss: list[float]
    train_seconds: list[float]
    train_loss: list[float]
    compile_seconds: float
    state_bytes_per_param: float
    diverged: bool = False
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""

    @property
    def final_val_loss(self) -> float:
        if self.diverged or not self.val_loss:
            return math.inf
        return self.val_loss[-1]

    @property
    def ms_per_step(self) -> float:
        if not self.steps or self.steps[-1] == 0:
            return math.nan
        return 1e3 * self.train_seconds[-1] / self.steps[-1]

    def steps_to(self, target: float) -> int | None:
        """First evaluated step whose validation loss is <= ``target`` (None if never)."""
        for s, v in zip(self.steps, self.val_loss):
            if s > 0 and v <= target:
                return s
        return None


def optimizer_step(
    tx: optax.GradientTransformationExtraArgs,
    spec: optx.OptimizerSpec,
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    opt_state: Any,
    *,
    key: jax.Array,
    step: Any,
    batch: Any = None,
    aux: dict[str, Any] | None = None,
) -> tuple[Any, Any, jax.Array]:
    """One step of ``tx`` on ``loss_fn``: ``(params, opt_state, loss)`` after the update.

    The extra arguments come from ``spec.make_extra_args`` with an
    :class:`optx.ExtraArgsContext` holding the loss closure of this batch, so
    optimizers that need curvature or the loss value run through the same code.
    ``aux`` carries problem-specific extras (e.g. ``logits_fn`` for Sophia-G's
    Gauss–Newton–Bartlett estimator).
    """
    loss, grads = jax.value_and_grad(loss_fn)(params)
    ctx = optx.ExtraArgsContext(
        loss_fn=loss_fn,
        params=params,
        grads=grads,
        loss=loss,
        key=jax.random.fold_in(key, step),
        step=step,
        batch=batch,
        aux=dict(aux or {}),
    )
    updates, opt_state = tx.update(grads, opt_state, params, **spec.make_extra_args(ctx))
    return optax.apply_updates(params, updates), opt_state, loss


class Trainer:
    """Compiled train/eval functions of one optimizer on one task (reused across a sweep)."""

    def __init__(
        self,
        task: Task,
        spec: optx.OptimizerSpec,
        *,
        steps: int,
        warmup: int,
        chunk: int,
        overrides: dict[str, Any] | None = None,
        with_weight_decay: bool = False,
    ) -> None:
        self.task, self.spec, self.chunk = task, spec, chunk
        self.schedule = lr_shape(steps, warmup)
        self.overrides = dict(overrides or {})
        self.with_wd = with_weight_decay
        self._compiled: dict[Any, Any] = {}
        self.traced_hparams = True

    def make_tx(self, lr: Any, wd: Any) -> optax.GradientTransformationExtraArgs:
        return build_optimizer(
            self.spec, lr, wd if self.with_wd else None, self.schedule, self.overrides
        )

    def _chunk_fn(self, lr_static: float | None, wd_static: float | None) -> Callable[..., Any]:
        task, spec = self.task, self.spec

        def run(params: Any, opt_state: Any, batches: Batch, step0: jax.Array, hp: Any, key: Any):
            lr = hp[0] if lr_static is None else lr_static
            wd = hp[1] if wd_static is None else wd_static
            tx = self.make_tx(lr, wd)

            def body(carry: Any, xs: Any) -> tuple[Any, jax.Array]:
                batch, i = xs
                loss_fn = functools.partial(_loss_on, task, batch)
                aux = {"logits_fn": functools.partial(_logits_on, task, batch)}
                p, s, loss = optimizer_step(
                    tx, spec, loss_fn, *carry, key=key, step=i, batch=batch, aux=aux
                )
                return (p, s), loss

            idx = step0 + jnp.arange(jax.tree.leaves(batches)[0].shape[0])
            (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (batches, idx))
            return params, opt_state, losses

        return jax.jit(run, donate_argnums=(0, 1))

    def _init_fn(self, lr_static: float | None, wd_static: float | None) -> Callable[..., Any]:
        def init(params: Any, hp: Any) -> Any:
            lr = hp[0] if lr_static is None else lr_static
            wd = hp[1] if wd_static is None else wd_static
            return self.make_tx(lr, wd).init(params)

        return jax.jit(init)

    def _eval_fn(self) -> Callable[..., Any]:
        task = self.task

        @jax.jit
        def evaluate(params: Any, batches: Batch) -> jax.Array:
            # params ride in the scan carry: NNX merges them at the loop's trace level.
            def body(p: Any, b: Batch) -> tuple[Any, jax.Array]:
                return p, _loss_on(task, b, p)

            return jnp.mean(jax.lax.scan(body, params, batches)[1])

        return evaluate

    def compiled(self, lr: float, wd: float | None, batches: Batch) -> Any:
        """AOT-compiled (chunk, init, eval) functions and the compile time."""
        key = (None, None) if self.traced_hparams else (lr, wd)
        if key in self._compiled:
            return self._compiled[key], 0.0
        lr_s, wd_s = key
        t0 = time.perf_counter()
        hp = jnp.asarray([lr, 0.0 if wd is None else wd], jnp.float32)
        init = self._init_fn(lr_s, wd_s)
        state = init(self.task.params, hp)
        chunk = (
            self._chunk_fn(lr_s, wd_s)
            .lower(self.task.params, state, batches, jnp.int32(0), hp, jax.random.key(0))
            .compile()
        )
        fns = (chunk, init, self._eval_fn())
        self._compiled[key] = fns
        return fns, time.perf_counter() - t0


def _loss_on(task: Task, batch: Batch, params: Any) -> jax.Array:
    return task.loss_of(params, batch)


def _logits_on(task: Task, batch: Batch, params: Any) -> jax.Array:
    return task.logits_of(params, batch)


def _stack(batches: list[Batch]) -> Batch:
    return tuple(np.stack([b[i] for b in batches]) for i in range(len(batches[0])))  # type: ignore[return-value]


def train(
    trainer: Trainer,
    *,
    learning_rate: float,
    weight_decay: float | None,
    steps: int,
    seed: int = 0,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Trains ``trainer.task`` with ``trainer.spec`` at one (lr, wd) point.

    Validation loss is evaluated at step 0 and every ``trainer.chunk`` steps.
    ``progress(n_steps_done, info)`` is called after every chunk.
    """
    task, chunk = trainer.task, trainer.chunk
    if steps % chunk:
        raise ValueError(f"steps ({steps}) must be a multiple of the eval interval ({chunk}).")
    it = task.train_batches(seed)
    eval_stack = jax.tree.map(jnp.asarray, _stack(task.eval_batches))
    first = _stack([next(it) for _ in range(chunk)])
    hp = jnp.asarray([learning_rate, 0.0 if weight_decay is None else weight_decay], jnp.float32)
    try:
        fns, compile_s = trainer.compiled(learning_rate, weight_decay, first)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError, TypeError):
        if not trainer.traced_hparams:
            raise
        trainer.traced_hparams = False  # this factory needs concrete hyper-parameters
        fns, compile_s = trainer.compiled(learning_rate, weight_decay, first)
    chunk_fn, init_fn, eval_fn = fns
    params = jax.tree.map(jnp.array, task.params)  # a fresh copy (the chunk donates it)
    opt_state = init_fn(params, hp)
    sbpp = optx.tree_utils.state_bytes(
        trainer.make_tx(learning_rate, weight_decay), task.params
    ) / max(1, task.num_params)
    key = jax.random.key(seed)
    result = RunResult(
        trainer.spec.name,
        learning_rate,
        weight_decay,
        [0],
        [float(eval_fn(params, eval_stack))],
        [0.0],
        [math.nan],
        compile_s,
        sbpp,
    )
    elapsed = 0.0
    batches = first
    for k in range(steps // chunk):
        if k:
            batches = _stack([next(it) for _ in range(chunk)])
        t0 = time.perf_counter()
        params, opt_state, losses = chunk_fn(
            params, opt_state, batches, jnp.int32(k * chunk), hp, key
        )
        losses = np.asarray(losses)  # blocks until the chunk is done
        elapsed += time.perf_counter() - t0
        val = float(eval_fn(params, eval_stack))
        result.steps.append((k + 1) * chunk)
        result.val_loss.append(val)
        result.train_seconds.append(elapsed)
        result.train_loss.append(float(np.mean(losses)))
        if progress is not None:
            progress(chunk, {"val": val, "train": float(np.mean(losses))})
        if not (np.isfinite(val) and np.all(np.isfinite(losses))):
            result.diverged = True
            if progress is not None:
                progress(steps - (k + 1) * chunk, {"val": math.inf})
            break
    return result
