"""Lion / Lion-𝒦 (optx._src.sign) against float64 NumPy references and the paper's constraints.

* per-step reference: the Lion-𝒦 recursion with ∇𝒦 written here for every
  catalogue member, on dense, stacked and conv kernels and a bias;
* the constraint interpretation of each 𝒦: on ``f(x) = ½‖x − a‖²`` the
  iterates reach the minimizer of ``f + 𝒦*(λx)/λ`` — for Lion the box
  ``‖x‖_∞ ≤ 1/λ`` (arXiv 2310.05898), for ℓ2 the ball, for ℓ∞ the ℓ1 ball,
  for the nuclear norm the spectral ball; for the smooth members the
  stationarity equation ``∇𝒦(x − a) = −λx``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.signatures import defaults

DELTA, P = 0.7, 3.0


def _blocks(x: np.ndarray, kind: str) -> list[tuple[np.ndarray, tuple]]:
    """Blocks (as index tuples) of the default router: one per matrix; the bias whole."""
    if kind == "stacked":
        return [(x[i], (i,)) for i in range(x.shape[0])]
    return [(x, ())]


def _matrix(block: np.ndarray, kind: str) -> np.ndarray:
    """A block's (fan_in, fan_out) matrix (conv: window and input channels are fan-in)."""
    return block.reshape(-1, block.shape[-1])


