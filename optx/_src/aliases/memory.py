"""Memory-efficient optimizers: 8-bit states, GaLore, APOLLO, FRUGAL, DCT-AdamW.

Every alias here keeps less optimizer state than AdamW's 8 bytes per
parameter; ``optx.tree_utils.state_bytes`` / ``optx.tree_utils.state_bytes_by_group`` report exactly
what each one allocates (``benchmarks/memory_table.py`` prints the table).

* 8-bit block-wise states (:func:`adamw_8bit`, :func:`lion_8bit`,
  :func:`sgd_momentum_8bit`) wrap the 32-bit transform in
  :func:`optx.quantization.quantize_moments`; they are element-wise (no routing).
* Low-rank methods (:func:`galore`, :func:`galore_8bit`, :func:`apollo`,
  :func:`apollo_mini`, :func:`frugal`, :func:`dct_adamw`) are
  :func:`optx.routed` pairs: hidden matrices get the projected chain, the
  rest (embeddings, heads, norms, biases) the method's own AdamW, as the
  official code does for its "regular" parameter group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from optx._src import base, hyperparams, moments, normalization, quantization, registry, routing
from optx._src import projection as proj_lib
from optx._src.aliases.elementwise import torch_adamw
from optx._src.weight_decay import _is_literal_zero, add_decayed_weights_after_step

_COMMON_8BIT_STATIC = ("block_size", "min_size", "full_precision")
_8BIT_KERNEL_STATIC = (*_COMMON_8BIT_STATIC, "kernel")
_PROJECTION_STATIC = ("rank", "update_proj_gap", "projection", "side", "seed")


def _or(value: Any, default: Any) -> Any:
    """``default`` when ``value`` is None (structural defaults resolved inside)."""
    return default if value is None else value


def _quantized(
    inner: optax.GradientTransformation,
    block_size: int | None,
    min_size: int | None,
    full_precision: str | Callable[[str], bool] | None,
    kernel: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``quantize_moments(inner)`` with the bitsandbytes defaults for None."""
    return quantization.quantize_moments(
        inner,
        block_size=_or(block_size, quantization.REFERENCE_BLOCK_SIZE),
        min_size=_or(min_size, quantization.REFERENCE_MIN_SIZE),
        full_precision=full_precision,
        kernel=_or(kernel, "xla"),
    )


