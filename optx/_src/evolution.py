"""Evolution strategies: EGGROLL's low-rank antithetic pseudo-gradient and OpenES.

Sarkar et al., "Evolution Strategies at the Hyperscale" (EGGROLL, arXiv
2511.16652), official JAX code ``ESHyperscale/HyperscaleES`` @b77f7d6
(``noiser/eggroll.py``, ``noiser/open_es.py``, ``models/common.py``).

**Population.** ``N`` members (``N`` even) in antithetic pairs: member ``i``
uses noise index ``j = ⌊i/2⌋`` with sign ``+`` (even ``i``) or ``−`` (odd
``i``). The noise of every leaf is regenerated from keys, never stored: with
the per-leaf key ``k_W`` (:func:`es_tree_key`: ``jax.random.split(key, L)``
over the ``L`` leaves in tree order, then split again along every batch axis
of a stacked leaf — the official ``simple_es_tree_key``),

.. math:: k_{W,j} = \\mathrm{fold\\_in}(\\mathrm{fold\\_in}(k_W, e'), j),\\qquad
   e' = 0 \\text{ if noise\\_reuse} = 0 \\text{ else } ⌊\\text{generation} / \\text{noise\\_reuse}⌋.

**Low-rank perturbations** (leaves with a :class:`optx.MatrixLayout`, seen as
``(batch, fan_in, fan_out)``): ``Z = 𝒩(0, 1)^{(fan_in + fan_out) × r}`` from
``k_{W,j}`` in the parameter's dtype, ``B = Z[:fan_in]``, ``A = Z[fan_in:]``,

.. math:: E_i = \\frac{±σ}{\\sqrt r} B A^⊤ \\quad (fan\\_in × fan\\_out),

applied as ``x W + (x B)(±σ/√r · A)ᵀ`` (:func:`perturbed_matmul`, Flax
``(in, out)`` kernels) without forming ``E_i``. This is the official
``do_mm`` on the transposed PyTorch-layout weight: the same keys give the same
``Z``, ``B`` and ``A``. **Full-rank perturbations** (other leaves, or every
leaf with ``rank=None`` — OpenES): ``E_i = ±σ ε``, ``ε = 𝒩(0, 1)`` of the
leaf's shape (a matrix leaf draws its noise as the official ``(out, in)``
array and transposes it, so OpenES matches the official noiser too).
``freeze_nonmatrix=True`` leaves the full-rank leaves unperturbed (the
official ``freeze_nonlora``).

**Fitness shaping** (:func:`shape_fitness`, official ``convert_fitnesses``):
``f = (R − mean R)/√(var R + 10⁻⁵)``; with ``group_size > 0`` the mean is
taken per group of consecutive members and the variance over the whole
population.

**Pseudo-gradient** (ascent direction, official ``_do_update``):

.. math:: \\hat g = \\sqrt N \\cdot \\frac1N \\sum_i f_i E_i
   = \\frac{1}{\\sqrt N} \\sum_j (f_{2j} − f_{2j+1})\\,E_j^{+},

with no division by σ (σ and the ``√N`` are absorbed into the learning rate).
:func:`es_gradient` returns ``−ĝ`` — a descent direction, like a loss
gradient — so any optax/optx optimizer can consume it; ``estimator='mean'``
returns the textbook estimator ``−(1/(Nσ)) Σ_i f_i E_i`` instead
(``= −ĝ/(σ√N)``). :func:`scale_by_eggroll` is the same as a
``GradientTransformation`` whose ``update`` takes ``fitness`` and ``key`` as
extra arguments and counts generations; :func:`optx.eggroll` chains it with
an optimizer (SGD by default, as the official code).

**Evaluating members.** :func:`es_noise` gives member ``i``'s perturbation
tree (``LowRankNoise(b, a)`` factors for matrix leaves, arrays otherwise),
:func:`perturbed_matmul` applies it inside a model, :func:`perturb`
materializes ``θ + E_i`` for models that cannot take factors, and
:func:`es_evaluate` ``jax.vmap``\\ s a fitness function over the population.

Official-code quirks and what optx does:

* With ``noise_reuse = 0`` (the official default) the generation is never
  folded into the key: the noise is the same every generation unless the
  caller changes ``key`` (the official end-to-end test does not). optx
  defaults to ``noise_reuse=1`` (fresh noise every generation from a fixed
  key, as the official LLM scripts run); ``noise_reuse=0`` reproduces the
  official default.
* The official ``TMM`` layer (an ``(in, out)`` weight used as ``x @ W``) splits
  ``Z`` the other way round (``B = Z[:out]``); optx splits every matrix as the
  ``MM`` layer does on its ``(out, in)`` weight, i.e. ``B = Z[:fan_in]``. The
  two are equal in distribution.
* The official noise and pseudo-gradient are computed in the parameter dtype;
  optx draws the noise in the parameter dtype (same numbers) but sums over
  the population in ``promote(param dtype, float32)``.
* Embeddings are not perturbed by the official code (``do_emb`` raises); optx
  routes them to full-rank noise (:func:`es_router`).
* Parameters stacked along extra axes without a layout (a scanned bias
  ``(L, d)``) get one full-rank draw for the whole leaf, not one per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, routing, sharding
from optx._src.layouts import ResolvedLayout

FITNESS_SHAPINGS = ("standardize", "centered_ranks", "none")
ESTIMATORS = ("official", "mean")
FITNESS_EPS = 1e-5
"""The official ``convert_fitnesses`` variance floor."""

# A full-rank leaf whose per-pair noise would exceed this many bytes is
# accumulated pair by pair in a scan instead of one batched draw.
_VMAP_BYTES = 64 * 2**20

# Draws of one dtype are padded to a common size and made in one batched call
# when the sizes are within 2x, or when the padded block stays this small.
_SMALL_DRAW = 2**16

_LOWRANK, _FULL, _FROZEN = "lowrank", "full", "frozen"


class LowRankNoise(NamedTuple):
    """Member noise of one matrix leaf: ``E = B Aᵀ`` in the ``(fan_in, fan_out)`` view.

    Attributes:
      b: ``(*batch_shape, fan_in, rank)`` input-side factor ``B`` (unscaled).
      a: ``(*batch_shape, fan_out, rank)`` output-side factor, already scaled
        by the member's ``±σ/√rank``.
    """

    b: jax.Array
    a: jax.Array


class ScaleByEggrollState(NamedTuple):
    """State of :func:`scale_by_eggroll`: the generation counter (int32).

    ``optax.tree_utils.tree_get(opt_state, 'generation')`` reads it from a
    chained optimizer's state (pass it to :func:`es_evaluate`/:func:`es_noise`).
    """

    generation: jax.Array


def es_router() -> routing.Router:
    """The default router without its "head" rule: every kernel gets low-rank noise.

    Classifier heads and LM heads are Dense kernels like any other (the
    official MLP perturbs its last layer low-rank too); embeddings, biases,
    norm scales and scalars stay full-rank.
    """
    return _ES_ROUTER


_ES_ROUTER = routing.Router(tuple(r for r in routing.default_rules() if r.name != "head"))


# ----------------------------------------------------------------------------
# Validation and leaf classification
# ----------------------------------------------------------------------------


def _check_rank(rank: Any) -> int | None:
    if rank is None:
        return None
    return base.check_positive_int("rank", rank)


def _check_sigma(sigma: Any) -> None:
    if callable(sigma):
        return
    base.check_finite("sigma", sigma)
    base.check_in_range("sigma", sigma, 0.0, math.inf, low_inclusive=False)


def _check_population(n: int, group_size: int) -> None:
    if n < 2 or n % 2:
        raise ValueError(
            f"EGGROLL samples antithetic pairs: the population size must be even and >= 2, got {n}."
        )
    if group_size and n % group_size:
        raise ValueError(f"`group_size` ({group_size}) must divide the population size ({n}).")


def _check_common(
    sigma: Any,
    rank: Any,
    noise_reuse: Any,
    group_size: Any = 0,
    fitness_shaping: str = "standardize",
    estimator: str = "official",
) -> tuple[int | None, int, int]:
    _check_sigma(sigma)
    rank = _check_rank(rank)
    noise_reuse = base.check_positive_int("noise_reuse", noise_reuse, allow_zero=True)
    group_size = base.check_positive_int("group_size", group_size, allow_zero=True)
    base.check_choice("fitness_shaping", fitness_shaping, FITNESS_SHAPINGS)
    base.check_choice("estimator", estimator, ESTIMATORS)
    return rank, noise_reuse, group_size


def _leaf_plan(
    params: Any, rank: int | None, freeze_nonmatrix: bool, router: routing.Router | None
) -> tuple[list[tuple[str, ResolvedLayout | None]], Any]:
    """Per leaf (flatten order): its noise kind and resolved layout; the treedef."""
    resolve = layouts.resolved_layout_fn(es_router() if router is None else router)
    flat, treedef = base.flatten_with_paths(params)
    plan = []
    for path, leaf in flat:
        lay = resolve(path, leaf)
        if lay is not None:
            plan.append((_LOWRANK if rank is not None else _FULL, lay))
        else:
            plan.append((_FROZEN if freeze_nonmatrix else _FULL, None))
    return plan, treedef


def _epoch(generation: Any, noise_reuse: int) -> Any:
    if noise_reuse == 0:
        return 0
    return jnp.asarray(generation, jnp.int32) // noise_reuse


# ----------------------------------------------------------------------------
# Keys and noise
# ----------------------------------------------------------------------------


def _split_batch(key: jax.Array, batch_shape: tuple[int, ...]) -> jax.Array:
    """Official ``recursive_scan_split``: one key per batch index, axis by axis."""
    if not batch_shape:
        return key
    keys = jax.random.split(key, batch_shape[0])
    return jax.vmap(lambda k: _split_batch(k, batch_shape[1:]))(keys)


def es_tree_key(params: Any, key: jax.Array, *, router: routing.Router | None = None) -> Any:
    """Per-leaf noise keys: the official ``simple_es_tree_key``.

    ``jax.random.split(key, L)`` over the ``L`` leaves in tree-flatten order;
    a leaf with a layout and batch axes (a scanned ``(layers, in, out)``
    stack) gets an array of keys of its batch shape (split again along each
    batch axis in order), so every stacked matrix has its own noise.

    Args:
      params: the parameter tree (arrays or ``jax.ShapeDtypeStruct``).
      key: a typed (``jax.random.key``) or raw PRNG key.
      router: which leaves are matrices (default :func:`es_router`).

    Returns:
      A tree of keys with the structure of ``params``.
    """
    plan, treedef = _leaf_plan(params, 1, False, router)
    keys = jax.random.split(key, len(plan))
    out = [
        _split_batch(keys[i], lay.batch_shape if lay is not None else ())
        for i, (_, lay) in enumerate(plan)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _noise_dtype(leaf: Any) -> Any:
    dtype = jnp.dtype(leaf.dtype)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _sample_shape(kind: str, lay: ResolvedLayout | None, shape: tuple[int, ...], rank: Any):
    """Shape of one ``jax.random.normal`` draw per key of a leaf."""
    if kind == _LOWRANK:
        return (lay.fan_in + lay.fan_out, rank)
    if lay is not None:  # full-rank matrix: the official (out, in) draw
        return (lay.fan_out, lay.fan_in)
    return shape


def _prefix_draws_ok(keys: jax.Array) -> bool:
    """Whether ``normal(k, (n,))[:m]`` equals ``normal(k, (m,))`` (row-major).

    True for JAX's partitionable threefry (the default): the bits of element
    ``i`` depend on the key and ``i`` only. Then draws of different sizes
    share one padded, batched ``normal`` (one hash and one ``erfinv`` in the
    compiled program instead of one per leaf).
    """
    try:
        impl = str(jax.random.key_impl(keys))
    except Exception:
        return False
    return bool(jax.config.jax_threefry_partitionable) and "threefry" in impl


def _draw_normals(requests: list[tuple[jax.Array, tuple[int, ...], Any]]) -> list[jax.Array]:
    """``normal(k, shape, dtype)`` for every key ``k`` of every request.

    Each request is ``(keys, sample_shape, dtype)``; the result has shape
    ``(*keys.shape, *sample_shape)`` and the same numbers as separate calls.
    Draws of one dtype whose sizes are within 2x of each other (or that are
    all small) are made by one batched call of the largest size, then sliced.
    """
    out: list[Any] = [None] * len(requests)
    if not requests:
        return out
    if not _prefix_draws_ok(requests[0][0]):
        for i, (keys, shape, dtype) in enumerate(requests):
            flat = jnp.reshape(keys, (-1,))
            z = jax.vmap(lambda k, sh=shape, dt=dtype: jax.random.normal(k, sh, dt))(flat)
            out[i] = jnp.reshape(z, (*jnp.shape(keys), *shape))
        return out
    order = sorted(
        range(len(requests)), key=lambda i: (str(requests[i][2]), math.prod(requests[i][1]))
    )
    buckets: list[list[int]] = []
    for i in order:
        size, dtype = math.prod(requests[i][1]), jnp.dtype(requests[i][2])
        if buckets and jnp.dtype(requests[buckets[-1][0]][2]) == dtype:
            smallest = max(math.prod(requests[buckets[-1][0]][1]), 1)
            count = sum(math.prod(jnp.shape(requests[j][0])) for j in (*buckets[-1], i))
            if size <= 2 * smallest or size * count <= _SMALL_DRAW:
                buckets[-1].append(i)
                continue
        buckets.append([i])
    for bucket in buckets:
        width = max(math.prod(requests[i][1]) for i in bucket)
        dtype = requests[bucket[0]][2]
        flat = jnp.concatenate([jnp.reshape(requests[i][0], (-1,)) for i in bucket])
        z = base.materialized(
            jax.vmap(lambda k, w=width, dt=dtype: jax.random.normal(k, (w,), dt)), flat
        )
        # Static row offsets: at runtime offsets (``base.runtime_offsets``) the
        # consumers of same-shape draws share kernels (EGGROLL, unscanned benchmark
        # tree: 245 -> 123 LLVM kernels, compile 3.0 -> 1.95 s), but the step took
        # 8 % longer (246 against 227 ms): kept static.
        start = 0
        for i in bucket:
            keys, shape, _ = requests[i]
            n = math.prod(jnp.shape(keys))
            block = z[start : start + n, : math.prod(shape)]
            out[i] = jnp.reshape(block, (*jnp.shape(keys), *shape))
            start += n
    return out


def _pair_keys(leaf_keys: list[jax.Array], epoch: Any, pairs: jax.Array) -> list[jax.Array]:
    """``fold_in(fold_in(k, epoch), j)`` for every leaf key ``k`` and pair ``j``.

    All leaves' keys are folded in two batched calls (one hash each, not one
    per leaf: compile time). Returns per leaf ``(len(pairs), *key_shape)``.
    """
    if not leaf_keys:  # an empty parameter tree has no noise to draw
        return []
    shapes = [jnp.shape(k) for k in leaf_keys]
    sizes = [math.prod(sh) for sh in shapes]
    flat = jnp.concatenate([jnp.reshape(k, (-1,)) for k in leaf_keys])
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    flat = fold(flat, epoch)
    per_pair = jax.vmap(lambda j: fold(flat, j))(pairs)
    # Runtime offsets: the key slices of same-shape leaves share kernels (EGGROLL,
    # unscanned benchmark tree: 272 -> 245 LLVM kernels; the same step time).
    pieces = base.split_consecutive(per_pair, sizes, flat, axis=1)
    return [
        jnp.reshape(piece, (pairs.shape[0], *sh)) for sh, piece in zip(shapes, pieces, strict=True)
    ]


def _split_lowrank(z: jax.Array, lay: ResolvedLayout) -> tuple[jax.Array, jax.Array]:
    """``Z (..., fan_in + fan_out, r)`` → ``(B, A)`` = ``(Z[..., :fan_in, :], Z[..., fan_in:, :])``."""
    return z[..., : lay.fan_in, :], z[..., lay.fan_in :, :]


def _full_from_draw(z: jax.Array, lay: ResolvedLayout | None, lead: int) -> jax.Array:
    """Full-rank noise in the leaf's axes from its draw ``(*lead, [batch...,] sample)``."""
    if lay is None:
        return z
    mats = jnp.swapaxes(jnp.reshape(z, (-1, lay.batch_size, lay.fan_out, lay.fan_in)), -1, -2)
    leaves = jax.vmap(lambda m: layouts.from_matrices(m, lay))(mats)
    return jnp.reshape(leaves, (*z.shape[:lead], *lay.shape))


