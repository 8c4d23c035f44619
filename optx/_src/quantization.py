"""Block-wise 8-bit quantization of optimizer states (Dettmers et al., arXiv 2110.02861).

An optimizer-state tensor ``x`` is stored as one ``uint8`` code per entry plus
one ``float32`` scale per block of ``B`` consecutive entries (row-major
flattening, the last block zero-padded), i.e. ``1 + 4/B`` bytes per entry:

.. math::

  a_b = \\max_{i \\in b} |x_i|, \\qquad
  q_i = \\arg\\min_k \\big| \\mathrm{map}[k] - x_i / a_b \\big|, \\qquad
  \\hat x_i = \\mathrm{map}[q_i]\\, a_b

(paper §2.1–2.2, Eqs. 1–3: block-wise absmax normalization and nearest-value
lookup). ``map`` is the *dynamic tree* quantization map (paper §2.3,
:func:`dynamic_map`): a sign bit (signed map only), then a run of zero bits
whose length is a base-10 exponent ``10^{-e}``, an indicator bit, and the
remaining bits as a linear fraction in ``[0.1, 1]``. The signed map is used for
quantities of either sign (first moments), the unsigned map — one more
fraction bit — for non-negative ones (second moments).

:func:`quantize_moments` keeps **any** state of **any** optax/optx transform in
this form: it dequantizes before the inner ``update``, runs it in float32, and
re-quantizes the new state with fresh block scales.

Quirks of the reference (bitsandbytes 0.50.2), and what optx does:

* The signed map holds +1.0 but not −1.0 (the most negative entry is
  −0.99297): a block's most negative value decodes to ``−0.99297·a_b``. Same
  here, by construction.
* Rounding rule at code boundaries (:func:`quantize_blockwise`): ``y =
  x · fl(1/a_b)`` in float32 (bitsandbytes' CPU quantizer and its CUDA
  kernels multiply by the reciprocal of the block maximum, which differs from
  a correctly rounded ``x / a_b`` by an ulp in about a quarter of the entries
  and so changes a code next to a boundary), then the code ``argmin_k fl(|y − map[k]|)`` with the distances
  evaluated in float32 and **ties to the lower code index**: the nearest
  code, exactly. bitsandbytes 0.50.2's CPU quantizer (read from its compiled
  ``quantize_cpu_impl``, reproduced by a NumPy model on 1.3 M codes) looks
  ``y`` up on a grid instead: ``k = trunc(fl(65535·(y + 1)/2 + 0.5))`` and the
  code nearest to ``2k/65535 − 1``. Its grid step (3.05e-5) is coarser than the
  map's spacing below about 1e-4 and it misses near the midpoints, so its code
  is not the nearest one for 2% (the golden's gradients) to 12% (heavier-tailed
  Adam moments) of the entries, by up to 7 code indices but at most 3e-5 of
  the block maximum; optx keeps the exact nearest code (teacher-forced steps
  match bitsandbytes to float32 rounding). bitsandbytes' CUDA optimizer kernels differ
  at exact ties (their 7-step binary search ends on an even code index, and
  the midpoint is rounded to float32 first) and divide with ``__fdividef``;
  they also move a negative first-moment value that rounds to the 0 code to
  the smallest negative code. optx does not copy either CUDA quirk.
* bitsandbytes builds the map with float32 ``torch.linspace``; optx computes it
  in float64 and rounds once, so some entries differ by one or two float32
  ulps.
* Tensors with fewer than ``min_size`` (bitsandbytes: 4096) entries keep full
  precision state; the block size is 256 in current bitsandbytes (hard-coded),
  2048 in the paper.
* No stochastic rounding and no error feedback: the quantization error is
  dropped every step, as in the paper.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.sharding import PartitionSpec

from optx._src import base, hyperparams, sharding

PAPER_BLOCK_SIZE = 2048
REFERENCE_BLOCK_SIZE = 256
REFERENCE_MIN_SIZE = 4096
_EXPONENT_BITS = 7


class QuantizedArray(NamedTuple):
    """A block-wise quantized tensor.

    Attributes:
      codes: ``uint8`` indices into the quantization map, in the tensor's own
        shape (so they shard like it).
      absmax: ``float32`` per-block scales ``(ceil(size / block_size),)``.
    """

    codes: jax.Array
    absmax: jax.Array


@jax.tree_util.register_pytree_with_keys_class
class StateScales:
    """The block scales of one ``NamedTuple`` node of a quantized inner state.

    Its fields are the node's (``scales.mu``, ``scales._replace(mu=…)``), but it
    is not a ``NamedTuple``: optax's name-based state tools (``optax.tree.get``,
    ``optax.tree.set``) match ``NamedTuple`` fields and dict keys, and would
    otherwise find ``count``, ``mu`` or ``nu`` twice (and ``tree.set`` write
    the scales' copy, which the step would then read as a quantized leaf).
    """

    __slots__ = ("_names", "_node_type", "_values")

    def __init__(self, node_type: type, names: Sequence[str], values: Sequence[Any]) -> None:
        object.__setattr__(self, "_node_type", node_type)
        object.__setattr__(self, "_names", tuple(names))
        object.__setattr__(self, "_values", tuple(values))

    def __getattr__(self, name: str) -> Any:
        names = object.__getattribute__(self, "_names")
        if name in names:
            return object.__getattribute__(self, "_values")[names.index(name)]
        raise AttributeError(name)

    def _replace(self, **changes: Any) -> StateScales:
        values = [changes.pop(n, v) for n, v in zip(self._names, self._values)]
        if changes:
            raise ValueError(f"StateScales has no fields {sorted(changes)}.")
        return StateScales(self._node_type, self._names, values)

    def __reduce__(self) -> tuple[type, tuple]:
        return StateScales, (self._node_type, self._names, self._values)

    def as_node(self) -> Any:
        """The inner state's ``NamedTuple`` type holding these children."""
        return self._node_type(*self._values)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StateScales)
            and (self._node_type, self._names) == (other._node_type, other._names)
            and all(a is b or a == b for a, b in zip(self._values, other._values))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={v!r}" for n, v in zip(self._names, self._values))
        return f"StateScales[{self._node_type.__name__}]({fields})"

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, Any]], tuple[type, tuple]]:
        keys = [jax.tree_util.GetAttrKey(n) for n in self._names]
        return list(zip(keys, self._values)), (self._node_type, self._names)

    @classmethod
    def tree_unflatten(cls, aux: tuple[type, tuple], children: Sequence[Any]) -> StateScales:
        return cls(aux[0], aux[1], children)


