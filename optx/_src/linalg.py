"""Dense linear-algebra helpers shared by the matrix methods.

``qr`` is the thin QR factorization the basis-refreshing methods need (SOAP's
power-QR refresh, COSMOS's subspace power step, orthogonal random
projections). On accelerators it is ``jnp.linalg.qr``. On CPU it is a
Householder QR written in JAX, because jaxlib's CPU ``householder_product``
(LAPACK ``orgqr``, the kernel that forms ``Q``) deadlocks when several of
them run concurrently inside a ``lax.cond`` inside a ``lax.scan`` — exactly
an optimizer's periodic refresh inside a scanned training loop (observed with
jax/jaxlib 0.10.2 on a 2-core CPU: three leaves' refreshes, all XLA worker
threads idle, the host waiting forever; ``tests/test_linalg.py`` keeps the
reproducer). Cost on a 2-core CPU, jitted, square f32: 256² 7 ms (LAPACK
7.5 ms), 512² 44 ms (32 ms), 1024² 328 ms (282 ms).

``eigh`` and ``svd`` are ``jnp.linalg``'s, except that on CPU a batch of
matrices is decomposed one matrix at a time (``lax.map``). jaxlib's CPU
LAPACK kernels spread a batch over the intra-op thread pool and block until
it is done; when several devices of one process run such a kernel at once
(a mesh of virtual CPU devices, e.g. SOAP's refresh on every device under
FSDP), every pool thread can end up blocked waiting for work queued behind
it — observed with jax/jaxlib 0.10.2: a ``(2, 8, 64)`` kernel sharded over 8
CPU devices hung in ``lapack_ssyevd_ffi`` forever (``tests/test_linalg.py``
keeps the reproducer). One matrix per call runs inline. The results are the
batched kernel's: it decomposes each matrix independently as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optx._src import base

__all__ = ["householder_qr", "qr"]


def householder_qr(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR of ``x`` (``(..., m, n)``) by Householder reflections.

    LAPACK's conventions (``dgeqrf`` / ``dlarfg`` / ``dorgqr``): reflector
    ``H_k = I − τ_k v_k v_kᵀ`` with ``v_k[k] = 1``, ``β = −sign(α)‖x‖``
    (``sign(0) = +1``), and ``τ = 0`` (``H = I``) when the entries below the
    diagonal are already zero, so ``Q`` matches ``jnp.linalg.qr`` up to
    rounding, signs included. ``n`` sequential rank-1 steps in a
    ``lax.fori_loop`` for the factorization and ``n`` for forming ``Q``:
    ``O(m n k)`` work (``k = min(m, n)``), batched over the leading axes.

    Args:
      x: a batch of matrices, float32 or float64.

    Returns:
      ``(q, r)``: ``q`` ``(..., m, k)`` with orthonormal columns and ``r``
      ``(..., k, n)`` upper triangular, ``x = q @ r`` (``jnp.linalg.qr``'s
      ``mode='reduced'``).

    Example:
      >>> import jax.numpy as jnp
      >>> from optx._src import linalg
      >>> q, r = linalg.householder_qr(jnp.array([[3.0, 1.0], [4.0, 2.0], [0.0, 1.0]]))
      >>> bool(jnp.allclose(q @ r, jnp.array([[3.0, 1.0], [4.0, 2.0], [0.0, 1.0]]), atol=1e-5))
      True
    """
    m, n = x.shape[-2], x.shape[-1]
    kk = min(m, n)
    rows = jnp.arange(m)
    batch = x.shape[:-2]
    if kk == 0:  # an empty matrix: empty factors (the loops below would index empty axes)
        return jnp.zeros((*batch, m, 0), x.dtype), jnp.zeros((*batch, 0, n), x.dtype)

    def factor(k: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]):
        a, vs, taus = carry
        col = jnp.take(a, k, axis=-1)  # (..., m)
        alpha = jnp.take(col, k, axis=-1)  # (...)
        below = jnp.where(rows > k, col, 0.0)
        sub = jnp.sqrt(jnp.sum(below * below, axis=-1))
        trivial = sub == 0
        norm = jnp.sqrt(alpha * alpha + sub * sub)
        beta = jnp.where(alpha >= 0, -norm, norm)
        safe_beta = jnp.where(trivial, 1.0, beta)
        tau = jnp.where(trivial, 0.0, (beta - alpha) / safe_beta)
        scale = jnp.where(trivial, 0.0, 1.0 / jnp.where(trivial, 1.0, alpha - beta))
        v = jnp.where(rows == k, 1.0, below * scale[..., None])  # (..., m)
        w = jnp.einsum("...m,...mn->...n", v, a)
        a = a - (tau[..., None] * v)[..., :, None] * w[..., None, :]
        vs = jax.lax.dynamic_update_index_in_dim(vs, v, k, axis=-1)
        taus = jax.lax.dynamic_update_index_in_dim(taus, tau, k, axis=-1)
        return a, vs, taus

    init = (x, jnp.zeros((*batch, m, kk), x.dtype), jnp.zeros((*batch, kk), x.dtype))
    a, vs, taus = base.fori_loop(0, kk, factor, init)
    r = jnp.triu(a[..., :kk, :])

    def form(i: jax.Array, q: jax.Array) -> jax.Array:
        k = kk - 1 - i
        v = jnp.take(vs, k, axis=-1)
        tau = jnp.take(taus, k, axis=-1)
        w = jnp.einsum("...m,...mn->...n", v, q)
        return q - (tau[..., None] * v)[..., :, None] * w[..., None, :]

    q0 = jnp.broadcast_to(jnp.eye(m, kk, dtype=x.dtype), (*batch, m, kk))
    q = base.fori_loop(0, kk, form, q0)
    return q, r


