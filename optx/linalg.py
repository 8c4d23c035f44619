"""Matrix functions behind the matrix optimizers: Newton–Schulz iterations and their
coefficients, eigen/QR/SVD bases and rotations, power iteration, Sylvester and
Sherman–Morrison solves, matrix quantiles and refactorization.
"""

from optx._src.adapters import (
    solve_sylvester_psd,
)
from optx._src.aliases.rotated import (
    ModeView,
    eigh_basis,
    mode_gram,
    power_qr_basis,
    rotate,
    rotate_back,
    singular_basis,
    subspace_init,
    subspace_power_step,
    subspace_split,
)
from optx._src.clipping import (
    matrix_quantile,
)
from optx._src.constraints import (
    power_iteration,
)
from optx._src.kronecker import (
    sherman_morrison_update,
)
from optx._src.newton_schulz_fitting import (
    ROOT_COEFFICIENTS,
    ShapeCoefficientTable,
    composed_polynomial_max,
    fit_newton_schulz_coefficients,
    newton_schulz_error,
)
from optx._src.orthogonalization import (
    NS_PRESETS,
    NewtonSchulzCoefficients,
    newton_schulz,
    polar_express_coefficients,
)
from optx._src.refactorization import (
    refactorize,
)

__all__ = [
    "NS_PRESETS",
    "ROOT_COEFFICIENTS",
    "ModeView",
    "NewtonSchulzCoefficients",
    "ShapeCoefficientTable",
    "composed_polynomial_max",
    "eigh_basis",
    "fit_newton_schulz_coefficients",
    "matrix_quantile",
    "mode_gram",
    "newton_schulz",
    "newton_schulz_error",
    "polar_express_coefficients",
    "power_iteration",
    "power_qr_basis",
    "refactorize",
    "rotate",
    "rotate_back",
    "sherman_morrison_update",
    "singular_basis",
    "solve_sylvester_psd",
    "subspace_init",
    "subspace_power_step",
    "subspace_split",
]
