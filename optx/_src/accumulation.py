"""Gradient accumulation that runs the inner optimizer only on real steps.

``optax.MultiSteps`` calls the inner ``update`` on *every* micro-step and keeps
the result with ``jnp.where``; with Newton–Schulz, SVD, eigh or Hessian probes
inside, that work is redone ``k`` times per real step. Here the inner update
sits under ``lax.cond``: it runs once per ``every_k`` micro-steps (DESIGN §1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams


class AccumulateGradientsState(NamedTuple):
    """State of :func:`accumulate_gradients`."""

    mini_step: jax.Array
    gradient_step: jax.Array
    acc_grads: base.Updates
    inner_state: base.OptState


@hyperparams.validated()
def accumulate_gradients(
    inner: optax.GradientTransformation,
    every_k: int,
    *,
    accumulator_dtype: base.DTypeLike | None = None,
    use_grad_mean: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Accumulates ``every_k`` micro-batch gradients, then applies ``inner`` once.

    Micro-steps return all-zero updates; the ``every_k``-th returns
    ``inner.update(mean_or_sum_of_grads, ...)``. The inner update (and any
    expensive periodic work in it) runs only on that step, under ``lax.cond``.
    Extra args are forwarded to ``inner`` on the real step.

    Args:
      inner: the optimizer to apply to the accumulated gradient.
      every_k: micro-steps per real step (static int >= 1).
      accumulator_dtype: dtype of the accumulator (default: each leaf's
        compute dtype, ``promote(param dtype, float32)``: f32 for bf16/f32
        leaves, f64 for f64 leaves).
      use_grad_mean: average (default) or sum the micro-batch gradients.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.accumulate_gradients(optax.sgd(1.0), every_k=2)
      >>> s = tx.init(jnp.zeros(2))
      >>> u, s = tx.update(jnp.ones(2), s)
      >>> u
      Array([0., 0.], dtype=float32)
      >>> u, s = tx.update(3 * jnp.ones(2), s)
      >>> u
      Array([-2., -2.], dtype=float32)
    """
    every_k = base.check_positive_int("every_k", every_k)
    accumulator_dtype = base.canonicalize_dtype(accumulator_dtype)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: base.Params) -> AccumulateGradientsState:
        return AccumulateGradientsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=jnp.zeros([], jnp.int32),
            acc_grads=jax.tree.map(
                lambda p: optax.tree.zeros_like(
                    p, dtype=accumulator_dtype or base.compute_dtype(p.dtype)
                ),
                params,
            ),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: base.Updates,
        state: AccumulateGradientsState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, AccumulateGradientsState]:
        k = state.mini_step
        if use_grad_mean:
            acc = jax.tree.map(
                lambda a, g: a + (g.astype(a.dtype) - a) / (k + 1).astype(a.dtype),
                state.acc_grads,
                updates,
            )
        else:
            acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), state.acc_grads, updates)
        grads = jax.tree.map(lambda a, g: a.astype(g.dtype), acc, updates)

        def real_step(_: Any) -> tuple[base.Updates, base.OptState]:
            return inner.update(grads, state.inner_state, params, **extra)

        out_shape = jax.eval_shape(real_step, None)

        def micro_step(_: Any) -> tuple[base.Updates, base.OptState]:
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape[0])
            return zeros, state.inner_state

        emit = k == every_k - 1
        new_updates, new_inner = base.cond(emit, real_step, micro_step, None)
        new_acc = jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc)
        return new_updates, AccumulateGradientsState(
            mini_step=jnp.where(emit, 0, k + 1).astype(jnp.int32),
            gradient_step=jnp.where(
                emit, optax.safe_increment(state.gradient_step), state.gradient_step
            ),
            acc_grads=new_acc,
            inner_state=new_inner,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
