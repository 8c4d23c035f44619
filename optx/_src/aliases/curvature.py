"""Curvature-family optimizers: Sophia-G/H, AdaHessian, M-FAC, MKOR and MKOR-H.

All of them take their curvature information through the one extra-argument
vocabulary of :mod:`optx._src.curvature` (``loss_fn``, ``sampled_loss_fn``,
``full_params``, ``key``, ``loss``, ``captures``). M-FAC needs none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from optx._src import (
    base,
    curvature,
    diagonal_preconditioning,
    fisher,
    hyperparams,
    kronecker,
    moments,
    nonfinite,
    registry,
    routing,
)
from optx._src.aliases.elementwise import torch_adamw

INNER_OPTIMIZERS = ("sgd", "adam", "adamw")
# MKOR's `inner`: one of the official optimizers by name, or a transform.
_MKOR_INNER = hyperparams.Constraint("transform", static=True, choices=INNER_OPTIMIZERS)


@hyperparams.validated()
def sophia_g(
    learning_rate: base.ScalarOrSchedule = 1e-4,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-15,
    weight_decay: base.ScalarOrSchedule = 0.1,
    mask: base.Mask | None = None,
    gamma: float = 0.04,
    update_interval: int | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    tokens_per_batch: float,
    refresh_at_start: bool = False,
    gnb_clip_norm: float | None = 1.0,
    axis_name: str | None = None,
    seed: int | None = None,
    nu_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Sophia-G: Sophia with the Gauss–Newton–Bartlett Hessian estimator.

    Official SophiaG semantics (``Liuhong99/Sophia`` ``sophia.py`` and
    ``train_sophiag.py``, commit a7e15722; paper arXiv 2305.14342,
    Algorithms 2–3):

    .. math::

      \\hat g = \\mathrm{clip}_{\\|\\cdot\\|\\le 1}\\big(∇_θ \\tfrac1B \\textstyle\\sum_b
      \\ell(f(θ, x_b), \\hat y_b)\\big),\\ \\hat y_b \\sim \\mathrm{softmax}(f(θ, x_b)),
      \\qquad h \\leftarrow β_2 h + (1-β_2)\\, \\hat g ⊙ \\hat g \\ \\text{(every } k \\text{ steps)}

      m_t = β_1 m_{t-1} + (1-β_1) g_t, \\qquad
      θ_t = θ_{t-1} - η\\Big(\\mathrm{clip}\\big(m_t / \\max(γ B h, ε), 1\\big) + λ θ_{t-1}\\Big)

    with ``γ = gamma`` (the official ``rho``), ``B = tokens_per_batch`` (the official ``bs = total_bs · block_size``)
    and the ``sampled_loss_fn`` extra argument (:func:`optx.curvature.sampled_label_loss`,
    :func:`optx.curvature.nnx_curvature_args` with ``logits_fn``). ``h`` is refreshed
    at steps ``k, 2k, …`` with the curvature at the parameters of that step
    (the official script estimates right after step ``k−1`` on the batch of
    step ``k``), so the first ``k`` steps are sign-momentum steps; the win rate
    (fraction of coordinates not clipped) is in the state (``win_rate``).

    Differences to ``optax.contrib.sophia`` (all follow the official code
    here): optax bias-corrects ``m``; it has no Gauss–Newton–Bartlett
    estimator (Hutchinson only, Rademacher probes) and no ``B`` factor; it
    refreshes ``h`` at steps 0, k, 2k *after* computing the step from the old
    ``h``; it has no clipping of the sampled gradient and no multi-sample
    option; it does not average estimates across devices; its ``obj_fn`` is
    called on the masked tree inside ``optax.partition``/``masked`` and fails
    there (optx computes over ``full_params`` and keeps its own leaves); its
    weight decay default is 1e-4 (official 0.1–0.2); it prints the win rate
    instead of keeping it in the state.

    Positional order of ``optax.contrib.sophia`` (``lr, b1, b2, eps,
    weight_decay, mask, gamma, update_interval, mu_dtype``); ``gamma`` is the
    official code's ``rho`` (optax's name for the role).

    Official-code quirks: ``ρBh + 1e−15`` in the official denominator versus
    ``max(γBh, ε)`` here (identical for GNB, whose ``h ≥ 0``); decoupled decay
    ``θ(1 − ηλ)`` applied before the step (the update form above is exact);
    the gradient fed to the step is clipped to norm 1 by the training script
    (``torch.nn.utils.clip_grad_norm_``; ``optax.clip_by_global_norm(1.0)``
    before this optimizer reproduces it up to torch's ``+1e-6`` in the norm).
    The official nanoGPT setup (``model.py`` ``configure_optimizers``) decays
    only the weights of ``nn.Linear`` layers — not biases, norms or embeddings
    (the tied head is the embedding): the default ``mask=None``
    does the same through the ``router`` (leaves routed to the matrix group —
    dense, attention and conv kernels — and untied heads are decayed).

    Args:
      learning_rate: η (official class default 1e-4; GPT-2 small used 6e-4).
      b1, b2: β₁ (0.965) and β₂ (0.99).
      eps: ε of the denominator (official 1e-15).
      weight_decay: decoupled λ (0.1; the paper recommends ~2× AdamW's).
      mask: decay mask (tree or callable), as in optax; ``None``: the official
        Linear-weights-only mask (see above). Pass
        ``lambda p: jax.tree.map(lambda _: True, p)`` to decay every leaf.
      gamma: γ, the official ``rho`` (0.04; GPT-2 small 0.05).
      update_interval: ``k`` (static; None = 10, official).
      mu_dtype: dtype of ``m``.
      tokens_per_batch: ``B``: tokens (LMs) or examples per step (required:
        with the wrong ``B`` the curvature term is off by that factor).
      refresh_at_start: refresh at steps 0, k, … (the paper's algorithm) instead.
      gnb_clip_norm: clip of the sampled gradient (official 1.0; None: off).
      axis_name: mapped axis for cross-device averaging (``shard_map``).
      seed: seed of the label-sampling key (static; None = 0).
      nu_dtype: dtype of ``h``.
      router: the :class:`optx.Router` of the default mask (default
        :func:`optx.default_router`).

    Complex parameters: refused at init (a TypeError naming the leaf) because the
      Gauss–Newton–Bartlett diagonal and Sophia's clipping are real-only in the official method.

    Non-finite inputs: a NaN or Inf in the Hessian estimate made from
    ``sampled_loss_fn`` (or anything the step computes from it) skips the whole
    step — zero updates, state unchanged, counted in the outer
    :class:`optx.SkipIfNotFiniteState` (README "Reliability",
    :func:`optx.skip_if_not_finite`).

    References:
      Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable Stochastic Second-order
      Optimizer for Language Model Pre-training", arXiv 2305.14342 (code:
      github.com/Liuhong99/Sophia).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> x, y = jnp.ones((8, 4)), jnp.zeros((8,), jnp.int32)
      >>> logits_fn = lambda p: x @ p['w']
      >>> loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      ...     logits_fn(p), y).mean()
      >>> params = {'w': jnp.zeros((4, 3))}
      >>> tx = optx.sophia_g(1e-3, tokens_per_batch=8)
      >>> state = tx.init(params)
      >>> extra = optx.curvature.curvature_args(loss_fn, params,
      ...                             sampled_loss_fn=optx.curvature.sampled_label_loss(logits_fn))
      >>> u, state = tx.update(jax.grad(loss_fn)(params), state, params, **extra)
    """
    tx = optax.chain(
        diagonal_preconditioning.scale_by_sophia(
            b1,
            b2,
            gamma,
            tokens_per_batch,
            eps,
            estimator=curvature.GaussNewtonBartlett(gnb_clip_norm, axis_name),
            update_interval=update_interval,
            refresh_at_start=refresh_at_start,
            seed=seed,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        optax.add_decayed_weights(
            weight_decay,
            linear_weight_mask(router) if mask is None else mask,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
    return nonfinite.skip_if_not_finite(tx, check_outputs=False)


def linear_weight_mask(router: routing.Router | None = None) -> Any:
    """The official nanoGPT/Sophia decay mask: True on Linear weights only.

    A leaf is decayed when ``router`` sends it to its matrix group (dense,
    attention and conv kernels) or it is an (untied) output head; biases,
    norms, embeddings and scalars are not.
    """
    router = routing.as_router(router)

    def mask(params: Any) -> Any:
        def leaf(path: str, x: Any) -> bool:
            a = router.assign(path, x)
            return a.group in router.matrix_groups or a.rule == "head"

        return base.tree_map_with_path_str(leaf, params)

    return mask


@hyperparams.validated()
def sophia_h(
    learning_rate: base.ScalarOrSchedule = 6e-4,
    b1: float = 0.965,
    b2: float = 0.99,
    eps: float = 1e-12,
    weight_decay: base.ScalarOrSchedule = 0.1,
    mask: base.Mask | None = None,
    gamma: float = 0.01,
    update_interval: int | None = None,
    mu_dtype: base.DTypeLike | None = None,
    *,
    refresh_at_start: bool = True,
    num_samples: int | None = None,
    distribution: str = "gaussian",
    axis_name: str | None = None,
    seed: int | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Sophia-H: Sophia with Hutchinson's Hessian-diagonal estimator.

    The paper's Algorithm 3 with Algorithm 1 (arXiv 2305.14342; the official
    repository ships only SophiaG):

    .. math::

      \\hat h = u ⊙ (H u),\\ u \\sim \\mathcal N(0, I), \\qquad
      h \\leftarrow β_2 h + (1-β_2) \\hat h \\ \\text{(at steps } 0, k, 2k, …)

      m_t = β_1 m_{t-1} + (1-β_1) g_t, \\qquad
      θ_t = θ_{t-1} - η\\Big(\\mathrm{clip}\\big(m_t / \\max(γ h, ε), 1\\big) + λθ_{t-1}\\Big)

    (γ is ``gamma``, the official code's ρ; positional order of
    ``optax.contrib.sophia``). ``H u`` is a forward-over-reverse product of the
    ``loss_fn`` extra argument over the full tree. A negative estimate makes
    ``max(γh, ε) = ε``: that coordinate takes a full clipped step (the paper's
    rule; the official SophiaG formula would flip the sign). No bias
    correction. With ``learning_rate = lr_p · p`` and ``gamma = p`` this is
    pytorch-optimizer's ``SophiaH(lr_p, p=p)`` exactly (its clamp is
    ``clip(m / max(h, ε'), ±p)``, so ``eps = p·ε'`` and
    ``weight_decay = λ'/p``); tested on its golden trajectory. Its other
    decay forms are not arguments here: ``weight_decouple=False`` (coupled L2)
    is ``optax.chain(optax.add_decayed_weights(λ'), sophia_h(...))`` and
    ``fixed_decay=True`` is ``weight_decay = λ'/(lr_p·p)`` for a constant
    learning rate; ``maximize`` is a negated loss.

    Differences to ``optax.contrib.sophia`` (also Sophia-H): optax
    bias-corrects ``m``, uses Rademacher probes by default (the paper:
    Gaussian), refreshes ``h`` after computing the step from the old ``h``, has
    one probe per refresh, no cross-device averaging, and fails inside
    ``optax.partition``/``masked`` (optx evaluates over ``full_params``).

    Args:
      learning_rate: η (6e-4, levanter's Sophia-H config; pytorch-optimizer's
        ``lr=6e-2, p=1e-2``).
      b1, b2: β₁ (0.965), β₂ (0.99).
      eps: ε (1e-12).
      weight_decay: decoupled λ (0.1).
      mask: optional decay mask (tree or callable), as in optax.
      gamma: γ (0.01; the official ``rho``).
      update_interval: ``k`` (static; None = 10).
      mu_dtype: dtype of ``m``.
      refresh_at_start: refresh at 0, k, … (paper) or at k, 2k, … (official G).
      num_samples: Hutchinson probes per refresh (static; None = 1).
      distribution: ``'gaussian'`` (paper) or ``'rademacher'`` (optax).
      axis_name: mapped axis for cross-device averaging (``shard_map``).
      seed: seed of the probe key (static; None = 0).
      nu_dtype: dtype of ``h``.

    Complex parameters: refused at init (a TypeError naming the leaf) because the Hutchinson
      Hessian diagonal and Sophia's clipping are real-only in the official method.

    Non-finite inputs: a NaN or Inf in the Hessian estimate made from ``loss_fn``
    (or anything the step computes from it) skips the whole step — zero updates,
    state unchanged, counted in the outer :class:`optx.SkipIfNotFiniteState`
    (README "Reliability", :func:`optx.skip_if_not_finite`).

    References:
      Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable Stochastic Second-order
      Optimizer for Language Model Pre-training", arXiv 2305.14342.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> loss_fn = lambda p: jnp.sum(jnp.array([1.0, 4.0]) * p['w'] ** 2)
      >>> params = {'w': jnp.ones(2)}
      >>> tx = optx.sophia_h(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> u, state = tx.update(jax.grad(loss_fn)(params), state, params, loss_fn=loss_fn)
    """
    tx = optax.chain(
        diagonal_preconditioning.scale_by_sophia(
            b1,
            b2,
            gamma,
            1.0,
            eps,
            estimator=curvature.Hutchinson(
                1 if num_samples is None else num_samples, distribution, axis_name=axis_name
            ),
            update_interval=update_interval,
            refresh_at_start=refresh_at_start,
            seed=seed,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return nonfinite.skip_if_not_finite(tx, check_outputs=False)


@hyperparams.validated(block_size=diagonal_preconditioning.ADAHESSIAN_BLOCK_SIZE)
def adahessian(
    learning_rate: base.ScalarOrSchedule = 0.15,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    hessian_power: float = 1.0,
    num_samples: int | None = None,
    distribution: str = "rademacher",
    spatial_axes: str | diagonal_preconditioning.SpatialAxesFn = "conv",
    block_size: int | None = None,
    update_interval: int | None = None,
    router: routing.Router | None = None,
    axis_name: str | None = None,
    seed: int | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaHessian: Adam with the RMS of a Hutchinson Hessian diagonal.

    Official image-classification semantics (``amirgholami/adahessian``
    ``image_classification/optim_adahessian.py``, commit 85ebc00c; arXiv
    2006.00719, Eq. 8–11):

    .. math::

      D_t = \\mathrm{avg}(|H_t z_t|),\\ z_t \\text{ Rademacher}, \\qquad
      m_t = β_1 m_{t-1} + (1-β_1) g_t, \\quad v_t = β_2 v_{t-1} + (1-β_2) D_t^2

      θ_t = θ_{t-1} - η\\Big(\\frac{m_t/(1-β_1^t)}{(\\sqrt{v_t}/\\sqrt{1-β_2^t})^k + ε}
      + λ θ_{t-1}\\Big)

    where ``avg`` averages ``|Hz|`` over the window axes ``(kh, kw)`` of conv
    kernels (Flax ``(kh, kw, in, out)``; PyTorch dims 2, 3), ``k`` is the
    Hessian power and the weight decay is decoupled (added to the update, not
    preconditioned, with the pre-step weights). ``block_size`` adds the
    ``instruction/`` version's block averaging over the fan-in of the other
    matrices (see :func:`optx.scale_by_adahessian` for all quirks: one probe per
    step, ε after the power, 3-D tensors, device averaging). ``Hz`` is a
    forward-over-reverse product of the ``loss_fn`` extra argument over the
    full tree, so this works inside ``optax.partition``/``masked`` (with
    ``full_params``) and ``nnx.Optimizer`` (:func:`optx.curvature.nnx_curvature_args`).

    The first step is not bounded, in the official code and here. After the
    bias corrections, ``m̂₁ = g₁`` and ``v̂₁ = D₁²``, so the first step is
    ``η g₁/(|D₁|^k + ε)``. A single Rademacher probe's ``D_i = H_ii + Σ_{j≠i}
    H_ij z_i z_j`` can be ~0 where ``g_i`` is not, so the step is only bounded
    by ``η|g_i|/ε``, which is ``1,500·|g_i|`` at the defaults. A probe of a small
    MLP regression measured a jump to 186× the initial loss at step 1,
    followed by recovery.
    The official image-classification script has no warm-up (a step-decay
    schedule from 0.15). Its transformer recipe warms the learning rate up
    linearly over 8,000 updates (fairseq ``inverse_sqrt``). Do the same with a
    schedule, e.g. ``learning_rate=optax.linear_schedule(0.0, 0.15, 100)``.
    Conv kernels average ``|Hz|`` over their window, and ``block_size``
    averages it over blocks; both make a ~0 denominator rarer. A hard bound
    (clipping ``g/D``) would be a deviation from the official math, and none
    is applied.

    Args:
      learning_rate: η (official 0.15).
      b1, b2: (0.9, 0.999).
      eps: ε (1e-4).
      mu_dtype: first-moment dtype.
      weight_decay: decoupled λ (0; the CIFAR script uses 5e-4).
      mask: optional decay mask (tree or callable), as in optax.
      hessian_power: ``k`` (1; 0.5 sometimes better).
      num_samples, distribution, spatial_axes, block_size, update_interval,
        router, axis_name, seed, nu_dtype: see :func:`optx.scale_by_adahessian`.

    Complex parameters: refused at init (a TypeError naming the leaf) because the Hutchinson
      diagonal of a real loss's Hessian has no phase-equivariant complex counterpart in the
      official method.

    Non-finite inputs: a NaN or Inf in the Hessian estimate made from ``loss_fn``
    (or anything the step computes from it) skips the whole step — zero updates,
    state unchanged, counted in the outer :class:`optx.SkipIfNotFiniteState`
    (README "Reliability", :func:`optx.skip_if_not_finite`).

    References:
      Yao, Gholami, Shen, Mustafa, Keutzer, Mahoney, "ADAHESSIAN: An Adaptive
      Second Order Optimizer for Machine Learning", AAAI 2021, arXiv 2006.00719
      (code: github.com/amirgholami/adahessian).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> loss_fn = lambda p: jnp.sum(jnp.array([1.0, 4.0]) * p['w'] ** 2)
      >>> params = {'w': jnp.ones(2)}
      >>> tx = optx.adahessian(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> u, state = tx.update(jax.grad(loss_fn)(params), state, params, loss_fn=loss_fn)
    """
    tx = optax.chain(
        diagonal_preconditioning.scale_by_adahessian(
            b1,
            b2,
            eps,
            hessian_power,
            num_samples=num_samples,
            distribution=distribution,
            spatial_axes=spatial_axes,
            block_size=block_size,
            update_interval=update_interval,
            router=router,
            axis_name=axis_name,
            seed=seed,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    # A guessed view changes the conv windows averaged and the blocks of ``block_size``.
    uses_layouts = spatial_axes == "conv" or block_size is not None
    tx = routing.attach_router(tx, routing.as_router(router), warn_guessed=uses_layouts)
    return nonfinite.skip_if_not_finite(tx, check_outputs=False)


@hyperparams.validated()
def mfac(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.0,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    num_grads: int | None = None,
    damp: float = 1e-5,
    blockwise: bool = False,
    router: routing.Router | None = None,
    buffer_dtype: base.DTypeLike | None = None,
    compute_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """M-FAC: SGD preconditioned by the inverse empirical Fisher of the last m gradients.

    The dynamic algorithm of the official ``IST-DASLab/M-FAC`` ``optim.py``
    (``MFAC`` + ``HInvFastUpMulti``, commit 8116367f; arXiv 2107.03356, §4–5):

    .. math::

      \\tilde g_t = g_t + λ_{wd} θ_{t-1}, \\qquad
      F_t = λ I + \\tfrac1m \\textstyle\\sum_{i=t-m+1}^{t} \\tilde g_i \\tilde g_i^\\top,
      \\qquad u_t = F_t^{-1} \\tilde g_t

      v_t = μ v_{t-1} + (1-μ) u_t, \\qquad θ_t = θ_{t-1} - η v_t

    global over all parameters (raveled; ``blockwise=True`` is the flagged
    per-matrix deviation for large models), with ``F⁻¹ g̃`` from the ``m × m``
    Gram system (:func:`optx.scale_by_mfac`). Official quirks kept: the ring
    buffer is zero-initialised and the formulas always use ``m`` (the first
    ``m−1`` steps behave like normalised steps, ``F⁻¹g ≈ m g/‖g‖²`` in the
    buffer's span); the newest gradient enters the buffer before the
    product; weight decay is L2-style, added to the gradient before
    preconditioning; momentum is an EMA of the preconditioned direction
    (``v`` starts at 0, no bias correction). Not offered: the official
    ``sparse=True`` variant (gradients pruned to a fixed sparsity mask, for
    pruning runs). State: ``m·d`` buffer + ``m²`` Gram
    (+ ``d`` momentum) — see :func:`optx.tree_utils.mfac_state_bytes`.

    Stability: the step multiplies ``g`` by up to ``η/λ`` (``F⁻¹ ≤ 1/λ``), in the
    directions in which the window's gradients barely vary. With minibatch
    gradients (the official CIFAR setting: m = 1024, batch 128) the gradient
    noise keeps the window's Fisher away from zero there; with nearly noiseless
    gradients (full batch, small models, late in training) consecutive
    gradients are almost collinear, the Gram system is near-singular, and the
    update becomes gradient descent with step ``η/λ`` = 100 at the official
    ``η = 1e-3, λ = 1e-5``: a small full-batch MLP regression diverges (NaN
    within 1,000 steps). Keep ``η/λ`` at most ~1 there; the registry's small-model default is
    ``λ = 1e-2`` (η/λ = 0.1; stable over 5,000 full-batch steps,
    ``tests/test_stability.py``), the factory keeps the official 1e-5.

    Args:
      learning_rate: η (official 1e-3).
      b1: μ, the EMA coefficient of ``v`` (the official ``momentum``, 0).
      mu_dtype: dtype of ``v``.
      weight_decay: coupled L2 λ_wd (0).
      mask: optional decay mask (tree or callable), as in optax.
      num_grads: ``m`` (static; None = 1024, official; README 512).
      damp: λ (1e-5).
      blockwise: per-matrix M-FAC (static).
      router: layouts of the blocks when blockwise.
      buffer_dtype, compute_dtype: see :func:`optx.scale_by_mfac`.

    Complex parameters: supported (phase-equivariant): the empirical Fisher is
      ``λI + (1/m) Σ g gᴴ``, its Gram matrix ``K_ij = Σ ḡ_i g_j`` is Hermitian (a complex
      Cholesky solve), so ``F⁻¹ g = m Gᵀ (mλI + K)⁻¹ e_s`` as for real gradients.

    Non-finite gradients: the Gram matrix couples every leaf, so one NaN or Inf
    gradient entry makes every leaf's step non-finite, and the gradient stays in
    the buffer for the next ``m`` steps (as in the official code). Skip such
    steps before they reach the buffer: ``optax.apply_if_finite(optx.mfac(...),
    max_consecutive_errors)`` or ``optx.skip_if_not_finite(optx.mfac(...))``.

    References:
      Frantar, Kurtic, Alistarh, "M-FAC: Efficient Matrix-Free Approximations
      of Second-Order Information", NeurIPS 2021, arXiv 2107.03356 (code:
      github.com/IST-DASLab/M-FAC).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'w': jnp.ones((4, 3))}
      >>> tx = optx.mfac(learning_rate=1e-3, num_grads=8)
      >>> u, state = tx.update(params, tx.init(params), params)
    """
    return routing.attach_router(
        optax.chain(
            optax.add_decayed_weights(weight_decay, mask),
            fisher.scale_by_mfac(
                num_grads,
                damp,
                blockwise=blockwise,
                router=router,
                buffer_dtype=buffer_dtype,
                compute_dtype=compute_dtype,
            ),
            moments.scale_by_momentum(b1, kind="ema", nesterov=False, mu_dtype=mu_dtype),
            optax.scale_by_learning_rate(learning_rate),
        ),
        routing.as_router(router),
        warn_guessed=blockwise,
    )


def _inner_optimizer(args: Mapping[str, Any]) -> optax.GradientTransformation:
    """MKOR's inner optimizer from the alias arguments ``args`` (its ``locals()``)."""
    inner, learning_rate = args["inner"], args["learning_rate"]
    weight_decay, mask = args["weight_decay"], args["mask"]
    if isinstance(inner, str):
        base.check_choice("inner", inner, INNER_OPTIMIZERS)
        if inner == "sgd":
            # torch.optim.SGD: d = g + λw; buf = μ buf + d; step d (+ μ buf, Nesterov).
            return optax.chain(
                optax.add_decayed_weights(weight_decay, mask),
                moments.scale_by_momentum(
                    args["momentum"],
                    kind="sum",
                    nesterov=args["nesterov"],
                    mu_dtype=args["mu_dtype"],
                ),
                optax.scale_by_learning_rate(learning_rate),
            )
        if inner == "adam":
            # torch.optim.Adam (the official optimizer='adam'): coupled L2, g + λw
            # (pre-step weights) enters the moments; ε outside √v̂.
            return optax.chain(
                optax.add_decayed_weights(weight_decay, mask),
                moments.scale_by_adam(
                    args["b1"],
                    args["b2"],
                    args["eps"],
                    mu_dtype=args["mu_dtype"],
                    nu_dtype=args["nu_dtype"],
                    exact_bias_correction=True,
                ),
                optax.scale_by_learning_rate(learning_rate),
            )
        return torch_adamw(  # torch.optim.AdamW
            learning_rate,
            args["b1"],
            args["b2"],
            args["eps"],
            weight_decay,
            mask,
            args["mu_dtype"],
            args["nu_dtype"],
        )
    if isinstance(inner, optax.GradientTransformation):
        return optax.chain(inner, optax.scale_by_learning_rate(learning_rate))
    raise TypeError(
        "`inner` must be 'sgd', 'adam', 'adamw' or an optax.GradientTransformation without its "
        f"learning rate (e.g. optax.scale_by_lion()), got {inner!r}."
    )


@hyperparams.validated(inner=_MKOR_INNER)
def mkor(
    learning_rate: base.ScalarOrSchedule = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    mu_dtype: base.DTypeLike | None = None,
    *,
    inner: str | optax.GradientTransformation = "sgd",
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    update_interval: int | None = None,
    factor_decay: float = 0.95,
    stabilization_factor: float = 0.1,
    reset_mode: str = "identity",
    reset_threshold: float = 2.0,
    clip_value: float = 100.0,
    warmup_steps: int | None = None,
    statistics: str = "auto",
    factor_dtype: base.DTypeLike | None = "float16",
    router: routing.Router | None = None,
    nu_dtype: base.DTypeLike | None = None,
    hybrid: bool = False,
    switch_window: int | None = None,
    switch_threshold: float = 0.1,
    switch_min_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """MKOR: rank-1 Kronecker-factored preconditioning wrapped around a first-order optimizer.

    The released ``mkor`` package (``mkor/mkor.py``, commit 3a0e3bb2; arXiv
    2306.01685, Algorithm 1): every ``update_interval`` steps (the official
    ``inv_freq``) the inverse factors
    ``A⁻¹``, ``G⁻¹`` of every Dense/Conv layer take one Sherman–Morrison step
    with the batch-mean input ``ā`` and output gradient ``ḡ``; every step the
    layer gradient ``[∇W, ∇b]`` is preconditioned, ``Δ = G⁻¹[∇W, ∇b]A⁻¹``,
    rescaled to the gradient's norm, and handed to the inner optimizer, which
    takes the step (its momentum is the method's momentum):

    .. math::

      A^{-1} \\leftarrow \\mathrm{SM}(0.95 A^{-1} + 0.05 I, \\bar a), \\quad
      G^{-1} \\leftarrow \\mathrm{SM}(0.95 G^{-1} + 0.05 I, \\bar g), \\quad
      Δ = G^{-1} M A^{-1}\\,\\frac{\\|M\\|}{\\|G^{-1} M A^{-1}\\|},\\quad
      θ \\leftarrow \\mathrm{inner}(Δ)

    (norms summed over the kernel and bias parts). The per-layer statistics come
    from the ``captures`` extra argument (:func:`optx.curvature.value_grad_and_captures`
    for NNX, :func:`optx.curvature.linen_value_grad_and_captures` for linen); layers
    without a capture use statistics derived from their gradient (see
    :func:`optx.scale_by_mkor`, which documents the stabilizer, the reset
    semantics and every quirk of the released code).

    ``inner``: ``'sgd'`` (``torch.optim.SGD``: coupled weight decay, momentum
    ``buf = μ buf + d``, optional Nesterov; the official default), ``'adam'``
    (``torch.optim.Adam``, the official ``optimizer='adam'``: *coupled* L2
    decay ``g + λw`` before the moments), ``'adamw'`` (:func:`optx.adamw`,
    decoupled decay), or any ``optax.GradientTransformation`` **without**
    a learning rate (e.g. ``optax.scale_by_lion()``), after which
    ``scale_by_learning_rate(learning_rate)`` is applied. With ``'adam'``/``'adamw'``
    use an Adam learning rate (≈1e-3).

    Positional order of ``optax.sgd`` (``lr, momentum, nesterov, mu_dtype``),
    the default inner optimizer.

    Args:
      learning_rate: the inner optimizer's learning rate (scalar or schedule).
      momentum, nesterov: SGD momentum (0.9) and Nesterov flag.
      mu_dtype: the inner optimizer's first-moment dtype.
      inner: ``'sgd'``, ``'adam'``, ``'adamw'`` or a transformation (static).
      weight_decay: SGD's and Adam's coupled / AdamW's decoupled decay (not
        applied with a custom ``inner``).
      mask: optional decay mask (tree or callable), as in optax.
      b1, b2, eps: Adam's / AdamW's hyper-parameters.
      update_interval, factor_decay, stabilization_factor, reset_mode,
        reset_threshold, clip_value, warmup_steps, statistics, factor_dtype,
        router: see :func:`optx.scale_by_mkor`. ``clip_value`` clamps the batch means
        here; the official per-sample clamp happens in the capture, so a non-default
        value goes to :func:`optx.curvature.value_grad_and_captures` too.
      nu_dtype: the inner Adam's / AdamW's second-moment dtype.
      hybrid, switch_window, switch_threshold, switch_min_steps: MKOR-H
        (:func:`optx.mkor_h` is ``mkor(..., hybrid=True)``).

    Complex parameters: refused at init (a TypeError naming the leaf) because the official
      rank-1 Kronecker factors (activations and output gradients) are real-only.

    Non-finite inputs: a NaN or Inf in ``captures`` (and, for MKOR-H, ``loss``)
    (or anything the step computes from it) skips the whole step — zero updates,
    state unchanged, counted in the outer :class:`optx.SkipIfNotFiniteState`
    (README "Reliability", :func:`optx.skip_if_not_finite`).

    References:
      Mozaffari, Li, Zhang, Mehri Dehnavi, "MKOR: Momentum-Enabled
      Kronecker-Factor-Based Optimizer Using Rank-1 Updates", NeurIPS 2023,
      arXiv 2306.01685 (code: github.com/Mohammad-Mozaffari/mkor).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> from flax import nnx
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optx.mkor(0.1, update_interval=1), wrt=nnx.Param)
      >>> mse = lambda m, x: jnp.mean((m(x) - 1.0) ** 2)
      >>> @nnx.jit
      ... def step(model, opt, x):
      ...     loss, grads, captures = optx.curvature.value_grad_and_captures(mse, model, x)
      ...     opt.update(model, grads, captures=captures)
      ...     return loss
      >>> _ = step(model, opt, jnp.ones((4, 3)))
    """
    tx = optax.chain(
        kronecker.scale_by_mkor(
            update_interval,
            factor_decay=factor_decay,
            stabilization_factor=stabilization_factor,
            reset_mode=reset_mode,
            reset_threshold=reset_threshold,
            clip_value=clip_value,
            warmup_steps=warmup_steps,
            statistics=statistics,
            factor_dtype=factor_dtype,
            router=router,
            hybrid=hybrid,
            switch_window=switch_window,
            switch_threshold=switch_threshold,
            switch_min_steps=switch_min_steps,
        ),
        _inner_optimizer(locals()),
    )
    layers = kronecker.mkor_router() if router is None else routing.as_router(router)
    tx = routing.attach_router(tx, layers, warn_guessed=True)
    # MKOR-H's ``loss`` feeds its switch; plain MKOR ignores it.
    inputs = ("captures", "loss") if hybrid else ("captures",)
    return nonfinite.skip_if_not_finite(tx, inputs, check_outputs=False)


@hyperparams.validated(inner=_MKOR_INNER)
def mkor_h(
    learning_rate: base.ScalarOrSchedule = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    mu_dtype: base.DTypeLike | None = None,
    *,
    inner: str | optax.GradientTransformation = "sgd",
    switch_window: int | None = None,
    switch_threshold: float = 0.1,
    switch_min_steps: int | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    update_interval: int | None = None,
    factor_decay: float = 0.95,
    stabilization_factor: float = 0.1,
    reset_mode: str = "identity",
    reset_threshold: float = 2.0,
    clip_value: float = 100.0,
    warmup_steps: int | None = None,
    statistics: str = "auto",
    factor_dtype: base.DTypeLike | None = "float16",
    router: routing.Router | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """MKOR-H: MKOR that switches to its first-order optimizer when it stops paying off.

    :func:`optx.mkor` plus the paper's hybrid rule (arXiv 2306.01685, §3.5;
    the released code has no switching logic, so the rule below is optx's
    specification of it): the ``loss`` extra argument (required) is averaged
    over windows of ``switch_window`` steps; the relative decrease per window
    ``r_k = (L̄_{k−1} − L̄_k)/|L̄_{k−1}|`` is compared with the best one so far
    ``r*``; when ``r_k < switch_threshold · r*`` (after ``switch_min_steps``)
    MKOR stops preconditioning and refreshing its factors for the rest of
    training, and the inner optimizer continues (same state) on raw gradients —
    saving the second-order cost once it no longer speeds up the loss
    decrease. ``state.inner_state[0].switch`` records the windows and ``switched_at``.

    Args:
      learning_rate, momentum, nesterov, mu_dtype, inner, weight_decay, mask,
        b1, b2, eps, update_interval, factor_decay, stabilization_factor,
        reset_mode, reset_threshold, clip_value, warmup_steps, statistics,
        factor_dtype, router, nu_dtype: as in :func:`optx.mkor`.
      switch_window: steps per loss window (static; None = 100).
      switch_threshold: fraction of the best window rate below which to switch.
      switch_min_steps: never switch before this step (static; None = 0).

    Complex parameters: refused at init (a TypeError naming the leaf) because the official
      rank-1 Kronecker factors (activations and output gradients) are real-only.

    Non-finite inputs: a NaN or Inf in ``captures`` or ``loss`` (or anything the
    step computes from it) skips the whole step — zero updates, state unchanged,
    counted in the outer :class:`optx.SkipIfNotFiniteState` (README "Reliability",
    :func:`optx.skip_if_not_finite`).

    References:
      Mozaffari, Li, Zhang, Mehri Dehnavi, "MKOR: Momentum-Enabled
      Kronecker-Factor-Based Optimizer Using Rank-1 Updates", NeurIPS 2023,
      arXiv 2306.01685.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}}
      >>> tx = optx.mkor_h(0.1, switch_window=10)
      >>> u, s = tx.update(params, tx.init(params), params, loss=jnp.asarray(1.0))
    """
    return mkor(
        learning_rate,
        momentum,
        nesterov,
        mu_dtype,
        inner=inner,
        weight_decay=weight_decay,
        mask=mask,
        b1=b1,
        b2=b2,
        eps=eps,
        update_interval=update_interval,
        factor_decay=factor_decay,
        stabilization_factor=stabilization_factor,
        reset_mode=reset_mode,
        reset_threshold=reset_threshold,
        clip_value=clip_value,
        warmup_steps=warmup_steps,
        statistics=statistics,
        factor_dtype=factor_dtype,
        router=router,
        nu_dtype=nu_dtype,
        hybrid=True,
        switch_window=switch_window,
        switch_threshold=switch_threshold,
        switch_min_steps=switch_min_steps,
    )


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


def registry_extra_args(ctx: registry.ExtraArgsContext) -> dict[str, Any]:
    """The curvature vocabulary from an :class:`optx.ExtraArgsContext`.

    ``loss_fn``/``full_params``/``key``/``loss`` come from the context;
    ``captures``, ``sampled_loss_fn`` (or ``logits_fn``: ``params -> logits``,
    turned into one by :func:`optx.curvature.sampled_label_loss`) from ``ctx.aux`` when
    the problem provides them. Without either (a plain loss of the parameters
    has no predictive distribution to sample labels from) Sophia-G gets
    ``(params, key) -> loss_fn(params)``: its Gauss–Newton–Bartlett estimate
    then degrades to the squared (clipped) gradient, the empirical Fisher
    diagonal. Without ``captures`` MKOR derives its rank-1 statistics from the
    gradients (:func:`optx.curvature.mkor_statistics_from_gradients`).
    """
    aux = dict(ctx.aux or {})
    sampled = aux.get("sampled_loss_fn")
    if sampled is None and aux.get("logits_fn") is not None:
        sampled = curvature.sampled_label_loss(aux["logits_fn"])
    if sampled is None:
        loss_fn = ctx.loss_fn

        def sampled(params: Any, key: Any) -> Any:
            del key
            return loss_fn(params)

    return {
        "loss_fn": ctx.loss_fn,
        "sampled_loss_fn": sampled,
        "full_params": ctx.params,
        "key": ctx.key,
        "loss": ctx.loss,
        "captures": aux.get("captures"),
    }


# Sophia and AdaHessian combine Python-number hyper-parameters in double precision
# (1 − β, 1 − βᵗ: as the reference codes do on Python floats; the AdaHessian
# golden needs it) while inject_hyperparams hands them over as f32 arrays. The
# ~1e-7 relative difference is amplified by the conformance problem's
# cancellation near its optimum (g ∝ w − 0.1): the equivalence checks get 10×
# their tolerance.
_F64_HYPERPARAMETER_TOLERANCE = 10.0

_CURVATURE_STATIC = ("seed", "update_interval", "num_samples", "distribution", "axis_name")
_MKOR_STATIC = (
    "inner",
    "update_interval",
    "warmup_steps",
    "reset_mode",
    "statistics",
    "factor_dtype",
    "switch_window",
    "switch_min_steps",
)

registry.register(
    registry.OptimizerSpec(
        name="sophia_g",
        factory=sophia_g,
        paper="2305.14342",
        family="curvature",
        defaults={"learning_rate": 3e-4, "tokens_per_batch": 1024, "gamma": 0.05},
        lr_grid=(1e-4, 3e-4, 1e-3, 3e-3),
        static_args=("seed", "update_interval", "refresh_at_start", "axis_name", "gnb_clip_norm"),
        extra_args=registry_extra_args,
        test_overrides={"learning_rate": 3e-2, "tokens_per_batch": 1.0, "weight_decay": 0.0},
        equivalence_tolerance=_F64_HYPERPARAMETER_TOLERANCE,
        description="Sophia-G (official SophiaG: GNB estimator, rho*B scaling, no bias corr.)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="sophia_h",
        factory=sophia_h,
        paper="2305.14342",
        family="curvature",
        defaults={"learning_rate": 6e-4},
        lr_grid=(1e-4, 3e-4, 6e-4, 1e-3, 3e-3),
        static_args=(*_CURVATURE_STATIC, "refresh_at_start"),
        extra_args=registry_extra_args,
        test_overrides={"learning_rate": 3e-2, "weight_decay": 0.0},
        equivalence_tolerance=_F64_HYPERPARAMETER_TOLERANCE,
        description="Sophia-H (paper: Hutchinson estimator, Gaussian probes)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="adahessian",
        factory=adahessian,
        paper="2006.00719",
        family="curvature",
        defaults={"learning_rate": 0.15},
        lr_grid=(0.01, 0.05, 0.15, 0.3),
        static_args=(*_CURVATURE_STATIC, "spatial_axes", "block_size"),
        extra_args=registry_extra_args,
        test_overrides={"learning_rate": 0.1},
        equivalence_tolerance=_F64_HYPERPARAMETER_TOLERANCE,
        description="AdaHessian (official image version: |Hz|, conv spatial averaging)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="mfac",
        factory=mfac,
        paper="2107.03356",
        family="curvature",
        # λ = 1e-2 (official 1e-5): η/λ ≤ 1 keeps noiseless (full-batch) small-model
        # runs stable; see the "Stability" paragraph of the docstring.
        defaults={"learning_rate": 1e-3, "num_grads": 32, "damp": 1e-2},
        lr_grid=(1e-4, 3e-4, 1e-3, 3e-3),
        static_args=("num_grads", "blockwise", "buffer_dtype", "compute_dtype"),
        test_overrides={"num_grads": 8, "damp": 1e-1, "learning_rate": 0.05},
        description="M-FAC (dynamic algorithm, global empirical-Fisher IHVP)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="mkor",
        factory=mkor,
        paper="2306.01685",
        family="curvature",
        defaults={"learning_rate": 0.05},
        lr_grid=(0.01, 0.03, 0.1, 0.3),
        static_args=_MKOR_STATIC,
        extra_args=registry_extra_args,
        uses_matrix_path=False,
        test_overrides={"learning_rate": 0.02},
        description="MKOR(SGD-momentum): rank-1 SM inverse Kronecker factors",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="mkor_h",
        factory=mkor_h,
        paper="2306.01685",
        family="curvature",
        defaults={"learning_rate": 0.05},
        lr_grid=(0.01, 0.03, 0.1, 0.3),
        static_args=_MKOR_STATIC,
        extra_args=registry_extra_args,
        test_overrides={"learning_rate": 0.02},
        description="MKOR-H: MKOR switching to its inner optimizer (loss-rate rule)",
    )
)
