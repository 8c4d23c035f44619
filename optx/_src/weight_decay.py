"""Decoupled weight decay applied to the post-step weights.

optax's ``add_decayed_weights`` decays the *pre-step* weights
(``W ← W − η(D + λW)``, as PyTorch ``AdamW`` and bitsandbytes do). The Hugging
Face ``AdamW`` and the official GaLore, 8-bit GaLore and APOLLO code decay the
weights *after* the step, with the base learning rate:

.. math::

  W' = W - η D, \\qquad W'' = W' - η λ W' = W - η\\big(D + λ (W - η D)\\big).

The two differ by ``O(η²λ)``, visible in exact comparisons.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base


class DecayAfterStepState(NamedTuple):
    """State of :func:`add_decayed_weights_after_step` (schedule counter)."""

    count: jax.Array


def add_decayed_weights_after_step(
    weight_decay: base.ScalarOrSchedule,
    learning_rate: base.ScalarOrSchedule,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Adds ``λ (W − η D)``: decoupled decay of the post-step weights.

    Place it just before ``optax.scale_by_learning_rate(learning_rate)`` with
    the **same** learning rate (scalar or schedule; both are evaluated at the
    same step count). The result is the official GaLore/APOLLO order
    ``W ← W − ηD; W ← W − ηλW`` in optax's update form (see module doc).

    Args:
      weight_decay: λ (scalar or schedule).
      learning_rate: η, the learning rate of the following
        ``scale_by_learning_rate``.
      mask: optional tree/callable of booleans (as ``optax.add_decayed_weights``).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optax.chain(optx.add_decayed_weights_after_step(0.1, 0.5),
      ...                  optax.scale_by_learning_rate(0.5))
      >>> w = jnp.ones(1)
      >>> u, _ = tx.update(jnp.ones(1), tx.init(w), w)
      >>> round(float((w + u)[0]), 6)   # (1 − 0.5·1)·(1 − 0.5·0.1)
      0.475
    """
    base.check_learning_rate("learning_rate", learning_rate)

    def init_fn(params: base.Params) -> DecayAfterStepState:
        del params
        return DecayAfterStepState(jnp.zeros([], jnp.int32))

    def update_fn(
        updates: base.Updates,
        state: DecayAfterStepState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, DecayAfterStepState]:
        del extra
        if params is None:
            raise ValueError("add_decayed_weights_after_step needs `params` in update().")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        wd = weight_decay(state.count) if callable(weight_decay) else weight_decay

        def leaf(d: Any, w: Any) -> Any:
            if d is None:
                return None
            return (d + wd * (w.astype(d.dtype) - lr * d)).astype(d.dtype)

        new = jax.tree.map(leaf, updates, params, is_leaf=base.is_leaf_or_none)
        return new, DecayAfterStepState(optax.safe_increment(state.count))

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    if mask is not None:
        return optax.with_extra_args_support(optax.masked(tx, mask))
    return tx