def qr(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reduced QR ``(q, r)`` of a batch of matrices, safe inside ``cond``/``scan`` on CPU.

    ``jnp.linalg.qr`` on GPU/TPU; :func:`householder_qr` on CPU (see the
    module docstring for the jaxlib deadlock this avoids). The choice is made
    per platform at lowering time (``jax.lax.platform_dependent``).
    """

    def library(y: jax.Array) -> tuple[jax.Array, jax.Array]:
        q, r = jnp.linalg.qr(y)
        return q, r

    return jax.lax.platform_dependent(x, cpu=householder_qr, default=library)


def _one_matrix_at_a_time(fn: Callable[[jax.Array], tuple[jax.Array, ...]]) -> Callable[..., Any]:
    """``fn`` over the leading batch axes of ``x`` by ``lax.map`` (see the module docstring)."""

    def serial(x: jax.Array) -> tuple[jax.Array, ...]:
        batch = x.shape[:-2]
        if math.prod(batch) <= 1:
            return fn(x)
        outs = jax.lax.map(fn, base.merge_leading(x, 2))
        return tuple(o.reshape(batch + o.shape[1:]) for o in outs)

    return serial


def eigh(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``jnp.linalg.eigh`` (eigenvalues ascending, eigenvectors as columns), safe
    on a mesh of CPU devices (one matrix per LAPACK call on CPU; module docstring)."""

    def library(y: jax.Array) -> tuple[jax.Array, jax.Array]:
        vals, vecs = jnp.linalg.eigh(y)
        return vals, vecs

    vals, vecs = jax.lax.platform_dependent(x, cpu=_one_matrix_at_a_time(library), default=library)
    return vals, vecs


def svd(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``jnp.linalg.svd(x, full_matrices=False)``, safe on a mesh of CPU devices
    (one matrix per LAPACK call on CPU; module docstring)."""

    def library(y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        u, s, vh = jnp.linalg.svd(y, full_matrices=False)
        return u, s, vh

    u, s, vh = jax.lax.platform_dependent(x, cpu=_one_matrix_at_a_time(library), default=library)
    return u, s, vh
