"""Evolution strategies: EGGROLL and OpenES as optimizers, and their registrations.

The primitives (noise, perturbed matmul, fitness shaping, the pseudo-gradient
transform) live in :mod:`optx._src.evolution`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from optx._src import base, evolution, hyperparams, nonfinite, registry, routing


@hyperparams.validated()
def eggroll(
    learning_rate: base.ScalarOrSchedule,
    sigma: base.ScalarOrSchedule,
    rank: int | None = None,
    *,
    population_size: int | None = None,
    noise_reuse: int | None = None,
    group_size: int | None = None,
    fitness_shaping: str = "standardize",
    estimator: str = "official",
    freeze_nonmatrix: bool = False,
    optimizer: Callable[..., optax.GradientTransformation] | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """EGGROLL: low-rank antithetic evolution strategies feeding an optax optimizer.

    Each generation, ``N`` members evaluate the model at ``θ + E_i`` with
    rank-``r`` perturbations ``E_i = (±σ/√r) B_i A_iᵀ`` of every matrix
    (full-rank ``±σ ε_i`` elsewhere), regenerated from ``key`` (never stored;
    see :mod:`optx._src.evolution` for the key schedule). The pseudo-gradient

    .. math:: \\hat g = \\frac{1}{\\sqrt N} \\sum_i f_i E_i,
       \\qquad f = \\frac{R - \\bar R}{\\sqrt{\\mathrm{var}(R) + 10^{-5}}},

    (arXiv 2511.16652, Alg. 1; official ``EggRoll._do_update``, no ``1/σ``)
    is handed, negated, to ``optimizer(learning_rate)`` — ``optax.sgd`` by
    default, as the official ``init_noiser`` — so ``θ ← θ + η ĝ`` for SGD.

    ``update(updates, state, params, *, fitness, key)``: ``fitness`` holds the
    ``N`` raw fitnesses (to maximize) measured with :func:`optx.evolution.es_evaluate`
    (or :func:`optx.evolution.es_noise` + :func:`optx.evolution.perturbed_matmul`) at the current
    parameters with the same ``key``, ``sigma``, ``rank`` and generation
    (``optax.tree_utils.tree_get(state, 'generation')``); ``updates`` are
    ignored (pass ``params``).

    Args:
      learning_rate: η of the outer optimizer.
      sigma: σ (scalar or schedule of the generation).
      rank: perturbation rank (static; None = 1, the paper's headline runs;
        full-rank noise is :func:`optx.openes`).
      population_size: N, validated when given (even, >= 2).
      noise_reuse: generations per noise draw (0: the official default, the
        generation is never folded into the key; static; None = 1).
      group_size: fitness-shaping groups (official ``group_size``; 0: none;
        static; None = 0).
      fitness_shaping: ``'standardize'`` (official), ``'centered_ranks'``,
        ``'none'``.
      estimator: ``'official'`` or ``'mean'`` (divides by ``σ√N``).
      freeze_nonmatrix: keep leaves without a layout fixed (official
        ``freeze_nonlora``).
      optimizer: a factory ``learning_rate -> GradientTransformation`` for the
        outer step (``optax.adam``, ``functools.partial(optax.adamw, b1=0.9)``,
        ``optx.muon``, ...); default ``optax.sgd``. List it in ``static_args``
        when wrapping ``eggroll`` in ``optax.inject_hyperparams``.
      router: which leaves get low-rank noise (default :func:`optx.evolution.es_router`:
        every kernel, classifier head included).

    Official-code quirks (all reproduced unless noted): noise in the
    parameter dtype; antithetic pairs ``(2j, 2j+1)``; ``B = Z[:fan_in]``,
    ``A = Z[fan_in:]``; the ``√N`` factor and no ``1/σ``; grouped
    standardization divides by the *global* std. Deviations: ``noise_reuse``
    defaults to 1 (official 0 keeps the noise fixed unless the caller changes
    the key); sums over the population run in ``promote(dtype, float32)``;
    embeddings get full-rank noise (official: not supported).

    Complex parameters: refused at init (a TypeError naming the leaf) because its perturbations
      are real Gaussian noise, which does not rotate with the parameters.

    Non-finite inputs: a NaN or Inf in ``fitness`` (or anything the step computes
    from it) skips the whole step — zero updates, state unchanged, counted in the
    outer :class:`optx.SkipIfNotFiniteState` (README "Reliability",
    :func:`optx.skip_if_not_finite`).

    References:
      Sarkar et al., "Evolution Strategies at the Hyperscale", arXiv
      2511.16652 (code: github.com/ESHyperscale/HyperscaleES @b77f7d6,
      ``noiser/eggroll.py``); Salimans et al., "Evolution Strategies as a
      Scalable Alternative to Reinforcement Learning", arXiv 1703.03864.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> params = {'dense': {'kernel': jnp.zeros((3, 1))}}
      >>> def fitness_fn(p, noise):
      ...     y = optx.evolution.perturbed_matmul(jnp.ones((1, 3)), p['dense']['kernel'],
      ...                               noise['dense']['kernel'])
      ...     return -jnp.sum((y - 2.0) ** 2)
      >>> tx = optx.eggroll(0.1, sigma=0.1, rank=1)
      >>> key = jax.random.key(0)
      >>> @jax.jit
      ... def generation(params, state):
      ...     gen = optax.tree_utils.tree_get(state, 'generation')
      ...     f = optx.evolution.es_evaluate(fitness_fn, params, key, 16, sigma=0.1, generation=gen)
      ...     u, state = tx.update(params, state, params, fitness=f, key=key)
      ...     return optax.apply_updates(params, u), state
      >>> state = tx.init(params)
      >>> for _ in range(50):
      ...     params, state = generation(params, state)
      >>> y = jnp.ones((1, 3)) @ params['dense']['kernel']
      >>> bool(jnp.abs(y - 2.0).max() < 0.1)
      True
    """
    return _es_alias(
        learning_rate,
        sigma,
        1 if rank is None else rank,
        population_size=population_size,
        noise_reuse=noise_reuse,
        group_size=group_size,
        fitness_shaping=fitness_shaping,
        estimator=estimator,
        freeze_nonmatrix=freeze_nonmatrix,
        optimizer=optimizer,
        router=router,
    )


def _es_alias(
    learning_rate: base.ScalarOrSchedule,
    sigma: base.ScalarOrSchedule,
    rank: int | None,
    *,
    population_size: int | None,
    noise_reuse: int | None,
    group_size: int | None,
    fitness_shaping: str,
    estimator: str,
    freeze_nonmatrix: bool,
    optimizer: Callable[..., optax.GradientTransformation] | None,
    router: routing.Router | None,
) -> optax.GradientTransformationExtraArgs:
    """:func:`eggroll`'s chain for a resolved ``rank`` (None: full-rank noise)."""
    factory = optax.sgd if optimizer is None else optimizer
    if not callable(factory):
        raise TypeError(
            "`optimizer` must be a factory learning_rate -> GradientTransformation "
            f"(e.g. optax.adam), got {type(optimizer).__name__}."
        )
    es = evolution.scale_by_eggroll(
        sigma,
        rank,
        population_size=population_size,
        noise_reuse=1 if noise_reuse is None else noise_reuse,
        group_size=0 if group_size is None else group_size,
        fitness_shaping=fitness_shaping,
        estimator=estimator,
        freeze_nonmatrix=freeze_nonmatrix,
        router=router,
    )
    tx = nonfinite.skip_if_not_finite(
        optax.chain(es, factory(learning_rate)), ("fitness",), check_outputs=False
    )
    layers = evolution.es_router() if router is None else router
    # Low-rank noise follows each matrix view; full-rank noise does not need one.
    return routing.attach_router(tx, layers, warn_guessed=rank is not None)


