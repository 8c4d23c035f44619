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
* bitsandbytes' CPU quantizer is not exact nearest rounding (about 2% of codes
  are a neighbour of the nearest); its CUDA kernel uses a binary search. optx
  rounds to the nearest code exactly, ties to the lower code (``argmin``),
  computed arithmetically from the map's structure (no table lookups).
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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


class QuantizedState(NamedTuple):
    """State of :func:`quantize_moments`.

    Attributes:
      inner_state: the inner transform's state with each quantized leaf
        replaced by its ``uint8`` codes (same shape, so it shards like the
        original leaf).
      absmax: the float32 block scales, keyed by the quantized leaf's index in
        ``jax.tree.leaves(inner_state)`` (a flat dict of arrays, so the state
        survives Flax NNX's and Orbax's tree conversions).
    """

    inner_state: Any
    absmax: dict[str, jax.Array]


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
      >>> m = optx.dynamic_map(signed=False)
      >>> float(m[0]), float(m[-1]), m.shape
      (0.0, 1.0, (256,))
    """
    return _dynamic_map_np(bool(signed))


def _nearest_code(y: jax.Array, signed: bool) -> jax.Array:
    """Index of the nearest :func:`dynamic_map` entry for ``y ∈ [−1, 1]`` (int32).

    Gather-free, from the map's structure: the exponent ``i`` (codes of
    exponent ``i`` lie in ``[10^{i−7}, 10^{i−6}]``) by six comparisons, the
    nearest fraction on that exponent's uniform grid by rounding, then the two
    neighbours across the exponent boundary (the last code of exponent ``i−1``
    or 0; the first of ``i+1`` or 1.0) compared by distance, ties to the lower
    code. Equivalent to an ``argmin`` over the 256 codes, several times
    faster than a binary search on CPU.
    """
    extra = 0 if signed else 1
    a = jnp.abs(y)
    i = jnp.zeros(a.shape, jnp.int32)
    scale = jnp.full(a.shape, 10.0 ** -(_EXPONENT_BITS - 1), jnp.float32)
    for j in range(1, _EXPONENT_BITS):
        up = a >= 10.0 ** (j - _EXPONENT_BITS)
        i = jnp.where(up, j, i)
        scale = jnp.where(up, jnp.float32(10.0 ** (j - _EXPONENT_BITS + 1)), scale)
    n_int = jnp.left_shift(jnp.int32(1), i + extra)  # fraction codes of exponent i
    n = n_int.astype(jnp.float32)
    k = jnp.clip(jnp.round((a / scale - 0.1) * n / 0.9 - 0.5), 0, n - 1)
    dist = jnp.abs(a - scale * (0.1 + (k + 0.5) * 0.9 / n))
    last = _EXPONENT_BITS - 1
    lower = jnp.where(i == 0, 0.0, scale * 0.1 * (1.0 - 0.45 / (0.5 * n)))
    upper = jnp.where(i == last, 1.0, scale * 10.0 * (0.1 + 0.45 / (2.0 * n)))
    take_lower = (k == 0) & (jnp.abs(a - lower) <= dist)
    take_upper = (k == n - 1) & (jnp.abs(upper - a) < dist)
    if signed:
        take_upper = take_upper & ~((y < 0) & (i == last))  # there is no −1.0 code
    kk = k.astype(jnp.int32) + jnp.where(take_lower, -1, jnp.where(take_upper, 1, 0))
    if not signed:
        return n_int - 1 + kk  # [0 | exponent 0 (2) | ... | exponent 6 (128) | 1.0]
    positive = 127 + n_int + kk  # [negatives (127) | 0 | exponent 0 (1) | ... | 1.0]
    return jnp.where(y < 0, 254 - positive, positive)


def num_blocks(size: int, block_size: int) -> int:
    """``ceil(size / block_size)`` (at least 1)."""
    return max(1, math.ceil(int(size) / int(block_size)))


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
    flat = jnp.reshape(x, (-1,))
    n = flat.shape[0]
    pad = num_blocks(n, block_size) * block_size - n
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad,), flat.dtype)])
    return jnp.reshape(flat, (-1, block_size))


def _unblock(blocks: jax.Array, shape: Sequence[int]) -> jax.Array:
    n = math.prod(shape)
    return jnp.reshape(jnp.reshape(blocks, (-1,))[:n], tuple(shape))


def quantize_blockwise(
    x: jax.Array, *, signed: bool = True, block_size: int = REFERENCE_BLOCK_SIZE
) -> QuantizedArray:
    """Quantizes ``x`` block-wise to 8-bit codes of :func:`dynamic_map`.

    Each block of ``block_size`` consecutive entries (row-major) is divided by
    its absolute maximum and every entry is rounded to the nearest map value
    (ties to the lower code). All-zero blocks keep scale 0. For the unsigned
    map ``x`` must be non-negative (negative entries round to code 0).

    Args:
      x: any floating array (computed in float32).
      signed: signed (first moments) or unsigned (second moments) map.
      block_size: entries per scale (static).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> q = optx.quantize_blockwise(jnp.array([0.5, -1.0, 0.25]), block_size=2)
      >>> q.codes.dtype, q.absmax
      (dtype('uint8'), Array([1.  , 0.25], dtype=float32))
    """
    block_size = base.check_positive_int("block_size", block_size)
    shape = jnp.shape(x)

    def fn(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        blocks = _blocks(v.astype(jnp.float32), block_size)
        absmax = jnp.max(jnp.abs(blocks), axis=1)
        scale = jnp.where(absmax > 0, absmax, 1.0)
        normalized = blocks / scale[:, None]
        codes = _nearest_code(jnp.clip(normalized, -1.0 if signed else 0.0, 1.0), signed)
        return _unblock(codes.astype(jnp.uint8), shape), absmax

    out_specs = (sharding.spec_or_replicated(x), PartitionSpec())
    codes, absmax = sharding.call_with_out_specs(fn, (x,), out_specs)
    return QuantizedArray(codes, absmax)


_quantize_jitted = jax.jit(quantize_blockwise, static_argnames=("signed", "block_size"))


def dequantize_blockwise(
    q: QuantizedArray,
    *,
    signed: bool = True,
    block_size: int = REFERENCE_BLOCK_SIZE,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Inverse of :func:`quantize_blockwise`: ``map[codes] · absmax[block]``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> x = jnp.array([0.5, -1.0, 0.25, 0.0])
      >>> q = optx.quantize_blockwise(x, block_size=2)
      >>> optx.dequantize_blockwise(q, block_size=2)
      Array([ 0.50078124, -0.99296874,  0.25      ,  0.        ], dtype=float32)
    """
    block_size = base.check_positive_int("block_size", block_size)
    shape = jnp.shape(q.codes)

    def fn(codes: jax.Array, absmax: jax.Array) -> jax.Array:
        values = jnp.asarray(_dynamic_map_np(signed))[codes.astype(jnp.int32)]
        blocks = _blocks(values, block_size) * absmax[:, None]
        return _unblock(blocks, shape).astype(dtype)

    out_spec = sharding.spec_or_replicated(q.codes)
    return sharding.call_with_out_specs(fn, (q.codes, q.absmax), out_spec)