# ----------------------------------------------------------------------------
# 8-bit block-wise states (Dettmers et al., arXiv 2110.02861)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def adamw_8bit(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 1e-4,
    mask: base.Mask | None = None,
    *,
    nesterov: bool = False,
    block_size: int | None = None,
    min_size: int | None = None,
    full_precision: str | Callable[[str], bool] | None = None,
    nu_dtype: base.DTypeLike | None = None,
    kernel: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdamW with block-wise 8-bit moments (bitsandbytes ``AdamW8bit``).

    Per step (arXiv 2110.02861, Alg. 1 with Adam; bitsandbytes 0.50.2):

    .. math::

      m, v = \\mathrm{deq}(q^m_{t-1}), \\mathrm{deq}(q^v_{t-1}); \\quad
      m ← β_1 m + (1-β_1) g, \\quad v ← β_2 v + (1-β_2) g^2

      u = -η\\Big(\\frac{m/(1-β_1^t)}{\\sqrt{v/(1-β_2^t)} + ε} + λ W\\Big), \\quad
      q^m_t, q^v_t = \\mathrm{quant}_{\\text{signed}}(m), \\mathrm{quant}_{\\text{unsigned}}(v)

    with the dynamic tree map, blocks of ``block_size`` entries and one float32
    absmax per block: ≈ 2.03 bytes per parameter instead of 8. Leaves with
    fewer than ``min_size`` entries keep full-precision moments.

    Official-code quirks: the decay is decoupled and applied to the pre-step
    weights (the shared bitsandbytes "adam" kernel, for ``Adam8bit`` too — use
    ``weight_decay=0`` for ``Adam8bit``); ε sits outside the corrected
    ``√v̂`` (optax's placement); block size 256 and ``min_8bit_size`` 4096 as in
    bitsandbytes 0.50.2 (the paper used 2048); bitsandbytes' CPU quantizer is
    not exact nearest rounding, optx's is (see :mod:`optx._src.quantization`);
    ``StableEmbedding``'s 32-bit optimizer state is ``full_precision=r'embed'``.
    Signature, positional order and defaults are :func:`optx.adamw`'s (so it
    is a drop-in for ``optax.adamw``): weight decay 1e-4, where bitsandbytes'
    ``AdamW8bit`` defaults to 1e-2 (pass ``weight_decay=1e-2`` for its numbers).

    Args:
      learning_rate: scalar or schedule.
      b1, b2, eps, eps_root: Adam hyper-parameters.
      mu_dtype: dtype of the full-precision (small) first moments.
      weight_decay: decoupled λ (optax's 1e-4; bitsandbytes ``AdamW8bit`` 1e-2).
      mask: weight-decay mask.
      nesterov: optax's Nesterov Adam (``optax.adamw(..., nesterov=True)``;
        not in bitsandbytes).
      block_size: entries per absmax block (static; None = 256, bitsandbytes).
      min_size: smaller leaves keep full-precision moments (static; None =
        4096, bitsandbytes).
      full_precision: regex (or predicate) on the state path of leaves to keep
        in full precision, see :func:`optx.quantization.quantize_moments`.
      nu_dtype: dtype of the full-precision (small) second moments.
      kernel: ``'xla'`` (None, the portable default) or ``'pallas'``: one fused
        kernel per quantized leaf (Triton on CUDA; same codes and block
        scales), see :func:`optx.quantization.quantize_moments`.

    Complex parameters: supported (phase-equivariant); complex moments are kept in full
      precision (only real floating moments are quantized).

    References:
      Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via Block-wise
      Quantization", ICLR 2022, arXiv 2110.02861; Loshchilov & Hutter,
      arXiv 1711.05101.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> params = {'w': jnp.zeros((128, 64))}
      >>> tx = optx.adamw_8bit(1e-3)
      >>> optx.tree_utils.state_bytes(tx, params) / 8192   # codes + scales + count
      2.0317...
    """
    return optax.chain(
        _quantized(
            moments.scale_by_adam(
                b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov
            ),
            block_size,
            min_size,
            full_precision,
            kernel,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


@hyperparams.validated(b1=hyperparams.UNIT_CLOSED)
def lion_8bit(
    learning_rate: base.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    block_size: int | None = None,
    min_size: int | None = None,
    full_precision: str | Callable[[str], bool] | None = None,
    kernel: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Lion with a block-wise 8-bit momentum (bitsandbytes ``Lion8bit``).

    .. math::

      m = \\mathrm{deq}(q_{t-1}), \\quad
      u = -η\\big(\\mathrm{sign}(β_1 m + (1-β_1) g) + λ W\\big), \\quad
      q_t = \\mathrm{quant}_{\\text{signed}}(β_2 m + (1-β_2) g)

    ``optax.scale_by_lion`` wrapped in :func:`optx.quantization.quantize_moments` (1.03
    bytes per parameter instead of 4). bitsandbytes defaults: lr 1e-4,
    β = (0.9, 0.99), no decay; decay on the pre-step weights.

    Signature and positional order are :func:`optx.lion`'s (``optax.lion``'s).

    Args:
      learning_rate: scalar or schedule.
      b1, b2: Lion's interpolation and momentum coefficients.
      mu_dtype: dtype of full-precision (small) momenta.
      weight_decay: decoupled λ.
      mask: weight-decay mask.
      block_size, min_size, full_precision, kernel: see :func:`adamw_8bit`.

    Complex parameters: supported (phase-equivariant); complex moments are kept in full
      precision (only real floating moments are quantized).

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms",
      arXiv 2302.06675; Dettmers et al., arXiv 2110.02861.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.lion_8bit(1e-4)
      >>> state = tx.init({'w': jnp.zeros((128, 64))})
    """
    return optax.chain(
        _quantized(
            moments.with_moment_dtype(optax.scale_by_lion(b1, b2), "mu", mu_dtype),
            block_size,
            min_size,
            full_precision,
            kernel,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


@hyperparams.validated()
def sgd_momentum_8bit(
    learning_rate: base.ScalarOrSchedule = 1e-2,
    momentum: float = 0.9,
    nesterov: bool = False,
    mu_dtype: base.DTypeLike | None = None,
    *,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    block_size: int | None = None,
    min_size: int | None = None,
    full_precision: str | Callable[[str], bool] | None = None,
    kernel: str | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with a block-wise 8-bit momentum buffer (bitsandbytes ``SGD8bit``).

    .. math::

      \\tilde g = g + λ W, \\quad b = \\mathrm{deq}(q_{t-1}), \\quad
      b ← μ b + \\tilde g, \\quad u = -η\\,(\\tilde g + μ b \\text{ if nesterov else } b)

    PyTorch ``SGD`` semantics (coupled L2 decay added to the gradient, the
    first buffer equals the gradient since it starts at zero), the buffer
    quantized with the signed dynamic map: ``optax.trace`` wrapped in
    :func:`optx.quantization.quantize_moments`. bitsandbytes' ``SGD8bit``
    (0.50.2) accepts ``nesterov`` and ``dampening`` but its momentum update
    reads neither: it is ``nesterov=False`` here (teacher-forced, float32
    rounding); ``nesterov=True`` is PyTorch's Nesterov step, which SGD8bit
    does not compute.

    Positional order of ``optax.sgd`` (``lr, momentum, nesterov, mu_dtype`` —
    optax's ``accumulator_dtype``).

    Args:
      learning_rate: scalar or schedule.
      momentum: μ.
      nesterov: Nesterov momentum.
      mu_dtype: dtype of full-precision (small) buffers.
      weight_decay: coupled L2 coefficient λ (added to the gradient).
      mask: weight-decay mask.
      block_size, min_size, full_precision, kernel: see :func:`adamw_8bit`.

    Complex parameters: supported (phase-equivariant); complex moments are kept in full
      precision (only real floating moments are quantized).

    References:
      Dettmers et al., "8-bit Optimizers via Block-wise Quantization",
      arXiv 2110.02861 (8-bit Momentum, §3).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.sgd_momentum_8bit(0.1, momentum=0.9)
      >>> state = tx.init({'w': jnp.zeros((128, 64))})
    """
    # A literal 0 adds nothing: no decay transform, so ``update(grads, state)``
    # works without params, as it does for ``optax.sgd``.
    decay = (
        optax.identity()
        if _is_literal_zero(weight_decay)
        else optax.add_decayed_weights(weight_decay, mask)
    )
    return optax.chain(
        decay,
        _quantized(
            moments.with_moment_dtype(optax.trace(momentum, nesterov=nesterov), "trace", mu_dtype),
            block_size,
            min_size,
            full_precision,
            kernel,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# The official-code AdamW of GaLore/APOLLO (their "regular" parameter group)
# ----------------------------------------------------------------------------


def _official_adam(
    b1: Any, b2: Any, eps: Any, bias_correction: bool, mu_dtype: Any, nu_dtype: Any
) -> optax.GradientTransformationExtraArgs:
    """Adam with ε on the uncorrected ``√v`` and the correction in the step size."""
    return moments.scale_by_adam(
        b1,
        b2,
        eps,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        eps_placement="uncorrected",
        bias_correction=bias_correction,
    )


def official_adamw(
    learning_rate: base.ScalarOrSchedule,
    b1: Any,
    b2: Any,
    eps: Any,
    weight_decay: base.ScalarOrSchedule,
    *,
    mask: base.Mask | None = None,
    bias_correction: bool = True,
    mu_dtype: Any = None,
    nu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """The Hugging Face ``AdamW`` that GaLore's and APOLLO's code subclass.

    ``u = −η(√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + ε) + λ(W − η·…))``: ε on the uncorrected
    ``√v``, the correction folded into the step size, decay of the post-step
    weights. Built from :func:`optx.scale_by_adam` (``eps_placement='uncorrected'``)
    and :func:`optx.add_decayed_weights_after_step`; used for the leaves these
    methods do not project.
    """
    return optax.chain(
        _official_adam(b1, b2, eps, bias_correction, mu_dtype, nu_dtype),
        add_decayed_weights_after_step(weight_decay, learning_rate, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# GaLore (Zhao et al., arXiv 2403.03507)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def galore(
    learning_rate: base.ScalarOrSchedule = 1e-2,
    rank: int | None = None,
    update_proj_gap: int | None = None,
    scale: float = 0.25,
    base_optimizer: optax.GradientTransformation | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    projection: str | Callable[..., Any] = "svd",
    side: str = "std",
    bias_correction: bool = True,
    reset_on_refresh: bool = False,
    seed: int | None = None,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """GaLore: Adam on a low-rank SVD projection of each gradient matrix.

    Official ``GaLoreAdamW`` semantics (galore-torch 1.0, repo commit
    2cc66f8). Per hidden matrix ``G`` (arXiv 2403.03507, Alg. 2):

    .. math::

      P_t = \\mathrm{top}_r\\text{-singular vectors}(G_t) \\text{ if } t \\bmod T = 0, \\quad
      R_t = \\mathrm{down}_{P_t}(G_t)

      M_t = β_1 M_{t-1} + (1-β_1) R_t, \\quad V_t = β_2 V_{t-1} + (1-β_2) R_t^2, \\quad
      N_t = \\frac{\\sqrt{1-β_2^t}}{1-β_1^t}\\,\\frac{M_t}{\\sqrt{V_t} + ε}

      W ← W - η\\, α\\, \\mathrm{up}_{P_t}(N_t), \\qquad W ← W - η λ W

    Official-code quirks (all reproduced): the ``'std'`` side projects the
    **smaller** dimension (``r × max(m,n)`` moments; optax.contrib.galore
    projects the larger, official ``'reverse_std'``, available as
    ``side='reverse_std'``); the SVD runs on the current gradient at
    steps ``0, T, 2T, …`` (in float32 for float32 and narrower parameters;
    **deviation:** in float64 for float64 ones, where the official code casts
    to float32 first); ε = 1e-6 is added to the *uncorrected* ``√V`` with the
    bias correction in the step size; α (``scale``) is linear; the moments are
    neither reset nor rotated when the subspace changes (``reset_on_refresh``
    offers the reset); decoupled decay is applied to the *post-step* weights
    with the base lr; the non-projected parameters get the same AdamW without
    projection. SVD sign conventions differ between LAPACK builds; after a
    refresh with stale moments the trajectory depends on them (as in the
    official code). **Deviation:** a matrix whose smaller side is at most
    ``rank`` goes to the fallback AdamW (:meth:`optx.Router.with_rank_limit`),
    where the official code runs GaLore on it with a full-rank projection (a
    rotation: full-size moments in a rotated basis, no memory saved).

    ``base_optimizer`` replaces the subspace Adam by any gradient-only
    transform (Adafactor, Lion, SGD, an 8-bit Adam, ...); it then also defines
    the bias correction and ε placement.

    Positional order of ``optax.contrib.galore`` (``lr, rank,
    update_proj_gap, scale, base_optimizer, weight_decay, mask``); the Adam
    hyper-parameters are keyword-only.

    Args:
      learning_rate: scalar or schedule (paper/README 0.01; class 1e-3).
      rank: subspace rank (static; None = 128; 128 for 60M, 256 for 130M–350M,
        512–1024 for 1B+).
      update_proj_gap: SVD period ``T`` (static; None = 200; 500 for 7B).
      scale: α (paper 0.25).
      base_optimizer: the transform run in the subspace (default: the official Adam).
      weight_decay: decoupled λ (post-step).
      mask: optional weight-decay mask (tree or callable), as in optax.
      b1, b2, eps: Adam hyper-parameters (official ε 1e-6).
      projection: ``'svd'`` (official) or another kind of
        :func:`optx.scale_by_subspace`.
      side: ``'std'`` (official), ``'reverse_std'``, ``'in'``, ``'out'``. The
        official ``proj_type='left'`` (PyTorch ``(out, in)`` weights) is
        ``side='out'`` on Flax ``(in, out)`` kernels, ``'right'`` is ``'in'``.
      bias_correction: fold Adam's bias correction into the step (the official
        ``correct_bias``, True).
      reset_on_refresh: reset the subspace optimizer's state at each refresh.
      seed: PRNG seed for random projection kinds (static; None = 0).
      mu_dtype, nu_dtype: moment dtypes (subspace and fallback).
      router: an :class:`optx.Router` (default :func:`optx.default_router`).

    Complex parameters: supported (phase-equivariant): the SVD projector is applied with
      conjugate transposes (``Pᴴ G`` / ``G P̄``), so ``P Pᴴ G`` is the orthogonal projection.

    References:
      Zhao, Zhang, Chen, Wang, Anandkumar, Tian, "GaLore: Memory-Efficient LLM
      Training by Gradient Low-Rank Projection", ICML 2024, arXiv 2403.03507
      (code: github.com/jiaweizzhao/GaLore).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'mlp': {'kernel': jnp.ones((64, 32))}, 'bias': jnp.zeros(32)}
      >>> tx = optx.galore(learning_rate=0.01, rank=8)
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    router = routing.as_router(router).with_rank_limit(_or(rank, 128))
    inner = base_optimizer
    if inner is None:
        inner = _official_adam(b1, b2, eps, bias_correction, mu_dtype, nu_dtype)
    matrix = optax.chain(
        proj_lib.scale_by_subspace(
            inner,
            rank=_or(rank, 128),
            projection=projection_kind(projection),
            side=side,
            update_proj_gap=_or(update_proj_gap, 200),
            scale=scale,
            reset_on_refresh=reset_on_refresh,
            seed=_or(seed, 0),
            layout=router,
        ),
        add_decayed_weights_after_step(weight_decay, learning_rate, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = official_adamw(
        learning_rate,
        b1,
        b2,
        eps,
        weight_decay,
        mask=mask,
        bias_correction=bias_correction,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


def projection_kind(kind: Any) -> Any:
    """Validates a projection kind (a name of ``optx.projection.PROJECTIONS`` or a callable)."""
    if not callable(kind):
        base.check_choice("projection", kind, proj_lib.PROJECTIONS)
    return kind


@hyperparams.validated()
def galore_8bit(
    learning_rate: base.ScalarOrSchedule = 1e-2,
    rank: int | None = None,
    update_proj_gap: int | None = None,
    scale: float = 0.25,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    projection: str | Callable[..., Any] = "svd",
    side: str = "std",
    block_size: int | None = None,
    min_size: int | None = None,
    full_precision: str | Callable[[str], bool] | None = None,
    seed: int | None = None,
    router: routing.Router | None = None,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """8-bit GaLore: GaLore with bitsandbytes' block-wise 8-bit Adam in the subspace.

    Official ``GaLoreAdamW8bit`` (repo commit 2cc66f8): the projected gradient
    ``R`` goes through bitsandbytes' 8-bit Adam (its ε = 1e-8 *outside* the
    corrected ``√v̂``, standard bias correction, moments quantized with the
    signed/unsigned dynamic maps, block size 256, 32-bit state for low-rank
    tensors with fewer than ``min_size`` = 4096 entries), the result is
    projected back and scaled by α, then the decay is applied to the
    post-step weights. Non-projected parameters get the 8-bit AdamW itself
    (decay before the step, the bitsandbytes kernel). Built as
    ``scale_by_subspace(quantize_moments(scale_by_adam()))`` — any moment of
    any subspace optimizer can be 8-bit this way.

    Quirk not reproduced: ``GaLoreAdamW8bit`` passes ``percentile_clipping`` and
    ``block_wise`` positionally to ``Optimizer2State``; with bitsandbytes ≥ 0.45
    those slots are ``max_unorm``/``skip_zeros`` (so current installs silently
    run with ``max_unorm=100``). optx implements the intended method.

    Signature, positional order and defaults are :func:`galore`'s (weight
    decay 0, where ``GaLoreAdamW8bit``'s signature has 1e-2), except ε = 1e-8,
    the value of bitsandbytes' Adam, whose ε sits outside the corrected ``√v̂``.

    Args:
      learning_rate: scalar or schedule (7B single-GPU recipe: 0.005).
      rank, update_proj_gap, scale: see :func:`galore`.
      weight_decay: λ (0; ``GaLoreAdamW8bit``'s signature default 1e-2).
      mask: optional weight-decay mask (tree or callable), as in optax.
      b1, b2, eps: Adam hyper-parameters (bitsandbytes ε 1e-8).
      projection, side, seed: see :func:`galore`.
      block_size, min_size, full_precision: see :func:`adamw_8bit`.
      router: an :class:`optx.Router`.
      mu_dtype, nu_dtype: dtypes of the full-precision (small) moments.

    Complex parameters: supported (phase-equivariant): the SVD projector is applied with
      conjugate transposes (``Pᴴ G`` / ``G P̄``); complex moments are kept in full precision
      (only real floating moments are quantized).

    References:
      Zhao et al., arXiv 2403.03507 (§4.2, 8-bit GaLore); Dettmers et al.,
      "8-bit Optimizers via Block-wise Quantization", arXiv 2110.02861.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> params = {'mlp': {'kernel': jnp.ones((256, 128))}}
      >>> tx = optx.galore_8bit(learning_rate=0.01, rank=32)
      >>> state = tx.init(params)
    """
    router = routing.as_router(router).with_rank_limit(_or(rank, 128))

    def adam8() -> optax.GradientTransformationExtraArgs:
        return _quantized(
            moments.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype),
            block_size,
            min_size,
            full_precision,
        )

    matrix = optax.chain(
        proj_lib.scale_by_subspace(
            adam8(),
            rank=_or(rank, 128),
            projection=projection_kind(projection),
            side=side,
            update_proj_gap=_or(update_proj_gap, 200),
            scale=scale,
            seed=_or(seed, 0),
            layout=router,
        ),
        add_decayed_weights_after_step(weight_decay, learning_rate, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = optax.chain(
        adam8(),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


# ----------------------------------------------------------------------------
# APOLLO and APOLLO-Mini (Zhu et al., arXiv 2412.05270)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def apollo(
    learning_rate: base.ScalarOrSchedule = 1e-2,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    rank: int | None = None,
    scale: float = 1.0,
    scale_type: str = "channel",
    projection: str | Callable[..., Any] = "random",
    side: str = "std",
    update_proj_gap: int | None = None,
    scale_front: bool = False,
    norm_growth_limit: float | None = 1.01,
    bias_correction: bool = True,
    seed: int | None = None,
    store_projector: bool = True,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """APOLLO: SGD-like memory, AdamW-level performance (arXiv 2412.05270).

    Official ``apollo_torch.APOLLOAdamW`` semantics (apollo-torch 1.0.3,
    byte-identical to repo commit 76b3472). Per hidden matrix ``G``
    (Alg. 1; :func:`optx.scale_by_apollo` for the scaling factor ``s``):

    .. math::

      \\tilde G_t = G_t ⊙ s_t(P_t G_t), \\qquad
      \\tilde G_t ← \\tilde G_t / \\ell_t \\ \\text{(norm-growth limiter, γ = 1.01)}, \\qquad
      \\tilde G_t ← \\sqrt{α}\\, \\tilde G_t

      W ← W - η \\frac{\\sqrt{1-β_2^t}}{1-β_1^t} \\tilde G_t, \\qquad W ← W - ηλW

    Chain: ``scale_by_apollo | scale_by_norm_growth_limiter | scale(√α) |
    scale_by_bias_correction | add_decayed_weights_after_step |
    scale_by_learning_rate`` on the matrix leaves; the official package's AdamW
    (ε on the uncorrected ``√v``, bias correction in the step size, decay after
    the step) on the rest.

    Official-code quirks (reproduced): the scale α enters as **√α**
    (``scale=128`` for APOLLO-Mini multiplies by 11.3); with ``scale_front``
    √α is applied before the limiter (which then sees the scaled norm); the
    limiter never limits the first step and stores the limited norm; the
    channel factors are computed for the larger (unprojected) dimension and
    scale the raw gradient; the projection is redrawn at steps ``0, T, 2T, …``
    without resetting the moments; decay after the step with the base lr.
    With ``projection='svd'`` the singular vectors' signs are the solver's
    (they differ between LAPACK builds) and the moments carry over a refresh,
    so after the first refresh the trajectory depends on them, in the
    official code as here; the official SVD runs in float32 for float64
    parameters (its projector casts the gradient), optx's in the parameter dtype (float64:
    up to 1e-4 apart before the first refresh, 1e-14 with the official SVD in
    float64). Not reproduced: the torch ``Generator`` seed chain
    (JAX keys instead, so the random bits differ) — tests inject the
    reference's draws; and a matrix whose smaller side is at most ``rank``
    goes to the fallback AdamW (:meth:`optx.Router.with_rank_limit`: its
    projection would not be low-rank), where the official code projects it
    anyway with an over-rank Gaussian projection (not norm-preserving).

    Args:
      learning_rate: scalar or schedule (scripts: 0.01 with cosine; class 1e-3).
      b1, b2, eps: Adam hyper-parameters of the projected moments (ε 1e-6).
      mu_dtype: first-moment dtype.
      weight_decay: λ (post-step, base lr).
      mask: optional weight-decay mask (tree or callable), as in optax.
      rank: projection rank (static; None = 256; README: ¼ d_model, 256 for 1B/7B).
      scale: α (enters as √α).
      scale_type: ``'channel'`` or ``'tensor'``. With ``'channel'`` and a side other
        than ``'std'`` the channels are those of the unprojected dimension (the
        official code fails there with a shape error).
      projection: ``'random'`` (official), ``'svd'`` (official option), or any
        kind/callable of :func:`optx.scale_by_subspace`.
      side: ``'std'`` (official).
      update_proj_gap: ``T`` (static; None = 200).
      scale_front: apply √α before the limiter (official flag).
      norm_growth_limit: γ of the limiter, or None to disable it (``disable_nl``).
      bias_correction: fold Adam's bias correction into the step (the
        official ``correct_bias``, True).
      seed: PRNG seed of the random projections (static; None = 0).
      store_projector: keep the projection in the state (official). ``False``
        keeps only its PRNG key and regenerates the draw every step (same
        numbers; saves ``rank · min(m, n)`` floats per matrix, a third of
        APOLLO's matrix state at rank ¼·d).
      nu_dtype: second-moment dtype.
      router: an :class:`optx.Router`.

    Complex parameters: supported (phase-equivariant): the random projection is real, the
      channel/tensor scaling factors use ``|·|²`` norms.

    References:
      Zhu, Zhang, Cong, Liu, Park, Chandra, Long, Pan, Wang, Lee, "APOLLO:
      SGD-like Memory, AdamW-level Performance", MLSys 2025, arXiv 2412.05270
      (code: github.com/zhuhanqing/APOLLO); the limiter: Chen et al., "Fira",
      arXiv 2410.01623.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'mlp': {'kernel': jnp.ones((64, 32))}, 'bias': jnp.zeros(32)}
      >>> tx = optx.apollo(learning_rate=0.01, rank=8)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    router = routing.as_router(router).with_rank_limit(_or(rank, 256))
    sqrt_scale = optax.scale(scale**0.5)
    parts: list[optax.GradientTransformation] = [
        proj_lib.scale_by_apollo(
            b1,
            b2,
            eps,
            rank=_or(rank, 256),
            scale_type=scale_type,
            projection=projection_kind(projection),
            side=side,
            update_proj_gap=_or(update_proj_gap, 200),
            seed=_or(seed, 0),
            store_projector=store_projector,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            layout=router,
        )
    ]
    if scale_front:
        parts.append(sqrt_scale)
    if norm_growth_limit is not None:
        parts.append(normalization.scale_by_norm_growth_limiter(norm_growth_limit, layout=router))
    if not scale_front:
        parts.append(sqrt_scale)
    if bias_correction:
        parts.append(moments.scale_by_bias_correction(b1, b2))
    parts += [
        add_decayed_weights_after_step(weight_decay, learning_rate, mask),
        optax.scale_by_learning_rate(learning_rate),
    ]
    fallback = official_adamw(
        learning_rate,
        b1,
        b2,
        eps,
        weight_decay,
        mask=mask,
        bias_correction=bias_correction,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    return routing.routed({routing.MATRIX: optax.chain(*parts), routing.FALLBACK: fallback}, router)


@hyperparams.validated()
def apollo_mini(
    learning_rate: base.ScalarOrSchedule = 1e-2,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    rank: int | None = None,
    scale: float = 128.0,
    projection: str | Callable[..., Any] = "random",
    side: str = "std",
    update_proj_gap: int | None = None,
    scale_front: bool = False,
    norm_growth_limit: float | None = 1.01,
    bias_correction: bool = True,
    seed: int | None = None,
    store_projector: bool = True,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """APOLLO-Mini: rank-1 projection, one tensor-wise scaling factor per matrix.

    :func:`apollo` with ``rank=1``, ``scale_type='tensor'`` and ``scale=128``
    (the README setting; the effective multiplier is √128 ≈ 11.3; larger
    models use larger α, e.g. 192 with ``scale_front`` for 130M in the
    scripts). Per matrix the state is the rank-1 moments ``2·max(m, n)`` numbers,
    the ``min(m, n)``-vector projection and one limiter norm — SGD-level
    memory (arXiv 2412.05270, §4.3):

    .. math::

      s_t = \\frac{\\|M_t / (\\sqrt{V_t} + ε)\\|}{\\|R_t\\| + 10^{-8}}, \\qquad
      W ← W - η \\frac{\\sqrt{1-β_2^t}}{1-β_1^t}\\, \\sqrt{α}\\, \\mathrm{limit}(s_t G_t)

    All official quirks of :func:`apollo` apply.

    Args:
      learning_rate, b1, b2, eps, mu_dtype, weight_decay, mask, scale,
        projection, side, update_proj_gap, scale_front, norm_growth_limit,
        bias_correction, seed, store_projector, nu_dtype, router: see
        :func:`apollo`.
      rank: projection rank (static; None = 1).

    Complex parameters: supported (phase-equivariant): the random projection is real, the tensor
      scaling factor uses ``|·|²`` norms.

    References:
      Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance",
      MLSys 2025, arXiv 2412.05270.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> params = {'mlp': {'kernel': jnp.ones((64, 32))}}
      >>> tx = optx.apollo_mini(learning_rate=0.01)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    return apollo(
        learning_rate,
        b1,
        b2,
        eps,
        mu_dtype,
        weight_decay,
        mask,
        rank=_or(rank, 1),
        scale=scale,
        scale_type="tensor",
        projection=projection,
        side=side,
        update_proj_gap=update_proj_gap,
        scale_front=scale_front,
        norm_growth_limit=norm_growth_limit,
        bias_correction=bias_correction,
        seed=seed,
        store_projector=store_projector,
        nu_dtype=nu_dtype,
        router=router,
    )


# ----------------------------------------------------------------------------
# FRUGAL (Zmushko et al., arXiv 2411.07837)
# ----------------------------------------------------------------------------

FRUGAL_PROJECTIONS = ("block", "svd", "orthogonal", "random", "coordinate")


@hyperparams.validated(
    projection=hyperparams.choice(*FRUGAL_PROJECTIONS),
    side=hyperparams.choice(*proj_lib.SIDES, optional=True),
)
def frugal(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    density: float | None = None,
    update_proj_gap: int | None = None,
    projection: str = "block",
    order: str = "descending",
    side: str | None = None,
    reset_statistics: bool = True,
    inactive_update_rule: str | None = "sign",
    inactive_lr_scale: float = 1.0,
    proj_lr_scale: float = 1.0,
    base_optimizer: optax.GradientTransformation | None = None,
    seed: int | None = None,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """FRUGAL: a stateful optimizer on a subspace, state-free signSGD on the rest.

    Per hidden matrix ``G`` (arXiv 2411.07837, Alg. 1), with a subspace
    re-chosen every ``T`` steps (and, by default, the stateful optimizer's
    state — counters included — reset at each re-choice):

    .. math::

      U = s_p\\big(\\mathrm{up}(\\mathrm{Adam}(\\mathrm{down}(G)))
          + s_i\\, \\mathrm{sign}(G - \\mathrm{up}(\\mathrm{down}(G)))\\big), \\qquad
      W ← W - η λ W - η U

    Subspaces (``projection``):

    * ``'block'`` (the official pre-training runs, ``--optimizer frugal``): a
      ``density`` fraction of whole matrices is active (Adam), the others get
      ``sign(G)``; see :func:`optx.scale_by_block_subspace` for the
      per-shape-group selection optx uses for static shapes;
    * ``'svd'`` (``GaloreOptimizer``'s class default), ``'orthogonal'`` (its
      ``'random'``: ``orthogonal_`` init), ``'coordinate'`` (``'randperm'``
      / ``CoordOptimizer``'s columns), ``'random'`` (Gaussian): rank
      ``round(density · d)`` of the projected side (``side='std'``); the
      official ``CoordOptimizer`` (``coord_choice='columns'``) instead keeps
      ``floor(density · d_in)`` *input features* (``randperm(d)[:int(d·ρ)]``
      over the columns of the PyTorch ``(out, in)`` weight), reproduced for
      ``'coordinate'`` (``side='in'``, floor; zero when ``ρ·d_in < 1``).

    Official-code quirks (reproduced): Adam with ε outside the corrected
    ``√v̂``; the decay ``W ← W(1 − ηλ)`` is applied *before* the step to every
    parameter, active or not (optax order); all matrices switch subspace at
    the same step (``step % T == 0``, including step 0); ``sign(0) = 0``;
    the regular parameters get plain AdamW (never reset). Block orders
    ``'random'``, ``'ascending'``, ``'descending'`` — the official pre-training
    scripts use ``'descending'``, the default here; the official
    ``BlockOptimizer`` resets the state of newly chosen blocks whatever
    ``reset_statistics`` says (optx's default ``True`` does the same;
    ``False`` carries the slots over, an optx option; with ``'svd'`` the
    carried state then depends on the singular vectors' signs, which differ
    between LAPACK builds, as in the official ``GaloreAdamW`` without a
    reset); the
    code read is the fork ``hungquangbui02022003/FRUGAL`` (the upstream
    ``philip-zmushko/FRUGAL`` was not available). **Deviation:** the SVD of
    ``'svd'`` runs in float64 for float64 parameters; the official projector
    casts the gradient to float32 first.

    Args:
      learning_rate: scalar or schedule (scripts 1e-3, cosine, warmup).
      b1, b2, eps: Adam hyper-parameters of the stateful part.
      mu_dtype: first-moment dtype.
      weight_decay: λ, decoupled, pre-step (scripts 0; class 0.01).
      mask: optional weight-decay mask (tree or callable), as in optax.
      density: ρ, the stateful fraction (static; None = 0.25; 0 = signSGD only):
        round(ρ·N) blocks per shape group, at least 1 (with a warning) when ρ > 0.
      update_proj_gap: ``T`` (static; None = 200).
      projection: ``'block'``, ``'svd'``, ``'orthogonal'``, ``'random'``,
        ``'coordinate'``.
      order: block order (``projection='block'`` only; default
        ``'descending'``, the official scripts').
      side: projected side for the projection kinds (None: ``'in'`` for
        ``'coordinate'``, the official columns; ``'std'`` otherwise).
      reset_statistics: reset the stateful optimizer at every re-choice.
      inactive_update_rule: ``'sign'`` (signSGD), ``'sgd'`` or None.
      inactive_lr_scale: lr multiplier of the state-free part (pre-training
        1.0, fine-tuning 0.1).
      proj_lr_scale: lr multiplier of the whole projected-parameter update.
      base_optimizer: the stateful transform (default Adam, optax placement).
      seed: PRNG seed (static; None = 0).
      nu_dtype: second-moment dtype.
      router: an :class:`optx.Router`.

    Complex parameters: supported (phase-equivariant): block norms use ``|·|²`` and the state-
      free part's sign is the phase ``c/|c|``.

    References:
      Zmushko, Beznosikov, Takáč, Horváth, "FRUGAL: Memory-Efficient
      Optimization by Reducing State Overhead for Scalable Training",
      ICML 2025, arXiv 2411.07837.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> params = {'blocks': {'kernel': jnp.ones((4, 16, 16))}}
      >>> tx = optx.frugal(learning_rate=1e-3, density=0.25)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    router = routing.as_router(router)
    density = _or(density, 0.25)
    coordinate = projection == "coordinate"
    side = _or(side, "in" if coordinate else "std")
    update_proj_gap = _or(update_proj_gap, 200)
    seed = _or(seed, 0)
    inner = base_optimizer
    if inner is None:  # the official code's torch Adam: the exact 1 − βᵗ
        inner = moments.scale_by_adam(
            b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, exact_bias_correction=True
        )
    if projection == "block":
        subspace = proj_lib.scale_by_block_subspace(
            inner,
            density=density,
            update_proj_gap=update_proj_gap,
            order=order,
            residual=inactive_update_rule,
            residual_scale=inactive_lr_scale,
            reset_on_refresh=reset_statistics,
            seed=seed,
            layout=router,
        )
    else:
        subspace = proj_lib.scale_by_subspace(
            inner,
            rank=None,
            density=density,
            projection=projection,
            side=side,
            update_proj_gap=update_proj_gap,
            residual=inactive_update_rule,
            residual_scale=inactive_lr_scale,
            reset_on_refresh=reset_statistics,
            seed=seed,
            density_rounding="floor" if coordinate else "round",
            layout=router,
        )
    matrix = optax.chain(
        subspace,
        optax.scale(proj_lr_scale),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = torch_adamw(learning_rate, b1, b2, eps, weight_decay, mask, mu_dtype, nu_dtype)
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


# ----------------------------------------------------------------------------
# DCT-AdamW (Modoranu et al., arXiv 2505.17967)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def dct_adamw(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    rank: int | None = None,
    update_proj_gap: int | None = None,
    side: str = "std",
    score_norm: float | None = None,
    slot_order: str = "stable",
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """DCT-AdamW: SVD-free low-rank Adam on DCT columns chosen by alignment.

    Official ``DCTAdamW`` (ista-daslab-optimizers 1.1.15, ``proj='dct'``,
    ``sim_type='matmul'``). Per hidden matrix ``G`` with the orthonormal DCT
    basis ``Q`` of the smaller dimension (:func:`optx.projections.dct_basis`), at a refresh
    (arXiv 2505.17967, Alg. 1):

    .. math::

      S = Q^\\top G \\ (\\text{or } G Q), \\quad
      \\mathcal I = \\mathrm{top}_r\\big(\\|S_{j}\\|_1\\big), \\quad
      R_t = Q_{:,\\mathcal I}^\\top G_t

      M_t = β_1 M_{t-1} + (1-β_1) R_t, \\ V_t = β_2 V_{t-1} + (1-β_2) R_t^2, \\
      W ← W(1-ηλ) - η \\frac{\\sqrt{1-β_2^t}}{1-β_1^t}
          Q_{:,\\mathcal I} \\frac{M_t}{\\sqrt{V_t} + ε\\sqrt{1-β_2^t}}

    Only the ``r`` int32 indices are stored per matrix (no projector matrix);
    ``Q`` is a closed-form function of ``d`` evaluated inside the update
    (``d × d`` on refresh steps for the scores, ``d × r`` otherwise) instead of
    one cached ``d × d`` matrix — under ``jit`` a cached basis would be state or
    a baked-in constant.

    Official-code quirks: the refresh happens at the optimizer's 1-based
    steps ``1, T, 2T, …`` (default ``T = 1``: every step); the moments are
    neither reset nor rotated when the indices change (columns are silently
    re-associated with the new basis vectors by slot position; the official
    ``rotate_subspace`` option is not provided); ε·√(1−β₂ᵗ) in the denominator
    is the standard Adam placement; decay before the step; one ``Q`` shared by
    all matrices (so all low-rank matrices need the same smaller dimension —
    optx builds the basis per matrix).
    Not reproduced: the hard-coded right projection for (512|1024)×(3584|4096)
    shapes, ``max_shape`` (the router sends embeddings/heads to AdamW), error
    feedback (``use_ef``), the Hadamard/random-QR variants, the "theoretical
    similarity" of ``ell_norm < 0`` and ``sim_type='makhoul'`` (another basis).

    Deviations from the official code:
      Small matrices. A matrix whose smaller side is at most ``rank`` goes to
      the fallback AdamW (:meth:`optx.Router.with_rank_limit`); the official
      code runs DCT-AdamW on it with the full basis when the side equals
      ``rank`` (Adam in rotated coordinates) and fails when it is smaller.

      Slot order. The moments are kept by slot, so the order of the selected
      columns decides which moments each column inherits at a refresh. The
      official ``torch.topk(sorted=False)`` order is no rule: on CPU it is the
      permutation left by ``std::nth_element`` (introselect; ``partial_sort``,
      i.e. by score, when ``64·r ≤ d``), on CUDA another one. optx's default
      ``slot_order='stable'`` keeps a column in its slot (with its moments)
      while it stays selected and fills freed slots with the new columns, best
      score first; ``'score'`` orders slots by descending score. Golden
      ``tests/data/dct_adamw__slot_order`` (official code @4c98e6e, float64,
      refresh every 3 steps): with its topk replaced by the stable rule the
      official code matches optx to 1e-8 (its DCT basis is float32-accurate); the shipped order differs from it
      by 1.8e-2 relative after 10 steps. Effect on the loss (least squares
      24×16, rank 4, refresh every 3 steps, 300 steps; official / stable /
      score): 0.2517 / 0.2096 / 0.2535 at step 100, 0.0209 / 0.0173 / 0.0238
      at step 299.

      float64 basis. The official ``dct3_matrix`` evaluates its cosines in
      float32 (``.to(torch.float)``) and casts the basis to the parameter
      dtype, so a float64 run carries a float32-accurate basis; optx builds
      the basis in the parameter's dtype (:func:`optx.projections.dct_basis`),
      accurate to float64. Measured on float64 parameters: 5.8e-7 to 7e-6 of
      the weight change (the larger for ``d = 64``), 9e-15 with the official
      basis computed in float64.

    Args:
      learning_rate: scalar or schedule (required in the official class).
      b1, b2, eps: Adam hyper-parameters.
      mu_dtype: first-moment dtype.
      weight_decay: decoupled λ (pre-step).
      mask: optional weight-decay mask (tree or callable), as in optax.
      rank: number of DCT columns (static; None = 128).
      update_proj_gap: ``T`` (static; None = 1, the official default).
      side: ``'std'`` (official: basis over the smaller dimension).
      score_norm: ℓp of the alignment score (static; None = 1, official;
        ``math.inf`` is the official ``ell_norm=inf``).
      slot_order: ``'stable'`` (default) or ``'score'``; see the deviations.
      nu_dtype: second-moment dtype.
      router: an :class:`optx.Router`.

    Complex parameters: supported (phase-equivariant): the DCT basis is real, its alignment
      scores use ``|·|``.

    References:
      Modoranu, Safaryan, Schultheis, Ryabinin, Chumachenko, Alistarh,
      "SVD-Free Low-Rank Adaptive Gradient Optimization for Large Language
      Models" / "FFT-based Dynamic Subspace Selection for Low-Rank Adaptive
      Optimization of Large Language Models", arXiv 2505.17967.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> params = {'mlp': {'kernel': jnp.ones((64, 32))}}
      >>> tx = optx.dct_adamw(learning_rate=1e-3, rank=8)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    router = routing.as_router(router).with_rank_limit(_or(rank, 128))
    matrix = optax.chain(
        proj_lib.scale_by_subspace(
            moments.scale_by_adam(
                b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, exact_bias_correction=True
            ),
            rank=_or(rank, 128),
            projection="dct",
            side=side,
            update_proj_gap=_or(update_proj_gap, 1),
            refresh_phase=1,
            score_norm=_or(score_norm, 1.0),
            slot_order=slot_order,
            layout=router,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    fallback = torch_adamw(learning_rate, b1, b2, eps, weight_decay, mask, mu_dtype, nu_dtype)
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------

_8BIT_TEST = {"min_size": 0, "block_size": 8}
# Registry defaults are small-model settings: rank 64 = ¼·d_model for d_model 256 (the
# GaLore/APOLLO rank rules); 8-bit states with the bitsandbytes block size and threshold.

registry.register(
    registry.OptimizerSpec(
        name="adamw_8bit",
        factory=adamw_8bit,
        paper="2110.02861",
        family="memory",
        defaults={"learning_rate": 1e-3, "weight_decay": 1e-2},
        lr_grid=(3e-4, 1e-3, 3e-3, 1e-2),
        static_args=_8BIT_KERNEL_STATIC,
        test_overrides=_8BIT_TEST,
        description="AdamW with block-wise 8-bit moments (bitsandbytes AdamW8bit)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="lion_8bit",
        factory=lion_8bit,
        paper="2110.02861; 2302.06675",
        family="memory",
        defaults={"learning_rate": 1e-4},
        lr_grid=(3e-5, 1e-4, 3e-4, 1e-3),
        static_args=_8BIT_KERNEL_STATIC,
        test_overrides={**_8BIT_TEST, "learning_rate": 1e-2},
        description="Lion with a block-wise 8-bit momentum (bitsandbytes Lion8bit)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="sgd_momentum_8bit",
        factory=sgd_momentum_8bit,
        paper="2110.02861",
        family="memory",
        defaults={"learning_rate": 1e-2, "momentum": 0.9},
        lr_grid=(3e-3, 1e-2, 3e-2, 1e-1),
        static_args=_8BIT_KERNEL_STATIC,
        test_overrides=_8BIT_TEST,
        description="SGD with a block-wise 8-bit momentum (bitsandbytes SGD8bit)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="galore",
        factory=galore,
        paper="2403.03507",
        family="memory",
        defaults={"learning_rate": 1e-2, "rank": 64, "update_proj_gap": 200, "scale": 0.25},
        lr_grid=(3e-3, 1e-2, 3e-2, 1e-1),
        static_args=(*_PROJECTION_STATIC, "base_optimizer"),
        uses_matrix_path=True,
        test_overrides={"rank": 4, "update_proj_gap": 20},
        description="GaLore (official GaLoreAdamW: 'std' side, eps on uncorrected sqrt(v))",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="galore_8bit",
        factory=galore_8bit,
        paper="2403.03507; 2110.02861",
        family="memory",
        defaults={"learning_rate": 1e-2, "rank": 64, "update_proj_gap": 200, "scale": 0.25},
        lr_grid=(3e-3, 1e-2, 3e-2, 1e-1),
        static_args=(*_PROJECTION_STATIC, *_COMMON_8BIT_STATIC),
        uses_matrix_path=True,
        test_overrides={"rank": 4, "update_proj_gap": 20, **_8BIT_TEST},
        description="8-bit GaLore (bitsandbytes 8-bit Adam in the subspace)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="apollo",
        factory=apollo,
        paper="2412.05270",
        family="memory",
        defaults={"learning_rate": 1e-2, "rank": 64, "update_proj_gap": 200},
        lr_grid=(3e-3, 1e-2, 3e-2),
        static_args=(*_PROJECTION_STATIC, "scale_type"),
        uses_matrix_path=True,
        test_overrides={"rank": 4, "update_proj_gap": 20},
        description="APOLLO (channel-wise norm-ratio scaling, official apollo-torch)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="apollo_mini",
        factory=apollo_mini,
        paper="2412.05270",
        family="memory",
        defaults={"learning_rate": 1e-2, "update_proj_gap": 200},
        lr_grid=(3e-3, 1e-2, 3e-2, 1e-1),
        static_args=_PROJECTION_STATIC,
        uses_matrix_path=True,
        test_overrides={"update_proj_gap": 20},
        description="APOLLO-Mini (rank 1, tensor-wise scaling, sqrt(128) scale)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="frugal",
        factory=frugal,
        paper="2411.07837",
        family="memory",
        defaults={"learning_rate": 1e-3, "density": 0.25, "update_proj_gap": 200},
        lr_grid=(3e-4, 1e-3, 3e-3, 1e-2),
        static_args=(
            "density",
            "update_proj_gap",
            "projection",
            "order",
            "side",
            "seed",
            "inactive_update_rule",
            "base_optimizer",
        ),
        uses_matrix_path=True,
        test_overrides={"learning_rate": 1e-2, "update_proj_gap": 20},
        description="FRUGAL (block subspace Adam + signSGD, reset every T)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="dct_adamw",
        factory=dct_adamw,
        paper="2505.17967",
        family="memory",
        defaults={"learning_rate": 1e-3, "rank": 64, "update_proj_gap": 1},
        lr_grid=(3e-4, 1e-3, 3e-3, 1e-2),
        static_args=("rank", "update_proj_gap", "side", "score_norm"),
        uses_matrix_path=True,
        test_overrides={"learning_rate": 1e-2, "rank": 4},
        description="DCT-AdamW (SVD-free: DCT columns by alignment, indices only)",
    )
)
