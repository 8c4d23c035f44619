"""Low-rank gradient projections: the shared machinery of GaLore, APOLLO, FRUGAL, DCT-AdamW.

Every matrix leaf (see :class:`optx.MatrixLayout`) is seen as a batch of
matrices ``X ∈ R^{b × fan_in × fan_out}`` (Flax orientation; stacked layers and
attention heads are batch entries, each with its own projector). One of the two
matrix axes is *projected* to rank ``r``:

* ``axis='in'``: ``P ∈ R^{fan_in × r}``, ``R = Pᵀ X ∈ R^{r × fan_out}``,
  back-projection ``P R``;
* ``axis='out'``: ``P ∈ R^{fan_out × r}``, ``R = X P ∈ R^{fan_in × r}``,
  back-projection ``R Pᵀ``;

and the residual is ``X − back(R)``. Which axis is projected (``side``):

* ``'std'`` — the official GaLore/APOLLO/DCT-AdamW rule: project the
  **smaller** dimension (ties: the fan-in), so the projected state is
  ``r × max(m, n)`` and the projector ``min(m, n) × r``. In the PyTorch
  ``(out, in)`` layout this is "right projection when rows ≥ columns";
* ``'reverse_std'`` — the larger dimension (ties: fan-out), the official
  GaLore ``'reverse_std'``; optax.contrib.galore also projects the larger
  dimension but breaks ties on the fan-in;
* ``'in'`` / ``'out'`` — always that axis.

Projector kinds (``projection``):

* ``'svd'`` — the top-``r`` singular vectors of the current gradient (SVD in
  the compute dtype: float32, float64 for f64 parameters; GaLore arXiv
  2403.03507 Alg. 2);
* ``'random'`` — i.i.d. ``N(0, 1/r)`` entries (APOLLO arXiv 2412.05270 §4);
* ``'orthogonal'`` — a random matrix with orthonormal columns (QR of a Gaussian
  with the sign of ``diag(R)`` fixed, like ``torch.nn.init.orthogonal_``;
  FRUGAL's ``'random'``);
* ``'coordinate'`` — ``r`` random coordinates of the projected axis; only the
  int32 indices are stored (FRUGAL's ``'randperm'``/``'columns'``);
* ``'dct'`` — the ``r`` columns of the orthonormal DCT matrix best aligned with
  the gradient (largest ℓ1 norm of ``Qᵀ X``); only the int32 indices are stored,
  the basis is evaluated from its closed form (DCT-AdamW, arXiv 2505.17967);
* a callable ``(key, X, rank, axis) -> P`` of shape ``(b, d, r)`` (e.g. to inject
  a reference's random draw in tests).

Projectors are refreshed every ``update_proj_gap`` steps under ``lax.cond``
(only that step pays for the SVD/QR/scoring); random kinds carry a PRNG key per
leaf in the state and split it on each refresh.

Sharding: the projector ``(b, d, r)`` keeps the parameter's mesh axes on ``b``
and ``d`` (when each comes from a single parameter axis) and is unsharded on
``r``; index projectors ``(b, r)`` keep ``b``; projected moments ``(b, r, fan_out)``
/ ``(b, fan_in, r)`` keep ``b`` and the unprojected axis
(:func:`optx.sharding.matrix_view_specs`). The matrix math runs under
``jax.sharding.auto_axes`` with those output shardings, so state shardings are
identical across ``init`` and ``update``.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from optx._src import base, hyperparams, layouts, linalg, moments, orthogonalization, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout

PROJECTIONS = ("svd", "random", "orthogonal", "coordinate", "dct")
INDEX_PROJECTIONS = ("coordinate", "dct")
RANDOM_PROJECTIONS = ("random", "orthogonal", "coordinate")
SIDES = ("std", "reverse_std", "in", "out")
RESIDUALS = (None, "sign", "sgd")
SLOT_ORDERS = ("stable", "score")
BLOCK_ORDERS = ("random", "ascending", "descending")

ProjectionFn = Callable[[jax.Array, jax.Array, int, str], jax.Array]


# ----------------------------------------------------------------------------
# Static per-leaf geometry
# ----------------------------------------------------------------------------


class LeafGeometry(NamedTuple):
    """Static facts about one projected matrix leaf."""

    layout: ResolvedLayout
    axis: str  # 'in' or 'out'
    dim: int  # size of the projected axis
    rank: int  # effective rank, <= dim

    @property
    def batch(self) -> int:
        return self.layout.batch_size

    def projected_shape(self) -> tuple[int, int, int]:
        b, fi, fo = self.layout.matrix_shape
        return (b, self.rank, fo) if self.axis == "in" else (b, fi, self.rank)


def projected_axis(fan_in: int, fan_out: int, side: str) -> str:
    """Which matrix axis ``side`` projects: ``'in'`` or ``'out'`` (see module doc)."""
    base.check_choice("side", side, SIDES)
    if side in ("in", "out"):
        return side
    smaller_is_in = fan_in <= fan_out
    if side == "std":
        return "in" if smaller_is_in else "out"
    return "out" if smaller_is_in else "in"


def leaf_geometry(
    layout: ResolvedLayout,
    side: str,
    rank: int | None = None,
    density: float | None = None,
    density_rounding: str = "round",
) -> LeafGeometry:
    """Projected axis and effective rank ``min(rank, d)`` (or ``round(density·d)``,
    or ``floor(density·d)`` with ``density_rounding='floor'``)."""
    _, fi, fo = layout.matrix_shape
    axis = projected_axis(fi, fo, side)
    d = fi if axis == "in" else fo
    if density is None:
        r = min(int(rank), d)
    elif density_rounding == "floor":  # FRUGAL's coordinates: int(d·ρ), may be 0
        r = math.floor(float(density) * d)
    else:  # FRUGAL's round(ρ·d), at least 1 when ρ > 0 (tiny matrices)
        r = round(float(density) * d)
        r = max(r, 1) if density > 0 else 0
    return LeafGeometry(layout, axis, d, r)


def _check_rank_args(rank: Any, density: Any) -> None:
    if (rank is None) == (density is None):
        raise ValueError("Pass exactly one of `rank` (an int) and `density` (a float in [0, 1]).")
    if rank is not None:
        base.check_positive_int("rank", rank)
    else:
        # Its type (a static Python or NumPy number) is the constraint table's check.
        base.check_in_range("density", density, 0.0, 1.0, high_inclusive=True)


def _check_projection(projection: Any) -> None:
    if callable(projection):
        return
    base.check_choice("projection", projection, PROJECTIONS)


def leaf_key(seed: int, path: str) -> jax.Array:
    """Raw PRNG key data for one leaf: ``fold_in(key(seed), crc32(path))``."""
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()) & 0x7FFFFFFF)
    return jax.random.key_data(key)


# ----------------------------------------------------------------------------
# Projector computation, projection and back-projection
# ----------------------------------------------------------------------------


def next_keys(keys: Any) -> Any:
    """``key_data(split(k)[0])`` for every key-data leaf of ``keys`` (``MaskedNode``
    leaves kept): the next key of each leaf's chain, in one batched split per key
    shape. Split one leaf at a time, XLA:CPU compiles each split's rolled Threefry
    loop as its own kernel (24 of them, 0.3 s of LLVM time, for APOLLO on the
    benchmark tree of ``benchmarks/compile_time.py``). Same keys.
    """
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    leaves, treedef = jax.tree.flatten(keys, is_leaf=masked)
    groups: dict[tuple[tuple[int, ...], Any], list[int]] = {}
    for i, k in enumerate(leaves):
        if not masked(k):
            groups.setdefault((jnp.shape(k), jnp.result_type(k)), []).append(i)
    out = list(leaves)
    for members in groups.values():
        stacked = jnp.stack([leaves[i] for i in members])
        split = jax.vmap(lambda k: jax.random.split(jax.random.wrap_key_data(k))[0])(stacked)
        data = jax.random.key_data(split)
        rows = base.split_consecutive(data, [1] * len(members), data)
        for i, row in zip(members, rows, strict=True):
            out[i] = row[0]
    return jax.tree.unflatten(treedef, out)


def dct_basis(
    dim: int, indices: jax.Array | None = None, dtype: base.DTypeLike = jnp.float32
) -> jax.Array:
    """Columns of the orthonormal DCT matrix used by DCT-AdamW (arXiv 2505.17967).

    ``Q[i, j] = √(2/d) · c_i · cos(π i (2j + 1) / (2d))`` with ``c_0 = 1/√2`` and
    ``c_i = 1`` otherwise — the orthonormal DCT-II matrix; like the official
    code (``dct3_matrix``, ``sim_type='matmul'``) its **columns** ``j`` are the
    basis vectors. The phase is reduced modulo ``2π`` in integer arithmetic, so
    large ``d`` keeps the full accuracy of ``dtype``. (The official
    ``dct3_matrix`` evaluates the cosines in float32 and casts to the parameter
    dtype, so its float64 basis is float32-accurate; here a float64 basis is
    accurate to float64.)

    Args:
      dim: the length ``d`` of the basis vectors.
      indices: integer array ``(..., r)`` of basis-vector indices; default all.
      dtype: a real floating dtype (float32 default; float64 under x64).

    Returns:
      ``(d, d)`` or ``(..., d, r)`` in ``dtype``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> Q = optx.projections.dct_basis(8)
      >>> bool(jnp.allclose(Q.T @ Q, jnp.eye(8), atol=1e-6))
      True
    """
    dim = base.check_positive_int("dim", dim)
    if indices is None:
        indices = jnp.arange(dim, dtype=jnp.int32)
    j = jnp.asarray(indices, jnp.int32)[..., None, :]  # (..., 1, r)
    i = jnp.arange(dim, dtype=jnp.int32)[:, None]  # (d, 1)
    phase = (i * (2 * j + 1)) % (4 * dim)  # cos(π·k/(2d)) has period 4d in k
    dtype = jnp.dtype(dtype)
    values = jnp.cos(jnp.pi * phase.astype(dtype) / (2.0 * dim))
    c = jnp.where(i == 0, math.sqrt(0.5), 1.0).astype(dtype)
    return (math.sqrt(2.0 / dim) * c * values).astype(dtype)


def _scores(S: jax.Array, axis: str, norm: float) -> jax.Array:
    """ℓp alignment score of each basis vector; S is ``Qᵀ X`` or ``X Q``."""
    reduce_axis = 2 if axis == "in" else 1
    a = jnp.abs(S)
    if norm == 1:
        return jnp.sum(a, axis=reduce_axis)
    if norm == math.inf:  # the official ell_norm=inf: S.norm(p=inf)
        return jnp.max(a, axis=reduce_axis)
    return jnp.sum(a**norm, axis=reduce_axis)  # monotone in the ℓp norm


def compute_projector(
    x: jax.Array,
    key: jax.Array | None,
    *,
    projection: str | ProjectionFn,
    axis: str,
    rank: int,
    score_norm: float = 1.0,
) -> jax.Array:
    """A fresh projector for the matrices ``x`` ``(b, fan_in, fan_out)``.

    Dense kinds return ``(b, d, r)`` in ``x``'s compute dtype
    (``promote(x.dtype, float32)``: float32, float64 for f64 inputs; real
    for the random kinds), index kinds (``'coordinate'``, ``'dct'``)
    ``(b, r)`` int32. ``key`` is a typed PRNG key (random kinds only).
    """
    x = x.astype(base.compute_dtype(x.dtype))
    rdt = base.real_dtype(x.dtype)
    b, fi, fo = x.shape
    d = fi if axis == "in" else fo
    if callable(projection):
        p = jnp.asarray(projection(key, x, rank, axis), x.dtype)
        if p.shape != (b, d, rank):
            raise ValueError(
                f"A custom projection must return shape (b, d, r) = {(b, d, rank)}, got {p.shape}."
            )
        return p
    if projection == "svd":
        u, _, vh = linalg.svd(x)
        if axis == "in":
            return u[:, :, :rank]
        # Transpose, then slice (the same numbers as slicing first): LAPACK returns
        # ``vh`` column-major, so ``vhᵀ`` is a free row-major view and the slice lands
        # in the row-major ``(b, d, r)`` layout of the state. Sliced first, the
        # transpose is free only in a column-major result, and XLA:CPU then gives the
        # refresh ``cond``'s result that layout and copies the stored projector into
        # it, and back, on every step.
        return jnp.swapaxes(vh, 1, 2)[:, :, :rank]
    if projection == "random":
        return jax.random.normal(key, (b, d, rank), rdt) / math.sqrt(max(rank, 1))
    if projection == "orthogonal":
        q, r = linalg.qr(jax.random.normal(key, (b, d, rank), rdt))
        signs = jnp.sign(jnp.diagonal(r, axis1=1, axis2=2))
        return q * jnp.where(signs == 0, 1.0, signs)[:, None, :]
    if projection == "coordinate":
        order = jnp.argsort(jax.random.uniform(key, (b, d)), axis=1)
        return order[:, :rank].astype(jnp.int32)
    # 'dct': score every basis vector, keep the r best aligned.
    Q = dct_basis(d, dtype=rdt)
    S = jnp.einsum("dk,bdo->bko", Q, x) if axis == "in" else jnp.einsum("bid,dk->bik", x, Q)
    _, idx = jax.lax.top_k(_scores(S, axis, score_norm), rank)
    return idx.astype(jnp.int32)


def dct_select_scattered(
    x: jax.Array, *, axis: str, rank: int, score_norm: float, x_spec: PartitionSpec | None
) -> jax.Array | None:
    """:func:`compute_projector`'s ``'dct'`` selection with the scores' contraction over
    a sharded axis reduce-scattered; None where it does not apply (no Explicit mesh in
    context, or the projected axis of ``x`` unsharded in ``x_spec``).

    Inside ``auto_axes`` on an FSDP mesh, the scores ``S = Qᵀ X`` (``'in'``) contract
    the sharded axis: each device multiplies its rows of ``X`` by its rows of ``Q`` and
    the partial products are reduce-scattered onto the basis-vector axis (``k``, the
    projected axis' size, which the mesh divides); each device then scores its own
    basis vectors (summed over the other axis' blocks where that is sharded too) and
    the ``(b, d)`` scores are gathered for ``top_k``. The compiler alone all-reduces the
    whole ``S`` (twice the bytes). Same selection up to the scores' summation order."""
    mesh = jax.sharding.get_abstract_mesh()
    if x_spec is None or mesh.empty or x.ndim != 3:
        return None
    sb, si, so = (*x_spec, None, None, None)[:3]
    contracted, other = (si, so) if axis == "in" else (so, si)
    if contracted is None:
        return None
    x = x.astype(base.compute_dtype(x.dtype))
    rdt = base.real_dtype(x.dtype)
    d = x.shape[1] if axis == "in" else x.shape[2]
    k_axis = 1 if axis == "in" else 2

    def local(xl: jax.Array) -> jax.Array:
        n = xl.shape[k_axis]
        q = jax.lax.dynamic_slice_in_dim(
            dct_basis(d, dtype=rdt), jax.lax.axis_index(contracted) * n, n, axis=0
        )
        S = jnp.einsum("dk,bdo->bko", q, xl) if axis == "in" else jnp.einsum("bid,dk->bik", xl, q)
        S = jax.lax.psum_scatter(S, contracted, scatter_dimension=k_axis, tiled=True)
        score = _scores(S, axis, score_norm)
        if other is not None:  # the other axis' blocks: a sum of |S|ᵖ, or a max for p = inf
            score = (jax.lax.pmax if score_norm == math.inf else jax.lax.psum)(score, other)
        score = jax.lax.all_gather(score, contracted, axis=1, tiled=True)
        return jax.lax.top_k(score, rank)[1].astype(jnp.int32)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(sb, si, so),),
        out_specs=PartitionSpec(sb, None),
        check_vma=False,
    )(x)