def _scales_state_dict(scales: StateScales) -> dict[str, Any]:
    return {n: serialization.to_state_dict(v) for n, v in zip(scales._names, scales._values)}


def _scales_from_state_dict(target: StateScales, state: dict[str, Any]) -> StateScales:
    return target._replace(
        **{
            n: serialization.from_state_dict(getattr(target, n), state[n], name=n)
            for n in target._names
        }
    )


# Flax checkpoints (``flax.serialization.to_bytes``/``from_bytes``) as for a NamedTuple.
serialization.register_serialization_state(StateScales, _scales_state_dict, _scales_from_state_dict)


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _scales_tree(mirror: Any, params_def: Any) -> Any:
    """``mirror`` (of the inner state's structure) with its ``NamedTuple`` nodes
    outside parameter-shaped subtrees (structure ``params_def``) as :class:`StateScales`."""

    def masked(x: Any) -> bool:
        return isinstance(x, optax.MaskedNode)

    def convert(node: Any) -> Any:
        if (
            node is None
            or masked(node)
            or not jax.tree_util.treedef_children(jax.tree.structure(node, is_leaf=masked))
        ):
            return node
        if jax.tree.structure(node, is_leaf=masked) == params_def:
            return node
        if _is_named_tuple(node):
            return StateScales(type(node), node._fields, [convert(v) for v in node])
        if isinstance(node, list | tuple):
            return type(node)(convert(v) for v in node)
        if isinstance(node, dict):
            return type(node)((k, convert(v)) for k, v in node.items())
        return node

    return convert(mirror)


def _as_inner_structure(scales: Any) -> Any:
    """Inverse of :func:`_scales_tree`: the scales tree with the inner state's node types."""
    return jax.tree.map(
        lambda x: x.as_node() if isinstance(x, StateScales) else x,
        scales,
        is_leaf=lambda x: isinstance(x, StateScales),
    )


class QuantizedState(NamedTuple):
    """State of :func:`quantize_moments`.

    Attributes:
      inner_state: the inner transform's state with each quantized leaf
        replaced by its ``uint8`` codes (same shape, so it shards like the
        original leaf).
      absmax: a tree with the structure of ``inner_state``: the float32 block
        scales ``(num_blocks,)`` of each quantized leaf, ``optax.MaskedNode()``
        for every other leaf (counters, small or full-precision moments). Its
        moment fields mirror the parameter tree as the inner state's do, so
        ``optax.tree.map_params``, ``optax.masked`` and checkpoint tools see
        the same structure for any set of quantized leaves. The inner state's
        ``NamedTuple`` nodes appear as :class:`StateScales` (the same fields,
        read as attributes), so that ``optax.tree.get(state, 'count')`` or
        ``'mu'`` and ``optax.tree.set`` find each field once, in ``inner_state``.
    """

    inner_state: Any
    absmax: Any


@functools.cache
def _dynamic_map_np(signed: bool) -> np.ndarray:
    values: list[float] = [0.0, 1.0]
    extra_fraction_bit = 0 if signed else 1
    for i in range(_EXPONENT_BITS):
        exponent = 10.0 ** (i - (_EXPONENT_BITS - 1))
        edges = np.linspace(0.1, 1.0, 2 ** (i + extra_fraction_bit) + 1)
        midpoints = (edges[:-1] + edges[1:]) / 2.0 * exponent
        values.extend(midpoints.tolist())
        if signed:
            values.extend((-midpoints).tolist())
    out = np.sort(np.asarray(values, np.float64)).astype(np.float32)
    out.setflags(write=False)
    return out


def dynamic_map(signed: bool = True) -> np.ndarray:
    """The 256-entry dynamic tree quantization map (arXiv 2110.02861, §2.3).

    For exponent ``i = 0..6`` (scale ``10^{i−6}``) the fraction part takes the
    midpoints of ``2^i + 1`` (signed) or ``2^{i+1} + 1`` (unsigned) equally spaced
    points of ``[0.1, 1]``; the signed map mirrors them to negative values;
    ``0`` and ``1`` complete the 256 codes. Sorted ascending.

    Returns:
      A read-only float32 NumPy array of shape ``(256,)``.

    Example:
      >>> import optx
      >>> m = optx.quantization.dynamic_map(signed=False)
      >>> float(m[0]), float(m[-1]), m.shape
      (0.0, 1.0, (256,))
    """
    return _dynamic_map_np(bool(signed))


# Buckets of the float32 bit pattern of |y|: 8 exponent + 8 mantissa bits, from
# 2**-24 (every smaller magnitude rounds to the 0 code) to 1.0. Each bucket
# holds at most one decision threshold (checked when the tables are built): the
# map's relative code spacing, ≥ 0.9/128 > 2**-8, is wider than a bucket.
_BUCKET_SHIFT = 15
_FIRST_BUCKET = int(np.float32(2.0**-24).view(np.uint32)) >> _BUCKET_SHIFT
_LAST_BUCKET = int(np.float32(1.0).view(np.uint32)) >> _BUCKET_SHIFT