# ----------------------------------------------------------------------------
# Quantized state for any transform
# ----------------------------------------------------------------------------


def _field_names(path: base.KeyPath) -> list[str]:
    """Names of the NamedTuple/dataclass fields on a state key path."""
    return [e.name for e in path if isinstance(e, jax.tree_util.GetAttrKey)]


@hyperparams.validated()
def quantize_moments(
    inner: optax.GradientTransformation,
    *,
    block_size: int = REFERENCE_BLOCK_SIZE,
    min_size: int = REFERENCE_MIN_SIZE,
    unsigned_fields: Sequence[str] = ("nu",),
    fields: Sequence[str] | None = None,
    full_precision: str | Callable[[str], bool] | None = None,
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

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`QuantizedState`. Updates come back in the gradient dtype.

    References:
      Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise
      Quantization", ICLR 2022, arXiv 2110.02861 (code: bitsandbytes).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.quantize_moments(optax.scale_by_adam(), min_size=0)
      >>> state = tx.init({'w': jnp.zeros((64, 64))})
      >>> state.inner_state.mu['w'].dtype, state.absmax['1'].shape   # codes; 16 scales
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

    def init_fn(params: base.Params) -> QuantizedState:
        flat, treedef = jax.tree_util.tree_flatten_with_path(inner.init(params))
        leaves, absmax = [x for _, x in flat], {}
        for i, (path, x) in enumerate(flat):
            if wants_quantization(path, x):
                # The barrier keeps XLA from constant-folding the quantization of
                # the (usually all-zero) initial state under jit, which is slow.
                x = jax.lax.optimization_barrier(x)
                # One compiled program per leaf shape: called eagerly (``tx.init``
                # outside jit), op-by-op dispatch of the quantizer took ~10 s.
                q = _quantize_jitted(x, signed=is_signed(path), block_size=block_size)
                leaves[i], absmax[str(i)] = q.codes, q.absmax
        return QuantizedState(jax.tree_util.tree_unflatten(treedef, leaves), absmax)

    def update_fn(
        updates: base.Updates,
        state: QuantizedState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, QuantizedState]:
        flat, treedef = jax.tree_util.tree_flatten_with_path(state.inner_state)
        leaves = [x for _, x in flat]
        for key, scales in state.absmax.items():
            i = int(key)
            leaves[i] = dequantize_blockwise(
                QuantizedArray(leaves[i], scales),
                signed=is_signed(flat[i][0]),
                block_size=block_size,
            )
        full = jax.tree_util.tree_unflatten(treedef, leaves)
        new_updates, new_inner = inner.update(updates, full, params, **extra)
        new_leaves = treedef.flatten_up_to(new_inner)
        new_absmax = {}
        for key, scales in state.absmax.items():
            i = int(key)
            q = quantize_blockwise(
                new_leaves[i], signed=is_signed(flat[i][0]), block_size=block_size
            )
            new_leaves[i] = sharding.reshard_like(q.codes, flat[i][1])
            new_absmax[key] = sharding.reshard_like(q.absmax, scales)
        new_state = QuantizedState(jax.tree_util.tree_unflatten(treedef, new_leaves), new_absmax)
        return optax.tree.cast_like(new_updates, updates), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
