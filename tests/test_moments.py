"""Tests for momentum and Adam moments (optx._src.moments)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.signatures import defaults


def momentum_reference(grads, beta, kind, nesterov, bias_correction):
    """float64 NumPy momentum from the formulas in the module docstring."""
    mu = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        if kind == "ema":
            mu = beta * mu + (1 - beta) * g
            mu_hat = mu / (1 - beta**t) if bias_correction else mu
            out.append((1 - beta) * g + beta * mu_hat if nesterov else mu_hat)
        else:
            mu = beta * mu + g
            out.append(g + beta * mu if nesterov else mu)
    return out


@pytest.mark.parametrize(
    "kind,nesterov,bias_correction",
    [
        ("ema", True, False),
        ("ema", False, False),
        ("ema", True, True),
        ("ema", False, True),
        ("sum", True, False),
        ("sum", False, False),
    ],
)
def test_momentum_matches_reference(kind, nesterov, bias_correction) -> None:
    grads = list(np.random.default_rng(0).normal(size=(5, 3, 4)))
    want = momentum_reference(grads, 0.9, kind, nesterov, bias_correction)
    with jax.enable_x64(True):
        tx = optx.scale_by_momentum(
            0.9, kind=kind, nesterov=nesterov, bias_correction=bias_correction
        )
        state = tx.init(jnp.zeros((3, 4), jnp.float64))
        for g, w in zip(grads, want):
            u, state = tx.update(jnp.asarray(g), state)
            np.testing.assert_allclose(np.asarray(u), w, rtol=1e-12)
    assert int(state.count) == 5


def test_keller_and_moonlight_nesterov_differ_by_the_constant_one_minus_beta() -> None:
    """M_ema = (1-β) M_sum, hence U_keller = (1-β) G + β M_ema = (1-β) U_moonlight."""
    grads = [jnp.full((2, 3), float(i + 1)) * jnp.arange(6.0).reshape(2, 3) for i in range(4)]
    ema, sm = optx.scale_by_momentum(0.9, kind="ema"), optx.scale_by_momentum(0.9, kind="sum")
    s1, s2 = ema.init(grads[0]), sm.init(grads[0])
    for g in grads:
        u1, s1 = ema.update(g, s1)
        u2, s2 = sm.update(g, s2)
        np.testing.assert_allclose(u1, (1 - 0.9) * u2, rtol=1e-5)


def test_momentum_dtypes_and_validation() -> None:
    tx = optx.scale_by_momentum(0.9, mu_dtype=jnp.float32)
    p = jnp.zeros(3, jnp.bfloat16)
    s = tx.init(p)
    assert s.mu.dtype == jnp.float32
    u, s2 = tx.update(jnp.ones(3, jnp.bfloat16), s)
    assert u.dtype == jnp.bfloat16 and s2.mu.dtype == jnp.float32
    with pytest.raises(ValueError, match="kind"):
        optx.scale_by_momentum(kind="heavy")
    with pytest.raises(ValueError, match="beta"):
        optx.scale_by_momentum(1.5)
    with pytest.raises(ValueError, match="beta"):
        optx.scale_by_momentum(float("nan"))
    with pytest.raises(ValueError, match="only defined for kind='ema'"):
        optx.scale_by_momentum(kind="sum", bias_correction=True)


def test_adam_equals_optax_and_keeps_nu_dtype() -> None:
    params = {"w": jnp.zeros((3, 2))}
    ours, ref = optx.scale_by_adam(0.9, 0.99), optax.scale_by_adam(0.9, 0.99)
    s1, s2 = ours.init(params), ref.init(params)
    for i in range(3):
        g = {"w": jnp.full((3, 2), float(i + 1))}
        u1, s1 = ours.update(g, s1)
        u2, s2 = ref.update(g, s2)
        np.testing.assert_array_equal(u1["w"], u2["w"])
    bf = {"w": jnp.zeros((3, 2), jnp.bfloat16)}
    tx = optx.scale_by_adam(nu_dtype=jnp.float32)
    s = tx.init(bf)
    assert s.nu["w"].dtype == jnp.float32 and s.mu["w"].dtype == jnp.bfloat16
    u, s = jax.jit(tx.update)({"w": jnp.ones((3, 2), jnp.bfloat16)}, s)
    assert s.nu["w"].dtype == jnp.float32 and u["w"].dtype == jnp.bfloat16


def _torch_adam_steps(grads: list[np.ndarray], b1: float, b2: float, eps: float) -> list:
    """``torch.optim.Adam``'s directions ``m̂/(√v̂ + ε)`` in float64, with ``1 − βᵗ``
    in Python doubles."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps))
    return out


