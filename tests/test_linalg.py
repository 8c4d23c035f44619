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


def test_qr_in_cond_in_scan_does_not_deadlock_on_cpu() -> None:
    """Regression: ``jnp.linalg.qr`` here (jaxlib 0.10.2, CPU) never returns.

    Three QRs of different shapes in a ``lax.cond`` inside a ``lax.scan`` is an
    optimizer's periodic basis refresh in a scanned training loop (SOAP on the
    example transformer hung at its first refresh). Run in a subprocess so a
    hang fails the test instead of stalling the suite.
    """
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", _DEADLOCK_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("done")
