"""Element-wise adaptive optimizers and their registrations (the family's home).

AdamW (with ``nu_dtype``), AdamP/SGDP, AdaBelief, Lion and Lion-𝒦, EXAdam,
SGD-SaI and AGVM-wrapped SGD. The primitives live in
:mod:`optx._src.adaptive`, :mod:`optx._src.radial`, :mod:`optx._src.sign` and
:mod:`optx._src.variance`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optx._src import (
    adaptive,
    base,
    curvature,
    hyperparams,
    moments,
    nonfinite,
    orthogonalization,
    radial,
    registry,
    routing,
    sign,
    variance,
)


@hyperparams.validated()
def adamw(
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
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdamW (Loshchilov & Hutter, arXiv 1711.05101) with ``mu_dtype`` and ``nu_dtype``.

    .. math::

      u_t = -η_t\\,\\big(\\hat m_t / (\\sqrt{\\hat v_t + ε_{root}} + ε) + λ θ_{t-1}\\big)

    The same numbers, defaults and positional order as ``optax.adamw``
    (``optx.adamw(lr, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask)``),
    plus ``nu_dtype`` so bf16 models can keep the second moment in f32. The
    routed aliases' fallback (embeddings, heads, norms, biases) is this AdamW
    with PyTorch's exact ``1 − βᵗ`` (``torch_adamw``), as their official
    codes compute it.

    Args:
      learning_rate: scalar or schedule.
      b1, b2, eps, eps_root: Adam's hyper-parameters.
      mu_dtype: first-moment dtype (default: the parameter dtype).
      weight_decay: decoupled decay coefficient λ (scalar or schedule; optax's 1e-4).
      mask: optional weight-decay mask (tree or callable), as in optax.
      nesterov: NAdam-style first moment.
      nu_dtype: second-moment dtype (default: the parameter dtype).

    Complex parameters: supported (phase-equivariant): the second moment is ``|g|²``, as in
      ``optax.adamw``.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
      arXiv 1711.05101; Kingma & Ba, "Adam", arXiv 1412.6980.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.adamw(1e-3, nu_dtype=jnp.float32)
      >>> state = tx.init({'w': jnp.zeros((2, 2), jnp.bfloat16)})
    """
    return optax.chain(
        moments.scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def torch_adamw(
    learning_rate: base.ScalarOrSchedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: base.ScalarOrSchedule,
    mask: base.Mask | None,
    mu_dtype: base.DTypeLike | None,
    nu_dtype: base.DTypeLike | None,
    *,
    eps_placement: str = "corrected",
) -> optax.GradientTransformationExtraArgs:
    """AdamW as ``torch.optim.AdamW`` computes it: :func:`adamw` with the exact
    ``1 − βᵗ`` (``optx.scale_by_adam(exact_bias_correction=True)``), the
    fallback of the aliases whose official code is PyTorch. ``eps_placement=
    'uncorrected'`` is the Hugging Face form (ε on the uncorrected ``√v``)."""
    return optax.chain(
        moments.scale_by_adam(
            b1,
            b2,
            eps,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            eps_placement=eps_placement,
            exact_bias_correction=True,
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
        lr_grid=(1e-3, 3e-3, 1e-2, 3e-2),
        description="AdamW (optax numbers) with mu_dtype/nu_dtype; the baseline",
    )
)


# ----------------------------------------------------------------------------
# AdamP and SGDP (arXiv 2006.08217)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def adamp(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    nesterov: bool = False,
    router: routing.Router | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdamP: Adam whose update loses its radial part on scale-invariant weights.

    Official ``clovaai/AdamP`` (``adamp`` 0.3.0) semantics. Per tensor, with
    ``d = m̂/(√v̂ + ε)`` (or the official Nesterov look-ahead, see
    :func:`optx.scale_by_adam_lookahead`):

    .. math::

      \\text{if}\\ \\max_i |\\cos(g_i, w_i)| < δ/\\sqrt{n}:\\quad
      d_i ← d_i - \\hat w_i\\langle \\hat w_i, d_i\\rangle,\\quad ρ = \\text{wd\\_ratio};
      \\ \\text{else}\\ ρ = 1

      w ← w - η\\,(d + λ ρ w)

    tried per channel (``i`` = output neuron, ``n`` = fan-in), then per layer
    (``i`` = the whole matrix, ``n`` = its size) — see :mod:`optx._src.radial`
    and :func:`optx.constraints.project_out_radial`.

    Official-code details: the test uses the raw **gradient**, the projection
    the Adam direction; ``ŵ = w/(‖w‖ + ε)`` with the pre-step weights; the
    decay ``w(1 − ηλρ)`` is decoupled and applied before the step (the same as
    ``−η λρ w`` in update form); tensors with < 2 dims are never projected.
    Deviation: the channel is the **output** axis of the leaf's layout (Flax
    ``(in, out)`` kernels; PyTorch's dim 0), a scanned ``(L, in, out)`` stack
    is tested per layer, and only leaves the router gives a layout are
    projected (by default not embeddings and output heads, which the official
    code would test too).

    Args:
      learning_rate: η (official default 1e-3).
      b1, b2, eps: Adam's hyper-parameters.
      mu_dtype: first-moment dtype.
      weight_decay: λ (official default 0; the README uses 1e-2).
      mask: optional weight-decay mask (tree or callable), as in optax.
      delta: δ of the cosine test (0.1).
      wd_ratio: decay multiplier on projected tensors (0.1).
      nesterov: the official Nesterov look-ahead (not optax's NAdam).
      router: the :class:`optx.Router` whose layouts define channels (default
        :func:`optx.default_router`).
      nu_dtype: second-moment dtype.

    Complex parameters: supported (phase-equivariant): the cosine test and the radial projection
      use Hermitian inner products ``⟨g, w⟩ = Σ ḡ w`` and ``|·|²`` norms.

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights", ICLR 2021, arXiv 2006.08217 (Alg. 2; code:
      github.com/clovaai/AdamP).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((4, 3))}, 'bias': jnp.zeros(3)}
      >>> tx = optx.adamp(1e-3, weight_decay=1e-2)
      >>> updates, state = tx.update(params, tx.init(params), params)
      >>> params = optax.apply_updates(params, updates)
    """
    router = routing.as_router(router)
    if nesterov:
        inner = adaptive.scale_by_adam_lookahead(b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype)
    else:
        inner = moments.scale_by_adam(
            b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, exact_bias_correction=True
        )
    return routing.attach_router(
        optax.chain(
            radial.project_out_radial(
                inner, delta, wd_ratio, weight_decay, eps, layout=router, mask=mask
            ),
            optax.scale_by_learning_rate(learning_rate),
        ),
        router,
        warn_guessed=True,
    )


@hyperparams.validated()
def sgdp(
    learning_rate: base.ScalarOrSchedule = 0.1,
    momentum: float = 0.0,
    nesterov: bool = False,
    mu_dtype: base.DTypeLike | None = None,
    *,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    project_momentum_buffer: bool = True,
    router: routing.Router | None = None,
    dampening: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """SGDP: SGD-momentum whose update loses its radial part on scale-invariant weights.

    Official ``clovaai/AdamP`` ``SGDP`` semantics:

    .. math::

      b_t = μ b_{t-1} + (1 - \\text{dampening})\\, g_t,\\qquad d_t = \\begin{cases} g_t + μ b_t & \\text{nesterov} \\\\
                                                      b_t & \\text{otherwise} \\end{cases}

      w ← w - η\\Big(Π(d_t) + \\frac{λ ρ}{1-μ} w\\Big)

    with the projection ``Π`` and ratio ``ρ`` of :func:`optx.adamp`. Official
    quirks reproduced: the decay carries the factor ``1/(1 − μ)``; with
    ``nesterov=False`` the direction *is* the momentum buffer and the official
    code projects it in place, so a projected buffer carries into later steps
    (``project_momentum_buffer=False`` keeps the buffer unprojected). The
    official ``dampening`` (default 0) scales the gradient entering the buffer
    (``adamp/sgdp.py`` @7f6f038 line 70). The class has
    no default learning rate (0.1 here, the README's); the README also uses
    ``momentum=0.9, nesterov=True, weight_decay=1e-5``.

    Args:
      learning_rate: η.
      momentum: μ (official default 0).
      nesterov: Nesterov momentum (official default False).
      mu_dtype: momentum dtype.
      weight_decay: λ (official default 0).
      mask: optional weight-decay mask (tree or callable), as in optax.
      eps, delta, wd_ratio: as :func:`optx.adamp`.
      project_momentum_buffer: reproduce the official in-place projection of
        the buffer when ``nesterov=False``.
      router: see :func:`optx.adamp`.
      dampening: the official dampening of the buffer (default 0).

    Complex parameters: supported (phase-equivariant): the cosine test and the radial projection
      use Hermitian inner products ``⟨g, w⟩ = Σ ḡ w`` and ``|·|²`` norms.

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
      Scale-invariant Weights", ICLR 2021, arXiv 2006.08217 (Alg. 1; code:
      github.com/clovaai/AdamP).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((4, 3))}}
      >>> tx = optx.sgdp(0.1, momentum=0.9, nesterov=True, weight_decay=1e-5)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    router = routing.as_router(router)
    inner = moments.scale_by_momentum(
        momentum, kind="sum", nesterov=nesterov, mu_dtype=mu_dtype, dampening=dampening
    )
    feedback = None
    if project_momentum_buffer and not nesterov:

        def feedback(state: moments.ScaleByMomentumState, projected: Any) -> Any:
            return state._replace(mu=optax.tree.cast_like(projected, state.mu))

    return routing.attach_router(
        optax.chain(
            radial.project_out_radial(
                inner,
                delta,
                wd_ratio,
                _scaled(weight_decay, 1.0 / (1.0 - momentum)),
                eps,
                layout=router,
                project_inner_state=feedback,
                mask=mask,
            ),
            optax.scale_by_learning_rate(learning_rate),
        ),
        router,
        warn_guessed=True,
    )


