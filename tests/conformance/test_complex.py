"""Complex parameters: every registered optimizer supports them or refuses them at init.

The complex policy (issues 13 §7/§9 and 20 §5; README "Complex parameters"):
an optimizer either supports complex leaves *correctly* — phase-equivariant:
for a loss invariant to a global phase ``e^{iθ}``, rotating the parameters
(and so the descent direction ``conj(∇)``) by ``e^{iθ}`` rotates every update
by ``e^{iθ}`` — or its ``init`` raises a ``TypeError`` naming the first complex
leaf (``optx._src.base.check_real_params``). :data:`REFUSES` pins which
optimizers refuse, so a change of policy is a visible change of this table.

Per supporting optimizer: one compiled call (both phases under ``vmap``, three
steps in a ``lax.scan``) on a tree with a complex matrix, a conv-shaped kernel
and a bias. The gradients fed to ``update`` are ``conj(jax.grad(loss))``
(the steepest-descent direction of a real loss of complex parameters, which
rotates with the parameters; optax's tests conjugate the updates instead).

Phase equivariance cannot see a plain transpose where a conjugate transpose
belongs when the transposed basis does not rotate (GaLore's projector), so the
two matrix kernels are also checked against float64 NumPy references.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from optx._src import fisher, orthogonalization, projection
from tests.conformance import problems

NAMES = optx.list_optimizers()
STEPS = 3
THETA = 1.234

# Optimizers whose init refuses complex leaves, with the reason (each one's
# docstring says the same).
REFUSES = {
    "adahessian": "Hutchinson Hessian diagonal of a real loss: real-only math",
    "auon": "cosh of the update (AuON's brake) is real-only",
    "hybrid_auon": "cosh of the update (AuON's brake) is real-only",
    "conda": "rotated bases from real eigen/singular decompositions",
    "cosmos": "rotated bases from real eigen/singular decompositions",
    "soap": "rotated bases from real eigen/singular decompositions",
    "eggroll": "real Gaussian perturbations of the parameters",
    "lipschitz_muon": "real spectral constraints (power iteration, polynomial caps)",
    "mkor": "real Kronecker factors from activations",
    "mkor_h": "real Kronecker factors from activations",
    "sophia_g": "Gauss-Newton-Bartlett diagonal of a real loss: real-only math",
    "sophia_h": "Hutchinson Hessian diagonal of a real loss: real-only math",
    "sora": "real gate proximal step",
    "wgsef": "real group-sparse envelope prox",
}
# Relative tolerance of the phase-equivariance check: f32 rounding, except
# M-FAC's Cholesky solve of an m×m Gram matrix (equivariant to 2e-14 in f64).
TOLERANCE = {"mfac": 1e-4}
# ROOT fits Newton–Schulz coefficients for common shapes only; tiny ones warn.
# A complex → real cast drops the imaginary part: an error here, not a warning.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Newton–Schulz coefficient table"),
    pytest.mark.filterwarnings("ignore:FRUGAL"),
    pytest.mark.filterwarnings("error:Casting from complex to real"),
]


def complex_params() -> dict[str, Any]:
    r = np.random.default_rng(0)

    def n(*shape: int, scale: float = 0.3) -> jax.Array:
        z = r.normal(size=shape) + 1j * r.normal(size=shape)
        return jnp.asarray(scale * z / np.sqrt(2), jnp.complex64)

    return {
        "hidden": {"kernel": n(8, 6), "bias": n(6, scale=0.1)},
        "conv": {"kernel": n(3, 3, 2, 4)},
    }


_R = np.random.default_rng(1)
_MIX = {
    d: jnp.asarray((_R.normal(size=(d, d)) + 1j * _R.normal(size=(d, d))) / np.sqrt(2 * d))
    for d in (4, 6)
}


def phase_invariant_loss(params: Any) -> jax.Array:
    """``Σ w|x|² + 0.05 Σ|x|⁴ + ½‖X M‖²`` per leaf (a matrix view ``X`` and a
    fixed complex ``M`` couple the entries): invariant to ``x → e^{iθ} x``."""
    total = jnp.zeros([], jnp.float32)
    for x in jax.tree.leaves(params):
        a2 = jnp.real(x * jnp.conj(x))
        w = jnp.linspace(0.5, 1.5, x.size).reshape(x.shape)
        total = total + jnp.sum(w * a2) + 0.05 * jnp.sum(a2**2)
        if x.ndim >= 2:
            y = x.reshape(-1, x.shape[-1]) @ _MIX[x.shape[-1]].astype(x.dtype)
            total = total + 0.5 * jnp.sum(jnp.real(y * jnp.conj(y)))
    return total


def _trajectory_updates(spec: optx.OptimizerSpec, tx: optax.GradientTransformation, p0: Any):
    """Updates of three steps from ``p0`` and from ``e^{iθ} p0`` (one compiled call)."""
    key = jax.random.key(0)

    def trajectory(phase: jax.Array) -> Any:
        def body(carry: Any, i: jax.Array) -> tuple[Any, Any]:
            p, s = carry
            _, g, extra = problems.extra_args_for(
                spec, phase_invariant_loss, p, i, key, conjugate=True
            )
            u, s = tx.update(g, s, p, **extra)
            return (optax.apply_updates(p, u), s), u

        p = jax.tree.map(lambda x: x * phase, p0)
        (_, state), updates = jax.lax.scan(body, (p, tx.init(p)), jnp.arange(STEPS))
        return updates, state

    phases = jnp.asarray([1.0, np.exp(1j * THETA)], jnp.complex64)
    return jax.jit(jax.vmap(trajectory))(phases)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_complex_phase_equivariant_or_refused(name: str) -> None:
    spec = optx.get_optimizer(name)
    tx = spec.build(**spec.test_overrides)
    params = complex_params()
    if name in REFUSES:
        with pytest.raises(
            TypeError, match=r"does not support complex parameters; leaf '(\S+)'"
        ) as e:
            jax.eval_shape(tx.init, params)
        leaf = e.value.args[0].split("leaf '")[1].split("'")[0]
        assert leaf in ("hidden/kernel", "hidden/bias", "conv/kernel"), e.value
        return
    updates, state = _trajectory_updates(spec, tx, params)
    rotation = np.exp(1j * THETA)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    assert len(flat) == 3
    for path, u in flat:
        where = f"{name} {jax.tree_util.keystr(path)}"
        assert u.dtype == jnp.complex64, where
        a, b = np.asarray(u[0], np.complex128), np.asarray(u[1], np.complex128)
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)), f"{where}: non-finite update"
        assert np.linalg.norm(a) > 0, f"{where}: no update"
        err = np.linalg.norm(b - rotation * a) / np.linalg.norm(a)
        tol = TOLERANCE.get(name, 1e-5)
        assert err < tol, f"{where}: not phase-equivariant (relative error {err:.2e})"
    for leaf in jax.tree.leaves(state):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            assert bool(jnp.all(jnp.isfinite(leaf))), f"{name}: non-finite state"


WITH_MU_DTYPE = [
    n
    for n in NAMES
    if n not in REFUSES
    and "mu_dtype" in inspect.signature(optx.get_optimizer(n).factory).parameters
]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in WITH_MU_DTYPE]
)
def test_real_mu_dtype_keeps_complex_moments(name: str) -> None:
    """A real ``mu_dtype`` sets the precision of a complex leaf's moment
    (float32 → complex64, ``base.moment_dtype``): the same trajectory as the
    default. Before, optax's cast of ``mu`` to float32 dropped the imaginary
    part of every gradient, silently (a ComplexWarning)."""
    spec = optx.get_optimizer(name)
    params = complex_params()
    ref, _ = _trajectory_updates(spec, spec.build(**spec.test_overrides), params)
    tx = spec.build(**{**spec.test_overrides, "mu_dtype": jnp.float32})
    updates, state = _trajectory_updates(spec, tx, params)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moments = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if any(f in jax.tree_util.keystr(path) for f in (".mu", ".trace")) and jnp.ndim(leaf) >= 2
    ]
    assert moments and all(m.dtype == jnp.complex64 for m in moments), name


def test_moment_dtype_sets_the_precision_of_a_complex_moment() -> None:
    from optx._src import base

    assert base.moment_dtype(None, jnp.complex64) == jnp.complex64
    assert base.moment_dtype(jnp.bfloat16, jnp.complex64) == jnp.complex64
    assert base.moment_dtype(jnp.bfloat16, jnp.float32) == jnp.bfloat16
    assert base.moment_dtype(jnp.complex64, jnp.complex64) == jnp.complex64


def test_refusal_table_is_registered() -> None:
    assert set(REFUSES) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_states_the_complex_policy(name: str) -> None:
    doc = " ".join((inspect.unwrap(optx.get_optimizer(name).factory).__doc__ or "").split())
    if name in REFUSES:
        assert "Complex parameters: refused at init" in doc and "because" in doc
    else:
        assert "Complex parameters: supported (phase-equivariant)" in doc


def test_newton_schulz_complex_is_the_polar_factor() -> None:
    """``X (Xᴴ X)`` iterations converge to ``U Vᴴ`` of a complex matrix (wide and tall)."""
    r = np.random.default_rng(2)
    for shape in ((4, 6), (6, 4)):
        g = r.normal(size=shape) + 1j * r.normal(size=shape)
        u, _, vh = np.linalg.svd(g, full_matrices=False)
        out = orthogonalization.newton_schulz(jnp.asarray(g, jnp.complex64), "cubic", steps=40)
        assert out.dtype == jnp.complex64
        np.testing.assert_allclose(np.asarray(out), u @ vh, atol=2e-3)


def test_svd_projection_complex_is_orthogonal() -> None:
    """GaLore's projector of a complex rank-2 matrix reproduces it exactly
    (``P Pᴴ X`` / ``X P̄ Pᵀ``; a plain transpose would not)."""
    r = np.random.default_rng(3)
    a = r.normal(size=(1, 6, 2)) + 1j * r.normal(size=(1, 6, 2))
    b = r.normal(size=(1, 2, 5)) + 1j * r.normal(size=(1, 2, 5))
    x = jnp.asarray(a @ b, jnp.complex64)
    for axis in ("in", "out"):
        p = projection.compute_projector(x, None, projection="svd", axis=axis, rank=2)
        low = projection.project(x, p, projection="svd", axis=axis)
        back = projection.project_back(
            low, p, projection="svd", axis=axis, matrix_shape=tuple(x.shape)
        )
        np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-5, rtol=1e-5)
        # The projected coordinates keep the norm of an in-span matrix.
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(low)), np.linalg.norm(np.asarray(x)), rtol=1e-5
        )


def test_mfac_complex_fisher_inverse() -> None:
    """M-FAC's ring-buffer solve is ``F⁻¹ g`` of the Hermitian empirical Fisher
    ``λI + (1/m) Σ g gᴴ`` (dense float64 NumPy reference)."""
    r = np.random.default_rng(4)
    m, d, damp = 3, 5, 0.1
    gs = r.normal(size=(m, d)) + 1j * r.normal(size=(m, d))
    G = jnp.zeros((m, d), jnp.complex64)
    gram = jnp.zeros((m, m), jnp.complex64)
    for slot in range(m):
        G, gram = fisher._insert(G, gram, jnp.asarray(gs[slot], jnp.complex64), jnp.asarray(slot))
    np.testing.assert_allclose(np.asarray(gram), gs.conj() @ gs.T, rtol=1e-5, atol=1e-5)
    u = fisher._ifvp_newest(G, gram, jnp.asarray(m - 1), damp, jnp.complex64)
    F = damp * np.eye(d) + sum(np.outer(g, g.conj()) for g in gs) / m
    np.testing.assert_allclose(np.asarray(u), np.linalg.solve(F, gs[-1]), rtol=1e-4, atol=1e-4)


def teardown_module() -> None:
    jax.clear_caches()