def _polar(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return u @ vt


def grad_kappa(c: np.ndarray, kappa: str, kind: str) -> np.ndarray:
    """∇𝒦(c) from the paper's catalogue (norms per block)."""
    if kappa == "l1":
        return np.sign(c)
    if kappa == "l2_squared":
        return c
    if kappa == "huber":
        return np.clip(c / DELTA, -1, 1)
    if kappa == "relativistic":
        return c / np.sqrt(c**2 + DELTA**2)
    if kappa == "log_cosh":
        return np.tanh(c / DELTA)
    out = np.zeros_like(c)
    for block, idx in _blocks(c, kind):
        if kappa == "l2" or (kappa == "nuclear" and kind == "bias"):
            g = block / np.linalg.norm(block)
        elif kappa == "linf":  # the first arg-max entry (a vertex of the subdifferential)
            g = np.zeros(block.size)
            i = np.argmax(np.abs(block).ravel())
            g[i] = np.sign(block.ravel()[i])
            g = g.reshape(block.shape)
        elif kappa == "lp":
            norm = np.sum(np.abs(block) ** P) ** (1 / P)
            g = np.sign(block) * np.abs(block) ** (P - 1) / norm ** (P - 1)
        elif kappa == "nuclear":
            g = _polar(_matrix(block, kind)).reshape(block.shape)
        out[idx] = g
    return out


CASES = {
    "dense": ("hidden", (6, 4)),
    "stacked": ("stack", (3, 6, 4)),
    "conv": ("conv", (3, 3, 2, 4)),
    "bias": ("bias", (5,)),
}


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("kappa", list(optx.elementwise.KAPPAS))
def test_lion_kappa_steps_match_reference(kappa: str, kind: str) -> None:
    key, shape = CASES[kind]
    b1, b2 = 0.9, 0.99
    kw = {"ns_coeffs": "cubic", "ns_steps": 40} if kappa == "nuclear" else {}
    tx = optx.scale_by_lion_kappa(b1, b2, kappa, delta=DELTA, p=P, **kw)
    r = np.random.default_rng(0)
    grads = [r.normal(size=shape) for _ in range(4)]
    params = {key: {"kernel": jnp.zeros(shape)}} if kind != "bias" else {key: jnp.zeros(shape)}
    wrap = (lambda x: {key: {"kernel": x}}) if kind != "bias" else (lambda x: {key: x})
    unwrap = (lambda t: t[key]["kernel"]) if kind != "bias" else (lambda t: t[key])
    state = tx.init(params)
    update = jax.jit(tx.update)
    m = np.zeros(shape)
    for g in grads:
        u, state = update(wrap(jnp.asarray(g, jnp.float32)), state)
        c = b1 * m + (1 - b1) * g
        ref = grad_kappa(c, kappa, kind)
        m = b2 * m + (1 - b2) * g
        atol = 2e-4 if kappa == "nuclear" else 2e-6
        np.testing.assert_allclose(np.asarray(unwrap(u)), ref, rtol=1e-5, atol=atol)
        np.testing.assert_allclose(np.asarray(unwrap(state.mu)), m, rtol=1e-5, atol=1e-6)


def test_keller_nuclear_is_an_approximate_polar_factor() -> None:
    tx = optx.scale_by_lion_kappa(kappa="nuclear")
    g = {"hidden": {"kernel": jax.random.normal(jax.random.key(0), (16, 8))}}
    u, _ = tx.update(g, tx.init(g))
    s = np.linalg.svd(np.asarray(u["hidden"]["kernel"]), compute_uv=False)
    assert s.min() > 0.6 and s.max() < 1.25


def test_callable_kappa() -> None:
    tx = optx.scale_by_lion_kappa(kappa=lambda c: 2.0 * c, b1=0.0)
    u, _ = tx.update(jnp.array([1.0, -3.0]), tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(u, [2.0, -6.0])


# ----------------------------------------------------------------------------
# The constraint each 𝒦 enforces, on f(x) = ½‖x − a‖²
# ----------------------------------------------------------------------------


def _solve(
    tx: optax.GradientTransformation, a: np.ndarray, x0: np.ndarray, steps: int
) -> np.ndarray:
    target = jnp.asarray(a, jnp.float32)

    def body(carry, _):
        x, s = carry
        u, s = tx.update({"w": x - target}, s, {"w": x})
        return (optax.apply_updates({"w": x}, u)["w"], s), None

    x = jnp.asarray(x0, jnp.float32)
    (x, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((x, tx.init({"w": x})))
    return np.asarray(x, np.float64)


def _lion_k(kappa: str, lam: float, lr: float, steps: int, **kw) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(lr, steps, alpha=1e-3)
    return optx.lion_kappa(schedule, kappa=kappa, weight_decay=lam, delta=DELTA, p=P, **kw)


def test_lion_with_decay_converges_into_the_box() -> None:
    """arXiv 2310.05898: Lion with decoupled decay λ solves min f s.t. ‖x‖_∞ ≤ 1/λ.

    Started outside the box, the iterate is driven inside it and converges to
    the constrained minimizer ``clip(a, −1/λ, 1/λ)``.
    """
    lam = 0.5
    a = np.random.default_rng(1).uniform(-5, 5, (6, 4))
    x0 = np.full((6, 4), 4.0)  # outside the box ‖x‖∞ ≤ 2
    x = _solve(_lion_k("l1", lam, 0.05, 3000), a, x0, 3000)
    assert np.max(np.abs(x)) <= 1 / lam + 1e-3
    np.testing.assert_allclose(x, np.clip(a, -1 / lam, 1 / lam), atol=5e-3)


def _project_l1_ball(v: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean projection onto {‖x‖₁ ≤ radius} (Duchi et al. 2008)."""
    if np.abs(v).sum() <= radius:
        return v
    u = np.sort(np.abs(v).ravel())[::-1]
    css = np.cumsum(u)
    k = np.nonzero(u * np.arange(1, u.size + 1) > css - radius)[0][-1]
    theta = (css[k] - radius) / (k + 1)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0)


def test_norm_kappas_converge_to_their_dual_ball() -> None:
    lam = 0.5
    r = np.random.default_rng(2)
    a = r.uniform(-3, 3, (6,))
    x0 = np.zeros(6)
    # l2: the projection onto the ball ‖x‖₂ ≤ 1/λ.
    x = _solve(_lion_k("l2", lam, 0.05, 3000), a, x0, 3000)
    np.testing.assert_allclose(x, a / max(1.0, lam * np.linalg.norm(a)), atol=2e-3)
    # linf: the projection onto the cross-polytope ‖x‖₁ ≤ 1/λ.
    x = _solve(_lion_k("linf", lam, 0.02, 6000), a, x0, 6000)
    assert np.abs(x).sum() <= 1 / lam + 1e-2
    np.testing.assert_allclose(x, _project_l1_ball(a, 1 / lam), atol=2e-2)
    # lp: stationarity λx = −∇‖x − a‖_p, which puts x on the ℓq sphere of radius 1/λ.
    x = _solve(_lion_k("lp", lam, 0.05, 3000), a, x0, 3000)
    q = P / (P - 1)
    np.testing.assert_allclose(np.sum(np.abs(x) ** q) ** (1 / q), 1 / lam, rtol=2e-3)
    np.testing.assert_allclose(lam * x, -grad_kappa(x - a, "lp", "bias"), atol=2e-3)


def test_nuclear_kappa_converges_to_the_spectral_ball() -> None:
    lam = 0.5
    a = np.random.default_rng(3).normal(size=(6, 4)) * 2
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    expected = u @ np.diag(np.minimum(s, 1 / lam)) @ vt
    tx = optx.lion_kappa(
        optax.cosine_decay_schedule(0.05, 3000, alpha=1e-3),
        kappa="nuclear",
        weight_decay=lam,
        ns_coeffs="cubic",
        ns_steps=30,
        router=optx.Router([optx.Rule(".*", "matrix", optx.DENSE)]),
    )
    x = _solve(tx, a, np.zeros((6, 4)), 3000)
    assert np.linalg.norm(x, 2) <= (1 / lam) * 1.01
    np.testing.assert_allclose(x, expected, atol=2e-2)


@pytest.mark.parametrize("kappa", ["huber", "relativistic", "log_cosh", "l2_squared"])
def test_smooth_kappas_reach_the_composite_stationary_point(kappa: str) -> None:
    """∇𝒦(x − a) = −λx: the minimizer of ½‖x − a‖² + 𝒦*(λx)/λ (box-constrained but
    regularized: Huber adds (δλ/2)x², relativistic a barrier, log-cosh an entropy)."""
    lam = 0.5
    a = np.linspace(-4, 4, 9)
    x = _solve(_lion_k(kappa, lam, 0.05, 3000), a, np.zeros(9), 3000)
    np.testing.assert_allclose(grad_kappa(x - a, kappa, "bias"), -lam * x, atol=2e-3)
    if kappa == "huber":  # closed form: clip(a / (1 + δλ), ±1/λ)
        np.testing.assert_allclose(x, np.clip(a / (1 + DELTA * lam), -2, 2), atol=2e-3)
    if kappa != "l2_squared":
        assert np.max(np.abs(x)) < 1 / lam


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        optx.scale_by_lion_kappa(kappa="l3")
    with pytest.raises(ValueError):
        optx.scale_by_lion_kappa(kappa="lp", p=1.0)
    with pytest.raises(ValueError):
        optx.scale_by_lion_kappa(kappa="huber", delta=0.0)
    with pytest.raises(ValueError):
        optx.scale_by_lion_kappa(b2=1.5)
    with pytest.raises(TypeError):
        optx.scale_by_lion_kappa(kappa="nuclear", ns_steps=2.0)


@pytest.mark.parametrize("kappa", ["linf", "lp", "l2", "nuclear"])
def test_block_kappas_on_empty_matrices(kappa: str) -> None:
    """A router that sends every ≥ 2-D leaf to the matrix path, empty ones included:
    the block norms' gradient of an empty block is empty (argmax and max of a
    zero-size block had raised), and the other leaves step as without it."""
    router = optx.Router(
        rules=(
            optx.Rule(r".*", "matrix", optx.DENSE, min_ndim=2, name="all"),
            *optx.default_rules(),
        ),
        warn_guessed=False,
    )
    w = {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}
    params = {"e": {"kernel": jnp.zeros((0, 5))}, "f": {"kernel": jnp.zeros((5, 0))}, "w": w}
    tx = optx.lion_kappa(0.01, kappa=kappa, router=router)
    u, _ = jax.jit(tx.update)(params, tx.init(params), params)
    assert u["e"]["kernel"].shape == (0, 5) and u["f"]["kernel"].shape == (5, 0)
    alone = jax.jit(tx.update)({"w": w}, tx.init({"w": w}), {"w": w})[0]
    np.testing.assert_array_equal(np.asarray(u["w"]["kernel"]), np.asarray(alone["w"]["kernel"]))


def test_lion_kappa_defaults_agree() -> None:
    """Lion-𝒦's (β₁, β₂) default to Lion's (0.9, 0.99), read from ``optax.scale_by_lion``;
    the Newton–Schulz steps to Muon's 5 (``optax.contrib.muon``); ``kappa_gradient``,
    the primitive and the alias share δ and p."""
    lion, muon = defaults(optax.scale_by_lion), defaults(optax.contrib.muon)
    grad = defaults(optx.elementwise.kappa_gradient)
    prim, alias = defaults(optx.scale_by_lion_kappa), defaults(optx.lion_kappa)
    for d in (prim, alias):
        assert (d["b1"], d["b2"]) == (lion["b1"], lion["b2"])
        assert (d["delta"], d["p"]) == (grad["delta"], grad["p"])
    assert grad["ns_steps"] == prim["ns_steps"] == muon["ns_steps"]


@pytest.mark.parametrize("kappa", ["l1", "huber", "relativistic", "log_cosh"])
def test_elementwise_kappas_on_complex_are_phase_times_the_real_profile(kappa: str) -> None:
    """On complex ``c`` an element-wise ∇𝒦 is ``(c/|c|)·f(|c|)`` with the real profile
    ``f``: 1 (ℓ₁), ``min(r/δ, 1)`` (Huber), ``r/√(r²+δ²)`` (relativistic),
    ``tanh(r/δ)`` (log-cosh) — phase-equivariant, real ``f``."""
    delta = 0.7
    r = np.random.default_rng(3)
    c = (r.normal(size=(4, 5)) + 1j * r.normal(size=(4, 5))).astype(np.complex64)
    mod = np.abs(c.astype(np.complex128))
    profile = {
        "l1": np.ones_like(mod),
        "huber": np.minimum(mod / delta, 1.0),
        "relativistic": mod / np.sqrt(mod**2 + delta**2),
        "log_cosh": np.tanh(mod / delta),
    }[kappa]
    want = c.astype(np.complex128) / mod * profile
    got = optx.elementwise.kappa_gradient(jnp.asarray(c), kappa, delta=delta)
    assert got.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=2e-6)
