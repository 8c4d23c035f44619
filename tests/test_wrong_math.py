"""Tests that catch small, plausible bugs in the math (issue 20 §7).

* Sophia-G with ``tokens_per_batch = B ≠ 1`` against a float64 NumPy transcription
  of the official update (``Liuhong99/Sophia`` ``sophia.py`` @a7e15722: the
  ratio is ``|m| / (ρ·B·h + 1e-15)`` clamped at 1). Every other test uses
  ``B = 1``, where a missing ``B`` cannot show.
* Sign methods give exactly zero where their sign argument is exactly zero
  (``torch.sign(0) = 0`` in every official code). Lion's argument is
  ``β₁m + (1−β₁)g``: at ``g = 0`` with ``m ≠ 0`` the official step is
  ``−η·sign(m)``, not zero, and that is tested too. FRUGAL's state-free part is
  signSGD on ``g``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx

# ----------------------------------------------------------------------------
# Sophia-G with B ≠ 1
# ----------------------------------------------------------------------------

R = np.random.default_rng(7)
TARGET = {"w": R.normal(size=(3, 4)), "b": R.normal(size=(4,))}
CURV = {k: R.uniform(0.5, 2.0, v.shape) for k, v in TARGET.items()}
SAMPLED_SCALE = {k: R.uniform(0.2, 1.5, v.shape) for k, v in TARGET.items()}


def _loss(p: Any) -> jax.Array:
    return sum(
        0.5 * jnp.sum(jnp.asarray(CURV[k], jnp.float32) * (p[k] - TARGET[k]) ** 2) for k in p
    )


def _sampled_loss(p: Any, key: jax.Array) -> jax.Array:
    del key  # deterministic: the reference needs the same ĝ
    return sum(jnp.sum(jnp.asarray(SAMPLED_SCALE[k], jnp.float32) * jnp.sin(p[k])) for k in p)


def _sophia_reference(p0, steps, *, lr, b1, b2, rho, bs, wd, k):
    """Official SophiaG + the training script's refresh (after step k−1, on step k's batch)."""
    p = {n: np.asarray(v, np.float64) for n, v in p0.items()}
    m = {n: np.zeros_like(v) for n, v in p.items()}
    h = {n: np.zeros_like(v) for n, v in p.items()}
    out = []
    for t in range(steps):
        if t > 0 and t % k == 0:  # update_hessian() with the sampled-label gradient
            for n in p:
                gh = SAMPLED_SCALE[n] * np.cos(p[n])
                h[n] = b2 * h[n] + (1 - b2) * gh * gh
        for n in p:
            g = CURV[n] * (p[n] - TARGET[n])
            m[n] = b1 * m[n] + (1 - b1) * g
            p[n] = p[n] * (1 - lr * wd)
            ratio = np.minimum(np.abs(m[n]) / (rho * bs * h[n] + 1e-15), 1.0)
            p[n] = p[n] - lr * np.sign(m[n]) * ratio
        out.append({n: v.copy() for n, v in p.items()})
    return out


def test_sophia_g_tokens_per_batch_matches_the_official_update() -> None:
    hp = {"lr": 0.05, "b1": 0.965, "b2": 0.99, "rho": 0.04, "bs": 48.0, "wd": 0.1, "k": 2}
    steps = 7
    tx = optx.sophia_g(
        hp["lr"],
        hp["b1"],
        hp["b2"],
        weight_decay=hp["wd"],
        mask=lambda p: jax.tree.map(lambda _: True, p),
        gamma=hp["rho"],
        update_interval=hp["k"],
        tokens_per_batch=hp["bs"],
        gnb_clip_norm=None,
    )
    p0 = {n: jnp.zeros(v.shape, jnp.float32) for n, v in TARGET.items()}

    @jax.jit
    def run(params: Any) -> Any:
        def body(carry: Any, _: Any) -> tuple[Any, Any]:
            p, s = carry
            u, s = tx.update(jax.grad(_loss)(p), s, p, sampled_loss_fn=_sampled_loss)
            p = optax.apply_updates(p, u)
            return (p, s), p

        return jax.lax.scan(body, (params, tx.init(params)), None, length=steps)[1]

    got = run(p0)
    want = _sophia_reference(p0, steps, **hp)
    wrong_b = _sophia_reference(p0, steps, **{**hp, "bs": 1.0})
    for t in range(steps):
        for n in TARGET:
            np.testing.assert_allclose(got[n][t], want[t][n], rtol=2e-5, atol=2e-6, err_msg=n)
    # B matters here: the reference without it is far from the run.
    gap = max(np.max(np.abs(want[-1][n] - wrong_b[-1][n])) for n in TARGET)
    assert gap > 1e-2


# ----------------------------------------------------------------------------
# Sign methods: exactly zero where the sign's argument is exactly zero
# ----------------------------------------------------------------------------

SHAPE = (8, 16)  # one 8×16 hidden matrix: blockwise 8-bit and FRUGAL blocks apply


def _grads(steps: int, shape: tuple[int, ...] = SHAPE) -> tuple[np.ndarray, ...]:
    """Gradients with exact zeros: ``always`` coordinates are 0 at every step,
    ``late`` coordinates are 0 from the second step on (m ≠ 0 there)."""
    r = np.random.default_rng(3)
    g = r.normal(size=(steps, *shape)).astype(np.float32)
    always = r.random(shape) < 0.25
    late = ~always & (r.random(shape) < 0.25)
    g[:, always] = 0.0
    g[1:, late] = 0.0
    return g, always, late


def _updates(tx: optax.GradientTransformation, grads: np.ndarray) -> np.ndarray:
    p = {"hidden": {"kernel": jnp.full(grads.shape[1:], 0.1, jnp.float32)}}

    @jax.jit
    def run(gs: jax.Array) -> jax.Array:
        def body(s: Any, g: jax.Array) -> tuple[Any, jax.Array]:
            u, s = tx.update({"hidden": {"kernel": g}}, s, p)
            return s, u["hidden"]["kernel"]

        return jax.lax.scan(body, tx.init(p), gs)[1]

    return np.asarray(run(jnp.asarray(grads)))


def _lion_reference(grads: np.ndarray, lr: float, b1: float, b2: float) -> np.ndarray:
    m = np.zeros(SHAPE)
    out = []
    for g in grads.astype(np.float64):
        out.append(-lr * np.sign(b1 * m + (1 - b1) * g))
        m = b2 * m + (1 - b2) * g
    return np.stack(out)


@pytest.mark.parametrize("name", ["lion", "lion_8bit", "lion_kappa"])
def test_lion_family_sign_of_zero_is_zero(name: str) -> None:
    lr, b1, b2, steps = 0.01, 0.9, 0.99, 4
    factory = {
        "lion": optx.lion,
        "lion_8bit": lambda *a: optx.lion_8bit(*a, min_size=1),
        "lion_kappa": lambda *a: optx.lion_kappa(*a, kappa="l1"),
    }[name]
    grads, always, late = _grads(steps)
    got = _updates(factory(lr, b1, b2), grads)
    # g = 0 at every step: m = 0 there, sign(0) = 0: exactly no update.
    assert np.all(got[:, always] == 0.0)
    # The first step (m = 0): zero exactly where g is.
    assert np.all((got[0] == 0.0) == (grads[0] == 0.0))
    # g = 0 but m ≠ 0 (the official rule): −η·sign(β₁m), not zero.
    want = _lion_reference(grads, lr, b1, b2)
    np.testing.assert_array_equal(np.sign(got[1:, late]), np.sign(want[1:, late]))
    assert np.all(got[1:, late] != 0.0)
    if name != "lion_8bit":  # the 8-bit moment can round a sign's argument to 0
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_lion_kappa_nuclear_of_a_zero_gradient_is_zero() -> None:
    tx = optx.lion_kappa(0.01, kappa="nuclear")
    got = _updates(tx, np.zeros((2, *SHAPE), np.float32))
    assert np.all(got == 0.0)


def test_frugal_state_free_part_is_signsgd_with_sign_of_zero_zero() -> None:
    # Four stacked 8×16 matrices, density 0.25: one Adam block, three signSGD blocks.
    grads, always, _ = _grads(3, (4, *SHAPE))
    tx = optx.frugal(0.01, density=0.25, inactive_update_rule="sign")
    got = _updates(tx, grads)
    # Step 1: Adam's m = v = 0 where g = 0 and sign(0) = 0 in the state-free part.
    assert np.all((got[0] == 0.0) == (grads[0] == 0.0))
    assert np.all(got[:, always] == 0.0)
    # The state-free blocks move by exactly ±lr where g ≠ 0 (signSGD) at every step.
    free = [
        b for b in range(4) if np.all(np.abs(got[1:, b][grads[1:, b] != 0]) == np.float32(0.01))
    ]
    assert len(free) == 3, free
