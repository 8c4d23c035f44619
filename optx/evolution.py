"""Evolution strategies (EGGROLL, OpenES): low-rank noise, perturbed evaluation and
the ES gradient estimate.
"""

from optx._src.evolution import (
    LowRankNoise,
    es_evaluate,
    es_gradient,
    es_noise,
    es_router,
    es_tree_key,
    perturb,
    perturbed_matmul,
    shape_fitness,
)

__all__ = [
    "LowRankNoise",
    "es_evaluate",
    "es_gradient",
    "es_noise",
    "es_router",
    "es_tree_key",
    "perturb",
    "perturbed_matmul",
    "shape_fitness",
]
