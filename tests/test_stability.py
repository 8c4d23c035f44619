"""Long-run stability at registry defaults (issue 20 §6).

M-FAC multiplies the gradient by up to ``η/λ`` in the directions in which its
window's gradients barely vary. With noiseless (full-batch) gradients the
window becomes nearly collinear and, at the official ``η = 1e-3, λ = 1e-5``,
the update is gradient descent with step 100: the run diverges. The registry's
``λ = 1e-2`` keeps ``η/λ`` at 0.1. One compiled ``lax.scan`` runs both, with
``λ`` as an argument.

The default run is a 1,000-step proxy; ``OPTX_LONG_RUNS=1`` runs the 5,000 steps
of the issue (about 35 s on a loaded 2-core machine).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optx

STEPS = 5000 if os.environ.get("OPTX_LONG_RUNS") else 1000


def _mlp_problem() -> tuple[Any, Any]:
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(128, 4)), jnp.float32)
    y = jnp.sin(x @ jnp.asarray(r.normal(size=(4, 1)), jnp.float32))

    def init() -> Any:
        def w(*shape: int) -> jax.Array:
            return jnp.asarray(r.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

        return {
            "l1": {"kernel": w(4, 16), "bias": jnp.zeros(16)},
            "l2": {"kernel": w(16, 16), "bias": jnp.zeros(16)},
            "out": {"kernel": w(16, 1), "bias": jnp.zeros(1)},
        }

    def loss(p: Any) -> jax.Array:
        h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        h = jnp.tanh(h @ p["l2"]["kernel"] + p["l2"]["bias"])
        return jnp.mean((h @ p["out"]["kernel"] + p["out"]["bias"] - y) ** 2)

    return init(), loss


def test_mfac_registry_defaults_stay_stable_on_full_batch_steps() -> None:
    spec = optx.get_optimizer("mfac")
    assert spec.defaults["damp"] == 1e-2 and spec.defaults["learning_rate"] == 1e-3
    params, loss_fn = _mlp_problem()

    @jax.jit
    def run(damp: jax.Array) -> jax.Array:
        tx = spec.build(damp=damp)

        def body(carry: Any, _: Any) -> tuple[Any, jax.Array]:
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        _, losses = jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)
        return losses

    losses = np.asarray(run(jnp.asarray(spec.defaults["damp"], jnp.float32)))
    assert np.all(np.isfinite(losses))
    assert losses.max() <= losses[0] * 1.01, losses.max() / losses[0]
    assert losses[-1] < 0.05 * losses[0] and losses[-STEPS // 10 :].max() < 0.05 * losses[0]
    # The cause: the official λ with the same η leaves the step unbounded here.
    official = np.asarray(run(jnp.asarray(1e-5, jnp.float32)))
    assert not np.all(official[-STEPS // 10 :] < 0.05 * losses[0])