def _stay_thresholds(mags: np.ndarray, ties_stay: bool) -> np.ndarray:
    """For each pair of adjacent magnitudes ``(m_k, m_{k+1})``: the largest
    float32 ``a`` that rounds to ``m_k`` under float32 distances
    (``fl(a − m_k) ≤ fl(m_{k+1} − a)`` if ``ties_stay``, else ``<``), by a
    vectorized bisection on the bit patterns."""
    lo = mags[:-1].view(np.uint32).astype(np.int64)
    hi = mags[1:].view(np.uint32).astype(np.int64)
    a_k, a_k1 = mags[:-1], mags[1:]
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        y = mid.astype(np.uint32).view(np.float32)
        d_left, d_right = y - a_k, a_k1 - y  # float32 arithmetic
        stays = (d_left <= d_right) if ties_stay else (d_left < d_right)
        lo, hi = np.where(stays, mid, lo), np.where(stays, hi, mid)
    return lo.astype(np.uint32).view(np.float32)


def _bucket_table(mags: np.ndarray, ties_stay: bool) -> np.ndarray:
    """One ``uint32`` per bucket: ``first << 15 | low``.

    ``first`` is the magnitude index of the bucket's first float (the number
    of thresholds below it) and ``low`` the low 15 bits of the one threshold
    inside the bucket, whose high bits are the bucket's own (all ones when the
    bucket holds none: no float of the bucket exceeds it). Then
    ``k = first + (bits(|y|) > bucket << 15 | low)``, an integer compare of
    bit patterns that orders non-negative floats as the floats.
    """
    thresholds = _stay_thresholds(mags, ties_stay)
    buckets = np.arange(_FIRST_BUCKET, _LAST_BUCKET + 2, dtype=np.uint32)
    starts = (buckets << np.uint32(_BUCKET_SHIFT)).view(np.float32)
    first = np.searchsorted(thresholds, starts[:-1], side="left")  # thresholds below
    inside = np.searchsorted(thresholds, starts[1:], side="left") - first
    if np.any(inside > 1):  # pragma: no cover - a property of the map
        raise AssertionError("a quantization bucket holds two code boundaries")
    low_mask = (1 << _BUCKET_SHIFT) - 1
    padded = np.append(thresholds.view(np.uint32) & low_mask, low_mask)
    low = np.where(inside == 1, padded[first], low_mask)
    return ((first.astype(np.uint32) << _BUCKET_SHIFT) | low).astype(np.uint32)


@functools.cache
def _code_table(signed: bool) -> np.ndarray:
    """The bucket table of :func:`_nearest_code` (see :func:`_bucket_table`).

    Unsigned map: indexed by bucket, ``k`` is the code. Signed map: positive
    ``y`` (magnitudes 0, …, 1.0; ties stay on the smaller magnitude, the lower
    code) then negative ``y`` (magnitudes 0, …, 0.99297; ties go to the larger
    magnitude, the lower code), concatenated.
    """
    m = _dynamic_map_np(signed)
    if not signed:
        table = _bucket_table(m, ties_stay=True)
    else:
        pos = m[m >= 0]
        neg = np.float32(0.0) - m[m <= 0][::-1]  # +0.0, not -0.0
        table = np.concatenate([_bucket_table(pos, True), _bucket_table(neg, False)])
    table.setflags(write=False)
    return table


@functools.cache
def _carry_table(signed: bool) -> np.ndarray:
    """:func:`_code_table` with each entry rewritten as ``first << 15 |
    (0x7fff − low)``: adding the low 15 bits of ``|y|`` carries into bit 15
    exactly when they exceed the threshold's, so ``(entry + low) >> 15`` is
    the code (one lookup, its result used once)."""
    table = _code_table(signed)
    low_mask = (1 << _BUCKET_SHIFT) - 1
    first = (table >> _BUCKET_SHIFT) << _BUCKET_SHIFT
    out = (first + (low_mask - (table & low_mask))).astype(np.uint32)
    out.setflags(write=False)
    return out


def _nearest_code(
    y: jax.Array, signed: bool, lookup: Callable[[jax.Array], jax.Array] | None = None
) -> jax.Array:
    """The code of ``y ∈ [−1, 1]`` (``[0, 1]`` unsigned) under optx's rule (int32).

    The rule: ``argmin_k fl(|y − map[k]|)``, float32 distances, ties to the
    lower code index (bitsandbytes' CPU comparison). Computed exactly with one
    lookup in a small table instead of a search: the bucket of ``|y|``'s
    float32 bit pattern gives the candidate code and the single decision
    threshold inside the bucket, precomputed from the map in NumPy
    (:func:`_code_table`); ``code = candidate + (|y| > threshold)``, evaluated
    as one add and shift (:func:`_carry_table`), so that XLA fuses the lookup
    into the coding loop (an entry unpacked twice is written out first).
    ``lookup(idx)`` reads the entries of :func:`_carry_table` (default: a
    gather from the table as a constant; the Pallas kernel reads its table
    input).
    """
    if lookup is None:
        table = jnp.asarray(_carry_table(signed))

        def lookup(idx: jax.Array) -> jax.Array:
            return table.at[idx].get(mode="promise_in_bounds")

    low_mask = (1 << _BUCKET_SHIFT) - 1
    n_buckets = _LAST_BUCKET - _FIRST_BUCKET + 1
    bits = jax.lax.bitcast_convert_type(jnp.abs(y), jnp.uint32)
    # Below the first bucket: its start (no threshold below); above the last
    # (only NaN after clipping): its end (past the last code, clamped below).
    bits = jnp.clip(
        bits, _FIRST_BUCKET << _BUCKET_SHIFT, (_LAST_BUCKET << _BUCKET_SHIFT) | low_mask
    )
    idx = ((bits >> _BUCKET_SHIFT) - _FIRST_BUCKET).astype(jnp.int32)
    if signed:
        idx = idx + jnp.where(y < 0, n_buckets, 0)
    entry = lookup(idx)
    k = ((entry + (bits & low_mask)) >> _BUCKET_SHIFT).astype(jnp.int32)
    if not signed:
        return jnp.minimum(k, 255)  # NaN entries (a NaN block) land on the last code
    zero_code = 127  # [negatives (127) | 0 | positives (127) | 1.0]
    return jnp.where(y < 0, zero_code - jnp.minimum(k, 127), zero_code + jnp.minimum(k, 128))


