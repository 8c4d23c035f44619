"""Orthogonalized-update optimizers: Muon, NorMuon, AuON, ROOT, Lipschitz Muon.

Each alias is a :func:`optx.routed` pair: hidden matrices (routed by key path,
see :class:`optx.Router`) get the matrix chain, everything else (embeddings,
heads, norms, biases) gets :func:`optx.adamw`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import optax

from optx._src import (
    base,
    clipping,
    constraints,
    hyperparams,
    layouts,
    moments,
    newton_schulz_fitting,
    normalization,
    orthogonalization,
    registry,
    routing,
)
from optx._src.aliases.elementwise import torch_adamw

# Keller Jordan's MuonWithAuxAdam defaults for the non-matrix parameters:
# lr 3e-4 next to Muon's 0.02, betas (0.9, 0.95), eps 1e-10, no decay.
KELLER_ADAM_LR_RATIO = 3e-4 / 0.02

# ----------------------------------------------------------------------------
# The fallback AdamW of matrix methods: defaults and the "official" preset
# ----------------------------------------------------------------------------

FALLBACK_ARGS = ("adam_lr_ratio", "adam_b1", "adam_b2", "adam_eps", "adam_weight_decay")
"""The fallback-AdamW arguments a ``preset`` fills in when they are None."""

# Drop-in settings: what `optx.muon(lr)` uses in place of `optax.adamw(...)`. The
# fallback trains embeddings, heads, norms and biases at 0.2 × the matrix learning
# rate (the Adam-side ratio of the tuned Muon configurations in "Fantastic
# Pretraining Optimizers", arXiv 2509.02046) with Keller Jordan's aux-Adam betas and
# eps, and `weight_decay` reaches it. Measured on the README benchmark (README
# "Defaults"): best final validation loss 1.909 (Muon) against AdamW's 2.139, where
# the official settings give 2.176 and optax.adamw's betas/eps 1.924.
DROPIN_FALLBACK: Mapping[str, Any] = {
    "adam_lr_ratio": 0.2,
    "adam_b1": 0.9,
    "adam_b2": 0.95,
    "adam_eps": 1e-10,
    "adam_weight_decay": "weight_decay",
}
# A string value means "the method's own argument of that name".
FALLBACK_PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
    # Each method's settings when `preset` is None (the factory defaults).
    "default": {
        "muon": DROPIN_FALLBACK,
        "normuon": DROPIN_FALLBACK,
        "lipschitz_muon": DROPIN_FALLBACK,
        "auon": DROPIN_FALLBACK,
        "hybrid_auon": DROPIN_FALLBACK,
        # ROOT's and COSMOS's official codes train the fallback leaves with the
        # same learning rate and decay (their matrix steps are AdamW-sized): their
        # defaults are the official settings.
        "root": {
            "adam_lr_ratio": 1.0,
            "adam_b1": 0.9,
            "adam_b2": 0.95,
            "adam_eps": 1e-8,
            "adam_weight_decay": "weight_decay",
        },
        "cosmos": {
            "adam_lr_ratio": 1.0,
            "adam_b1": "b1",
            "adam_b2": "b2",
            "adam_eps": "eps",
            "adam_weight_decay": "weight_decay",
        },
    },
    # preset="official": the official code's settings for the fallback leaves.
    "official": {
        # Keller Jordan's MuonWithAuxAdam (also NorMuon's and the Lipschitz code's
        # Muon): lr 3e-4 next to 0.02, betas (0.9, 0.95), eps 1e-10, no decay.
        **{
            name: {
                "adam_lr_ratio": KELLER_ADAM_LR_RATIO,
                "adam_b1": 0.9,
                "adam_b2": 0.95,
                "adam_eps": 1e-10,
                "adam_weight_decay": 0.0,
            }
            for name in ("muon", "normuon", "lipschitz_muon")
        },
        # AuON's README: Adam lr 0.008 next to AuON's 0.08, betas (0.8, 0.95), eps 1e-10.
        **{
            name: {
                "adam_lr_ratio": 0.1,
                "adam_b1": 0.8,
                "adam_b2": 0.95,
                "adam_eps": 1e-10,
                "adam_weight_decay": 0.0,
            }
            for name in ("auon", "hybrid_auon")
        },
    },
}


class FallbackSettings(NamedTuple):
    """The resolved fallback-AdamW settings of one matrix alias."""

    adam_lr_ratio: Any
    adam_b1: Any
    adam_b2: Any
    adam_eps: Any
    adam_weight_decay: Any


def fallback_settings(
    method: str, preset: str | None, own: Mapping[str, Any], **given: Any
) -> FallbackSettings:
    """Fills the None fallback arguments of ``method`` from ``preset``.

    ``given`` holds the user's ``adam_*`` arguments (None = not given); ``own``
    the method's arguments a preset may refer to by name (``'weight_decay'``,
    ``'b1'``, ...). A given value always wins over the preset.
    """
    table = FALLBACK_PRESETS["default"][method]
    if preset is not None:
        table = FALLBACK_PRESETS[preset].get(method, table)
    out = {}
    for name in FALLBACK_ARGS:
        value = given.get(name)
        if value is None:
            value = table[name]
            if isinstance(value, str):
                value = own[value]
        out[name] = value
    return FallbackSettings(**out)


def fallback_for(method: str, args: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
    """The fallback AdamW of a matrix alias from its arguments (``locals()``):
    ``learning_rate``, ``adam_*``, ``preset``, ``mask``, ``mu_dtype``,
    ``nu_dtype`` and whatever the preset refers to (``weight_decay``, ...)."""
    settings = fallback_settings(
        method, args["preset"], args, **{name: args[name] for name in FALLBACK_ARGS}
    )
    return fallback_adamw(
        args["learning_rate"],
        args["adam_learning_rate"],
        settings,
        args["mask"],
        args["mu_dtype"],
        args["nu_dtype"],
        eps_placement=args.get("adam_eps_placement", "corrected"),
    )


def scaled_learning_rate(learning_rate: base.ScalarOrSchedule, ratio: Any) -> base.ScalarOrSchedule:
    """``ratio × learning_rate`` for a scalar or a schedule."""
    if callable(learning_rate):
        return lambda count: ratio * learning_rate(count)
    return ratio * learning_rate


def fallback_adamw(
    learning_rate: base.ScalarOrSchedule,
    adam_learning_rate: base.ScalarOrSchedule | None,
    settings: FallbackSettings,
    mask: base.Mask | None,
    mu_dtype: Any,
    nu_dtype: Any,
    *,
    eps_placement: str = "corrected",
) -> optax.GradientTransformationExtraArgs:
    """The AdamW used for leaves routed to ``'fallback'`` by a matrix alias.

    Its learning rate is ``adam_learning_rate`` if given, else
    ``settings.adam_lr_ratio × learning_rate`` (so one schedule drives both
    groups); ``mask`` is the user's weight-decay mask (over the full tree).
    ``eps_placement='corrected'`` is :func:`optx.adamw` (``m̂/(√v̂ + ε)``) with
    the exact ``1 − βᵗ`` of PyTorch's Adam, which the official codes use
    (``torch_adamw``);
    ``'uncorrected'`` puts ε on the uncorrected ``√v`` and folds the bias
    correction into the step, ``m/(√v + ε)·√(1−β₂ᵗ)/(1−β₁ᵗ)`` (HF/torch-style
    AdamW of the ROOT, GaLore and APOLLO codes).
    """
    if adam_learning_rate is None:
        lr = scaled_learning_rate(learning_rate, settings.adam_lr_ratio)
    else:
        lr = adam_learning_rate
    base.check_choice("eps_placement", eps_placement, moments.EPS_PLACEMENTS)
    return torch_adamw(
        lr,
        settings.adam_b1,
        settings.adam_b2,
        settings.adam_eps,
        settings.adam_weight_decay,
        mask,
        mu_dtype,
        nu_dtype,
        eps_placement=eps_placement,
    )


@hyperparams.validated(scaling=hyperparams.choice("keller", "moonlight"))
def muon(
    learning_rate: base.ScalarOrSchedule = 0.02,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int | None = None,
    b1: float = 0.95,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    nesterov: bool = True,
    momentum_kind: str = "ema",
    bias_correction: bool = False,
    ns_dtype: base.DTypeLike | None = None,
    scaling: str = "keller",
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    adam_b1: float | None = None,
    adam_b2: float | None = None,
    adam_eps: float | None = None,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
    preset: str | None = None,
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
    biases). The fallback's defaults are the drop-in settings (README
    "Defaults"): ``0.2 × learning_rate`` with Keller's aux-Adam β = (0.9, 0.95)
    and ε = 1e-10, decayed by ``weight_decay``; ``preset='official'`` is Keller's
    aux-Adam as the official code runs it (``0.015 × learning_rate``, no decay).
    Positional order of ``optax.contrib.muon`` (``lr, ns_coeffs, ns_steps, b1
    (optax: beta), weight_decay, mask, mu_dtype``; optx has no Muon ε: the
    Newton–Schulz ε belongs to the coefficient preset).

    Official-code quirks, and what optx does:

    * Weight decay is applied "before" the step with the old weights
      (``W ← W(1−ηλ) − ηO``); in update form that is exactly ``−η(O + λW)``.
    * Newton–Schulz runs in bf16 in the official code; optx defaults to f32.
      ``ns_dtype='bfloat16'`` runs the iteration in bf16 too, but not with
      PyTorch's rounding (op by op and inside its matmuls): on random
      matrices the two bf16 outputs differ by 5–10 % of the largest entry,
      as much as each differs from the exact iteration (4–7 %). Rounding
      after every operation as PyTorch does was tried and came no closer.
      Pre-normalization ε = 1e-7 (optax uses 1e-8).
    * The shape factor of the official code is computed on the 4-D conv
      gradient (``kh/kw``); optx uses the matrix view's ``fan_out/fan_in``.
    * optax.contrib.muon bias-corrects the momentum and uses the NAdam blend;
      optx does not, matching the official code step for step.

    Args:
      learning_rate: the Muon learning rate (scalar or schedule; 0.02 official).
      ns_coeffs: Newton–Schulz coefficients (``'keller'``,
        ``'polar_express'``, ``'dion'``, a table, ...).
      ns_steps: Newton–Schulz iterations (static; None = 5).
      b1: β, the EMA coefficient of the momentum (0.95 official; optax's ``beta``).
      weight_decay: decoupled decay λ (matrix leaves, and the fallback unless
        ``adam_weight_decay`` is given).
      mask: optional weight-decay mask (tree or callable) over the whole tree.
      mu_dtype: momentum dtype (Muon momentum and the AdamW first moment).
      nesterov: Nesterov look-ahead (official: on).
      momentum_kind: ``'ema'`` (official) or ``'sum'`` (Moonlight, levanter).
      bias_correction: bias-correct the EMA momentum (optax's form is different
        again; this option only divides by ``1 − βᵗ``).
      ns_dtype: Newton–Schulz compute dtype (e.g. ``'bfloat16'``).
      scaling: ``'keller'`` (√max(1, fan_out/fan_in)) or ``'moonlight'``
        (0.2·√max(fan_in, fan_out), arXiv 2502.16982: matches AdamW's update RMS,
        so AdamW's learning rate and weight decay carry over; use
        ``adam_lr_ratio=1.0`` with it).
      nu_dtype: the AdamW second-moment dtype.
      router: an :class:`optx.Router` (default: :func:`optx.default_router`).
      strategy: Newton–Schulz sharding strategy (``'auto'``, ``'replicate'``,
        ``'batched'``), see :func:`optx.scale_by_newton_schulz`. The default
        ``'auto'`` moves FSDP-sharded matrices with two all-to-alls (distributed
        Muon, the communication floor) on an Explicit mesh.
      adam_learning_rate: learning rate of the fallback AdamW (embeddings,
        heads, norms, biases); default ``adam_lr_ratio × learning_rate``.
      adam_lr_ratio, adam_b1, adam_b2, adam_eps, adam_weight_decay: the
        fallback AdamW; None takes the ``preset``'s value (default 0.2, 0.9,
        0.95, 1e-10 and ``weight_decay``).
      preset: None (the drop-in defaults) or ``'official'`` (Keller's aux-Adam
        settings for the fallback leaves, :data:`optx.FALLBACK_PRESETS`);
        arguments given explicitly win.

    Static (uninjectable) arguments: ``ns_steps``, ``ns_coeffs``,
    ``ns_dtype``, ``mu_dtype``, ``nu_dtype``, ``router``, ``strategy``,
    ``momentum_kind``, ``scaling``, ``preset`` and the boolean flags.

    Complex parameters: supported (phase-equivariant): Newton–Schulz iterates
      ``X ← aX + (bA + cA²)X`` with ``A = X Xᴴ`` (conjugate transpose) and a
      ``|·|²`` Frobenius norm, so it converges to the complex polar factor ``U Vᴴ``.

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
    router = routing.as_router(router)
    matrix = optax.chain(
        moments.scale_by_momentum(
            b1,
            kind=momentum_kind,
            nesterov=nesterov,
            bias_correction=bias_correction,
            mu_dtype=mu_dtype,
        ),
        orthogonalization.scale_by_newton_schulz(
            ns_coeffs, ns_steps, ns_dtype=ns_dtype, layout=router, strategy=strategy
        ),
        normalization.scale_by_shape(scaling, layout=router),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = fallback_for("muon", locals())
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


@hyperparams.validated(scaling=hyperparams.choice("preserve_norm", "match_rms"))
def normuon(
    learning_rate: base.ScalarOrSchedule = 0.02,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int | None = None,
    b1: float = 0.95,
    eps: float = 1e-10,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    b2: float = 0.95,
    nesterov: bool = True,
    scaling: str = "preserve_norm",
    rms: float = 0.2,
    conv_view: str = "matrix",
    ns_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    adam_b1: float | None = None,
    adam_b2: float | None = None,
    adam_eps: float | None = None,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
    preset: str | None = None,
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
    outside the square root; weight decay is skipped for parameters without a gradient (optax has no such
    notion: every leaf has a gradient). The official bf16 variant needs bf16
    parameters; ``ns_dtype='bfloat16'`` with bf16 params reproduces it.

    Positional order of ``optax.contrib.muon`` (see :func:`optx.muon`), with
    NorMuon's ε in optax's ``eps`` slot; ``b2`` is keyword-only.

    Deviations from the official code:
      Conv kernels, by default. The official code runs Newton–Schulz on the
      ``(out, in·kh·kw)`` view (as optx) but then computes NorMuon's statistics
      on the 4-D PyTorch tensor ``(out, in, kh, kw)``: ``v`` per
      ``(out, in, kh)`` as a mean over ``kw``, the norm restored per
      ``(out, in)`` slice over ``(kh, kw)``, and Keller's shape factor
      ``√max(1, kh/kw)``. That is 2-D code applied to a 4-D tensor, and it ties
      the statistic to PyTorch's memory order. optx's default
      ``conv_view='matrix'`` uses the matrix view instead — one ``v`` per output
      channel (the paper's neuron-wise normalization), one norm per matrix and
      ``√max(1, fan_out/fan_in)`` — so a conv kernel is treated as the
      ``(kh·kw·in, out)`` matrix Muon orthogonalized. ``conv_view='torch'``
      reproduces the official code on 2-D conv kernels, whether stored as Flax
      ``(kh, kw, in, out)`` or PyTorch ``(out, in, kh, kw)`` (float64 NumPy
      transcription, 1e-10). Dense and other layouts are identical in both.

    Args:
      learning_rate: matrix learning rate (0.02 official).
      ns_coeffs, ns_steps: see :func:`optx.muon`.
      b1: β₁ of the momentum (0.95).
      eps: ε of the normalization (1e-10).
      weight_decay: decoupled decay (matrix leaves and, by default, the fallback).
      mask, mu_dtype: see :func:`optx.muon`.
      b2: β₂ of the neuron-wise second moment (0.95; the official ``beta2``).
      nesterov: Nesterov look-ahead (official: on).
      scaling: ``'preserve_norm'`` (official code) or ``'match_rms'`` (paper).
      rms: target RMS for ``'match_rms'`` (0.2).
      conv_view: ``'matrix'`` (default) or ``'torch'`` (the official 4-D conv
        statistics); see the deviations.
      ns_dtype, strategy, router: see :func:`optx.muon`.
      nu_dtype: dtype of the neuron-wise ``v`` and the AdamW second moment.
      adam_learning_rate, adam_lr_ratio, adam_b1, adam_b2, adam_eps,
        adam_weight_decay, preset: the fallback AdamW, as in :func:`optx.muon`.

    Complex parameters: supported (phase-equivariant): Newton–Schulz with conjugate transposes
      (see :func:`optx.muon`), neuron-wise second moments of ``|O|²``.

    References:
      Li, Liu, Liang, Chen, Zhao, "NorMuon: Making Muon more efficient and
      scalable", arXiv 2510.05491 (code: github.com/zichongli5/NorMuon).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16))}}
      >>> tx = optx.normuon(learning_rate=0.02)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    router = routing.as_router(router)
    row_rms = normalization.scale_by_row_rms(
        b2, eps, layout=router, nu_dtype=nu_dtype, conv_view=conv_view
    )
    if scaling == "preserve_norm":
        normalize = optax.chain(
            normalization.preserve_frobenius_norm(
                row_rms, eps=eps, layout=router, conv_view=conv_view
            ),
            normalization.scale_by_shape("keller", layout=router, conv_view=conv_view),
        )
    else:
        normalize = optax.chain(row_rms, normalization.scale_to_rms(rms, eps=eps, layout=router))
    matrix = optax.chain(
        moments.scale_by_momentum(b1, kind="ema", nesterov=nesterov, mu_dtype=mu_dtype),
        orthogonalization.scale_by_newton_schulz(
            ns_coeffs, ns_steps, ns_dtype=ns_dtype, layout=router, strategy=strategy
        ),
        normalize,
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = fallback_for("normuon", locals())
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


registry.register(
    registry.OptimizerSpec(
        name="muon",
        factory=muon,
        paper="Jordan et al. 2024; 2502.16982",
        family="orthogonalized",
        defaults={"learning_rate": 0.02},
        lr_grid=(0.01, 0.02, 0.04, 0.08),
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
        lr_grid=(0.01, 0.02, 0.04, 0.08),
        uses_matrix_path=True,
        test_overrides={"adam_lr_ratio": 1.0},
        description="NorMuon (official code semantics), AdamW fallback",
    )
)


# ----------------------------------------------------------------------------
# AuON and Hybrid-AuON (arXiv 2509.24320)
# ----------------------------------------------------------------------------

AUON_FORMS = ("paper", "repo")


def _auon_brake(
    form: str, gamma: Any, eps: Any, router: routing.Router, *, after_ns: bool
) -> optax.GradientTransformationExtraArgs:
    """AuON's brake in the paper's or the repository's form.

    The paper brakes the unit-Frobenius momentum (AuON) or the Newton–Schulz
    output as is (Hybrid); the repository always computes the brake from a
    normalized copy and divides the un-normalized input.
    """
    if form == "paper":
        brake = normalization.scale_by_cosh_rms(1.0 if gamma is None else gamma, eps, layout=router)
        if after_ns:
            return brake
        return optax.chain(normalization.normalize_by_frobenius(1e-7, layout=router), brake)
    return normalization.scale_by_cosh_rms(
        1.5 if gamma is None else gamma, eps, normalize_argument=True, layout=router
    )


def _auon_alias(
    orthogonalize: optax.GradientTransformation | None,
    args: Mapping[str, Any],
    fallback: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """AuON's matrix chain from the alias arguments ``args`` (its ``locals()``)."""
    form, router = args["form"], args["router"]
    scaling = args["scaling"]
    if scaling is None:
        scaling = "keller" if form == "paper" else "none"
    matrix = optax.chain(
        moments.scale_by_momentum(
            args["b1"], kind="ema", nesterov=args["nesterov"], mu_dtype=args["mu_dtype"]
        ),
        *(() if orthogonalize is None else (orthogonalize,)),
        _auon_brake(form, args["gamma"], args["eps"], router, after_ns=orthogonalize is not None),
        normalization.scale_by_shape(scaling, layout=router),
        optax.add_decayed_weights(args["weight_decay"], args["mask"]),
        optax.scale_by_learning_rate(args["learning_rate"]),
    )
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