def test_exact_bias_correction_is_pytorchs() -> None:
    """``exact_bias_correction=True``: float32 updates within a few ulps of PyTorch's
    Adam (f64 reference) over 20 steps, where optax's float32 ``1 − βᵗ`` (the default)
    is 6.4e-6 too large, always in the same direction."""
    rng = np.random.default_rng(0)
    grads = [rng.uniform(0.5, 2.0, 64).astype(np.float32) for _ in range(20)]
    want = _torch_adam_steps([g.astype(np.float64) for g in grads], 0.9, 0.999, 1e-8)
    for exact, lo, hi in ((True, 0.0, 1e-6), (False, 5e-6, 1e-4)):
        tx = optx.scale_by_adam(exact_bias_correction=exact)
        state, update = tx.init(jnp.zeros(64)), jax.jit(tx.update)
        worst = 0.0
        for g, w in zip(grads, want):
            u, state = update(jnp.asarray(g), state)
            worst = max(worst, float(np.max(np.abs(np.asarray(u, np.float64) / w - 1))))
        assert lo <= worst < hi, (exact, worst)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optx.adamp(1.0, nesterov=False, weight_decay=0.0),
        lambda: optx.muon(
            adam_learning_rate=1.0, adam_b2=0.999, adam_eps=1e-8, adam_weight_decay=0.0
        ),
        lambda: optx.frugal(1.0, weight_decay=0.0),
        lambda: optx.dct_adamw(1.0, weight_decay=0.0),
        lambda: optx.lora_pro(1.0, weight_decay=0.0),
        lambda: optx.mkor(1.0, inner="adam", weight_decay=0.0),
        lambda: optx.mkor(1.0, inner="adamw", weight_decay=0.0),
    ],
    ids=[
        "adamp",
        "muon_fallback",
        "frugal_fallback",
        "dct_fallback",
        "lora_pro_fallback",
        "mkor_adam",
        "mkor_adamw",
    ],
)
def test_pytorch_reference_aliases_use_the_exact_bias_correction(make) -> None:
    """Aliases whose official code is PyTorch: their Adam on a bias leaf is
    PyTorch's to float32 rounding (optax's ``1 − βᵗ`` would be 6.4e-6 off)."""
    g = np.full(8, 0.5, np.float32)
    params = {"bias": jnp.zeros(8)}
    tx = make()
    state, update = tx.init(params), jax.jit(tx.update)
    want = _torch_adam_steps([g.astype(np.float64)] * 3, 0.9, 0.999, 1e-8)
    for w in want:
        u, state = update({"bias": jnp.asarray(g)}, state, params)
        np.testing.assert_allclose(np.asarray(u["bias"], np.float64), -w, rtol=1e-6)


def test_bf16_second_moment_loses_small_updates_that_f32_keeps() -> None:
    """Why nu_dtype exists: (1 - 0.999) g^2 increments vanish against bf16 nu."""
    g = {"w": jnp.ones((4,), jnp.bfloat16)}
    for nu_dtype, expect_growth in ((None, False), (jnp.float32, True)):
        tx = optx.scale_by_adam(b2=0.999, nu_dtype=nu_dtype)
        s = tx.init(g)
        for _ in range(300):
            _, s = tx.update(g, s)
        nu = float(s.nu["w"][0])
        # exact EMA of 1 after 300 steps: 1 - 0.999**300 = 0.259
        assert (abs(nu - (1 - 0.999**300)) < 0.01) == expect_growth