def stable_slots(previous: jax.Array, selected: jax.Array) -> jax.Array:
    """Order the newly ``selected`` (distinct) indices ``(b, r)`` so that slots persist.

    A column that was selected before and stays selected keeps its slot in
    ``previous`` ``(b, r)`` (only the first slot of a repeated index counts,
    so the all-zero initial projector is valid); the newly selected columns,
    in the order given (best score first), fill the freed slots in ascending
    slot order. Moments kept per slot then stay with their column.

    Written with ``r × r`` comparisons and reductions only (the prefix counts as
    triangular sums, the slot assignment as a one-hot sum): no sort, cumulative
    sum or scatter, whose kernels cost XLA:CPU more to compile than the rest of a
    DCT-AdamW step (``benchmarks/compile_time.py``). Exact integer arithmetic.
    """

    def one(prev: jax.Array, new: jax.Array) -> jax.Array:
        r = prev.shape[0]
        pos = jnp.arange(r)
        before = pos[None, :] < pos[:, None]  # (k, j): j strictly before k
        first = ~jnp.any((prev[:, None] == prev[None, :]) & before, axis=1)
        match = (new[:, None] == prev[None, :]) & first[None, :]  # (new a, slot j)
        kept = jnp.any(match, axis=1)
        taken = jnp.any(match, axis=0)
        # Rank of each new column among the non-kept ones, and of each free slot among
        # the free ones (ascending): the n-th new column goes to the n-th free slot.
        upto = pos[None, :] <= pos[:, None]  # (k, j): j at or before k
        rank_new = jnp.sum(~kept[None, :] & upto, axis=1)
        rank_free = jnp.sum(~taken[None, :] & before, axis=1)
        to_free = ~taken[None, :] & (rank_free[None, :] == rank_new[:, None] - 1)
        target = jnp.where(kept[:, None], match, to_free)  # (a, j): one True per row
        return jnp.sum(jnp.where(target, new[:, None], 0), axis=0, dtype=new.dtype)

    return jax.vmap(one)(previous.astype(jnp.int32), selected.astype(jnp.int32))


