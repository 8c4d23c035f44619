"""Sharding helpers: state shardings that follow the parameters' and matrix functions
on sharded leaves.
"""

from optx._src.sharding import (
    apply_matrix_fn,
    state_shardings,
)

__all__ = [
    "apply_matrix_fn",
    "state_shardings",
]
