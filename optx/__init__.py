"""optx: composable JAX/Optax gradient transformations for recent optimizer papers.

Every optimizer is an ``optax.GradientTransformationExtraArgs`` built as an
``optax.chain`` of small primitives; matrix methods route hidden matrices by
key path (:class:`optx.Router`) and see them through explicit layouts
(:class:`optx.MatrixLayout`). See README.md for the method table.

The namespace is shaped like optax's: the top level holds the named optimizers,
the ``scale_by_*`` primitives (with their states) and the few wrappers users
compose, routing and layouts, and the registry. Everything else lives in a
submodule by concern: :mod:`optx.linalg`, :mod:`optx.quantization`,
:mod:`optx.projections`, :mod:`optx.curvature`, :mod:`optx.constraints`,
:mod:`optx.schedules`, :mod:`optx.lora`, :mod:`optx.evolution`,
:mod:`optx.sparsity`, :mod:`optx.sharding`, :mod:`optx.tree_utils` and
:mod:`optx.elementwise`. ``tests/test_public_api.py`` pins every namespace.
"""

__version__ = "0.1.0"

# --- Named optimizers (each module registers its optimizers on import) ---
from optx._src.aliases.adapters import lora_pro, sora
from optx._src.aliases.curvature import adahessian, mfac, mkor, mkor_h, sophia_g, sophia_h
from optx._src.aliases.elementwise import (
    adabelief,
    adamp,
    adamw,
    agvm_sgd,
    exadam,
    lion,
    lion_kappa,
    sgd_sai,
    sgdp,
)
from optx._src.aliases.evolution import eggroll, openes
from optx._src.nonfinite import SkipIfNotFiniteState, skip_if_not_finite
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
from optx._src.aliases.orthogonalized import (
    FALLBACK_PRESETS,
    auon,
    hybrid_auon,
    lipschitz_muon,
    muon,
    normuon,
    root,
)
from optx._src.aliases.rotated import conda, cosmos, soap
from optx._src.aliases.sparsity import wgsef

# --- Primitives users compose: scale_by_* and their states ---
# isort: split
from optx._src.adapters import (
    GateThresholdState,
    ScaleByLoRAProState,
    scale_by_gate_threshold,
    scale_by_lora_pro,
)
from optx._src.adaptive import (
    ScaleByBeliefState,
    ScaleByExAdamState,
    ScaleBySaiState,
    scale_by_adam_lookahead,
    scale_by_belief,
    scale_by_exadam,
    scale_by_sai,
)
from optx._src.aliases.rotated import (
    ScaleByCondaState,
    ScaleByCosmosState,
    ScaleByOfficialCosmosAdamState,
    ScaleBySoapState,
    scale_by_conda,
    scale_by_cosmos,
    scale_by_official_cosmos_adam,
    scale_by_soap,
)
from optx._src.diagonal_preconditioning import (
    ScaleByAdaHessianState,
    ScaleBySophiaState,
    scale_by_adahessian,
    scale_by_sophia,
)
from optx._src.evolution import ScaleByEggrollState, scale_by_eggroll
from optx._src.fisher import ScaleByMFACState, scale_by_mfac
from optx._src.kronecker import ScaleByMKORState, scale_by_mkor
from optx._src.moments import (
    BiasCorrectionState,
    ScaleByMomentumState,
    scale_by_adam,
    scale_by_bias_correction,
    scale_by_momentum,
)
from optx._src.normalization import (
    NormGrowthLimiterState,
    ScaleByAxisRmsState,
    scale_by_column_rms,
    scale_by_cosh_rms,
    scale_by_norm_growth_limiter,
    scale_by_row_rms,
    scale_by_shape,
)
from optx._src.orthogonalization import scale_by_newton_schulz
from optx._src.projection import (
    BlockSubspaceState,
    SubspaceState,
    scale_by_apollo,
    scale_by_block_subspace,
    scale_by_subspace,
)
from optx._src.sign import ScaleByLionKappaState, scale_by_lion_kappa

# --- Public wrappers and transforms ---
# isort: split
from optx._src.accumulation import AccumulateGradientsState, accumulate_gradients
from optx._src.aliases.rotated import add_decayed_weights_after_step
from optx._src.clipping import clip_by_quantile
from optx._src.normalization import normalize_by_frobenius, preserve_frobenius_norm, scale_to_rms
from optx._src.refactorization import ResetEveryState, refactorize_every, reset_state_every
from optx._src.variance import AgvmState, agvm