def _dense(projector: jax.Array, projection: Any, d: int, dtype: Any) -> jax.Array:
    if projection == "dct":
        return dct_basis(d, projector, base.real_dtype(dtype))
    return projector


def project(x: jax.Array, projector: jax.Array, *, projection: Any, axis: str) -> jax.Array:
    """``Pᴴ X`` (``axis='in'``) or ``X P̄`` (``'out'``) for ``x`` ``(b, fi, fo)``.

    ``Pᵀ X`` / ``X P`` for a real projector; a complex (SVD) projector is
    conjugated, so that :func:`project_back` (``P R`` / ``R Pᵀ``) is the
    orthogonal projection onto its span also for complex leaves.
    """
    if projection == "coordinate":
        if axis == "in":
            return jnp.take_along_axis(x, projector[:, :, None], axis=1)
        return jnp.take_along_axis(x, projector[:, None, :], axis=2)
    d = x.shape[1] if axis == "in" else x.shape[2]
    p = jnp.conj(_dense(projector, projection, d, x.dtype).astype(x.dtype))
    if axis == "in":
        return jnp.einsum("bdr,bdo->bro", p, x)
    return jnp.einsum("bid,bdr->bir", x, p)


def project_back(
    r: jax.Array,
    projector: jax.Array,
    *,
    projection: Any,
    axis: str,
    matrix_shape: tuple[int, int, int],
) -> jax.Array:
    """``P R`` (``axis='in'``) or ``R Pᵀ`` (``'out'``), shape ``matrix_shape``."""
    _b, fi, fo = matrix_shape
    if projection == "coordinate":
        zeros = jnp.zeros(matrix_shape, r.dtype)
        if axis == "in":
            return jax.vmap(lambda z, i, v: z.at[i, :].set(v))(zeros, projector, r)
        return jax.vmap(lambda z, i, v: z.at[:, i].set(v))(zeros, projector, r)
    d = fi if axis == "in" else fo
    p = _dense(projector, projection, d, r.dtype).astype(r.dtype)
    if axis == "in":
        return jnp.einsum("bdr,bro->bdo", p, r)
    return jnp.einsum("bir,bdr->bid", r, p)


