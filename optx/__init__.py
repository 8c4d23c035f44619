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
from optx._src.aliases.orthogonalized import muon, normuon

# --- Orthogonalized-update family: AuON, ROOT, Lipschitz constraints (issue 4) ---


# --- Rotated-basis family: SOAP, Conda, COSMOS (issue 5) ---


# --- Element-wise adaptive family and schedules (issue 6) ---


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
from optx._src.weight_decay import add_decayed_weights_after_step

# isort: split


# --- Curvature family: MKOR, M-FAC, AdaHessian, Sophia (issue 8) ---
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
from optx._src.routing import (
    Assignment,
    Router,
    Rule,
    default_router,
    default_rules,
    describe,
    routed,
    router_of,
)
from optx._src.sharding import apply_matrix_fn, state_shardings
from optx._src.state_utils import param_count, state_bytes, state_bytes_per_param