def num_blocks(size: int, block_size: int) -> int:
    """``ceil(size / block_size)`` (at least 1)."""
    return max(1, math.ceil(int(size) / int(block_size)))


def _block_view(shape: Sequence[int], block_size: int) -> tuple[tuple[int, ...], int] | None:
    """A view of ``shape`` in which the axes from the returned one on hold exactly
    one block, made by splitting one dimension (no two dimensions merged), or None.

    Row-major blocks of ``block_size`` entries are ``m`` consecutive slices of
    one axis times every axis after it (``block_size = m · prod(shape[a+1:])``,
    ``m`` dividing ``shape[a]``): ``(…, shape[a] / m, m, *shape[a+1:])``. Block
    maxima and coding on that view need no flattening, so a leaf sharded on
    any dimension is reduced shard by shard (a flattened column-sharded matrix
    would be gathered whole under a mesh); the numbers are the same as on the
    flat view. None when a block boundary falls inside a slice or the last
    block is partial.
    """
    total = math.prod(shape)
    if total == 0 or total % block_size:
        return None
    suffix = 1
    for a in range(len(shape) - 1, -1, -1):
        if block_size % suffix:
            return None
        m = block_size // suffix
        if m <= shape[a] and shape[a] % m == 0:
            return (*shape[:a], shape[a] // m, m, *shape[a + 1 :]), a + 1
        suffix *= shape[a]
    return None


def _as_blocks(x: jax.Array, block_size: int, split: bool) -> tuple[jax.Array, int]:
    """``(view, axis)``: for a sharded leaf (``split``), ``x`` viewed so that the axes
    from ``axis`` on are one block (:func:`_block_view`); otherwise (or when no
    such view exists) flattened and zero-padded to ``(num_blocks, block_size)``.
    Unsharded leaves keep the flat view, whose program XLA:CPU was measured on."""
    view = _block_view(jnp.shape(x), block_size) if split else None
    if view is not None:
        return jnp.reshape(x, view[0]), view[1]
    flat = jnp.reshape(x, (-1,))
    n = flat.shape[0]
    pad = num_blocks(n, block_size) * block_size - n
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad,), flat.dtype)])
    return jnp.reshape(flat, (-1, block_size)), 1


def _per_block(values: jax.Array, blocks: jax.Array, axis: int) -> jax.Array:
    """The ``(num_blocks,)`` ``values`` broadcast against the block view ``blocks``."""
    lead = blocks.shape[:axis]
    return jnp.reshape(values, (*lead, *(1,) * (blocks.ndim - axis)))


def _unblock(blocks: jax.Array, shape: Sequence[int]) -> jax.Array:
    n = math.prod(shape)
    if math.prod(blocks.shape) == n:
        return jnp.reshape(blocks, tuple(shape))
    return jnp.reshape(jnp.reshape(blocks, (-1,))[:n], tuple(shape))


