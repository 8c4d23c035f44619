"""Curvature estimation for the second-order methods: Hessian-vector products,
Hutchinson and Gauss–Newton–Bartlett diagonals, layer-statistics capture for
MKOR, and the helpers that build their extra arguments.
"""

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
    conv_window_axes,
)
from optx._src.kronecker import (
    MKORLayerState,
    SecondOrderSwitchState,
    mkor_router,
    mkor_statistics_from_gradients,
    statistics_from_gradient,
)

__all__ = [
    "GaussNewtonBartlett",
    "Hutchinson",
    "LayerStatistics",
    "MKORLayerState",
    "SecondOrderSwitchState",
    "conv_window_axes",
    "curvature_args",
    "estimate_diagonal",
    "gauss_newton_bartlett_diagonal",
    "hutchinson_diagonal",
    "hvp",
    "linen_value_grad_and_captures",
    "mkor_router",
    "mkor_statistics_from_gradients",
    "nnx_curvature_args",
    "random_probes",
    "sampled_label_loss",
    "select_by_path",
    "statistics_from_gradient",
    "value_grad_and_captures",
]
