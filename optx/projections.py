"""Low-rank and coordinate projections used by GaLore, APOLLO, FRUGAL and DCT-AdamW."""

from optx._src.projection import (
    compute_projector,
    dct_basis,
    project,
    project_back,
    projected_axis,
    residual,
)

__all__ = [
    "compute_projector",
    "dct_basis",
    "project",
    "project_back",
    "projected_axis",
    "residual",
]