# --- Routing and layouts ---
# isort: split
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

# --- Registry ---
# isort: split
from optx._src.registry import (
    ExtraArgsContext,
    OptimizerSpec,
    get_optimizer,
    list_optimizers,
    register,
    registered_specs,
)

# --- Submodules by concern ---
# isort: split
from optx import (
    constraints,
    curvature,
    elementwise,
    evolution,
    linalg,
    lora,
    projections,
    quantization,
    schedules,
    sharding,
    sparsity,
    tree_utils,
)

__all__ = [
    "ATTENTION_IN",
    "ATTENTION_OUT",
    "DENSE",
    "FALLBACK_PRESETS",
    "AccumulateGradientsState",
    "AgvmState",
    "Assignment",
    "BiasCorrectionState",
    "BlockSubspaceState",
    "ExtraArgsContext",
    "GateThresholdState",
    "MatrixLayout",
    "NormGrowthLimiterState",
    "OptimizerSpec",
    "ResetEveryState",
    "ResolvedLayout",
    "Router",
    "RoutingRow",
    "RoutingTable",
    "RoutingWarning",
    "Rule",
    "ScaleByAdaHessianState",
    "ScaleByAxisRmsState",
    "ScaleByBeliefState",
    "ScaleByCondaState",
    "ScaleByCosmosState",
    "ScaleByEggrollState",
    "ScaleByExAdamState",
    "ScaleByLionKappaState",
    "ScaleByLoRAProState",
    "ScaleByMFACState",
    "ScaleByMKORState",
    "ScaleByMomentumState",
    "ScaleByOfficialCosmosAdamState",
    "ScaleBySaiState",
    "ScaleBySoapState",
    "ScaleBySophiaState",
    "SkipIfNotFiniteState",
    "SubspaceState",
    "accumulate_gradients",
    "adabelief",
    "adahessian",
    "adamp",
    "adamw",
    "adamw_8bit",
    "add_decayed_weights_after_step",
    "agvm",
    "agvm_sgd",
    "apollo",
    "apollo_mini",
    "attach_router",
    "auon",
    "clip_by_quantile",
    "conda",
    "constraints",
    "conv_layout",
    "cosmos",
    "curvature",
    "dct_adamw",
    "default_router",
    "default_rules",
    "describe",
    "eggroll",
    "elementwise",
    "evolution",
    "exadam",
    "from_matrices",
    "frugal",
    "galore",
    "galore_8bit",
    "get_optimizer",
    "hybrid_auon",
    "linalg",
    "lion",
    "lion_8bit",
    "lion_kappa",
    "lipschitz_muon",
    "list_optimizers",
    "lora",
    "lora_pro",
    "mfac",
    "mkor",
    "mkor_h",
    "muon",
    "normalize_by_frobenius",
    "normuon",
    "openes",
    "preserve_frobenius_norm",
    "projections",
    "quantization",
    "refactorize_every",
    "register",
    "registered_specs",
    "reset_state_every",
    "resolve_layout",
    "root",
    "routed",
    "router_for",
    "router_of",
    "scale_by_adahessian",
    "scale_by_adam",
    "scale_by_adam_lookahead",
    "scale_by_apollo",
    "scale_by_belief",
    "scale_by_bias_correction",
    "scale_by_block_subspace",
    "scale_by_column_rms",
    "scale_by_conda",
    "scale_by_cosh_rms",
    "scale_by_cosmos",
    "scale_by_eggroll",
    "scale_by_exadam",
    "scale_by_gate_threshold",
    "scale_by_lion_kappa",
    "scale_by_lora_pro",
    "scale_by_mfac",
    "scale_by_mkor",
    "scale_by_momentum",
    "scale_by_newton_schulz",
    "scale_by_norm_growth_limiter",
    "scale_by_official_cosmos_adam",
    "scale_by_row_rms",
    "scale_by_sai",
    "scale_by_shape",
    "scale_by_soap",
    "scale_by_sophia",
    "scale_by_subspace",
    "scale_to_rms",
    "schedules",
    "sgd_momentum_8bit",
    "sgd_sai",
    "sgdp",
    "sharding",
    "skip_if_not_finite",
    "soap",
    "sophia_g",
    "sophia_h",
    "sora",
    "sparsity",
    "to_matrices",
    "tree_utils",
    "wgsef",
]