def project_scattered(
    x: jax.Array,
    projector: jax.Array,
    *,
    projection: Any,
    axis: str,
    x_spec: PartitionSpec | None,
    r_spec: PartitionSpec | None,
) -> jax.Array:
    """:func:`project` with the contraction over a sharded matrix axis reduce-scattered.

    Inside ``auto_axes`` on an FSDP mesh: when the contracted axis of ``x``
    (its fan-in for ``axis='in'``, fan-out for ``'out'``) is sharded (``x_spec``)
    and the projected matrix's spec ``r_spec`` puts the same mesh axes on its
    rank axis, each device projects its rows of ``x`` with its rows of the
    projector and the partial products are summed and scattered onto the rank
    axis at once (``psum_scatter``), the reduce-scatter the compiler does not
    emit by itself (it all-reduces the whole projected matrix, then slices).
    Elsewhere (index projections gather rows; other layouts) plain
    :func:`project`. Same numbers up to the summation order.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if x_spec is None or r_spec is None or mesh.empty or projection == "coordinate" or x.ndim != 3:
        return project(x, projector, projection=projection, axis=axis)
    sb, si, so = x_spec
    contracted, rank_axis = (si, 1) if axis == "in" else (so, 2)
    expected = (sb, contracted, so) if axis == "in" else (sb, si, contracted)
    if contracted is None or (*r_spec, None, None, None)[:3] != expected:
        return project(x, projector, projection=projection, axis=axis)
    d = x.shape[1] if axis == "in" else x.shape[2]
    dense = _dense(projector, projection, d, x.dtype)

    return sharding.reduce_scattered(
        lambda xl, pl: project(xl, pl, projection="dense", axis=axis),
        (x, dense),
        (PartitionSpec(sb, si, so), PartitionSpec(sb, contracted, None)),
        PartitionSpec(*expected),
        contracted,
        rank_axis,
    )


def residual(x: jax.Array, projector: jax.Array, *, projection: Any, axis: str) -> jax.Array:
    """``X − back(project(X))``: the part of ``X`` outside the subspace."""
    r = project(x, projector, projection=projection, axis=axis)
    return x - project_back(r, projector, projection=projection, axis=axis, matrix_shape=x.shape)


def _projector_shape_dtype(
    projection: Any, geo: LeafGeometry, param_dtype: Any
) -> tuple[tuple[int, ...], Any]:
    """Index kinds: int32 indices; dense kinds: the parameter's compute dtype
    (float32 for bf16/f32, float64 for f64; real for the random kinds)."""
    if projection in INDEX_PROJECTIONS:
        return (geo.batch, geo.rank), jnp.int32
    dtype = base.compute_dtype(param_dtype)
    if projection in RANDOM_PROJECTIONS:
        dtype = base.real_dtype(dtype)
    return (geo.batch, geo.dim, geo.rank), dtype


# ----------------------------------------------------------------------------
# The projected transform (GaLore / FRUGAL / DCT-AdamW / APOLLO core)
# ----------------------------------------------------------------------------


class SubspaceState(NamedTuple):
    """State of :func:`scale_by_subspace` and :func:`scale_by_apollo`.

    Attributes:
      count: steps taken (int32); refreshes happen when
        ``(count + refresh_phase) % update_proj_gap == 0`` or ``count == 0``.
      projector: per matrix leaf, the current projector (``(b, d, r)`` in the
        parameter's compute dtype,
        or ``(b, r)`` int32 indices for index kinds); ``MaskedNode`` elsewhere.
      key: per matrix leaf, raw PRNG key data (random kinds only).
      inner_state: the state of the inner transform, which runs on the
        projected leaves ``(b, r, fan_out)`` / ``(b, fan_in, r)``.
    """

    count: jax.Array
    projector: Any
    key: Any
    inner_state: Any


Combine = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, LeafGeometry], jax.Array]


def _projected_transform(
    inner: optax.GradientTransformation,
    combine: Combine,
    *,
    rank: int | None,
    density: float | None,
    projection: Any,
    side: str,
    update_proj_gap: int,
    refresh_phase: int,
    reset_on_refresh: bool,
    score_norm: float,
    seed: int,
    layout: LayoutSpec,
    store_projector: bool = True,
    slot_order: str = "score",
    density_rounding: str = "round",
) -> optax.GradientTransformationExtraArgs:
    """Project → ``inner`` in the subspace → ``combine(X, R, N, P, geometry)``."""
    _check_rank_args(rank, density)
    _check_projection(projection)
    base.check_choice("side", side, SIDES)
    base.check_choice("slot_order", slot_order, SLOT_ORDERS)
    base.check_choice("density_rounding", density_rounding, ("round", "floor"))
    gap = base.check_positive_int("update_proj_gap", update_proj_gap)
    phase = base.check_positive_int("refresh_phase", refresh_phase, allow_zero=True)
    seed = base.check_positive_int("seed", seed, allow_zero=True)
    if score_norm <= 0:
        raise ValueError(f"`score_norm` must be > 0, got {score_norm}.")
    uses_key = callable(projection) or projection in RANDOM_PROJECTIONS
    if not store_projector and projection != "random":
        raise ValueError(
            "store_projector=False regenerates the projection from its PRNG key every "
            f"step; it is only offered for projection='random', got {projection!r}."
        )
    inner = optax.with_extra_args_support(inner)
    resolve = layouts.resolved_layout_fn(layout)

    def geometry(lay: ResolvedLayout) -> LeafGeometry:
        return leaf_geometry(lay, side, rank, density, density_rounding)

    def specs(x: Any, geo: LeafGeometry) -> tuple[Any, Any]:
        """(projector spec, projected-matrix spec) for leaf ``x``."""
        view = sharding.matrix_view_specs(x, geo.layout)
        if view is None:
            return None, None
        sb, si, so = view
        if projection in INDEX_PROJECTIONS:
            p_spec = PartitionSpec(sb, None)
        else:
            p_spec = PartitionSpec(sb, si if geo.axis == "in" else so, None)
        r_spec = PartitionSpec(sb, None, so) if geo.axis == "in" else PartitionSpec(sb, si, None)
        # Mesh axes the view leaves unused (merged axis groups, a sharded batch of one) go
        # on another axis, so projections and projected moments are spread over every device.
        # The projected matrix prefers its rank axis: the projection then reduce-scatters
        # (half an all-reduce) and the projection back gathers it, the all-reduce's bytes.
        # A projector sharded on another matrix axis than the gradient's is gathered per
        # step (r/fan of the matrix; benchmarks/comm_budget.py).
        rank_axis = 1 if geo.axis == "in" else 2
        r_spec = sharding.fill_spec(r_spec, geo.projected_shape(), x, prefer=(rank_axis,))
        if projection not in INDEX_PROJECTIONS:
            p_shape = _projector_shape_dtype(projection, geo, x.dtype)[0]
            p_spec = sharding.fill_spec(p_spec, p_shape, x)
        return p_spec, r_spec

    def templates(params: base.Params) -> Any:
        def leaf(path: Any, p: Any) -> Any:
            if p is None:
                return None
            lay = resolve(base.path_to_str(path), p)
            if lay is None:
                return p
            geo = geometry(lay)
            _, r_spec = specs(p, geo)
            return sharding.zeros_with_spec(geo.projected_shape(), p.dtype, r_spec, like=p)

        return jax.tree_util.tree_map_with_path(leaf, params, is_leaf=base.is_leaf_or_none)

    def init_fn(params: base.Params) -> SubspaceState:
        def init_projector(p: Any, lay: ResolvedLayout) -> Any:
            if not store_projector:
                return optax.MaskedNode()
            geo = geometry(lay)
            shape, dtype = _projector_shape_dtype(projection, geo, p.dtype)
            p_spec, _ = specs(p, geo)
            return sharding.zeros_with_spec(shape, dtype, p_spec, like=p)

        def init_key(path: Any, p: Any) -> Any:
            if p is None:
                return None
            name = base.path_to_str(path)
            if not uses_key or resolve(name, p) is None:
                return optax.MaskedNode()
            return leaf_key(seed, name)

        return SubspaceState(
            count=jnp.zeros([], jnp.int32),
            projector=layouts.init_per_matrix_state(init_projector, layout, params),
            key=jax.tree_util.tree_map_with_path(init_key, params, is_leaf=base.is_leaf_or_none),
            inner_state=inner.init(templates(params)),
        )

    def update_fn(
        updates: base.Updates,
        state: SubspaceState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, SubspaceState]:
        del params
        count = state.count
        refresh = jnp.logical_or(count == 0, (count + phase) % gap == 0)

        def fresh_projector(
            x: jax.Array, key: Any, geo: LeafGeometry, previous: jax.Array, selected: Any = None
        ) -> jax.Array:
            """The new projector of matrices ``x`` (``selected``: DCT columns already
            chosen by the sharded scoring), DCT slots kept stable against ``previous``."""
            new = selected
            if new is None:
                new = compute_projector(
                    x,
                    key,
                    projection=projection,
                    axis=geo.axis,
                    rank=geo.rank,
                    score_norm=score_norm,
                )
            if projection == "dct" and slot_order == "stable":
                new = stable_slots(previous, new)
            return new

        def down(
            g: jax.Array, lay: ResolvedLayout, proj: Any, key: Any, nxt: Any, owned: Any
        ) -> Any:
            geo = geometry(lay)
            p_spec, r_spec = specs(g, geo)
            has_key = not isinstance(key, optax.MaskedNode)
            if not store_projector:
                return regenerate(g, lay, geo, key, nxt, p_spec, r_spec)

            x_spec = sharding.matrix_view_specs(g, lay)
            view = None if x_spec is None else PartitionSpec(*x_spec)

            def projected(x: jax.Array, new_proj: jax.Array) -> jax.Array:
                return project_scattered(
                    x, new_proj, projection=projection, axis=geo.axis, x_spec=view, r_spec=r_spec
                )

            if not isinstance(owned, optax.MaskedNode):  # refreshed by :func:`refresh_on_owners`

                def project_only(g: jax.Array, new_proj: jax.Array) -> jax.Array:
                    x = layouts.to_matrices(g, lay).astype(base.compute_dtype(g.dtype))
                    return projected(x, new_proj).astype(g.dtype)

                r = sharding.call_with_out_specs(project_only, (g, owned), r_spec)
                return r, owned, owned, key

            def fn(g: jax.Array, proj: jax.Array, key: Any, nxt: Any, refresh: jax.Array) -> Any:
                x = layouts.to_matrices(g, lay).astype(base.compute_dtype(g.dtype))

                def fresh(_: Any) -> tuple[jax.Array, Any]:
                    if has_key:  # key chain k_{n+1} = split(k_n)[0] (next_keys), the period's
                        use, new_key = jax.random.wrap_key_data(nxt), nxt
                    else:
                        use, new_key = None, key
                    new = None
                    if projection == "dct":
                        new = dct_select_scattered(
                            x, axis=geo.axis, rank=geo.rank, score_norm=score_norm, x_spec=view
                        )
                    new = fresh_projector(x, use, geo, proj, new)
                    return new.astype(proj.dtype), new_key

                new_proj, new_key = base.cond(refresh, fresh, lambda _: (proj, key), None)
                return projected(x, new_proj).astype(g.dtype), new_proj, new_key

            key_arg = key if has_key else jnp.zeros((0,), jnp.uint32)
            nxt_arg = nxt if has_key else key_arg
            out_specs = (r_spec, p_spec, PartitionSpec())
            r, new_proj, new_key = sharding.call_with_out_specs(
                fn, (g, proj, key_arg, nxt_arg, refresh), out_specs
            )
            return r, new_proj, new_proj, (new_key if has_key else key)

        def refresh_on_owners(updates: base.Updates, projectors: Any, refresh: jax.Array) -> Any:
            """SVD projectors of FSDP-sharded matrices, each decomposed on one device.

            Per leaf the new projector where the refresh runs through
            :func:`orthogonalization.map_fsdp_matrix_results` (one ``cond`` for all of
            them), else ``MaskedNode``. An SVD needs its matrix whole; gathering it on
            every device moves ``(N − 1)/N`` of it, handing each device its share of the
            matrices ``(N − 1)/N²`` (and as much of the projectors back): distributed
            Muon's argument (``benchmarks/comm_budget.py``). Only under an Explicit mesh
            with FSDP-sharded matrices; elsewhere every leaf refreshes in its own ``cond``.
            """
            flat, treedef, lays = layouts.leaves_with_layouts(updates, layout)
            owned: list[Any] = [optax.MaskedNode()] * len(flat)
            unsharded = jax.sharding.get_abstract_mesh().empty and all(
                sharding.spec_of(g) is None for (_, g), lay in zip(flat, lays) if lay is not None
            )
            if projection == "dct" and store_projector:
                if unsharded:
                    return refresh_by_shape(flat, treedef, lays, projectors, refresh)
                return jax.tree_util.tree_unflatten(treedef, owned)
            if projection != "svd" or not store_projector:
                return jax.tree_util.tree_unflatten(treedef, owned)
            stored = treedef.flatten_up_to(projectors)
            at, leaves, like = [], [], []
            for k, ((_, g), lay) in enumerate(zip(flat, lays)):
                if lay is not None:
                    at.append(k)
                    leaves.append((g, lay))
                    like.append(stored[k])
            geos = [geometry(lay) for _, lay in leaves]
            groups = orthogonalization.fsdp_result_groups(
                leaves, like, key=lambda i: (geos[i].axis, geos[i].rank)
            )
            handled = [i for group in groups for i in group.members]
            if not handled:
                return jax.tree_util.tree_unflatten(treedef, owned)

            def svd_projectors(i: int) -> Callable[[jax.Array], jax.Array]:
                def fn(x: jax.Array) -> jax.Array:
                    x = x.astype(base.compute_dtype(x.dtype))
                    new = compute_projector(
                        x, None, projection="svd", axis=geos[i].axis, rank=geos[i].rank
                    )
                    return new.astype(like[i].dtype)

                return fn

            def fresh() -> list[jax.Array]:
                done = orthogonalization.map_fsdp_matrix_results(
                    leaves, like, svd_projectors, groups
                )
                return [done[i] for i in handled]

            new = base.cond(refresh, fresh, lambda: [like[i] for i in handled])
            for i, p in zip(handled, new):
                owned[at[i]] = p
            return jax.tree_util.tree_unflatten(treedef, owned)

        def refresh_by_shape(
            flat: list[Any], treedef: Any, lays: list[Any], projectors: Any, refresh: jax.Array
        ) -> Any:
            """DCT column choices of unsharded matrices, same shapes stacked, one ``cond``.

            The selection (scores against the basis, ``top_k``, :func:`stable_slots`) is
            per matrix, so the matrices of one ``(fan_in, fan_out)``, axis, rank and
            dtype are one batch: one selection program per shape instead of one per
            leaf, and one refresh ``cond`` for the tree instead of one per leaf
            (DCT-AdamW on the benchmark tree: 24 of each before; compile 1.42 → 1.16 s,
            ``benchmarks/compile_time.py``). Only for unsharded trees outside a mesh;
            sharded ones keep the per-leaf refreshes (the sharded scoring of
            :func:`dct_select_scattered`). GaLore's SVDs stay per leaf: stacked, XLA:CPU
            compiled them slower (0.61 → 0.87 s), though into fewer instructions.
            """
            owned: list[Any] = [optax.MaskedNode()] * len(flat)
            stored = treedef.flatten_up_to(projectors)
            groups: dict[tuple[Any, ...], list[int]] = {}
            for k, ((_, g), lay) in enumerate(zip(flat, lays)):
                if lay is not None:
                    geo = geometry(lay)
                    cdt = base.compute_dtype(g.dtype)
                    key = (*lay.matrix_shape[1:], geo.axis, geo.rank, jnp.dtype(cdt))
                    groups.setdefault(key, []).append(k)

            def choose(members: list[int]) -> list[jax.Array]:
                geo = geometry(lays[members[0]])
                xs = [layouts.to_matrices(flat[k][1], lays[k]) for k in members]
                x = jnp.concatenate(xs).astype(base.compute_dtype(flat[members[0]][1].dtype))
                previous = jnp.concatenate([stored[k] for k in members])
                new = fresh_projector(x, None, geo, previous)
                splits = list(itertools.accumulate(lays[k].batch_size for k in members))[:-1]
                return [p.astype(stored[k].dtype) for p, k in zip(jnp.split(new, splits), members)]

            order = [k for members in groups.values() for k in members]
            if not order:
                return jax.tree_util.tree_unflatten(treedef, owned)

            def fresh() -> list[jax.Array]:
                return [p for members in groups.values() for p in choose(members)]

            new = base.cond(refresh, fresh, lambda: [stored[k] for k in order])
            for k, p in zip(order, new):
                owned[k] = p
            return jax.tree_util.tree_unflatten(treedef, owned)

        def regenerate(
            g: jax.Array,
            lay: ResolvedLayout,
            geo: LeafGeometry,
            key: Any,
            nxt: Any,
            p_spec: Any,
            r_spec: Any,
        ) -> Any:
            """Seed-only state: the draw of the current period is re-made every step."""

            def fn(g: jax.Array, key: jax.Array, nxt: jax.Array, refresh: jax.Array) -> Any:
                x = layouts.to_matrices(g, lay).astype(base.compute_dtype(g.dtype))
                current = jnp.where(refresh, nxt, key)
                p = compute_projector(
                    x,
                    jax.random.wrap_key_data(current),
                    projection=projection,
                    axis=geo.axis,
                    rank=geo.rank,
                )
                r = project(x, p, projection=projection, axis=geo.axis)
                return r.astype(g.dtype), p, current

            out_specs = (r_spec, p_spec, PartitionSpec())
            r, p, new_key = sharding.call_with_out_specs(fn, (g, key, nxt, refresh), out_specs)
            return r, p, optax.MaskedNode(), new_key

        owned = refresh_on_owners(updates, state.projector, refresh)
        out = layouts.map_matrix_leaves(
            down,
            layout,
            updates,
            state.projector,
            state.key,
            next_keys(state.key),
            owned,
            otherwise=lambda g, proj, key, nxt, owned: (g, proj, proj, key),
        )
        low, used_proj, new_proj, new_key = base.unzip_tree(updates, out, 4)

        inner_state = state.inner_state
        if reset_on_refresh:
            fresh_state = optax.tree.cast_like(inner.init(low), inner_state)
            inner_state = base.cond(refresh, lambda: fresh_state, lambda: inner_state)
        directions, new_inner = inner.update(low, inner_state, None, **extra)

        def up(g: jax.Array, lay: ResolvedLayout, r: jax.Array, n: jax.Array, proj: Any) -> Any:
            geo = geometry(lay)

            def fn(g: jax.Array, r: jax.Array, n: jax.Array, proj: jax.Array) -> jax.Array:
                x = layouts.to_matrices(g, lay).astype(base.compute_dtype(g.dtype))
                out = combine(x, r.astype(x.dtype), n.astype(x.dtype), proj, geo)
                return layouts.from_matrices(out, lay).astype(g.dtype)

            return sharding.call_with_out_specs(fn, (g, r, n, proj), sharding.spec_or_replicated(g))

        new_updates = layouts.map_matrix_leaves(
            up,
            layout,
            updates,
            low,
            directions,
            used_proj,
            otherwise=lambda g, r, n, proj: n.astype(g.dtype),
        )
        return new_updates, SubspaceState(
            count=optax.safe_increment(count),
            projector=new_proj,
            key=new_key,
            inner_state=new_inner,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@hyperparams.validated()
def scale_by_subspace(
    inner: optax.GradientTransformation | None = None,
    *,
    rank: int | None = None,
    density: float | None = None,
    projection: str | ProjectionFn = "svd",
    side: str = "std",
    update_proj_gap: int = 200,
    scale: float = 1.0,
    residual: str | None = None,
    residual_scale: float = 1.0,
    reset_on_refresh: bool = False,
    refresh_phase: int = 0,
    score_norm: float = 1.0,
    seed: int = 0,
    store_projector: bool = True,
    slot_order: str = "stable",
    density_rounding: str = "round",
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` on low-rank projections of each matrix and projects back.

    Per matrix ``X`` (a leaf's ``(fan_in, fan_out)`` slice, see
    :mod:`optx._src.projection` for the side rule and projector kinds):

    .. math::

      P_t = \\begin{cases} \\mathrm{proj}(X_t) & t \\bmod T = 0 \\\\ P_{t-1} & \\text{otherwise}
      \\end{cases}, \\qquad R_t = \\mathrm{down}_{P_t}(X_t), \\qquad
      N_t = \\mathrm{inner}(R_t)

      U_t = α\\, \\mathrm{up}_{P_t}(N_t) + ρ\\, ψ\\big(X_t - \\mathrm{up}_{P_t}(R_t)\\big)

    with ``ψ = sign`` (``residual='sign'``), the identity (``'sgd'``) or absent
    (``None``). This is GaLore (arXiv 2403.03507, Alg. 2: ``inner`` = Adam,
    ``residual=None``), FRUGAL (arXiv 2411.07837, Alg. 1: ``residual='sign'``,
    ``reset_on_refresh=True``) and DCT-AdamW (arXiv 2505.17967, Alg. 1:
    ``projection='dct'``, ``refresh_phase=1``). Unlike optax.contrib.galore it
    handles batch axes (stacked layers, attention heads, conv kernels get one
    projector per matrix), any projector kind, any state-carrying ``inner`` (its
    state is allocated at the projected shapes; wrap it in
    :func:`optx.quantization.quantize_moments` for 8-bit moments) and the official side rule.

    Leaves without a layout go through ``inner`` at full size (as in
    optax.contrib.galore). ``inner`` receives ``params=None`` (projected
    parameters do not exist), so transforms that need params cannot run inside.

    Args:
      inner: the transform run in the subspace (default: ``optx.scale_by_adam()``).
      rank: subspace rank ``r`` (static; default 128 unless ``density`` is
        given), clipped to the projected dimension.
      density: alternatively, ``r = round(density · d)`` per matrix (FRUGAL's ρ;
        ``density=0`` leaves only the residual update).
      projection: ``'svd'``, ``'random'``, ``'orthogonal'``, ``'coordinate'``,
        ``'dct'`` or a callable ``(key, X, r, axis) -> P`` of shape ``(b, d, r)``.
      side: ``'std'`` (official: project the smaller dimension),
        ``'reverse_std'``, ``'in'`` or ``'out'``.
      update_proj_gap: refresh period ``T`` (static).
      scale: ``α``, multiplies the back-projected inner update (GaLore's
        ``scale``; linear).
      residual: ``None``, ``'sign'`` or ``'sgd'``: the state-free update of the
        part of the gradient outside the subspace (FRUGAL).
      residual_scale: ``ρ`` (FRUGAL's ``inactive_lr_scale``).
      reset_on_refresh: re-initialize ``inner``'s state (counters included) at
        every refresh (FRUGAL's ``reset_statistics``; GaLore keeps it).
      refresh_phase: refresh when ``count == 0`` or ``(count + phase) % T == 0``
        (``count`` = steps before this one). GaLore/APOLLO/FRUGAL use 0; the
        official DCT-AdamW uses 1 (its 1-based counter: steps 1, T, 2T, ...).
      score_norm: ``p`` of the ℓp alignment score of DCT columns (official 1;
        ``math.inf``: the largest ``|S|`` of each column).
      seed: seed of the per-leaf PRNG keys (random kinds; static).
      store_projector: keep the projector in the state (default, as the
        official codes do). ``False`` (``projection='random'`` only) keeps just
        the PRNG key and regenerates the Gaussian draw every step — the same
        numbers, ``r · min(m, n)`` fewer floats per matrix, one RNG call per step.
      slot_order: ``projection='dct'`` only: the order of the selected columns,
        which decides which projected moments each column inherits at a refresh.
        ``'stable'`` (default): a column that stays selected keeps its slot (and
        its moments); new columns, best score first, fill the freed slots.
        ``'score'``: slots by descending score (``lax.top_k``).
      density_rounding: ``'round'`` (``round(ρ·d)``, at least 1; FRUGAL's
        GaLore-style projectors) or ``'floor'`` (``floor(ρ·d)``, possibly 0;
        FRUGAL's coordinate projector).
      layout: a :data:`~optx.LayoutSpec` (default: the default router's).

    References:
      Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
      Projection", ICML 2024, arXiv 2403.03507; Zmushko et al., "FRUGAL:
      Memory-Efficient Optimization by Reducing State Overhead for Scalable
      Training", ICML 2025, arXiv 2411.07837; Modoranu et al., "SVD-Free
      Low-Rank Adaptive Gradient Optimization for Large Language Models",
      arXiv 2505.17967.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_subspace(rank=2, update_proj_gap=10)
      >>> g = {'kernel': jnp.ones((8, 4)) + jnp.eye(8, 4)}
      >>> u, state = tx.update(g, tx.init(g))
      >>> state.projector['kernel'].shape   # (batch, fan_out = 4 < 8, rank)
      (1, 4, 2)
    """
    base.check_choice("residual", residual, RESIDUALS)
    inner = moments.scale_by_adam() if inner is None else inner

    def combine(x: jax.Array, r: jax.Array, n: jax.Array, proj: Any, geo: LeafGeometry) -> Any:
        out = scale * project_back(
            n, proj, projection=projection, axis=geo.axis, matrix_shape=x.shape
        )
        if residual is not None:
            res = x - project_back(
                project(x, proj, projection=projection, axis=geo.axis),
                proj,
                projection=projection,
                axis=geo.axis,
                matrix_shape=x.shape,
            )
            out = out + residual_scale * (jnp.sign(res) if residual == "sign" else res)
        return out

    return _projected_transform(
        inner,
        combine,
        rank=128 if rank is None and density is None else rank,
        density=density,
        projection=projection,
        side=side,
        update_proj_gap=update_proj_gap,
        refresh_phase=refresh_phase,
        reset_on_refresh=reset_on_refresh,
        score_norm=score_norm,
        seed=seed,
        layout=layout,
        store_projector=store_projector,
        slot_order=slot_order,
        density_rounding=density_rounding,
    )


