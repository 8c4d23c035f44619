"""Shape-specific Newton–Schulz coefficients: lookup tables and offline fitting.

ROOT ("ROOT: Robust Orthogonalized Optimizer for Neural Network Training",
He et al., arXiv 2511.20626) observes that one fixed quintic
``p(σ) = aσ + bσ³ + cσ⁵`` orthogonalizes matrices of different shapes with
different accuracy — square matrices, whose Frobenius-normalized spectrum
reaches down to 0, worst — and uses *AdaNewton*: a triple ``(a, b, c)`` per
matrix shape, found offline.

* :class:`ShapeCoefficientTable` is the lookup: a callable
  ``(min_dim, max_dim) -> NewtonSchulzCoefficients`` that plugs into
  ``optx.scale_by_newton_schulz(coefficients=...)`` /
  ``optx.linalg.newton_schulz``. Unknown shapes fall back (Muon's coefficients by
  default) with a one-time Python warning per shape.
* :data:`ROOT_COEFFICIENTS` is the table shipped with the official code (the
  four shapes of its 1B LLaMA-style model).
* :func:`fit_newton_schulz_coefficients` is the offline procedure for any
  other shape: minimize the orthogonalization error of the ``K``-step
  iteration over random matrices of that shape.

Because every step acts on singular values only, the error of ``K`` steps on a
matrix ``X`` with Frobenius-normalized singular values ``σ_i`` is exactly

.. math::

  \\|\\mathrm{NS}_K(X) - U V^\\top\\|_F^2 = \\sum_i \\big(p^{∘K}(σ_i) - 1\\big)^2,

so the fit needs one SVD per sample and then optimizes a scalar objective
(L-BFGS, a few hundred iterations): it is cheap next to training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optx._src import base
from optx._src.orthogonalization import (
    NewtonSchulzCoefficients,
    newton_schulz,
    resolve_coefficients,
)

ShapeKey = tuple[int, int]


def _shape_key(shape: Sequence[int]) -> ShapeKey:
    if len(shape) != 2:
        raise ValueError(f"A matrix shape has two dimensions, got {tuple(shape)!r}.")
    m, n = (base.check_positive_int("matrix dimension", int(d)) for d in shape)
    return (min(m, n), max(m, n))


class ShapeCoefficientTable:
    """Newton–Schulz coefficients chosen by matrix shape, with a fallback.

    A callable ``(min_dim, max_dim) -> NewtonSchulzCoefficients`` accepted by
    ``coefficients=`` of :func:`optx.linalg.newton_schulz` and
    :func:`optx.scale_by_newton_schulz` (they call it with the matrix view's
    ``(min, max)`` dimensions, so ``(in, out)`` and ``(out, in)`` share an
    entry). Shapes missing from the table use ``fallback`` and trigger one
    ``UserWarning`` per shape and table (the official ROOT code logs a warning
    on every step instead).

    Args:
      table: mapping from a matrix shape ``(m, n)`` (any order) to a
        coefficient spec (a triple, a table of triples, a preset name or a
        :class:`optx.linalg.NewtonSchulzCoefficients`).
      fallback: the coefficient spec for other shapes (``'keller'``).
      name: a label for messages.
      warn: warn once per unknown shape.

    References:
      He et al., "ROOT: Robust Orthogonalized Optimizer for Neural Network
      Training", arXiv 2511.20626 (``root5`` in the official
      ``ROOT/examples/example_train.py``).

    Example:
      >>> import optx
      >>> table = optx.linalg.ShapeCoefficientTable({(64, 256): (3.2, -4.2, 1.9)})
      >>> table(64, 256).table
      ((3.2, -4.2, 1.9),)
    """

    def __init__(
        self,
        table: Mapping[Sequence[int], Any],
        fallback: Any = "keller",
        *,
        name: str = "shape table",
        warn: bool = True,
    ) -> None:
        entries: dict[ShapeKey, NewtonSchulzCoefficients] = {}
        for shape, spec in dict(table).items():
            key = _shape_key(shape)
            coeffs = resolve_coefficients(spec, *key)
            entries[key] = coeffs
        self.entries = entries
        self.fallback = resolve_coefficients(fallback)
        self.name = name
        self.warn = warn
        self._warned: set[ShapeKey] = set()

    def __call__(self, min_dim: int, max_dim: int | None = None) -> NewtonSchulzCoefficients:
        if max_dim is None:
            # optax.inject_hyperparams takes every callable argument for a schedule
            # and calls it with the step count.
            raise TypeError(
                f"Newton–Schulz coefficient table '{self.name}' was called with one argument "
                f"({min_dim!r}), as optax.inject_hyperparams calls a schedule: pass the table "
                "as a static argument, optax.inject_hyperparams(optx.root, "
                "static_args=('ns_coeffs',))(...)."
            )
        key = (min(min_dim, max_dim), max(min_dim, max_dim))
        if key in self.entries:
            return self.entries[key]
        if self.warn and key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"Newton–Schulz coefficient table '{self.name}' has no entry for matrix shape "
                f"{key}; using '{self.fallback.name}' coefficients. Fit coefficients for it with "
                "optx.linalg.fit_newton_schulz_coefficients(shape) and add them with "
                "table.with_shapes({shape: coefficients}).",
                UserWarning,
                stacklevel=2,
            )
        return self.fallback

    def with_shapes(self, extra: Mapping[Sequence[int], Any]) -> ShapeCoefficientTable:
        """A new table with ``extra`` entries added (or replaced)."""
        merged: dict[Sequence[int], Any] = dict(self.entries)
        merged.update({_shape_key(k): v for k, v in dict(extra).items()})
        return ShapeCoefficientTable(merged, self.fallback, name=self.name, warn=self.warn)

    def __repr__(self) -> str:
        return (
            f"ShapeCoefficientTable({self.name!r}, {len(self.entries)} shapes, "
            f"fallback={self.fallback.name!r})"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ShapeCoefficientTable)
            and self.entries == other.entries
            and self.fallback == other.fallback
        )

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.entries.items())), self.fallback))


ROOT_COEFFICIENTS = ShapeCoefficientTable(
    {
        (2048, 2048): (3.4916, -4.8224, 2.1095),
        (2048, 16384): (3.1943, -3.8221, 1.5322),
        (2048, 3072): (3.4509, -4.5790, 1.9325),
        (2048, 8192): (2.9794, -3.6674, 1.6207),
    },
    fallback="keller",
    name="root",
)
"""ROOT's official shape table (``root5`` in ``ROOT/examples/example_train.py``).