@hyperparams.validated()
def auon(
    learning_rate: base.ScalarOrSchedule = 0.055,
    b1: float = 0.95,
    eps: float = 1e-8,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    form: str = "paper",
    gamma: float | None = None,
    nesterov: bool = True,
    scaling: str | None = None,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    adam_b1: float | None = None,
    adam_b2: float | None = None,
    adam_eps: float | None = None,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
    preset: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AuON: linear-time normalized momentum with a hyperbolic-cosine brake.

    Maity, "AuON: A Linear-time Alternative to (Semi-)Orthogonal Momentum
    Updates" (arXiv 2509.24320, v1 "A Survey For Linear-time Orthogonal
    Optimizer"). Per hidden matrix ``G`` (Flax ``(fan_in, fan_out)``), the
    paper's unit-norm form (§3.1, "Method (equations)", and Eqs. (1)–(3) for
    the norms it implies), by default:

    .. math::

      M_t = β M_{t-1} + (1-β) G_t, \\qquad U_t = (1-β) G_t + β M_t,

      X_t = U_t / (\\|U_t\\|_F + 10^{-7}), \\qquad
      r_t = \\sqrt{\\tfrac{1}{N}\\textstyle\\sum_i \\cosh(X_{t,i})^2}, \\qquad
      O_t = X_t / (r_t + 10^{-8}),

      W_t = W_{t-1} - η\\,\\big(\\sqrt{\\max(1, \\text{fan\\_out}/\\text{fan\\_in})}\\, O_t + λ W_{t-1}\\big),

    with the shape factor and Nesterov of the paper's training script
    (``Auon_Adam_train.py``, c87b8625). No matrix products: three ``O(mn)``
    passes per matrix (two norms and a ``cosh``). Since ``‖X‖_F = 1``,
    ``r ≈ 1 + 1/(2N)`` unless ``X`` is spiky: AuON is essentially
    Frobenius-normalized Nesterov momentum with a tail-aware brake.

    ``form='repo'`` is the official repository's ``AuON`` (``auon/optimizer.py``,
    bba2e822): ``r`` is computed from ``cosh(γ U/(‖U‖_F + 10⁻⁷))`` with
    ``γ = 1.5`` and divides the **un-normalized** ``U`` (``O = U/(r + 10⁻⁸)``),
    with no shape factor — a brake on SGD-Nesterov whose step scales with
    ``‖U‖`` (repository default lr 0.24, README 0.08). The golden trajectory
    ``auon__public`` records this form.

    Official-code quirks, and what optx does:

    * The training script casts ``U`` to bf16 before normalizing; optx computes
      in f32 (or wider).
    * The repository's weight decay ``W ← W(1 − ηλ)`` happens before the step
      (in update form ``−η(O + λW)``, identical); it skips the update (not the
      decay) when ``‖U‖ = 0``; optx's update is 0 there anyway.
    * The repository applies AuON to every parameter it is given, including
      1-D ones; as in its README, optx routes biases, norms, embeddings and
      heads to AdamW — with the drop-in defaults of :func:`optx.muon`, or the
      README's (lr ``0.1 × learning_rate``, β = (0.8, 0.95), ε = 1e-10, no
      decay) with ``preset='official'``.
    * **Deviation:** a stacked leaf ``(L, in, out)`` (a scanned layer) gets one
      brake per matrix, ``‖U‖`` and ``r`` over each of its ``L`` matrices, as
      ``L`` separate layers would in PyTorch; the repository, given the 3-D
      tensor as one parameter, takes both over the whole tensor.

    Positional order of ``optax.contrib.muon`` restricted to AuON's arguments
    (``lr, b1, eps, weight_decay, mask, mu_dtype``).

    Args:
      learning_rate: the AuON learning rate (0.055: the paper's LM runs).
      b1: β of the EMA momentum (0.95).
      eps: ε added to ``r`` (1e-8).
      weight_decay: decoupled decay (matrix leaves and, by default, the fallback).
      mask: optional weight-decay mask (tree or callable) over the whole tree.
      mu_dtype: momentum dtype (and the AdamW first moment's).
      form: ``'paper'`` (unit-norm; default) or ``'repo'``.
      gamma: γ inside ``cosh`` (default 1 for the paper, 1.5 for the repo).
      nesterov: Nesterov look-ahead (both forms use it).
      scaling: shape factor: ``'keller'`` (paper default), ``'none'`` (repo
        default) or ``'moonlight'``.
      nu_dtype: the AdamW second-moment dtype.
      router: an :class:`optx.Router` (default: :func:`optx.default_router`).
      adam_learning_rate, adam_lr_ratio, adam_b1, adam_b2, adam_eps,
        adam_weight_decay, preset: the fallback AdamW (see :func:`optx.muon`).

    Static (uninjectable) arguments: ``form``, ``scaling``, ``router``,
    ``preset``, dtypes and the boolean flags.

    Complex parameters: refused at init (a TypeError naming the leaf) because AuON's cosh-RMS
      normalization of the update is real-only (``cosh`` of a complex number is not a
      magnitude); complex leaves routed to the AdamW fallback are fine.

    References:
      Maity, "AuON: A Linear-time Alternative to (Semi-)Orthogonal Momentum
      Updates", arXiv 2509.24320 (code: github.com/ryyzn9/AuON).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16))}, 'bias': jnp.zeros(16)}
      >>> tx = optx.auon(learning_rate=0.05)
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    router = routing.as_router(router)
    return _auon_alias(None, locals(), fallback_for("auon", locals()))


@hyperparams.validated()
def hybrid_auon(
    learning_rate: base.ScalarOrSchedule = 0.055,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int | None = None,
    b1: float = 0.95,
    eps: float = 1e-8,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    form: str = "paper",
    ns_dtype: base.DTypeLike | None = None,
    gamma: float | None = None,
    nesterov: bool = True,
    scaling: str | None = None,
    conv_view: str = "matrix",
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    adam_b1: float | None = None,
    adam_b2: float | None = None,
    adam_eps: float | None = None,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
    preset: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hybrid-AuON: a few Newton–Schulz steps, then AuON's cosh brake.

    arXiv 2509.24320, §3.2 ("Hybrid Approach"): the paper uses **one**
    Newton–Schulz iteration (Muon's quintic, after Frobenius normalization) and
    then the cosh-RMS rescaling of its output ``X``:

    .. math::

      X = \\mathrm{NS}_1(U_t), \\qquad
      O_t = X / \\big(\\sqrt{\\tfrac{1}{N}\\textstyle\\sum_i \\cosh(X_i)^2} + 10^{-8}\\big),

      W_t = W_{t-1} - η\\,\\big(\\sqrt{\\max(1, \\text{fan\\_out}/\\text{fan\\_in})}\\, O_t + λ W_{t-1}\\big)

    with AuON's Nesterov momentum (:func:`optx.auon`). The paper's display of
    the hybrid writes ``rms = (1/N)‖cosh X‖²_F`` without the square root, at odds
    with its main formula and both codes; optx uses the square root.

    ``form='repo'`` is the repository's ``HybridAuON`` (bba2e822): 5 steps by
    default (``ns_steps``), in f32, then the repository brake
    (γ = 1.5, normalized argument, un-normalized divisor — see
    :func:`optx.auon`) and no shape factor; the golden trajectory
    ``hybrid_auon__public`` records it.

    Deviations from the official code:
      Conv kernels, by default. For a 4-D conv tensor the repository
      orthogonalizes each ``kh × kw`` slice separately (its Newton–Schulz is
      batched over the leading ``(out, in)`` axes; the brake then runs on the
      whole tensor). optx's default ``conv_view='matrix'`` orthogonalizes the
      layout's matrix view ``(kh·kw·in, out)``, like Muon and like the
      repository's own ``Muon`` — a ``kh × kw`` slice (3 × 3) has no useful
      orthogonal structure. ``conv_view='torch'`` reproduces the repository on
      2-D conv kernels (Flax or PyTorch storage order; float64 NumPy
      transcription of ``HybridAuON.step``, 1e-10).

      Stacked leaves ``(L, in, out)`` (scanned layers) get one brake per
      matrix, as ``L`` separate layers would; the repository takes the brake's
      norms over the whole 3-D tensor it is given as one parameter.

    Positional order of ``optax.contrib.muon`` (see :func:`optx.muon`).

    Args:
      ns_coeffs, ns_dtype, strategy: see :func:`optx.muon`.
      ns_steps: Newton–Schulz iterations (static; None = 1 for the paper, 5
        for the repo).
      conv_view: ``'matrix'`` (default) or ``'torch'`` (Newton–Schulz per
        ``kh × kw`` slice of 2-D conv kernels, as the repository).
      others: as :func:`optx.auon`.

    Complex parameters: refused at init (a TypeError naming the leaf) because its cosh brake is
      real-only (``cosh`` of a complex number is not a magnitude); complex leaves routed to the
      AdamW fallback are fine.

    References:
      Maity, "AuON: A Linear-time Alternative to (Semi-)Orthogonal Momentum
      Updates", arXiv 2509.24320 (code: github.com/ryyzn9/AuON).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16))}}
      >>> tx = optx.hybrid_auon(learning_rate=0.05)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    if ns_steps is None:
        ns_steps = 1 if form == "paper" else 5
    router = routing.as_router(router)
    base.check_choice("conv_view", conv_view, layouts.CONV_VIEWS)
    ns_layout = layouts.conv_window_slices(router) if conv_view == "torch" else router
    orthogonalize = orthogonalization.scale_by_newton_schulz(
        ns_coeffs, ns_steps, ns_dtype=ns_dtype, layout=ns_layout, strategy=strategy
    )
    return _auon_alias(orthogonalize, locals(), fallback_for("hybrid_auon", locals()))


# ----------------------------------------------------------------------------
# ROOT (arXiv 2511.20626)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def root(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    ns_coeffs: orthogonalization.CoefficientSpec | None = None,
    ns_steps: int | None = None,
    b1: float = 0.95,
    weight_decay: base.ScalarOrSchedule = 0.1,
    mask: base.Mask | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    nesterov: bool = True,
    quantile: float = 0.9,
    clip_eps: float = 1e-9,
    ns_dtype: base.DTypeLike | None = None,
    scaling: str = "moonlight",
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    adam_b1: float | None = None,
    adam_b2: float | None = None,
    adam_eps: float | None = None,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
    preset: str | None = None,
    adam_eps_placement: str = "uncorrected",
) -> optax.GradientTransformationExtraArgs:
    """ROOT: robust orthogonalized optimizer (soft-threshold + AdaNewton).

    He, Han, Zhou, Chen, Liu, Chen, Wang, "ROOT: Robust Orthogonalized
    Optimizer for Neural Network Training", arXiv 2511.20626; official code
    ``ROOT/examples/example_train.py`` (class ``ROOT``, ``root5``; noah-research
    aea3c60d) by default. Per hidden matrix ``G``:

    .. math::

      M_t = μ M_{t-1} + G_t, \\qquad U_t = G_t + μ M_t \\quad\\text{(Nesterov)},

      ε_t = \\mathrm{quantile}_{0.9}(|U_t|) + 10^{-9}, \\qquad
      B_t = U_t - \\mathrm{sign}(U_t) \\max(|U_t| - ε_t, 0),

      O_t = \\mathrm{NS}_5^{(a,b,c)_{m,n}}(B_t), \\qquad
      W_t = W_{t-1} - η\\,\\big(0.2\\sqrt{\\max(m, n)}\\, O_t + λ W_{t-1}\\big).

    The paper's algorithm (momentum, soft-threshold outlier separation
    ``O_t = T_ε[M_t]``, ``B_t = M_t − O_t``, AdaNewton) names an abstract
    threshold ε; the official code's per-matrix 0.9-quantile (linear
    interpolation, ``torch.quantile``'s rule) is the concrete choice pinned
    here (:func:`optx.clip_by_quantile`). ``(a, b, c)_{m,n}`` comes from the
    shape table :data:`optx.linalg.ROOT_COEFFICIENTS` (one triple for all steps);
    shapes outside it use Muon's coefficients with a one-time warning — fit
    coefficients for your shapes with :func:`optx.linalg.fit_newton_schulz_coefficients`
    and pass ``ROOT_COEFFICIENTS.with_shapes({...})``.

    Official-code quirks, and what optx does:

    * The quantile is computed on ``|U|`` in f32 (``g.abs().float()``) with a
      hand-written ``kthvalue`` interpolation equal to ``torch.quantile``; optx
      finds the two order statistics by exact selection (no sort,
      :func:`optx.linalg.matrix_quantile`) and interpolates in f32 (in f64 for
      f64 updates: a deviation, as is the interpolation weight, which the
      official code rounds to float32 (``torch.tensor(q·(N−1))``) and optx
      keeps exact; the two move a float64 step by about 1e-6 of its size).
    * Newton–Schulz runs in the gradient dtype (f32), no bf16 cast (optx:
      ``ns_dtype=None``, f32).
    * Weight decay multiplies by ``1 − ηλ`` with the *unadjusted* lr while the
      step uses ``η·0.2√max(m, n)`` (Moonlight), exactly ``−η(0.2√max·O + λW)``.
    * Unknown shapes log a warning on *every* step; optx warns once per shape.
    * The built-in AdamW for 1-D, ``embed_tokens`` and ``lm_head`` uses the
      same lr and weight decay, β = (0.9, 0.95), ε = 1e-8, and folds bias
      correction into the lr (``m/(√v + ε)·√(1−β₂ᵗ)/(1−β₁ᵗ)``, i.e. ε scaled by
      ``√(1−β₂ᵗ)``); optx's fallback reproduces it (``adam_eps_placement=
      'uncorrected'``, the default) with the same lr (``adam_lr_ratio`` 1) and
      decay (``adam_weight_decay`` = λ) — ROOT's defaults are its official
      settings, ``preset='official'`` changes nothing —; ``'corrected'`` is
      :func:`optx.adamw`'s ``m̂/(√v̂ + ε)``.
    * The official class asserts 2-D parameters (conv kernels would break
      ``p.add_``); optx handles conv and stacked leaves through their layouts.

    Positional order of ``optax.contrib.muon`` (see :func:`optx.muon`).

    Args:
      learning_rate: η (1e-3 in the official script; AdamW-like because of the
        Moonlight scaling).
      ns_coeffs: a shape table (None: :data:`optx.linalg.ROOT_COEFFICIENTS`) or any
        Newton–Schulz coefficient spec. A table is callable: under
        ``optax.inject_hyperparams`` list it in ``static_args``.
      ns_steps: Newton–Schulz iterations (static; None = 5).
      b1: μ of the **sum** momentum ``M ← μM + G`` (0.95; the official
        ``momentum``).
      weight_decay: λ (0.1 official), also the fallback's unless
        ``adam_weight_decay`` is given.
      mask, mu_dtype, nu_dtype, router, ns_dtype, strategy: see :func:`optx.muon`.
      nesterov: Nesterov look-ahead (official: on).
      quantile: the clipping quantile q (0.9).
      clip_eps: added to the quantile (1e-9).
      scaling: ``'moonlight'`` (official) or ``'keller'``.
      adam_learning_rate, adam_lr_ratio, adam_b1, adam_b2, adam_eps,
        adam_weight_decay, preset: the fallback AdamW (defaults: ratio 1,
        β = (0.9, 0.95), ε = 1e-8, ``weight_decay``; the official settings).
      adam_eps_placement: ``'uncorrected'`` (official, see above) or
        ``'corrected'`` (:func:`optx.adamw`).

    Complex parameters: supported (phase-equivariant): Newton–Schulz with conjugate transposes
      (see :func:`optx.muon`); the soft threshold shrinks ``|x|`` and keeps the phase.

    References:
      He et al., "ROOT: Robust Orthogonalized Optimizer for Neural Network
      Training", arXiv 2511.20626 (code: github.com/huawei-noah/noah-research,
      ROOT/); Liu et al., "Muon is Scalable for LLM Training", arXiv 2502.16982.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16)) + jnp.eye(8, 16)}}
      >>> tx = optx.root(learning_rate=1e-3, ns_coeffs='keller')
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    if ns_coeffs is None:
        ns_coeffs = newton_schulz_fitting.ROOT_COEFFICIENTS
    router = routing.as_router(router)
    matrix = optax.chain(
        moments.scale_by_momentum(b1, kind="sum", nesterov=nesterov, mu_dtype=mu_dtype),
        clipping.clip_by_quantile(quantile, clip_eps, layout=router, strategy=strategy),
        orthogonalization.scale_by_newton_schulz(
            ns_coeffs, ns_steps, ns_dtype=ns_dtype, layout=router, strategy=strategy
        ),
        normalization.scale_by_shape(scaling, layout=router),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = fallback_for("root", locals())
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


# ----------------------------------------------------------------------------
# Lipschitz-constrained Muon (arXiv 2507.13338)
# ----------------------------------------------------------------------------

LIPSCHITZ_PROJECTIONS = (*constraints.PROJECTIONS, "none")


def _times(a: Any, b: Any) -> Any:
    """``a × b`` for scalars or schedules."""
    if callable(a) or callable(b):
        return lambda count: (a(count) if callable(a) else a) * (b(count) if callable(b) else b)
    return a * b


LIPSCHITZ_PRESETS: dict[str, dict[str, Any]] = {
    # nanogpt/train_spectral_cap.py: Muon(momentum=0.95, nesterov=True), Dion's table, the
    # soft cap's delta = lr * 1.14502 * 1.05 (the table's overshoot with a 5% margin), w_max 1.
    "nanogpt": {
        "ns_coeffs": "dion",
        "ns_steps": 5,
        "b1": 0.95,
        "nesterov": True,
        "w_max": 1.0,
        "coupling": "rms",
        "margin": 1.14502 * 1.05,
    },
    # modula (optimizers.py Muon + atom.py Linear): plain EMA, 6-step table with eps 1e-12,
    # delta = lr in RMS->RMS units divided by sqrt(fan_out/fan_in); configs: beta1 0.9, w_max 6.
    "modula": {
        "ns_coeffs": "youjiacheng",
        "ns_steps": 6,
        "b1": 0.9,
        "nesterov": False,
        "w_max": 6.0,
        "coupling": "modula",
        "margin": 1.0,
    },
}


def _spectral_projection_steps(
    projection: str | None,
    w_max: float,
    max_update_norm: base.ScalarOrSchedule,
    decay_per_step: base.ScalarOrSchedule,
    spectral_decay: float,
    power_iteration: dict[str, int | bool],
    common: dict[str, str | routing.Router],
    *,
    coupling: str,
    strategy: str,
) -> list[optax.GradientTransformation]:
    """Lipschitz-Muon's weight projection after the update (none for ``projection=None``):
    the soft cap couples to δ and ``ηλ``; hard/SVD caps need only ``w_max``; normalize,
    hammer and spectral weight decay estimate norms by power iteration."""
    if projection == "soft_cap":
        return [
            constraints.spectral_soft_cap(
                w_max,
                max_update_norm,
                decay_per_step,
                coupling=coupling,
                strategy=strategy,
                **common,
            )
        ]
    if projection in ("hard_cap", "svd_cap"):
        return [constraints.PROJECTIONS[projection](w_max, strategy=strategy, **common)]
    if projection in ("normalize", "hammer"):
        return [constraints.PROJECTIONS[projection](w_max, **power_iteration, **common)]
    if projection == "spectral_wd":
        return [constraints.spectral_weight_decay(spectral_decay, **power_iteration, **common)]
    return []


@hyperparams.validated(
    projection=hyperparams.choice(*LIPSCHITZ_PROJECTIONS),
    preset=hyperparams.choice("nanogpt", "modula", "official", optional=True),
    b1=hyperparams.UNIT.but(optional=True),
    w_max=hyperparams.POSITIVE.but(optional=True),
    nesterov=hyperparams.FLAG.but(optional=True),
    coupling=hyperparams.choice("rms", "modula", optional=True),
)
def lipschitz_muon(
    learning_rate: base.ScalarOrSchedule = 0.02,
    ns_coeffs: orthogonalization.CoefficientSpec | None = None,
    ns_steps: int | None = None,
    b1: float | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    preset: str | None = "nanogpt",
    projection: str = "soft_cap",
    w_max: float | None = None,
    spectral_decay: base.ScalarOrSchedule = 0.1,
    max_update_norm: base.ScalarOrSchedule | None = None,
    geometry: str = "rms",
    coupling: str | None = None,
    power_iterations: int | None = None,
    warm_start: bool = True,
    seed: int | None = None,
    project_embeddings: bool = False,
    nesterov: bool | None = None,
    ns_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    adam_b1: float | None = None,
    adam_b2: float | None = None,
    adam_eps: float | None = None,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Muon with a post-step spectral-norm projection (Lipschitz training).

    Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training
    Transformers with Enforced Lipschitz Constants" (arXiv 2507.13338; code
    ``Arongil/lipschitz-transformers``, ``modula/abstract.py::
    Atom.decay_step_project``). Per hidden matrix, Muon's step in the RMS→RMS
    geometry followed by a projection ``P`` of the weights:

    .. math::

      D_t = \\mathrm{NS}_5(U_t) \\sqrt{\\text{fan\\_out}/\\text{fan\\_in}}, \\qquad
      W_t = s\\, P\\big((W_{t-1}(1 - ηλ) - η D_t)/s\\big), \\quad
      s = \\sqrt{\\text{fan\\_out}/\\text{fan\\_in}},

    emitted as the update ``P(W + u) − W`` (the chain ends with the
    projection, after ``scale_by_learning_rate``). ``D_t`` has unit RMS→RMS
    norm up to Newton–Schulz's overshoot, so a weight with
    ``‖W‖_{RMS→RMS} ≤ w_max`` reaches at most
    ``k = w_max(1 − ηλ) + δ`` with ``δ = η × max_σ NS`` (1.2024 for Muon's
    5 steps; computed from the coefficients, see
    :func:`optx.linalg.composed_polynomial_max`); the soft cap maps ``k`` to ``w_max``.

    ``projection`` (see :mod:`optx._src.constraints`): ``'soft_cap'`` (default, the
    paper's), ``'hard_cap'``, ``'svd_cap'`` (exact), ``'normalize'``,
    ``'hammer'``, ``'spectral_wd'`` (strength ``spectral_decay``) or
    ``'none'``. Only leaves the router sends to ``'matrix'`` are projected; to
    constrain the head too, route it to ``'matrix'`` (it is then trained by
    Muon, as in the paper). ``project_embeddings=True`` adds the official
    embedding projection (modula ``Embed.project``: every embedding vector's
    RMS capped at 1, :func:`optx.constraints.embedding_rms_projection` with factor 1) on
    the router's embedding leaves (trained by the fallback AdamW).

    Presets (``preset``; an argument given explicitly always wins):

    * ``'nanogpt'`` (default) — ``nanogpt/train_spectral_cap.py``, the paper's
      transformer runs: Nesterov momentum 0.95, Dion's 5-step table
      (``ns_coeffs='dion'``), the soft cap's ``δ = η · 1.14502 · 1.05`` (the
      table's largest output singular value with a 5% margin), ``w_max = 1``,
      coupling in RMS→RMS units. Default because it is the official PyTorch
      training path of the paper's GPT results and uses optx's Muon conventions.
    * ``'modula'`` — the JAX ``modula`` package of the same repository
      (``optimizers.py::Muon``, ``modula/atom.py::Linear``): plain EMA momentum
      without Nesterov, β = 0.9 and ``w_max = 6`` (its example configs), the
      6-step table (``ns_coeffs='youjiacheng'``, ε = 1e-12), ``δ = η`` (no
      overshoot allowance) divided by ``√(fan_out/fan_in)``
      (``coupling='modula'``), decay coupled as ``ηλ``.
    * ``None`` / ``'official'`` — optx's generic Muon: Keller's table, Nesterov
      0.95, ``δ = η × max_σ NS`` computed from the table
      (:func:`optx.linalg.composed_polynomial_max`), ``w_max = 1``; ``'official'``
      also gives the fallback Keller's AdamW settings (as :func:`optx.muon`).

    Deviations from the official code (each documented in
    :mod:`optx._src.constraints`): stacked matrices are not divided by their
    count (modula's ``batch_project``); power iteration is warm-started
    (``warm_start=False`` re-seeds); modula's per-atom mass scaling
    (``target_norm = mass share``, which multiplies both the update and ``δ``
    of each atom) depends on the model's module graph and is not applied —
    give each group its share through ``learning_rate`` (e.g. with
    ``optax.multi_transform``); the official embedding gradient dualization
    (``Embed.dualize``, with ``max_inflation_factor``) is not reproduced:
    embeddings are trained by the fallback AdamW; on float64 parameters the
    ``'nanogpt'`` path computes two constants in float32 (the coupling α with
    a float32 ``torch.linalg.eigvals`` and the scale ``√(fan_out/fan_in)`` as a
    float32 tensor) where optx computes them in the parameters' dtype: 1e-8 to
    6e-7 of the weight change per step, 3e-15 with both official constants in
    float64 (the ``'modula'`` path is float64 throughout and matches to 3e-14).
    Initialize the model inside
    the ball (e.g. one :func:`optx.constraints.spectral_svd_cap` projection of the initial
    weights): a soft cap only guarantees the bound from a feasible start, and far
    outside it diverges (see :func:`optx.constraints.spectral_soft_cap`: at the
    default learning rate, weights whose RMS→RMS singular values exceed about 4.3
    overflow within a few steps, as in the official code; a Lecun-normal ``(4d, d)``
    kernel starts near 3).

    Positional order of ``optax.contrib.muon`` (see :func:`optx.muon`).

    Args:
      learning_rate: Muon's learning rate η (scalar or schedule).
      ns_coeffs, ns_steps: see :func:`optx.muon` (None: the preset's).
      b1: β of the momentum (None: the preset's, 0.95 or 0.9).
      weight_decay: decoupled decay λ (matrix leaves and, by default, the
        fallback).
      mask, mu_dtype: see :func:`optx.muon` (the soft cap's coupling assumes
        every matrix decays by ``ηλ``; with a ``mask`` the excluded matrices
        get a slightly weaker cap).
      preset: ``'nanogpt'`` (default), ``'modula'``, ``'official'`` or None
        (see above).
      projection: the projection (see above; static).
      w_max: the bound on each matrix's norm (None: the preset's, 1 or 6).
      spectral_decay: strength of ``'spectral_wd'``.
      max_update_norm: δ; default from the preset (see above).
      geometry: ``'rms'`` (RMS→RMS, the paper; updates scaled by
        √(fan_out/fan_in)) or ``'l2'`` (plain spectral norm; no shape factor).
      coupling: soft-cap coupling convention (``'rms'`` or ``'modula'``; None:
        the preset's).
      power_iterations, warm_start, seed: power iteration of ``'normalize'``,
        ``'hammer'`` and ``'spectral_wd'`` (static; None = 16 and 0).
      project_embeddings: cap the embedding vectors' RMS at 1 after each step.
      nesterov: Nesterov look-ahead (None: the preset's).
      ns_dtype, nu_dtype, router, strategy: see :func:`optx.muon`.
      adam_learning_rate, adam_lr_ratio, adam_b1, adam_b2, adam_eps,
        adam_weight_decay: the fallback AdamW (see :func:`optx.muon`).

    Complex parameters: refused at init (a TypeError naming the leaf) because the official
      spectral constraints (power iteration, odd-polynomial caps) are real-only.

    References:
      Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training
      Transformers with Enforced Lipschitz Constants", arXiv 2507.13338;
      Jordan et al., "Muon", 2024.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': 0.1 * jnp.ones((8, 16))}}
      >>> tx = optx.lipschitz_muon(learning_rate=0.02, w_max=1.0)
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    defaults = LIPSCHITZ_PRESETS.get(preset or "", {})
    explicit_coeffs = ns_coeffs is not None
    ns_coeffs = defaults.get("ns_coeffs", "keller") if ns_coeffs is None else ns_coeffs
    if ns_steps is None:
        ns_steps = defaults.get("ns_steps", 5) if not explicit_coeffs else 5
    orthogonalization.check_ns_coeffs(ns_coeffs, ns_steps)
    b1 = defaults.get("b1", 0.95) if b1 is None else b1
    nesterov = defaults.get("nesterov", True) if nesterov is None else nesterov
    w_max = defaults.get("w_max", 1.0) if w_max is None else w_max
    coupling = defaults.get("coupling", "rms") if coupling is None else coupling
    power_iterations = 16 if power_iterations is None else power_iterations
    seed = 0 if seed is None else seed
    router = routing.as_router(router)
    if max_update_norm is None:
        if "margin" in defaults and not explicit_coeffs:
            overshoot = defaults["margin"]
        elif callable(ns_coeffs):
            raise ValueError(
                "With shape-dependent ns_coeffs, pass max_update_norm explicitly "
                "(the largest singular value Newton–Schulz can output, times the lr)."
            )
        else:
            overshoot = newton_schulz_fitting.composed_polynomial_max(ns_coeffs, ns_steps)
        max_update_norm = _times(learning_rate, overshoot)
    fallback_preset = "official" if preset == "official" else None
    matrix = optax.chain(
        moments.scale_by_momentum(b1, kind="ema", nesterov=nesterov, mu_dtype=mu_dtype),
        orthogonalization.scale_by_newton_schulz(
            ns_coeffs, ns_steps, ns_dtype=ns_dtype, layout=router, strategy=strategy
        ),
        normalization.scale_by_shape("rms_to_rms" if geometry == "rms" else "none", layout=router),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = fallback_for("lipschitz_muon", {**locals(), "preset": fallback_preset})
    steps = [routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)]
    steps.extend(
        _spectral_projection_steps(
            projection,
            w_max,
            max_update_norm,
            _times(learning_rate, weight_decay),
            spectral_decay,
            {"power_iterations": power_iterations, "warm_start": warm_start, "seed": seed},
            {"geometry": geometry, "layout": router},
            coupling=coupling,
            strategy=strategy,
        )
    )
    if project_embeddings:
        steps.append(
            constraints.embedding_rms_projection(1.0, mask=constraints.embedding_mask(router))
        )
    return routing.attach_router(optax.chain(*steps), router)


for _name, _factory, _description in (
    ("auon", auon, "AuON (paper's unit-norm cosh-RMS form), AdamW fallback"),
    ("hybrid_auon", hybrid_auon, "Hybrid-AuON (1 Newton-Schulz step + cosh brake), AdamW fallback"),
):
    registry.register(
        registry.OptimizerSpec(
            name=_name,
            factory=_factory,
            paper="2509.24320",
            family="orthogonalized",
            defaults={"learning_rate": 0.055},
            lr_grid=(0.01, 0.03, 0.055, 0.1),
            static_args=("form",),
            uses_matrix_path=True,
            test_overrides={"adam_lr_ratio": 0.4},
            description=_description,
        )
    )
registry.register(
    registry.OptimizerSpec(
        name="root",
        factory=root,
        paper="2511.20626",
        family="orthogonalized",
        defaults={"learning_rate": 1e-3, "weight_decay": 0.1},
        lr_grid=(3e-4, 1e-3, 3e-3, 1e-2),
        uses_matrix_path=True,
        test_overrides={"learning_rate": 0.02, "weight_decay": 0.0},
        description="ROOT (quantile soft-threshold + shape-specific NS, Moonlight scale)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="lipschitz_muon",
        factory=lipschitz_muon,
        paper="2507.13338",
        family="orthogonalized",
        defaults={"learning_rate": 0.02, "w_max": 1.0},
        lr_grid=(0.005, 0.01, 0.02, 0.04),
        static_args=("projection", "geometry", "coupling", "power_iterations", "seed"),
        uses_matrix_path=True,
        test_overrides={"w_max": 100.0, "adam_lr_ratio": 1.0},
        description="Muon + spectral soft cap (Lipschitz-constrained training)",
    )
)
