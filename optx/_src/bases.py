"""Rotated-basis preconditioning: Kronecker factors, eigenbases, subspaces.

SOAP, Conda and COSMOS share one idea: run an Adam-like update in a rotated
coordinate basis that is refreshed from time to time. This module holds the
pieces once, as small pure functions on arrays, plus the three ``scale_by_*``
transforms built from them (the aliases are in ``aliases/rotated.py``).

**Mode views.** A leaf is seen as a batch of k-way tensors
``batch_shape + (d_1, …, d_k)`` (a :class:`ModeView`): its layout's batch
axes stay in front, unflattened, and its other axes are grouped into *modes*.
A matrix layout gives the two modes ``(fan_in, fan_out)`` — a Dense kernel
``(in, out)``, a scanned stack ``(L, in, out)`` (L is a batch axis: one set of
factors per layer), a conv kernel ``(kh, kw, in, out)`` seen as the matrix
``(kh·kw·in, out)``; SOAP can instead give every axis its own mode (the
official code's N-D treatment). A basis ``Q_i`` (``batch + (d_i, d_i)``,
orthonormal columns) acts on mode ``i``:

.. math::

  \\mathrm{rotate}(X) = X \\times_1 Q_1^\\top \\cdots \\times_k Q_k^\\top, \\qquad
  \\mathrm{rotate\\_back}(X') = X' \\times_1 Q_1 \\cdots \\times_k Q_k,

so for a matrix ``G`` (Flax ``(fan_in, fan_out)``) ``rotate(G) = Q_inᵀ G Q_out``.
Modes without a basis are left alone (SOAP's ``max_precond_dim``).

**Kronecker factors.** The factor of mode ``i`` is the gradient contracted
with itself over every other mode (:func:`mode_gram`); for a matrix these are
``G Gᵀ`` (fan-in side) and ``Gᵀ G`` (fan-out side): Shampoo's L and R in Flax
orientation (a PyTorch paper's ``L = G Gᵀ`` over the *output* rows is our
fan-out factor).

**Bases.** :func:`eigh_basis` (eigenvectors, descending), :func:`power_qr_basis`
(one power step and a QR, with the columns first sorted by estimated
eigenvalue — SOAP's refresh), :func:`singular_basis` (the full orthogonal
factor of the SVD on one side — Conda), and :func:`subspace_init` /
:func:`subspace_power_step` (a rank-r leading eigenspace of an EMA of
``G Gᵀ`` tracked by one QR power step — COSMOS) with :func:`subspace_split`
(projection and residual). All decompositions run in float32 (or wider) whatever
the parameter dtype.

**Sharding.** Non-param-shaped state (factors, bases, subspace moments) is
created sharded like the parameter axis it belongs to (a fan-in factor of a
kernel sharded over ``'data'`` on its fan-in axis is sharded over ``'data'`` on
its first axis; batch axes keep their sharding; a SOAP basis takes it on its
columns, :func:`basis_zeros`), so :func:`optx.sharding.state_shardings` gives it a
deliberate layout. Per-leaf updates run under ``jax.sharding.auto_axes`` when any
input is sharded under an Explicit mesh, and every output keeps the sharding of the
state it replaces. SOAP's step of a leaf with one sharded mode is written with explicit
collectives (:func:`_soap_step_scattered`: one gather of the gradient, one
reduce-scatter of the direction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from optx._src import base, hyperparams, layouts, linalg, orthogonalization, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout

FACTORIZATIONS = ("matrix", "axes")

# Letters for einsum subscripts: batch axes first, then modes; "z" is reserved
# for the new index of a mode product.
_LETTERS = "abcdefghijklmnopqrstuvwxy"


# ----------------------------------------------------------------------------
# Mode views
# ----------------------------------------------------------------------------


class ModeView(NamedTuple):
    """How one leaf is seen as a batch of k-way tensors.

    Attributes:
      shape: the leaf's shape.
      batch_axes: axes kept in front as batch axes (in increasing order).
      modes: groups of leaf axes; mode ``i`` is their product (merged in order).
      rotated: per mode, whether it gets a Kronecker factor and a basis.
    """

    shape: tuple[int, ...]
    batch_axes: tuple[int, ...]
    modes: tuple[tuple[int, ...], ...]
    rotated: tuple[bool, ...]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.batch_axes)

    @property
    def num_batch(self) -> int:
        return len(self.batch_axes)

    @property
    def mode_dims(self) -> tuple[int, ...]:
        return tuple(math.prod(self.shape[a] for a in m) for m in self.modes)

    @property
    def view_shape(self) -> tuple[int, ...]:
        return self.batch_shape + self.mode_dims

    @property
    def permutation(self) -> tuple[int, ...]:
        return self.batch_axes + tuple(a for m in self.modes for a in m)

    @property
    def any_rotated(self) -> bool:
        return any(self.rotated)


def no_modes(shape: Sequence[int]) -> ModeView:
    """The view of a leaf that is never rotated (element-wise Adam only)."""
    shape = tuple(int(d) for d in shape)
    return ModeView(shape, tuple(range(len(shape))), (), ())


def _rotatable(dim: int, max_dim: float | None) -> bool:
    """Whether a mode of size ``dim`` gets a factor and a basis: at most ``max_dim``
    (None: any), and not empty (an empty mode has nothing to rotate; its 0×0 factor
    has no eigen-decomposition to refresh)."""
    return dim >= 1 and (max_dim is None or dim <= max_dim)


def vector_modes(shape: Sequence[int], max_dim: int) -> ModeView:
    """A 1-D leaf as a single mode (SOAP's ``precondition_1d``)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) != 1:
        raise ValueError(f"vector_modes needs a 1-D shape, got {shape}.")
    return ModeView(shape, (), ((0,),), (_rotatable(shape[0], max_dim),))


def matrix_modes(layout: ResolvedLayout, max_dim: int | None = None) -> ModeView:
    """The two modes ``(fan_in, fan_out)`` of a matrix layout."""
    modes = (layout.reduction_axes, layout.output_axes)
    dims = (layout.fan_in, layout.fan_out)
    rotated = tuple(_rotatable(d, max_dim) for d in dims)
    return ModeView(layout.shape, layout.batch_axes, modes, rotated)


def torch_axis_order(layout: ResolvedLayout) -> tuple[int, ...]:
    """The non-batch axes of a matrix layout in PyTorch's storage order.

    PyTorch stores a weight as ``(out, in, *window)``: output axes first, then
    the input-channel axis, then the window. The input-channel axis is the
    reduction axis next to the output axes: the last reduction axis when the
    output axes come after all of them (Flax ``(*window, in, out)``), the first
    when they come before (PyTorch order). Any other arrangement keeps stored
    order.
    """
    red, out = layout.reduction_axes, layout.output_axes
    if min(out) > max(red):  # Flax: (*window, in, out)
        return (*out, red[-1], *red[:-1])
    if max(out) < min(red):  # PyTorch: (out, in, *window)
        return (*out, *red)
    return tuple(sorted(red + out))


def axis_modes(layout: ResolvedLayout, max_dim: int, *, merge_dims: bool = False) -> ModeView:
    """One mode per non-batch axis of the leaf (SOAP's treatment of N-D tensors).

    With ``merge_dims`` consecutive axes are merged greedily while the product
    stays ``<= max_dim``: the official SOAP ``merge_dims`` rule. The official
    code merges a PyTorch tensor in its stored order, ``(out, in, kh, kw)`` for
    a convolution; here the axes are merged in that order whatever the storage
    order (:func:`torch_axis_order`), so a Flax kernel ``(kh, kw, in, out)``
    gets the same modes (e.g. ``(out·in, kh·kw)``) as the official code.
    Axes of size 1 left over at the end join the last mode.
    """
    shape = layout.shape
    axes = (
        torch_axis_order(layout)
        if merge_dims
        else tuple(sorted(layout.reduction_axes + layout.output_axes))
    )
    if not merge_dims:
        groups: list[tuple[int, ...]] = [(a,) for a in axes]
    else:
        groups = []
        current: list[int] = []
        size = 1
        for a in axes:
            d = shape[a]
            if size * d > max_dim:
                if size > 1:
                    groups.append(tuple(current))
                    current, size = [a], d
                else:
                    groups.append((*current, a))
                    current, size = [], 1
            else:
                current.append(a)
                size *= d
        if size > 1 or not groups:
            groups.append(tuple(current))
        elif current:
            groups[-1] = groups[-1] + tuple(current)
    dims = [math.prod(shape[a] for a in g) for g in groups]
    return ModeView(
        shape, layout.batch_axes, tuple(groups), tuple(_rotatable(d, max_dim) for d in dims)
    )


def to_modes(x: jax.Array, view: ModeView) -> jax.Array:
    """``x`` as ``batch_shape + mode_dims`` (a no-op for a view without modes)."""
    if not view.modes:
        return x
    return jnp.reshape(jnp.transpose(x, view.permutation), view.view_shape)


def from_modes(y: jax.Array, view: ModeView) -> jax.Array:
    """Inverse of :func:`to_modes`."""
    if not view.modes:
        return y
    perm = view.permutation
    y = jnp.reshape(y, tuple(view.shape[a] for a in perm))
    inverse = [0] * len(perm)
    for i, a in enumerate(perm):
        inverse[a] = i
    return jnp.transpose(y, inverse)


# ----------------------------------------------------------------------------
# Mode products, factors and bases (arrays in a mode view)
# ----------------------------------------------------------------------------


def _subscripts(num_batch: int, num_modes: int) -> tuple[str, str]:
    if num_batch + num_modes > len(_LETTERS):
        raise ValueError(f"Too many axes for a mode product: {num_batch + num_modes}.")
    return _LETTERS[:num_batch], _LETTERS[num_batch : num_batch + num_modes]


def mode_product(
    x: jax.Array, q: jax.Array, mode: int, num_batch: int, *, into_basis: bool
) -> jax.Array:
    """Multiplies mode ``mode`` of ``x`` by ``qᵀ`` (``into_basis``) or by ``q``.

    ``x`` is ``batch + dims``, ``q`` is ``batch + (d, d)``. Into the basis:
    ``X'[.., j, ..] = Σ_a Q[a, j] X[.., a, ..]``; back: ``X = Σ_j Q[a, j] X'[.., j, ..]``.
    """
    batch, modes = _subscripts(num_batch, x.ndim - num_batch)
    a = modes[mode]
    q_sub = batch + (a + "z" if into_basis else "z" + a)
    out = batch + modes.replace(a, "z")
    return jnp.einsum(f"{batch + modes},{q_sub}->{out}", x, q)


def _is_basis(q: Any) -> bool:
    return q is not None and not isinstance(q, optax.MaskedNode)


def rotate(x: jax.Array, bases: Sequence[Any], num_batch: int) -> jax.Array:
    """``x ×_i Q_iᵀ`` for every mode with a basis (absent bases are identities)."""
    for i, q in enumerate(bases):
        if _is_basis(q):
            x = mode_product(x, q.astype(x.dtype), i, num_batch, into_basis=True)
    return x


def rotate_back(x: jax.Array, bases: Sequence[Any], num_batch: int) -> jax.Array:
    """``x ×_i Q_i`` for every mode with a basis: the inverse of :func:`rotate`."""
    for i, q in enumerate(bases):
        if _is_basis(q):
            x = mode_product(x, q.astype(x.dtype), i, num_batch, into_basis=False)
    return x


def mode_gram(x: jax.Array, mode: int, num_batch: int) -> jax.Array:
    """The Kronecker-factor statistic of one mode: ``x`` contracted with itself
    over every other mode, ``batch + (d_mode, d_mode)``.

    For a matrix ``G`` (``fan_in × fan_out``) mode 0 gives ``G Gᵀ`` and mode 1
    gives ``Gᵀ G``.
    """
    batch, modes = _subscripts(num_batch, x.ndim - num_batch)
    a = modes[mode]
    other = modes.replace(a, "z")
    return jnp.einsum(f"{batch + modes},{batch + other}->{batch}{a}z", x, x)


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _eigh_candidate(factor: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(V, fill, null)`` for :func:`eigh_basis`: ``V`` the eigenvectors by
    descending eigenvalue, ``null`` (``… × 1 × n``) the columns whose eigenvalue is
    at most the roundoff floor ``8 n ε λ_max``, and ``fill`` the fixed generic
    matrix projected off the other columns (what :func:`_finish_basis` puts there).

    Each eigenvector's sign is fixed: its projection on a fixed generic vector is
    positive. LAPACK's sign is arbitrary, and a one-ulp change of the factor (another
    summation order: a sharded program) can flip it; the update is the same either
    way, the stored basis and first moment are not."""
    vals, vecs = linalg.eigh(_f32(factor))
    vals, vecs = jnp.flip(vals, axis=-1), jnp.flip(vecs, axis=-1)
    side = jnp.sum(vecs * _generic((vecs.shape[-2], 1), vecs.dtype), axis=-2, keepdims=True)
    vecs = jnp.where(side < 0, -vecs, vecs)
    null = (vals <= _null_floor(vecs.shape[-1], vecs.dtype) * vals[..., :1])[..., None, :]
    generic = _generic(vecs.shape[-2:], vecs.dtype)
    kept = jnp.where(null, 0.0, vecs)
    return vecs, generic - kept @ (_mT(kept) @ generic), null


def _power_candidate(
    factor: jax.Array, basis: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(F Q_sorted, fill, null, order)`` for :func:`power_qr_basis`: the columns of
    ``Q`` sorted by the estimated eigenvalues ``diag(Qᵀ F Q)`` (descending; estimates
    at most the roundoff floor ``8 n ε`` of the largest count as exact zeros, so
    their order is the stable one), ``null`` (``… × 1 × n``, sorted: trailing) those
    columns, and ``fill`` the fixed generic matrix at the scale of ``F Q``."""
    f, q = _f32(factor), _f32(basis)
    estimate = jnp.einsum("...ij,...ik,...kj->...j", q, f, q)
    null = estimate <= _null_floor(q.shape[-2], q.dtype) * jnp.max(estimate, -1, keepdims=True)
    order = jnp.argsort(-jnp.where(null, 0.0, estimate), axis=-1, stable=True)
    q = jnp.take_along_axis(q, order[..., None, :], axis=-1)
    null = jnp.take_along_axis(null, order, axis=-1)[..., None, :]
    a = f @ q
    scale = jnp.sqrt(jnp.max(jnp.sum(jnp.square(a), axis=-2), axis=-1))[..., None, None]
    fill = _generic(q.shape[-2:], q.dtype) * jnp.where(scale > 0, scale, 1.0)
    return a, fill, null, order


def _finish_basis(a: jax.Array, fill: jax.Array, null: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Q, null)``: the ``Q`` of ``QR(A)`` with the ``null`` columns of ``A`` replaced
    by those of ``fill``, and with every column whose ``|R_jj|`` is at most the
    roundoff floor ``8 n ε max|R_kk|`` (the normalized direction of a roundoff
    vector: ``A`` rank-deficient) added to ``null`` and replaced too, until no
    column is (one QR when none is; a ``while_loop``, so one QR program). Null
    columns get ``R_jj > 0``. QR's column ``j`` depends on the input columns
    ``≤ j`` only, so the others are those of ``QR(A)``."""
    floor = _null_floor(a.shape[-2], a.dtype)

    def body(carry: Any) -> Any:
        null = carry[0]
        new, rr = linalg.qr(jnp.where(null, fill, a))
        d = jnp.diagonal(rr, axis1=-2, axis2=-1)[..., None, :]
        grown = null | (jnp.abs(d) <= floor * jnp.max(jnp.abs(d), -1, keepdims=True))
        return grown, new, d, jnp.any(grown != null)

    init = (null, jnp.zeros_like(a), jnp.zeros_like(null, a.dtype), jnp.asarray(True))
    null, new, d, _ = base.while_loop(lambda c: c[3], body, init)
    return jnp.where(null & (d < 0), -new, new), null


def eigh_basis(factor: jax.Array) -> jax.Array:
    """Eigenvectors of a symmetric PSD factor, columns by descending eigenvalue (≥ f32).

    Eigenvectors whose eigenvalue is below the roundoff floor ``8 n ε λ_max``
    span an arbitrary (LAPACK-, device- and reduction-order-dependent) part of
    the null space; they are replaced by a fixed orthonormal completion of the
    other columns (a fixed generic matrix projected off them and orthonormalized
    by QR), and every other column's sign is fixed (:func:`_eigh_candidate`), so the
    basis is deterministic to float tolerance. Where the factor has no such
    eigenvalue (a unique basis) the result is the plain eigh's up to column signs.

    Under differentiation the basis is a constant of the factor
    (``stop_gradient``, as for :func:`power_qr_basis` and
    :func:`soap_basis_update`): eigenvectors of repeated eigenvalues (a
    low-rank factor's null space) have no derivative, and the null-column
    completion is a ``while_loop``, which reverse mode cannot transpose. So
    ``jax.grad`` through SOAP's steps (meta-learning a learning rate,
    MAML-style unrolls) differentiates the rotated Adam step with the
    rotation held fixed.
    """
    factor = jax.lax.stop_gradient(factor)
    vecs, fill, null = _eigh_candidate(factor)
    new, null = _finish_basis(vecs, fill, null)
    return jnp.where(null, new, vecs)


def power_qr_basis(factor: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power step and a QR from the current basis (SOAP's refresh, ≥ f32).

    The columns of ``Q`` are first sorted by the estimated eigenvalues
    ``diag(Qᵀ F Q)`` (descending), then ``Q ← QR(F Q_sorted)``. Columns whose
    estimate is below the roundoff floor ``8 n ε`` of the largest keep their
    order (a stable sort), and columns that are null directions (that estimate,
    or ``|R_jj|`` at most ``8 n ε max|R_kk|``: ``F Q`` rank-deficient) become a
    fixed completion of the others (a fixed generic matrix orthogonalized
    against them), so the result is deterministic to float tolerance; elsewhere
    this is the plain sort and QR.

    Returns:
      ``(new_basis, order)`` where ``order`` (``batch + (d,)``) is the sorting
      permutation, to be applied to statistics kept in the old basis.
      The basis is a constant under differentiation (see :func:`eigh_basis`).
    """
    factor, basis = jax.lax.stop_gradient((factor, basis))
    a, fill, null, order = _power_candidate(factor, basis)
    return _finish_basis(a, fill, null)[0], order


def soap_basis_update(
    factor: jax.Array, basis: jax.Array, first: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """:func:`eigh_basis` (``first``) or :func:`power_qr_basis` with one QR program
    for both: ``(new_basis, order)`` (``order`` is the identity when ``first``);
    a constant under differentiation (see :func:`eigh_basis`)."""
    factor, basis = jax.lax.stop_gradient((factor, basis))
    d = basis.shape[-1]

    def from_eigh(ops: Any) -> Any:
        vecs, fill, null = _eigh_candidate(ops[0])
        return vecs, fill, null, jnp.broadcast_to(jnp.arange(d), (*null.shape[:-2], d))

    a, fill, null, order = base.cond(
        first, from_eigh, lambda ops: _power_candidate(*ops), (factor, basis)
    )
    new, null = _finish_basis(a, fill, null)
    return jnp.where(first & ~null, a, new), order


def permute_mode(x: jax.Array, order: jax.Array, mode: int, num_batch: int) -> jax.Array:
    """Reorders the entries of mode ``mode`` of ``x`` by a per-batch permutation."""
    num_modes = x.ndim - num_batch
    index_shape = order.shape[:-1] + tuple(
        order.shape[-1] if i == mode else 1 for i in range(num_modes)
    )
    return jnp.take_along_axis(x, order.reshape(index_shape), axis=num_batch + mode)


def singular_factor(x: jax.Array, mode: int) -> jax.Array:
    """The reduced SVD factor of a batch of ``n × m`` matrices ``x = U S Vᵀ`` on
    one side (≥ f32): ``U`` (``n × k``) for mode 0, ``V`` (``m × k``) for mode 1,
    ``k = min(n, m)``; orthogonal on the smaller side (:func:`singular_basis`),
    orthonormal columns on the larger one."""
    u, _, vh = linalg.svd(_f32(x))
    return u if mode == 0 else jnp.swapaxes(vh, -1, -2)


def singular_basis(x: jax.Array, mode: int) -> jax.Array:
    """The full orthogonal factor of the reduced SVD of a batch of matrices on
    the smaller side (≥ f32): ``U`` (``n × n``) for mode 0 when ``n <= m``, ``V``
    (``m × m``) for mode 1 when ``m <= n``, where ``x = U S Vᵀ`` is ``n × m``."""
    n, m = x.shape[-2], x.shape[-1]
    if (mode == 0 and n > m) or (mode == 1 and m > n) or mode not in (0, 1):
        raise ValueError(f"singular_basis: mode {mode} is not the smaller side of {(n, m)}.")
    return singular_factor(x, mode)


def _mT(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _null_floor(n: int, dtype: Any) -> float:
    """Relative size below which a direction of an ``n``-dimensional f32/f64
    computation is roundoff: ``8 n ε``."""
    return 8.0 * n * float(jnp.finfo(dtype).eps)


def _generic(shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """A fixed generic matrix of ``shape`` (entries uniform in ``[-½, ½)``: the
    murmur3 finalizer of the flat index), computed in the program: the index goes
    through an optimization barrier, so that XLA does not fold an ``n × n``
    constant at compile time."""
    x = jax.lax.optimization_barrier(jnp.arange(math.prod(shape), dtype=jnp.uint32))
    x = x * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15)
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    x = x ^ (x >> 16)
    return jnp.reshape((x >> 8).astype(dtype) / 2.0**24 - 0.5, shape)


def _canonical_completion(q: jax.Array, null: jax.Array) -> jax.Array:
    """``q`` (``… × n × r``, orthonormal columns) with its ``null`` columns
    (``… × r`` bools) replaced by a fixed, input-independent orthonormal
    completion: a fixed generic matrix projected off the other columns and
    orthonormalized. The other columns keep their values and signs."""
    n, r = q.shape[-2], q.shape[-1]
    generic = jnp.asarray(np.random.default_rng(0).standard_normal((n, r)), q.dtype)
    kept = jnp.where(null[..., None, :], 0.0, q)
    fill = generic - kept @ (_mT(kept) @ generic)
    new, rr = linalg.qr(jnp.where(null[..., None, :], fill, kept))
    sign = jnp.sign(jnp.diagonal(rr, axis1=-2, axis2=-1))
    new = new * jnp.where(sign == 0, 1.0, sign)[..., None, :]
    return jnp.where(null[..., None, :], new, q)


def _drop_noise(c: jax.Array, x: jax.Array) -> jax.Array:
    """Zeroes the coordinates ``c = Pᵀ X`` that are roundoff of the projection.

    A coordinate ``c_kj = Σ_i P_ik X_ij`` carries an error of about
    ``ε √n ‖X_{:,j}‖`` (the column it mixes); entries at most ``8 ε √n ‖X_{:,j}‖``
    are set to zero: their value, and their Adam ratio ``c / (|c| + ε)``, would
    be noise. The floor is per column, not ``‖X‖_F``-wide, so it stays at the
    scale of roundoff on large matrices (a floor of ``8 n ε ‖X‖_F`` would zero
    real coordinates of a 768 × 768 gradient)."""
    col = jnp.sqrt(jnp.sum(jnp.square(x), axis=-2, keepdims=True))
    return _drop_below_column_floor(c, col, x.shape[-2])


def _drop_below_column_floor(c: jax.Array, col: jax.Array, n: int) -> jax.Array:
    """:func:`_drop_noise` given the column norms ``col`` (``… × 1 × m``) of the
    ``n``-row matrix ``X`` that ``c`` projects (a sharded ``X``'s norms are summed over
    the mesh first)."""
    floor = 8.0 * float(jnp.finfo(col.dtype).eps) * math.sqrt(n) * col
    return jnp.where(jnp.abs(c) <= floor, 0.0, c)


def drop_roundoff(
    x: jax.Array,
    modes: Sequence[int],
    num_batch: int,
    sharded: tuple[int, Any] | None = None,
) -> jax.Array:
    """Zeroes the entries of a rotated tensor that are roundoff (SOAP's coordinates).

    A product along mode ``i`` (size ``d_i``) makes an error of about
    ``ε √d_i`` times the norm of the fiber it mixes (the entries along mode ``i``
    through that entry; the rotation keeps that norm). Entries at most
    ``8 ε Σ_i √d_i ‖fiber_i‖`` (``i`` over ``modes``) are set to zero: where the
    exact value is zero — a gradient with no component along a basis direction
    (a null space), or the off-diagonal coordinates of the gradient that built
    the basis — Adam's ratio ``c / (√(c²) + ε)`` would turn the roundoff into a
    unit step in a reduction-order-dependent direction. Above the floor ``x``
    is unchanged.

    ``sharded`` (``(mode, mesh axes)``, inside ``shard_map``): ``x`` is this device's
    block of that mode; its fibers' sums are completed over the mesh axes (``psum``)
    and its size is the whole mode's.
    """
    if not modes:
        return x
    sq = jnp.square(x)
    eps = float(jnp.finfo(x.dtype).eps)

    def fiber(i: int) -> tuple[int, jax.Array]:
        total = jnp.sum(sq, axis=num_batch + i, keepdims=True)
        if sharded is None or sharded[0] != i:
            return x.shape[num_batch + i], total
        n = x.shape[num_batch + i] * jax.lax.axis_size(sharded[1])
        return n, jax.lax.psum(total, sharded[1])

    floor = sum(
        8.0 * eps * math.sqrt(n) * jnp.sqrt(total) for n, total in (fiber(i) for i in modes)
    )
    return jnp.where(jnp.abs(x) <= floor, 0.0, x)


def subspace_init(
    x: jax.Array, rank: int, beta: Any, one_minus_beta: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Starts rank-``r`` subspace tracking from one gradient (COSMOS, step 1).

    ``P`` = the top-``r`` eigenvectors of ``X Xᵀ`` (``n × r``, the fan-in side of
    ``x``: ``n × m``), ``C = Pᵀ X`` and ``S = (1 − β) C Cᵀ``.

    Degenerate directions are made deterministic (COSMOS with a gradient of
    rank below ``r``, e.g. a batch of one): eigenvectors whose eigenvalue is
    below the roundoff floor ``8 n ε λ_max`` span an arbitrary part of the null
    space (LAPACK- and reduction-order-dependent), so they are replaced by a
    fixed orthonormal completion, and coordinates below the roundoff of the
    projection, ``8 ε √n ‖X_{:,j}‖`` per column, are set to zero. Elsewhere the
    result is the plain top-``r`` eigenbasis.

    Returns:
      ``(P, S, C)``.
    """
    x = _f32(x)
    omb = 1.0 - beta if one_minus_beta is None else one_minus_beta
    p = _canonical_completion(*_top_eigenvectors(x, rank))
    c = _drop_noise(_mT(p) @ x, x)
    return p, omb * (c @ _mT(c)), c


def _top_eigenvectors(x: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
    """``(V, null)``: the top-``rank`` eigenvectors of ``X Xᵀ`` (descending) and the
    columns whose eigenvalue is at most the roundoff floor ``8 n ε λ_max``
    (:func:`subspace_init`, before the completion)."""
    vals, vecs = linalg.eigh(x @ _mT(x))
    vals, vecs = jnp.flip(vals, axis=-1)[..., :rank], jnp.flip(vecs, axis=-1)[..., :rank]
    top = jnp.max(vals, axis=-1, keepdims=True)
    return vecs, vals <= _null_floor(x.shape[-2], x.dtype) * top


def subspace_power_step(
    p: jax.Array, s: jax.Array, x: jax.Array, beta: Any, one_minus_beta: Any = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One QR power step of the leading eigenspace of ``E = β E + (1−β) X Xᵀ``.

    With ``E ≈ P S Pᵀ`` (``P``: ``n × r`` orthonormal, ``S``: ``r × r``):

    .. math::

      P' = \\mathrm{QR}\\big(β P S + (1-β) X (X^\\top P)\\big), \\quad T = P^\\top P',
      \\quad S' = β T^\\top S T + (1-β) (P'^\\top X)(P'^\\top X)^\\top

    (COSMOS, arXiv 2502.17410, Algorithm 1; ``x`` is ``n × m`` with the subspace
    on its first side, so ``X Xᵀ`` is the PyTorch ``GᵀG``).

    As in :func:`subspace_init`, QR columns whose ``|R_jj|`` is below the
    roundoff floor ``8 n ε max|R_kk|`` (the normalized direction of a roundoff
    vector) are replaced by a fixed completion and coordinates below the
    floor are zeroed, so the step is deterministic to float tolerance.

    ``one_minus_beta`` (default ``1 − beta``) lets callers pass ``1 − β`` formed
    exactly from a Python float (see ``base.one_minus``).

    Returns:
      ``(P', S', C)`` with ``C = P'ᵀ X`` (``r × m``).
    """
    x, p, s = _f32(x), _f32(p), _f32(s)
    omb = 1.0 - beta if one_minus_beta is None else one_minus_beta
    new_p = _completed_qr(beta * (p @ s) + omb * (x @ (_mT(x) @ p)))
    return new_p, *_carried_subspace_statistics(x, p, s, new_p, beta, omb)


def _carried_subspace_statistics(
    x: jax.Array,
    p: jax.Array,
    s: jax.Array,
    new_p: jax.Array,
    beta: Any,
    omb: Any,
    first: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(S', C)`` after a basis change ``P -> P'``: ``C = P'ᵀ X`` (roundoff-dropped) and
    ``S' = β Tᵀ S T + (1−β) C Cᵀ`` with ``T = Pᵀ P'`` (only ``(1−β) C Cᵀ`` where ``first``)."""
    t = _mT(p) @ new_p
    c = _drop_noise(_mT(new_p) @ x, x)
    new_s = beta * (_mT(t) @ s @ t) + omb * (c @ _mT(c))
    if first is not None:
        new_s = jnp.where(first, omb * (c @ _mT(c)), new_s)
    return new_s, c


def _completed_qr(a: jax.Array) -> jax.Array:
    """The ``Q`` of ``QR(A)`` (``A``: ``… × n × r``) with the columns whose ``|R_jj|`` is
    at most the roundoff floor ``8 n ε max|R_kk|`` replaced by a fixed completion
    (:func:`subspace_power_step`)."""
    return _canonical_completion(*_qr_candidate(a))


def _qr_candidate(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Q, null)``: the ``Q`` of ``QR(A)`` and its columns whose ``|R_jj|`` is at most
    the roundoff floor ``8 n ε max|R_kk|`` (:func:`_completed_qr`, before the completion)."""
    new_p, rr = linalg.qr(a)
    d = jnp.abs(jnp.diagonal(rr, axis1=-2, axis2=-1))
    return new_p, d <= _null_floor(a.shape[-2], a.dtype) * jnp.max(d, axis=-1, keepdims=True)


def subspace_update(
    x: jax.Array,
    p: jax.Array,
    s: jax.Array,
    first: jax.Array,
    rank: int,
    beta: Any,
    one_minus_beta: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`subspace_init` (``first``) or :func:`subspace_power_step`, with one
    completion for both: the ``lax.cond`` picks the candidate basis and its null columns
    (top-``r`` eigh, or the power step's QR), the completion, ``C = P'ᵀ X`` and ``S'``
    follow once. The same numbers as the two functions; one QR program fewer to
    compile.

    Returns:
      ``(P', S', C)``.
    """
    x, p, s = _f32(x), _f32(p), _f32(s)
    q, null = base.cond(
        first,
        lambda ops: _top_eigenvectors(ops[0], rank),
        lambda ops: _qr_candidate(
            beta * (ops[1] @ ops[2]) + one_minus_beta * (ops[0] @ (_mT(ops[0]) @ ops[1]))
        ),
        (x, p, s),
    )
    new_p = _canonical_completion(q, null)
    return new_p, *_carried_subspace_statistics(x, p, s, new_p, beta, one_minus_beta, first)


def subspace_power_step_sharded(
    p: jax.Array,
    s: jax.Array,
    x: jax.Array,
    beta: Any,
    one_minus_beta: Any,
    mode: int,
    entry: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`subspace_power_step` inside ``shard_map``, with one side of ``x`` (``n × m``)
    split over the mesh axes ``entry``: ``mode`` 0, the fan-in ``n`` (the subspace side;
    ``x`` and ``P`` are this device's rows), or 1, the fan-out ``m`` (``x`` is this
    device's columns, ``P`` whole).

    Rows (``mode`` 0), per device: ``Xᵀ P`` (``m × r``) all-reduced, its rows of
    ``A = β P S + (1−β) X (Xᵀ P)`` gathered whole (``n × r``), the QR and its completion
    computed whole on every device (the same numbers everywhere; each keeps its rows of
    ``P'``), then ``C = P'ᵀ X`` (``r × m``, with the column norms of ``X`` for its roundoff
    floor) and ``Pᵀ P'`` (``r × r``) all-reduced. Columns (``mode`` 1): ``X (Xᵀ P)``
    (``n × r``) all-reduced, the QR whole on every device, ``C`` local (its columns),
    ``C Cᵀ`` (``r × r``) all-reduced. The explicit form of what the compiler's partition
    of :func:`subspace_power_step` moves, without its extra gathers and permutes; the
    same numbers up to the order of the sums.

    Returns:
      ``(P', S', C)``: ``P'`` split like ``P``, ``S'`` whole, ``C`` split like ``x``'s
      columns (whole for ``mode`` 0).
    """
    x, p, s = _f32(x), _f32(p), _f32(s)
    rows = x.ndim - 2
    if mode == 0:
        y = jax.lax.psum(_mT(x) @ p, entry)
        a = jax.lax.all_gather(
            beta * (p @ s) + one_minus_beta * (x @ y), entry, axis=rows, tiled=True
        )
        new_p = _mesh_block(_completed_qr(a), rows, entry)
        t = jax.lax.psum(_mT(p) @ new_p, entry)
        col = jnp.sqrt(jax.lax.psum(jnp.sum(jnp.square(x), axis=-2, keepdims=True), entry))
        c = _drop_below_column_floor(jax.lax.psum(_mT(new_p) @ x, entry), col, a.shape[-2])
        new_s = beta * (_mT(t) @ s @ t) + one_minus_beta * (c @ _mT(c))
        return new_p, new_s, c
    new_p = _completed_qr(beta * (p @ s) + one_minus_beta * jax.lax.psum(x @ (_mT(x) @ p), entry))
    t = _mT(p) @ new_p
    c = _drop_noise(_mT(new_p) @ x, x)
    new_s = beta * (_mT(t) @ s @ t) + one_minus_beta * jax.lax.psum(c @ _mT(c), entry)
    return new_p, new_s, c


def subspace_split(x: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Pᵀ X, X − P Pᵀ X)``: coordinates in the subspace and the residual.

    Values below the roundoff floor of the projection are noise and returned
    as zero (see :func:`subspace_init`): coordinates elementwise, below
    ``8 ε √n ‖X_{:,j}‖``; the residual as a whole, below ``8 n ε ‖X‖_F`` (when
    ``X`` lies in the subspace, its orthogonalization would otherwise amplify
    roundoff to full size)."""
    c = _mT(p) @ x
    res = x - p @ c
    res_norm = jnp.sqrt(jnp.sum(jnp.square(res), axis=(-2, -1), keepdims=True))
    x_norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
    res = jnp.where(res_norm <= _null_floor(x.shape[-2], x.dtype) * x_norm, 0.0, res)
    return _drop_noise(c, x), res


# ----------------------------------------------------------------------------
# Sharding of non-param-shaped state
# ----------------------------------------------------------------------------


def zeros_from_axes(
    shape: Sequence[int],
    dtype: Any,
    like: Any,
    source_axes: Sequence[int | None],
    fill: bool = False,
) -> jax.Array:
    """Zeros whose axis ``i`` is sharded like axis ``source_axes[i]`` of ``like``.

    ``None`` entries are unsharded. Outside an Explicit mesh this is plain
    ``jnp.zeros`` (:func:`optx.sharding.state_shardings` evaluates ``init`` under an
    Explicit copy of the mesh, so the rule is picked up there too). The
    permuting cousin of :func:`optx._src.sharding.zeros_like_spec`. With
    ``fill``, mesh axes the result leaves unused go on another axis
    (:func:`optx._src.sharding.fill_spec`).
    """
    shape = tuple(int(d) for d in shape)
    spec = sharding.spec_of(like)
    if spec is None:
        return jnp.zeros(shape, dtype)
    out = PartitionSpec(*(None if a is None else spec[a] for a in source_axes))
    if fill:
        out = sharding.fill_spec(out, shape, like)
    else:
        out = sharding.divisible_spec(out, shape, like)
    return sharding.zeros(shape, dtype, sharding.named(out, like))


def mode_source_axis(view: ModeView, mode: int) -> int | None:
    """The leaf axis whose sharding a per-mode state axis inherits (single-axis
    modes only; a merged mode is unsharded)."""
    axes = view.modes[mode]
    return axes[0] if len(axes) == 1 else None


def factor_zeros(view: ModeView, mode: int, dtype: Any, like: Any, fill: bool = False) -> jax.Array:
    """Zeros for a ``batch + (d, d)`` factor or basis of ``mode``, sharded on its
    first axis like the mode's leaf axis (and with ``fill``, the mesh axes left
    unused on another axis: :func:`optx._src.sharding.fill_spec`)."""
    d = view.mode_dims[mode]
    return zeros_from_axes(
        (*view.batch_shape, d, d),
        dtype,
        like,
        (*view.batch_axes, mode_source_axis(view, mode), None),
        fill,
    )


def basis_zeros(view: ModeView, mode: int, dtype: Any, like: Any) -> jax.Array:
    """Zeros for a ``batch + (d, d)`` SOAP basis of ``mode``, sharded on its *columns*
    like the mode's leaf axis (the mesh axes left unused on another axis,
    :func:`optx._src.sharding.fill_spec`): the rotated gradient's block of that mode on
    a device is its columns of the basis times the whole gradient, so the step's
    rotation needs no reduction (:func:`_soap_step_scattered`)."""
    d = view.mode_dims[mode]
    return zeros_from_axes(
        (*view.batch_shape, d, d),
        dtype,
        like,
        (*view.batch_axes, None, mode_source_axis(view, mode)),
        fill=True,
    )


def call_keeping_shardings(fn: Callable[[Any, Any], Any], arrays: Any, scalars: Any = None) -> Any:
    """``fn(arrays, scalars)`` whose output (structured like ``arrays``) keeps
    every input array's sharding.

    Under an Explicit mesh with a sharded input, ``fn`` runs under
    ``jax.sharding.auto_axes`` (the compiler inserts the collectives for
    contractions over sharded axes, eigh, QR and SVD) and each output is
    resharded to its input's spec; otherwise ``fn`` is called directly.
    ``scalars`` (hyper-parameters, counters) are passed through as arguments
    rather than closed over.
    """
    specs = jax.tree.map(sharding.spec_or_replicated, arrays)
    return sharding.call_with_out_specs(fn, (arrays, scalars), specs)


# ----------------------------------------------------------------------------
# Shared helpers of the transforms
# ----------------------------------------------------------------------------


def _check_dtype_arg(name: str, value: Any) -> Any:
    try:
        return base.canonicalize_dtype(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a dtype or dtype name, got {value!r}.") from None


def _bias_corrections(count: jax.Array, b1: Any, b2: Any) -> tuple[jax.Array, jax.Array]:
    """``(1 − β₁ᵗ, 1 − β₂ᵗ)`` in the widest enabled float (see ``base.bias_correction``)."""
    return base.bias_correction(b1, count), base.bias_correction(b2, count)


def _scalars(**values: Any) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in values.items()}


def _in_dtype(s: dict[str, jax.Array], dtype: Any) -> dict[str, jax.Array]:
    """The floating scalars of ``s`` cast to the real counterpart of ``dtype``.

    Shared scalars are computed once in the widest enabled float (f64 under
    ``jax_enable_x64``); each leaf casts them to its own compute dtype so that an
    f32 leaf computes in f32 and an f64 leaf in f64.
    """
    dt = base.real_dtype(dtype)
    return {k: v.astype(dt) if jnp.issubdtype(v.dtype, jnp.floating) else v for k, v in s.items()}


def _one_minus(value: Any) -> jax.Array:
    return base.one_minus(value)


def map_leaves_with_state(
    fn: Callable[..., tuple[Any, ...]], updates: Any, *trees: Any
) -> tuple[Any, ...]:
    """Per leaf ``g`` of ``updates``: ``fn(path, g, *leaf_states) -> (u, *new_states)``.

    ``trees`` have ``updates``' structure as a prefix (per-leaf arrays or
    ``optax.MaskedNode``); ``None`` updates are passed through with their
    states. Returns ``(new_updates, *new_trees)``.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=base.is_leaf_or_none)
    columns = [treedef.flatten_up_to(t) for t in trees]
    outs = []
    for j, (path, g) in enumerate(flat):
        states = [column[j] for column in columns]
        outs.append((None, *states) if g is None else fn(base.path_to_str(path), g, *states))
    return tuple(
        jax.tree_util.tree_unflatten(treedef, [o[i] for o in outs]) for i in range(1 + len(trees))
    )


def rotation_view_fn(
    layout: LayoutSpec,
    *,
    factorization: str = "matrix",
    merge_dims: bool = False,
    max_dim: int | None = None,
    extra_layout: LayoutSpec | None = None,
    precondition_1d: bool = False,
) -> Callable[[str, Any], ModeView]:
    """``(path, leaf) -> ModeView``: which modes of a leaf are rotated.

    Leaves with a layout (from ``layout``, else from ``extra_layout`` when
    given) get :func:`matrix_modes` or :func:`axis_modes`; 1-D leaves get one
    mode when ``precondition_1d``; everything else is unrotated. Modes larger
    than ``max_dim`` are not rotated.
    """
    base.check_choice("factorization", factorization, FACTORIZATIONS)
    resolve = layouts.resolved_layout_fn(layout)
    resolve_extra = None if extra_layout is None else layouts.resolved_layout_fn(extra_layout)
    cap = max_dim if max_dim is not None else math.inf

    def view_of(path: str, leaf: Any) -> ModeView:
        shape = tuple(jnp.shape(leaf))
        lay = resolve(path, leaf)
        if lay is None and resolve_extra is not None:
            lay = resolve_extra(path, leaf)
        if lay is not None:
            if factorization == "axes":
                return axis_modes(lay, cap, merge_dims=merge_dims)  # type: ignore[arg-type]
            return matrix_modes(lay, max_dim)
        if len(shape) == 1 and precondition_1d:
            return vector_modes(shape, cap)  # type: ignore[arg-type]
        return no_modes(shape)

    return view_of


def _by_shape(
    fn: Callable[..., tuple[jax.Array, ...]],
    entries: Sequence[tuple[tuple[int, ...], tuple[jax.Array, ...]]],
    anchor: jax.Array | None = None,
) -> list[tuple[jax.Array, ...]]:
    """``fn`` once per group of same-shape, same-dtype entries.

    Each entry is ``(batch_shape, arrays)``: arrays of shapes ``batch_shape + s_a``.
    Entries whose ``(s_a, dtype)`` all agree are flattened to one leading batch axis,
    concatenated, and go through ``fn`` (a batched, per-matrix function returning a
    tuple of arrays with that leading axis) in one call, so the traced program
    grows with the number of distinct shapes, not of leaves. Returns, per entry,
    ``fn``'s outputs with ``batch_shape`` restored (sliced at runtime offsets
    with ``anchor``: :func:`_unstacked`).
    """
    groups: dict[Any, list[int]] = {}
    for e, (batch, arrays) in enumerate(entries):
        key = tuple((a.shape[len(batch) :], jnp.dtype(a.dtype)) for a in arrays)
        groups.setdefault(key, []).append(e)
    out: list[Any] = [None] * len(entries)
    rows = [sum(math.prod(entries[e][0]) for e in m) for m in groups.values() if len(m) > 1]
    indices = _shared_indices(anchor, rows)
    for members in groups.values():
        flat = [
            tuple(base.merge_leading(a, a.ndim - len(b)) for a in arrays)
            for b, arrays in (entries[e] for e in members)
        ]
        args = flat[0] if len(flat) == 1 else tuple(jnp.concatenate(c) for c in zip(*flat))
        res = fn(*args)
        batches = [entries[e][0] for e in members]
        parts = [_unstacked(r, batches, r.ndim - 1, indices) for r in res]
        for n, e in enumerate(members):
            out[e] = tuple(p[n] for p in parts)
    return out


def on_every_device(
    fn: Callable[..., Any], *args: Any, local: bool = True, specs: Sequence[Any] | None = None
) -> Any:
    """``fn(*args)`` computed whole on every device of the mesh in context
    (inside :func:`call_keeping_shardings`'s ``auto_axes``; ``local``: the
    caller's arrays are on an Explicit mesh): the inputs are gathered once and
    nothing inside ``fn`` is partitioned. Plain ``fn(*args)`` otherwise (no
    mesh, or Auto axes, where the compiler partitions the single-device code).

    ``specs`` (one ``PartitionSpec`` or None per argument) says how each input
    arrives: it is then gathered inside this call (inside a ``lax.cond`` branch,
    not hoisted before it). Without, inputs arrive replicated.

    Eigh and QR of a row-sharded factor otherwise compile to a partitioned
    program whose intermediate products are all-reduced whole (several
    factor-sized collectives per factor); one all-gather of each input and
    local math moves the least (the results are resharded by slicing)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not local:
        return fn(*args)
    in_specs = tuple(
        PartitionSpec() if specs is None or specs[i] is None else specs[i] for i in range(len(args))
    )

    def body(*xs: Any) -> Any:
        whole = []
        for x, spec in zip(xs, in_specs, strict=True):
            for axis, entry in enumerate(spec):
                if entry is not None:
                    x = jax.lax.all_gather(x, entry, axis=axis, tiled=True)
            whole.append(x)
        return fn(*whole)

    return jax.shard_map(
        body, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec(), check_vma=False
    )(*args)


def mode_specs(x: Any, view: ModeView) -> tuple[Any, ...] | None:
    """The mesh axes of ``x``'s mode axes in ``view`` (``batch + modes``, the
    batch axes unsharded; a merged mode unsharded), or None off an Explicit mesh."""
    spec = sharding.spec_of(x)
    if spec is None or not view.modes:
        return None
    entries = tuple(spec) + (None,) * (len(view.shape) - len(spec))
    if any(entries[a] is not None for a in view.batch_axes):
        return None  # a sharded batch axis: the stack's view has another layout
    return tuple(entries[m[0]] if len(m) == 1 else None for m in view.modes)


def _soap_groups(
    views: Sequence[ModeView], leaves: Sequence[Any], specs: Sequence[Any] | None = None
) -> list[tuple[ModeView, list[int]]]:
    """Leaves whose modes, rotation flags, dtypes (and mode shardings ``specs``)
    agree, as ``(view, members)``: ``view`` is the stack's (one batch axis, one
    axis per mode). A leaf without modes (element-wise Adam, normalized as a
    whole) keeps its own view, alone."""
    groups: dict[Any, list[int]] = {}
    for e, (view, (g, mu, nu, fs, qs)) in enumerate(zip(views, leaves, strict=True)):
        if not view.modes:
            groups[("leaf", e)] = [e]
            continue
        dts = tuple(jnp.dtype(x.dtype) if _is_basis(x) else None for x in (g, mu, nu, *fs, *qs))
        spec = None if specs is None else specs[e]
        groups.setdefault((view.mode_dims, view.rotated, dts, spec), []).append(e)
    out = []
    for key, members in groups.items():
        view = views[members[0]]
        if key[0] != "leaf":
            n = sum(math.prod(views[e].batch_shape) for e in members)
            modes = tuple((a,) for a in range(1, len(view.modes) + 1))
            view = ModeView((n, *view.mode_dims), (0,), modes, view.rotated)
        out.append((view, members))
    return out


def _stacked(parts: Sequence[jax.Array], tail: int) -> jax.Array:
    """Concatenation on one leading batch axis of arrays whose last ``tail`` axes agree."""
    flat = [base.merge_leading(x, tail) for x in parts]
    return flat[0] if len(flat) == 1 else jnp.concatenate(flat)


def _unstacked(
    x: jax.Array,
    batches: Sequence[tuple[int, ...]],
    tail: int,
    indices: Sequence[jax.Array] | None = None,
) -> list[jax.Array]:
    """Inverse of :func:`_stacked`: one array of ``batch + x.shape[-tail:]`` per batch.

    With ``indices`` (:func:`_shared_indices`), the slices are taken at runtime offsets,
    so same-size slices share their consumers' kernels.
    """
    sizes = [math.prod(batch) for batch in batches]
    parts = layouts.split_rows(x, sizes, indices if len(sizes) > 1 else None)
    return [
        jnp.reshape(part, (*batch, *x.shape[x.ndim - tail :]))
        for part, batch in zip(parts, batches, strict=True)
    ]


def _shared_indices(anchor: jax.Array | None, rows: Sequence[int]) -> tuple[jax.Array, ...] | None:
    """One :func:`layouts.runtime_indices` (from the integer scalar ``anchor``) for every
    :func:`_unstacked` of a program whose stacks have ``rows`` rows: one ``cond`` to
    trace and compile, not one per sliced array. None without ``anchor`` or stacks."""
    n = max(rows, default=0)
    return None if anchor is None or n <= 1 else layouts.runtime_indices(n, anchor)


def _mesh_block(x: jax.Array, axis: int, entry: Any) -> jax.Array:
    """This device's block of ``x`` along ``axis`` split over the mesh axes ``entry``
    (inside ``shard_map``; the layout a ``PartitionSpec`` entry gives)."""
    size = x.shape[axis] // jax.lax.axis_size(entry)
    return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(entry) * size, size, axis)


def _entry_size(entry: Any) -> int:
    mesh = jax.sharding.get_abstract_mesh()
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(dict(zip(mesh.axis_names, mesh.axis_sizes))[n] for n in names)


def _divisible(spec: Any, shape: Sequence[int]) -> PartitionSpec:
    """``spec`` (or replicated for None) with the entries the mesh in context does not
    divide dropped."""
    entries = tuple(spec or ()) + (None,) * (len(shape) - len(spec or ()))
    return PartitionSpec(
        *(e if e is not None and d % _entry_size(e) == 0 else None for e, d in zip(entries, shape))
    )


def _gram_block(x: jax.Array, mode: int, num_batch: int, spec: PartitionSpec) -> jax.Array:
    """This device's block (``spec``: batch, rows, columns) of :func:`mode_gram` of the
    whole ``x``: each operand is sliced before the contraction."""
    batch, modes = _subscripts(num_batch, x.ndim - num_batch)
    a = modes[mode]
    left = right = x
    for ax, entry in enumerate(spec):
        if entry is None:
            continue
        if ax < num_batch:
            left, right = _mesh_block(left, ax, entry), _mesh_block(right, ax, entry)
        else:
            side = num_batch + mode
            if ax == num_batch:
                left = _mesh_block(left, side, entry)
            else:
                right = _mesh_block(right, side, entry)
    other = modes.replace(a, "z")
    return jnp.einsum(f"{batch + modes},{batch + other}->{batch}{a}z", left, right)


def stacked_spec(f: Any) -> PartitionSpec | None:
    """The ``PartitionSpec`` of a ``batch + (d, d)`` factor as a slice of a stack
    ``(n, d, d)`` (:func:`_soap_groups`): its batch entry where it has one batch axis;
    None for a placeholder or off an Explicit mesh."""
    spec = sharding.spec_of(f) if _is_basis(f) else None
    if spec is None:
        return None
    entries = tuple(spec) + (None,) * (f.ndim - len(spec))
    return PartitionSpec(entries[0] if f.ndim == 3 else None, *entries[-2:])


def _scattered_mode(view: ModeView, specs: Sequence[Any] | None) -> int | None:
    """The one sharded mode of a stacked group (``specs``: :func:`mode_specs`), when it
    is rotated and the mesh in context divides it; else None."""
    if specs is None or jax.sharding.get_abstract_mesh().empty:
        return None
    sharded = [i for i, e in enumerate(specs) if e is not None]
    if len(sharded) != 1 or not view.rotated[sharded[0]]:
        return None
    s = sharded[0]
    return s if view.mode_dims[s] % _entry_size(specs[s]) == 0 else None


def _soap_step_scattered(
    arrays: tuple[Any, ...],
    s_: dict[str, jax.Array],
    view: ModeView,
    mode: int,
    entry: Any,
    normalize: bool,
    factor_specs: Sequence[Any],
) -> tuple[Any, ...]:
    """SOAP's per-step math of a stacked group whose mode ``mode`` alone is sharded
    (over the mesh axes ``entry``), as explicit collectives (inside ``auto_axes``).

    With ``G`` (``m × n``, ``n`` the sharded mode) on ``N`` devices, the moments sharded
    like ``G``, the sharded mode's basis ``Q_n`` by columns (:func:`basis_zeros`) and
    the other bases gathered whole, each device:

    * receives ``G`` whole (one all-gather, ``(N − 1)/N`` of ``G``'s bytes) and
      rotates it into its own columns of the basis, ``Q_mᵀ G Q_n[:, own]`` — no
      reduction, the same dot products as the unsharded rotation;
    * forms its blocks of the factor statistics ``G Gᵀ``, ``Gᵀ G`` from the whole
      ``G`` (no collective);
    * rotates its columns of the direction back, ``Q_m D' Q_n[:, own]ᵀ``, a partial
      sum over the columns, reduce-scattered onto the sharded mode (``(N − 1)/N`` of
      ``G``'s bytes).

    Two of ``G``'s bytes per step plus a gather of each other basis (the compiler
    left alone: three and the bases twice). Returns
    ``(direction, m, v, new factors, basis inputs)`` like the unsharded step."""
    G, mu, nu, fs, qs = arrays
    nb, k = view.num_batch, len(view.modes)
    rot = [i for i, r in enumerate(view.rotated) if r]
    x_spec = PartitionSpec(*(None,) * nb, *(entry if i == mode else None for i in range(k)))
    q_specs = {
        i: PartitionSpec(*(None,) * nb, None, entry) if i == mode else PartitionSpec() for i in rot
    }
    f_specs = {i: _divisible(factor_specs[i], fs[i].shape) for i in rot}
    # Modes in the order of the unsharded rotation, the sharded one first (it shrinks).
    order = [mode] + [i for i in rot if i != mode]

    def body(G: Any, mu: Any, nu: Any, fs: Any, qs: Any, sl: Any) -> Any:
        x = G
        for i in order:
            x = mode_product(x, qs[i].astype(x.dtype), i, nb, into_basis=True)
        rot_g = drop_roundoff(x, rot, nb, (mode, entry))
        m = sl["b1"] * mu + sl["one_minus_b1"] * rot_g
        v = sl["b2"] * nu + sl["one_minus_b2"] * jnp.square(rot_g)
        d = base.safe_divide(m, jnp.sqrt(v) + sl["eps"])  # zeroed coordinates: no step
        for i in order[::-1]:
            d = mode_product(d, qs[i].astype(d.dtype), i, nb, into_basis=False)
        d = jax.lax.psum_scatter(d, entry, scatter_dimension=nb + mode, tiled=True)
        if normalize:
            axes = tuple(range(nb, d.ndim))
            size = math.prod(d.shape[nb:]) * jax.lax.axis_size(entry)
            total = jax.lax.psum(jnp.sum(jnp.square(d), axis=axes, keepdims=True), entry)
            d = d / (jnp.sqrt(total / size) + 1e-30)
        new_fs, basis_in = {}, {}
        for i in rot:
            gram = sl["one_minus_shampoo_beta"] * _gram_block(G, i, nb, f_specs[i])
            new_fs[i] = (sl["shampoo_beta"] * _f32(fs[i]) + gram).astype(fs[i].dtype)
            basis_in[i] = jnp.where(sl["count"] == 0, gram, _f32(new_fs[i]))
        return d * sl["step_scale"], m, v, new_fs, basis_in

    direction, m, v, new_fs, basis_in = jax.shard_map(
        body,
        mesh=jax.sharding.get_abstract_mesh(),
        in_specs=(PartitionSpec(), x_spec, x_spec, f_specs, q_specs, PartitionSpec()),
        out_specs=(x_spec, x_spec, x_spec, f_specs, f_specs),
        check_vma=False,
    )(G, mu, nu, {i: fs[i] for i in rot}, {i: qs[i] for i in rot}, s_)
    return direction, m, v, tuple(new_fs.get(i, f) for i, f in enumerate(fs)), basis_in


def _soap_moment_rebased(
    m: jax.Array, old: Sequence[Any], new: Sequence[Any], view: ModeView, mode: int, entry: Any
) -> jax.Array:
    """The refresh's change of basis of SOAP's first moment for a group stepped by
    :func:`_soap_step_scattered` (mode ``mode`` alone sharded over the mesh axes
    ``entry``), as explicit collectives: ``M ×_i (Q_iᵀ Q'_i)ᵀ`` per rotated mode, the
    old-to-new transition ``Q_iᵀ Q'_i`` (``d_i × d_i``) instead of the rotation back and
    forth through the parameter basis (the same map; the same numbers up to rounding,
    ``tests/test_bases.py``). The new bases arrive whole (computed on every device),
    the sharded mode's old basis by its columns: each device forms its rows of that
    transition, ``Q[:, own]ᵀ Q'``, contracts its block of ``M`` with them and the
    partial products are reduce-scattered onto the mode (``(N − 1)/N`` of ``M``'s
    bytes, the floor: ``benchmarks/comm_budget.py``); the other modes' products are
    local. The roundoff drop follows (:func:`drop_roundoff`)."""
    nb, k = view.num_batch, len(view.modes)
    rot = [i for i, r in enumerate(view.rotated) if r]
    m_spec = PartitionSpec(*(None,) * nb, *(entry if i == mode else None for i in range(k)))
    old_specs = {
        i: PartitionSpec(*(None,) * nb, None, entry) if i == mode else PartitionSpec() for i in rot
    }

    def body(m: Any, old: Any, new: Any) -> Any:
        for i in [i for i in rot if i != mode] + [mode]:
            t = _mT(_f32(old[i])) @ _f32(new[i])
            m = mode_product(m, t.astype(m.dtype), i, nb, into_basis=True)
        m = jax.lax.psum_scatter(m, entry, scatter_dimension=nb + mode, tiled=True)
        return drop_roundoff(m, rot, nb, (mode, entry))

    return jax.shard_map(
        body,
        mesh=jax.sharding.get_abstract_mesh(),
        in_specs=(m_spec, old_specs, {i: PartitionSpec() for i in rot}),
        out_specs=m_spec,
        check_vma=False,
    )(m, {i: old[i] for i in rot}, {i: new[i] for i in rot})


def _soap_group_inputs(
    views: Sequence[ModeView], leaves: Sequence[Any], view: ModeView, members: list[int]
) -> tuple[Any, ...]:
    """One group's ``(g, mu, nu, factors, bases)``: ``g`` and the moments in float32, in
    the group's modes and stacked on its batch axis (a lone unrotated leaf as it is),
    the factors and bases of its rotated modes stacked, the others shared."""
    if members == [members[0]] and not view.modes:
        g, mu, nu, fs, qs = leaves[members[0]]
        return _f32(g), _f32(mu), _f32(nu), fs, qs
    k = len(view.modes)
    rot = [i for i, r in enumerate(view.rotated) if r]
    g, mu, nu = (
        _stacked([to_modes(_f32(leaves[e][n]), views[e]) for e in members], k) for n in range(3)
    )
    fs, qs = (
        tuple(
            _stacked([leaves[e][n][i] for e in members], 2)
            if i in rot
            else leaves[members[0]][n][i]
            for i in range(k)
        )
        for n in (3, 4)
    )
    return g, mu, nu, fs, qs


def _soap_rotated_adam(
    inputs: tuple[Any, ...],
    sl: dict[str, jax.Array],
    view: ModeView,
    normalize: bool,
    first: jax.Array,
) -> tuple[Any, ...]:
    """One group's step in its current bases (``inputs`` from :func:`_soap_group_inputs`):
    Adam's moments of the rotated gradient, the direction rotated back (normalized per
    matrix when ``normalize``), the factors' EMA of the gradient's mode Gram matrices and
    the inputs of the basis update (the first call's eigh sees the first Gram matrix)."""
    G, mu, nu, fs, qs = inputs
    nb = view.num_batch
    rot = [i for i, r in enumerate(view.rotated) if r]
    rot_g = drop_roundoff(rotate(G, qs, nb), rot, nb)
    m = sl["b1"] * mu + sl["one_minus_b1"] * rot_g
    v = sl["b2"] * nu + sl["one_minus_b2"] * jnp.square(rot_g)
    direction = rotate_back(base.safe_divide(m, jnp.sqrt(v) + sl["eps"]), qs, nb)
    if normalize:
        # Per matrix of a stack (each is its own tensor in PyTorch);
        # an unrotated leaf is normalized as a whole.
        axes = tuple(range(nb if view.modes else 0, direction.ndim))
        rms = jnp.sqrt(jnp.mean(jnp.square(direction), axis=axes, keepdims=True))
        direction = direction / (rms + 1e-30)
    new_fs, basis_in = list(fs), {}
    for i in rot:
        gram = sl["one_minus_shampoo_beta"] * mode_gram(G, i, nb)
        new_fs[i] = (sl["shampoo_beta"] * _f32(fs[i]) + gram).astype(fs[i].dtype)
        # The first eigh sees the factor before its cast to the storage dtype.
        basis_in[i] = jnp.where(first, gram, _f32(new_fs[i]))
    return direction * sl["step_scale"], m, v, tuple(new_fs), basis_in


def _soap_group_outputs(
    views: Sequence[ModeView],
    leaves: Sequence[Any],
    view: ModeView,
    members: list[int],
    arrays: tuple[Any, ...],
    indices: tuple[jax.Array, ...] | None,
) -> dict[int, tuple[Any, ...]]:
    """One group's stacked ``(direction, m, v, factors, bases)`` split back into its
    leaves (their shapes and dtypes; unrotated modes keep the leaf's own factors)."""
    direction, m, v, new_fs, new_qs = arrays
    if members == [members[0]] and not view.modes:
        g, mu0, nu0, fs, qs = leaves[members[0]]
        return {
            members[0]: (
                direction.astype(g.dtype),
                m.astype(mu0.dtype),
                v.astype(nu0.dtype),
                fs,
                qs,
            )
        }
    k = len(view.modes)
    rot = [i for i, r in enumerate(view.rotated) if r]
    batches = [views[e].batch_shape for e in members]
    parts = [_unstacked(x, batches, k, indices) for x in (direction, m, v)]
    f_parts = {i: _unstacked(new_fs[i], batches, 2, indices) for i in rot}
    q_parts = {i: _unstacked(new_qs[i], batches, 2, indices) for i in rot}
    out = {}
    for n, e in enumerate(members):
        g, mu0, nu0, fs, qs = leaves[e]
        out[e] = (
            from_modes(parts[0][n], views[e]).astype(g.dtype),
            from_modes(parts[1][n], views[e]).astype(mu0.dtype),
            from_modes(parts[2][n], views[e]).astype(nu0.dtype),
            tuple(f_parts[i][n] if i in f_parts else fs[i] for i in range(k)),
            tuple(q_parts[i][n] if i in q_parts else qs[i] for i in range(k)),
        )
    return out


def _soap_tree_update(
    views: Sequence[ModeView],
    leaves: Sequence[Any],
    s: dict[str, jax.Array],
    normalize: bool,
    explicit: bool = False,
    leaf_specs: Sequence[Any] | None = None,
    factor_specs: Sequence[Any] | None = None,
) -> list[Any]:
    """SOAP's update of every leaf (``(g, mu, nu, factors, bases)`` per leaf, in
    ``views`` order) as one program: leaves with the same modes are stacked on one
    batch axis (:func:`_soap_groups`), the first call's eigh and the refresh's power
    QR share one ``lax.cond`` for the whole tree with one eigh / QR per distinct
    factor shape (:func:`soap_basis_update`). The math per matrix is unchanged.
    ``explicit`` (arrays on an Explicit mesh): the basis updates run whole on
    every device (:func:`on_every_device`), one gather of each factor and basis
    per refresh; ``leaf_specs`` (per leaf, :func:`mode_specs`) and ``factor_specs``
    (per leaf, the factors' ``PartitionSpec``): a group with one sharded, rotated mode
    takes its step through explicit collectives (:func:`_soap_step_scattered`) and its
    refresh's change of basis of the first moment through one reduce-scatter
    (:func:`_soap_moment_rebased`)."""
    first = s["count"] == 0
    leaf_specs = [None] * len(leaves) if leaf_specs is None else leaf_specs
    groups = _soap_groups(views, leaves, leaf_specs if explicit else None)
    stepped = []  # per group: (direction, m, v, new factors, factor inputs of the basis update)
    scatter = []  # per group: (mode, mesh axes) of a group stepped by _soap_step_scattered
    for view, members in groups:
        inputs = _soap_group_inputs(views, leaves, view, members)
        sl = _in_dtype(s, inputs[0].dtype)
        specs = None
        if explicit and all(leaf_specs[e] == leaf_specs[members[0]] for e in members):
            specs = leaf_specs[members[0]]
        scattered = _scattered_mode(view, specs) if view.modes else None
        if scattered is not None:
            f_specs = (factor_specs or [[None] * len(view.modes)] * len(leaves))[members[0]]
            stepped.append(
                _soap_step_scattered(
                    inputs, sl, view, scattered, specs[scattered], normalize, f_specs
                )
            )
            scatter.append((scattered, specs[scattered]))
        else:
            stepped.append(_soap_rotated_adam(inputs, sl, view, normalize, first))
            scatter.append(None)
        stepped[-1] += (inputs[4], inputs[1], inputs[2])  # the old bases and moments

    def bases_branch(ops: Any) -> Any:
        ms, vs, qss = ops
        entries, where = [], []
        for j, (view, _) in enumerate(groups):
            for i, f in stepped[j][4].items():
                entries.append((view.batch_shape, (f, _f32(qss[j][i]))))
                where.append((j, i))
        results = _by_shape(
            lambda f, q: on_every_device(soap_basis_update, f, q, first, local=explicit),
            entries,
            s["count"],
        )
        ms, vs, new_qss = list(ms), list(vs), [list(qs) for qs in qss]
        for j, (view, _) in enumerate(groups):
            if stepped[j][4] and scatter[j] is None:
                ms[j] = rotate_back(ms[j], qss[j], view.num_batch)
        for (j, i), (q, order) in zip(where, results, strict=True):
            vs[j] = permute_mode(vs[j], order, i, groups[j][0].num_batch)
            new_qss[j][i] = q.astype(qss[j][i].dtype)
        for j, (view, _) in enumerate(groups):
            if stepped[j][4] and scatter[j] is not None:
                ms[j] = _soap_moment_rebased(ms[j], qss[j], new_qss[j], view, *scatter[j])
            elif stepped[j][4]:
                nb = view.num_batch
                ms[j] = drop_roundoff(rotate(ms[j], new_qss[j], nb), list(stepped[j][4]), nb)
        return ms, vs, [tuple(q) for q in new_qss]

    ops = ([x[1] for x in stepped], [x[2] for x in stepped], [x[5] for x in stepped])
    if any(x[4] for x in stepped):
        ops = base.cond(first | s["refresh"], bases_branch, lambda ops: ops, ops)
    indices = _shared_indices(
        s["count"],
        [sum(math.prod(views[e].batch_shape) for e in m) for _, m in groups if len(m) > 1],
    )
    out: dict[int, tuple[Any, ...]] = {}
    for j, (view, members) in enumerate(groups):
        direction, _, _, new_fs, _, _, mu, nu = stepped[j]
        arrays = (
            jnp.where(first, 0.0, direction),
            jnp.where(first, mu, ops[0][j]),
            jnp.where(first, nu, ops[1][j]),
            new_fs,
            ops[2][j],
        )
        out.update(_soap_group_outputs(views, leaves, view, members, arrays, indices))
    return [out[e] for e in range(len(leaves))]


# ----------------------------------------------------------------------------
# SOAP
# ----------------------------------------------------------------------------


# The number of mode trees of SOAP's state with factorization='axes' (a 3-D
# convolution kernel's five axes).
MAX_AXIS_MODES = 5


class ScaleBySoapState(NamedTuple):
    """State of :func:`scale_by_soap`.

    Attributes:
      count: number of ``update`` calls so far (the first only initializes).
      mu: first moment, in the rotated basis (parameter-shaped).
      nu: second moment, in the rotated basis (parameter-shaped).
      factors: a tuple over mode index ``i`` (2 entries with
        ``factorization='matrix'``, :data:`MAX_AXIS_MODES` with ``'axes'``,
        whatever the leaves): a parameter-structured tree whose leaf holds the
        EMA Kronecker factor ``batch + (d_i, d_i)`` of that leaf's mode ``i``,
        or ``optax.MaskedNode()`` (no such mode, or an unrotated one). Keeping
        the per-mode split outside the parameter tree keeps the state a plain
        tree of arrays inside ``nnx.State`` too, and its fixed length lets
        ``optax.tree.map_params`` rebuild its structure.
      bases: the matching eigenbases (same structure as ``factors``).
    """

    count: jax.Array
    mu: base.Updates
    nu: base.Updates
    factors: Any
    bases: Any


@hyperparams.validated()
def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    *,
    shampoo_beta: float | None = None,
    update_proj_gap: int = 10,
    max_precond_dim: int = 10000,
    factorization: str = "matrix",
    merge_dims: bool = False,
    precondition_1d: bool = False,
    extra_layout: LayoutSpec | None = None,
    normalize_grads: bool = False,
    bias_correction: bool = True,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    precond_dtype: base.DTypeLike | None = None,
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam in the eigenbasis of Shampoo's Kronecker factors (SOAP's direction).

    Vyas et al., arXiv 2409.11321, Algorithms 3 (SOAP step) and 4 (eigenvector
    refresh by power iteration + QR), with the official code's semantics
    (``nikhilvyas/SOAP`` ``soap.py`` @a1e55353). Per leaf, with a factor
    ``F_i`` and a basis ``Q_i`` for every rotated mode (:class:`ModeView`):

    .. math::

      G' = \\mathrm{rotate}(G), \\quad M' ← β_1 M' + (1-β_1) G', \\quad
      V ← β_2 V + (1-β_2) G'^2,

      U = \\frac{\\sqrt{1-β_2^t}}{1-β_1^t}\\,\\mathrm{rotate\\_back}\\big(M' / (\\sqrt V + ε)\\big),

      F_i ← β_s F_i + (1-β_s)\\, \\mathrm{gram}_i(G) \\quad
      (\\text{after the step; } F_0 = G G^\\top,\\ F_1 = G^\\top G \\text{ for a matrix}).

    Official semantics, all reproduced:

    * The **first call only initializes**: ``F_i = (1−β_s) gram_i(G)`` and
      ``Q_i = eigh(F_i)`` (descending eigenvalues); the update is **zero** and
      the moments stay zero. The bias-correction step ``t`` counts the real
      updates (the first call is not counted).
    * Every ``update_proj_gap`` real updates (``t % f == 0``), after the
      factor update, each ``Q_i`` is refreshed by :func:`power_qr_basis`; ``V``
      is **permuted** by the eigenvalue sort (not rotated) and ``M'`` is
      re-rotated (back with the old basis, forward with the new). The official
      code round-trips ``M'`` through the original basis on every step; that
      is the identity up to round-off and is done only on refresh here.
    * ε is added to ``√V`` before the bias correction, which is folded into the
      step size (``√(1−β₂ᵗ)/(1−β₁ᵗ)``; ``bias_correction=False`` drops it).
    * Modes larger than ``max_precond_dim`` get no rotation; 1-D leaves are
      unrotated unless ``precondition_1d``; ``normalize_grads`` divides each
      matrix of ``U`` by its RMS (+1e-30) before the bias correction.
    * ``shampoo_beta`` (β_s) defaults to ``b2`` (the official ``−1``; a negative
      value also means ``b2``).
    * eigh/QR in the parameter's compute dtype (float32 for bf16/f32
      parameters, float64 for f64 ones); factors and bases are stored in
      ``precond_dtype`` (default: that compute dtype).

    Which leaves are rotated: leaves the ``layout`` spec gives a layout (the
    router's hidden matrices) use their matrix view (``factorization='matrix'``:
    modes ``(fan_in, fan_out)``, so a conv kernel is one ``kh·kw·in × out``
    matrix and stacked layers get per-layer factors) or one mode per non-batch
    axis (``'axes'``, the official N-D treatment, with the official greedy
    ``merge_dims`` applied in PyTorch's axis order, so a Flax conv kernel gets
    the official ``(out·in, kh·kw)`` modes: :func:`torch_axis_order`). Leaves ``layout`` gives no layout are looked up in
    ``extra_layout`` (the :func:`optx.soap` alias passes the embeddings and
    heads there, as the official code rotates every 2-D parameter); leaves
    neither gives a layout get element-wise Adam.

    Deviations from the official code:
      Roundoff is not amplified. For a non-square matrix the larger factor is
      rank-deficient at the first eigh, and the official eigh returns an
      arbitrary (LAPACK-, device- and reduction-order-dependent) basis of its
      null space; and the first real step rotates a gradient by the bases that
      diagonalize it, so all but ``min(m, n)`` rotated coordinates are
      roundoff. Adam's ``c / (√(c²) + ε)`` turns both into unit steps in
      arbitrary directions: a 1e-7 relative change of the gradients (another
      device count or process split) moved parameters by 1e-2 in 3 steps. optx
      makes them deterministic: null-space columns (eigenvalues, or estimated
      eigenvalues at a refresh, at most ``8 n ε`` of the largest) are a fixed
      completion of the others (:func:`eigh_basis`, :func:`power_qr_basis`),
      and rotated coordinates below the roundoff of the rotation are zero
      (:func:`drop_roundoff`); the same perturbation then moves parameters by
      6e-7. Where the bases are unique and no coordinate is roundoff the
      update is the official one (golden ``soap__public``, float64 reference).
      A zeroed coordinate has ``M' = V = 0`` and gets no step, also at
      ``eps=0`` (where the quotient would be ``0/0``).

    Implementation: leaves with the same modes are stacked on one batch axis
    and the first eigh and the refresh share one ``lax.cond`` for the whole tree
    with one eigh / QR per distinct factor shape, so the compiled program grows
    with the number of distinct shapes, not of leaves.

    State memory per ``m × n`` matrix: ``2mn`` (``M'``, ``V``) + ``2(m² + n²)``
    (factors and bases).

    Args:
      b1, b2, eps: Adam's hyper-parameters (injectable).
      shampoo_beta: EMA decay of the factors (default ``b2``).
      update_proj_gap: refresh period of the bases (static).
      max_precond_dim: modes above this size stay unrotated (static).
      factorization: ``'matrix'`` or ``'axes'`` (static).
      merge_dims: greedy merge of axes (``'axes'`` only).
      precondition_1d: rotate 1-D leaves too.
      extra_layout: an optional second :data:`~optx.LayoutSpec` for leaves
        ``layout`` gives none (``None``: no other leaf is rotated).
      normalize_grads: per-matrix RMS normalization of the update.
      bias_correction: fold Adam's bias correction into the step.
      mu_dtype, nu_dtype: dtypes of ``M'`` and ``V`` (default: the param dtype).
      precond_dtype: storage dtype of factors and bases (default ``None``: the
        parameter's compute dtype, ``promote(param dtype, float32)``).
      layout: a :data:`~optx.LayoutSpec` (default: the default router's).

    References:
      Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson, Kakade, "SOAP:
      Improving and Stabilizing Shampoo using Adam", arXiv 2409.11321 (code:
      github.com/nikhilvyas/SOAP).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_soap()
      >>> g = {'w': jnp.ones((4, 3)) + jnp.eye(4, 3)}
      >>> state = tx.init(g)
      >>> u, state = tx.update(g, state)   # first call: initializes only
      >>> float(jnp.abs(u['w']).max())
      0.0
      >>> u, state = tx.update(g, state)
      >>> u['w'].shape
      (4, 3)
    """
    base.check_in_range("b1", b1, 0.0, 1.0)
    base.check_in_range("b2", b2, 0.0, 1.0)
    base.check_nonnegative("eps", eps)
    if shampoo_beta is not None:
        base.check_in_range("shampoo_beta", shampoo_beta, -math.inf, 1.0)
    frequency = base.check_positive_int("update_proj_gap", update_proj_gap)
    max_dim = base.check_positive_int("max_precond_dim", max_precond_dim)
    if merge_dims and factorization != "axes":
        raise ValueError("merge_dims=True needs factorization='axes' (the matrix view is merged).")
    mu_dtype = _check_dtype_arg("mu_dtype", mu_dtype)
    nu_dtype = _check_dtype_arg("nu_dtype", nu_dtype)
    precond_dtype = _check_dtype_arg("precond_dtype", precond_dtype)
    view_of = rotation_view_fn(
        layout,
        factorization=factorization,
        merge_dims=merge_dims,
        max_dim=max_dim,
        extra_layout=extra_layout,
        precondition_1d=precondition_1d,
    )

    def init_fn(params: base.Params) -> ScaleBySoapState:
        base.check_real_params(params, "optx.scale_by_soap")  # real-only math (docstring)
        # A fixed number of mode trees (not the largest a leaf of this tree has):
        # the state's structure must not depend on the leaves, as optax's
        # `tree.map_params` builds it from a placeholder without leaves.
        num_modes = 2 if factorization == "matrix" else MAX_AXIS_MODES
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            if len(view_of(base.path_to_str(p), x).modes) > num_modes:
                raise ValueError(
                    f"SOAP with factorization='axes' rotates at most {MAX_AXIS_MODES} axes; "
                    f"leaf '{base.path_to_str(p)}' of shape {jnp.shape(x)} has more "
                    "(pass merge_dims=True to merge them)."
                )

        def mode_tree(i: int, basis: bool = False) -> Any:
            def leaf(path: Any, p: Any) -> Any:
                view = view_of(base.path_to_str(path), p)
                if i < len(view.modes) and view.rotated[i]:
                    dtype = precond_dtype or base.compute_dtype(p.dtype)
                    if basis:
                        return basis_zeros(view, i, dtype, p)
                    return factor_zeros(view, i, dtype, p, fill=True)
                return optax.MaskedNode()

            return jax.tree_util.tree_map_with_path(leaf, params)

        factors = tuple(mode_tree(i) for i in range(num_modes))
        bases = tuple(mode_tree(i, basis=True) for i in range(num_modes))
        return ScaleBySoapState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params, dtype=nu_dtype),
            factors=factors,
            bases=bases,
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleBySoapState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleBySoapState]:
        del params, extra
        # The first call only initializes, so call number c (from 0) is real step t = c.
        t = state.count
        bc1, bc2 = _bias_corrections(jnp.maximum(t, 1), b1, b2)
        step_scale = jnp.sqrt(bc2) / bc1 if bias_correction else jnp.ones([], bc1.dtype)
        if shampoo_beta is None:
            beta_s, omb_s = b2, _one_minus(b2)
        else:
            use_b2 = jnp.asarray(shampoo_beta) < 0
            beta_s = jnp.where(use_b2, b2, shampoo_beta)
            omb_s = jnp.where(use_b2, _one_minus(b2), _one_minus(shampoo_beta))
        scalars = _scalars(
            count=state.count,
            b1=b1,
            b2=b2,
            one_minus_b1=_one_minus(b1),
            one_minus_b2=_one_minus(b2),
            eps=eps,
            shampoo_beta=beta_s,
            one_minus_shampoo_beta=omb_s,
            step_scale=step_scale,
            refresh=(t > 0) & (t % frequency == 0),
        )
        k = len(state.factors)
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=base.is_leaf_or_none)
        columns = [treedef.flatten_up_to(x) for x in (state.mu, state.nu, *state.factors)]
        columns += [treedef.flatten_up_to(x) for x in state.bases]
        live = [j for j, (_, g) in enumerate(flat) if g is not None]
        views = [view_of(base.path_to_str(flat[j][0]), flat[j][1]) for j in live]
        per_leaf = []  # (g, mu, nu, factors, bases) of every live leaf
        for j, view in zip(live, views, strict=True):
            n = len(view.modes)
            fs = tuple(columns[2 + i][j] for i in range(n))
            qs = tuple(columns[2 + k + i][j] for i in range(n))
            per_leaf.append((flat[j][1], columns[0][j], columns[1][j], fs, qs))
        # One program for the whole tree: same-shape factors share one eigh / QR
        # (``_by_shape``), and the first-call and refresh branches are one lax.cond each.
        explicit = any(sharding.spec_of(x) is not None for x in jax.tree.leaves(per_leaf))
        leaf_specs = [mode_specs(arrays[0], v) for arrays, v in zip(per_leaf, views, strict=True)]
        factor_specs = [[stacked_spec(f) for f in arrays[3]] for arrays in per_leaf]
        new = call_keeping_shardings(
            lambda arrays, s: _soap_tree_update(
                views, arrays, s, normalize_grads, explicit, leaf_specs, factor_specs
            ),
            per_leaf,
            scalars,
        )
        out = [[col[j] for j in range(len(flat))] for col in [[g for _, g in flat], *columns]]
        for j, (u, mu, nu, fs, qs) in zip(live, new, strict=True):
            out[0][j], out[1][j], out[2][j] = u, mu, nu
            for i, (f, q) in enumerate(zip(fs, qs, strict=True)):
                out[3 + i][j], out[3 + k + i][j] = f, q
        trees = [jax.tree_util.tree_unflatten(treedef, o) for o in out]
        return trees[0], ScaleBySoapState(
            count=optax.safe_increment(state.count),
            mu=trees[1],
            nu=trees[2],
            factors=tuple(trees[3 : 3 + k]),
            bases=tuple(trees[3 + k :]),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Conda
# ----------------------------------------------------------------------------


class ScaleByCondaState(NamedTuple):
    """State of :func:`scale_by_conda`.

    Attributes:
      count: number of updates so far.
      mu: first moment in the **original** coordinates (parameter-shaped).
      nu: second moment in the rotated basis (not rotated or reset when the
        basis changes): parameter-shaped when the rotated side is the smaller
        one; otherwise the projected matrix ``batch + (k, d)`` or
        ``batch + (d, k)`` (``k = min(fan_in, fan_out)``).
      bases: per leaf, the orthogonal SVD factor of the rotated side
        ``batch + (d_side, k)`` (``(k, k)`` on the smaller side), or
        ``optax.MaskedNode()`` for unrotated leaves.
    """

    count: jax.Array
    mu: base.Updates
    nu: base.Updates
    bases: Any


CONDA_SIDES = ("std", "reverse_std", "in", "out")


def conda_side(view: ModeView, side: str = "std") -> int:
    """The mode Conda rotates (0: fan-in, 1: fan-out) for the official
    ``proj_type``: ``'std'`` the smaller side, fan-in on a tie (the PyTorch
    ``(out, in)`` rule ``out >= in → right (in) side``); ``'reverse_std'`` the
    other one; ``'in'`` (PyTorch ``'right'``) and ``'out'`` (``'left'``)."""
    fan_in, fan_out = view.mode_dims
    smaller = 0 if fan_in <= fan_out else 1
    return {"std": smaller, "reverse_std": 1 - smaller, "in": 0, "out": 1}[side]


def _projected_dims(view: ModeView, mode: int) -> tuple[int, ...]:
    """Mode dims of a matrix view with ``mode`` projected to ``min`` of the two."""
    k = min(view.mode_dims)
    return tuple(k if i == mode else d for i, d in enumerate(view.mode_dims))


@hyperparams.validated()
def scale_by_conda(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    update_proj_gap: int = 50,
    scale: float = 1.0,
    bias_correction: bool = True,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    precond_dtype: base.DTypeLike | None = None,
    layout: LayoutSpec = None,
    side: str = "std",
) -> optax.GradientTransformationExtraArgs:
    """Column-normalized Adam: Adam's second moment in the SVD basis of the momentum.

    Wang et al., arXiv 2509.24218, Algorithm 1, with the official code's
    semantics (``jie040109/Conda`` ``conda_torch/conda.py`` + ``projector.py``
    @449af713, ``proj_type='std'``). Per matrix ``G`` (Flax ``n × m`` =
    ``fan_in × fan_out``) with layout:

    .. math::

      M ← β_1 M + (1-β_1) G, \\qquad
      Q ← \\text{orthogonal SVD factor of } M \\text{ on the smaller side}
      \\quad (\\text{calls } 0, T, 2T, \\dots),

      V ← β_2 V + (1-β_2)\\, \\tilde G^2, \\qquad
      U = s\\,\\frac{\\sqrt{1-β_2^t}}{1-β_1^t}\\,
      \\mathrm{rotate\\_back}\\big(\\tilde M / (\\sqrt V + ε)\\big)

    with ``G̃ = rotate(G)``, ``M̃ = rotate(M)``: ``Qᵀ X`` when the fan-in side is
    rotated (``n <= m``; PyTorch's right projection ``X Vᴴᵀ``), ``X Q`` when
    the fan-out side is (PyTorch's left ``Uᵀ X``). The rotation is **full rank**
    (``k × k``, ``k = min(n, m)``), not a low-rank projection.

    Official-code quirks, all reproduced:

    * ``M`` stays in the original coordinates; only ``V`` lives in the rotated
      basis, and ``V`` is **not** rotated or reset when ``Q`` changes.
    * The SVD is of the *updated* momentum (at the first call ``M = (1−β₁)G``)
      and is taken when the pre-increment step counter is a multiple of
      ``update_proj_gap`` (steps 0, T, 2T, …), in the compute dtype (≥ f32).
    * ε is added to the uncorrected ``√V``; the bias correction is folded into
      the step size; ``scale`` multiplies only the rotated leaves.
    * Leaves without a layout get the same Adam without rotation or ``scale``
      (the official non-projected parameter group).
    * SVD sign conventions cancel (``V`` holds squares and ``Ñ`` goes back
      through the same ``Q``).

    ``side`` is the official projector's ``proj_type``: ``'std'`` (default,
    the paper's), ``'reverse_std'`` (the larger side), ``'in'`` (PyTorch
    ``'right'``) and ``'out'`` (``'left'``); they match the official code
    (float64 run, its float32 SVD: 2e-8) wherever it runs: on the smaller side
    and on square matrices. On the larger side of a non-square matrix the
    official code fails (its ``V`` is parameter-shaped); optx then projects as
    GaLore does: ``Q`` is the reduced factor (``d × k``, orthonormal columns),
    a rank-``k`` projection, and ``V`` has the projected shape. ``'full'``
    (both sides) is not offered.

    State memory per ``m × n`` matrix: ``2mn + min(m, n)²`` on either side.

    Args:
      b1, b2, eps: Adam's hyper-parameters (injectable).
      update_proj_gap: the refresh period T of the basis (static).
      scale: multiplier of the rotated leaves' update (injectable).
      bias_correction: fold Adam's bias correction into the step.
      mu_dtype, nu_dtype: moment dtypes (default: the param dtype).
      precond_dtype: storage dtype of the bases (default: the parameter's
        compute dtype, float32 for bf16/f32 parameters, float64 for f64).
      layout: a :data:`~optx.LayoutSpec` (default: the default router's).
      side: the rotated side (static; official ``proj_type``, see above).

    References:
      Wang, Zhou, Dong, Li, Li, Zhou, Lao, Fang, Lin, "Conda: Column-Normalized
      Adam for Training Large Language Models Faster", arXiv 2509.24218 (code:
      github.com/jie040109/Conda).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_conda(update_proj_gap=10)
      >>> g = {'w': jnp.ones((4, 3)) + jnp.eye(4, 3)}
      >>> u, state = tx.update(g, tx.init(g))
      >>> state.bases['w'].shape   # the 3 x 3 fan-out side is the smaller one
      (3, 3)
    """
    base.check_in_range("b1", b1, 0.0, 1.0)
    base.check_in_range("b2", b2, 0.0, 1.0)
    base.check_nonnegative("eps", eps)
    base.check_finite("scale", scale)
    gap = base.check_positive_int("update_proj_gap", update_proj_gap)
    mu_dtype = _check_dtype_arg("mu_dtype", mu_dtype)
    nu_dtype = _check_dtype_arg("nu_dtype", nu_dtype)
    precond_dtype = _check_dtype_arg("precond_dtype", precond_dtype)
    base.check_choice("side", side, CONDA_SIDES)
    view_of = rotation_view_fn(layout)

    def rotated_mode(view: ModeView) -> int | None:
        return conda_side(view, side) if view.modes else None

    def projects(view: ModeView, mode: int | None) -> bool:
        """Whether the rotated side is the larger one (``V`` then has the projected shape)."""
        return mode is not None and view.mode_dims[mode] > min(view.mode_dims)

    def init_fn(params: base.Params) -> ScaleByCondaState:
        base.check_real_params(params, "optx.scale_by_conda")  # real-only math (docstring)

        def leaf_basis(path: Any, p: Any) -> Any:
            view = view_of(base.path_to_str(path), p)
            mode = rotated_mode(view)
            if mode is None:
                return optax.MaskedNode()
            dtype = precond_dtype or base.compute_dtype(p.dtype)
            shape = (*view.batch_shape, view.mode_dims[mode], min(view.mode_dims))
            axes = (*view.batch_axes, mode_source_axis(view, mode), None)
            basis = zeros_from_axes(shape, dtype, p, axes)
            # A (d, k) basis per matrix: the mesh axes its first axis does not use go on
            # the second (sharding.fill_spec), so it is spread over every device.
            return sharding.zeros_filled(basis.shape, dtype, sharding.spec_of(basis), p)

        def leaf_nu(path: Any, p: Any) -> Any:
            view = view_of(base.path_to_str(path), p)
            mode = rotated_mode(view)
            dtype = p.dtype if nu_dtype is None else nu_dtype
            if not projects(view, mode):
                return jnp.zeros_like(p, dtype=dtype)
            axes = tuple(None if i == mode else mode_source_axis(view, i) for i in range(2))
            shape = (*view.batch_shape, *_projected_dims(view, mode))
            return zeros_from_axes(shape, dtype, p, (*view.batch_axes, *axes))

        return ScaleByCondaState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=jax.tree_util.tree_map_with_path(leaf_nu, params),
            bases=jax.tree_util.tree_map_with_path(leaf_basis, params),
        )

    def leaf_update(view: ModeView) -> Callable[[Any, Any], Any]:
        nb = view.num_batch
        mode = rotated_mode(view)
        projected = projects(view, mode)

        def fn(arrays: Any, s: dict[str, jax.Array]) -> Any:
            g, mu, nu, q = arrays
            G = to_modes(_f32(g), view)
            s = _in_dtype(s, G.dtype)
            m = s["b1"] * to_modes(_f32(mu), view) + s["one_minus_b1"] * G
            bases: tuple[Any, ...] = ()
            if mode is not None:
                q = base.cond(
                    s["refresh"],
                    lambda m: singular_factor(m, mode).astype(q.dtype),
                    lambda m: q,
                    m,
                )
                bases = tuple(q if i == mode else None for i in range(2))
            rot_g, rot_m = rotate(G, bases, nb), rotate(m, bases, nb)
            v_prev = _f32(nu) if projected else to_modes(_f32(nu), view)
            v = s["b2"] * v_prev + s["one_minus_b2"] * jnp.square(rot_g)
            direction = rotate_back(base.safe_divide(rot_m, jnp.sqrt(v) + s["eps"]), bases, nb)
            direction = direction * s["step_scale"]
            if mode is not None:
                direction = direction * s["scale"]
            return (
                from_modes(direction, view).astype(g.dtype),
                from_modes(m, view).astype(mu.dtype),
                (v if projected else from_modes(v, view)).astype(nu.dtype),
                q,
            )

        return fn

    def update_fn(
        updates: base.Updates,
        state: ScaleByCondaState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByCondaState]:
        del params, extra
        count = optax.safe_increment(state.count)
        bc1, bc2 = _bias_corrections(count, b1, b2)
        step_scale = jnp.sqrt(bc2) / bc1 if bias_correction else jnp.ones([], bc1.dtype)
        scalars = _scalars(
            b1=b1,
            b2=b2,
            one_minus_b1=_one_minus(b1),
            one_minus_b2=_one_minus(b2),
            eps=eps,
            scale=scale,
            step_scale=step_scale,
            refresh=state.count % gap == 0,
        )

        def leaf(path: str, g: jax.Array, *states: Any) -> tuple[Any, ...]:
            return call_keeping_shardings(leaf_update(view_of(path, g)), (g, *states), scalars)

        u, mu, nu, q = map_leaves_with_state(leaf, updates, state.mu, state.nu, state.bases)
        return u, ScaleByCondaState(count=count, mu=mu, nu=nu, bases=q)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def map_stacked(
    fn: Callable[..., Sequence[jax.Array]],
    views: Sequence[ModeView],
    leaves: Sequence[Sequence[jax.Array]],
    leaf_shaped: int = 1,
    out_leaf_shaped: int | None = None,
    keys: Sequence[Any] | None = None,
    anchor: jax.Array | None = None,
) -> list[tuple[jax.Array, ...]]:
    """``fn(view, arrays)`` per leaf, one call per group of same-shape leaves.

    ``leaves[e]`` is a tuple of arrays of a two-mode leaf with view ``views[e]``:
    the first ``leaf_shaped`` have the leaf's shape, the others are
    ``batch + (a, b)`` state. ``fn`` must treat every matrix of its batch
    independently and return arrays of the same kinds in the same order (or, with
    ``out_leaf_shaped``, that many leaf-shaped arrays first, then state). With
    ``keys`` (one hashable per leaf), only leaves with equal keys are stacked and
    ``fn`` is called as ``fn(view, arrays, key)``. Leaves
    with equal mode sizes, state shapes and dtypes are stacked on one batch axis
    (``fn`` sees the stack's view), so the program grows with the number of
    distinct shapes, not of leaves. With ``anchor`` (an integer scalar such as
    a step counter), the results are sliced out of the stack at runtime offsets
    (:func:`layouts.runtime_indices`), so same-shape leaves share their kernels.
    """
    groups: dict[Any, list[int]] = {}
    for e, (view, arrays) in enumerate(zip(views, leaves, strict=True)):
        tails = tuple(a.shape[view.num_batch :] for a in arrays[leaf_shaped:])
        key = None if keys is None else keys[e]
        groups.setdefault((view.mode_dims, tails, tuple(a.dtype for a in arrays), key), []).append(
            e
        )

    def call(view: ModeView, arrays: Any, e: int) -> Any:
        return fn(view, arrays) if keys is None else fn(view, arrays, keys[e])  # type: ignore[call-arg]

    out: list[Any] = [None] * len(leaves)
    indices = _shared_indices(
        anchor,
        [sum(math.prod(views[e].batch_shape) for e in m) for m in groups.values() if len(m) > 1],
    )
    for members in groups.values():
        if len(members) == 1:
            out[members[0]] = tuple(call(views[members[0]], leaves[members[0]], members[0]))
            continue
        n = sum(math.prod(views[e].batch_shape) for e in members)
        view = ModeView((n, *views[members[0]].mode_dims), (0,), ((1,), (2,)), (True, True))
        stacked = []
        for a in range(len(leaves[members[0]])):
            xs = [leaves[e][a] for e in members]
            if a < leaf_shaped:
                xs = [to_modes(x, views[e]) for x, e in zip(xs, members, strict=True)]
            stacked.append(_stacked(xs, 2))
        res = call(view, tuple(stacked), members[0])
        batches = [views[e].batch_shape for e in members]
        parts = [_unstacked(x, batches, 2, indices) for x in res]
        shaped = leaf_shaped if out_leaf_shaped is None else out_leaf_shaped
        for i, e in enumerate(members):
            out[e] = tuple(
                from_modes(p[i], views[e]) if a < shaped else p[i] for a, p in enumerate(parts)
            )
    return out


# ----------------------------------------------------------------------------
# COSMOS
# ----------------------------------------------------------------------------


class ScaleByCosmosState(NamedTuple):
    """State of :func:`scale_by_cosmos` (matrix leaves only; others hold
    ``optax.MaskedNode()``).

    Attributes:
      count: number of updates so far.
      mu: sum momentum ``M ← β₁ M + G`` (parameter-shaped).
      basis: ``P``, ``batch + (fan_in, r)``: orthonormal basis of the tracked
        rank-r leading eigenspace of the EMA of ``G Gᵀ`` (fan-in side).
      basis_moment: ``S``, ``batch + (r, r)``: that EMA expressed in ``P``.
      nu: ``V``, ``batch + (r, fan_out)``: EMA of ``(Pᵀ G)²``.
    """

    count: jax.Array
    mu: base.Updates
    basis: Any
    basis_moment: Any
    nu: Any


def cosmos_rank(view: ModeView, rank: int) -> int:
    """The subspace rank used for a leaf: ``min(rank, fan_in)``."""
    return min(rank, view.mode_dims[0])


def _cosmos_power_step(
    view: ModeView, spec: tuple[Any, ...] | None
) -> Callable[[Any, Any, Any], tuple[jax.Array, jax.Array, jax.Array]]:
    """COSMOS's power step ``(X, P, S), β, 1−β -> (P', S', C)`` of a stack with view
    ``view``: :func:`subspace_power_step`, or, on an Explicit mesh where one side alone
    is sharded (``spec``: :func:`mode_specs`) and the mesh divides it, its explicit
    collectives (:func:`subspace_power_step_sharded`, one ``shard_map``)."""
    mode = None
    if spec is not None and not jax.sharding.get_abstract_mesh().empty:
        sharded = [i for i, e in enumerate(spec) if e is not None]
        if len(sharded) == 1 and view.mode_dims[sharded[0]] % _entry_size(spec[sharded[0]]) == 0:
            mode = sharded[0]
    if mode is None:
        return lambda ops, b, o: subspace_power_step(ops[1], ops[2], ops[0], b, o)
    entry, nb = spec[mode], view.num_batch
    x_spec = PartitionSpec(*(None,) * nb, *(entry if i == mode else None for i in range(2)))
    p_spec = PartitionSpec(*(None,) * nb, entry if mode == 0 else None, None)
    c_spec = PartitionSpec(*(None,) * nb, None, entry if mode == 1 else None)

    def step(ops: Any, b: Any, o: Any) -> Any:
        return jax.shard_map(
            lambda x, p, s, b, o: subspace_power_step_sharded(p, s, x, b, o, mode, entry),
            mesh=jax.sharding.get_abstract_mesh(),
            in_specs=(x_spec, p_spec, PartitionSpec(), PartitionSpec(), PartitionSpec()),
            out_specs=(p_spec, PartitionSpec(), c_spec),
            check_vma=False,
        )(*ops, b, o)

    return step


@hyperparams.validated(gamma=hyperparams.NONNEGATIVE)
def scale_by_cosmos(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    rank: int = 64,
    gamma: float = 0.2,
    nesterov: bool = True,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int = 5,
    ns_dtype: base.DTypeLike | None = None,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    precond_dtype: base.DTypeLike | None = None,
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """COSMOS's direction: SOAP-like Adam on a tracked rank-r subspace, Muon on the rest.

    Liu et al., arXiv 2502.17410, Algorithm 1, with the official current code's
    semantics (``lliu606/COSMOS`` ``COSMOS_optim.py`` @61de180e). Per matrix
    ``G`` (Flax ``n × m`` = ``fan_in × fan_out``; the subspace lives on the
    fan-in side, PyTorch's ``GᵀG``):

    .. math::

      M ← β_1 M + G \\quad (\\text{sum momentum}), \\qquad c_1 = \\frac{1-β_1^t}{1-β_1},

      (P, S) ← \\begin{cases} (\\text{top-}r\\ \\mathrm{eigh}(G G^\\top),\\ (1-β_2) P^\\top G G^\\top P)
        & t = 1 \\\\ \\text{one QR power step (:func:`subspace_power_step`)} & t > 1
        \\end{cases}

      V ← β_2 V + (1-β_2) (P^\\top G)^2, \\qquad
      \\hat G = \\begin{cases} (G + β_1 M) / (1 + β_1 c_1) & \\text{nesterov} \\\\
        G / c_1 & \\text{otherwise (official: the momentum is unused)} \\end{cases}

      A = P\\,\\frac{P^\\top \\hat G}{\\sqrt{V}/\\sqrt{1-β_2^t} + ε}, \\qquad
      R = \\mathrm{NS}_5(\\hat G - P P^\\top \\hat G), \\quad
      R ← \\sqrt{nm}\\, R / (\\|R\\|_F + ε), \\qquad U = A + γ R.

    The unit-Frobenius rescale ``sqrt(nm)·U/(‖U‖_F + ε)`` (times the learning
    rate ratio) is *not* applied here: the alias follows this transform with
    :func:`optx.scale_to_rms`. Leaves without a layout pass through unchanged
    (the alias routes them to AdamW).

    Official-code quirks: ``V`` comes from the raw gradient (not the momentum);
    ``P`` at step 1 comes from a decomposition of ``GᵀG`` (an SVD there, eigh
    here: the same subspace; SVD/QR sign conventions cancel); Newton–Schulz is
    the Muon quintic (3.4445, −4.7750, 2.0315), 5 steps, pre-normalized by
    ``‖X‖_F + 1e-7``, in bf16 in the official code (``ns_dtype='bfloat16'``;
    f32 by default here); ``rank`` must not exceed the fan-in there — here it is
    clipped to ``min(rank, fan_in)`` per leaf (when it equals the fan-in, the
    residual is zero and COSMOS is Adam in the full eigenbasis of one side).
    Decompositions run in the parameter's compute dtype (float32 for bf16/f32
    parameters, float64 for f64 ones); ``P`` and ``S`` are stored in
    ``precond_dtype`` (default: that compute dtype), ``V`` in ``nu_dtype``.

    Deviations from the official code:
      Roundoff is not amplified. When a gradient has rank below ``r`` (or
      lies in the subspace), the official code's eigh/QR return an arbitrary,
      reduction-order-dependent part of the null space, Adam divides roundoff
      coordinates by roundoff (``c/(|c| + ε)`` of order one) and Newton–Schulz
      scales a roundoff residual up to ``√(nm)``: a 1e-7 relative change of
      the gradient (another device count or process split) moved parameters by
      1e-2 in 3 steps. optx treats values below the roundoff floor ``8 n ε``
      (relative) as zero — null-space basis columns are a fixed completion,
      such coordinates and residuals are 0 (:func:`subspace_init`,
      :func:`subspace_power_step`, :func:`subspace_split`) — which leaves
      non-degenerate runs unchanged (goldens ``cosmos__public_*``) and makes
      COSMOS deterministic to float tolerance.

    State memory per ``m × n`` matrix: ``mn`` (``M``) + ``nr`` (``P``) + ``r²``
    (``S``) + ``mr`` (``V``).

    Args:
      b1, b2, eps: momentum and second-moment decay, ε (injectable). With
        ``eps=0`` a subspace coordinate whose second moment is 0 (no gradient
        of rank ``r`` has reached it) gets no step, not ``0/0``.
      rank: subspace rank r (static).
      gamma: weight γ of the Newton–Schulz residual (injectable; 0 drops it).
      nesterov: the official Nesterov form (default on). ``False`` is the
        official other branch, which scales the *raw gradient* by ``1/c₁``
        (``COSMOS_optim.py`` lines 86–87 @61de180e): ``M`` is then kept but
        unused.
      ns_coeffs, ns_steps, ns_dtype: Newton–Schulz settings
        (:func:`optx.linalg.newton_schulz`).
      mu_dtype, nu_dtype: dtypes of ``M`` and ``V``.
      precond_dtype: storage dtype of ``P`` and ``S``.
      layout: a :data:`~optx.LayoutSpec` (default: the default router's).

    References:
      Liu, Xu, Zhang, Kang, Li, Liang, Chen, Zhao, "COSMOS: A Hybrid Adaptive
      Optimizer for Memory-Efficient Training of LLMs", arXiv 2502.17410 (code:
      github.com/lliu606/COSMOS).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_cosmos(rank=2)
      >>> g = {'w': jnp.arange(12.0).reshape(4, 3) / 10}
      >>> u, state = tx.update(g, tx.init(g))
      >>> state.basis['w'].shape, state.nu['w'].shape
      ((4, 2), (2, 3))
    """
    base.check_in_range("b1", b1, 0.0, 1.0)
    base.check_in_range("b2", b2, 0.0, 1.0)
    base.check_nonnegative("eps", eps)
    base.check_finite("gamma", gamma)
    rank = base.check_positive_int("rank", rank)
    ns_steps = base.check_positive_int("ns_steps", ns_steps)
    orthogonalization.check_ns_coeffs(ns_coeffs, ns_steps)
    ns_dtype = _check_dtype_arg("ns_dtype", ns_dtype)
    mu_dtype = _check_dtype_arg("mu_dtype", mu_dtype)
    nu_dtype = _check_dtype_arg("nu_dtype", nu_dtype)
    precond_dtype = _check_dtype_arg("precond_dtype", precond_dtype)
    view_of = rotation_view_fn(layout)
    resolve = layouts.resolved_layout_fn(layout)

    def init_fn(params: base.Params) -> ScaleByCosmosState:
        base.check_real_params(params, "optx.scale_by_cosmos")  # real-only math (docstring)

        def leaf(which: str) -> Callable[[Any, Any], Any]:
            def make(path: Any, p: Any) -> Any:
                view = view_of(base.path_to_str(path), p)
                if not view.modes:
                    return optax.MaskedNode()
                r = cosmos_rank(view, rank)
                n, m = view.mode_dims
                src_in, src_out = mode_source_axis(view, 0), mode_source_axis(view, 1)
                pdt = precond_dtype or base.compute_dtype(p.dtype)
                if which == "basis":
                    shape, src, dtype = (n, r), (src_in, None), pdt
                elif which == "basis_moment":
                    shape, src, dtype = (r, r), (None, None), pdt
                else:
                    shape, src, dtype = (r, m), (None, src_out), nu_dtype or p.dtype
                return zeros_from_axes(view.batch_shape + shape, dtype, p, view.batch_axes + src)

            return make

        def momentum(path: Any, p: Any) -> Any:
            if not view_of(base.path_to_str(path), p).modes:
                return optax.MaskedNode()
            return jnp.zeros_like(p, dtype=mu_dtype or p.dtype)

        return ScaleByCosmosState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree_util.tree_map_with_path(momentum, params),
            basis=jax.tree_util.tree_map_with_path(leaf("basis"), params),
            basis_moment=jax.tree_util.tree_map_with_path(leaf("basis_moment"), params),
            nu=jax.tree_util.tree_map_with_path(leaf("nu"), params),
        )

    def leaf_update(
        view: ModeView, spec: tuple[Any, ...] | None, split: bool = False
    ) -> Callable[[Any, Any], Any]:
        r = cosmos_rank(view, rank)
        power_step = _cosmos_power_step(view, spec)

        def fn(arrays: Any, s: dict[str, jax.Array]) -> Any:
            g, mu, p, sm, v = arrays
            X = to_modes(_f32(g), view)
            s = _in_dtype(s, X.dtype)
            b1_, b2_, omb2 = s["b1"], s["b2"], s["one_minus_b2"]
            M = b1_ * to_modes(_f32(mu), view) + X
            # The first step's eigh runs whole on every device from one gather of
            # X (n × m) inside the branch, not of the n × n Gram (on_every_device).
            x_spec = None
            if spec is not None:
                x_spec = PartitionSpec(*(None,) * view.num_batch, *spec)
                X = jax.lax.with_sharding_constraint(
                    X, jax.sharding.NamedSharding(jax.sharding.get_abstract_mesh(), x_spec)
                )
            if x_spec is None:  # one completion after the cond (subspace_update)
                new_p, new_s, c = subspace_update(X, p, sm, s["first"], r, b2_, omb2)
            else:
                new_p, new_s, c = base.cond(
                    s["first"],
                    lambda ops: on_every_device(
                        lambda x, b, o: subspace_init(x, r, b, o),
                        ops[0],
                        b2_,
                        omb2,
                        specs=(x_spec, None, None),
                    ),
                    lambda ops: power_step(ops, b2_, omb2),
                    (X, _f32(p), _f32(sm)),
                )
            new_v = b2_ * _f32(v) + omb2 * jnp.square(c)
            if nesterov:
                g_hat = (X + b1_ * M) / (1.0 + b1_ * s["c1"])
            else:  # official: the raw gradient over c1 (the momentum is unused)
                g_hat = X / s["c1"]
            coeff, residual = subspace_split(g_hat, new_p)
            adam = new_p @ base.safe_divide(coeff, jnp.sqrt(new_v) / jnp.sqrt(s["bc2"]) + s["eps"])
            states = (
                from_modes(M, view).astype(mu.dtype),
                new_p.astype(p.dtype),
                new_s.astype(sm.dtype),
                new_v.astype(v.dtype),
            )
            if split:  # Newton–Schulz runs on the leaves, through the FSDP all-to-alls
                return (from_modes(adam, view), from_modes(residual, view), *states)
            ortho = orthogonalization.newton_schulz(
                residual, ns_coeffs, ns_steps, compute_dtype=ns_dtype
            )
            return (from_modes(combined(adam, ortho, s), view).astype(g.dtype), *states)

        return fn

    def combined(adam: jax.Array, ortho: jax.Array, s: dict[str, jax.Array]) -> jax.Array:
        """``adam + γ √(nm) O / (‖O‖_F + ε)`` per matrix of a ``batch + (n, m)`` stack
        (``O = 0``, a residual the rank captured whole, gives 0 also at ``ε = 0``)."""
        n, m = ortho.shape[-2:]
        ortho_norm = jnp.sqrt(jnp.sum(jnp.square(ortho), axis=(-2, -1), keepdims=True))
        ortho = math.sqrt(n * m) * base.safe_divide(ortho, ortho_norm + s["eps"])
        return adam + s["gamma"] * ortho

    def orthogonalized_leaves(
        views: Sequence[ModeView], lays: Sequence[Any], per_leaf: Any, scalars: Any, specs: Any
    ) -> list[Any]:
        """Explicit FSDP meshes: the subspace step per stack (``auto_axes``), Newton–Schulz
        of the residuals on the leaves (:func:`optx._src.orthogonalization.orthogonalize_leaves`:
        FSDP groups one matrix per device through two all-to-alls, not gathered), then
        the combination per leaf. The numbers of the one-program path up to round-off."""
        out_specs = [
            (spec_g, spec_g, *(sharding.spec_or_replicated(a) for a in arrays[1:]))
            for arrays in per_leaf
            for spec_g in [sharding.spec_or_replicated(arrays[0])]
        ]
        first = sharding.call_with_out_specs(
            lambda arrays, s: map_stacked(
                lambda v, a, k: leaf_update(v, k, split=True)(a, s),
                views,
                arrays,
                2,
                out_leaf_shaped=3,
                keys=specs,
                anchor=s["count"],
            ),
            (per_leaf, scalars),
            out_specs,
        )
        orthos = orthogonalization.orthogonalize_leaves(
            [(res, lay) for (_, res, *_), lay in zip(first, lays, strict=True)],
            ns_coeffs,
            ns_steps,
            compute_dtype=ns_dtype,
        )
        out = []
        for arrays, (adam, _, *states), ortho, view in zip(
            per_leaf, first, orthos, views, strict=True
        ):
            g = arrays[0]

            def finish(
                adam: jax.Array, ortho: jax.Array, s: Any, g: Any = g, view: Any = view
            ) -> Any:
                s = _in_dtype(s, adam.dtype)
                d = combined(to_modes(adam, view), to_modes(ortho.astype(adam.dtype), view), s)
                return from_modes(d, view).astype(g.dtype)

            u = sharding.call_with_out_specs(
                finish, (adam, ortho, scalars), sharding.spec_or_replicated(g)
            )
            out.append((u, *states))
        return out

    def update_fn(
        updates: base.Updates,
        state: ScaleByCosmosState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByCosmosState]:
        del params, extra
        count = optax.safe_increment(state.count)
        scalars = _scalars(
            count=state.count,
            b1=b1,
            b2=b2,
            one_minus_b2=_one_minus(b2),
            eps=eps,
            gamma=gamma,
            first=state.count == 0,
            c1=base.bias_correction(b1, count) / _one_minus(b1),
            bc2=base.bias_correction(b2, count),
        )

        flat, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=base.is_leaf_or_none)
        columns = [
            treedef.flatten_up_to(x) for x in (state.mu, state.basis, state.basis_moment, state.nu)
        ]
        out = [[g for _, g in flat], *columns]
        live, views = [], []
        for j, (path, g) in enumerate(flat):
            view = None if g is None else view_of(base.path_to_str(path), g)
            if view is not None and view.modes:  # others: not routed, passed through
                live.append(j)
                views.append(view)
        per_leaf = [tuple(col[j] for col in out) for j in live]
        # Same-shape matrices are stacked and go through one program (map_stacked).
        # On an Explicit mesh, leaves are stacked where their modes' mesh axes agree too.
        specs = [mode_specs(arrays[0], view) for view, arrays in zip(views, per_leaf, strict=True)]
        specs = [None if ms is None or ms == (None,) * len(ms) else ms for ms in specs]
        if any(sharding.is_sharded(arrays[0]) for arrays in per_leaf):
            lays = [resolve(base.path_to_str(flat[j][0]), flat[j][1]) for j in live]
            new = orthogonalized_leaves(views, lays, per_leaf, scalars, specs)
        else:
            new = call_keeping_shardings(
                lambda arrays, s: map_stacked(
                    lambda v, a: leaf_update(v, None)(a, s), views, arrays, 2, anchor=s["count"]
                ),
                per_leaf,
                scalars,
            )
        for j, arrays in zip(live, new, strict=True):
            for col, x in zip(out, arrays, strict=True):
                col[j] = x
        u, mu, p, sm, v = (jax.tree_util.tree_unflatten(treedef, col) for col in out)
        return u, ScaleByCosmosState(count=count, mu=mu, basis=p, basis_moment=sm, nu=v)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
