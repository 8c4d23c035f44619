"""The matrix views of the default router's layouts, in NumPy, for references.

``hidden`` is a Dense kernel ``(in, out)``, ``stack`` a scanned stack
``(L, in, out)`` and ``conv`` a Conv kernel ``(kh, kw, in, out)`` whose matrix
is ``(kh·kw·in, out)`` — written here once, independently of optx.
"""

from __future__ import annotations

import numpy as np


def matrices(x: np.ndarray, kind: str) -> np.ndarray:
    """``x`` as ``(batch, fan_in, fan_out)`` for a leaf of the given kind."""
    if kind == "hidden":
        return x[None]
    if kind == "stack":
        return x
    if kind == "conv":
        return x.reshape(1, -1, x.shape[-1])
    raise ValueError(kind)
