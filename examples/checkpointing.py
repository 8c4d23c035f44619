"""Save and resume model + optimizer state with orbax-checkpoint.

optx states are NamedTuples of arrays, so a training state
``{'params': ..., 'opt_state': ..., 'step': ...}`` is an ordinary pytree for
orbax. Restoring needs a *target* with the same structure: build a fresh
model and ``tx.init`` it (abstractly, with :func:`abstract_train_state`), and
orbax fills in the arrays — with their shardings, when the target carries
``NamedSharding`` (see :mod:`examples.sharded`).

``python -m examples.checkpointing --optimizer normuon --dir /tmp/optx-ckpt``
trains a few steps, saves, trains one more step, restores into a fresh
process-like state and checks that the next-step loss is identical.

Example:
  >>> import tempfile, optx
  >>> from examples import checkpointing
  >>> state = {'params': {'w': __import__('jax').numpy.ones((2, 2))}}
  >>> state['opt_state'] = optx.adamw(1e-3).init(state['params'])
  >>> with tempfile.TemporaryDirectory() as d:
  ...     checkpointing.save(d, 3, state)
  ...     restored = checkpointing.restore(d, 3, checkpointing.abstract(state))
  >>> restored['opt_state'][0].count.dtype
  dtype('int32')
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optx
from examples import data, models, training


def _ocp() -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError:  # pragma: no cover - orbax is a flax dependency
        raise ImportError(
            "Checkpointing needs orbax-checkpoint: pip install orbax-checkpoint "
            "(or pip install 'optx[examples]')."
        ) from None
    return ocp


def abstract(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves (with shardings) for a restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            jnp.shape(x), x.dtype, sharding=getattr(x, "sharding", None)
        ),
        tree,
    )


def save(directory: str | os.PathLike[str], step: int, state: Any) -> None:
    """Saves ``state`` (a pytree of arrays) as checkpoint ``step`` under ``directory``."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(max_to_keep=3)
    with ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options) as mngr:
        mngr.save(step, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()


def latest_step(directory: str | os.PathLike[str]) -> int | None:
    """The newest checkpoint step in ``directory`` (None if there is none)."""
    ocp = _ocp()
    with ocp.CheckpointManager(pathlib.Path(directory).absolute()) as mngr:
        return mngr.latest_step()


def restore(directory: str | os.PathLike[str], step: int | None, target: Any) -> Any:
    """Restores checkpoint ``step`` (default: the latest) into the structure of ``target``.

    ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (see
    :func:`abstract`): NamedTuple optimizer states come back as the same
    NamedTuples, with the target's dtypes and shardings.
    """
    ocp = _ocp()
    with ocp.CheckpointManager(pathlib.Path(directory).absolute()) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {directory}.")
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract(target)))


def train_state(
    optimizer: str, cfg: models.TransformerConfig, *, seed: int = 0, **overrides: Any
) -> tuple[Any, optax.GradientTransformationExtraArgs, dict[str, Any]]:
    """(graphdef, tx, {'params', 'opt_state', 'step'}) for a fresh model."""
    graphdef, params = nnx.split(models.TransformerLM(cfg, rngs=nnx.Rngs(seed)), nnx.Param)
    spec = optx.get_optimizer(optimizer)
    tx = spec.build(**overrides)
    return graphdef, tx, {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}


def make_step(graphdef: Any, tx: optax.GradientTransformationExtraArgs, spec: optx.OptimizerSpec):
    """A jitted ``(state, batch) -> (state, loss)``."""

    def loss_of(p: Any, batch: Any) -> jax.Array:
        return models.lm_loss(nnx.merge(graphdef, p), batch)

    @jax.jit
    def step(state: dict[str, Any], batch: Any) -> tuple[dict[str, Any], jax.Array]:
        i = state["step"]
        p, s, loss = training.optimizer_step(
            tx,
            spec,
            lambda q: loss_of(q, batch),
            state["params"],
            state["opt_state"],
            key=jax.random.key(0),
            step=i,
            batch=batch,
        )
        return {"params": p, "opt_state": s, "step": i + 1}, loss

    return step


def resume_check(
    optimizer: str,
    directory: str | os.PathLike[str],
    *,
    cfg: models.TransformerConfig,
    corpus: data.CharCorpus,
    steps: int = 3,
    batch_size: int = 8,
) -> tuple[float, float]:
    """Trains ``steps``, saves, and returns (next-step loss, next-step loss after restore)."""
    spec = optx.get_optimizer(optimizer)
    graphdef, tx, state = train_state(optimizer, cfg)
    step = make_step(graphdef, tx, spec)
    it = data.char_lm_batches(corpus.train, batch_size=batch_size, seq_len=cfg.max_len, seed=0)
    batches = [next(it) for _ in range(steps + 2)]
    for b in batches[:steps]:
        state, _ = step(state, b)
    save(directory, steps, state)
    after, _ = step(state, batches[steps])
    _, loss_continued = step(after, batches[steps + 1])
    # A fresh state (as a new process would build), then restore into it.
    _, _, fresh = train_state(optimizer, cfg, seed=123)
    restored = restore(directory, None, fresh)
    after_r, _ = step(restored, batches[steps])
    _, loss_resumed = step(after_r, batches[steps + 1])
    return float(loss_continued), float(loss_resumed)


def main(argv: Sequence[str] | None = None) -> tuple[float, float]:
    p = argparse.ArgumentParser(prog="python -m examples.checkpointing")
    p.add_argument("--optimizer", default="muon")
    p.add_argument("--dir", default=None, help="checkpoint directory (default: a temp dir)")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    corpus = data.load_shakespeare()
    cfg = models.TransformerConfig(
        vocab_size=corpus.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=2,
        max_len=32,
        scan_layers=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or tmp
        a, b = resume_check(args.optimizer, directory, cfg=cfg, corpus=corpus, steps=args.steps)
    print(
        f"[checkpointing] {args.optimizer}: next-step loss continued {a:.6f}, resumed {b:.6f}"
        f" -> {'identical' if np.isclose(a, b, rtol=0, atol=0) else 'DIFFERENT'}"
    )
    return a, b


if __name__ == "__main__":  # pragma: no cover
    main()
