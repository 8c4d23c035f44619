"""optx: composable JAX/Optax gradient transformations for recent optimizer papers.

Every optimizer is an ``optax.GradientTransformationExtraArgs`` built as an
``optax.chain`` of small primitives; matrix methods route hidden matrices by
key path (:class:`optx.Router`) and see them through explicit layouts
(:class:`optx.MatrixLayout`). See README.md for the method table.
"""

__version__ = "0.1.0"

# Foundation: contract helpers, layouts, routing, sharding, registry.
from optx._src.accumulation import AccumulateGradientsState, accumulate_gradients

# Optimizers (each module registers its optimizers on import).
from optx._src.aliases.elementwise import adamw
from optx._src.aliases.orthogonalized import FALLBACK_PRESETS, muon, normuon

# --- Orthogonalized-update family: AuON, ROOT, Lipschitz constraints (issue 4) ---
from optx._src.aliases.orthogonalized import auon, hybrid_auon, lipschitz_muon, root
from optx._src.clipping import clip_by_quantile, matrix_quantile
from optx._src.constraints import (
    HARD_CAP_COEFFICIENTS,
    LipschitzBound,
    SpectralProjectionState,
    embedding_mask,
    embedding_rms_projection,
    lipschitz_bound,
    power_iteration,
    soft_cap_coupling,
    spectral_hammer,
    spectral_hard_cap,
    spectral_normalize,
    spectral_norms,
    spectral_projection,
    spectral_soft_cap,
    spectral_svd_cap,
    spectral_weight_decay,
)
from optx._src.newton_schulz_fitting import (
    ROOT_COEFFICIENTS,
    ShapeCoefficientTable,
    composed_polynomial_max,
    fit_newton_schulz_coefficients,
    newton_schulz_error,
)
from optx._src.normalization import normalize_by_frobenius, scale_by_cosh_rms


# --- Rotated-basis family: SOAP, Conda, COSMOS (issue 5) ---
from optx._src.aliases.rotated import (
    ModeView,
    ScaleByCondaState,
    ScaleByCosmosState,
    ScaleByOfficialCosmosAdamState,
    ScaleBySoapState,
    add_decayed_weights_after_step,
    conda,
    cosmos,
    eigh_basis,
    mode_gram,
    power_qr_basis,
    rotate,
    rotate_back,
    scale_by_conda,
    scale_by_cosmos,
    scale_by_official_cosmos_adam,
    scale_by_soap,
    singular_basis,
    soap,
    subspace_init,
    subspace_power_step,
    subspace_split,
)


# --- Element-wise adaptive family and schedules (issue 6) ---
# isort: split
from optx._src.adaptive import (
    ScaleByBeliefState,
    ScaleByExAdamState,
    ScaleBySaiState,
    scale_by_adam_lookahead,
    scale_by_belief,
    scale_by_exadam,
    scale_by_sai,
)
from optx._src.aliases.elementwise import (
    adabelief,
    adamp,
    agvm_sgd,
    exadam,
    lion,
    lion_kappa,
    sgd_sai,
    sgdp,
)
from optx._src.radial import ProjectOutRadialState, project_out_radial, radial_projection
from optx._src.schedules import rex_schedule, warmup_rex_schedule
from optx._src.sign import KAPPAS, ScaleByLionKappaState, kappa_gradient, scale_by_lion_kappa
from optx._src.nonfinite import SkipIfNotFiniteState, skip_if_not_finite
from optx._src.variance import AgvmState, agvm, half_batch_gradients

# isort: split


# --- Memory-efficient family: 8-bit states, projections (issue 7) ---
# isort: split
from optx._src.aliases.memory import (
    adamw_8bit,
    apollo,
    apollo_mini,
    dct_adamw,
    frugal,
    galore,
    galore_8bit,
    lion_8bit,
    sgd_momentum_8bit,
)
from optx._src.moments import BiasCorrectionState, scale_by_bias_correction
from optx._src.normalization import NormGrowthLimiterState, scale_by_norm_growth_limiter
from optx._src.projection import (
    BlockSubspaceState,
    SubspaceState,
    compute_projector,
    dct_basis,
    project,
    project_back,
    projected_axis,
    residual,
    scale_by_apollo,
    scale_by_block_subspace,
    scale_by_subspace,
)
from optx._src.quantization import (
    QuantizedArray,
    QuantizedState,
    dequantize_blockwise,
    dynamic_map,
    quantize_blockwise,
    quantize_moments,
)
from optx._src.refactorization import (
    ResetEveryState,
    quick_recovery_schedule,
    refactorize,
    refactorize_every,
    reset_state_every,
)
from optx._src.state_utils import state_bytes_by_group

# isort: split


