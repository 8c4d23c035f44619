"""Weight refactorization and momentum reset for low-rank training (arXiv 2505.22922).

Glentis et al., "Scalable Parameter and Memory Efficient Pretraining for LLM:
Recent Algorithmic Advances and Benchmarking" (code:
``OptimAI-Lab/Memory_Efficient_Pretraining``), find two techniques that let
factorized low-rank training (``W = L R``) approach memory-efficient optimizers:

1. **Weight refactorization** every ``K`` steps: ``L R = U Σ Vᵀ`` (SVD in ≥ f32),
   then ``L ← U_r Σ_r^{1/2}``, ``R ← Σ_r^{1/2} V_rᵀ``. The product is unchanged;
   the factors are re-balanced and their columns/rows orthogonalized.
2. **Momentum reset** at exactly those steps: the optimizer state (moments and
   counters, hence the bias correction) restarts from ``init``, because the old
   moments live in the old factor coordinates.
3. A quick learning-rate re-warm after each restart (linear from ``10⁻³×`` to
   the base schedule over ``recovery_steps``, default 10).

Here they are wrappers around any optax/optx transform: :func:`reset_state_every`
(momentum reset alone, e.g. around GaLore at its projector refresh),
:func:`refactorize_every` (refactorization + reset, in update form
``u = P(W + u_inner) − W`` so the optax contract holds), and
:func:`quick_recovery_schedule`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams


class ResetEveryState(NamedTuple):
    """State of :func:`reset_state_every` and :func:`refactorize_every`."""

    count: jax.Array
    inner_state: Any


def _fresh_like(inner: Any, template: Any, state: Any) -> Any:
    """``inner.init(template)`` cast to ``state``'s dtypes (type-stable under cond)."""
    return optax.tree.cast_like(inner.init(template), state)


