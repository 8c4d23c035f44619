"""Optimizers for low-rank adapters: LoRA-Pro and SoRA (issue 15).

Both take a whole model's trainable tree: the adapter leaves (found by
:func:`optx.lora.lora_pairs` — NNX names ``lora_a``/``lora_b``/``lora_gate``, or
``pairs`` from the model) get the method, every other leaf an AdamW
(classifier heads, biases, norms trained alongside the adapters). LoRA-SB is
an initialisation (:func:`optx.lora.lora_sb_init`) followed by any optimizer on the
``r × r`` cores, so it is not a registered optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

from optx._src import adapters, base, hyperparams, lora, moments, registry
from optx._src.aliases.elementwise import torch_adamw
from optx._src.weight_decay import add_decayed_weights_after_step

ADAPTER = "adapter"
OTHER = "other"
GATE = "gate"


@hyperparams.validated(scaling=hyperparams.choice("lora", "rslora", "official"))
def lora_pro(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: base.ScalarOrSchedule = 0.0,
    *,
    mask: base.Mask | None = None,
    delta: float = 1e-8,
    alpha: float | None = None,
    scaling: str = "lora",
    variant: str = "paper",
    pairs: Sequence[lora.LoRAPair] | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    """LoRA-Pro: full fine-tuning's Adam step, realised by low-rank adapters.

    Per adapter ``W = W₀ + s·A B`` (:func:`optx.scale_by_lora_pro`): adjust the
    LoRA gradients so that ``s(g̃_A B + A g̃_B)`` is the best approximation of
    the full gradient, run a full-size Adam on that equivalent gradient, and
    map the Adam direction back to ``(Δ_A, Δ_B)`` with the closed-form
    Sylvester solution; then

    .. math::

      A ← A − η(Δ_A + λA), \\qquad B ← B − η(Δ_B + λB)

    (the official trainer's SGD step; λ = ``weight_decay``, coupled decay of
    SGD = decoupled decay here). Leaves that belong to no adapter get AdamW
    (``adam_*``; learning rate and decay default to the main ones).

    Memory: the full ``fan_in × fan_out`` Adam moments per adapter (as full
    fine-tuning) plus ``r × r`` work matrices; the point of LoRA-Pro is the
    update quality of full fine-tuning with LoRA's parameter storage.

    See :func:`optx.scale_by_lora_pro` for the official-code quirks
    (``variant='official'``: bias correction with ``t + 1``, bf16-rounded
    second moment; ``scaling='official'``: the hard-coded ``s = 2``).

    Args:
      learning_rate: η (scalar or schedule).
      b1, b2, eps: Adam's coefficients on the equivalent gradient.
      weight_decay: λ on the adapter factors.
      mask: weight-decay mask (tree or callable) for the adapter group.
      delta: ridge of the ``r × r`` inverses (official 1e-8).
      alpha, scaling: the adapter scale (``α/r``, ``α/√r``, or ``'official'``
        ``s = 2``); with ``alpha=None`` the module scale of ``pairs`` (1.0 for
        ``nnx.LoRA``).
      variant: ``'paper'`` or ``'official'``.
      pairs: adapters from :func:`optx.lora.lora_pairs` (default: by leaf name).
      mu_dtype, nu_dtype: moment dtypes (adapters and fallback).
      adam_learning_rate, adam_b1, adam_b2, adam_eps, adam_weight_decay: the
        AdamW of the non-adapter leaves.

    Complex parameters: supported (phase-equivariant) on leaves outside LoRA pairs (the AdamW
      side); complex LoRA factors are refused at init (a TypeError naming the leaf) because the
      official gradient adjustment (a real Sylvester solve) is real-only.

    References:
      Wang, Liang, He, Wang, Tan, "LoRA-Pro: Are Low-Rank Adapters Properly
      Optimized?", ICLR 2025, arXiv 2407.18242 (code: github.com/mrflogs/LoRA-Pro).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> params = {'layer': {'lora_a': 0.1 * jnp.ones((6, 2)), 'lora_b': jnp.zeros((2, 4))},
      ...           'head': jnp.zeros(4)}
      >>> tx = optx.lora_pro(learning_rate=1e-2)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    base.check_learning_rate("learning_rate", learning_rate)
    if not callable(weight_decay):
        base.check_nonnegative("weight_decay", weight_decay)
    adapters.check_lora_pro_args(b1, b2, eps, delta, alpha, scaling, variant)
    adapter_tx = optax.chain(
        adapters.scale_by_lora_pro(
            b1,
            b2,
            eps,
            delta=delta,
            alpha=alpha,
            scaling=scaling,
            variant=variant,
            pairs=pairs,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = torch_adamw(
        learning_rate if adam_learning_rate is None else adam_learning_rate,
        adam_b1,
        adam_b2,
        adam_eps,
        weight_decay if adam_weight_decay is None else adam_weight_decay,
        None,
        mu_dtype,
        nu_dtype,
    )

    def labels(tree: Any) -> Any:
        found = lora.resolve_pairs(tree, pairs, method="optx.lora_pro")
        factors = frozenset(x for p in found for x in (p.a, p.b))
        return base.tree_map_with_path_str(lambda p, _: ADAPTER if p in factors else OTHER, tree)

    return optax.with_extra_args_support(
        optax.partition({ADAPTER: adapter_tx, OTHER: fallback}, labels)
    )


@hyperparams.validated()
def sora(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: base.ScalarOrSchedule = 0.0,
    *,
    mask: base.Mask | None = None,
    threshold: base.ScalarOrSchedule = 1e-3,
    threshold_mode: str = "official",
    gate_learning_rate: base.ScalarOrSchedule | None = None,
    gate_b1: float = 0.9,
    gate_b2: float = 0.999,
    gate_eps: float = 1e-6,
    gate_weight_decay: base.ScalarOrSchedule = 0.0,
    bias_correction: bool = True,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SoRA: AdamW with a proximal (sparsifying) step on the adapter gates.

    SoRA's adapter is ``ΔW x = s·B(g ⊙ A x)`` (:class:`optx.lora.GatedLoRA`); the
    gate ``g`` is trained by the official ``SparseAdamW`` (Ding et al.,
    arXiv 2311.11696, Eq. 6–7):

    .. math::

      m, v ← \\mathrm{Adam}(g_t),\\quad
      g ← g − η_g\\Big(\\tfrac{\\sqrt{1-β_2^t}}{1-β_1^t}\\,\\tfrac{m}{\\sqrt v + ε_g} + λ_g g\\Big),
      \\quad g ← \\mathrm{prox}_ξ(g)

    (:func:`optx.scale_by_gate_threshold`, ξ = ``threshold``, *not* scaled
    by η; the official in-place sequence with its effective 2ξ dead zone by
    default, the paper's soft threshold with ``threshold_mode='soft'``). All
    other leaves get the Hugging Face AdamW the official trainer uses (ε on
    the uncorrected ``√v``, decay of the post-step weights, ``mask`` for the
    decayed leaves). Add :func:`optx.lora.sora_l1_penalty` to the loss (the
    trainer's ``λ₁·Σ|g|/n``), schedule ξ with :func:`optx.schedules.sparsifying_schedule`
    and prune with :func:`optx.lora.prune_sora`.

    Official-code details: ``SparseAdamW`` is built with only ``params`` and
    ``lr`` (``sparse_lr``, default the main lr; ``run_glue.py``), so its
    betas are transformers' defaults (0.9, 0.999) whatever the trainer's
    ``adam_beta1``/``adam_beta2`` (which reach the main optimizer only), its
    ε is transformers' default 1e-6, its bias correction is on and its weight
    decay 0; its decay term (if any) uses the pre-step weights. The gates are
    excluded from the main optimizer. Hence ``b1``, ``b2``, ``eps`` and
    ``bias_correction`` configure the non-gate AdamW only, and the gate
    optimizer has its own ``gate_b1``, ``gate_b2``, ``gate_eps`` and
    ``gate_weight_decay`` with the official values as defaults.

    Args:
      learning_rate: η of the non-gate leaves (and of the gates unless
        ``gate_learning_rate`` is given).
      b1, b2: Adam's coefficients of the non-gate AdamW (HF ``adam_beta1``,
        ``adam_beta2``).
      eps: ε of the non-gate AdamW (HF ``adam_epsilon`` 1e-8).
      weight_decay: decay of the non-gate leaves (post-step, HF order).
      mask: weight-decay mask for the non-gate leaves (the official trainer
        excludes biases and LayerNorm weights).
      threshold: ξ (``sparse_lambda_2``, default 1e-3; scalar or schedule).
      threshold_mode: ``'official'`` (2ξ dead zone) or ``'soft'``.
      gate_learning_rate: η_g (``sparse_lr``; default ``learning_rate``).
      gate_b1, gate_b2: the gate Adam's coefficients (0.9, 0.999).
      gate_eps: ε_g (1e-6).
      gate_weight_decay: λ_g (0).
      bias_correction: the non-gate AdamW's bias correction (HF
        ``correct_bias``, True); the gate Adam's is always on, as the official
        ``SparseAdamW``'s.
      mu_dtype, nu_dtype: moment dtypes.

    Complex parameters: refused at init (a TypeError naming the leaf) because the official gate
      proximal step is real-only.

    References:
      Ding, Lv, Wang, Chen, Wang, Ji, Liu, Zhou, Zeng, Chen, Wang, Zhang, "Sparse
      Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023,
      arXiv 2311.11696 (code: github.com/TsinghuaC3I/SoRA).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> params = {'l': {'lora_a': jnp.ones((3, 2)), 'lora_b': jnp.zeros((2, 3)),
      ...                 'lora_gate': jnp.array([1e-4, 1.0])}}
      >>> tx = optx.sora(learning_rate=1e-2, threshold=1e-3)
      >>> grads = jax.tree.map(jnp.zeros_like, params)
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> [round(float(v), 6) for v in optax.apply_updates(params, updates)['l']['lora_gate']]
      [0.0, 0.999]
    """
    base.check_learning_rate("learning_rate", learning_rate)
    gate_lr = learning_rate if gate_learning_rate is None else gate_learning_rate
    base.check_learning_rate("gate_learning_rate", gate_lr)
    for name, value in (("b1", b1), ("b2", b2), ("gate_b1", gate_b1), ("gate_b2", gate_b2)):
        base.check_in_range(name, value, 0.0, 1.0)
    for name, value in (
        ("eps", eps),
        ("gate_eps", gate_eps),
        ("weight_decay", weight_decay),
        ("gate_weight_decay", gate_weight_decay),
    ):
        if not callable(value):
            base.check_nonnegative(name, value)
    base.check_choice("threshold_mode", threshold_mode, adapters.THRESHOLD_MODES)

    def adam(
        b1: float, b2: float, eps: float, corrected: bool
    ) -> optax.GradientTransformationExtraArgs:
        return moments.scale_by_adam(
            b1,
            b2,
            eps,
            eps_placement="uncorrected",
            bias_correction=corrected,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        )

    gate_tx = optax.chain(
        adam(gate_b1, gate_b2, gate_eps, True),
        optax.add_decayed_weights(gate_weight_decay),
        optax.scale_by_learning_rate(gate_lr),
        adapters.scale_by_gate_threshold(threshold, mode=threshold_mode),
    )
    other_tx = optax.chain(
        adam(b1, b2, eps, bias_correction),
        add_decayed_weights_after_step(weight_decay, learning_rate, mask),
        optax.scale_by_learning_rate(learning_rate),
    )

    def labels(tree: Any) -> Any:
        return base.tree_map_with_path_str(
            lambda p, _: GATE if p.rpartition("/")[2].lower() == lora.GATE_NAME else OTHER, tree
        )

    def init_fn(params: base.Params) -> Any:
        base.check_real_params(params, "optx.sora")
        return partition.init(params)

    partition = optax.partition({GATE: gate_tx, OTHER: other_tx}, labels)
    return optax.GradientTransformationExtraArgs(init_fn, partition.update)


registry.register(
    registry.OptimizerSpec(
        name="lora_pro",
        factory=lora_pro,
        paper="2407.18242",
        family="adapters",
        defaults={"learning_rate": 1e-3},
        lr_grid=(1e-3, 3e-3, 1e-2, 3e-2),
        static_args=("scaling", "variant", "pairs"),
        description="LoRA-Pro: full-size Adam on the equivalent gradient of each LoRA pair",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="sora",
        factory=sora,
        paper="2311.11696",
        family="adapters",
        defaults={"learning_rate": 1e-3, "threshold": 1e-3},
        lr_grid=(1e-3, 3e-3, 1e-2, 3e-2),
        static_args=("threshold_mode", "bias_correction"),
        description="SoRA: HF AdamW + proximal threshold on the adapter gates (official 2xi zone)",
    )
)
