"""Structured sparsity: (group) sparse-envelope penalties, their proximal operators
and the grouping helpers used by WGSEF.
"""

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

__all__ = [
    "GroupSparseEnvelopeState",
    "from_groups",
    "group_axes",
    "group_norms",
    "group_sparse_envelope",
    "group_sparse_envelope_prox",
    "group_sparsity",
    "sparse_envelope",
    "sparse_envelope_prox",
    "to_groups",
]