One triple for all steps, keyed by ``(min(m, n), max(m, n))`` of the 1B
LLaMA-style model of the official toy script (d 2048, MLP 8192, QKV 3072,
vocab-sized shapes excluded); other shapes use Muon's (3.4445, −4.7750,
2.0315), pre-normalization ``X/(‖X‖_F + 1e-7)`` in every case.
"""


# ----------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------


def _normalized_singular_values(
    shape: ShapeKey, num_samples: int, sampler: Callable[..., jax.Array], key: jax.Array, eps: float
) -> jax.Array:
    """Singular values of ``num_samples`` sampled matrices divided by ``‖X‖_F + eps``."""
    samples = []
    for k in jax.random.split(key, num_samples):
        x = jnp.asarray(sampler(k, shape), jnp.float32)
        if x.shape != shape:
            raise ValueError(f"The sampler returned shape {x.shape}, expected {shape}.")
        samples.append(x)

    @jax.jit
    def normalized(x: jax.Array) -> jax.Array:
        s = jnp.linalg.svd(x, compute_uv=False)
        return s / (jnp.sqrt(jnp.sum(jnp.square(s), axis=-1, keepdims=True)) + eps)

    return normalized(jnp.stack(samples))


def _compose(theta: jax.Array, sigma: jax.Array, steps: int) -> jax.Array:
    """``p_K ∘ … ∘ p_1 (σ)`` with ``θ`` of shape (3,) (one triple) or (K, 3)."""
    x = sigma
    for k in range(steps):
        a, b, c = (theta[k] if theta.ndim == 2 else theta)[:3]
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x


def singular_value_error(theta: Any, sigma: jax.Array, steps: int) -> jax.Array:
    """Mean over singular values of ``(p^{∘K}(σ) − 1)²`` (the fitting objective)."""
    return jnp.mean(jnp.square(_compose(jnp.asarray(theta, sigma.dtype), sigma, steps) - 1.0))


def fit_newton_schulz_coefficients(
    shape: Sequence[int],
    steps: int = 5,
    *,
    num_samples: int = 4,
    init: Any = "keller",
    per_step: bool = False,
    iterations: int = 300,
    sampler: Callable[[jax.Array, tuple[int, int]], jax.Array] | None = None,
    eps: float = 1e-7,
    seed: int = 0,
) -> NewtonSchulzCoefficients:
    """Fits Newton–Schulz coefficients for one matrix shape (ROOT's AdaNewton).

    The offline procedure behind ROOT's shape-specific coefficients
    (arXiv 2511.20626, "dimension-robust orthogonalization" / AdaNewton):
    choose ``(a, b, c)`` minimizing the expected orthogonalization error of
    ``steps`` iterations on random matrices ``X`` of the given shape,

    .. math::

      \\min_{a,b,c}\\; \\mathbb{E}_X \\tfrac{1}{r}\\,
      \\|\\mathrm{NS}_K^{a,b,c}(X) - U V^\\top\\|_F^2
      = \\mathbb{E}_X \\tfrac{1}{r} \\textstyle\\sum_{i=1}^{r}
      \\big(p^{∘K}(σ_i / \\|X\\|_F) - 1\\big)^2,

    ``r = min(m, n)``, with ``p(σ) = aσ + bσ³ + cσ⁵``. Samples are drawn by
    ``sampler`` (standard Gaussian by default; pass gradients of your model's
    layers for a data-driven fit), reduced to their normalized singular values
    (one f32 SVD each), and the scalar objective is minimized with
    ``optax.lbfgs`` from ``init``.

    The paper does not publish its sampler, so fits on Gaussian matrices do not
    reproduce the shipped table digit for digit, but they beat it on Gaussian
    matrices of the shape. Held-out mean ``‖NS₅(X) − UVᵀ‖²_F / r`` (one fresh
    Gaussian matrix, 5 steps):

    ============  =======================  ======  ======  =========
    shape         fitted (a, b, c)         fitted  Muon    ROOT table
    ============  =======================  ======  ======  =========
    1024 × 1024   (3.297, −4.137, 1.725)   0.0274  0.0444  —
    2048 × 2048   (3.333, −4.258, 1.779)   0.0354  0.0501  0.0395
    2048 × 3072   (2.909, −3.812, 1.861)   0.0024  0.0338  0.0165
    2048 × 8192   (2.602, −3.127, 1.568)   0.0002  0.0340  0.0015
    ============  =======================  ======  ======  =========

    Cost: one SVD per sample (``O(m n min(m, n))``) plus a few seconds of
    L-BFGS (compilation included). Wall time with the defaults (4 samples) on
    the project's shared 2-core CPU under heavy load (load average ≈ 8): 36 s
    for 1024², 62 s for 2048², 157 s for 2048×3072, 95 s for 2048×8192 with 2
    samples; at lighter load the 2048² fit took ≈ 5 s with 2 samples. Run it
    once per shape and keep the result (a plain
    :class:`NewtonSchulzCoefficients`).

    Args:
      shape: the matrix shape ``(m, n)`` (order irrelevant).
      steps: Newton–Schulz iterations ``K`` the coefficients are fitted for.
      num_samples: random matrices drawn (the spectrum of a large random
        matrix concentrates, so a few suffice).
      init: starting coefficients (a spec; default Muon's).
      per_step: fit one triple per step (a ``K × 3`` table, Polar-Express
        style) instead of ROOT's single triple.
      iterations: L-BFGS iterations.
      sampler: ``(key, shape) -> matrix``; default ``jax.random.normal``.
      eps: the pre-normalization ε of the iteration (1e-7, as ROOT and Muon).
      seed: PRNG seed of the samples.

    Returns:
      :class:`optx.linalg.NewtonSchulzCoefficients` (one triple repeated, or a
      ``steps``-long table), ready for :class:`ShapeCoefficientTable`.

    References:
      He, Han, Zhou, Chen, Liu, Chen, Wang, "ROOT: Robust Orthogonalized
      Optimizer for Neural Network Training", arXiv 2511.20626.

    Example:
      >>> import optx
      >>> coeffs = optx.linalg.fit_newton_schulz_coefficients((16, 64), steps=5, iterations=50)
      >>> len(coeffs.table)
      1
    """
    key_shape = _shape_key(shape)
    steps = base.check_positive_int("steps", steps)
    num_samples = base.check_positive_int("num_samples", num_samples)
    iterations = base.check_positive_int("iterations", iterations)
    start = resolve_coefficients(init, *key_shape).for_steps(steps)
    if sampler is None:
        sampler = jax.random.normal
    m, n = (int(d) for d in shape)
    sigma = _normalized_singular_values((m, n), num_samples, sampler, jax.random.key(seed), eps)
    theta0 = jnp.asarray(start if per_step else start[0], jnp.float32)

    def objective(theta: jax.Array) -> jax.Array:
        return singular_value_error(theta, sigma, steps)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def body(_: Any, carry: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
        theta, state = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = solver.update(
            grad, state, theta, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(theta, updates), state

    @jax.jit
    def run(theta: jax.Array) -> jax.Array:
        theta, _ = base.fori_loop(0, iterations, body, (theta, solver.init(theta)))
        return theta

    theta = run(theta0)
    # Keep the start if the solver did not improve (e.g. it diverged).
    if not bool(jnp.isfinite(objective(theta))) or float(objective(theta)) > float(
        objective(theta0)
    ):
        theta = theta0
    rows = np.asarray(theta, np.float64).reshape(-1, 3)
    table = tuple((float(a), float(b), float(c)) for a, b, c in rows)
    return NewtonSchulzCoefficients(
        table,
        repeat_last=not per_step,
        norm_scale=1.0,
        eps=eps,
        name=f"fitted{key_shape}x{steps}",
    )


def newton_schulz_error(
    coefficients: Any,
    matrices: jax.Array,
    steps: int = 5,
) -> jax.Array:
    """Mean ``‖NS_K(X) − U Vᵀ‖_F² / min(m, n)`` over a batch of matrices.

    Runs :func:`optx.linalg.newton_schulz` (f32 or the input's wider dtype) and
    compares with the exact polar factor from an SVD — the quantity
    :func:`fit_newton_schulz_coefficients` minimizes, measured end to end.

    Example:
      >>> import jax, optx
      >>> x = jax.random.normal(jax.random.key(0), (2, 8, 32))
      >>> float(optx.linalg.newton_schulz_error('cubic', x, steps=40)) < 1e-6
      True
    """
    x = jnp.asarray(matrices)
    if x.ndim < 2:
        raise ValueError(f"Expected matrices of rank >= 2, got shape {x.shape}.")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x = x.astype(dtype)
    u, _, vt = jnp.linalg.svd(x, full_matrices=False)
    polar = u @ vt
    out = newton_schulz(x, coefficients, steps)
    r = min(x.shape[-2], x.shape[-1])
    err = jnp.sum(jnp.square(out - polar), axis=(-2, -1)) / r
    return jnp.mean(err)


def composed_polynomial_max(
    coefficients: Any, steps: int, min_dim: int = 0, max_dim: int = 0
) -> float:
    """``max_{σ ∈ [0, 1]} p^{∘K}(σ)``: the largest singular value NS can output.

    After Frobenius pre-normalization every singular value lies in [0, 1], so
    this bounds the spectral norm of ``NS_K(X)`` (1.2024 for Muon's 5 steps;
    the reason Lipschitz-constrained training inflates the update norm).
    Evaluated in float64 on a fine grid refined around the maximum.

    Example:
      >>> import optx
      >>> round(optx.linalg.composed_polynomial_max('keller', 5), 3)
      1.202
    """
    table = resolve_coefficients(coefficients, min_dim, max_dim).for_steps(steps)

    def f(x: np.ndarray) -> np.ndarray:
        for a, b, c in table:
            x2 = x * x
            x = x * (a + x2 * (b + c * x2))
        return x

    grid = np.linspace(0.0, 1.0, 200_001)
    values = f(grid)
    i = int(np.argmax(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    fine = np.linspace(lo, hi, 10_001)
    return float(max(values.max(), f(fine).max()))