@hyperparams.validated()
def openes(
    learning_rate: base.ScalarOrSchedule,
    sigma: base.ScalarOrSchedule,
    *,
    population_size: int | None = None,
    noise_reuse: int | None = None,
    group_size: int | None = None,
    fitness_shaping: str = "standardize",
    estimator: str = "official",
    freeze_nonmatrix: bool = False,
    optimizer: Callable[..., optax.GradientTransformation] | None = None,
    router: routing.Router | None = None,
) -> optax.GradientTransformationExtraArgs:
    """OpenES: full-rank antithetic ES, EGGROLL's ``rank = full`` baseline.

    :func:`optx.eggroll` with ``rank=None``: every leaf is perturbed by
    ``E_i = ±σ ε_i`` with ``ε_i ~ 𝒩(0, I)`` of the leaf's shape and
    ``ĝ = (1/√N) Σ_i f_i E_i`` (official ``noiser/open_es.py``: the same key
    schedule, fitness shaping and scaling as ``EggRoll``; a matrix's noise is
    drawn as the official ``(out, in)`` array). Evaluate members with
    ``optx.evolution.es_evaluate(..., rank=None)``. Costs ``O(N·d)`` noise per
    generation, against ``O(N·r(m + n))`` per ``m × n`` matrix for EGGROLL.

    Args:
      learning_rate, sigma, population_size, noise_reuse, group_size,
      fitness_shaping, estimator, freeze_nonmatrix, optimizer, router: as in
        :func:`optx.eggroll`.

    Non-finite inputs: a NaN or Inf in ``fitness`` (or anything the step computes
    from it) skips the whole step — zero updates, state unchanged, counted in the
    outer :class:`optx.SkipIfNotFiniteState` (README "Reliability",
    :func:`optx.skip_if_not_finite`).

    References:
      Salimans et al., "Evolution Strategies as a Scalable Alternative to
      Reinforcement Learning", arXiv 1703.03864; Sarkar et al., arXiv
      2511.16652 (code: github.com/ESHyperscale/HyperscaleES,
      ``noiser/open_es.py``).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> params = {'w': jnp.zeros(3)}
      >>> tx = optx.openes(0.1, sigma=0.1)
      >>> f = optx.evolution.es_evaluate(lambda p, n: -jnp.sum((p['w'] + n['w'] - 1.0) ** 2),
      ...                      params, jax.random.key(0), 8, sigma=0.1, rank=None)
      >>> u, state = tx.update(params, tx.init(params), params, fitness=f, key=jax.random.key(0))
    """
    return _es_alias(
        learning_rate,
        sigma,
        None,
        population_size=population_size,
        noise_reuse=noise_reuse,
        group_size=group_size,
        fitness_shaping=fitness_shaping,
        estimator=estimator,
        freeze_nonmatrix=freeze_nonmatrix,
        optimizer=optimizer,
        router=router,
    )