def _scaled(value: base.ScalarOrSchedule, factor: Any) -> base.ScalarOrSchedule:
    if callable(value):
        return lambda count: factor * value(count)
    return factor * value


# ----------------------------------------------------------------------------
# AdaBelief (arXiv 2010.07468)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def adabelief(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float | None = None,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    rectify: bool = True,
    degenerated_to_sgd: bool = True,
    amsgrad: bool = False,
    weight_decouple: bool = True,
    fixed_decay: bool = False,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaBelief with the official defaults (rectified, decoupled decay).

    ``adabelief-pytorch`` 0.2.1 semantics (see :func:`optx.scale_by_belief`
    for the direction ``u_t`` and every quirk):

    .. math::

      w ← w - η\\,(u_t + λ w)\\quad\\text{(weight\\_decouple; }
      \\text{fixed\\_decay: } w ← w - η u_t - λ w\\text{)}

    or ``g ← g + λw`` before the moments when ``weight_decouple=False``. The
    decay always uses the pre-step weights and applies even on steps the
    rectification skips.

    How it differs from ``optax.adabelief`` (0.2.8): optax has no
    rectification (the official default), no AMSGrad, no weight decay and no
    ``mu_dtype``/``nu_dtype``; its non-rectified numbers are the official
    ones with ``eps_root = eps``. ``optx.adabelief(lr, rectify=False)`` equals
    ``optax.adabelief(lr)`` (tested), and ``eps_root`` exposes optax's
    separate in-state ε.

    Args:
      learning_rate: η (1e-3).
      b1, b2: EMA rates (0.9, 0.999).
      eps: ε (official 1e-16; README: 1e-8 for CNNs on images).
      eps_root: ε added to the stored ``s`` (None = ``eps``, official).
      mu_dtype: first-moment dtype.
      weight_decay: λ (official default 0).
      mask: optional decay mask (tree or callable), as in optax.
      rectify, degenerated_to_sgd, amsgrad: see :func:`optx.scale_by_belief`.
      weight_decouple: decoupled (AdamW-style, default) or L2 decay.
      fixed_decay: decoupled decay not multiplied by η.
      nu_dtype: second-moment dtype.

    Complex parameters: supported (phase-equivariant): the belief is ``|g − m|²``.

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
      Observed Gradients", NeurIPS 2020, arXiv 2010.07468 (Alg. 2; code:
      github.com/juntang-zhuang/Adabelief-Optimizer).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'w': jnp.ones((3, 2))}
      >>> tx = optx.adabelief(1e-3)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    direction = adaptive.scale_by_belief(
        b1,
        b2,
        eps,
        eps_root,
        rectify=rectify,
        degenerated_to_sgd=degenerated_to_sgd,
        amsgrad=amsgrad,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
    )
    if not weight_decouple:
        return optax.chain(
            optax.add_decayed_weights(weight_decay, mask),
            direction,
            optax.scale_by_learning_rate(learning_rate),
        )
    if fixed_decay:
        return optax.chain(
            direction,
            optax.scale_by_learning_rate(learning_rate),
            optax.add_decayed_weights(_scaled(weight_decay, -1.0), mask),
        )
    return optax.chain(
        direction,
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# Lion and Lion-K (arXiv 2302.06675, 2310.05898)
# ----------------------------------------------------------------------------


@hyperparams.validated(b1=hyperparams.UNIT_CLOSED)
def lion_kappa(
    learning_rate: base.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    kappa: str | Callable[[jax.Array], jax.Array] = "l1",
    delta: float = 1.0,
    p: float = 3.0,
    ns_coeffs: orthogonalization.CoefficientSpec = "keller",
    ns_steps: int | None = None,
    ns_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Lion-𝒦: Lion with ``sign`` replaced by the (sub)gradient of a convex 𝒦.

    .. math::

      c_t = β_1 m_{t-1} + (1-β_1) g_t,\\qquad
      w ← w - η\\,(∇𝒦(c_t) + λ w),\\qquad m_t = β_2 m_{t-1} + (1-β_2) g_t

    With decoupled decay λ > 0 the iterates solve ``min f(x) + 𝒦*(λx)/λ``;
    for a norm 𝒦 that is ``min f`` over the dual-norm ball ``‖x‖_* ≤ 1/λ``.
    The catalogue (``kappa=``; constraint interpretation of each in
    :mod:`optx._src.sign`): ``'l1'`` (Lion; box ``‖x‖_∞ ≤ 1/λ``), ``'l2'``
    (normalized momentum; ``‖x‖₂ ≤ 1/λ``), ``'linf'`` (greedy coordinate
    step; ``‖x‖₁ ≤ 1/λ``), ``'lp'`` (``‖x‖_q ≤ 1/λ``, ``1/p + 1/q = 1``),
    ``'l2_squared'`` (momentum SGD; L2 penalty ``λ‖x‖²/2``), ``'huber'``
    (``clip(c/δ, ±1)``; box plus ``δλ‖x‖²/2``), ``'relativistic'``
    (``c/√(c²+δ²)``; box plus a barrier), ``'log_cosh'`` (``tanh(c/δ)``; box
    plus an entropy term), ``'nuclear'`` (Newton–Schulz polar factor per
    matrix — Muon with Lion's momentum; spectral ball ``‖X‖₂ ≤ 1/λ``). Norms
    are per block: per matrix for leaves with a layout, per leaf otherwise.

    Lion-𝒦 paper quirks: the paper's momentum tracks ``−∇f`` (equivalent for
    the even 𝒦 above) and some of its statements use the implicit decay
    ``λ x_{t+1}``; optx uses Lion's explicit ``λ x_t``, as the official Lion
    code. The paper ships no code: the catalogue follows its §3 examples.

    Args:
      learning_rate: η (official Lion default 1e-4: 3–10× smaller than AdamW's).
      b1, b2: Lion's betas (0.9, 0.99).
      mu_dtype: momentum dtype.
      weight_decay: λ (official Lion default 0; use 3–10× AdamW's).
      mask: optional decay mask.
      kappa: a name (see above) or a callable ``c -> ∇𝒦(c)`` per leaf (static).
      delta: δ of ``'huber'``, ``'relativistic'``, ``'log_cosh'``.
      p: exponent of ``'lp'``.
      ns_coeffs, ns_steps, ns_dtype, strategy: Newton–Schulz settings of
        ``'nuclear'`` (``ns_steps`` default 5).
      router: the :class:`optx.Router` whose layouts define matrix blocks.

    Complex parameters: supported (phase-equivariant): element-wise κ act on ``|c|`` times the
      phase ``c/|c|``, norms use ``|·|²``, the nuclear κ runs Newton–Schulz with conjugate
      transposes.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms",
      arXiv 2302.06675 (Alg. 2); Chen, Liu, Liang, Liu, "Lion Secretly Solves
      Constrained Optimization, As Lyapunov Predicts", ICLR 2024,
      arXiv 2310.05898.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((4, 3))}, 'bias': jnp.zeros(3)}
      >>> tx = optx.lion_kappa(3e-4, kappa='nuclear', weight_decay=0.1)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    router = routing.as_router(router)
    return routing.attach_router(
        optax.chain(
            sign.scale_by_lion_kappa(
                b1,
                b2,
                kappa,
                delta=delta,
                p=p,
                ns_coeffs=ns_coeffs,
                ns_steps=5 if ns_steps is None else ns_steps,
                ns_dtype=ns_dtype,
                layout=router,
                strategy=strategy,
                mu_dtype=mu_dtype,
            ),
            optax.add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(learning_rate),
        ),
        router,
        warn_guessed=isinstance(kappa, str) and kappa in sign.BLOCK_KAPPAS,
    )


@hyperparams.validated(b1=hyperparams.UNIT_CLOSED)
def lion(
    learning_rate: base.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Lion (EvoLved Sign Momentum), the ℓ1 member of :func:`optx.lion_kappa`.

    .. math::

      c_t = β_1 m_{t-1} + (1-β_1) g_t,\\qquad
      w ← w - η\\,(\\mathrm{sign}(c_t) + λ w),\\qquad m_t = β_2 m_{t-1} + (1-β_2) g_t

    Official ``google/automl`` ``lion_pytorch.py`` semantics: the momentum is
    updated *after* it is used, ``sign(0) = 0``, decay decoupled and
    multiplied by η, applied before the step. With λ > 0 Lion minimizes ``f``
    over the box ``‖x‖_∞ ≤ 1/λ`` (arXiv 2310.05898). lion-pytorch's
    ``decoupled_weight_decay=True`` (decay not multiplied by η) is
    ``weight_decay = λ/η`` for a constant learning rate.

    Same positional order as ``optax.lion`` (``lr, b1, b2, mu_dtype,
    weight_decay, mask``). How it differs from ``optax.lion``: optax's default
    ``weight_decay`` is 1e-3 (official: 0) and with f32 ``mu_dtype`` on bf16 params optax returns
    f32 updates (optx returns the gradient's dtype); with the same arguments
    in f32 the numbers are identical (tested).

    Args:
      learning_rate: η (official 1e-4).
      b1, b2: (0.9, 0.99) official; (0.95, 0.98) is common for LMs.
      mu_dtype: momentum dtype.
      weight_decay: λ (official 0).
      mask: optional decay mask.

    Complex parameters: supported (phase-equivariant): the sign of a complex number is its phase
      ``c/|c|`` (``jnp.sign``), as in ``optax.lion``.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms",
      arXiv 2302.06675 (Alg. 2; code: github.com/google/automl/tree/master/lion).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.lion(1e-4)
      >>> w = jnp.zeros(2)
      >>> u, s = tx.update(jnp.array([0.5, -2.0]), tx.init(w), w)
      >>> u
      Array([-0.0001,  0.0001], dtype=float32)
    """
    return lion_kappa(learning_rate, b1, b2, mu_dtype, weight_decay, mask, kappa="l1")


# ----------------------------------------------------------------------------
# EXAdam (arXiv 2412.20302)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def exadam(
    learning_rate: base.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 0.0,
    mask: base.Mask | None = None,
    *,
    dynamic_step_size: bool = True,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """EXAdam: Adam with cross-moment debiasing, gradient acceleration and a growing step.

    .. math::

      w ← w - η\\,\\big(α_t \\frac{\\tilde m_t + \\tilde g_t}{\\sqrt{\\tilde v_t} + ε} + λ w\\big)

    with ``m̃, ṽ, g̃`` and ``α_t = ln(√2·√(t+1))`` of :func:`optx.scale_by_exadam`.
    Pinned to the paper's **v1** rule (the repo's first commit): the dynamic
    step size is on. ``dynamic_step_size=False`` is the repo's HEAD rule
    (arXiv v2, the golden reference). Official-code details: decoupled decay
    ``w ← w − ηλw`` first (with η, not ``α_t η``); ε enters the two debiasing
    ratios and the denominator. The HEAD file lacks ``import numpy`` (a
    ``NameError`` on construction); irrelevant here.

    Args:
      learning_rate: η (1e-3; README: vision 1e-3, NLP 3e-4, RL 5e-4).
      b1, b2, eps: (0.9, 0.999, 1e-8).
      mu_dtype: first-moment dtype.
      weight_decay: λ (official default 0; README: vision 1e-4, NLP 1e-5).
      mask: optional decay mask.
      dynamic_step_size: paper v1 (True) or repo HEAD (False).
      nu_dtype: second-moment dtype.

    Complex parameters: supported (phase-equivariant): ``v`` uses ``|g − m|²`` and ``d₂`` uses
      ``|m|²``.

    References:
      Adly, "EXAdam: The Power of Adaptive Cross-Moments", arXiv 2412.20302
      (§3; code: github.com/AhmedMostafa16/EXAdam).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.exadam(1e-3, dynamic_step_size=False)
      >>> w = jnp.zeros(2)
      >>> u, s = tx.update(jnp.ones(2), tx.init(w), w)
    """
    return optax.chain(
        adaptive.scale_by_exadam(
            b1, b2, eps, dynamic_step_size=dynamic_step_size, mu_dtype=mu_dtype, nu_dtype=nu_dtype
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------
# SGD-SaI (arXiv 2412.11768)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def sgd_sai(
    learning_rate: base.ScalarOrSchedule = 1e-2,
    b1: float = 0.9,
    eps: float = 1e-8,
    mu_dtype: base.DTypeLike | None = None,
    weight_decay: base.ScalarOrSchedule = 1e-2,
    mask: base.Mask | None = None,
    *,
    scale_rule: str = "gsnr",
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD-SaI: SGD-momentum with per-block learning-rate scales set at initialization.

    .. math::

      w ← w - η\\,(\\mathrm{gsnr}_b M_t + λ w),\\qquad
      \\mathrm{gsnr}_b = \\frac{\\|g_1^{(b)}\\|_2}{\\mathrm{std}(g_1^{(b)}) + ε}

    with ``M`` and the frozen g-SNR of :func:`optx.scale_by_sai` (official
    ``sgd-sai`` 1.0.3: unbiased std; the first buffer is a copy of ``g``;
    decoupled decay ``w(1 − ηλ)`` with the pre-step weights). Deviation: a
    single-element tensor gets the scale 1 where the official ``nan_to_num``
    gives ``|g|/ε`` (≈ ``1e8·|g|``, a diverging step; see
    :func:`optx.scale_by_sai`). Blocks are per matrix for
    leaves with a layout (per layer of a scanned stack), per leaf otherwise.
    Memory: one momentum plus one scalar per block (half of AdamW's state).

    Args:
      learning_rate: η (official 1e-2).
      b1: the EMA coefficient of the momentum ``M ← b1·M + (1 − b1)·g``
        (the official ``momentum``, 0.9).
      eps: ε of the g-SNR (1e-8).
      mu_dtype: momentum dtype.
      weight_decay: λ (official 1e-2).
      mask: optional decay mask.
      scale_rule: ``'gsnr'`` (1.0.3), ``'gsnr_max'`` (1.0.4), ``'sqrt_numel'``
        (1.1.0); see :func:`optx.scale_by_sai`.
      router: the :class:`optx.Router` whose layouts define the blocks.

    Complex parameters: supported (phase-equivariant): the g-SNR uses ``|g|²``
      and ``|g − mean|²``.

    References:
      Xu et al., "No More Adam: Learning Rate Scaling at Initialization is All
      You Need", arXiv 2412.11768 (Alg. 1; code:
      github.com/AnonymousAlethiometer/SGD_SaI).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'hidden': {'kernel': jnp.ones((4, 3))}, 'bias': jnp.zeros(3)}
      >>> tx = optx.sgd_sai(1e-2)
      >>> updates, state = tx.update(params, tx.init(params), params)
    """
    router = routing.as_router(router)
    return routing.attach_router(
        optax.chain(
            adaptive.scale_by_sai(b1, eps, scale_rule=scale_rule, layout=router, mu_dtype=mu_dtype),
            optax.add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(learning_rate),
        ),
        router,
        warn_guessed=True,
    )


# ----------------------------------------------------------------------------
# AGVM around SGD-momentum (arXiv 2210.11078)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def agvm_sgd(
    learning_rate: base.ScalarOrSchedule = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    mu_dtype: base.DTypeLike | None = None,
    *,
    weight_decay: base.ScalarOrSchedule = 1e-4,
    mask: base.Mask | None = None,
    groups: Sequence[str] | None = None,
    agvm_decay: float = 0.97,
    update_interval: int | None = None,
    start_step: int | None = None,
    stop_step: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD-momentum with AGVM's gradient-variance modulated group learning rates.

    The paper's main configuration (Faster R-CNN, ``torch.optim.SGD`` with
    coupled L2 decay, momentum 0.9, decay 1e-4) wrapped by :func:`optx.agvm`:

    .. math::

      b_t = μ b_{t-1} + g_t + λ w,\\qquad w ← w - η\\, s_{i(w)}\\, b_t

    where ``s_i`` is the EMA of ``√clip((D₀ + 10⁻⁶)/(D_i + 10⁻⁶), 0.5, 10)``,
    ``D_i = 1 − cos(g^A_i, g^B_i)`` measured every ``interval`` steps from the
    two half-batch gradients (extra args ``grads_a``, ``grads_b``; compute them
    with :func:`optx.elementwise.half_batch_gradients`). See :mod:`optx._src.variance`
    for the official hook's window semantics. For AdamW/LAMB/LARS wrap them
    directly: ``optx.agvm(optx.adamw(...), groups, adam_preconditioning=True)``.

    Args:
      learning_rate: η.
      momentum: μ of SGD (0.9).
      nesterov: Nesterov SGD.
      mu_dtype: momentum dtype.
      weight_decay: λ (coupled, as torch SGD; 1e-4).
      mask: optional weight-decay mask (tree or callable), as in optax.
      groups: module-group patterns, group 0 the reference (see
        :func:`optx.agvm`; default: top-level keys).
      agvm_decay: α of the scale EMA (official ``momentum`` 0.97).
      update_interval, start_step, stop_step: the measurement schedule
        (official 5, 500, never; static).

    Complex parameters: supported (phase-equivariant): the half-batch cosines
      use ``Re⟨a, b⟩ = Re Σ ā b`` and ``|·|²`` norms.

    Non-finite inputs: a NaN or Inf in ``grads_a`` or ``grads_b`` (or anything the
    step computes from it) skips the whole step — zero updates, state unchanged,
    counted in the outer :class:`optx.SkipIfNotFiniteState` (README "Reliability",
    :func:`optx.skip_if_not_finite`).

    References:
      Xue et al., "Large-batch Optimization for Dense Visual Predictions",
      NeurIPS 2022, arXiv 2210.11078 (code: github.com/Sense-X/AGVM).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> params = {'backbone': {'w': jnp.ones(3)}, 'head': {'w': jnp.ones(2)}}
      >>> tx = optx.agvm_sgd(0.1, groups=('backbone', '.*'), start_step=0)
      >>> g = jax.tree.map(jnp.ones_like, params)
      >>> u, s = tx.update(g, tx.init(params), params, grads_a=g, grads_b=g)
    """
    inner = optax.chain(
        optax.add_decayed_weights(weight_decay, mask),
        moments.with_moment_dtype(
            optax.trace(decay=momentum, nesterov=nesterov), "trace", mu_dtype
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
    tx = variance.agvm(
        inner,
        groups,
        decay=agvm_decay,
        update_interval=update_interval,
        start_step=start_step,
        stop_step=stop_step,
    )
    return nonfinite.skip_if_not_finite(tx, ("grads_a", "grads_b"), check_outputs=False)


def _noisy_half_batch_grads(ctx: registry.ExtraArgsContext) -> dict[str, Any]:
    """Registry extra args for AGVM: two deterministic "half-batch" gradients.

    The conformance problems have no batches, so ``g ± 0.5·|g|·ξ`` with ξ a
    key-dependent standard normal per leaf stands in for the two halves (their
    mean is the true gradient).
    """
    xi = curvature.random_probes(ctx.key, ctx.grads, "gaussian")  # one draw, all leaves

    def noise_of(g: jax.Array, z: jax.Array) -> jax.Array:
        if jnp.iscomplexobj(g):  # g·ξ with a real ξ: rotates with a global phase
            return 0.5 * g * jnp.real(z).astype(g.dtype)
        return 0.5 * jnp.abs(g) * z

    noise = jax.tree.map(noise_of, ctx.grads, xi)
    return {
        "grads_a": jax.tree.map(jnp.add, ctx.grads, noise),
        "grads_b": jax.tree.map(jnp.subtract, ctx.grads, noise),
    }


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------

_ADAPTIVE_GRID = (3e-4, 1e-3, 3e-3, 1e-2)

registry.register(
    registry.OptimizerSpec(
        name="adamp",
        factory=adamp,
        paper="2006.08217",
        family="elementwise",
        defaults={"learning_rate": 1e-3, "weight_decay": 1e-2},
        lr_grid=_ADAPTIVE_GRID,
        static_args=("nesterov",),
        description="AdamP (official clovaai semantics), channel = output axis",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="sgdp",
        factory=sgdp,
        paper="2006.08217",
        family="elementwise",
        defaults={"learning_rate": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-5},
        lr_grid=(0.03, 0.1, 0.3, 1.0),
        static_args=("nesterov", "project_momentum_buffer"),
        test_overrides={"learning_rate": 0.01},
        description="SGDP (official clovaai semantics, README settings)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="adabelief",
        factory=adabelief,
        paper="2010.07468",
        family="elementwise",
        defaults={"learning_rate": 1e-3},
        lr_grid=_ADAPTIVE_GRID,
        static_args=("rectify", "degenerated_to_sgd", "amsgrad", "weight_decouple", "fixed_decay"),
        description="AdaBelief (official 0.2.1: rectified, eps in state)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="lion",
        factory=lion,
        paper="2302.06675",
        family="elementwise",
        defaults={"learning_rate": 1e-4},
        lr_grid=(1e-4, 3e-4, 1e-3, 3e-3),
        test_overrides={"learning_rate": 3e-3},
        description="Lion (official google/automl semantics)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="lion_kappa",
        factory=lion_kappa,
        paper="2310.05898",
        family="elementwise",
        defaults={"learning_rate": 1e-4, "kappa": "nuclear"},
        lr_grid=(3e-5, 1e-4, 3e-4, 1e-3),
        static_args=("kappa",),
        test_overrides={"learning_rate": 3e-3},
        description="Lion-K, nuclear-norm member (orthogonalized Lion) as the registry default",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="exadam",
        factory=exadam,
        paper="2412.20302",
        family="elementwise",
        defaults={"learning_rate": 1e-3},
        lr_grid=_ADAPTIVE_GRID,
        static_args=("dynamic_step_size",),
        description="EXAdam (paper v1 rule with the growing step size)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="sgd_sai",
        factory=sgd_sai,
        paper="2412.11768",
        family="elementwise",
        defaults={"learning_rate": 1e-2},
        lr_grid=(3e-3, 1e-2, 3e-2, 1e-1),
        static_args=("scale_rule",),
        description="SGD-SaI (official 1.0.3: g-SNR frozen at step 1)",
    )
)
registry.register(
    registry.OptimizerSpec(
        name="agvm_sgd",
        factory=agvm_sgd,
        paper="2210.11078",
        family="elementwise",
        defaults={"learning_rate": 0.1},
        lr_grid=(0.03, 0.1, 0.3, 1.0),
        static_args=("nesterov", "groups", "update_interval", "start_step", "stop_step"),
        extra_args=_noisy_half_batch_grads,
        test_overrides={"learning_rate": 0.01, "start_step": 0, "update_interval": 2},
        description="AGVM around SGD-momentum (official hook semantics)",
    )
)
