"""Preconditioning by an EMA of a stochastic Hessian diagonal (Sophia, AdaHessian).

Both primitives draw their curvature from the extra-argument vocabulary of
:mod:`optx._src.curvature` (``loss_fn`` / ``sampled_loss_fn`` over the full
tree, ``full_params`` inside ``optax.partition``, an optional ``key``), so they
work at top level, inside ``optax.partition``/``optax.masked`` and inside
``nnx.Optimizer``. The Hessian estimate runs under ``lax.cond`` on refresh
steps only (static interval). Each keeps a PRNG key in its state (seeded by
``seed``); an extra ``key`` argument, when given, is used instead for the probe.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import (
    adaptive,
    base,
    curvature,
    hyperparams,
    layouts,
    nonfinite,
    routing,
    sharding,
)


def _new_key(seed: int) -> jax.Array:
    return jax.random.PRNGKey(seed)


def _refresh_key(state_key: jax.Array, extra: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
    """(next state key, probe key): the extra ``key`` wins over the state's."""
    next_key, sub = jax.random.split(state_key)
    given = extra.get("key")
    return next_key, (sub if given is None else given)


def _ema(old: jax.Array, new: jax.Array, beta: Any) -> jax.Array:
    cdt = jnp.promote_types(old.dtype, jnp.float32)
    # 1 − β stays a Python float when β is one (exact, as in the reference codes).
    out = beta * old.astype(cdt) + (1.0 - beta) * new.astype(cdt)
    return out.astype(old.dtype)


def _zeros_like(params: Any, dtype: Any) -> Any:
    return optax.tree.zeros_like(params, dtype=dtype)


# ----------------------------------------------------------------------------
# Sophia
# ----------------------------------------------------------------------------


class ScaleBySophiaState(NamedTuple):
    """State of :func:`scale_by_sophia`.

    Attributes:
      count: steps taken (int32).
      mu: momentum ``m`` (no bias correction).
      hessian: EMA ``h`` of the Hessian-diagonal estimates.
      key: PRNG key for probes / label sampling.
      win_rate: fraction of coordinates that were **not** clipped,
        ``mean(|m| < ρ·B·h)``, at the last refresh step of ``h`` (0 before
        the first) — the official training script's ``win_rate`` (tune ρ so
        that it stays in 0.1–0.5), counted in float32 per leaf (exact up
        to 2²⁴ wins per leaf). It is counted on refresh steps only: on
        XLA:CPU a full-tree count writes and re-reads one mask word per
        parameter, which doubled the cost of an ordinary step (optax computes
        its win rate only with ``verbose=True``).
      estimate_finite: whether this step's Hessian estimate was finite (True
        on steps without a refresh). Where it is False — or where the extra
        argument ``inputs_finite`` of :func:`optx.skip_if_not_finite` says the
        gradient was not — the primitive keeps its other fields unchanged and
        emits zero updates; the wrapper reads the flag and counts the skip (the
        ``sophia_*`` aliases).
    """

    count: jax.Array
    mu: base.Updates
    hessian: base.Updates
    key: jax.Array
    win_rate: jax.Array
    estimate_finite: jax.Array


