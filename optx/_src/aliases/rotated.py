"""Rotated-basis optimizers: SOAP, Conda and COSMOS (the family's home).

All three run an Adam-like update in a coordinate basis refreshed from time to
time; the shared pieces (Kronecker factors, eigh / power-QR / SVD bases,
rank-r subspace tracking, rotations) are in :mod:`optx._src.bases`.

How the router is used:

* **SOAP** and **Conda** are single transforms over *every* leaf, as in their
  official codes, where the non-rotated parameters get the very same Adam
  (same ε placement, same decay-after-the-step, SOAP's first-step skip):
  the router only decides which leaves are *rotated* and with which layout.
  Conda rotates the router's ``'matrix'`` leaves (the official attention and
  MLP weights); SOAP also rotates the embeddings and heads over their last
  two axes unless ``rotate_fallback_matrices=False``, because the official
  code rotates every 2-D parameter (a vocabulary side above
  ``max_precond_dim`` stays unrotated); stacked biases and norm scales
  ``(L, d)`` stay element-wise, as the separate 1-D parameters they are in
  PyTorch.
* **COSMOS** is a :func:`optx.routed` pair: the matrix chain on ``'matrix'``
  leaves and :func:`optx.adamw` on the rest (the official code's fallback
  Adam has a hard-coded ``0.1·g`` momentum and ``1 − 0.9ᵗ`` bias correction;
  with ``b1 = 0.9`` that is exactly AdamW, otherwise optx deliberately uses
  the standard AdamW).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import (
    base,
    bases,
    hyperparams,
    layouts,
    normalization,
    orthogonalization,
    registry,
    routing,
)
from optx._src.aliases.orthogonalized import (
    FALLBACK_ARGS,
    fallback_for,
    fallback_settings,
    scaled_learning_rate,
)

# Re-exported through ``optx`` (one import line per family in optx/__init__.py).
from optx._src.bases import (  # noqa: F401
    ModeView,
    ScaleByCondaState,
    ScaleByCosmosState,
    ScaleBySoapState,
    eigh_basis,
    mode_gram,
    power_qr_basis,
    rotate,
    rotate_back,
    scale_by_conda,
    scale_by_cosmos,
    scale_by_soap,
    singular_basis,
    subspace_init,
    subspace_power_step,
    subspace_split,
)
from optx._src.weight_decay import add_decayed_weights_after_step

SOAP_FALLBACK_MATRIX_RULES = ("embedding", "head")
"""Names of the router rules whose ``ndim >= 2`` leaves :func:`optx.soap` rotates
although they are routed to the fallback (the default router's embedding and
head rules). Stacked biases and norm scales ``(L, d)`` stay element-wise: in
PyTorch they are separate 1-D parameters."""


def fallback_matrix_layout(router: routing.Router) -> layouts.LayoutFn:
    """``(path, leaf) -> DENSE | None``: the embeddings and heads of ``router``
    (rules named in :data:`SOAP_FALLBACK_MATRIX_RULES`), seen over their last two
    axes (a vocabulary side above ``max_precond_dim`` then stays unrotated)."""

    def layout(path: str, leaf: Any) -> layouts.MatrixLayout | None:
        if len(jnp.shape(leaf)) < 2:
            return None
        rule = router.assign(path, leaf).rule
        return layouts.DENSE if rule in SOAP_FALLBACK_MATRIX_RULES else None

    return layout


@hyperparams.validated()
def soap(
    learning_rate: base.ScalarOrSchedule = 3e-3,
    b1: float = 0.95,
    b2: float = 0.95,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.01,
    mask: base.Mask | None = None,
    *,
    shampoo_beta: float | None = None,
    update_proj_gap: int | None = None,
    max_precond_dim: int | None = None,
    factorization: str = "matrix",
    merge_dims: bool = False,
    precondition_1d: bool = False,
    rotate_fallback_matrices: bool = True,
    normalize_grads: bool = False,
    bias_correction: bool = True,
    nu_dtype: base.DTypeLike | None = None,
    precond_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SOAP: Adam in the eigenbasis of Shampoo's preconditioner.

    Official semantics of ``nikhilvyas/SOAP`` (``soap.py`` @a1e55353), the
    algorithm of Vyas et al., arXiv 2409.11321 (Algorithm 3, with the
    eigenbasis refresh of Algorithm 4). For a matrix ``G`` with Kronecker
    factors ``L, R`` and their eigenbases ``Q_L, Q_R``:

    .. math::

      G' = Q_L^\\top G Q_R, \\quad M' ← β_1 M' + (1-β_1) G', \\quad
      V ← β_2 V + (1-β_2) G'^2,

      W ← W - η\\,\\frac{\\sqrt{1-β_2^t}}{1-β_1^t}\\, Q_L \\frac{M'}{\\sqrt V + ε} Q_R^\\top,
      \\qquad W ← W - η λ W \\ \\ (\\text{after the step}),

      L ← β_s L + (1-β_s) G G^\\top, \\quad R ← β_s R + (1-β_s) G^\\top G,

    and every ``update_proj_gap`` steps ``Q ← QR(L Q_sorted)`` (one
    power step from the current basis, columns sorted by the estimated
    eigenvalues ``diag(Qᵀ L Q)``), with ``V`` permuted by that sort and ``M'``
    re-rotated into the new basis. Chain: :func:`optx.scale_by_soap` |
    :func:`optx.add_decayed_weights_after_step` | ``scale_by_learning_rate``.

    Official-code quirks, all reproduced (see :func:`optx.scale_by_soap`):

    * **The first step only initializes** the preconditioner (``L, R`` from the
      first gradient, ``Q`` by eigh): the parameters do not move and are not
      decayed; the bias-correction step counts real updates only. So the
      second step sees the first gradient again, which the basis diagonalizes:
      its off-diagonal rotated coordinates are eigenvector round-off (about
      ``ε/gap`` of the gradient), and Adam's first step turns each into a
      ±1 step, as in the official code. That step depends on the last ulp of
      the gradient and the eigensolver: runs on different device counts,
      meshes or reductions differ by up to a whole step there (measured
      1.5e-2 after two steps of 8e-3 on an 8-device data-parallel run), and
      the loss is curved on a 1e-6 scale around it.
    * eigh at the first call, power step + QR afterwards. **Deviation:** optx
      runs them in the parameter's compute dtype (float32, float64 for f64
      parameters, so a float64 run is float64 end to end); the official code
      casts to float32 first (``.float()``) even for float64 parameters, so
      its float64 trajectories carry float32 bases (about 1e-7 apart).
    * ε is added to ``√V`` before the bias correction (folded into the step).
    * Weight decay acts on the *updated* weights with the raw learning rate.
    * Dimensions above ``max_precond_dim`` stay unrotated; 1-D parameters are
      plain Adam (with the same first-step skip) unless ``precondition_1d``;
      the embeddings and heads the router sends to the fallback are rotated too
      (``rotate_fallback_matrices``, rules named in
      :data:`SOAP_FALLBACK_MATRIX_RULES`); stacked biases and norm scales
      ``(L, d)`` stay element-wise (separate 1-D parameters in PyTorch).
    * ``merge_dims`` (official greedy merge) applies with
      ``factorization='axes'`` (one factor per tensor axis, the official N-D
      treatment); the default ``'matrix'`` uses the router's matrix view
      (identical for 2-D weights; conv kernels as ``kh·kw·in × out``; scanned
      stacks get one set of factors per layer). Axes are merged in PyTorch's
      order ``(out, in, kh, kw)`` whatever the storage order, so a Flax conv
      kernel ``(kh, kw, in, out)`` gets the official modes (e.g. ``(out·in,
      kh·kw)``); the official ``data_format`` has no other role and no
      equivalent here.
    * Flax kernels are ``(in, out)``: the official ``L`` over the PyTorch rows
      is our fan-out factor ``GᵀG`` — the same preconditioner, transposed.

    State memory per ``m × n`` matrix: ``2mn + 2(m² + n²)`` (two rotated
    moments, two factors, two bases), the price COSMOS cuts.

    Args:
      learning_rate: η (scalar or schedule; 3e-3 official).
      b1, b2: Adam betas (0.95, 0.95 official).
      eps: ε (1e-8).
      mu_dtype: first-moment dtype.
      weight_decay: λ, decoupled and applied after the step (0.01 official).
      mask: optional mask for the decay (tree or callable), as in optax.
      shampoo_beta: EMA decay of ``L, R`` (default ``b2``; official −1).
      update_proj_gap: basis refresh period (the official
        ``precondition_frequency``; static; None = 10).
      max_precond_dim: larger dimensions stay unrotated (static; None = 10000).
      factorization: ``'matrix'`` (router layout) or ``'axes'`` (per axis).
      merge_dims: official greedy dimension merging (``'axes'`` only).
      precondition_1d: rotate 1-D parameters too.
      rotate_fallback_matrices: rotate the router's embeddings and heads
        (fallback leaves of the rules in :data:`SOAP_FALLBACK_MATRIX_RULES`)
        over their last two axes, as the official code does.
      normalize_grads: divide each update matrix by its RMS (official option).
      bias_correction: Adam bias correction (official ``correct_bias``: on).
      nu_dtype: second-moment dtype; precond_dtype: factors and bases
        (default: the parameter's compute dtype).
      router: an :class:`optx.Router` (default :func:`optx.default_router`).

    Static (uninjectable) arguments: ``update_proj_gap``,
    ``max_precond_dim``, ``factorization``, dtypes, ``router`` and the flags.

    Deviations from the official code:
      Roundoff is not amplified: null-space basis columns are a fixed completion
      and rotated coordinates below the roundoff of the rotation are zero, so
      runs that differ by reduction order (device counts, process splits) agree
      to float tolerance (details in :func:`optx.scale_by_soap`).

    Complex parameters: refused at init (a TypeError naming the leaf) because the rotated bases
      (eigenvectors of the gradient Gram factors) and SOAP's official math are real-only.

    References:
      Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson, Kakade, "SOAP:
      Improving and Stabilizing Shampoo using Adam", arXiv 2409.11321 (code:
      github.com/nikhilvyas/SOAP).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16)), 'bias': jnp.zeros(16)}}
      >>> tx = optx.soap(learning_rate=3e-3)
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p) + p, params)
      >>> updates, state = tx.update(grads, state, params)   # initializes only
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    router = routing.as_router(router)
    direction = bases.scale_by_soap(
        b1,
        b2,
        eps,
        shampoo_beta=shampoo_beta,
        update_proj_gap=10 if update_proj_gap is None else update_proj_gap,
        max_precond_dim=10000 if max_precond_dim is None else max_precond_dim,
        factorization=factorization,
        merge_dims=merge_dims,
        precondition_1d=precondition_1d,
        extra_layout=fallback_matrix_layout(router) if rotate_fallback_matrices else None,
        normalize_grads=normalize_grads,
        bias_correction=bias_correction,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        precond_dtype=precond_dtype,
        layout=router,
    )
    tx = optax.chain(
        direction,
        add_decayed_weights_after_step(weight_decay, learning_rate, mask, skip_steps=1),
        optax.scale_by_learning_rate(learning_rate),
    )
    return routing.attach_router(tx, router, warn_guessed=True)


@hyperparams.validated()
def conda(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    update_proj_gap: int | None = None,
    scale: float = 1.0,
    bias_correction: bool = True,
    nu_dtype: base.DTypeLike | None = None,
    precond_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    side: str = "std",
) -> optax.GradientTransformationExtraArgs:
    """Conda (Column-Normalized Adam): Adam with its second moment in the SVD
    basis of the momentum.

    Official semantics of ``jie040109/Conda`` (``conda_torch/conda.py`` and
    ``projector.py`` @449af713, ``proj_type='std'``), the algorithm of Wang et
    al., arXiv 2509.24218 (Algorithm 1). For a routed matrix ``G``:

    .. math::

      M ← β_1 M + (1-β_1) G, \\qquad Q = \\mathrm{SVD}(M)
      \\text{ factor on the smaller side, every } T \\text{ steps (from step 0)},

      V ← β_2 V + (1-β_2) (Q^\\top G)^2, \\qquad
      W ← W - η\\, s\\, \\frac{\\sqrt{1-β_2^t}}{1-β_1^t}\\,
      Q \\frac{Q^\\top M}{\\sqrt V + ε}, \\qquad W ← W - ηλW \\ \\ (\\text{after}).

    (``QᵀX`` is the rotation of the smaller side: left for a fan-in side no
    larger than the fan-out side, right otherwise.) Other leaves (embeddings,
    heads, norms, biases) get the same Adam without rotation or ``s``, as the
    official non-projected parameter group does. Chain:
    :func:`optx.scale_by_conda` | :func:`optx.add_decayed_weights_after_step` |
    ``scale_by_learning_rate``.

    Official-code quirks, all reproduced: the momentum stays in the original
    coordinates and is SVD'd *after* its update (at the first step
    ``M = (1−β₁)G``); the rotation is full-rank on the smaller side (not
    GaLore's low rank); ``V`` lives in the rotated basis and is **not** rotated
    or reset at a refresh; the SVD runs at pre-increment steps 0, T, 2T, … in
    the compute dtype (float32, float64 for f64 parameters: **a deviation**, the
    official code casts to float32 first, so its float64 runs carry float32
    rotations); ε is added to the uncorrected ``√V``; the decay uses the raw
    learning rate on the updated weights. The signature's ε is 1e-8 (its
    docstring says 1e-6). Paper scripts used ``b2 = 0.99``, ``T = 2000``,
    ``scale = 0.25`` and lr ≈ 6e-3–1e-2 for LLM pre-training.

    ``side`` is the official ``proj_type`` (:func:`optx.scale_by_conda`):
    ``'std'``, ``'reverse_std'``, ``'in'`` (``'right'``) or ``'out'``
    (``'left'``), as the official code where it runs (the smaller side, square
    matrices); on the larger side, where the official code fails, a
    rank-``min(m, n)`` projection. Not offered: ``'full'`` (both sides), which
    the paper does not use.

    State memory per ``m × n`` matrix: ``2mn + min(m, n)²``.

    Args:
      learning_rate: η (scalar or schedule; 1e-3 class default).
      b1, b2, eps: Adam's hyper-parameters (0.9, 0.999, 1e-8).
      mu_dtype: first-moment dtype.
      weight_decay: λ, decoupled and applied after the step (0.0).
      mask: optional mask for the decay (tree or callable), as in optax.
      update_proj_gap: basis refresh period T (static; None = 50, the CLI default).
      scale: multiplier ``s`` of the rotated leaves' update (1.0).
      bias_correction: Adam bias correction (official ``correct_bias``: on).
      nu_dtype: second-moment dtype; precond_dtype: the bases (default:
        the parameter's compute dtype).
      router: an :class:`optx.Router` (default :func:`optx.default_router`).
      side: the rotated side (static; the official ``proj_type``, see above).

    Complex parameters: refused at init (a TypeError naming the leaf) because the rotated basis
      (singular vectors of the momentum) and Conda's official math are real-only.

    References:
      Wang, Zhou, Dong, Li, Li, Zhou, Lao, Fang, Lin, "Conda: Column-Normalized
      Adam for Training Large Language Models Faster", arXiv 2509.24218 (code:
      github.com/jie040109/Conda).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16))}, 'bias': jnp.zeros(16)}
      >>> tx = optx.conda(learning_rate=1e-3, update_proj_gap=100)
      >>> grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p) + p, params)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    router = routing.as_router(router)
    tx = optax.chain(
        bases.scale_by_conda(
            b1,
            b2,
            eps,
            update_proj_gap=50 if update_proj_gap is None else update_proj_gap,
            scale=scale,
            bias_correction=bias_correction,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            precond_dtype=precond_dtype,
            layout=router,
            side=side,
        ),
        add_decayed_weights_after_step(weight_decay, learning_rate, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return routing.attach_router(tx, router, warn_guessed=True)


@hyperparams.validated(gamma=hyperparams.NONNEGATIVE)
def cosmos(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    lr_ratio: float = 0.1,
    rank: int | None = None,
    gamma: float = 0.2,
    nesterov: bool = True,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int | None = None,
    ns_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
    precond_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    adam_learning_rate: base.ScalarOrSchedule | None = None,
    adam_lr_ratio: float | None = None,
    adam_b1: float | None = None,
    adam_b2: float | None = None,
    adam_eps: float | None = None,
    adam_weight_decay: base.ScalarOrSchedule | None = None,
    preset: str | None = None,
    official_fallback: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """COSMOS: SOAP on a tracked leading eigensubspace, Muon on the residual.

    Official current semantics of ``lliu606/COSMOS`` (``COSMOS_optim.py``
    @61de180e), the algorithm of Liu et al., arXiv 2502.17410 (Algorithm 1).
    Per routed matrix ``G`` (``n × m``, fan-in × fan-out), with the rank-r
    basis ``P`` of the EMA of ``GGᵀ`` tracked by one QR power step per step
    (:func:`optx.scale_by_cosmos`):

    .. math::

      U = P\\,\\frac{P^\\top \\hat G}{\\sqrt{V/(1-β_2^t)} + ε}
        + γ\\,\\sqrt{nm}\\,\\frac{\\mathrm{NS}_5(\\hat G - P P^\\top \\hat G)}{\\|\\cdot\\|_F + ε},

      W ← W - η λ W - η\\,ρ\\,\\sqrt{nm}\\, U / (\\|U\\|_F + ε)

    with ``Ĝ`` the Nesterov-blended sum momentum normalized by its total weight,
    ``V`` the EMA of the squared projected raw gradient, and ``ρ = lr_ratio``:
    every matrix step has per-entry RMS ``η·ρ``. Chain:
    :func:`optx.scale_by_cosmos` | :func:`optx.scale_to_rms` (ρ) |
    ``add_decayed_weights`` | ``scale_by_learning_rate``; the other leaves get
    :func:`optx.adamw` with the full learning rate ``η`` (``adam_lr_ratio``).

    Official-code quirks: the decay is applied before the step with the full
    ``η`` (not ``ηρ``), as ``add_decayed_weights`` does; the official matrix
    rule is "2-D with PyTorch ``size(0) <= 10000``", which on a Flax head
    kernel ``(d, V)`` would pick the head — optx routes by key path (heads and
    embeddings to AdamW); the official non-matrix Adam uses a hard-coded
    ``m ← β₁m + 0.1g`` and bias correction ``1 − 0.9ᵗ`` whatever ``β₁`` —
    identical to AdamW at ``β₁ = 0.9`` (the default), about twice AdamW's step
    at the README's ``β₁ = 0.95``; optx uses the standard AdamW (a deliberate
    deviation, METHODS.md) unless ``official_fallback=True`` reproduces it. Newton–Schulz runs in f32 by default
    (``ns_dtype='bfloat16'`` is the official cast). **Deviation:** a matrix
    whose smaller side is at most ``rank`` goes to the fallback AdamW
    (:meth:`optx.Router.with_rank_limit`); the official code runs COSMOS on it
    with the rank clipped, which :func:`optx.scale_by_cosmos` does when called
    directly. The older (Feb 2025) code projected on the output side with EMA
    momentum and a separate β₃; it is not reproduced.

    State memory per ``m × n`` matrix: ``mn + (m + n) r + r²`` — against SOAP's
    ``2mn + 2(m² + n²)``.

    Args:
      learning_rate: η (scalar or schedule; 1e-3 class default, README 2e-3).
      b1, b2: momentum / second-moment decay (0.9, 0.999; README 0.95, 0.95).
      eps: ε (1e-8).
      mu_dtype: first-moment dtype (also the fallback AdamW's).
      weight_decay: decoupled λ for matrices and, by default, the fallback.
      mask: optional weight-decay mask (tree or callable) over the whole tree.
      lr_ratio: ρ, the matrix step RMS relative to ``η`` (0.1; README 0.2).
      rank: subspace rank r (static; None = 64).
      gamma: weight of the Newton–Schulz residual (0.2).
      nesterov: official Nesterov form (on); ``False`` is the official other
        branch (the raw gradient over ``c₁``, see :func:`optx.scale_by_cosmos`).
      ns_coeffs, ns_steps, ns_dtype: Newton–Schulz settings (``ns_steps``
        None = 5).
      nu_dtype: second-moment dtype (also the fallback AdamW's).
      precond_dtype: storage dtype of ``P`` and ``S`` (default: the
        parameter's compute dtype).
      router: an :class:`optx.Router` (default :func:`optx.default_router`).
      adam_learning_rate: fallback AdamW learning rate (default
        ``adam_lr_ratio × learning_rate``, i.e. the full η).
      adam_lr_ratio, adam_b1, adam_b2, adam_eps, adam_weight_decay: fallback
        AdamW settings; None = the official code's: ratio 1 and the method's
        ``b1``, ``b2``, ``eps``, ``weight_decay``.
      preset: accepted for uniformity with the other matrix methods
        (:data:`optx.FALLBACK_PRESETS`); COSMOS's defaults are its official
        settings.
      official_fallback: use the official code's quirky Adam for the fallback
        leaves (:func:`scale_by_official_cosmos_adam`) instead of AdamW.

    Complex parameters: refused at init (a TypeError naming the leaf) because the rotated bases
      (eigen/subspace iterations) and COSMOS's official math are real-only; complex leaves
      routed to the AdamW fallback are fine.

    References:
      Liu, Xu, Zhang, Kang, Li, Liang, Chen, Zhao, "COSMOS: A Hybrid Adaptive
      Optimizer for Memory-Efficient Training of LLMs", arXiv 2502.17410 (code:
      github.com/lliu606/COSMOS).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((8, 16))}, 'bias': jnp.zeros(16)}
      >>> tx = optx.cosmos(learning_rate=1e-3, rank=4)
      >>> grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p) + p, params)
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    rank = 64 if rank is None else rank
    router = routing.as_router(router).with_rank_limit(rank)
    matrix = optax.chain(
        bases.scale_by_cosmos(
            b1,
            b2,
            eps,
            rank=rank,
            gamma=gamma,
            nesterov=nesterov,
            ns_coeffs=ns_coeffs,
            ns_steps=5 if ns_steps is None else ns_steps,
            ns_dtype=ns_dtype,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            precond_dtype=precond_dtype,
            layout=router,
        ),
        normalization.scale_to_rms(lr_ratio, eps=eps, layout=router),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    if official_fallback:
        fallback = official_cosmos_fallback(locals())
    else:
        fallback = fallback_for("cosmos", locals())
    return routing.routed({routing.MATRIX: matrix, routing.FALLBACK: fallback}, router)


class ScaleByOfficialCosmosAdamState(NamedTuple):
    """State of :func:`scale_by_official_cosmos_adam`."""

    count: jax.Array
    mu: base.Updates
    nu: base.Updates


@hyperparams.validated()
def scale_by_official_cosmos_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The official COSMOS code's Adam for non-matrix parameters, quirks included.

    .. math::

      m ← β_1 m + 0.1\\, g, \\quad v ← β_2 v + (1-β_2) g^2, \\quad
      u = \\frac{m / (1 - 0.9^t)}{\\sqrt{v} / \\sqrt{1-β_2^t} + ε}

    (``lliu606/COSMOS`` ``COSMOS_optim.py`` @61de180e, the ``else`` branch of
    ``cosmos``): the ``0.1`` and ``0.9`` are hard-coded whatever ``β₁``, so with
    ``β₁ = 0.9`` this is Adam, and with ``β₁ = 0.95`` its momentum mass tends
    to 2 (steps about twice Adam's). For number-matching only; :func:`optx.cosmos`
    uses AdamW unless ``official_fallback=True``.

    References:
      Liu et al., "COSMOS: A Hybrid Adaptive Optimizer for Memory-Efficient
      Training of LLMs", arXiv 2502.17410 (code: github.com/lliu606/COSMOS).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_official_cosmos_adam(b1=0.9)
      >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
      >>> round(float(u[0]), 4)   # Adam's first step: sign(g)
      1.0
    """
    mu_dtype = base.canonicalize_dtype(mu_dtype)
    nu_dtype = base.canonicalize_dtype(nu_dtype)

    def init_fn(params: base.Params) -> ScaleByOfficialCosmosAdamState:
        return ScaleByOfficialCosmosAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params, dtype=mu_dtype),
            nu=optax.tree.zeros_like(params, dtype=nu_dtype),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByOfficialCosmosAdamState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByOfficialCosmosAdamState]:
        del params, extra
        count = optax.safe_increment(state.count)
        bc1_ = base.bias_correction(0.9, count)
        bc2_ = base.bias_correction(b2, count)

        def leaf(g: jax.Array, mu: jax.Array, nu: jax.Array) -> tuple[Any, Any, Any]:
            g32 = g.astype(base.compute_dtype(g.dtype))
            bc1, bc2 = bc1_.astype(g32.dtype), bc2_.astype(g32.dtype)
            m = b1 * mu.astype(g32.dtype) + 0.1 * g32
            v = b2 * nu.astype(g32.dtype) + base.one_minus(b2, g32.dtype) * jnp.square(g32)
            u = (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps)
            return u.astype(g.dtype), m.astype(mu.dtype), v.astype(nu.dtype)

        out = jax.tree.map(leaf, updates, state.mu, state.nu)
        u, mu, nu = base.unzip_tree(updates, out, 3)
        return u, ScaleByOfficialCosmosAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def official_cosmos_fallback(args: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
    """The official COSMOS non-matrix update: its quirky Adam, decay before the
    step (``W ← W(1 − ηλ)``), the full learning rate (from the alias arguments
    ``args``, as :func:`fallback_for`)."""
    s = fallback_settings(
        "cosmos", args["preset"], args, **{name: args[name] for name in FALLBACK_ARGS}
    )
    lr = args["adam_learning_rate"]
    if lr is None:
        lr = scaled_learning_rate(args["learning_rate"], s.adam_lr_ratio)
    return optax.chain(
        scale_by_official_cosmos_adam(
            s.adam_b1, s.adam_b2, s.adam_eps, mu_dtype=args["mu_dtype"], nu_dtype=args["nu_dtype"]
        ),
        optax.add_decayed_weights(s.adam_weight_decay, args["mask"]),
        optax.scale_by_learning_rate(lr),
    )


_ROTATED_STATIC = ("update_proj_gap", "max_precond_dim", "precond_dtype")

registry.register(
    registry.OptimizerSpec(
        name="soap",
        factory=soap,
        paper="2409.11321",
        family="rotated",
        defaults={"learning_rate": 3e-3},
        lr_grid=(3e-3, 1e-2, 3e-2),
        static_args=(*_ROTATED_STATIC, "factorization"),
        uses_matrix_path=True,
        test_overrides={"learning_rate": 1e-2, "weight_decay": 0.0},
        description="SOAP (official semantics: first step initializes, eigh + power-QR)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="conda",
        factory=conda,
        paper="2509.24218",
        family="rotated",
        defaults={"learning_rate": 3e-3},
        lr_grid=(1e-3, 3e-3, 1e-2),
        static_args=("update_proj_gap", "precond_dtype"),
        uses_matrix_path=True,
        # The SVD basis turns ulp-level input changes (accumulated or sharded
        # gradients) into ~1e-4-of-scale update changes (measured; 2.3e-6 absolute at
        # one element under inject_hyperparams' float32 hyper-parameters since the f64 rule).
        equivalence_tolerance=40.0,
        description="Conda (official: Adam with v in the momentum's SVD basis)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="cosmos",
        factory=cosmos,
        paper="2502.17410",
        family="rotated",
        defaults={"learning_rate": 2e-3},
        lr_grid=(1e-3, 2e-3, 4e-3, 8e-3),
        static_args=("rank", "precond_dtype"),
        uses_matrix_path=True,
        # Matrix steps of RMS 1e-3 (lr_ratio 0.1, official) and the fallback AdamW at
        # lr 1e-3, as optx.adamw is tested (inject_hyperparams rounds b2 = 0.999 to
        # f32: a 7e-6 relative change of AdamW's step). eigh + Newton-Schulz turn
        # ulp-level input changes into ~1e-4-of-scale update changes (measured).
        test_overrides={"learning_rate": 1e-2, "rank": 2, "adam_lr_ratio": 0.1},
        equivalence_tolerance=20.0,
        description="COSMOS (official current code), AdamW fallback",
    )
)
