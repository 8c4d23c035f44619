"""Weight constraints and norm bounds: spectral caps, projections and weight decay,
Lipschitz bounds, embedding RMS projection and radial (scale-invariant) projection.
"""

from optx._src.constraints import (
    HARD_CAP_COEFFICIENTS,
    LipschitzBound,
    SpectralProjectionState,
    embedding_mask,
    embedding_rms_projection,
    lipschitz_bound,
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
from optx._src.radial import (
    ProjectOutRadialState,
    project_out_radial,
    radial_projection,
)

__all__ = [
    "HARD_CAP_COEFFICIENTS",
    "LipschitzBound",
    "ProjectOutRadialState",
    "SpectralProjectionState",
    "embedding_mask",
    "embedding_rms_projection",
    "lipschitz_bound",
    "project_out_radial",
    "radial_projection",
    "soft_cap_coupling",
    "spectral_hammer",
    "spectral_hard_cap",
    "spectral_normalize",
    "spectral_norms",
    "spectral_projection",
    "spectral_soft_cap",
    "spectral_svd_cap",
    "spectral_weight_decay",
]
