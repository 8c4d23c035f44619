"""Decoupled weight decay applied *after* the step (the HuggingFace-AdamW order).

``optax.add_decayed_weights`` decays the weights the step starts from:
``W ← W − η(U + λW)``. Several official codes (SOAP, Conda, GaLore, the
HuggingFace ``AdamW``) step first and then decay the *updated* weights:

.. math::

  W ← (W − η U)(1 − ηλ) = W − η\\big((1 − ηλ) U + λ W\\big).

:func:`add_decayed_weights_after_step` produces the bracket, so the chain still
ends with ``optax.scale_by_learning_rate``; it needs the learning rate itself
for the ``ηλ`` cross term.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams


class AddDecayedWeightsAfterStepState(NamedTuple):
    """State of :func:`add_decayed_weights_after_step`: the step counter."""

    count: jax.Array


def _value_at(x: base.ScalarOrSchedule, count: jax.Array) -> Any:
    return x(count) if callable(x) else x


def _is_literal_zero(x: Any) -> bool:
    """A Python ``int``/``float`` equal to 0 (not a schedule, not an array)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


@hyperparams.validated()
def add_decayed_weights_after_step(
    weight_decay: base.ScalarOrSchedule,
    learning_rate: base.ScalarOrSchedule,
    mask: base.Mask | None = None,
    *,
    skip_steps: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """``U ← (1 − η_t λ_t) U + λ_t W``: decoupled decay of the post-step weights.

    Followed by ``optax.scale_by_learning_rate(learning_rate)`` this gives
    ``W_{t+1} = (W_t − η_t U_t)(1 − η_t λ_t)``, the order of the official SOAP,
    Conda and GaLore codes (and HuggingFace ``AdamW``), where the decay acts on
    the already-updated weights (with the raw learning rate, not the
    bias-corrected step size). ``learning_rate`` must be the same scalar or
    schedule as the ``scale_by_learning_rate`` that follows (both count calls
    from 0).

    Args:
      weight_decay: λ (scalar or schedule).
      learning_rate: η (scalar or schedule).
      mask: optional tree or callable selecting the decayed leaves (as in
        ``optax.add_decayed_weights``).
      skip_steps: no decay on the first ``skip_steps`` calls (SOAP's first call
        only initializes its preconditioner and leaves the weights alone).

    A literal ``weight_decay=0`` (a Python number, as ``optax.add_decayed_weights``
    checks) returns the updates as they are (``(1 − η·0) U + 0·W = U``) without
    reading the parameters, a pass over every decayed leaf saved; the counter still
    advances, so the state is the same as with any other λ.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optax.chain(optx.add_decayed_weights_after_step(0.5, 0.1),
      ...                  optax.scale_by_learning_rate(0.1))
      >>> w = jnp.array([2.0])
      >>> u, _ = tx.update(jnp.array([1.0]), tx.init(w), w)
      >>> round(float((w + u)[0]), 6)   # (2 - 0.1 * 1) * (1 - 0.1 * 0.5)
      1.805
    """
    base.check_learning_rate("learning_rate", learning_rate)
    if not callable(weight_decay):
        base.check_nonnegative("weight_decay", weight_decay)
    skip_steps = base.check_positive_int("skip_steps", skip_steps, allow_zero=True)

    def init_fn(params: base.Params) -> AddDecayedWeightsAfterStepState:
        del params
        return AddDecayedWeightsAfterStepState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: base.Updates,
        state: AddDecayedWeightsAfterStepState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, AddDecayedWeightsAfterStepState]:
        del extra
        if params is None:
            raise ValueError(
                "add_decayed_weights_after_step needs the parameters: call "
                "update(updates, state, params)."
            )
        count = optax.safe_increment(state.count)
        if _is_literal_zero(weight_decay):
            return updates, AddDecayedWeightsAfterStepState(count=count)
        # Scalars in the widest enabled float, cast to each leaf's compute dtype
        # (f32 for bf16/f32 leaves, f64 for f64 leaves under x64).
        lr_ = base.at_least_f32(_value_at(learning_rate, state.count))
        wd_ = base.at_least_f32(_value_at(weight_decay, state.count))
        wd_ = jnp.where(state.count < skip_steps, jnp.zeros_like(wd_), wd_)

        def leaf(u: Any, p: Any) -> Any:
            if u is None:
                return None
            cdt = base.compute_dtype(u.dtype)
            lr, wd = lr_.astype(cdt), wd_.astype(cdt)
            out = (1.0 - lr * wd) * u.astype(cdt) + wd * p.astype(cdt)
            return out.astype(u.dtype)

        new = jax.tree.map(leaf, updates, params, is_leaf=base.is_leaf_or_none)
        return new, AddDecayedWeightsAfterStepState(count=count)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    if mask is None:
        return tx
    return optax.with_extra_args_support(optax.masked(tx, mask))