@hyperparams.validated()
def reset_state_every(
    inner: optax.GradientTransformation, every_k: int
) -> optax.GradientTransformationExtraArgs:
    """Re-initializes ``inner``'s state every ``every_k`` steps (momentum reset).

    At steps ``k, 2k, …`` (0-based count of steps already taken) the state is
    replaced by ``inner.init(params)`` **before** ``inner.update`` runs, so moments
    and counters (bias correction) restart — the benchmarking paper's momentum
    reset (arXiv 2505.22922, §4). ``params`` is used as the init template when
    given, else the updates.

    Args:
      inner: any transform.
      every_k: reset period (static int).

    References:
      Glentis et al., "Scalable Parameter and Memory Efficient Pretraining for
      LLM: Recent Algorithmic Advances and Benchmarking", arXiv 2505.22922.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.reset_state_every(optax.scale_by_adam(), every_k=2)
      >>> s = tx.init(jnp.zeros(2))
      >>> _, s = tx.update(jnp.ones(2), s)
      >>> _, s = tx.update(jnp.ones(2), s)
      >>> int(s.inner_state.count)
      2
      >>> _, s = tx.update(jnp.ones(2), s)   # reset, then one step
      >>> int(s.inner_state.count)
      1
    """
    every_k = base.check_positive_int("every_k", every_k)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: base.Params) -> ResetEveryState:
        return ResetEveryState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(
        updates: base.Updates,
        state: ResetEveryState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ResetEveryState]:
        reset = jnp.logical_and(state.count > 0, state.count % every_k == 0)
        template = updates if params is None else params
        fresh = _fresh_like(inner, template, state.inner_state)
        inner_state = base.cond(reset, lambda: fresh, lambda: state.inner_state)
        new_updates, new_inner = inner.update(updates, inner_state, params, **extra)
        return new_updates, ResetEveryState(optax.safe_increment(state.count), new_inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


FactorPairs = Sequence[tuple[str, str]] | Callable[[Any], Sequence[tuple[str, str]]] | None

_DEFAULT_LEFT = re.compile(r"^(.*/)?lora_a$")


def default_factor_pairs(params: Any) -> list[tuple[str, str]]:
    """Sibling ``lora_a``/``lora_b`` leaves (Flax ``nnx.LoRA`` naming).

    ``nnx.LoRA`` computes ``x @ lora_a @ lora_b`` with ``lora_a (in, r)`` and
    ``lora_b (r, out)``, so ``W = lora_a @ lora_b`` (left, right).
    """
    flat, _ = base.flatten_with_paths(params)
    paths = {p for p, _ in flat}
    pairs = []
    for p in sorted(paths):
        m = _DEFAULT_LEFT.match(p)
        if m:
            right = (m.group(1) or "") + "lora_b"
            if right in paths:
                pairs.append((p, right))
    return pairs


def refactorize(left: jax.Array, right: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Balanced refactorization of ``W = L R`` (arXiv 2505.22922, §4).

    ``L (..., m, r)``, ``R (..., r, n)``; leading axes are batch axes.
    ``W = U Σ Vᵀ`` in the compute dtype (float32, float64 for f64 factors), ``L' = U_r Σ_r^{1/2}``, ``R' = Σ_r^{1/2} V_rᵀ``, so
    ``L' R' = W`` (the rank of ``L R`` is at most ``r``), ``L'ᵀL' = R'R'ᵀ = Σ_r``.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> L, R = jax.random.normal(k1, (6, 2)), jax.random.normal(k2, (2, 5))
      >>> L2, R2 = optx.linalg.refactorize(L, R)
      >>> bool(jnp.allclose(L2 @ R2, L @ R, atol=1e-5))
      True
    """
    r = left.shape[-1]
    if right.shape[-2] != r:
        raise ValueError(
            f"refactorize needs L (..., m, r) and R (..., r, n); got {left.shape}, {right.shape}."
        )
    cdt = base.compute_dtype(left.dtype, right.dtype)
    w = jnp.matmul(left.astype(cdt), right.astype(cdt))
    u, s, vh = jnp.linalg.svd(w, full_matrices=False)
    root = jnp.sqrt(s[..., :r])
    new_left = u[..., :, :r] * root[..., None, :]
    new_right = root[..., :, None] * vh[..., :r, :]
    return new_left.astype(left.dtype), new_right.astype(right.dtype)


@hyperparams.validated()
def refactorize_every(
    inner: optax.GradientTransformation,
    every_k: int,
    *,
    pairs: FactorPairs = None,
    reset_state: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Refactorizes low-rank factor pairs every ``every_k`` steps (+ momentum reset).

    Each step runs ``inner``; on steps ``k, 2k, …`` (1-based: after the ``k``-th
    update) the post-step factors ``L + u_L``, ``R + u_R`` of every pair are
    replaced by their balanced refactorization (:func:`optx.linalg.refactorize`) and
    the update is emitted as ``new − old`` (so ``optax.apply_updates`` lands on
    the refactorized weights); with ``reset_state`` the inner state is
    re-initialized at the same step, as the official code rebuilds its
    optimizer after each refactorization (arXiv 2505.22922, §4). The SVD runs
    under ``lax.cond`` only on those steps, in the compute dtype (f32 or f64).

    Args:
      inner: the optimizer of the factorized model.
      every_k: refactorization period (the paper's ``cycle_length``; static).
      pairs: ``[(left_path, right_path), ...]`` with ``W = left @ right`` (paths
        '/'-joined, as :func:`optx.describe` prints them), or a callable
        ``params -> pairs``; default :func:`default_factor_pairs` (sibling
        ``lora_a``/``lora_b``).
      reset_state: also reset ``inner``'s state (moments, counters) then.

    References:
      Glentis et al., arXiv 2505.22922.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'lora_a': jnp.ones((4, 2)), 'lora_b': jnp.ones((2, 3))}
      >>> tx = optx.refactorize_every(optax.adam(1e-2), every_k=1)
      >>> u, _ = tx.update(params, tx.init(params), params)
      >>> new = optax.apply_updates(params, u)
      >>> new['lora_a'].shape, new['lora_b'].shape
      ((4, 2), (2, 3))
    """
    every_k = base.check_positive_int("every_k", every_k)
    inner = optax.with_extra_args_support(inner)

    def resolve_pairs(params: Any) -> list[tuple[str, str]]:
        found = default_factor_pairs(params) if pairs is None else pairs
        found = found(params) if callable(found) else found
        known = {p for p, _ in base.flatten_with_paths(params)[0]}
        for left, right in found:
            for p in (left, right):
                if p not in known:
                    raise ValueError(f"Factor path '{p}' is not a leaf of the params.")
        return list(found)

    def init_fn(params: base.Params) -> ResetEveryState:
        if not resolve_pairs(params):
            raise ValueError(
                "refactorize_every found no factor pairs; pass pairs=[(left_path, right_path)]."
            )
        return ResetEveryState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(
        updates: base.Updates,
        state: ResetEveryState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ResetEveryState]:
        if params is None:
            raise ValueError("refactorize_every needs `params` in update().")
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        count = optax.safe_increment(state.count)
        now = count % every_k == 0
        flat_u, treedef = jax.tree_util.tree_flatten_with_path(new_updates)
        flat_p = jax.tree.leaves(params)
        index = {base.path_to_str(p): i for i, (p, _) in enumerate(flat_u)}
        leaves = [u for _, u in flat_u]
        for left, right in resolve_pairs(params):
            i, j = index[left], index[right]
            wl, wr = flat_p[i], flat_p[j]
            ul, ur = leaves[i], leaves[j]

            def refactor(_: Any, wl=wl, wr=wr, ul=ul, ur=ur) -> tuple[jax.Array, jax.Array]:
                nl, nr = refactorize(wl + ul.astype(wl.dtype), wr + ur.astype(wr.dtype))
                return (nl - wl).astype(ul.dtype), (nr - wr).astype(ur.dtype)

            leaves[i], leaves[j] = base.cond(now, refactor, lambda _, a=ul, b=ur: (a, b), None)
        out = jax.tree_util.tree_unflatten(treedef, leaves)
        if reset_state:
            fresh = _fresh_like(inner, params, new_inner)
            new_inner = base.cond(now, lambda: fresh, lambda: new_inner)
        return out, ResetEveryState(count, new_inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def quick_recovery_schedule(
    schedule: base.ScalarOrSchedule,
    cycle_length: int,
    recovery_steps: int = 10,
    start_factor: float = 1e-3,
) -> optax.Schedule:
    """Re-warms the learning rate after every restart, as the official code (arXiv 2505.22922).

    ``OptimAI-Lab/Memory_Efficient_Pretraining`` @9f803d4
    (``_get_cosine_schedule_with_quick_recovery_lambda`` and the
    ``LambdaLR(last_epoch=update_step)`` rebuilt at each restart in
    ``torchrun_main_DDP.py``). With ``K = cycle_length``, ``R = recovery_steps``
    and ``f = schedule`` (the base warm-up + cosine learning rate):

    .. math::

      λ(s) = \\begin{cases}
        f(s_0 + R)\\,\\big(c + (1 - c)\\min(1, \\tfrac{s - s_0}{R - 1})\\big)
          & s - s_0 < R,\\ s_0 = K\\lfloor s/K \\rfloor \\\\
        f(s) & \\text{otherwise}
      \\end{cases}

    (``c = start_factor`` = 0.001): after every restart — and in the first cycle
    too — the rate ramps linearly from ``c·f(s₀+R)`` to the *fixed* target
    ``f(s₀+R)``, reached at ``s − s₀ = R − 1``. The step ``t`` (0-based) uses
    ``λ(t)`` before the first restart and ``λ(t + 1)`` from step ``K`` on: the
    official code rebuilds ``LambdaLR`` with ``last_epoch = K`` after each
    restart and its constructor steps once, so the first update after a restart
    already uses ``λ(K+1) = (c + (1−c)/(R−1))·f(K+R)`` (0.112× for R = 10).

    Example:
      >>> import optx
      >>> s = optx.schedules.quick_recovery_schedule(1.0, cycle_length=100, recovery_steps=10)
      >>> round(float(s(0)), 4), float(s(9)), float(s(50)), round(float(s(100)), 4)
      (0.001, 1.0, 1.0, 0.112)
    """
    cycle_length = base.check_positive_int("cycle_length", cycle_length)
    recovery_steps = base.check_positive_int("recovery_steps", recovery_steps)
    base.check_in_range("start_factor", start_factor, 0.0, 1.0, high_inclusive=True)

    def base_lr(step: jax.Array) -> Any:
        return schedule(step) if callable(schedule) else schedule

    def fn(count: Any) -> jax.Array:
        count = jnp.asarray(count)
        s = jnp.where(count >= cycle_length, count + 1, count)  # LambdaLR's extra step
        start = (s // cycle_length) * cycle_length
        since = s - start
        target = base_lr(start + recovery_steps)
        if recovery_steps > 1:
            progress = jnp.minimum(since / (recovery_steps - 1), 1.0)
        else:
            progress = jnp.ones_like(since, dtype=base.scalar_dtype())
        ramp = target * (start_factor + (1.0 - start_factor) * progress)
        return jnp.where(since < recovery_steps, ramp, base_lr(s))

    return fn
