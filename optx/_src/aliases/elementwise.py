"""Element-wise adaptive optimizers (AdamW with ``nu_dtype``; the family's home)."""

from __future__ import annotations

from typing import Any

import optax

from optx._src import base, moments, registry


def adamw(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    weight_decay: base.ScalarOrSchedule = 1e-4,
    *,
    mask: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """AdamW (Loshchilov & Hutter, arXiv 1711.05101) with ``mu_dtype`` and ``nu_dtype``.

    .. math::

      u_t = -η_t\\,\\big(\\hat m_t / (\\sqrt{\\hat v_t + ε_{root}} + ε) + λ θ_{t-1}\\big)

    The same numbers as ``optax.adamw`` (same defaults, reused
    ``optax.scale_by_adam``), plus ``nu_dtype`` so bf16 models can keep the
    second moment in f32. This is the fallback optimizer of every routed optx
    alias (embeddings, heads, norms, biases).

    Args:
      learning_rate: scalar or schedule.
      b1, b2, eps, eps_root: Adam's hyper-parameters.
      weight_decay: decoupled decay coefficient λ (scalar or schedule).
      mask: optional weight-decay mask (tree or callable), as in optax.
      mu_dtype, nu_dtype: moment dtypes (default: the parameter dtype).
      nesterov: NAdam-style first moment.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
      arXiv 1711.05101; Kingma & Ba, "Adam", arXiv 1412.6980.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.adamw(1e-3, nu_dtype=jnp.float32)
      >>> state = tx.init({'w': jnp.zeros((2, 2), jnp.bfloat16)})
    """
    base.check_learning_rate("learning_rate", learning_rate)
    return optax.chain(
        moments.scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


registry.register(
    registry.OptimizerSpec(
        name="adamw",
        factory=adamw,
        paper="1711.05101",
        family="elementwise",
        defaults={"learning_rate": 1e-3, "weight_decay": 1e-4},
        lr_grid=(3e-4, 1e-3, 3e-3, 1e-2),
        description="AdamW (optax numbers) with mu_dtype/nu_dtype; the baseline",
    )
)
