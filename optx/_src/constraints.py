"""Lipschitz constraints: post-step spectral weight projections and bounds.

Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training Transformers
with Enforced Lipschitz Constants" (arXiv 2507.13338) keep every weight matrix
inside a spectral-norm ball by projecting it after each optimizer step,
``W ← P(W − η D)``. optax transforms only see updates, so every projection here
needs ``params`` and emits (DESIGN §3)

.. math::  u' = P(W + u) - W,

so that ``optax.apply_updates(W, u') = P(W + u)`` and the transforms chain
after any optimizer (``optax.chain(optx.muon(...), optx.constraints.spectral_soft_cap())``,
or :func:`optx.lipschitz_muon`).

**Geometry.** The paper measures weights in the RMS→RMS operator norm,
``‖W‖_{RMS→RMS} = √(fan_in/fan_out) · σ_max(W)``, and projects in that space:
``W ← s · P(W / s)`` with ``s = √(fan_out / fan_in)`` (the official
``Linear.project``). ``geometry='l2'`` uses ``s = 1`` (plain spectral norm).
Matrices are seen through :class:`optx.MatrixLayout` — a Flax ``(in, out)``
kernel, a stacked ``(L, in, out)`` stack (each layer projected separately), a
conv kernel ``(kh, kw, in, out)`` as its ``(kh·kw·in, out)`` matrix; singular
values do not depend on the orientation, so Flax and PyTorch layouts agree.

**Projections** (``P`` acting on ``M = W/s`` with target ``w_max``):

* :func:`spectral_normalize` — ``M / max(1, σ_max/w_max)`` (σ by power iteration);
* :func:`spectral_hammer` — ``M + (w_max − σ_max) u vᵀ``: the top singular value
  is set to ``w_max``;
* :func:`spectral_weight_decay` — ``M − λ σ_max u vᵀ``;
* :func:`spectral_soft_cap` — ``M ← M(I − α MᵀM)``, then ``M ← M(I + α MᵀM)``,
  i.e. ``σ ↦ p₂(p₁(σ))``, ``p₁(σ) = σ − ασ³``, ``p₂(y) = y + αy³``, with the
  coupling α solved exactly (:func:`soft_cap_coupling`);
* :func:`spectral_hard_cap` — four odd polynomials approximating
  ``min(w_max, σ)`` (F. Cesista's coefficients);
* :func:`spectral_svd_cap` — exact ``U min(Σ, w_max) Vᵀ`` (SVD in f32 or wider);
* :func:`embedding_rms_projection` — each embedding vector divided by
  ``max(1/f, RMS)`` (unit RMS at most).

**Power iteration** keeps its vector (one per matrix, on the smaller side) and
a PRNG key in the state: the official code re-seeds 16 iterations from a random
start at every call; optx warm-starts from the previous step's vector by default
(``warm_start=False`` re-seeds every step, as the official code does).

**Bounds.** :func:`spectral_norms` and :func:`lipschitz_bound` report per-layer
operator norms and their product, an upper bound on the Lipschitz constant of a
feed-forward network whose activations are 1-Lipschitz.

Official-code quirks (``Arongil/lipschitz-transformers`` @158692e2,
``modula/atom.py``) and what optx does:

* ``batch_project`` divides the projected tensor by the number of stacked
  matrices — a no-op for 2-D weights, a division by ``L`` for ``(L, m, n)``
  stacks. optx does not replicate it (each stacked matrix is projected as is).
* ``soft_cap_coupling`` is called with ``max_update_norm / scale`` although the
  update norm is already in RMS→RMS units (so the worst-case singular value is
  ``w_max(1 − λ) + δ``, not ``+ δ/s``). optx uses ``+ δ`` by default;
  ``coupling='modula'`` reproduces the division.
* When the quartic has no non-negative real root (``w_max·λ > δ``: decay alone
  keeps the weights inside the ball), the official code returns ``α = 1`` (the
  padding value of its root filter), a strong, unintended cap. optx returns
  ``α = 0`` (no cap needed).
* ``spectral_normalize`` and ``hard_cap`` are marked ``sensitive_to_wmax``
  (``W ← s·w_max·P(W/(s·w_max))``); soft cap, hammer and SVD cap take ``w_max``
  directly. optx folds both into the formulas above.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optx._src import base, hyperparams, layouts, linalg, orthogonalization, routing, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout

GEOMETRIES = ("rms", "l2")
COUPLINGS = ("rms", "modula")

HARD_CAP_COEFFICIENTS: tuple[tuple[float, float, float], ...] = (
    (0.805032, 0.206361, -0.019763),
    (0.649867, 0.162935, -0.011150),
    (1.810259, -0.200265, 0.008251),
    (1.004384, -0.183490, 0.014413),
)
"""F. Cesista's odd quintics whose composition approximates ``min(1, σ)``
(``modula/atom.py::_hard_cap``)."""

_TINY = 1e-30


def geometry_scale(geometry: str, fan_in: int, fan_out: int) -> float:
    """``s`` of ``W = s·M``: ``√(fan_out/fan_in)`` (RMS→RMS) or 1 (ℓ2)."""
    base.check_choice("geometry", geometry, GEOMETRIES)
    return math.sqrt(fan_out / fan_in) if geometry == "rms" else 1.0


# ----------------------------------------------------------------------------
# Matrix kernels (batched over a leading axis, f32)
# ----------------------------------------------------------------------------


def odd_polynomial_steps(mats: jax.Array, coefficients: Sequence[Sequence[Any]]) -> jax.Array:
    """Applies ``σ ← aσ + bσ³ + cσ⁵`` to the singular values, once per triple.

    ``mats`` is ``(..., m, n)``; each step is ``M(aI + bG + cG²)`` with the
    smaller Gram matrix ``G`` (``MᵀM`` or ``MMᵀ``). Coefficients may be traced
    (the soft cap's α is). No pre-normalization (unlike Newton–Schulz).
    """
    m, n = mats.shape[-2], mats.shape[-1]
    tall = m >= n
    x = mats
    for a, b, c in coefficients:
        # The Gram matrix as one contraction (no materialized transpose: fewer
        # XLA kernels per matrix shape, issue 17 compile time).
        gram = jnp.einsum("...ki,...kj->...ij" if tall else "...ik,...jk->...ij", x, x)
        poly = b * gram
        if not (isinstance(c, (int, float)) and c == 0):
            poly = poly + c * (gram @ gram)
        x = a * x + (x @ poly if tall else poly @ x)
    return x


def power_iteration(
    mats: jax.Array, start: jax.Array, num_iters: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Top singular triplet of each matrix of ``mats`` ``(B, m, n)``.

    ``start`` ``(B, min(m, n))`` is the initial vector on the smaller side
    (``u`` when ``m ≤ n``, else ``v``); ``num_iters`` iterations of
    ``x ← normalize(AAᵀx)`` (or ``AᵀA``), then ``σ = ‖Aᵀu‖`` (or ``‖Av‖``).
    Returns ``(σ (B,), u (B, m), v (B, n), x (B, min(m, n)))``; a zero matrix
    gives σ = 0 and zero vectors.
    """
    m, n = mats.shape[-2], mats.shape[-1]
    left = m <= n

    def normalize(w: jax.Array) -> jax.Array:
        return w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + _TINY)

    def apply(x: jax.Array) -> jax.Array:
        if left:
            return jnp.einsum("bmn,bn->bm", mats, jnp.einsum("bmn,bm->bn", mats, x))
        return jnp.einsum("bmn,bm->bn", mats, jnp.einsum("bmn,bn->bm", mats, x))

    x = base.fori_loop(0, num_iters, lambda _, x: normalize(apply(x)), normalize(start))
    if left:
        other = jnp.einsum("bmn,bm->bn", mats, x)
    else:
        other = jnp.einsum("bmn,bn->bm", mats, x)
    sigma = jnp.linalg.norm(other, axis=-1)
    other = other / jnp.maximum(sigma, _TINY)[:, None]
    u, v = (x, other) if left else (other, x)
    return sigma, u, v, x


