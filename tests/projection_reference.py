"""Float64 NumPy building blocks shared by the projection and memory-family tests.

Written from the papers' definitions (the 'std' side rule, projection and
back-projection, the DCT basis), never by calling optx; the matrix views of
leaves are in ``tests/matrix_views.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def projected_axis(fi: int, fo: int, side: str = "std") -> str:
    """'std' projects the smaller dimension (ties: fan-in); 'reverse_std' the larger."""
    if side in ("in", "out"):
        return side
    if side == "std":
        return "in" if fi <= fo else "out"
    return "out" if fi <= fo else "in"


def columns_projection(x: np.ndarray, r: int, axis: str) -> np.ndarray:
    """Deterministic test projector: unit-norm leading columns (or rows) of X."""
    cols = x[:, :, :r] if axis == "in" else np.swapaxes(x[:, :r, :], 1, 2)
    return cols / np.linalg.norm(cols, axis=1, keepdims=True)


def jax_columns_projection(key: Any, x: jax.Array, r: int, axis: str) -> jax.Array:
    """The same projector as an optx custom projection callable."""
    del key
    cols = x[:, :, :r] if axis == "in" else jnp.swapaxes(x[:, :r, :], 1, 2)
    return cols / jnp.linalg.norm(cols, axis=1, keepdims=True)


def down(x: np.ndarray, p: np.ndarray, axis: str) -> np.ndarray:
    """``Pᵀ X`` (fan-in projected) or ``X P`` (fan-out projected)."""
    return np.einsum("bdr,bdo->bro", p, x) if axis == "in" else np.einsum("bid,bdr->bir", x, p)


def up(r: np.ndarray, p: np.ndarray, axis: str) -> np.ndarray:
    """``P R`` or ``R Pᵀ``."""
    return np.einsum("bdr,bro->bdo", p, r) if axis == "in" else np.einsum("bir,bdr->bid", r, p)


def dct_columns(d: int) -> np.ndarray:
    """The orthonormal DCT-II matrix; DCT-AdamW uses its columns as the basis."""
    i, j = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
    q = np.sqrt(2 / d) * np.cos(np.pi * i * (2 * j + 1) / (2 * d))
    q[0] *= np.sqrt(0.5)
    return q


def stable_slot_order(previous: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Slots of DCT-AdamW's ``slot_order='stable'``: a column still selected keeps
    its slot in ``previous`` (first occurrence only); new columns, in ``idx``'s
    order, fill the free slots in ascending order. Both ``(b, r)``."""
    out = np.zeros_like(idx)
    for b, (prev, new) in enumerate(zip(previous, idx)):
        slots: list = [None] * len(new)
        for j, c in enumerate(prev):
            if c in new and c not in prev[:j]:
                slots[j] = c
        rest = iter(c for c in new if c not in slots)
        out[b] = [next(rest) if c is None else c for c in slots]
    return out


def dct_projection(
    x: np.ndarray, r: int, axis: str, previous: np.ndarray | None = None
) -> np.ndarray:
    """The r DCT columns with the largest l1 alignment scores, as a dense P, in
    score order or (given the ``previous`` indices) in the stable slot order."""
    return dct_columns(x.shape[1] if axis == "in" else x.shape[2])[
        :, dct_indices(x, r, axis, previous)
    ].transpose(1, 0, 2)


def dct_indices(x: np.ndarray, r: int, axis: str, previous: np.ndarray | None = None) -> np.ndarray:
    """Indices ``(b, r)`` of :func:`dct_projection`."""
    d = x.shape[1] if axis == "in" else x.shape[2]
    q = dct_columns(d)
    s = np.einsum("dk,bdo->bko", q, x) if axis == "in" else np.einsum("bid,dk->bik", x, q)
    scores = np.abs(s).sum(axis=2 if axis == "in" else 1)
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :r]
    return idx if previous is None else stable_slot_order(previous, idx)


def adam_moments(st: dict, r: np.ndarray, b1: float = 0.9, b2: float = 0.999) -> None:
    """EMA moments of a projected gradient, in place in ``st``."""
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * r
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * r**2
