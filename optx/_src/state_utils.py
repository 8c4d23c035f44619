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
      >>> optx.tree_utils.state_bytes(optax.adam(1e-3), p)  # mu + nu in f32, plus a count
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


OTHER_GROUP = "(other)"


def _partition_group(path: tuple[Any, ...]) -> str:
    """The routing group of a state leaf: the key after ``inner_states``."""
    for i, entry in enumerate(path[:-1]):
        if isinstance(entry, jax.tree_util.GetAttrKey) and entry.name == "inner_states":
            nxt = path[i + 1]
            if isinstance(nxt, jax.tree_util.DictKey):
                return str(nxt.key)
    return OTHER_GROUP


def state_bytes_by_group(
    tx: optax.GradientTransformation, params: Any, *, per_param: bool = False
) -> dict[str, float]:
    """Exact optimizer-state bytes of a routed transform, per routing group.

    State leaves under an ``optax.partition`` / :func:`optx.routed` group
    (``PartitionState.inner_states[group]``) are attributed to that group;
    anything else (a top-level counter, injected hyper-parameters) to
    ``'(other)'``. With ``per_param=True`` each group's bytes are divided by
    the number of parameters the transform's router sends to it (the transform
    must come from :func:`optx.routed`), which is how the memory claims of
    low-rank methods are stated ("bytes per parameter of the projected
    matrices"). Computed with ``jax.eval_shape``: nothing is allocated.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> p = {'mlp': {'kernel': jnp.zeros((64, 32))}, 'bias': jnp.zeros((32,))}
      >>> by = optx.tree_utils.state_bytes_by_group(optx.muon(0.02), p)
      >>> by['matrix'], by['fallback']   # f32 momentum + a count; AdamW mu, nu + count
      (8196, 260)
    """
    abstract = jax.tree.map(_abstract, params)
    state = jax.eval_shape(tx.init, abstract)
    out: dict[str, float] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        group = _partition_group(path)
        nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
        out[group] = out.get(group, 0) + nbytes
    if not per_param:
        return out
    from optx._src import routing  # local: routing imports layouts, not state_utils

    router = routing.router_of(tx)
    if router is None:
        raise ValueError("per_param=True needs a transform built by optx.routed (with a router).")
    counts: dict[str, int] = {}
    for a in router.assignments(params):
        counts[a.group] = counts.get(a.group, 0) + int(np.prod(a.shape))
    return {g: b / max(1, counts.get(g, 0)) for g, b in out.items() if g in counts}