# ----------------------------------------------------------------------------
# Memory-efficient family additions (issue 7)
# ----------------------------------------------------------------------------


def _grads(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((3, 4)) * 10.0 ** rng.uniform(-3, 0, (3, 4)) for _ in range(n)]


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("placement", ["corrected", "uncorrected"])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_eps_placement_matches_reference(
    placement: str, bias_correction: bool, exact: bool
) -> None:
    """ε and ε_root large enough to see where they sit, on optax's bias correction and
    the exact ``1 − βᵗ`` path: ``m̂ / (√(v̂ + ε_root) + ε)`` (corrected),
    ``√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√(v + ε_root) + ε)`` (uncorrected), ``m / (√(v + ε_root) + ε)``
    (no correction)."""
    b1, b2, eps, eps_root = 0.9, 0.999, 1e-3, 1e-4
    tx = optx.scale_by_adam(
        b1,
        b2,
        eps,
        eps_root,
        eps_placement=placement,
        bias_correction=bias_correction,
        exact_bias_correction=exact,
    )
    state = tx.init(jnp.zeros((3, 4)))
    m = v = 0.0
    for t, g in enumerate(_grads(), start=1):
        u, state = tx.update(jnp.asarray(g, jnp.float32), state)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        if not bias_correction:
            ref = m / (np.sqrt(v + eps_root) + eps)
        elif placement == "corrected":  # optax / bitsandbytes / PyTorch Adam
            ref = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
        else:  # Hugging Face AdamW, official GaLore/APOLLO
            ref = np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v + eps_root) + eps)
        np.testing.assert_allclose(np.asarray(u), ref, rtol=2e-5)


def test_default_placement_is_optax() -> None:
    g = jnp.asarray(_grads(1)[0], jnp.float32)
    a, _ = optx.scale_by_adam().update(g, optx.scale_by_adam().init(g))
    b, _ = optax.scale_by_adam().update(g, optax.scale_by_adam().init(g))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_placement_dtypes_and_bad_arguments() -> None:
    tx = optx.scale_by_adam(eps_placement="uncorrected", mu_dtype="bfloat16", nu_dtype="float32")
    s = tx.init(jnp.zeros(3, jnp.float32))
    assert s.mu.dtype == jnp.bfloat16 and s.nu.dtype == jnp.float32
    u, s2 = tx.update(jnp.ones(3, jnp.bfloat16), s)
    assert u.dtype == jnp.bfloat16 and s2.mu.dtype == jnp.bfloat16
    with pytest.raises(ValueError):
        optx.scale_by_adam(eps_placement="inside")
    with pytest.raises(ValueError):
        optx.scale_by_adam(eps_placement="uncorrected", nesterov=True)


def test_bias_correction_factor() -> None:
    tx = optx.scale_by_bias_correction(0.9, 0.99)
    state = tx.init(jnp.zeros(2))
    for t in range(1, 4):
        u, state = tx.update(jnp.ones(2), state)
        np.testing.assert_allclose(np.asarray(u), np.sqrt(1 - 0.99**t) / (1 - 0.9**t), rtol=1e-5)


def test_adam_defaults_are_optax_adam() -> None:
    """``scale_by_adam`` and ``scale_by_bias_correction`` default to optax's Adam constants
    (written from optax's signature, not read from optx)."""
    names = ("b1", "b2", "eps", "eps_root")
    assert defaults(optx.scale_by_adam, *names) == defaults(optax.scale_by_adam, *names)
    betas = ("b1", "b2")
    assert defaults(optx.scale_by_bias_correction, *betas) == defaults(optax.scale_by_adam, *betas)
