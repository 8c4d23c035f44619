"""Float64 NumPy references for optx._src.adaptive (AdaBelief, EXAdam, SGD-SaI, AdamP-Nesterov).

Each reference is written from the papers' update rules (and the official
codes' quirks named in the docstrings), never by calling optx.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.signatures import defaults

SHAPES = {"dense": (5, 4), "stacked": (3, 5, 4), "conv": (3, 3, 2, 4)}
STEPS = 7


def _grads(shape: tuple[int, ...], steps: int = STEPS, seed: int = 0) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    drift = r.normal(size=shape)
    return [0.1 * (drift + 0.5 * r.normal(size=shape)) for _ in range(steps)]


def _key(shape: tuple[int, ...]) -> str:
    """The default router gives 'conv*' kernels the conv layout, others the dense one."""
    return "conv" if len(shape) == 4 else "hidden"


def _run(
    tx: optax.GradientTransformation, grads: list[np.ndarray]
) -> tuple[list[np.ndarray], object]:
    """Feeds ``grads`` (f32) through ``tx`` with params fixed at 1; returns the updates."""
    key = _key(grads[0].shape)
    params = {key: {"kernel": jnp.ones(grads[0].shape, jnp.float32)}}
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update({key: {"kernel": jnp.asarray(g, jnp.float32)}}, state, params)
        out.append(np.asarray(u[key]["kernel"], np.float64))
    return out, state


# ----------------------------------------------------------------------------
# AdaBelief (arXiv 2010.07468 Alg. 2; adabelief-pytorch 0.2.1)
# ----------------------------------------------------------------------------


def _adabelief_ref(grads, b1=0.9, b2=0.999, eps=1e-16, rectify=True, sgd=True, amsgrad=False):
    m = np.zeros_like(grads[0])
    s = np.zeros_like(grads[0])
    s_max = np.zeros_like(grads[0])
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2
        s = s + eps  # in place, accumulates
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        if amsgrad:
            s_max = np.maximum(s_max, s)
        if not rectify:
            denom = np.sqrt(s_max if amsgrad else s) / math.sqrt(bc2) + eps
            out.append(m / bc1 / denom)
            continue
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= 5:
            r = math.sqrt(
                bc2 * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2)
            )
            out.append(r / bc1 * m / (np.sqrt(s) + eps))
        elif sgd:
            out.append(m / bc1)
        else:
            out.append(np.zeros_like(m))
    return out


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(
    "kw",
    [
        {"rectify": True},
        {"rectify": False},
        {"rectify": False, "amsgrad": True},
        {"rectify": True, "degenerated_to_sgd": False, "b2": 0.9},
        {"rectify": True, "b2": 0.0},
    ],
    ids=["rectified", "plain", "amsgrad", "rectified-nosgd-b2=0.9", "rectified-b2=0"],
)
def test_scale_by_belief_matches_reference(shape: str, kw: dict) -> None:
    grads = _grads(SHAPES[shape], steps=9)
    b2 = kw.get("b2", 0.999)
    tx = optx.scale_by_belief(
        b2=b2,
        eps=1e-8,
        rectify=kw["rectify"],
        degenerated_to_sgd=kw.get("degenerated_to_sgd", True),
        amsgrad=kw.get("amsgrad", False),
    )
    got, _ = _run(tx, grads)
    ref = _adabelief_ref(
        grads,
        b2=b2,
        eps=1e-8,
        rectify=kw["rectify"],
        sgd=kw.get("degenerated_to_sgd", True),
        amsgrad=kw.get("amsgrad", False),
    )
    for t, (a, b) in enumerate(zip(got, ref)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7, err_msg=f"step {t + 1}")


@pytest.mark.parametrize("b2", [0.999, 0.99, 0.95, 0.5, 0.0])
@pytest.mark.parametrize("traced", [False, True])
def test_rectification_is_accurate(b2: float, traced: bool) -> None:
    """ρ_t in f32 within ~1e-5 of float64 (β₂ = 0.999: ρ₅ ≈ 4.996, next to the threshold 5;
    β₂ = 0, allowed by the table, had raised a math domain error: ρ_t = ρ_∞ = 1)."""
    ts = np.array([1, 2, 5, 6, 7, 50, 1000, 10**5])
    fn = optx._src.adaptive.radam_rectification
    if traced:
        rho, r = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(jnp.float32(b2), jnp.asarray(ts))
    else:
        rho, r = jax.vmap(lambda t: fn(b2, t))(jnp.asarray(ts))
    # Float64 reference at the β₂ that was actually used (f32-rounded when traced).
    b = float(np.float32(b2)) if traced else b2
    rho_inf = 2 / (1 - b) - 1
    rho64 = rho_inf - 2 * ts * b**ts / (1 - b**ts)
    np.testing.assert_allclose(np.asarray(rho), rho64, rtol=1e-5, atol=2e-5)
    assert bool(rho[2] >= 5.0) == bool(rho64[2] >= 5.0)
    ok = rho64 > 4
    r64 = np.sqrt(
        (1 - b ** ts[ok])
        * (rho64[ok] - 4)
        * (rho64[ok] - 2)
        * rho_inf
        / ((rho_inf - 4) * (rho_inf - 2) * rho64[ok])
    )
    np.testing.assert_allclose(np.asarray(r)[ok], r64, rtol=2e-5)


def test_belief_state_holds_eps_and_dtypes() -> None:
    tx = optx.scale_by_belief(eps=1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32)
    p = jnp.zeros((2, 3), jnp.bfloat16)
    s = tx.init(p)
    assert s.mu.dtype == jnp.bfloat16 and s.nu.dtype == jnp.float32
    u, s = tx.update(jnp.zeros((2, 3), jnp.bfloat16), s)
    # Zero gradients: s = ε after one step (the official in-place +ε).
    np.testing.assert_allclose(np.asarray(s.nu), 1e-3, rtol=1e-6)
    assert u.dtype == jnp.bfloat16


# ----------------------------------------------------------------------------
# EXAdam (arXiv 2412.20302)
# ----------------------------------------------------------------------------


def _exadam_ref(grads, b1=0.9, b2=0.999, eps=1e-8, dynamic=True):
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        d1 = 1 + v / (v + eps) * b2**t
        d2 = 1 + m**2 / (m**2 + eps) * b1**t
        m_t = m / (1 - b1**t) * d1
        v_t = v / (1 - b2**t) * d2
        g_t = g / (1 - b1**t) * d1
        step = math.log(math.sqrt(t + 1) * math.sqrt(2)) if dynamic else 1.0
        out.append(step * (m_t + g_t) / (np.sqrt(v_t) + eps))
    return out


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dynamic", [True, False], ids=["v1", "repo"])
def test_scale_by_exadam_matches_reference(shape: str, dynamic: bool) -> None:
    grads = _grads(SHAPES[shape], seed=1)
    got, _ = _run(optx.scale_by_exadam(dynamic_step_size=dynamic), grads)
    for t, (a, b) in enumerate(zip(got, _exadam_ref(grads, dynamic=dynamic))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7, err_msg=f"step {t + 1}")


# ----------------------------------------------------------------------------
# AdamP's Nesterov Adam (clovaai/AdamP, nesterov=True)
# ----------------------------------------------------------------------------


def test_scale_by_adam_lookahead_matches_reference() -> None:
    grads = _grads(SHAPES["stacked"], seed=2)
    got, _ = _run(optx.scale_by_adam_lookahead(), grads)
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t, (g, a) in enumerate(zip(grads, got), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
        ref = (b1 * m + (1 - b1) * g) / denom / (1 - b1**t)
        np.testing.assert_allclose(a, ref, rtol=2e-5, atol=1e-7)


# ----------------------------------------------------------------------------
# SGD-SaI (arXiv 2412.11768; sgd-sai 1.0.3)
# ----------------------------------------------------------------------------


def _matrices(x: np.ndarray, shape_kind: str) -> np.ndarray:
    """Flax kernels as (batch, fan_in, fan_out), written out for each test shape."""
    if shape_kind == "dense":
        return x[None]
    if shape_kind == "stacked":
        return x
    kh, kw, cin, cout = x.shape
    return x.reshape(1, kh * kw * cin, cout)


def _gsnr(block: np.ndarray, eps: float = 1e-8) -> float:
    if block.size == 1:  # no std: scale 1 (the official NaN -> 0 gives |g|/eps, divergent)
        return 1.0
    return float(np.linalg.norm(block) / (np.std(block, ddof=1) + eps))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_scale_by_sai_matches_reference(shape: str) -> None:
    mu_ = 0.9
    grads = _grads(SHAPES[shape], seed=3)
    got, state = _run(optx.scale_by_sai(mu_), grads)
    # One g-SNR per matrix of the layout, from the first gradient only.
    mats = _matrices(grads[0], shape)
    scales = np.array([_gsnr(m) for m in mats])
    np.testing.assert_allclose(
        np.asarray(state.gsnr[_key(SHAPES[shape])]["kernel"]).ravel(), scales, rtol=1e-5
    )
    buf = None
    for t, (g, a) in enumerate(zip(grads, got)):
        buf = g.copy() if t == 0 else mu_ * buf + (1 - mu_) * g
        ref = np.stack([s * m for s, m in zip(scales, _matrices(buf, shape))])
        np.testing.assert_allclose(_matrices(a, shape), ref, rtol=2e-5, atol=1e-7)


def test_sai_single_element_and_vector_blocks() -> None:
    """A 1-element block gets scale 1 (no std; the official |g|/eps diverges); a
    vector one scale."""
    tx = optx.scale_by_sai()
    params = {
        "scalar": jnp.zeros(()),
        "one": jnp.zeros((1,)),
        "unit": {"kernel": jnp.zeros((1, 1))},
        "bias": jnp.zeros((4,)),
    }
    g = {
        "scalar": jnp.asarray(2.0),
        "one": jnp.asarray([-3.0]),
        "unit": {"kernel": jnp.asarray([[0.5]])},
        "bias": jnp.arange(4.0),
    }
    u, s = tx.update(g, tx.init(params))
    assert float(s.gsnr["scalar"]) == 1.0 and float(s.gsnr["one"][0]) == 1.0
    assert float(s.gsnr["unit"]["kernel"].ravel()[0]) == 1.0
    np.testing.assert_allclose(float(u["scalar"]), 2.0)  # the first momentum is g
    np.testing.assert_allclose(float(s.gsnr["bias"][0]), _gsnr(np.arange(4.0)), rtol=1e-6)


def test_sai_frozen_after_first_step_and_scale_rules() -> None:
    params = {"hidden": {"kernel": jnp.zeros((4, 3))}, "bias": jnp.zeros((3,))}
    g1 = {"hidden": {"kernel": jnp.arange(12.0).reshape(4, 3)}, "bias": jnp.array([1.0, 2.0, 4.0])}
    g2 = jax.tree.map(lambda x: 10 * x + 1, g1)
    tx = optx.scale_by_sai()
    s = tx.init(params)
    _, s1 = tx.update(g1, s)
    _, s2 = tx.update(g2, s1)
    for a, b in zip(jax.tree.leaves(s1.gsnr), jax.tree.leaves(s2.gsnr)):
        np.testing.assert_array_equal(a, b)
    k = _gsnr(np.arange(12.0))
    b = _gsnr(np.array([1.0, 2.0, 4.0]))
    _, s_max = optx.scale_by_sai(scale_rule="gsnr_max").update(g1, s)
    np.testing.assert_allclose(float(s_max.gsnr["bias"][0]), b / max(k, b), rtol=1e-6)
    _, s_sqrt = optx.scale_by_sai(scale_rule="sqrt_numel").update(g1, s)
    np.testing.assert_allclose(float(s_sqrt.gsnr["hidden"]["kernel"][0, 0]), math.sqrt(12.0))


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        optx.scale_by_belief(b1=1.0)
    with pytest.raises(ValueError):
        optx.scale_by_belief(eps=-1.0)
    with pytest.raises(ValueError):
        optx.scale_by_exadam(b2=1.5)
    with pytest.raises(ValueError):
        optx.scale_by_sai(scale_rule="adaptive")
    with pytest.raises(ValueError):
        optx.scale_by_sai(beta=-0.1)
    with pytest.raises(ValueError):
        optx.scale_by_adam_lookahead(eps=-1e-8)


def test_exadam_overflowed_moment_gives_no_step_not_nan() -> None:
    """A gradient entry whose square overflows float32 makes ``v = inf``:
    the debiasing ratio ``v / (v + ε)`` is taken as its limit 1 (not
    inf/inf = NaN), so that entry's step is 0, as Adam's ``m / √∞`` is, and
    the other entries (element-wise method) are those of a run without it."""
    tx = optx.scale_by_exadam()
    spiked = jnp.asarray([1.0, 1e20, -2.0, 0.5], jnp.float32)
    calm = spiked.at[1].set(3.0)
    runs = []
    for second in (spiked, calm):
        state = tx.init(jnp.zeros(4))
        out = []
        for g in (jnp.ones(4), second, jnp.ones(4)):
            u, state = tx.update(g, state)
            out.append(u)
        runs.append(out)
    for u in runs[0]:
        assert bool(jnp.isfinite(u).all())
    assert float(runs[0][1][1]) == 0.0
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(np.asarray(a)[[0, 2, 3]], np.asarray(b)[[0, 2, 3]])


def test_primitive_defaults_are_the_official_ones() -> None:
    """Defaults written from the official codes / optax, not read from optx: a slip
    (b2 0.999 → 0.99, ε 1e-8 → 1e-3) changes every run that does not pass the argument."""
    adam = defaults(optax.scale_by_adam, "b1", "b2", "eps")  # (0.9, 0.999, 1e-8)
    # AdaBelief 0.2.1 / optax.scale_by_belief: (0.9, 0.999, 1e-16).
    assert defaults(optx.scale_by_belief, "b1", "b2", "eps") == defaults(
        optax.scale_by_belief, "b1", "b2", "eps"
    )
    assert defaults(optx.scale_by_exadam, "b1", "b2", "eps") == adam  # EXAdam: Adam's
    assert defaults(optx.scale_by_adam_lookahead, "b1", "b2", "eps") == adam  # AdamP's
    assert defaults(optx.scale_by_sai, "beta", "eps") == {"beta": 0.9, "eps": 1e-8}  # SGD-SaI 1.0.3
