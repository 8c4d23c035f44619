"""Independent float64 NumPy references of optx's optimizers, one function per method.

Written from the papers' update rules and the official codes' quirks (named in
each docstring), never by calling optx, so other tests can reuse them. Every
reference takes the initial parameters ``{'hidden/kernel': (fan_in, fan_out),
'bias': (n,)}`` (Flax orientation: a PyTorch "row" is a column here), a
gradient oracle ``grad(params, t) -> dict`` and the number of steps, and
returns the parameters after every step.
"""

from tests.references.matrix import MATRIX_REFERENCES
from tests.references.optimizers import REFERENCES

REFERENCES.update(MATRIX_REFERENCES)

__all__ = ["REFERENCES"]
