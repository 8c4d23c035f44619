"""Inspecting optimizer state: exact byte counts from abstract evaluation."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype)


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
    """Exact bytes of ``tx.init(params)``, computed with ``jax.eval_shape``.

    Nothing is allocated: ``params`` may be arrays or ``jax.ShapeDtypeStruct``.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> p = {'w': jnp.zeros((100, 10))}
      >>> optx.state_bytes(optax.adam(1e-3), p)  # mu + nu in f32, plus a count
      8004
    """
    abstract = jax.tree.map(_abstract, params)
    state = jax.eval_shape(tx.init, abstract)
    return int(
        sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(state))
    )


def param_count(params: Any) -> int:
    """Number of scalar parameters in a tree."""
    return int(sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(params)))


def state_bytes_per_param(tx: optax.GradientTransformation, params: Any) -> float:
    """:func:`state_bytes` divided by :func:`param_count`."""
    return state_bytes(tx, params) / max(1, param_count(params))
