"""Tests of optx/_src/normalization.py additions: the norm-growth limiter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optx

CONV = optx.MatrixLayout((-4, -3, -2), (-1,))


def test_norm_growth_limiter_matches_reference() -> None:
    """Fira/APOLLO: l = max(|X|/(N+1e-8), γ)/γ, X/l, N <- |X|/l; first step free."""
    rng = np.random.default_rng(0)
    shapes = {"dense": (4, 5), "stack": (3, 4, 5), "conv": (2, 2, 3, 4)}
    layout = lambda path, leaf: CONV if path == "conv" else optx.DENSE  # noqa: E731
    tx = optx.scale_by_norm_growth_limiter(1.01, layout=layout)
    grads = [{k: rng.standard_normal(s) * (3.0**t) for k, s in shapes.items()} for t in range(4)]
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    stored: dict[str, np.ndarray] = {}
    for t, g in enumerate(grads):
        u, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state)
        for k, x in g.items():
            mats = x.reshape(1, -1, x.shape[-1]) if k == "conv" else x.reshape(-1, *x.shape[-2:])
            norm = np.linalg.norm(mats, axis=(1, 2))
            lim = (
                np.ones_like(norm) if t == 0 else np.maximum(norm / (stored[k] + 1e-8), 1.01) / 1.01
            )
            stored[k] = norm / lim
            ref = (mats / lim[:, None, None]).reshape(x.shape)
            np.testing.assert_allclose(np.asarray(u[k]), ref, rtol=1e-5, err_msg=k)
    # Growing inputs: every later output grows by exactly 1% per step.
    assert np.isclose(np.linalg.norm(np.asarray(u["dense"])), stored["dense"].item())


def test_limiter_leaves_vectors_alone_and_keeps_dtype() -> None:
    tx = optx.scale_by_norm_growth_limiter()
    g = {"bias": jnp.ones(3, jnp.bfloat16), "kernel": jnp.ones((2, 3), jnp.bfloat16)}
    state = tx.init(g)
    for _ in range(2):
        u, state = tx.update(jax.tree.map(lambda x: 5 * x, g), state)
    assert u["bias"].dtype == jnp.bfloat16 and float(u["bias"][0]) == 5.0
    assert state.norm["kernel"].dtype == jnp.float32 and state.norm["kernel"].shape == (1, 1)
