"""Tests for optx._src.linalg: the Householder QR and the CPU-safe ``qr``."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optx._src import linalg


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (16, 16), (2, 40, 12), (2, 4, 9), (1, 1)])
def test_householder_qr_matches_lapack(shape: tuple[int, ...]) -> None:
    x = jax.random.normal(jax.random.key(0), shape)
    q, r = jax.jit(linalg.householder_qr)(x)
    q_ref, r_ref = np.linalg.qr(np.asarray(x, np.float64))
    k = min(shape[-2:])
    assert q.shape == (*shape[:-2], shape[-2], k)
    assert r.shape == (*shape[:-2], k, shape[-1])
    # Same conventions as LAPACK (beta = -sign(alpha) * norm): signs included.
    np.testing.assert_allclose(q, q_ref, atol=2e-5)
    np.testing.assert_allclose(r, r_ref, atol=5e-5)
    np.testing.assert_allclose(np.tril(np.asarray(r), -1), 0.0)


def test_householder_qr_float64_precision() -> None:
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (30, 20), jnp.float64)
        q, r = linalg.householder_qr(x)
        np.testing.assert_allclose(q @ r, x, atol=1e-12)
        np.testing.assert_allclose(q.T @ q, np.eye(20), atol=1e-12)


def test_householder_qr_degenerate_columns() -> None:
    # A zero column and an already-triangular column: tau = 0 (H = I), as dlarfg.
    x = jnp.array([[0.0, 1.0, 2.0], [0.0, 2.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]])
    q, r = linalg.householder_qr(x)
    q_ref, _r_ref = np.linalg.qr(np.asarray(x, np.float64))
    np.testing.assert_allclose(np.abs(q), np.abs(q_ref), atol=1e-6)
    np.testing.assert_allclose(q @ r, x, atol=1e-6)
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(r))


def test_qr_is_householder_on_cpu_and_differentiable_shapes() -> None:
    x = jax.random.normal(jax.random.key(2), (3, 8, 5))
    q, r = jax.jit(linalg.qr)(x)
    q_h, r_h = linalg.householder_qr(x)
    np.testing.assert_allclose(q, q_h, atol=1e-6)
    np.testing.assert_allclose(r, r_h, atol=1e-6)


_DEADLOCK_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from optx._src import linalg
    shapes = [(64, 64), (2, 64, 64), (2, 256, 256)]

    def refresh(xs):
        return [linalg.qr(a @ jnp.swapaxes(a, -1, -2))[0] for a in xs]

    def body(xs, i):
        xs = jax.lax.cond(i % 3 == 0, refresh, lambda xs: [a * 1.0001 for a in xs], xs)
        return xs, i

    xs = [jax.random.normal(jax.random.key(i), s) / 10 for i, s in enumerate(shapes)]
    run = jax.jit(lambda xs, ii: jax.lax.scan(body, xs, ii))
    for j in range(3):
        xs, _ = run(xs, jnp.arange(10) + 10 * j)
    print("done", float(xs[0].sum()))
    """
)


def _finishes_in_a_subprocess(script: str) -> None:
    """Runs ``script`` in a fresh interpreter (so a hang fails instead of stalling
    the suite) and checks that it printed ``done``."""
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("done")


def test_qr_in_cond_in_scan_does_not_deadlock_on_cpu() -> None:
    """Regression: ``jnp.linalg.qr`` here (jaxlib 0.10.2, CPU) never returns.

    Three QRs of different shapes in a ``lax.cond`` inside a ``lax.scan`` is an
    optimizer's periodic basis refresh in a scanned training loop (SOAP on the
    example transformer hung at its first refresh). Run in a subprocess so a
    hang fails the test instead of stalling the suite.
    """
    _finishes_in_a_subprocess(_DEADLOCK_SCRIPT)


_BATCHED_LAPACK_ON_A_MESH = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, optx
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    params = {"stack": {"kernel": jax.random.normal(jax.random.key(1), (2, 8, 64))}}
    params = jax.device_put(params, {"stack": {"kernel": NamedSharding(mesh, P(None, None, "x"))}})
    tx = optx.soap(0.01)
    state = jax.device_put(tx.init(params), optx.sharding.state_shardings(tx, params))
    u, state = jax.jit(tx.update)(params, state, params)
    print("done", float(jnp.sum(u["stack"]["kernel"])))
    """
)


def test_batched_decompositions_on_a_cpu_mesh_do_not_hang() -> None:
    """Regression: SOAP's first refresh of a ``(2, 8, 64)`` stack sharded over 8
    CPU devices never returned (jaxlib 0.10.2): every device ran its batched
    LAPACK eigh at once and all of them waited in ``lapack_ssyevd_ffi`` for
    pool threads that were themselves blocked. ``linalg.eigh``/``linalg.svd``
    decompose one matrix per call on CPU. Run in a subprocess so a hang fails
    the test instead of stalling the suite."""
    _finishes_in_a_subprocess(_BATCHED_LAPACK_ON_A_MESH)


@pytest.mark.parametrize("decomposition", ["eigh", "svd"])
def test_one_matrix_at_a_time_equals_the_batched_kernel(decomposition: str) -> None:
    x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6))
    if decomposition == "eigh":
        x = x @ jnp.swapaxes(x, -1, -2)
        want = jnp.linalg.eigh(x)
    else:
        want = jnp.linalg.svd(x, full_matrices=False)
    got = jax.jit(getattr(linalg, decomposition))(x)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("shape", [(2, 0, 0), (2, 3, 0), (2, 0, 3), (3, 0), (0, 3), (0, 3, 3)])
def test_decompositions_of_empty_matrices_have_numpys_shapes(shape: tuple[int, ...]) -> None:
    """Empty matrices and batches of them (a zero-size leaf's modes): the reduced
    factors NumPy returns, under ``jit``; eigh and SVD for the square ones and SVD
    for all. These had raised at trace time (a ``-1`` reshape of a zero-size
    batch, the Householder loop indexing an empty axis)."""
    x = jnp.zeros(shape, jnp.float32)
    for got, want in zip(jax.jit(linalg.qr)(x), np.linalg.qr(np.zeros(shape)), strict=True):
        assert got.shape == want.shape
    u, s, vh = jax.jit(linalg.svd)(x)
    assert (u.shape, s.shape, vh.shape) == tuple(
        a.shape for a in np.linalg.svd(np.zeros(shape), full_matrices=False)
    )
    if shape[-1] == shape[-2]:
        vals, vecs = jax.jit(linalg.eigh)(x)
        assert vals.shape == shape[:-1] and vecs.shape == shape


def test_householder_qr_zero_pivot_takes_lapacks_sign() -> None:
    # alpha = 0 with nonzero entries below: dlarfg's beta = -sign(alpha)·norm with
    # sign(+0) = +1, so R[0, 0] = -5 and Q matches LAPACK with its signs.
    x = np.array([[0.0, 1.0], [3.0, 2.0], [4.0, 5.0]])
    q, r = linalg.householder_qr(jnp.asarray(x, jnp.float32))
    q_ref, r_ref = np.linalg.qr(x)
    assert r_ref[0, 0] == pytest.approx(-5.0)
    np.testing.assert_allclose(q, q_ref, atol=1e-6)
    np.testing.assert_allclose(r, r_ref, atol=1e-5)