# --- Curvature family: MKOR, M-FAC, AdaHessian, Sophia (issue 8) ---
from optx._src.aliases.curvature import adahessian, mfac, mkor, mkor_h, sophia_g, sophia_h
from optx._src.capture import (
    LayerStatistics,
    linen_value_grad_and_captures,
    value_grad_and_captures,
)
from optx._src.curvature import (
    GaussNewtonBartlett,
    Hutchinson,
    curvature_args,
    estimate_diagonal,
    gauss_newton_bartlett_diagonal,
    hutchinson_diagonal,
    hvp,
    nnx_curvature_args,
    random_probes,
    sampled_label_loss,
    select_by_path,
)
from optx._src.diagonal_preconditioning import (
    ScaleByAdaHessianState,
    ScaleBySophiaState,
    conv_window_axes,
    scale_by_adahessian,
    scale_by_sophia,
)
from optx._src.fisher import ScaleByMFACState, mfac_state_bytes, scale_by_mfac
from optx._src.kronecker import (
    MKORLayerState,
    ScaleByMKORState,
    SecondOrderSwitchState,
    mkor_router,
    mkor_statistics_from_gradients,
    scale_by_mkor,
    sherman_morrison_update,
    statistics_from_gradient,
)


# --- Low-rank adapters: LoRA plumbing, LoRA-Pro, LoRA-SB, SoRA (issue 15) ---
# isort: split
from optx._src.adapters import (
    GateThresholdState,
    ScaleByLoRAProState,
    gate_threshold,
    scale_by_gate_threshold,
    scale_by_lora_pro,
    solve_sylvester_psd,
    sora_l1_penalty,
    sparsifying_schedule,
    sparsifying_thresholds,
)
from optx._src.aliases.adapters import lora_pro, sora
from optx._src.lora import (
    LoRAPair,
    freeze_base,
    lora_delta,
    lora_filter,
    lora_labels,
    lora_mask,
    lora_pairs,
    lora_scale,
    merge_lora,
)

# The NNX adapter modules import flax.nnx; they load on first access.
_LAZY_ADAPTER_MODULES = (
    "GatedLoRA",
    "LoRAFrozen",
    "LoRAXS",
    "ScaledLoRA",
    "add_lora",
    "estimate_first_update",
    "lora_sb_factors",
    "lora_sb_init",
    "prune_sora",
)


def __getattr__(name: str):
    if name in _LAZY_ADAPTER_MODULES:
        from optx._src import adapter_modules

        return getattr(adapter_modules, name)
    raise AttributeError(f"module 'optx' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY_ADAPTER_MODULES])


# --- Evolution strategies: EGGROLL, OpenES (issue 15) ---
# isort: split
from optx._src.aliases.evolution import eggroll, openes
from optx._src.evolution import (
    LowRankNoise,
    ScaleByEggrollState,
    es_evaluate,
    es_gradient,
    es_noise,
    es_router,
    es_tree_key,
    perturb,
    perturbed_matmul,
    scale_by_eggroll,
    shape_fitness,
)

# isort: split

# --- Structured sparsity: WGSEF (issue 15) ---
# isort: split
from optx._src.aliases.sparsity import wgsef
from optx._src.sparsity import (
    GroupSparseEnvelopeState,
    from_groups,
    group_axes,
    group_norms,
    group_sparse_envelope,
    group_sparse_envelope_prox,
    group_sparsity,
    sparse_envelope,
    sparse_envelope_prox,
    to_groups,
)

# isort: split

from optx._src.base import path_to_str
from optx._src.layouts import (
    ATTENTION_IN,
    ATTENTION_OUT,
    DENSE,
    MatrixLayout,
    ResolvedLayout,
    conv_layout,
    from_matrices,
    resolve_layout,
    to_matrices,
)

# Primitives.
from optx._src.moments import ScaleByMomentumState, scale_by_adam, scale_by_momentum
from optx._src.normalization import (
    ScaleByAxisRmsState,
    preserve_frobenius_norm,
    scale_by_column_rms,
    scale_by_row_rms,
    scale_by_shape,
    scale_to_rms,
)
from optx._src.orthogonalization import (
    NS_PRESETS,
    NewtonSchulzCoefficients,
    newton_schulz,
    polar_express_coefficients,
    scale_by_newton_schulz,
)
from optx._src.registry import (
    ExtraArgsContext,
    OptimizerSpec,
    get_optimizer,
    list_optimizers,
    register,
    registered_specs,
)
from optx._src.model_routing import router_for
from optx._src.routing import (
    Assignment,
    Router,
    RoutingRow,
    RoutingTable,
    RoutingWarning,
    Rule,
    attach_router,
    default_router,
    default_rules,
    describe,
    routed,
    router_of,
)
from optx._src.sharding import apply_matrix_fn, state_shardings
from optx._src.state_utils import param_count, state_bytes, state_bytes_per_param