@hyperparams.validated()
def scale_by_sophia(
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.04,
    tokens_per_batch: float = 1.0,
    eps: float = 1e-15,
    *,
    estimator: curvature.Hutchinson
    | curvature.GaussNewtonBartlett
    | Callable[..., Any]
    | None = None,
    update_interval: int | None = None,
    refresh_at_start: bool = False,
    seed: int | None = None,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Sophia's clipped, curvature-scaled momentum (arXiv 2305.14342, Alg. 3).

    .. math::

      m_t = β_1 m_{t-1} + (1-β_1) g_t, \\qquad
      h_t = \\begin{cases} β_2 h_{t-k} + (1-β_2) \\hat h_t & \\text{refresh step} \\\\
                           h_{t-1} & \\text{otherwise} \\end{cases}

      u_t = \\mathrm{clip}\\big(m_t / \\max(γ · B · h_t, ε), -1, 1\\big)

    with no bias correction on either EMA and ``ĥ`` from ``estimator``
    (:class:`optx.curvature.GaussNewtonBartlett` for Sophia-G, :class:`optx.curvature.Hutchinson`
    for Sophia-H). ``B`` is ``tokens_per_batch``: the official SophiaG keeps the
    raw ``ĝ ⊙ ĝ`` in ``h`` and multiplies by ``ρ · bs`` (``bs`` = tokens per
    step) in the ratio, which is the paper's ``B · ĝ ⊙ ĝ`` estimator. optx calls
    the official ``rho`` (the paper's γ) ``gamma``, as ``optax.contrib.sophia``.

    Refresh phase (static ``k = update_interval``): with ``refresh_at_start=False``
    (official SophiaG) ``h`` is refreshed at steps ``k, 2k, …`` (0-based) with
    the curvature at the current parameters before that step — the official
    script estimates right after step ``k−1`` on the batch of step ``k`` — so the
    first ``k`` steps are sign steps (``h = 0``). With ``refresh_at_start=True``
    (the paper's Algorithm 3 ``t mod k = 1``, pytorch-optimizer's SophiaH)
    refreshes happen at steps ``0, k, 2k, …``.

    ``max(ρBh, ε)`` is the paper's denominator; the official code writes
    ``ρBh + 1e−15``: identical for ``h ≥ 0`` up to ε (GNB estimates are never
    negative). For a Hutchinson estimate ``h < 0`` the paper's form takes a full
    clipped step where the official form would flip the step's sign.

    Args:
      b1: momentum β₁.
      b2: Hessian-EMA β₂.
      gamma: γ (paper, optax) = ρ (official SophiaG ``rho``).
      tokens_per_batch: ``B`` of the GNB estimator (tokens or examples per
        step); use 1 with Hutchinson.
      eps: ε of the denominator.
      estimator: a curvature estimator (default :class:`optx.curvature.GaussNewtonBartlett`).
      update_interval: ``k`` (static; None = 10).
      refresh_at_start: refresh at steps 0, k, 2k instead of k, 2k, 3k.
      seed: seed of the state's PRNG key (static; None = 0).
      mu_dtype, nu_dtype: dtypes of ``m`` and ``h``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_sophia(estimator=optx.curvature.Hutchinson(), gamma=1.0,
      ...                           refresh_at_start=True)
      >>> loss_fn = lambda p: jnp.sum(p ** 2)
      >>> p = jnp.ones(2)
      >>> u, s = tx.update(2 * p, tx.init(p), p, loss_fn=loss_fn)
    """
    k = 10 if update_interval is None else update_interval
    seed = 0 if seed is None else seed
    estimator = curvature.GaussNewtonBartlett() if estimator is None else estimator
    _check_estimator(estimator)
    mu_dtype = base.canonicalize_dtype(mu_dtype)
    nu_dtype = base.canonicalize_dtype(nu_dtype)

    def init_fn(params: base.Params) -> ScaleBySophiaState:
        base.check_real_params(params, "optx.scale_by_sophia")  # real-only math (docstring)
        return ScaleBySophiaState(
            count=jnp.zeros([], jnp.int32),
            mu=_zeros_like(params, mu_dtype),
            hessian=_zeros_like(params, nu_dtype),
            key=sharding.put_like(_new_key(seed), params),
            win_rate=jnp.zeros([], jnp.float32),
            estimate_finite=jnp.ones([], jnp.bool_),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleBySophiaState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleBySophiaState]:
        curvature.check_extra_args(estimator, extra, "Sophia")
        count = state.count
        due = count % k == 0
        if not refresh_at_start:
            due = due & (count > 0)

        inputs_ok = nonfinite.inputs_finite(extra)

        def refresh(_: Any) -> tuple[Any, jax.Array, jax.Array]:
            next_key, probe_key = _refresh_key(state.key, extra)
            diag = curvature.estimate_diagonal(estimator, params, extra, probe_key)
            hessian, finite = nonfinite.keep_if_not_finite(
                state.hessian,
                diag,
                lambda h, d: _ema(h, d, b2),
                inputs_ok,  # kept inside the branch (module docstring)
                written_once=k > 1,
            )
            return hessian, jnp.where(finite & inputs_ok, next_key, state.key), finite

        def keep(_: Any) -> tuple[Any, jax.Array, jax.Array]:
            return state.hessian, state.key, jnp.ones([], jnp.bool_)

        hessian, key, finite = base.cond(due, refresh, keep, None)
        ok = finite & inputs_ok
        mu = jax.tree.map(lambda m, g: jnp.where(ok, _ema(m, g, b1), m), state.mu, updates)
        scale = gamma * tokens_per_batch

        def direction(g: jax.Array, m: jax.Array, h: jax.Array) -> jax.Array:
            cdt = adaptive.compute_dtype(g.dtype, m.dtype, h.dtype)
            u = jnp.clip(m.astype(cdt) / jnp.maximum(scale * h.astype(cdt), eps), -1.0, 1.0)
            return u.astype(g.dtype)

        def count_wins(mu: Any, hessian: Any) -> jax.Array:
            def wins(m: jax.Array, h: jax.Array) -> jax.Array:
                cdt = adaptive.compute_dtype(m.dtype, h.dtype)
                won = jnp.abs(m.astype(cdt)) < scale * h.astype(cdt)
                # A float count: XLA:CPU compiles an integer count as several
                # kernels per leaf shape, a float one as one kernel per shape.
                return jnp.sum(jnp.where(won, 1.0, 0.0).astype(jnp.float32))

            leaves = jax.tree.leaves(jax.tree.map(wins, mu, hessian))
            size = sum(jnp.size(x) for x in jax.tree.leaves(mu))
            return sum(leaves, jnp.zeros([], jnp.float32)) / max(size, 1)

        new_updates = jax.tree.map(
            lambda g, m, h: jnp.where(ok, direction(g, m, h), jnp.zeros_like(g)),
            updates,
            mu,
            hessian,
        )
        # The count recomputes ``m`` from its inputs rather than taking the new ``m``
        # into the cond: XLA then fuses ``m``'s EMA into its consumers instead of
        # writing it out and reading it back for them (same values).
        win_rate = base.cond(
            due,
            lambda m, g, h: count_wins(jax.tree.map(lambda a, b: _ema(a, b, b1), m, g), h),
            lambda *_: state.win_rate,
            state.mu,
            updates,
            hessian,
        )
        return new_updates, ScaleBySophiaState(
            count=jnp.where(ok, optax.safe_increment(count), count),
            mu=mu,
            hessian=hessian,
            key=key,
            win_rate=jnp.where(ok, win_rate, state.win_rate),
            estimate_finite=finite,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_estimator(estimator: Any) -> None:
    if not callable(estimator) or not hasattr(estimator, "requires"):
        raise TypeError(
            "`estimator` must be a curvature estimator such as optx.curvature.Hutchinson(...) or "
            f"optx.curvature.GaussNewtonBartlett(...), got {estimator!r}."
        )


# ----------------------------------------------------------------------------
# AdaHessian
# ----------------------------------------------------------------------------


class ScaleByAdaHessianState(NamedTuple):
    """State of :func:`scale_by_adahessian`.

    Attributes:
      count: steps taken (int32).
      hessian_count: Hessian refreshes taken (int32; the bias correction of ``nu``).
      mu: EMA of the gradient.
      nu: EMA of the squared (spatially averaged) Hessian diagonal.
      key: PRNG key of the Hutchinson probes.
      estimate_finite: whether this step's Hessian estimate was finite (True
        on steps without a refresh). Where it is False — or where the extra
        argument ``inputs_finite`` of :func:`optx.skip_if_not_finite` says the
        gradient was not — the primitive keeps its other fields unchanged and
        emits zero updates; the wrapper reads the flag and counts the skip (the
        ``adahessian`` alias).
    """

    count: jax.Array
    hessian_count: jax.Array
    mu: base.Updates
    nu: base.Updates
    key: jax.Array
    estimate_finite: jax.Array


SpatialAxesFn = Callable[[str, Any], "tuple[int, ...] | None"]
_CONV_COMPONENT = re.compile(r"(?i)(^|/)conv[^/]*(/|$)")


def conv_window_axes(router: routing.Router | None = None) -> SpatialAxesFn:
    """``(path, leaf) -> window axes`` of conv kernels, else None.

    A leaf is a conv kernel when ``router`` (default :func:`optx.default_router`)
    assigns it with its ``'conv'`` rule, or — for routers without that rule — when
    a path component starts with ``conv`` (any case, e.g. linen's ``Conv_0``)
    and it has rank >= 3. The window axes of a Flax ``(*window, in, out)``
    kernel are all axes but the last two (official image AdaHessian: dims
    ``(kh, kw)`` of a PyTorch ``(out, in, kh, kw)`` weight).
    """
    router = routing.as_router(router)

    def axes(path: str, leaf: Any) -> tuple[int, ...] | None:
        ndim = jnp.ndim(leaf)
        if ndim < 3:
            return None
        assignment = router.assign(path, leaf)
        if assignment.rule == "conv" or _CONV_COMPONENT.search(path):
            return tuple(range(ndim - 2))
        return None

    return axes


def _block_average(d: jax.Array, lay: layouts.ResolvedLayout, block_size: int) -> jax.Array:
    mats = layouts.to_matrices(d, lay)
    b, fan_in, fan_out = mats.shape
    size = fan_in if block_size == -1 else block_size
    blocks = mats.reshape(b, fan_in // size, size, fan_out)
    avg = jnp.broadcast_to(jnp.mean(blocks, axis=2, keepdims=True), blocks.shape)
    return layouts.from_matrices(avg.reshape(b, fan_in, fan_out), lay)


ADAHESSIAN_BLOCK_SIZE = hyperparams.integer(-1, optional=True)
"""``block_size`` of AdaHessian: None (off), -1 (the whole fan-in) or ``>= 1``."""


@hyperparams.validated(block_size=ADAHESSIAN_BLOCK_SIZE)
def scale_by_adahessian(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    *,
    num_samples: int | None = None,
    distribution: str = "rademacher",
    spatial_axes: str | SpatialAxesFn = "conv",
    block_size: int | None = None,
    update_interval: int | None = None,
    router: routing.Router | None = None,
    axis_name: str | None = None,
    seed: int | None = None,
    mu_dtype: base.DTypeLike | None = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdaHessian's scaling by an RMS EMA of the Hessian diagonal (arXiv 2006.00719).

    Official image-classification semantics (``optim_adahessian.py``,
    commit 85ebc00c; paper Eq. 8–11 with spatial averaging Eq. 10):

    .. math::

      D_t = \\mathrm{avg}\\big(|z_t ⊙ H_t z_t|\\big) = \\mathrm{avg}(|H_t z_t|)
      \\quad (z_t \\text{ Rademacher}),

      m_t = β_1 m_{t-1} + (1-β_1) g_t, \\qquad v_t = β_2 v_{t-1} + (1-β_2) D_t^2,

      u_t = \\frac{m_t / (1-β_1^t)}{\\big(\\sqrt{v_t} / \\sqrt{1-β_2^t}\\big)^k + ε}

    ``avg`` is the spatial average over the window axes of conv kernels
    (``spatial_axes``; the absolute value is taken before averaging) and, with
    ``block_size``, the instruction-version block average of the other matrix
    leaves over contiguous blocks of the fan-in (``-1``: the whole fan-in, i.e.
    one value per output neuron). 1-D leaves are never averaged. ε is added
    after the power ``k``.

    Quirks of the official code and what optx does: a fresh probe every step
    (``update_interval=1``; larger values refresh ``v`` every k steps and
    bias-correct it by the number of refreshes, like pytorch-optimizer's
    ``update_period``); its 3-D tensors hit an undefined branch — optx leaves
    them un-averaged; its multi-GPU averaging ``all_reduce``\\ s a temporary and
    discards the result — optx averages ``Hz`` across devices before ``|·|``
    (``axis_name`` under ``shard_map``; automatic under sharded ``jax.jit``);
    the fairseq/transformer variant's ``|Σ_block z⊙Hz|`` is not implemented.

    Args:
      b1, b2: EMA coefficients.
      eps: ε (added after the power).
      hessian_power: ``k`` in [0, 1].
      num_samples: Hutchinson probes per refresh (static; None = 1, official).
      distribution: probe distribution (official ``'rademacher'``).
      spatial_axes: ``'conv'`` (:func:`conv_window_axes` of ``router``),
        ``'none'``, or a callable ``(path, leaf) -> axes | None``.
      block_size: block averaging over the fan-in of the router's matrix
        leaves (static; None disables, -1 = the whole fan-in).
      update_interval: refresh ``v`` every k steps (static; None = 1).
      router: routing for conv detection and block averaging.
      axis_name: mapped axis for cross-device averaging.
      seed: seed of the probes' PRNG key (static; None = 0).
      mu_dtype, nu_dtype: moment dtypes.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_adahessian()
      >>> loss_fn = lambda p: jnp.sum(p ** 2)
      >>> p = jnp.ones(2)
      >>> u, s = tx.update(2 * p, tx.init(p), p, loss_fn=loss_fn)
    """
    k = 1 if update_interval is None else update_interval
    seed = 0 if seed is None else seed
    num_samples = 1 if num_samples is None else num_samples
    if block_size is not None and block_size != -1:
        base.check_positive_int("block_size", block_size)
    router = routing.as_router(router)
    if isinstance(spatial_axes, str):
        base.check_choice("spatial_axes", spatial_axes, ("conv", "none"))
        window_fn = conv_window_axes(router) if spatial_axes == "conv" else None
    elif callable(spatial_axes):
        window_fn = spatial_axes
    else:
        raise TypeError(
            f"`spatial_axes` must be 'conv', 'none' or a callable, got {spatial_axes!r}."
        )
    estimator = curvature.Hutchinson(num_samples, distribution, absolute=True, axis_name=axis_name)
    mu_dtype = base.canonicalize_dtype(mu_dtype)
    nu_dtype = base.canonicalize_dtype(nu_dtype)

    def averaging(path: str, leaf: Any) -> Callable[[jax.Array], jax.Array]:
        window = window_fn(path, leaf) if window_fn is not None else None
        if window:
            return lambda d: jnp.broadcast_to(jnp.mean(d, axis=window, keepdims=True), d.shape)
        if block_size is None:
            return lambda d: d
        layout = router.layout(path, leaf)
        if layout is None or not layouts.has_matrix_view(leaf):
            return lambda d: d
        lay = layouts.resolve_layout(layout, jnp.shape(leaf), path)
        if block_size != -1 and lay.fan_in % block_size:
            raise ValueError(
                f"block_size={block_size} does not divide the fan-in {lay.fan_in} of leaf "
                f"'{path}' (shape {lay.shape})."
            )
        return lambda d: _block_average(d, lay, block_size)

    def init_fn(params: base.Params) -> ScaleByAdaHessianState:
        base.check_real_params(params, "optx.scale_by_adahessian")  # real-only math (docstring)
        base.tree_map_with_path_str(averaging, params)  # validates block sizes early
        return ScaleByAdaHessianState(
            count=jnp.zeros([], jnp.int32),
            hessian_count=jnp.zeros([], jnp.int32),
            mu=_zeros_like(params, mu_dtype),
            nu=_zeros_like(params, nu_dtype),
            key=sharding.put_like(_new_key(seed), params),
            estimate_finite=jnp.ones([], jnp.bool_),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByAdaHessianState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByAdaHessianState]:
        curvature.check_extra_args(estimator, extra, "AdaHessian")
        inputs_ok = nonfinite.inputs_finite(extra)

        def refresh(_: Any) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
            next_key, probe_key = _refresh_key(state.key, extra)
            diag = curvature.estimate_diagonal(estimator, params, extra, probe_key)
            diag = base.tree_map_with_path_str(lambda p, d: averaging(p, d)(d), diag)
            nu, finite = nonfinite.keep_if_not_finite(
                state.nu,
                jax.tree.map(jnp.square, diag),
                lambda v, d2: _ema(v, d2, b2),
                inputs_ok,  # kept inside the branch (optx.skip_if_not_finite)
                written_once=k > 1,
            )
            take = finite & inputs_ok
            counted = jnp.where(
                take, optax.safe_increment(state.hessian_count), state.hessian_count
            )
            return nu, jnp.where(take, next_key, state.key), counted, finite

        def keep(_: Any) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
            return state.nu, state.key, state.hessian_count, jnp.ones([], jnp.bool_)

        if k == 1:
            nu, key, hessian_count, finite = refresh(None)
        else:
            nu, key, hessian_count, finite = base.cond(state.count % k == 0, refresh, keep, None)
        ok = finite & inputs_ok
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, g: jnp.where(ok, _ema(m, g, b1), m), state.mu, updates)

        def direction(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            cdt = adaptive.compute_dtype(g.dtype, m.dtype, v.dtype)
            bc1 = adaptive.one_minus_power(b1, count, cdt)
            bc2 = adaptive.one_minus_power(b2, hessian_count, cdt)
            root = jnp.sqrt(v.astype(cdt)) / jnp.sqrt(bc2)
            denom = jnp.power(root, hessian_power) + eps
            return (m.astype(cdt) / bc1 / denom).astype(g.dtype)

        new_updates = jax.tree.map(
            lambda g, m, v: jnp.where(ok, direction(g, m, v), jnp.zeros_like(g)), updates, mu, nu
        )
        return new_updates, ScaleByAdaHessianState(
            count=jnp.where(ok, count, state.count),
            hessian_count=hessian_count,
            mu=mu,
            nu=nu,
            key=key,
            estimate_finite=finite,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