# ----------------------------------------------------------------------------
# Registration: the conformance problems give a loss; the fitness of a member
# is minus the loss at its materialized perturbation.
# ----------------------------------------------------------------------------

_ES_TEST = {"sigma": 0.02, "rank": 1, "population_size": 16}


def es_extra_args(ctx: registry.ExtraArgsContext) -> dict[str, Any]:
    """``fitness`` (minus ``ctx.loss_fn`` at every member) and ``key`` for one generation.

    Uses the registry settings (σ, rank, N) and ``generation = ctx.step``.
    """
    n = _ES_TEST["population_size"]

    def fitness_fn(p: Any, noise: Any) -> jax.Array:
        return -ctx.loss_fn(evolution.perturb(p, noise))

    @jax.jit  # one program even when called eagerly (inlined under an outer jit)
    def evaluate(params: Any, key: jax.Array, step: Any) -> jax.Array:
        return evolution.es_evaluate(
            fitness_fn,
            params,
            key,
            n,
            sigma=_ES_TEST["sigma"],
            rank=_ES_TEST["rank"],
            generation=step,
        )

    return {"fitness": evaluate(ctx.params, ctx.key, ctx.step), "key": ctx.key}


registry.register(
    registry.OptimizerSpec(
        name="eggroll",
        factory=eggroll,
        paper="2511.16652",
        family="evolution",
        defaults={"learning_rate": 0.01, **_ES_TEST},
        lr_grid=(0.003, 0.01, 0.03, 0.1),
        static_args=(
            "rank",
            "population_size",
            "noise_reuse",
            "group_size",
            "fitness_shaping",
            "estimator",
            "freeze_nonmatrix",
            "optimizer",
        ),
        extra_args=es_extra_args,
        uses_matrix_path=True,
        test_overrides={"optimizer": optax.adam},
        description="EGGROLL (official: rank-r antithetic ES pseudo-gradient, sqrt(N), no 1/sigma)",
    )
)