def _block_absmax(xs: Sequence[jax.Array], block_size: int, split: bool = False) -> list[jax.Array]:
    """``max |x|`` over each block of every array in ``xs`` (all of one size).

    One variadic reduction for all of them: XLA:CPU fuses the producers of a
    variadic reduce into its loop (a plain ``max`` reduction goes to a
    library kernel that needs its input written out first), so the moments
    feeding it are recomputed in registers instead of stored.
    """
    if len(xs) == 1:
        # One array: max and min in one reduction (a one-operand reduce, or two
        # identical operands, would be a plain max again); |max(max, −min)|.
        blocks, axis = _as_blocks(xs[0].astype(jnp.float32), block_size, split)
        dims = tuple(range(axis, blocks.ndim))
        init = (jnp.array(-jnp.inf, jnp.float32), jnp.array(jnp.inf, jnp.float32))

        def max_min(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            return jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])

        hi, lo = jax.lax.reduce((blocks, blocks), init, max_min, dims)
        return [jnp.reshape(jnp.abs(jnp.maximum(hi, -lo)), (-1,))]
    views = [_as_blocks(x.astype(jnp.float32), block_size, split) for x in xs]
    blocks = [jnp.abs(b) for b, _ in views]
    dims = tuple(range(views[0][1], blocks[0].ndim))
    init = tuple(jnp.array(-jnp.inf, jnp.float32) for _ in blocks)

    def maximum(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        return tuple(jnp.maximum(u, v) for u, v in zip(a, b))

    return [jnp.reshape(m, (-1,)) for m in jax.lax.reduce(tuple(blocks), init, maximum, dims)]


def _encode(
    x: jax.Array, absmax: jax.Array, signed: bool, block_size: int, split: bool = False
) -> jax.Array:
    """The ``uint8`` codes of ``x`` for the block scales ``absmax``."""
    blocks, axis = _as_blocks(x.astype(jnp.float32), block_size, split)
    # x · fl(1/a_b), as bitsandbytes' CPU quantizer and CUDA kernels compute it
    # (not a correctly rounded x / a_b: the two differ by an ulp near code
    # boundaries).
    inverse = 1.0 / jnp.where(absmax > 0, absmax, 1.0)
    normalized = blocks * _per_block(inverse, blocks, axis)
    codes = _nearest_code(jnp.clip(normalized, -1.0 if signed else 0.0, 1.0), signed)
    return _unblock(codes.astype(jnp.uint8), jnp.shape(x))


# Traced and lowered once per (shape, dtype, map, block size); XLA inlines the
# calls, so the program is the same as calling the function per leaf.
_encode_jitted = jax.jit(_encode, static_argnames=("signed", "block_size", "split"))


def quantize_blockwise(
    x: jax.Array, *, signed: bool = True, block_size: int = REFERENCE_BLOCK_SIZE
) -> QuantizedArray:
    """Quantizes ``x`` block-wise to 8-bit codes of :func:`dynamic_map`.

    Each block of ``block_size`` consecutive entries (row-major) is multiplied
    by the float32 reciprocal of its absolute maximum and every entry ``y``
    gets the code ``argmin_k fl(|y − map[k]|)``: the nearest map value with
    float32 distances, ties to the lower code index (the module notes compare
    it with bitsandbytes' grid lookup). All-zero blocks keep scale 0. For the unsigned map
    ``x`` must be non-negative (negative entries round to code 0).

    Args:
      x: any floating array (computed in float32).
      signed: signed (first moments) or unsigned (second moments) map.
      block_size: entries per scale (static).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> q = optx.quantization.quantize_blockwise(jnp.array([0.5, -1.0, 0.25]), block_size=2)
      >>> q.codes.dtype, q.absmax
      (dtype('uint8'), Array([1.  , 0.25], dtype=float32))
    """
    block_size = base.check_positive_int("block_size", block_size)
    return _quantize_group([x], [signed], block_size, [x])[0]


def _quantize_group(
    xs: Sequence[jax.Array],
    signed: Sequence[bool],
    block_size: int,
    recomputed: Sequence[jax.Array],
) -> list[QuantizedArray]:
    """Quantizes arrays of one size: block maxima of ``xs`` in one reduction,
    codes from ``recomputed`` (the same values, traced separately so that XLA
    recomputes them in the coding loop instead of storing them)."""
    split = any(sharding.is_sharded(x) for x in (*xs, *recomputed))

    def absmax_fn(*vs: jax.Array) -> list[jax.Array]:
        return _block_absmax(vs, block_size, split)

    specs = [PartitionSpec() for _ in xs]
    maxima = sharding.call_with_out_specs(absmax_fn, tuple(xs), specs)
    out = []
    for x, s, a in zip(recomputed, signed, maxima):
        codes = sharding.call_with_out_specs(
            functools.partial(_encode_jitted, signed=s, block_size=block_size, split=split),
            (x, a),
            sharding.spec_or_replicated(x),
        )
        out.append(QuantizedArray(codes, a))
    return out


_quantize_jitted = jax.jit(quantize_blockwise, static_argnames=("signed", "block_size"))


def dequantize_blockwise(
    q: QuantizedArray,
    *,
    signed: bool = True,
    block_size: int = REFERENCE_BLOCK_SIZE,
    dtype: base.DTypeLike = jnp.float32,
) -> jax.Array:
    """Inverse of :func:`quantize_blockwise`: ``map[codes] · absmax[block]``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> x = jnp.array([0.5, -1.0, 0.25, 0.0])
      >>> q = optx.quantization.quantize_blockwise(x, block_size=2)
      >>> optx.quantization.dequantize_blockwise(q, block_size=2)
      Array([ 0.50078124, -0.99296874,  0.25      ,  0.        ], dtype=float32)
    """
    block_size = base.check_positive_int("block_size", block_size)
    fn = functools.partial(
        _decode_jitted,
        signed=bool(signed),
        block_size=block_size,
        dtype=jnp.dtype(dtype),
        split=sharding.is_sharded(q.codes),
    )
    out_spec = sharding.spec_or_replicated(q.codes)
    return sharding.call_with_out_specs(fn, (q.codes, q.absmax), out_spec)


def _decode(
    codes: jax.Array,
    absmax: jax.Array,
    signed: bool,
    block_size: int,
    dtype: jnp.dtype,
    split: bool = False,
) -> jax.Array:
    """``map[codes] · absmax[block]`` in ``codes``' shape."""
    values = jnp.asarray(_dynamic_map_np(signed))[codes.astype(jnp.int32)]
    blocks, axis = _as_blocks(values, block_size, split)
    blocks = blocks * _per_block(absmax, blocks, axis)
    return _unblock(blocks, jnp.shape(codes)).astype(dtype)


_decode_jitted = jax.jit(_decode, static_argnames=("signed", "block_size", "dtype", "split"))


# ----------------------------------------------------------------------------
# Quantized state for any transform
# ----------------------------------------------------------------------------


def _field_names(path: base.KeyPath) -> list[str]:
    """Names of the NamedTuple/dataclass fields on a state key path."""
    return [e.name for e in path if isinstance(e, jax.tree_util.GetAttrKey)]


def _param_structure(tree: Any) -> Any:
    return jax.tree.structure(tree, is_leaf=lambda x: isinstance(x, optax.MaskedNode))


@hyperparams.validated()
def quantize_moments(
    inner: optax.GradientTransformation,
    *,
    block_size: int = REFERENCE_BLOCK_SIZE,
    min_size: int = REFERENCE_MIN_SIZE,
    unsigned_fields: Sequence[str] = ("nu",),
    fields: Sequence[str] | None = None,
    full_precision: str | Callable[[str], bool] | None = None,
    kernel: str = "xla",
) -> optax.GradientTransformationExtraArgs:
    """Keeps the state of ``inner`` in block-wise 8-bit form (arXiv 2110.02861).

    Every floating state leaf of ``inner`` with at least ``min_size`` entries is
    stored as a :class:`QuantizedArray` (uint8 codes + float32 block scales).
    ``update`` dequantizes those leaves to float32, runs ``inner.update``, and
    quantizes the new state with fresh per-block absmax (paper Alg. 1: the
    update itself is exact 32-bit math on dequantized states):

    .. math::

      s_{t-1} = \\mathrm{deq}(q_{t-1}), \\quad
      (u_t, s_t) = \\mathrm{inner}(g_t, s_{t-1}), \\quad q_t = \\mathrm{quant}(s_t).

    Leaves under a NamedTuple field named in ``unsigned_fields`` (default
    ``'nu'``: Adam's second moment) use the unsigned map, all others the signed
    one. So ``quantize_moments(optax.scale_by_adam())`` is 8-bit Adam,
    ``quantize_moments(optax.scale_by_lion())`` 8-bit Lion,
    ``quantize_moments(optax.trace(0.9))`` 8-bit momentum; any moment of any
    transform works the same way (e.g. GaLore's subspace Adam).

    Cost: ``inner.update`` runs three times on the same codes (traced once and
    called three times under ``jit``; the copies behind an
    ``optimization_barrier``, so XLA does not merge them): once for the block
    maxima, once for the updates and once for the codes. XLA then
    recomputes the element-wise chain dequantize → update inside each of those
    loops instead of writing the dequantized and new moments out (on CPU, a
    step of 8-bit AdamW costs 1.3–2.3 steps of ``optax.adamw`` instead of
    2.8–4.8; see ``benchmarks/quantization_cost.py``). The numbers are those of one
    dequantize → update → quantize pass, up to the multiply-add contractions
    XLA:CPU chooses per fused loop (bit-identical with FMA disabled).

    ``kernel='pallas'`` (opt-in; the XLA path is the portable default) does
    the step of each quantized parameter leaf in one fused Pallas kernel
    (:mod:`optx._src.quantization_kernels`): per tile of blocks it reads the
    codes, block scales and gradient once (the parameter only if the inner
    reads it), runs ``inner.update`` on the dequantized values, reduces the
    new block maxima in registers and writes the codes, scales and update
    once: 6 B in and 6 B out per parameter for Adam's two codes and a float32
    gradient and update. A whole 8-bit AdamW step (the decay, learning rate
    and ``apply_updates`` are one more XLA loop: update and parameter in,
    parameter out) then moves 14 B in and 10 B out per parameter, against
    26 B in and 6 B out for the XLA structure and 16 B in and 12 B out for
    ``optax.adamw``. Same codes and block scales as the XLA path (the same
    rounding rule; bit-identical on CPU without FMA, otherwise up to the
    multiply-add contraction of the moments). Only for **element-wise**
    inners (``scale_by_adam``, ``scale_by_lion``, ``trace``): the inner's
    per-leaf update is traced and any reducing, reshaping or entry-mixing
    primitive, or an extra argument it reads, raises a ``ValueError``.
    Leaves the kernel does not take run on the XLA path in the same step:
    leaves with a full-precision moment next to a quantized one
    (``fields``), a ``block_size`` that is not a power of two, leaves
    sharded over a mesh axis, leaves of 2³¹ entries or more, and every leaf
    when the inner closes over an array of more than one entry (a warning
    says so). One-entry values it closes over, such as the traced ``b1``,
    ``b2``, ``eps`` of ``optax.inject_hyperparams``, are kernel inputs. Leaves whose
    size is not a multiple of ``block_size`` work (the tail is masked). On
    CUDA it lowers with Pallas' Triton backend; elsewhere the kernel runs in
    Pallas' interpret mode (a correctness reference, slow). GPU timing is
    pending a GPU lease (``benchmarks/quantization_cost.py --pallas``).

    Args:
      inner: the transform whose state is quantized.
      block_size: entries per block scale (static; 256 in bitsandbytes, 2048 in
        the paper).
      min_size: leaves with fewer entries keep full precision (bitsandbytes'
        ``min_8bit_size``, 4096).
      unsigned_fields: state field names holding non-negative quantities.
      fields: if given, only leaves under these field names are quantized
        (e.g. ``('mu', 'nu')``); default: every large floating leaf.
      full_precision: a regular expression searched in each state leaf's
        '/'-joined key path (which ends with the parameter's path), or a
        predicate on it; matching leaves keep full precision — bitsandbytes'
        per-parameter 32-bit override used for ``StableEmbedding``
        (paper §2.4). E.g. ``full_precision=r'(^|/)embed'``.
      kernel: ``'xla'`` (default, every platform) or ``'pallas'`` (one fused
        kernel per quantized leaf; element-wise inners only, see above).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`QuantizedState`: the inner state with ``uint8`` codes in place of
      the quantized leaves, and a block-scale tree of the same structure
      (``optax.MaskedNode()`` where a leaf is not quantized), so the state
      mirrors the parameter tree as optax states do. Updates come back in the
      gradient dtype. float16 and bfloat16 gradients and parameters enter the
      inner update in float32, as bitsandbytes computes for every parameter
      dtype (a float16 ``g²`` would overflow above 256 and put ``inf`` in its
      block's scale); full-precision state leaves keep the dtype ``inner.init``
      gave them.

    References:
      Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise
      Quantization", ICLR 2022, arXiv 2110.02861 (code: bitsandbytes).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.quantization.quantize_moments(optax.scale_by_adam(), min_size=0)
      >>> state = tx.init({'w': jnp.zeros((64, 64))})
      >>> state.inner_state.mu['w'].dtype, state.absmax.mu['w'].shape   # codes; 16 scales
      (dtype('uint8'), (16,))
    """
    block_size = base.check_positive_int("block_size", block_size)
    min_size = base.check_positive_int("min_size", min_size, allow_zero=True)
    unsigned = frozenset(unsigned_fields)
    selected = None if fields is None else frozenset(fields)
    if isinstance(full_precision, str):
        pattern = re.compile(full_precision)

        def keep_full(path: str) -> bool:
            return pattern.search(path) is not None
    elif full_precision is None:

        def keep_full(path: str) -> bool:
            del path
            return False
    elif callable(full_precision):
        keep_full = full_precision
    else:
        raise TypeError(
            f"`full_precision` must be a regex string, a predicate or None, got {full_precision!r}."
        )
    inner = optax.with_extra_args_support(inner)
    fused = kernel == "pallas"

    def is_signed(path: base.KeyPath) -> bool:
        return not any(name in unsigned for name in _field_names(path))

    def wants_quantization(path: base.KeyPath, x: Any) -> bool:
        if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
            return False
        if jnp.ndim(x) == 0 or math.prod(jnp.shape(x)) < max(min_size, 1):
            return False
        if selected is not None and not any(n in selected for n in _field_names(path)):
            return False
        return not keep_full(base.path_to_str(path))

    def check_fields(state: Any) -> None:
        # A misspelled field would quantize nothing, silently.
        nodes = jax.tree_util.tree_flatten_with_path(
            state, is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode)
        )[0]
        present = {n for path, _ in nodes for n in _field_names(path)}
        if selected is not None and not selected <= present:
            raise ValueError(
                f"`fields` names {sorted(selected - present)}, which the inner state has no "
                f"field of (its fields: {sorted(present)})."
            )

    def init_fn(params: base.Params) -> QuantizedState:
        inner_state = inner.init(params)
        check_fields(inner_state)
        flat, treedef = jax.tree_util.tree_flatten_with_path(inner_state)
        leaves, scales = [], []
        for path, x in flat:
            if wants_quantization(path, x):
                # The barrier keeps XLA from constant-folding the quantization of
                # the (usually all-zero) initial state under jit, which is slow.
                x = jax.lax.optimization_barrier(x)
                # One compiled program per leaf shape: called eagerly (``tx.init``
                # outside jit), op-by-op dispatch of the quantizer took ~10 s.
                q = _quantize_jitted(x, signed=is_signed(path), block_size=block_size)
                leaves.append(q.codes)
                scales.append(q.absmax)
            else:
                leaves.append(x)
                scales.append(optax.MaskedNode())
        return QuantizedState(
            jax.tree_util.tree_unflatten(treedef, leaves),
            _scales_tree(jax.tree_util.tree_unflatten(treedef, scales), _param_structure(params)),
        )

    def update_fn(
        updates: base.Updates,
        state: QuantizedState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, QuantizedState]:
        flat, treedef = jax.tree_util.tree_flatten_with_path(state.inner_state)
        scales = treedef.flatten_up_to(_as_inner_structure(state.absmax))
        paths = [path for path, _ in flat]
        qidx = [i for i, s in enumerate(scales) if not isinstance(s, optax.MaskedNode)]
        grads, grads_in = _in_compute_dtype(updates), updates
        params, params_in = _in_compute_dtype(params), params

        def inner_step(
            codes: Sequence[jax.Array], leaves: list[Any], updates: base.Updates, params: Any
        ) -> tuple[base.Updates, list[Any]]:
            leaves = list(leaves)
            for i, c in zip(qidx, codes):
                leaves[i] = dequantize_blockwise(
                    QuantizedArray(c, leaves[i]), signed=is_signed(paths[i]), block_size=block_size
                )
            full = jax.tree_util.tree_unflatten(treedef, leaves)
            new_updates, new_inner = inner.update(updates, full, params, **extra)
            return new_updates, treedef.flatten_up_to(new_inner)

        kernel_out: dict[int, Any] = {}
        if fused:
            # The kernel reads the leaves as stored and widens them in registers.
            kernel_out = _fused_steps(
                inner, grads_in, params_in, extra, flat, scales, qidx, is_signed, block_size
            )
        done = {i for _, codes_out, _ in kernel_out.values() for i in codes_out}
        codes = [flat[i][1] for i in qidx]
        # The other leaves as they are, the block scales in the quantized slots.
        others = [scales[i] if i in qidx else x for i, (_, x) in enumerate(flat)]
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((codes, grads))):
            # Under a trace: traced and lowered once, called three times (XLA
            # inlines the calls, so the program is that of three traces).
            inner_step = jax.jit(inner_step)
        # Three traces of the inner step: one feeds the block maxima, and two
        # copies behind a barrier (so XLA cannot merge them) feed the updates and
        # the codes. XLA:CPU then recomputes the cheap element-wise chain in each
        # loop instead of writing the new moments out around the reduction.
        for_updates, for_codes = jax.lax.optimization_barrier((codes, codes))
        _, first = inner_step(codes, others, grads, params)
        new_updates, _ = inner_step(for_updates, others, grads, params)
        _, new_leaves = inner_step(for_codes, others, grads, params)
        for i, (_, x) in enumerate(flat):
            if i not in qidx and hasattr(x, "dtype"):
                new_leaves[i] = new_leaves[i].astype(x.dtype)  # as stored
        groups: dict[Any, list[int]] = {}
        for i in (i for i in qidx if i not in done):
            param_path = tuple(e for e in paths[i] if not isinstance(e, jax.tree_util.GetAttrKey))
            key = (num_blocks(math.prod(jnp.shape(first[i])), block_size), param_path)
            groups.setdefault(key, []).append(i)
        new_scales = list(scales)
        for members in groups.values():
            quantized = _quantize_group(
                [first[i] for i in members],
                [is_signed(paths[i]) for i in members],
                block_size,
                [new_leaves[i] for i in members],
            )
            for i, q in zip(members, quantized):
                new_leaves[i] = sharding.reshard_like(q.codes, flat[i][1])
                new_scales[i] = sharding.reshard_like(q.absmax, scales[i])
        if kernel_out:
            # The kernel's leaves replace the XLA path's (whose unused loops XLA drops).
            u_leaves, u_treedef = jax.tree_util.tree_flatten(new_updates)
            for j, (u, codes_out, scales_out) in kernel_out.items():
                u_leaves[j] = u
                for i, c in codes_out.items():
                    new_leaves[i], new_scales[i] = c, scales_out[i]
            new_updates = jax.tree_util.tree_unflatten(u_treedef, u_leaves)
        new_updates = optax.tree.cast_like(new_updates, grads_in)
        new_state = QuantizedState(
            jax.tree_util.tree_unflatten(treedef, new_leaves),
            _scales_tree(
                jax.tree_util.tree_unflatten(treedef, new_scales), _param_structure(updates)
            ),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _in_compute_dtype(tree: Any) -> Any:
    """Floating leaves in the library's compute dtype (``base.compute_dtype``:
    float16 and bfloat16 in float32, wider dtypes unchanged).

    The inner update of 8-bit states computes in float32, as bitsandbytes'
    kernels do in registers for every parameter dtype: the moments decode to
    float32, and a float16 ``g²`` overflows above 256 and underflows below
    2.4e-4, which would put ``inf`` in a block maximum and wipe out its block.
    """

    def widen(x: Any) -> Any:
        dtype = getattr(x, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            return x
        return x.astype(base.compute_dtype(dtype))

    return jax.tree.map(widen, tree)


def _warn_captured_arrays() -> None:
    warnings.warn(
        "quantize_moments(kernel='pallas'): the inner update closes over an array of more "
        "than one entry, which the kernel cannot tile; those leaves run on the XLA path "
        "(same numbers).",
        stacklevel=3,
    )


def _fused_steps(
    inner: optax.GradientTransformationExtraArgs,
    updates: base.Updates,
    params: base.Params | None,
    extra: dict[str, Any],
    flat: Sequence[tuple[base.KeyPath, Any]],
    scales: Sequence[Any],
    qidx: Sequence[int],
    is_signed: Callable[[base.KeyPath], bool],
    block_size: int,
) -> dict[int, tuple[jax.Array, dict[int, jax.Array], dict[int, jax.Array]]]:
    """``kernel='pallas'``: the fused kernel on every parameter leaf it takes.

    Returns, per index of a parameter leaf in ``updates``' leaves: its update
    and the new codes and block scales of its moments, by state-leaf index.
    Leaves it does not take (see :func:`quantize_moments`) are left out and
    stay on the XLA path.
    """
    from optx._src import quantization_kernels as qk

    if block_size & (block_size - 1):
        return {}  # Triton tiles are powers of two
    u_flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    p_leaves = None if params is None else jax.tree_util.tree_leaves(params)
    state_index = {tuple(path): i for i, (path, _) in enumerate(flat)}
    leaves = [x for _, x in flat]
    quantized = frozenset(qidx)
    out = {}
    checked: dict[Any, tuple[bool, list[Any] | None]] = {}  # one trace per kind of leaf
    for j, (path, g) in enumerate(u_flat):
        if math.prod(jnp.shape(g)) > 2**31 - 2 * qk.TILE:
            continue  # the kernel indexes entries with int32
        if any(sharding.is_sharded(x) for x in (g, None if p_leaves is None else p_leaves[j])):
            continue
        like = g if p_leaves is None else p_leaves[j]
        plan = qk.plan_leaf(
            inner.init,
            like,
            tuple(path),
            state_index,
            leaves,
            quantized,
            lambda i: is_signed(flat[i][0]),
        )
        if plan is None or any(sharding.is_sharded(leaves[i]) for i in plan.quantized):
            continue
        p = None if p_leaves is None else p_leaves[j]
        scalars = [leaves[i] for i in plan.scalars]
        key = (
            plan.treedef,
            plan.slots,
            jnp.result_type(g),
            None if p is None else jnp.result_type(p),
            tuple(jax.typeof(s) for s in scalars),
        )
        if key not in checked:
            checked[key] = qk.check_elementwise(
                inner.update, plan, block_size, g, scalars, p, extra
            )
        reads_p, captured = checked[key]
        if captured is None:
            _warn_captured_arrays()
            continue

        def step(
            codes: Any,
            absmax: Any,
            scalars: Any,
            captured: Any,
            g: jax.Array,
            p: Any,
            plan: Any = plan,
        ) -> Any:
            return qk.fused_leaf_step(
                inner.update,
                plan,
                codes,
                absmax,
                scalars,
                captured,
                g,
                p,
                block_size,
                jnp.result_type(g),
            )

        # On an Explicit mesh (the leaf replicated): under Auto axes, as other per-leaf math
        # (sharding.call_with_out_specs); Pallas' interpret-mode lowering under an Explicit
        # mesh context gave a tile sharded types and failed.
        m = len(plan.quantized)
        u, codes, absmax = sharding.call_with_out_specs(
            step,
            (
                [leaves[i] for i in plan.quantized],
                [scales[i] for i in plan.quantized],
                scalars,
                captured,
                g,
                p if reads_p else None,
            ),
            (None, [None] * m, [None] * m),
        )
        out[j] = (
            u,
            dict(zip(plan.quantized, codes)),
            dict(zip(plan.quantized, absmax)),
        )
    return out