def _solve_coupling_beta(c: jax.Array) -> jax.Array:
    """The root β ∈ [0, 1) of ``β²(β² − 3β + 3) = c`` for ``0 ≤ c < 1``.

    ``h(β) = β²(β² − 3β + 3)`` is strictly increasing on [0, ∞) (``h' =
    β(4β² − 9β + 6)``, whose quadratic factor has no real root) with
    ``h(0) = 0`` and ``h(1) = 1``, so the root is unique. It is bracketed by
    bisection on ``g = √h`` (``g' ≥ 1/(2√3)`` on [0, 1]: well conditioned even
    for tiny β) and polished by Newton steps on ``g``.
    """
    target = jnp.sqrt(jnp.maximum(c, 0.0))

    def g(beta: jax.Array) -> jax.Array:
        return beta * jnp.sqrt(beta * beta - 3.0 * beta + 3.0)

    def bisect(_: Any, bracket: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = g(mid) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    zero = jnp.zeros_like(target)
    lo, hi = base.fori_loop(0, 40, bisect, (zero, zero + 1.0))
    beta = 0.5 * (lo + hi)

    def newton(_: Any, beta: jax.Array) -> jax.Array:
        q = beta * beta - 3.0 * beta + 3.0
        slope = (4.0 * beta * beta - 9.0 * beta + 6.0) / (2.0 * jnp.sqrt(q))
        return jnp.clip(beta - (g(beta) - target) / slope, lo, hi)

    return base.fori_loop(0, 3, newton, beta)


def soft_cap_coupling(w_max: Any, max_update_norm: Any, decay: float = 0.0) -> jax.Array:
    """The soft cap's coupling α: the exact root of the paper's quartic.

    With ``k = w_max (1 − decay) + max_update_norm`` — the largest singular
    value a weight inside the ``w_max`` ball can reach after one decayed step —
    α is the smallest non-negative real root of

    .. math::  -k^9 α^4 + 3k^7 α^3 - 3k^5 α^2 + (k - w_{max}) = 0,

    so that the soft cap ``σ ↦ p₂(p₁(σ))`` maps ``k`` exactly to ``w_max``
    (arXiv 2507.13338, spectral soft cap; ``soft_cap_coupling`` in
    ``modula/atom.py``). With ``β = α k²`` the quartic is
    ``β²(β² − 3β + 3) = 1 − w_max/k``, whose left side is strictly increasing,
    so the root is unique and is solved to machine precision in-graph (no
    eigenvalue solver, so it runs on every backend). ``k ≤ w_max`` needs no cap:
    α = 0 (the official code returns 1 there, see the module notes).

    References:
      Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training
      Transformers with Enforced Lipschitz Constants", arXiv 2507.13338.

    Example:
      >>> import optx
      >>> alpha = optx.constraints.soft_cap_coupling(1.0, 0.1)
      >>> k = 1.1; y = k - alpha * k**3
      >>> round(float(y + alpha * y**3), 6)
      1.0
    """
    dtype = jnp.promote_types(jnp.result_type(w_max, max_update_norm, decay), jnp.float32)
    w_max = jnp.asarray(w_max, dtype)
    delta = jnp.asarray(max_update_norm, dtype)
    decay = jnp.asarray(decay, dtype)
    k = w_max * (1.0 - decay) + delta
    excess = delta - w_max * decay  # k - w_max, without cancellation
    c = jnp.where(k > 0, excess / jnp.where(k > 0, k, 1.0), 0.0)
    beta = _solve_coupling_beta(jnp.clip(c, 0.0, 1.0 - 1e-7))
    return jnp.where(excess > 0, beta / jnp.square(jnp.where(k > 0, k, 1.0)), 0.0)


# Evaluated once per step at trace time where its arguments are static
# (:func:`spectral_soft_cap`): one small compiled program, not an eager loop.
_soft_cap_coupling_jitted = jax.jit(soft_cap_coupling)


# ----------------------------------------------------------------------------
# The projection transform
# ----------------------------------------------------------------------------


class SpectralProjectionState(NamedTuple):
    """State of the spectral projections.

    Attributes:
      count: int32 step counter (evaluates scheduled hyper-parameters).
      key: a raw uint32 PRNG key (``jax.random.PRNGKey``) for power-iteration
        starts, split every step; ``optax.EmptyState()`` when unused.
      vectors: per matrix leaf, the power-iteration vector of each matrix,
        shape ``(batch, min(fan_in, fan_out))`` in f32 (f64 for f64 params;
        zeros until the first step); ``optax.MaskedNode()`` for leaves without a layout;
        ``optax.EmptyState()`` when unused.
    """

    count: jax.Array
    key: Any
    vectors: Any


# project(mats, hp, pi) -> mats; mats is (B, fan_in, fan_out) f32 already
# divided by the geometry scale; hp holds the evaluated hyper-parameters and
# `scale`; pi is (sigma, u, v) or None.
ProjectFn = Callable[[jax.Array, dict[str, Any], Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Spectral:
    """A ``project`` that is a spectral function of each matrix (the caps).

    ``P(M) = U g(Σ) Vᵀ`` for ``M = U Σ Vᵀ`` (odd polynomials of ``M``, ``min(Σ, w_max)``),
    broadcasting over a per-matrix ``hp['scale']`` of shape ``(B, 1, 1)``. Then
    ``s·P(Wᵀ/s) = (s·P(W/s))ᵀ`` for each matrix's own scale ``s`` (``Wᵀ = V Σ Uᵀ`` has the
    same singular values), so :func:`spectral_projection`'s FSDP path stacks matrices by
    shape alone, column-sharded ones transposed as Newton–Schulz's are, and carries each
    matrix's ``s`` as per-matrix data (:func:`orthogonalization.map_fsdp_matrices`'
    ``value``): the geometry scales and orientations of a shape share one all-to-all pair,
    with no padding between them. Any other ``project`` is applied to ``(fan_in, fan_out)``
    matrices with a Python-float scale, its FSDP groups split by scale and orientation.
    """

    fn: ProjectFn
    per_step: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Entries of ``hp`` that depend on the step's hyper-parameters alone (the soft
    cap's coupling), computed once per step instead of once per matrix leaf: a
    scalar root solve traced per leaf cost Lipschitz-Muon 0.2 s of tracing and 24
    copies of its loops in the compiled step."""

    def __call__(self, m: jax.Array, hp: dict[str, Any], pi: Any) -> jax.Array:
        return self.fn(m, hp, pi)


def _evaluate(value: Any, count: jax.Array) -> Any:
    return value(count) if callable(value) else value


def _run_gathered(fn: Callable[..., Any], x: jax.Array, *args: Any) -> Any:
    """``fn(x, *args)`` with a sharded ``x`` gathered (replicated) first.

    The first output is resharded like ``x``; the others are left replicated.
    """
    if not sharding.is_sharded(x):
        return fn(x, *args)
    out = fn(sharding.replicate(x), *args)
    return (sharding.reshard_like(out[0], x), *out[1:])


@hyperparams.validated()
def spectral_projection(
    project: ProjectFn,
    *,
    hyperparams: dict[str, Any] | None = None,
    power_iterations: int = 0,
    warm_start: bool = True,
    seed: int = 0,
    geometry: str = "rms",
    layout: LayoutSpec = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """Builds a post-step weight projection ``u' = P(W + u) − W`` per matrix.

    The engine behind :func:`spectral_normalize`, :func:`spectral_soft_cap`
    and friends; use it to add a projection of your own. For every leaf with a
    layout, ``W + u`` is viewed as matrices ``(B, fan_in, fan_out)`` in f32 (or wider),
    divided by the geometry scale ``s``, projected by ``project(mats, hp, pi)``,
    multiplied back by ``s``; the emitted update is ``P(W + u) − W`` in the
    update's dtype. Leaves without a layout pass through.

    Args:
      project: ``(mats, hp, pi) -> mats``; ``hp`` maps each name of
        ``hyperparams`` to its value at this step (schedules evaluated) plus
        ``'scale'`` (``s``); ``pi`` is ``(σ, u, v)`` from power iteration, or
        None when ``power_iterations == 0``.
      hyperparams: scalars or schedules ``count -> value`` passed to
        ``project``.
      power_iterations: iterations per step (0: none).
      warm_start: start each step's iteration from the previous vector.
      seed: seed of the state's PRNG key.
      geometry: ``'rms'`` (RMS→RMS, the paper) or ``'l2'``.
      layout: a :data:`~optx.LayoutSpec`.
      strategy: ``'auto'`` runs projections without power iteration on
        FSDP-sharded matrices one per device through two all-to-alls (as
        :func:`optx.scale_by_newton_schulz`), on other sharded leaves through
        :func:`optx.sharding.apply_matrix_fn`; ``'batched'`` sends every FSDP group
        through the all-to-alls (even a group of one matrix, as Newton–Schulz's
        ``'batched'``); sharded leaves that power-iterate are gathered (replicated)
        for the per-matrix work either way. ``project`` is applied to each matrix as
        ``(fan_in, fan_out)``, so the FSDP groups here are split by geometry scale and
        orientation; the built-in caps, spectral functions, share one group per shape.

    Raises:
      ValueError: at ``update`` when ``params`` is not given.

    References:
      Newhouse et al., "Training Transformers with Enforced Lipschitz
      Constants", arXiv 2507.13338.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> halve = optx.constraints.spectral_projection(lambda m, hp, pi: 0.5 * m)
      >>> w = {'w': jnp.ones((2, 2))}
      >>> u, _ = halve.update({'w': jnp.zeros((2, 2))}, halve.init(w), w)
      >>> u['w']
      Array([[-0.5, -0.5],
             [-0.5, -0.5]], dtype=float32)
    """
    base.check_choice("geometry", geometry, GEOMETRIES)
    base.check_choice("strategy", strategy, sharding.STRATEGIES)
    power_iterations = base.check_positive_int(
        "power_iterations", power_iterations, allow_zero=True
    )
    base.check_positive_int("seed", seed, allow_zero=True)
    hyperparams = dict(hyperparams or {})
    uses_pi = power_iterations > 0
    spectral = isinstance(project, _Spectral)

    def init_fn(params: base.Params) -> SpectralProjectionState:
        base.check_real_params(
            params, "optx.constraints.spectral_projection"
        )  # real-only math (docstring)
        if not uses_pi:
            return SpectralProjectionState(
                jnp.zeros([], jnp.int32), optax.EmptyState(), optax.EmptyState()
            )

        def vec(p: Any, lay: ResolvedLayout) -> jax.Array:
            k = min(lay.fan_in, lay.fan_out)
            dtype = jnp.promote_types(p.dtype, jnp.float32)
            return sharding.zeros_like_spec((lay.batch_size, k), dtype, p)

        return SpectralProjectionState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.PRNGKey(seed),
            vectors=layouts.init_per_matrix_state(vec, layout, params),
        )

    def update_fn(
        updates: base.Updates,
        state: SpectralProjectionState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, SpectralProjectionState]:
        del extra
        if params is None:
            raise ValueError(
                "Spectral projections emit P(W + u) - W and need the parameters: call "
                "update(updates, state, params)."
            )
        hp_now = {name: _evaluate(v, state.count) for name, v in hyperparams.items()}
        if spectral and project.per_step is not None:
            hp_now = {**hp_now, **project.per_step(hp_now)}
        if uses_pi:
            key, step_key = jax.random.split(state.key)
        else:
            key, step_key = state.key, None

        def project_leaf(
            u: jax.Array, lay: ResolvedLayout, w: jax.Array, *vec: Any, how: str = strategy
        ) -> Any:
            scale = geometry_scale(geometry, lay.fan_in, lay.fan_out)
            hp = {**hp_now, "scale": scale}
            cdt = jnp.promote_types(jnp.promote_types(u.dtype, w.dtype), jnp.float32)
            w_c = w.astype(cdt)
            target = w_c + u.astype(cdt)

            def fn(x: jax.Array, *v: Any) -> Any:
                mats = layouts.to_matrices(x, lay) / scale
                pi, new_vec = None, None
                if uses_pi:
                    (old,) = v
                    mk = jax.random.fold_in(
                        jax.random.fold_in(step_key, mats.shape[-2]), mats.shape[-1]
                    )
                    fresh = jax.random.normal(mk, old.shape, mats.dtype)
                    start = fresh
                    if warm_start:
                        has = jnp.linalg.norm(old, axis=-1, keepdims=True) > 0
                        start = jnp.where(has, old.astype(mats.dtype), fresh)
                    sigma, left, right, new_vec = power_iteration(mats, start, power_iterations)
                    pi = (sigma, left, right)
                out = project(mats, hp, pi) * scale
                return layouts.from_matrices(out.astype(x.dtype), lay), new_vec

            if uses_pi:
                projected, new_vec = _run_gathered(fn, target, *vec)
                new_vec = sharding.reshard_like(new_vec.astype(vec[0].dtype), vec[0])
                return (projected - w_c).astype(u.dtype), new_vec
            projected = sharding.apply_matrix_fn(lambda x: fn(x)[0], target, how)
            return (projected - w_c).astype(u.dtype)

        def project_tree(updates: Any, params: Any) -> Any:
            """Without power iteration: FSDP-sharded matrices one per device (two
            all-to-alls, as Newton–Schulz's ``'auto'`` / ``'batched'``), the others
            per leaf."""
            flat, treedef, lays = layouts.leaves_with_layouts(updates, layout)
            ws = treedef.flatten_up_to(params)
            todo = []
            for k, ((_, u), w, lay) in enumerate(zip(flat, ws, lays)):
                if lay is not None:
                    cdt = jnp.promote_types(jnp.promote_types(u.dtype, w.dtype), jnp.float32)
                    todo.append((k, u, w.astype(cdt), lay))

            def scale_of(lay: ResolvedLayout, flip: bool) -> float:
                return geometry_scale(geometry, lay.fan_in, lay.fan_out)

            def key(lay: ResolvedLayout, flip: bool) -> tuple[float, bool]:
                return scale_of(lay, flip), flip

            def spectral_fn(m: jax.Array, scales: jax.Array) -> jax.Array:
                # Any orientation (P(Mᵀ) = P(M)ᵀ), each matrix with its own scale.
                s = scales[:, None, None]
                return (project(m / s, {**hp_now, "scale": s}, None) * s).astype(m.dtype)

            def fn_for(lay: ResolvedLayout, flip: bool) -> Callable[[jax.Array], jax.Array]:
                scale = scale_of(lay, flip)
                hp = {**hp_now, "scale": scale}

                def fn(m: jax.Array) -> jax.Array:
                    # Column-sharded leaves arrive transposed: project the (fan_in, fan_out)
                    # matrices themselves, so ``project`` need not commute with transposition.
                    t = (lambda a: jnp.swapaxes(a, -1, -2)) if flip else (lambda a: a)
                    return t(project(t(m) / scale, hp, None) * scale).astype(m.dtype)

                return fn

            outs: list[Any] = [None] * len(todo)
            targets = [(w_c + u.astype(w_c.dtype), lay) for _, u, w_c, lay in todo]
            always = strategy == "batched"
            if spectral:
                fsdp = orthogonalization.map_fsdp_matrices(
                    targets, lambda lay, flip: spectral_fn, outs, value=scale_of, always=always
                )
            else:
                fsdp = orthogonalization.map_fsdp_matrices(
                    targets, fn_for, outs, key=key, always=always
                )
            leaves = [u for _, u in flat]
            for j, (k, u, w_c, lay) in enumerate(todo):
                if outs[j] is not None:
                    leaves[k] = (outs[j] - w_c).astype(u.dtype)
                else:
                    how = "replicate" if j in fsdp else strategy
                    leaves[k] = project_leaf(u, lay, ws[k], how=how)
            return jax.tree_util.tree_unflatten(treedef, leaves)

        if uses_pi:
            out = layouts.map_matrix_leaves(
                project_leaf,
                layout,
                updates,
                params,
                state.vectors,
                otherwise=lambda u, w, v: (u, v),
            )
            new_updates, new_vectors = base.unzip_tree(updates, out)
        else:
            if strategy in ("auto", "batched"):
                new_updates = project_tree(updates, params)
            else:
                new_updates = layouts.map_matrix_leaves(
                    project_leaf, layout, updates, params, otherwise=lambda u, w: u
                )
            new_vectors = state.vectors
        new_state = SpectralProjectionState(
            count=optax.safe_increment(state.count), key=key, vectors=new_vectors
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_common(w_max: Any, power_iterations: int | None = None) -> None:
    base.check_finite("w_max", w_max)
    base.check_in_range("w_max", w_max, 0.0, math.inf, low_inclusive=False)
    if power_iterations is not None:
        base.check_positive_int("power_iterations", power_iterations)


def _rank_one(pi: Any) -> tuple[jax.Array, jax.Array]:
    sigma, u, v = pi
    return sigma, u[:, :, None] * v[:, None, :]


@hyperparams.validated()
def spectral_normalize(
    w_max: float = 1.0,
    *,
    power_iterations: int = 16,
    warm_start: bool = True,
    seed: int = 0,
    geometry: str = "rms",
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """Spectral normalization after the step: ``W ← W / max(1, ‖W‖/w_max)``.

    In the RMS→RMS geometry (arXiv 2507.13338, the ``spectral_normalize``
    projection; ``modula/atom.py::_spectral_normalize`` with
    ``sensitive_to_wmax``): ``M = W/s``, σ_max by power iteration,

    .. math:: M \\leftarrow M / \\max(1, σ_{max}(M) / w_{max}).

    Emits ``P(W + u) − W``; needs ``params``. Power iteration: the estimate is
    a lower bound of σ_max, so the cap is exact up to its convergence
    (warm-started by default; ``warm_start=False`` re-seeds every step like the
    official code).

    Args:
      w_max: the norm bound (injectable).
      power_iterations: iterations per step (16 official).
      warm_start: reuse the previous step's vector.
      seed: PRNG seed of the random starts.
      geometry: ``'rms'`` or ``'l2'``.
      layout: a :data:`~optx.LayoutSpec` (default: the default router's).

    References:
      Newhouse et al., "Training Transformers with Enforced Lipschitz
      Constants", arXiv 2507.13338; Miyato et al., "Spectral Normalization for
      GANs", arXiv 1802.05957.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.spectral_normalize(1.0, geometry='l2')
      >>> w = {'w': 4.0 * jnp.eye(3)}
      >>> u, _ = tx.update({'w': jnp.zeros((3, 3))}, tx.init(w), w)
      >>> optax.apply_updates(w, u)['w'][0, 0]
      Array(1., dtype=float32)
    """
    _check_common(w_max, power_iterations)

    def project(m: jax.Array, hp: dict[str, Any], pi: Any) -> jax.Array:
        sigma = pi[0]
        return m / jnp.maximum(1.0, sigma / hp["w_max"])[:, None, None]

    return spectral_projection(
        project,
        hyperparams={"w_max": w_max},
        power_iterations=power_iterations,
        warm_start=warm_start,
        seed=seed,
        geometry=geometry,
        layout=layout,
    )


@hyperparams.validated()
def spectral_hammer(
    w_max: float = 1.0,
    *,
    power_iterations: int = 16,
    warm_start: bool = True,
    seed: int = 0,
    geometry: str = "rms",
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """The spectral hammer: sets the top singular value to ``w_max``.

    arXiv 2507.13338 (spectral hammer; ``modula/atom.py::_spectral_hammer``):

    .. math:: M \\leftarrow M + (w_{max} - σ_{max})\\, u v^\\top

    with ``(σ_max, u, v)`` from power iteration on ``M = W/s``. Only the top
    singular direction is touched (it is raised as well as lowered to
    ``w_max``, as in the official code); it bounds the norm when one singular
    value at a time leaves the ball, the regime of small steps. Needs
    ``params``.

    Args: as :func:`spectral_normalize`.

    References:
      Newhouse et al., "Training Transformers with Enforced Lipschitz
      Constants", arXiv 2507.13338.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.spectral_hammer(1.0, geometry='l2')
      >>> w = {'w': jnp.diag(jnp.array([3.0, 0.5]))}
      >>> u, _ = tx.update({'w': jnp.zeros((2, 2))}, tx.init(w), w)
      >>> jnp.round(jnp.diag(optax.apply_updates(w, u)['w']), 4)
      Array([1. , 0.5], dtype=float32)
    """
    _check_common(w_max, power_iterations)

    def project(m: jax.Array, hp: dict[str, Any], pi: Any) -> jax.Array:
        sigma, outer = _rank_one(pi)
        return m + (hp["w_max"] - sigma)[:, None, None] * outer

    return spectral_projection(
        project,
        hyperparams={"w_max": w_max},
        power_iterations=power_iterations,
        warm_start=warm_start,
        seed=seed,
        geometry=geometry,
        layout=layout,
    )


@hyperparams.validated()
def spectral_weight_decay(
    decay: base.ScalarOrSchedule = 0.1,
    *,
    power_iterations: int = 16,
    warm_start: bool = True,
    seed: int = 0,
    geometry: str = "rms",
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """Spectral weight decay: shrinks only the top singular value.

    arXiv 2507.13338 (spectral weight decay;
    ``modula/atom.py::_spectral_weight_decay``, default strength 0.1):

    .. math:: M \\leftarrow M - λ\\, σ_{max}\\, u v^\\top,

    i.e. ``σ_max ← (1 − λ) σ_max``, every step (``λ`` may be a schedule). Needs
    ``params``.

    Args:
      decay: λ (scalar or schedule).
      power_iterations, warm_start, seed, geometry, layout: as
        :func:`spectral_normalize`.

    References:
      Newhouse et al., "Training Transformers with Enforced Lipschitz
      Constants", arXiv 2507.13338.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.spectral_weight_decay(0.5, geometry='l2')
      >>> w = {'w': jnp.diag(jnp.array([2.0, 1.0]))}
      >>> u, _ = tx.update({'w': jnp.zeros((2, 2))}, tx.init(w), w)
      >>> jnp.round(jnp.diag(optax.apply_updates(w, u)['w']), 4)
      Array([1., 1.], dtype=float32)
    """
    if not callable(decay):
        base.check_in_range("decay", decay, 0.0, 1.0, high_inclusive=True)
    base.check_positive_int("power_iterations", power_iterations)

    def project(m: jax.Array, hp: dict[str, Any], pi: Any) -> jax.Array:
        sigma, outer = _rank_one(pi)
        return m - (hp["decay"] * sigma)[:, None, None] * outer

    return spectral_projection(
        project,
        hyperparams={"decay": decay},
        power_iterations=power_iterations,
        warm_start=warm_start,
        seed=seed,
        geometry=geometry,
        layout=layout,
    )


@hyperparams.validated()
def spectral_soft_cap(
    w_max: float = 1.0,
    max_update_norm: base.ScalarOrSchedule = 0.02,
    decay: base.ScalarOrSchedule = 0.0,
    *,
    coupling: str = "rms",
    geometry: str = "rms",
    layout: LayoutSpec = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """The spectral soft cap (the paper's main projection), α solved exactly.

    arXiv 2507.13338 (spectral soft cap; ``modula/atom.py::_soft_cap`` and
    ``soft_cap_coupling``). On ``M = W/s``:

    .. math::

      M \\leftarrow M (I - α M^\\top M), \\qquad M \\leftarrow M (I + α M^\\top M),

    i.e. ``σ ↦ p₂(p₁(σ))`` with ``p₁(σ) = σ − ασ³``, ``p₂(y) = y + αy³``;
    α = :func:`soft_cap_coupling` ``(w_max, δ, λ)`` maps the worst post-step
    singular value ``k = w_max(1 − λ) + δ`` exactly to ``w_max``. So a weight
    inside the ``w_max`` ball stays inside after a step of norm ≤ δ with
    multiplicative decay ``1 − λ``. Two Gram products per step, no SVD.

    Only from a feasible start: ``p₂(p₁(σ))`` flips the sign of singular
    values above ``1/√α`` and exceeds ``σ`` further out, so a weight far outside
    the ball diverges (overflows within a few steps), as with the official
    code. With ``w_max = 1`` and δ = 0.024 (α ≈ 0.088): σ = 2 ↦ 1.48,
    3 ↦ 0.63, 3.5 ↦ −0.29, 5 ↦ −25.7. Project the initial weights with
    :func:`spectral_svd_cap` when they may lie outside (``spectral_hard_cap``
    reaches further, to about 3.5 ``w_max``, but not arbitrarily far).

    Args:
      w_max: the norm bound.
      max_update_norm: δ, the step's largest possible norm in the geometry's
        norm (for Muon with RMS→RMS scaling: ``lr × max NS singular value``);
        a scalar or a schedule (``optx.lipschitz_muon`` derives it from the
        learning rate).
      decay: the multiplicative weight decay λ of the step (``lr × wd`` for
        decoupled decay), scalar or schedule.
      coupling: ``'rms'`` (``k = w_max(1−λ) + δ``) or ``'modula'`` (the
        official code's ``δ / s``, see the module notes).
      geometry: ``'rms'`` or ``'l2'``.
      layout: a :data:`~optx.LayoutSpec`.
      strategy: sharding strategy for sharded matrices.

    References:
      Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training
      Transformers with Enforced Lipschitz Constants", arXiv 2507.13338 (code:
      github.com/Arongil/lipschitz-transformers).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.spectral_soft_cap(1.0, max_update_norm=0.1, geometry='l2')
      >>> w = {'w': jnp.zeros((2, 2))}
      >>> u, _ = tx.update({'w': 1.1 * jnp.eye(2)}, tx.init(w), w)
      >>> jnp.round(optax.apply_updates(w, u)['w'][0, 0], 5)
      Array(1., dtype=float32)
    """
    _check_common(w_max)
    base.check_choice("coupling", coupling, COUPLINGS)
    if not callable(max_update_norm):
        base.check_nonnegative("max_update_norm", max_update_norm)
    if not callable(decay):
        base.check_in_range("decay", decay, 0.0, 1.0)

    def coupling_of(hp: dict[str, Any]) -> dict[str, Any]:
        """α once per step, as a constant: where ``w_max``, δ and λ are known
        when tracing (the shard_map bodies of the FSDP path may not close over a
        traced value). Scheduled values, and ``'modula'``'s δ / s, leave α to
        ``project``, per matrix."""
        args = (hp["w_max"], hp["max_update_norm"], hp["decay"])
        if coupling == "modula" or any(isinstance(a, jax.core.Tracer) for a in args):
            return {}
        with jax.ensure_compile_time_eval():
            return {"alpha": np.asarray(_soft_cap_coupling_jitted(*args))}

    def project(m: jax.Array, hp: dict[str, Any], pi: Any) -> jax.Array:
        alpha = hp.get("alpha")
        if alpha is None:
            delta = hp["max_update_norm"]
            if coupling == "modula":
                delta = delta / hp["scale"]
            alpha = soft_cap_coupling(hp["w_max"], delta, hp["decay"])
        alpha = jnp.asarray(alpha).astype(m.dtype)
        return odd_polynomial_steps(m, ((1.0, -alpha, 0), (1.0, alpha, 0)))

    return spectral_projection(
        _Spectral(project, coupling_of),
        hyperparams={"w_max": w_max, "max_update_norm": max_update_norm, "decay": decay},
        geometry=geometry,
        layout=layout,
        strategy=strategy,
    )


@hyperparams.validated()
def spectral_hard_cap(
    w_max: float = 1.0,
    *,
    geometry: str = "rms",
    layout: LayoutSpec = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """The spectral hard cap: a polynomial approximation of ``min(w_max, σ)``.

    arXiv 2507.13338 (hard cap; ``modula/atom.py::_hard_cap``, F. Cesista's
    coefficients :data:`HARD_CAP_COEFFICIENTS`): four odd quintic steps
    ``M ← M(aI + b MᵀM + c (MᵀM)²)`` on ``M = W/(s·w_max)``, then
    ``W ← s·w_max·M``. Approximate (singular values well above ``w_max`` are
    not mapped exactly to it); :func:`spectral_svd_cap` is exact.

    The coefficients are fitted for ``σ/w_max`` up to about 3.5 (there
    ``σ ↦ 1.01 w_max``); beyond, as with the official code, the sign flips and
    the steps overflow: σ/w_max = 3.6 ↦ 0.66, 3.7 ↦ −0.32, 4 ↦ −1.0, 5 ↦ NaN
    (float32). Weights that may lie further out (an initialization, a large
    step): :func:`spectral_svd_cap`.

    Args:
      w_max: the norm bound.
      geometry, layout, strategy: as :func:`spectral_soft_cap`.

    References:
      Newhouse et al., "Training Transformers with Enforced Lipschitz
      Constants", arXiv 2507.13338.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.spectral_hard_cap(1.0, geometry='l2')
      >>> w = {'w': 0.5 * jnp.eye(2)}
      >>> u, _ = tx.update({'w': jnp.zeros((2, 2))}, tx.init(w), w)
      >>> bool(jnp.abs(optax.apply_updates(w, u)['w'][0, 0] - 0.5) < 0.02)
      True
    """
    _check_common(w_max)

    def project(m: jax.Array, hp: dict[str, Any], pi: Any) -> jax.Array:
        w = hp["w_max"]
        return w * odd_polynomial_steps(m / w, HARD_CAP_COEFFICIENTS)

    return spectral_projection(
        _Spectral(project),
        hyperparams={"w_max": w_max},
        geometry=geometry,
        layout=layout,
        strategy=strategy,
    )


@hyperparams.validated()
def spectral_svd_cap(
    w_max: float = 1.0,
    *,
    geometry: str = "rms",
    layout: LayoutSpec = None,
    strategy: str = "auto",
) -> optax.GradientTransformationExtraArgs:
    """The exact spectral cap: ``W ← s · U min(Σ, w_max) Vᵀ`` (SVD in f32 or wider).

    arXiv 2507.13338 (``pure_svd``; ``modula/atom.py::_pure_svd``): every
    singular value of ``M = W/s`` above ``w_max`` is set to ``w_max``, the rest
    are untouched — the Euclidean projection onto the spectral-norm ball.
    ``O(m n min(m, n))`` per matrix and step. Handy to project an initial model
    into the ball before training with a soft cap.

    Args:
      w_max: the norm bound.
      geometry, layout, strategy: as :func:`spectral_soft_cap`.

    References:
      Newhouse et al., "Training Transformers with Enforced Lipschitz
      Constants", arXiv 2507.13338.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.spectral_svd_cap(1.0, geometry='l2')
      >>> w = {'w': jnp.diag(jnp.array([3.0, 0.5]))}
      >>> u, _ = tx.update({'w': jnp.zeros((2, 2))}, tx.init(w), w)
      >>> jnp.round(jnp.diag(optax.apply_updates(w, u)['w']), 4)
      Array([1. , 0.5], dtype=float32)
    """
    _check_common(w_max)

    def project(m: jax.Array, hp: dict[str, Any], pi: Any) -> jax.Array:
        u, s, vt = linalg.svd(m)
        capped = jnp.minimum(s, hp["w_max"])
        return ((u * capped[..., None, :]) @ vt).astype(m.dtype)

    return spectral_projection(
        _Spectral(project),
        hyperparams={"w_max": w_max},
        geometry=geometry,
        layout=layout,
        strategy=strategy,
    )


PROJECTIONS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "soft_cap": spectral_soft_cap,
    "hard_cap": spectral_hard_cap,
    "svd_cap": spectral_svd_cap,
    "normalize": spectral_normalize,
    "hammer": spectral_hammer,
    "spectral_wd": spectral_weight_decay,
}


# ----------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------

_EMBEDDING_RULE = "embedding"


def embedding_mask(router: routing.Router | None = None) -> Callable[[Any], Any]:
    """A mask function selecting the leaves a router classifies as embeddings.

    Uses the rule named ``'embedding'`` of :func:`optx.default_rules` (path
    components like ``embed*``, ``*embedding*``, ``wte``, ``wpe``, ...).
    """
    router = routing.as_router(router)

    def mask(tree: Any) -> Any:
        return base.tree_map_with_path_str(
            lambda p, x: jnp.ndim(x) >= 2 and router.assign(p, x).rule == _EMBEDDING_RULE, tree
        )

    return mask


@hyperparams.validated()
def embedding_rms_projection(
    max_inflation_factor: float = 1.0,
    *,
    mask: base.Mask | None = None,
    feature_axis: int = -1,
) -> optax.GradientTransformationExtraArgs:
    """Caps the RMS of every embedding vector: ``e ← e / max(1/f, RMS(e))``.

    arXiv 2507.13338 (embedding projection; ``modula/atom.py::_embed_project``,
    applied with ``max_inflation_factor = 1`` after each step): each embedding
    vector (a row of a Flax ``nnx.Embed`` table ``(num_embeddings, features)``,
    RMS over ``feature_axis``) with RMS above 1 is rescaled to unit RMS; with
    ``f > 1``, vectors below ``1/f`` are inflated by ``f`` and all others set to
    unit RMS. Emits ``P(W + u) − W`` on the leaves selected by ``mask``.

    Args:
      max_inflation_factor: f (1: a pure cap, as the official ``project``).
      mask: a tree of bools or a function ``params -> tree of bools`` (as
        ``optax.masked``); default :func:`embedding_mask` of the default router.
      feature_axis: the axis holding an embedding vector's features (-1 for
        Flax tables; -2 for a ``(d, vocab)`` unembedding kernel).

    References:
      Newhouse et al., "Training Transformers with Enforced Lipschitz
      Constants", arXiv 2507.13338.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> tx = optx.constraints.embedding_rms_projection()
      >>> w = {'embed': {'embedding': jnp.array([[2.0, 2.0], [0.5, 0.5]])}}
      >>> u, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
      >>> optax.apply_updates(w, u)['embed']['embedding']
      Array([[1. , 1. ],
             [0.5, 0.5]], dtype=float32)
    """
    base.check_in_range(
        "max_inflation_factor", max_inflation_factor, 0.0, math.inf, low_inclusive=False
    )
    if mask is None:
        mask = embedding_mask()

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del extra
        if params is None:
            raise ValueError("embedding_rms_projection emits P(W + u) - W and needs params.")
        selected = base.expand_mask(mask, params)

        def leaf(u: Any, w: Any, sel: Any) -> Any:
            if u is None or not sel:
                return u
            cdt = jnp.promote_types(jnp.promote_types(u.dtype, w.dtype), jnp.float32)
            w_c = w.astype(cdt)
            target = w_c + u.astype(cdt)
            rms = jnp.sqrt(jnp.mean(jnp.square(target), axis=feature_axis, keepdims=True))
            projected = target / jnp.maximum(1.0 / max_inflation_factor, rms)
            return (projected - w_c).astype(u.dtype)

        return jax.tree.map(leaf, updates, params, selected, is_leaf=base.is_leaf_or_none), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


# ----------------------------------------------------------------------------
# Norms and the network's Lipschitz bound
# ----------------------------------------------------------------------------

_CONV_COMPONENT = re.compile(r"(^|/)conv\w*(/|$)")


def _bound_layout(path: str, leaf: Any) -> layouts.MatrixLayout | None:
    """Every ``kernel`` of rank >= 2: Dense (leading axes stacked), or conv."""
    if jnp.ndim(leaf) < 2 or not re.search(r"(^|/)kernel$", path):
        return None
    if _CONV_COMPONENT.search(path) and jnp.ndim(leaf) >= 3:
        return layouts.conv_layout(jnp.ndim(leaf) - 2)
    return layouts.DENSE


def _as_param_tree(model_or_params: Any) -> Any:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return model_or_params
    if isinstance(model_or_params, nnx.Module):
        return nnx.state(model_or_params, nnx.Param)
    return model_or_params


def spectral_norms(
    model_or_params: Any, *, layout: LayoutSpec = None, geometry: str = "l2"
) -> dict[str, jax.Array]:
    """Exact operator norm of every matrix: ``{path: norms (batch shape)}``.

    ``geometry='l2'``: ``σ_max``; ``'rms'``: ``√(fan_in/fan_out)·σ_max`` (the
    RMS→RMS norm constrained by the projections). SVD in f32 (or wider). The default
    layout takes every ``kernel`` leaf of rank ≥ 2 (Dense, with leading axes
    as stacked layers; Conv kernels under a ``conv*`` path component as
    ``(window·in, out)`` matrices). Accepts a ``flax.nnx.Module`` (its
    ``nnx.Param`` state) or a parameter tree.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> optx.constraints.spectral_norms({'dense': {'kernel': 2.0 * jnp.eye(3)}})['dense/kernel']
      Array(2., dtype=float32)
    """
    base.check_choice("geometry", geometry, GEOMETRIES)
    params = _as_param_tree(model_or_params)
    resolve = layouts.resolved_layout_fn(_bound_layout if layout is None else layout)
    out: dict[str, jax.Array] = {}
    for path, leaf in base.flatten_with_paths(params)[0]:
        lay = resolve(path, leaf)
        if lay is None:
            continue
        leaf = jnp.asarray(leaf)
        mats = layouts.to_matrices(leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32)), lay)
        sigma = jnp.linalg.norm(mats, ord=2, axis=(-2, -1))
        sigma = sigma / geometry_scale(geometry, lay.fan_in, lay.fan_out)
        out[path] = jnp.reshape(sigma, lay.batch_shape)
    return out


class LipschitzBound(NamedTuple):
    """The result of :func:`lipschitz_bound`.

    Attributes:
      bound: the product of all per-layer factors (a scalar array).
      norms: ``{path: per-matrix operator norm}`` (see :func:`spectral_norms`).
      factors: ``{path: per-matrix Lipschitz factor}``: the norm, times
        ``√(window size)`` for conv kernels under the default layout.
    """

    bound: jax.Array
    norms: dict[str, jax.Array]
    factors: dict[str, jax.Array]


def lipschitz_bound(
    model_or_params: Any, *, layout: LayoutSpec = None, geometry: str = "l2"
) -> LipschitzBound:
    """An upper bound on a network's Lipschitz constant: ∏ per-layer norms.

    For a feed-forward composition ``f = W_L ∘ φ ∘ … ∘ φ ∘ W_1`` with
    1-Lipschitz activations φ (ReLU, tanh; GELU is ≈1.13-Lipschitz, multiply
    accordingly) and biases, ``Lip(f) ≤ ∏ᵢ ‖W_i‖`` (the bound the constraints
    of arXiv 2507.13338 enforce). Every matrix of every selected
    leaf is one factor — a stacked ``(L, in, out)`` leaf contributes ``L``.
    A stride-1 (or strided) convolution with kernel ``K`` satisfies
    ``‖conv‖ ≤ √(kh·kw) · ‖K_{(kh·kw·in, out)}‖``, which the default layout
    uses for kernels under a ``conv*`` component. Norms are exact (SVD).
    Residual connections, attention and normalization layers are outside this
    simple product; the bound is then only a per-layer report.

    Args:
      model_or_params: a ``flax.nnx.Module`` or a parameter tree.
      layout: which leaves count and how they are matrices (default: every
        ``kernel`` leaf of rank ≥ 2, see :func:`spectral_norms`); with a
        custom layout each matrix counts as a plain linear map.
      geometry: ``'l2'`` (ℓ2→ℓ2, default) or ``'rms'`` (RMS→RMS, the paper's
        units; the ℓ2 bound is the RMS bound times ``√(d_out/d_in)``).

    References:
      Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training
      Transformers with Enforced Lipschitz Constants", arXiv 2507.13338.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> params = {'l1': {'kernel': 2.0 * jnp.eye(3)}, 'l2': {'kernel': 0.5 * jnp.ones((3, 1))}}
      >>> round(float(optx.constraints.lipschitz_bound(params).bound), 4)
      1.7321
    """
    norms = spectral_norms(model_or_params, layout=layout, geometry=geometry)
    params = _as_param_tree(model_or_params)
    factors: dict[str, jax.Array] = {}
    leaves = dict(base.flatten_with_paths(params)[0])
    for path, sigma in norms.items():
        factor = sigma
        if layout is None:
            shape = tuple(jnp.shape(leaves[path]))
            lay = layouts.resolve_layout(_bound_layout(path, leaves[path]), shape, path)
            if len(lay.reduction_axes) > 1:
                window = math.prod(shape[a] for a in lay.reduction_axes[:-1])
                factor = sigma * math.sqrt(window)
        factors[path] = factor
    bound = jnp.asarray(1.0, jnp.float32)
    for factor in factors.values():
        bound = bound.astype(jnp.promote_types(bound.dtype, factor.dtype))
        bound = bound * jnp.prod(factor)
    return LipschitzBound(bound=bound, norms=norms, factors=factors)