def es_noise(
    params: Any,
    key: jax.Array,
    member: Any,
    *,
    sigma: Any,
    rank: int | None = 1,
    generation: Any = 0,
    noise_reuse: int = 1,
    freeze_nonmatrix: bool = False,
    router: routing.Router | None = None,
) -> Any:
    """Member ``member``'s perturbation tree (regenerated from ``key``).

    Matrix leaves get :class:`LowRankNoise` factors (``b``: ``(*batch, fan_in,
    r)``, ``a``: ``(*batch, fan_out, r)`` scaled by ``±σ/√r``); other leaves
    (and every leaf with ``rank=None``) get ``±σ ε`` of the leaf's shape;
    frozen leaves get zeros. Use :func:`perturbed_matmul` to apply a
    ``LowRankNoise`` inside a model and :func:`perturb` to materialize.

    Args:
      params: the parameter tree (only shapes/dtypes are read).
      key: the ES key passed to :func:`scale_by_eggroll`'s ``update``.
      member: the member index in ``[0, N)`` (int or traced int).
      sigma: the noise scale σ (the value :func:`scale_by_eggroll` uses at
        this generation).
      rank: the perturbation rank (None: full-rank, OpenES).
      generation: the generation index (``ScaleByEggrollState.generation``).
      noise_reuse, freeze_nonmatrix, router: as in :func:`scale_by_eggroll`.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}}
      >>> noise = optx.evolution.es_noise(params, jax.random.key(0), 1, sigma=0.1, rank=1)
      >>> noise['dense']['kernel'].b.shape, noise['dense']['kernel'].a.shape
      ((3, 1), (2, 1))
    """
    rank, noise_reuse, _ = _check_common(sigma, rank, noise_reuse)
    member = jnp.asarray(member, jnp.int32)
    noise = _pair_noise(
        params,
        key,
        (member // 2)[None],
        _signed_sigma(member, sigma),
        rank=rank,
        generation=generation,
        noise_reuse=noise_reuse,
        freeze_nonmatrix=freeze_nonmatrix,
        router=router,
    )
    return jax.tree.map(lambda n: n[0], noise)


def _signed_sigma(member: jax.Array, sigma: Any) -> jax.Array:
    """``+σ`` for even members, ``−σ`` for odd ones."""
    return jnp.where(member % 2 == 0, 1.0, -1.0) * sigma


def _pair_noise(
    params: Any,
    key: jax.Array,
    pairs: jax.Array,
    scale: Any,
    *,
    rank: int | None,
    generation: Any,
    noise_reuse: int,
    freeze_nonmatrix: bool,
    router: routing.Router | None,
) -> Any:
    """:func:`es_noise` of the noise indices ``pairs`` with ``±σ`` = ``scale``.

    Every leaf gets a leading axis of ``len(pairs)``. All pairs' draws are made
    together, outside any ``vmap`` over members, so each batched draw is
    computed once (:func:`_draw_normals`) and not inside every consumer.
    """
    plan, treedef = _leaf_plan(params, rank, freeze_nonmatrix, router)
    leaves = jax.tree_util.tree_leaves(params)
    leaf_keys = jax.tree_util.tree_leaves(es_tree_key(params, key, router=router))
    keys = _pair_keys(leaf_keys, _epoch(generation, noise_reuse), pairs)
    drawn = [i for i, (kind, _) in enumerate(plan) if kind != _FROZEN]
    draws = _draw_normals(
        [
            (
                keys[i],
                _sample_shape(plan[i][0], plan[i][1], tuple(leaves[i].shape), rank),
                _noise_dtype(leaves[i]),
            )
            for i in drawn
        ]
    )
    draw_of = dict(zip(drawn, draws, strict=True))
    n = pairs.shape[0]
    out = []
    for i, ((kind, lay), leaf) in enumerate(zip(plan, leaves, strict=True)):
        dtype = _noise_dtype(leaf)
        if kind == _FROZEN:
            out.append(jnp.zeros((n, *leaf.shape), dtype))
        elif kind == _FULL:
            eps = _full_from_draw(draw_of[i], lay, 1)
            out.append((eps * scale).astype(dtype))
        else:
            fb, fa = _split_lowrank(draw_of[i], lay)
            out.append(LowRankNoise(fb, (fa * (scale / math.sqrt(rank))).astype(dtype)))
    return jax.tree_util.tree_unflatten(treedef, out)


def perturbed_matmul(x: jax.Array, kernel: jax.Array, noise: Any = None) -> jax.Array:
    """``x @ (kernel + E)`` for a Flax ``(in, out)`` kernel, without forming ``E``.

    With a :class:`LowRankNoise` ``(b, a)`` this is ``x W + (x B)(σ/√r A)ᵀ``
    (``O(r(in + out))`` extra work per row instead of ``O(in·out)``); with an
    array it is ``x (W + E)``; with None, ``x W``. ``kernel`` may carry
    leading batch axes matched by ``noise`` (a scanned stack).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> params = {'dense': {'kernel': jnp.ones((3, 2))}}
      >>> noise = optx.evolution.es_noise(params, jax.random.key(0), 0, sigma=0.1)
      >>> y = optx.evolution.perturbed_matmul(jnp.ones((5, 3)), params['dense']['kernel'],
      ...                           noise['dense']['kernel'])
      >>> y.shape
      (5, 2)
    """
    y = jnp.matmul(x, kernel)
    if noise is None:
        return y
    if isinstance(noise, LowRankNoise):
        return y + jnp.matmul(jnp.matmul(x, noise.b), jnp.swapaxes(noise.a, -1, -2))
    return jnp.matmul(x, kernel + noise)


def perturb(params: Any, noise: Any, *, router: routing.Router | None = None) -> Any:
    """Materializes ``θ + E`` (for models that cannot take noise factors).

    ``router`` must be the one :func:`es_noise` used (it gives the layouts
    that map a ``LowRankNoise`` back to the parameter's axes).
    """
    resolve = layouts.resolved_layout_fn(es_router() if router is None else router)

    def leaf(path: Any, p: Any, n: Any) -> Any:
        if not isinstance(n, LowRankNoise):
            return (p + n).astype(p.dtype)
        lay = resolve(base.path_to_str(path), p)
        b = jnp.reshape(n.b, (lay.batch_size, lay.fan_in, -1))
        a = jnp.reshape(n.a, (lay.batch_size, lay.fan_out, -1))
        e = layouts.from_matrices(b @ jnp.swapaxes(a, -1, -2), lay)
        return (p + e).astype(p.dtype)

    return jax.tree_util.tree_map_with_path(leaf, params, noise)


def es_evaluate(
    fitness_fn: Callable[..., jax.Array],
    params: Any,
    key: jax.Array,
    population_size: int,
    *,
    sigma: Any,
    rank: int | None = 1,
    generation: Any = 0,
    noise_reuse: int = 1,
    freeze_nonmatrix: bool = False,
    router: routing.Router | None = None,
    member_args: Any = None,
) -> jax.Array:
    """Fitness of every member: ``jax.vmap`` of ``fitness_fn`` over the population.

    ``fitness_fn(params, noise)`` — or ``fitness_fn(params, noise, args)``
    when ``member_args`` is given — receives the unperturbed parameters and
    the member's :func:`es_noise` tree (apply it with
    :func:`perturbed_matmul`, or ``perturb(params, noise)``) and returns a
    scalar to **maximize** (a negative loss, a return). ``member_args`` is a
    pytree whose leaves have a leading axis of size ``population_size``
    (e.g. one input batch per member, as the official end-to-end test gives
    each member its own input); member ``i`` gets slice ``i``.

    Returns:
      ``(population_size,)`` fitness values, in member order.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> params = {'dense': {'kernel': jnp.zeros((3, 1))}}
      >>> def fitness_fn(p, noise):
      ...     y = optx.evolution.perturbed_matmul(jnp.ones((1, 3)), p['dense']['kernel'],
      ...                               noise['dense']['kernel'])
      ...     return -jnp.sum((y - 2.0) ** 2)
      >>> f = optx.evolution.es_evaluate(fitness_fn, params, jax.random.key(0), 8, sigma=0.1)
      >>> f.shape
      (8,)
    """
    population_size = base.check_positive_int("population_size", population_size)
    _check_population(population_size, 0)

    def call(noise: Any, args: Any) -> jax.Array:
        return fitness_fn(params, noise) if member_args is None else fitness_fn(params, noise, args)

    rank, noise_reuse, _ = _check_common(sigma, rank, noise_reuse)
    pairs = population_size // 2
    # Members 2j and 2j+1 share pair j's draw with opposite signs (exact
    # negation). All pairs are drawn before the vmap over pairs: a draw inside
    # it would be recomputed in every consumer of the noise (compile time).
    noise = _pair_noise(
        params,
        key,
        jnp.arange(pairs),
        _signed_sigma(jnp.zeros((), jnp.int32), sigma),
        rank=rank,
        generation=generation,
        noise_reuse=noise_reuse,
        freeze_nonmatrix=freeze_nonmatrix,
        router=router,
    )

    def pair(_: jax.Array, plus: Any, args: Any) -> jax.Array:
        minus = jax.tree.map(
            lambda n: LowRankNoise(n.b, -n.a) if isinstance(n, LowRankNoise) else -n,
            plus,
            is_leaf=lambda n: isinstance(n, LowRankNoise),
        )
        if member_args is None:
            return jnp.stack([call(plus, None), call(minus, None)])
        first = jax.tree.map(lambda a: a[0], args)
        second = jax.tree.map(lambda a: a[1], args)
        return jnp.stack([call(plus, first), call(minus, second)])

    paired = jax.tree.map(lambda a: jnp.reshape(a, (pairs, 2, *jnp.shape(a)[1:])), member_args)
    # The pair index keeps the vmap well-defined for an empty parameter tree.
    mapped = jax.vmap(pair)(jnp.arange(pairs), noise, paired)
    return jnp.reshape(mapped, (population_size,))


# ----------------------------------------------------------------------------
# Fitness shaping and the pseudo-gradient
# ----------------------------------------------------------------------------


def _centered_ranks(x: jax.Array) -> jax.Array:
    n = x.shape[-1]
    ranks = jnp.argsort(jnp.argsort(x, axis=-1), axis=-1).astype(x.dtype)
    return ranks / max(n - 1, 1) - 0.5


def shape_fitness(
    fitness: jax.Array, *, method: str = "standardize", group_size: int = 0
) -> jax.Array:
    """Fitness shaping (official ``convert_fitnesses``).

    * ``'standardize'``: ``(R − mean R)/√(var R + 10⁻⁵)``; with ``group_size``
      the mean is per group of consecutive members, the variance global
      (the official grouped form).
    * ``'centered_ranks'``: ranks mapped to ``[−½, ½]`` (Salimans et al.,
      arXiv 1703.03864), per group when ``group_size`` is set.
    * ``'none'``: the raw values.

    Computed in ``promote(fitness dtype, float32)``.
    """
    base.check_choice("fitness_shaping", method, FITNESS_SHAPINGS)
    group_size = base.check_positive_int("group_size", group_size, allow_zero=True)
    if fitness.ndim != 1:
        raise ValueError(f"`fitness` must be a vector (one value per member), got {fitness.shape}.")
    f = fitness.astype(base.compute_dtype(fitness.dtype))
    if method == "none":
        return f
    groups = f.reshape(-1, group_size) if group_size else f[None]
    if method == "centered_ranks":
        return _centered_ranks(groups).ravel()
    centered = groups - jnp.mean(groups, axis=-1, keepdims=True)
    return (centered / jnp.sqrt(jnp.var(f) + FITNESS_EPS)).ravel()


def _pair_sum(d: jax.Array, noise: jax.Array) -> jax.Array:
    """``Σ_j d_j noise_j`` over the leading (pair) axis, in ``d``'s dtype."""
    return jnp.tensordot(d, noise.astype(d.dtype), axes=1)


def _lowrank_gradient(z: jax.Array, lay: ResolvedLayout, d: jax.Array) -> jax.Array:
    """``Σ_j d_j B_j A_jᵀ`` from the draws ``(P, *batch, fan_in + fan_out, r)``."""
    z = jnp.reshape(z, (d.shape[0], lay.batch_size, *z.shape[-2:])).astype(d.dtype)
    fb, fa = _split_lowrank(z, lay)
    mats = jnp.einsum("p,pbir,pbjr->bij", d, fb, fa)
    return layouts.from_matrices(mats, lay)


def _scanned_full_gradient(
    keys: jax.Array, shape: tuple[int, ...], lay: ResolvedLayout | None, dtype: Any, d: jax.Array
) -> jax.Array:
    """``Σ_j d_j ε_j`` pair by pair in a scan (large leaves: O(leaf) memory)."""
    sample = _sample_shape(_FULL, lay, shape, None)

    def body(acc: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        k, dj = xs
        (z,) = _draw_normals([(k, sample, dtype)])
        eps = _full_from_draw(z[None], lay, 1)[0]
        return acc + dj * eps.astype(acc.dtype), None

    acc, _ = base.scan(body, jnp.zeros(shape, d.dtype), (keys, d))
    return acc


def es_gradient(
    params: Any,
    fitness: jax.Array,
    key: jax.Array,
    *,
    sigma: Any,
    rank: int | None = 1,
    generation: Any = 0,
    noise_reuse: int = 1,
    group_size: int = 0,
    fitness_shaping: str = "standardize",
    estimator: str = "official",
    freeze_nonmatrix: bool = False,
    router: routing.Router | None = None,
) -> Any:
    """The ES pseudo-gradient ``−ĝ`` (a descent direction) from raw fitnesses.

    ``fitness[i]`` is member ``i``'s fitness (to maximize), evaluated at the
    perturbation :func:`es_noise` gives for the same ``key``, ``generation``
    and settings. See the module docstring for the math; with the default
    ``estimator='official'`` the result equals, up to the sign, what the
    official ``EggRoll.do_updates`` hands to its optax solver.

    Returns:
      A tree with the structure and dtypes of ``params``.
    """
    rank, noise_reuse, group_size = _check_common(
        sigma, rank, noise_reuse, group_size, fitness_shaping, estimator
    )
    fitness = jnp.asarray(fitness)
    if fitness.ndim != 1:
        raise ValueError(f"`fitness` must be a vector (one value per member), got {fitness.shape}.")
    n = int(fitness.shape[0])
    _check_population(n, group_size)
    f = shape_fitness(fitness, method=fitness_shaping, group_size=group_size)
    plan, treedef = _leaf_plan(params, rank, freeze_nonmatrix, router)
    leaves = jax.tree_util.tree_leaves(params)
    leaf_keys = jax.tree_util.tree_leaves(es_tree_key(params, key, router=router))
    keys = _pair_keys(leaf_keys, _epoch(generation, noise_reuse), jnp.arange(n // 2))
    d = f[0::2] - f[1::2]
    shapes = [tuple(leaf.shape) for leaf in leaves]

    def scanned(i: int) -> bool:
        size = math.prod(shapes[i]) * jnp.dtype(d.dtype).itemsize * d.shape[0]
        return plan[i][0] == _FULL and size > _VMAP_BYTES

    drawn = [i for i, (kind, _) in enumerate(plan) if kind != _FROZEN and not scanned(i)]
    draws = _draw_normals(
        [
            (
                keys[i],
                _sample_shape(plan[i][0], plan[i][1], shapes[i], rank),
                _noise_dtype(leaves[i]),
            )
            for i in drawn
        ]
    )
    draw_of = dict(zip(drawn, draws, strict=True))
    out = []
    for i, ((kind, lay), leaf) in enumerate(zip(plan, leaves, strict=True)):
        if kind == _FROZEN:
            out.append(jnp.zeros(shapes[i], leaf.dtype))
            continue
        cdt = base.compute_dtype(leaf.dtype, d.dtype)
        di = d.astype(cdt)
        if kind == _LOWRANK:
            g = _lowrank_gradient(draw_of[i], lay, di) / math.sqrt(rank)
        elif i in draw_of:
            g = _pair_sum(di, _full_from_draw(draw_of[i], lay, 1))
        else:
            g = _scanned_full_gradient(keys[i], shapes[i], lay, _noise_dtype(leaf), di)
        if estimator == "official":
            g = g * (jnp.asarray(sigma, cdt) / math.sqrt(n))
        else:
            g = g / n
        out.append(sharding.reshard_like((-g).astype(leaf.dtype), leaf))
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------
# The transform
# ----------------------------------------------------------------------------


@hyperparams.validated()
def scale_by_eggroll(
    sigma: base.ScalarOrSchedule,
    rank: int | None = 1,
    *,
    population_size: int | None = None,
    noise_reuse: int = 1,
    group_size: int = 0,
    fitness_shaping: str = "standardize",
    estimator: str = "official",
    freeze_nonmatrix: bool = False,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Replaces the incoming updates by the EGGROLL pseudo-gradient ``−ĝ``.

    ``update(updates, state, params, *, fitness, key)``: ``fitness`` is the
    ``(N,)`` vector of raw member fitnesses (to maximize) evaluated with
    :func:`es_noise`/:func:`es_evaluate` at the current parameters, the same
    ``key``, and ``generation = state.generation``; ``updates`` are ignored
    (pass ``params`` or zeros: only their structure and dtypes are used).
    Emits :func:`es_gradient` — a descent direction — so chain it with any
    optimizer (:func:`optx.eggroll` does). Stateless apart from the
    generation counter: the noise is regenerated from ``key``.

    Args:
      sigma: σ, the noise scale (scalar or schedule of the generation).
      rank: ``r`` of the low-rank perturbations (None: full-rank, OpenES).
      population_size: ``N`` if known (validated here and checked against
        ``fitness``); None takes it from ``fitness``.
      noise_reuse: generations that share one noise draw (0: never fold the
        generation in — the official default, see the module docstring).
      group_size: fitness-shaping groups of consecutive members (0: none).
      fitness_shaping: ``'standardize'`` (official), ``'centered_ranks'`` or
        ``'none'``.
      estimator: ``'official'`` (``√N·mean(f E)``, no ``1/σ``) or ``'mean'``
        (``mean(f E)/σ``).
      freeze_nonmatrix: do not perturb (nor update) leaves without a layout.
      router: which leaves are matrices (default :func:`es_router`).

    Raises:
      ValueError: for an odd or too small population, ``rank < 1``,
        ``σ ≤ 0``, or a ``group_size`` that does not divide ``N``.

    References:
      Sarkar et al., "Evolution Strategies at the Hyperscale", arXiv
      2511.16652 (code: github.com/ESHyperscale/HyperscaleES,
      ``noiser/eggroll.py``).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> params = {'w': {'kernel': jnp.ones((3, 2))}}
      >>> tx = optx.scale_by_eggroll(0.1, rank=1)
      >>> state = tx.init(params)
      >>> fitness = jnp.arange(4.0)
      >>> g, state = tx.update(params, state, params, fitness=fitness, key=jax.random.key(0))
      >>> g['w']['kernel'].shape, int(state.generation)
      ((3, 2), 1)
    """
    rank, noise_reuse, group_size = _check_common(
        sigma, rank, noise_reuse, group_size, fitness_shaping, estimator
    )
    if population_size is not None:
        population_size = base.check_positive_int("population_size", population_size)
        _check_population(population_size, group_size)

    def init_fn(params: base.Params) -> ScaleByEggrollState:
        base.check_real_params(params, "optx.scale_by_eggroll")
        return ScaleByEggrollState(generation=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: base.Updates,
        state: ScaleByEggrollState,
        params: base.Params | None = None,
        *,
        fitness: jax.Array,
        key: jax.Array,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByEggrollState]:
        del extra
        if params is None:
            raise ValueError(
                "scale_by_eggroll needs the parameters: update(updates, state, params)."
            )
        n = jnp.shape(fitness)[0] if jnp.ndim(fitness) else None
        if population_size is not None and n != population_size:
            raise ValueError(
                f"`fitness` has {n} members but population_size={population_size} was given."
            )
        s = sigma(state.generation) if callable(sigma) else sigma
        g = es_gradient(
            params,
            fitness,
            key,
            sigma=s,
            rank=rank,
            generation=state.generation,
            noise_reuse=noise_reuse,
            group_size=group_size,
            fitness_shaping=fitness_shaping,
            estimator=estimator,
            freeze_nonmatrix=freeze_nonmatrix,
            router=router,
        )
        g = jax.tree.map(lambda x, u: x.astype(u.dtype), g, updates)
        return g, ScaleByEggrollState(optax.safe_increment(state.generation))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
