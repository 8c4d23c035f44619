"""Helpers of the element-wise adaptive family: Lion-κ's kernels and AGVM's
half-batch gradients.
"""

from optx._src.sign import (
    KAPPAS,
    kappa_gradient,
)
from optx._src.variance import (
    half_batch_gradients,
)

__all__ = [
    "KAPPAS",
    "half_batch_gradients",
    "kappa_gradient",
]