APOLLO_SCALE_TYPES = ("channel", "tensor")


@hyperparams.validated()
def scale_by_apollo(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    *,
    rank: int = 256,
    scale_type: str = "channel",
    projection: str | ProjectionFn = "random",
    side: str = "std",
    update_proj_gap: int = 200,
    seed: int = 0,
    store_projector: bool = True,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """APOLLO's structured scaling of the raw gradient (arXiv 2412.05270, Alg. 1).

    Per matrix ``G`` with a random projection ``P`` (redrawn every ``T`` steps,
    moments kept), Adam moments live in the low-rank space only and serve to
    *measure* how much Adam would rescale each channel:

    .. math::

      R_t = \\mathrm{down}_P(G_t), \\quad M_t = β_1 M_{t-1} + (1-β_1) R_t, \\quad
      V_t = β_2 V_{t-1} + (1-β_2) R_t^2, \\quad \\tilde R_t = M_t / (\\sqrt{V_t} + ε)

      s_j = \\|\\tilde R_{t,:j}\\| / (\\|R_{t,:j}\\| + 10^{-8})\\ \\text{(channel)}, \\quad
      s = \\|\\tilde R_t\\|_F / (\\|R_t\\|_F + 10^{-8})\\ \\text{(tensor)}, \\quad
      \\tilde G_t = G_t ⊙ s

    The channels are the entries of the **unprojected** (larger, with
    ``side='std'``) dimension and the norms run over the rank axis. Official
    quirks reproduced: ε = 1e-6 on the *uncorrected* ``√V`` with no bias
    correction here (the alias folds ``√(1−β₂ᵗ)/(1−β₁ᵗ)`` into the step size);
    the **raw** full-rank gradient is scaled (pytorch-optimizer's APOLLO scales
    ``R`` and projects back instead — not the official method); the random
    projection has i.i.d. ``N(0, 1/r)`` entries and is redrawn at steps
    ``0, T, 2T, ...`` without resetting the moments. The official draws come
    from a seeded ``torch.Generator`` chain; optx draws from a per-leaf JAX key
    kept in the state (the bits differ, the distribution is the same). The
    √α scale and the norm-growth limiter are separate transforms
    (:func:`optx.scale_by_norm_growth_limiter`), see :func:`optx.apollo`.

    Leaves without a layout get ``M/(√V + ε)`` at full size.

    Args:
      b1, b2, eps: Adam moments in the projected space (ε outside the
        uncorrected square root).
      rank: projection rank (static; APOLLO ¼·d_model, APOLLO-Mini 1).
      scale_type: ``'channel'`` (APOLLO) or ``'tensor'`` (APOLLO-Mini).
      projection: ``'random'`` (official default), ``'svd'`` (official option),
        any other kind of :func:`scale_by_subspace`, or a callable.
      side: ``'std'`` (official), see :func:`scale_by_subspace`.
      update_proj_gap: ``T`` (static; 200 in the scripts).
      seed: PRNG seed of the projections (static).
      store_projector: keep the projection in the state (official); ``False``
        keeps only its key and regenerates it every step (same numbers), see
        :func:`scale_by_subspace`.
      mu_dtype, nu_dtype: dtypes of the projected moments.
      layout: a :data:`~optx.LayoutSpec`.

    References:
      Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance",
      MLSys 2025, arXiv 2412.05270 (code: github.com/zhuhanqing/APOLLO,
      PyPI apollo-torch 1.0.3).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_apollo(rank=2, scale_type='tensor')
      >>> g = {'kernel': jnp.ones((8, 4))}
      >>> u, _ = tx.update(g, tx.init(g))
      >>> u['kernel'].shape
      (8, 4)
    """
    base.check_choice("scale_type", scale_type, APOLLO_SCALE_TYPES)
    inner = moments.scale_by_adam(
        b1,
        b2,
        eps,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        eps_placement="uncorrected",
        bias_correction=False,
    )

    def combine(x: jax.Array, r: jax.Array, n: jax.Array, proj: Any, geo: LeafGeometry) -> Any:
        del proj
        if scale_type == "tensor":
            num = jnp.sqrt(jnp.sum(base.abs_sq(n), axis=(1, 2), keepdims=True))
            den = jnp.sqrt(jnp.sum(base.abs_sq(r), axis=(1, 2), keepdims=True))
        else:
            rank_axis = 1 if geo.axis == "in" else 2
            num = jnp.sqrt(jnp.sum(base.abs_sq(n), axis=rank_axis, keepdims=True))
            den = jnp.sqrt(jnp.sum(base.abs_sq(r), axis=rank_axis, keepdims=True))
        return x * (num / (den + 1e-8))

    return _projected_transform(
        inner,
        combine,
        rank=rank,
        density=None,
        projection=projection,
        side=side,
        update_proj_gap=update_proj_gap,
        refresh_phase=0,
        reset_on_refresh=False,
        score_norm=1.0,
        seed=seed,
        layout=layout,
        store_projector=store_projector,
    )


# ----------------------------------------------------------------------------
# Block (whole-matrix) subspaces: FRUGAL's default
# ----------------------------------------------------------------------------


class BlockSubspaceState(NamedTuple):
    """State of :func:`scale_by_block_subspace`.

    Attributes:
    ``active``, ``cursor`` and ``inner_state``'s moments mirror the parameter
    tree (as optax states do, so ``optax.tree.map_params``, ``optax.masked``
    and checkpoint tools apply): blocks are chosen per matrix-shape group
    across leaves, and each group's state sits at the group's **first** leaf
    (in tree order); every other leaf holds ``optax.MaskedNode()``.

    Attributes:
      count: steps taken (int32).
      active: at a group's first leaf, the int32 indices of the active matrices
        among the group's ``N`` matrices.
      cursor: at a group's first leaf, the next start index of the cyclic
        orders (int32).
      key: raw PRNG key data for the random order.
      inner_state: ``inner``'s state on the active blocks: ``(k, fan_in,
        fan_out)`` at each group's first leaf.
    """

    count: jax.Array
    active: Any
    cursor: Any
    key: jax.Array
    inner_state: Any


def _group_key(fi: int, fo: int, dtype: Any) -> str:
    return f"{fi}x{fo}_{jnp.dtype(dtype).name}"


@hyperparams.validated()
def scale_by_block_subspace(
    inner: optax.GradientTransformation | None = None,
    *,
    density: float = 0.25,
    update_proj_gap: int = 200,
    order: str = "random",
    residual: str | None = "sign",
    residual_scale: float = 1.0,
    reset_on_refresh: bool = True,
    seed: int = 0,
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """FRUGAL's block subspace: a ``density`` fraction of whole matrices is stateful.

    Every ``T`` steps a set of active matrices is chosen; active matrices get
    ``inner`` (AdamW's direction in FRUGAL), the others the state-free
    ``ψ(G)`` (``sign`` or identity) times ``residual_scale``:

    .. math::

      U_i = \\begin{cases} \\mathrm{inner}(G_i) & i \\in \\mathcal A_t \\\\
                           ρ\\,ψ(G_i) & \\text{otherwise} \\end{cases}

    (arXiv 2411.07837, Alg. 1 with the blockwise projection of §4). Each matrix
    of a leaf's batch (a stacked layer, an attention head group) is one block.

    Deviation from the official ``BlockOptimizer`` (documented, for static
    shapes under ``jit``): blocks are grouped by matrix shape and
    ``round(density · N_s)`` blocks are active **in each shape group** ``s``
    (the official code picks ``round(density · N)`` tensors over all shapes), so
    the stateful memory is exactly ``k_s · fan_in · fan_out`` per group. The
    orders ``'random'`` (official default), ``'ascending'`` and
    ``'descending'`` (the official 130M script's choice) cycle within each
    group; ``'mirror'`` is not provided. ``inner``'s state (counters included)
    is re-initialized at every refresh when ``reset_on_refresh`` (official
    default). Active matrices are gathered replicated (not sharded). Leaves
    without a layout pass through unchanged.

    Args:
      inner: the stateful transform (default ``optx.scale_by_adam()``).
      density: fraction ρ of active matrices per shape group (static): round(ρ·N)
        blocks of a group of N, at least 1 when ρ > 0 (with a warning when
        round(ρ·N) = 0, which would leave the group to the residual alone).
      update_proj_gap: ``T`` (static).
      order: ``'random'``, ``'ascending'`` or ``'descending'``.
      residual: ``'sign'`` (signSGD, official default), ``'sgd'`` or ``None``.
      residual_scale: FRUGAL's ``inactive_lr_scale``.
      reset_on_refresh: FRUGAL's ``reset_statistics``.
      seed: PRNG seed (static).
      layout: a :data:`~optx.LayoutSpec`.

    References:
      Zmushko, Beznosikov, Takáč, Horváth, "FRUGAL: Memory-Efficient
      Optimization by Reducing State Overhead for Scalable Training",
      ICML 2025, arXiv 2411.07837.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_block_subspace(density=0.5)
      >>> g = {'stack': {'kernel': jnp.ones((4, 8, 8))}}
      >>> state = tx.init(g)
      >>> state.active['stack']['kernel'].shape   # 2 of the 4 stacked matrices
      (2,)
    """
    density = float(density)  # a static number in [0, 1]: checked by the constraint table
    gap = base.check_positive_int("update_proj_gap", update_proj_gap)
    base.check_choice("order", order, BLOCK_ORDERS)
    base.check_choice("residual", residual, RESIDUALS)
    seed = base.check_positive_int("seed", seed, allow_zero=True)
    inner = optax.with_extra_args_support(moments.scale_by_adam() if inner is None else inner)
    resolve = layouts.resolved_layout_fn(layout)

    def groups_of(tree: Any) -> tuple[list[Any], Any, dict[str, list[int]], list[Any]]:
        """Flat leaves, treedef, group -> [leaf positions], and per-leaf layouts."""
        flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
        lays: list[Any] = []
        groups: dict[str, list[int]] = defaultdict(list)
        for k, (path, x) in enumerate(flat):
            lay = resolve(base.path_to_str(path), x)
            lays.append(lay)
            if lay is not None:
                _, fi, fo = lay.matrix_shape
                groups[_group_key(fi, fo, x.dtype)].append(k)
        return [x for _, x in flat], treedef, dict(groups), lays

    def sizes(leaves: list[Any], groups: dict[str, list[int]], lays: list[Any]) -> Any:
        """Per group with at least one active block: (N, k, fan_in, fan_out, dtype)."""
        out = {}
        for g, idx in groups.items():
            n = sum(lays[i].batch_size for i in idx)
            n_active = round(float(density) * n)
            if n_active == 0 and density > 0:
                # round(ρ·N) = 0 would silently make FRUGAL pure signSGD.
                warnings.warn(
                    f"FRUGAL: round(density·N) = round({float(density)}·{n}) = 0 active "
                    f"blocks among {n} matrices of shape {lays[idx[0]].matrix_shape[1:]}; "
                    "taking 1.",
                    stacklevel=2,
                )
                n_active = 1
            if n_active > 0:  # groups without active blocks carry no state at all
                _, fi, fo = lays[idx[0]].matrix_shape
                out[g] = (n, n_active, fi, fo, leaves[idx[0]].dtype)
        return out

    def at_owners(treedef: Any, groups: dict[str, list[int]], values: dict[str, Any]) -> Any:
        """A parameter-structured tree: ``values[g]`` at group ``g``'s first leaf."""
        owners = {idx[0]: g for g, idx in groups.items() if g in values}
        n = treedef.num_leaves
        return treedef.unflatten(
            [values[owners[k]] if k in owners else optax.MaskedNode() for k in range(n)]
        )

    def by_group(treedef: Any, groups: dict[str, list[int]], tree: Any, info: Any) -> Any:
        """Inverse of :func:`at_owners` for the groups in ``info``."""
        column = treedef.flatten_up_to(tree)
        return {g: column[idx[0]] for g, idx in groups.items() if g in info}

    def init_fn(params: base.Params) -> BlockSubspaceState:
        leaves, treedef, groups, lays = groups_of(params)
        info = sizes(leaves, groups, lays)
        # The active blocks' state: stacked (k, fan_in, fan_out), sharded over the mesh by
        # sharding.fill_spec (replicated on no mesh).
        templates = {
            g: sharding.zeros_filled((k, fi, fo), dt, None, leaves[groups[g][0]])
            for g, (_, k, fi, fo, dt) in info.items()
        }
        active = {g: jnp.zeros((k,), jnp.int32) for g, (_, k, _, _, _) in info.items()}
        cursor = {
            g: jnp.asarray(n - 1 if order == "descending" else 0, jnp.int32)
            for g, (n, _, _, _, _) in info.items()
        }
        return BlockSubspaceState(
            count=jnp.zeros([], jnp.int32),
            active=at_owners(treedef, groups, active),
            cursor=at_owners(treedef, groups, cursor),
            key=sharding.put_like(jax.random.key_data(jax.random.key(seed)), params),
            inner_state=inner.init(at_owners(treedef, groups, templates)),
        )

    def update_fn(
        updates: base.Updates,
        state: BlockSubspaceState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, BlockSubspaceState]:
        del params
        leaves, treedef, groups, lays = groups_of(updates)
        info = sizes(leaves, groups, lays)
        refresh = state.count % gap == 0

        def matrices(k: int) -> jax.Array:
            x = sharding.replicate(leaves[k])
            return layouts.to_matrices(x, lays[k])

        stacks = {
            g: jnp.concatenate([matrices(k) for k in idx], axis=0) for g, idx in groups.items()
        }
        use_key, next_key = jax.random.split(jax.random.wrap_key_data(state.key))
        old_active = by_group(treedef, groups, state.active, info)
        old_cursor = by_group(treedef, groups, state.cursor, info)
        new_active, new_cursor = {}, {}
        for j, (g, (n, k, _, _, _)) in enumerate(sorted(info.items())):
            cur = old_cursor[g]
            if order == "random":
                draw = jax.random.permutation(jax.random.fold_in(use_key, j), n)[:k]
                chosen, moved = draw.astype(jnp.int32), cur
            elif order == "ascending":
                chosen = ((cur + jnp.arange(k)) % n).astype(jnp.int32)
                moved = ((cur + k) % n).astype(jnp.int32)
            else:
                chosen = ((cur - jnp.arange(k)) % n).astype(jnp.int32)
                moved = ((cur - k) % n).astype(jnp.int32)
            new_active[g] = jnp.where(refresh, chosen, old_active[g])
            new_cursor[g] = jnp.where(refresh, moved, cur)

        def take(g: str) -> jax.Array:
            _, k, fi, fo, _ = info[g]
            spec = sharding.fill_spec(PartitionSpec(), (k, fi, fo), leaves[groups[g][0]])
            return sharding.reshard(jnp.take(stacks[g], new_active[g], axis=0), spec)

        gathered = at_owners(treedef, groups, {g: take(g) for g in info})
        inner_state = state.inner_state
        if reset_on_refresh:
            fresh = optax.tree.cast_like(inner.init(gathered), inner_state)
            inner_state = base.cond(refresh, lambda: fresh, lambda: inner_state)
        directions, new_inner = inner.update(gathered, inner_state, None, **extra)
        directions = by_group(treedef, groups, directions, info)

        out_leaves = list(leaves)
        for g, idx in groups.items():
            stack = stacks[g].astype(base.compute_dtype(stacks[g].dtype))
            if residual == "sign":
                full = residual_scale * jnp.sign(stack)
            elif residual == "sgd":
                full = residual_scale * stack
            else:
                full = jnp.zeros_like(stack)
            if g in info:
                d = sharding.replicate(directions[g].astype(full.dtype))
                full = full.at[new_active[g]].set(d)
            offset = 0
            for k in idx:
                b = lays[k].batch_size
                y = layouts.from_matrices(full[offset : offset + b], lays[k])
                offset += b
                out_leaves[k] = sharding.reshard_like(y.astype(leaves[k].dtype), leaves[k])
        new_key = jnp.where(refresh, jax.random.key_data(next_key), state.key)
        return jax.tree_util.tree_unflatten(treedef, out_leaves), BlockSubspaceState(
            count=optax.safe_increment(state.count),
            active=at_owners(treedef, groups, new_active),
            cursor=at_owners(treedef, groups, new_cursor),
            key=new_key,
            inner_state=new_inner,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
