"""Shape-specific Newton–Schulz tables (ROOT) and the offline coefficient fit."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from optx._src import newton_schulz_fitting as fitting

KELLER = (3.4445, -4.7750, 2.0315)


def ns_np(g: np.ndarray, table: list[tuple[float, float, float]]) -> np.ndarray:
    x = g.copy()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for a, b, c in table:
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def test_table_lookup_is_orientation_free_and_warns_once() -> None:
    table = optx.linalg.ShapeCoefficientTable({(16, 4): (3.0, -4.0, 1.5)}, name="t")
    assert table(4, 16).table == ((3.0, -4.0, 1.5),)
    assert table(16, 4).table == ((3.0, -4.0, 1.5),)
    with pytest.warns(UserWarning, match=r"no entry for matrix shape \(5, 7\)"):
        assert table(7, 5).name == "keller"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table(5, 7)  # the same shape warns only once
    quiet = optx.linalg.ShapeCoefficientTable({}, "cubic", warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quiet(3, 3).name == "cubic"


def test_with_shapes_and_equality() -> None:
    table = optx.linalg.ShapeCoefficientTable({(4, 16): (3.0, -4.0, 1.5)})
    bigger = table.with_shapes({(8, 8): "cubic"})
    assert bigger(8, 8).name == "cubic" and bigger(4, 16) == table(4, 16)
    assert bigger != table and hash(table.with_shapes({})) == hash(table)


def test_root_table_is_the_official_one() -> None:
    entries = optx.linalg.ROOT_COEFFICIENTS.entries
    assert {k: v.table[0] for k, v in entries.items()} == {
        (2048, 2048): (3.4916, -4.8224, 2.1095),
        (2048, 16384): (3.1943, -3.8221, 1.5322),
        (2048, 3072): (3.4509, -4.5790, 1.9325),
        (2048, 8192): (2.9794, -3.6674, 1.6207),
    }
    assert optx.linalg.ROOT_COEFFICIENTS.fallback.table == (KELLER,)


def test_table_drives_newton_schulz_per_shape() -> None:
    table = optx.linalg.ShapeCoefficientTable({(6, 10): (3.3, -4.4, 1.9)}, warn=False)
    r = np.random.default_rng(0)
    g = {"a": r.normal(size=(10, 6)), "b": r.normal(size=(4, 4))}
    with jax.enable_x64(True):
        tx = optx.scale_by_newton_schulz(table, 5, layout=optx.MatrixLayout())
        u, _ = tx.update(jax.tree.map(jnp.asarray, g), optax.EmptyState())
    np.testing.assert_allclose(u["a"], ns_np(g["a"], [(3.3, -4.4, 1.9)] * 5), atol=1e-12)
    np.testing.assert_allclose(u["b"], ns_np(g["b"], [KELLER] * 5), atol=1e-12)


def test_singular_value_objective_equals_matrix_error() -> None:
    """‖NS_K(X) − UVᵀ‖²_F = Σ (p^K(σ_i/‖X‖_F) − 1)² (NS acts on singular values)."""
    x = np.random.default_rng(1).normal(size=(7, 11))
    theta = (3.1, -4.0, 1.7)
    with jax.enable_x64(True):
        s = np.linalg.svd(x, compute_uv=False)
        sigma = jnp.asarray(s / (np.sqrt(np.sum(s**2)) + 1e-7))
        objective = fitting.singular_value_error(jnp.asarray(theta), sigma, 4)
        error = optx.linalg.newton_schulz_error(
            optx.linalg.NewtonSchulzCoefficients((theta,), True), x, 4
        )
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    direct = np.sum((ns_np(x, [theta] * 4) - u @ vt) ** 2) / 7
    np.testing.assert_allclose(float(objective), direct, rtol=1e-9)
    np.testing.assert_allclose(float(error), direct, rtol=1e-9)


def test_fit_reduces_the_error_on_fresh_matrices_of_the_shape() -> None:
    shape, steps = (24, 24), 3
    fitted = optx.linalg.fit_newton_schulz_coefficients(shape, steps, num_samples=4, iterations=150)
    assert len(fitted.table) == 1 and fitted.repeat_last and fitted.eps == 1e-7
    held_out = jax.random.normal(jax.random.key(99), (6, *shape))
    err_fit = float(optx.linalg.newton_schulz_error(fitted, held_out, steps))
    err_keller = float(optx.linalg.newton_schulz_error("keller", held_out, steps))
    assert err_fit < 0.95 * err_keller, (fitted.table, err_fit, err_keller)


def test_fit_per_step_table_and_custom_sampler() -> None:
    def low_rank(key: jax.Array, shape: tuple[int, int]) -> jax.Array:
        a, b = jax.random.split(key)
        return jax.random.normal(a, (shape[0], 3)) @ jax.random.normal(b, (3, shape[1]))

    fitted = optx.linalg.fit_newton_schulz_coefficients(
        (8, 12), 2, per_step=True, sampler=low_rank, num_samples=2, iterations=30
    )
    assert len(fitted.table) == 2 and not fitted.repeat_last
    assert all(np.isfinite(fitted.table).ravel())


def test_composed_polynomial_max() -> None:
    assert abs(optx.linalg.composed_polynomial_max("keller", 5) - 1.2024) < 2e-4
    # The classical cubic p(x) = 1.5x − 0.5x³ has max p(1) = 1.
    assert abs(optx.linalg.composed_polynomial_max("cubic", 7) - 1.0) < 1e-9


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="two dimensions"):
        optx.linalg.ShapeCoefficientTable({(4, 4, 4): KELLER})
    with pytest.raises(TypeError):  # not a triple nor a table of triples
        optx.linalg.ShapeCoefficientTable({(4, 4): (1.0, "b", 2.0)})
    with pytest.raises(ValueError, match="preset"):
        optx.linalg.ShapeCoefficientTable({(4, 4): "kellr"})
    with pytest.raises(ValueError, match="steps"):
        optx.linalg.fit_newton_schulz_coefficients((4, 4), steps=0)
    with pytest.raises(ValueError, match="num_samples"):
        optx.linalg.fit_newton_schulz_coefficients((4, 4), num_samples=0)
    with pytest.raises(ValueError, match="two dimensions"):
        optx.linalg.fit_newton_schulz_coefficients((4,))
    with pytest.raises(ValueError, match="rank >= 2"):
        optx.linalg.newton_schulz_error("keller", jnp.ones(3))
