"""Orthogonalized-update optimizers: Muon and NorMuon (the family's home).

Each alias is a :func:`optx.routed` pair: hidden matrices (routed by key path,
see :class:`optx.Router`) get the matrix chain, everything else (embeddings,
heads, norms, biases) gets :func:`optx.adamw`.
"""

from __future__ import annotations

from typing import Any

import optax

from optx._src import base, moments, normalization, orthogonalization, registry, routing
from optx._src.aliases.elementwise import adamw

# Keller Jordan's MuonWithAuxAdam defaults for the non-matrix parameters:
# lr 3e-4 next to Muon's 0.02, betas (0.9, 0.95), eps 1e-10, no decay.
KELLER_ADAM_LR_RATIO = 3e-4 / 0.02


def scaled_learning_rate(learning_rate: base.ScalarOrSchedule, ratio: Any) -> base.ScalarOrSchedule:
    """``ratio × learning_rate`` for a scalar or a schedule."""
    if callable(learning_rate):
        return lambda count: ratio * learning_rate(count)
    return ratio * learning_rate


def fallback_adamw(
    learning_rate: base.ScalarOrSchedule,
    adam_learning_rate: base.ScalarOrSchedule | None,
    adam_lr_ratio: Any,
    adam_b1: Any,
    adam_b2: Any,
    adam_eps: Any,
    adam_weight_decay: Any,
    mu_dtype: Any,
    nu_dtype: Any,
) -> optax.GradientTransformationExtraArgs:
    """The AdamW used for leaves routed to ``'fallback'`` by a matrix alias.

    Its learning rate is ``adam_learning_rate`` if given, else
    ``adam_lr_ratio × learning_rate`` (so one schedule drives both groups).
    """
    if adam_learning_rate is None:
        lr = scaled_learning_rate(learning_rate, adam_lr_ratio)
    else:
        base.check_learning_rate("adam_learning_rate", adam_learning_rate)
        lr = adam_learning_rate
    return adamw(
        lr,
        adam_b1,
        adam_b2,
        adam_eps,
        weight_decay=adam_weight_decay,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )


def muon(
    learning_rate: base.ScalarOrSchedule = 0.02,
    momentum: Any = 0.95,
    weight_decay: base.ScalarOrSchedule = 0.0,
    *,
    nesterov: bool = True,
    momentum_kind: str = "ema",
    bias_correction: bool = False,
    ns_coefficients: Any = "keller",
    ns_steps: int = 5,
    ns_dtype: Any = None,
    scaling: str = "keller",
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: Any = KELLER_ADAM_LR_RATIO,
    adam_b1: Any = 0.9,
    adam_b2: Any = 0.95,
    adam_eps: Any = 1e-10,
    adam_weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Muon: momentum orthogonalized by Newton–Schulz, for hidden matrices.

    Official semantics of Keller Jordan's ``muon.py`` (``SingleDeviceMuon``,
    commit 857d1adc) by default. Per matrix ``G`` (Flax ``(fan_in, fan_out)``):

    .. math::

      M_t = β M_{t-1} + (1-β) G_t, \\qquad U_t = (1-β) G_t + β M_t
      \\quad\\text{(Nesterov; no bias correction)}

      O_t = \\mathrm{NS}_5(U_t) \\cdot \\sqrt{\\max(1, \\text{fan\\_out}/\\text{fan\\_in})}, \\qquad
      W_t = W_{t-1} - η (O_t + λ W_{t-1})

    The chain is ``scale_by_momentum | scale_by_newton_schulz | scale_by_shape |
    add_decayed_weights | scale_by_learning_rate`` on leaves the router sends to
    ``'matrix'`` (hidden Dense, attention and conv kernels, scanned stacks; conv
    kernels are orthogonalized as ``(kh·kw·in, out)`` matrices), and
    :func:`optx.adamw` on the ``'fallback'`` leaves (embeddings, heads, norms,
    biases; Keller's aux-Adam defaults β = (0.9, 0.95), ε = 1e-10).

    Official-code quirks, and what optx does:

    * Weight decay is applied "before" the step with the old weights
      (``W ← W(1−ηλ) − ηO``); in update form that is exactly ``−η(O + λW)``.
    * Newton–Schulz runs in bf16 in the official code; optx defaults to f32
      (``ns_dtype='bfloat16'`` reproduces the official cast). Pre-normalization
      ε = 1e-7 (optax uses 1e-8).
    * The shape factor of the official code is computed on the 4-D conv
      gradient (``kh/kw``); optx uses the matrix view's ``fan_out/fan_in``.
    * optax.contrib.muon bias-corrects the momentum and uses the NAdam blend;
      optx does not, matching the official code step for step.

    Args:
      learning_rate: the Muon learning rate (scalar or schedule; 0.02 official).
      momentum: β (0.95 official).
      weight_decay: decoupled decay λ for the matrix leaves.
      nesterov: Nesterov look-ahead (official: on).
      momentum_kind: ``'ema'`` (official) or ``'sum'`` (Moonlight, levanter).
      bias_correction: bias-correct the EMA momentum (optax's form is different
        again; this option only divides by ``1 − βᵗ``).
      ns_coefficients: Newton–Schulz coefficients (``'keller'``,
        ``'polar_express'``, ``'dion'``, a table, ...).
      ns_steps: Newton–Schulz iterations (static).
      ns_dtype: Newton–Schulz compute dtype (e.g. ``'bfloat16'``).
      scaling: ``'keller'`` (√max(1, fan_out/fan_in)) or ``'moonlight'``
        (0.2·√max(fan_in, fan_out), arXiv 2502.16982: matches AdamW's update RMS,
        so AdamW's learning rate and weight decay carry over).
      weight_decay_mask: optional mask for the matrix-group decay.
      mu_dtype, nu_dtype: moment dtypes (Muon momentum and AdamW moments).
      router: an :class:`optx.Router` (default: :func:`optx.default_router`).
      strategy: Newton–Schulz sharding strategy (``'auto'``, ``'replicate'``,
        ``'batched'``), see :func:`optx.scale_by_newton_schulz`.
      adam_learning_rate: learning rate of the fallback AdamW; default
        ``adam_lr_ratio × learning_rate`` (Keller's 3e-4 at lr 0.02).
      adam_lr_ratio: see above (use 1.0 with ``scaling='moonlight'``).
      adam_b1, adam_b2, adam_eps, adam_weight_decay: fallback AdamW settings.

    Static (uninjectable) arguments: ``ns_steps``, ``ns_coefficients``,
    ``ns_dtype``, ``mu_dtype``, ``nu_dtype``, ``router``, ``strategy``,
    ``momentum_kind``, ``scaling`` and the boolean flags.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks",
      2024, https://kellerjordan.github.io/posts/muon/ (code:
      github.com/KellerJordan/Muon); Liu et al., "Muon is Scalable for LLM
      Training", arXiv 2502.16982; "Muon: Training and Trade-offs",
      arXiv 2509.24406.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16))}, 'head': {'kernel': jnp.ones((16, 4))}}
      >>> tx = optx.muon(learning_rate=0.02)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    base.check_learning_rate("learning_rate", learning_rate)
    base.check_positive_int("ns_steps", ns_steps)
    base.check_choice("scaling", scaling, ("keller", "moonlight"))
    router = routing.as_router(router)
    matrix = optax.chain(
        moments.scale_by_momentum(
            momentum,
            kind=momentum_kind,
            nesterov=nesterov,
            bias_correction=bias_correction,
            mu_dtype=mu_dtype,
        ),
        orthogonalization.scale_by_newton_schulz(
            ns_coefficients, ns_steps, compute_dtype=ns_dtype, layout=router, strategy=strategy
        ),
        normalization.scale_by_shape(scaling, layout=router),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = fallback_adamw(
        learning_rate,
        adam_learning_rate,
        adam_lr_ratio,
        adam_b1,
        adam_b2,
        adam_eps,
        adam_weight_decay,
        mu_dtype,
        nu_dtype,
    )
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


def normuon(
    learning_rate: base.ScalarOrSchedule = 0.02,
    momentum: Any = 0.95,
    beta2: Any = 0.95,
    weight_decay: base.ScalarOrSchedule = 0.0,
    *,
    eps: Any = 1e-10,
    nesterov: bool = True,
    scaling: str = "preserve_norm",
    rms: Any = 0.2,
    ns_coefficients: Any = "keller",
    ns_steps: int = 5,
    ns_dtype: Any = None,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: Any = KELLER_ADAM_LR_RATIO,
    adam_b1: Any = 0.9,
    adam_b2: Any = 0.95,
    adam_eps: Any = 1e-10,
    adam_weight_decay: Any = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """NorMuon: Muon followed by a neuron-wise second-moment normalization.

    Official semantics of ``zichongli5/NorMuon`` (``SingleDeviceNorMuon``,
    commit d45c9a42) by default. Per matrix, after Muon's momentum and
    Newton–Schulz (:func:`optx.muon`):

    .. math::

      v_t = β_2 v_{t-1} + (1-β_2)\\,\\mathrm{mean}_{\\text{fan-in}}(O_t^2), \\qquad
      \\hat O_t = O_t / (\\sqrt{v_t} + 10^{-10})

      \\hat O_t \\leftarrow \\hat O_t\\,\\|O_t\\|_F / (\\|\\hat O_t\\|_F + 10^{-10})
      \\cdot \\sqrt{\\max(1, \\text{fan\\_out}/\\text{fan\\_in})}, \\qquad
      W_t = W_{t-1} - η(\\hat O_t + λ W_{t-1})

    with one ``v`` entry per output neuron (the PyTorch row; in a Flax kernel the
    mean runs over the fan-in axes). Chain: ``scale_by_momentum |
    scale_by_newton_schulz | preserve_frobenius_norm(scale_by_row_rms) |
    scale_by_shape | add_decayed_weights | scale_by_learning_rate``.

    ``scaling='match_rms'`` is the paper's Algorithm 1 step size instead:
    ``η̂ = rms·η·√(mn)/‖Ô‖_F`` (``scale_by_row_rms | scale_to_rms``), which
    matches AdamW's update RMS (the paper's Algorithm 1 also uses plain momentum:
    combine with ``nesterov=False``).

    Official-code quirks: no bias correction on either moment; ε = 1e-10
    outside the square root; the official code computes the statistics of a
    4-D conv update on its 4-D view (per ``(out, in, kh)`` "row" over ``kw``) —
    optx uses the matrix view (per output channel), the evident intent; weight
    decay is skipped for parameters without a gradient (optax has no such
    notion: every leaf has a gradient). The official bf16 variant needs bf16
    parameters; ``ns_dtype='bfloat16'`` with bf16 params reproduces it.

    Args:
      learning_rate: matrix learning rate (0.02 official).
      momentum: β₁ (0.95).
      beta2: β₂ of the neuron-wise second moment (0.95).
      weight_decay: decoupled decay for matrix leaves.
      eps: ε of the normalization (1e-10).
      nesterov: Nesterov look-ahead (official: on).
      scaling: ``'preserve_norm'`` (official code) or ``'match_rms'`` (paper).
      rms: target RMS for ``'match_rms'`` (0.2).
      ns_coefficients, ns_steps, ns_dtype, strategy: see :func:`optx.muon`.
      weight_decay_mask, mu_dtype, nu_dtype, router: see :func:`optx.muon`
        (``nu_dtype`` also sets the dtype of the neuron-wise ``v``).
      adam_learning_rate, adam_lr_ratio, adam_b1, adam_b2, adam_eps,
        adam_weight_decay: the fallback AdamW, as in :func:`optx.muon`.

    References:
      Li, Liu, Liang, Chen, Zhao, "NorMuon: Making Muon more efficient and
      scalable", arXiv 2510.05491 (code: github.com/zichongli5/NorMuon).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16))}}
      >>> tx = optx.normuon(learning_rate=0.02)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    base.check_learning_rate("learning_rate", learning_rate)
    base.check_positive_int("ns_steps", ns_steps)
    base.check_choice("scaling", scaling, ("preserve_norm", "match_rms"))
    router = routing.as_router(router)
    row_rms = normalization.scale_by_row_rms(beta2, eps, layout=router, nu_dtype=nu_dtype)
    if scaling == "preserve_norm":
        normalize = optax.chain(
            normalization.preserve_frobenius_norm(row_rms, eps=eps, layout=router),
            normalization.scale_by_shape("keller", layout=router),
        )
    else:
        normalize = optax.chain(row_rms, normalization.scale_to_rms(rms, eps=eps, layout=router))
    matrix = optax.chain(
        moments.scale_by_momentum(momentum, kind="ema", nesterov=nesterov, mu_dtype=mu_dtype),
        orthogonalization.scale_by_newton_schulz(
            ns_coefficients, ns_steps, compute_dtype=ns_dtype, layout=router, strategy=strategy
        ),
        normalize,
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = fallback_adamw(
        learning_rate,
        adam_learning_rate,
        adam_lr_ratio,
        adam_b1,
        adam_b2,
        adam_eps,
        adam_weight_decay,
        mu_dtype,
        nu_dtype,
    )
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


registry.register(
    registry.OptimizerSpec(
        name="muon",
        factory=muon,
        paper="Jordan et al. 2024; 2502.16982",
        family="orthogonalized",
        defaults={"learning_rate": 0.02},
        lr_grid=(0.005, 0.01, 0.02, 0.04),
        uses_matrix_path=True,
        test_overrides={"adam_lr_ratio": 1.0},
        description="Muon (Keller Jordan's official semantics), AdamW fallback",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="normuon",
        factory=normuon,
        paper="2510.05491",
        family="orthogonalized",
        defaults={"learning_rate": 0.02},
        lr_grid=(0.005, 0.01, 0.02, 0.04),
        uses_matrix_path=True,
        test_overrides={"adam_lr_ratio": 1.0},
        description="NorMuon (official code semantics), AdamW fallback",
    )
)
