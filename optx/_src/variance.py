"""AGVM: gradient-variance modulation of per-module-group learning rates.

AGVM (Xue et al., "Large-batch Optimization for Dense Visual Predictions",
NeurIPS 2022, arXiv 2210.11078, §3) observes that in large-batch
training of dense-prediction models the gradient variance differs widely
between module groups (backbone, neck, heads), so one learning rate cannot
suit all. It measures a variance proxy per group from two independent
gradient estimates ``g^A``, ``g^B`` (two halves of the batch) and modulates
each group's learning rate relative to the reference group 0 (the backbone):

.. math::

  D_i = 1 - \\cos(g^A_i, g^B_i),\\qquad
  μ_i = \\sqrt{\\mathrm{clip}\\Big(\\frac{D_0 + 10^{-6}}{D_i + 10^{-6}},\\ 0.5,\\ 10\\Big)},\\qquad
  s_i ← α s_i + (1-α) μ_i

every ``update_interval`` steps inside the window, and every step in the window the
group's update is multiplied by ``s_i`` (``s_i = 1`` at start). The cosine is
over the group's flattened gradients (``torch.cosine_similarity``, each norm
clamped at 1e-8).

Semantics of the official hook (``Sense-X/AGVM``
``agvm/optim/agvm_optimizer_hook.py``, ``AgvmOptimizerHook``), reproduced:

* steps are counted from 0 (mmcv's ``runner.iter``); a step ``t`` with
  ``start_step ≤ t ≤ stop_step`` and ``t % update_interval == 0`` measures, and the
  new ``s`` applies to that same step;
* inside the window every step is scaled by ``s``; outside it (before
  ``start_step``, after ``stop_step``) the step is *unscaled* — the EMA is
  kept but not used;
* ``adam_preconditioning`` (the hook's ``use_adam``) divides each half
  gradient by ``√(β₂ v + (1−β₂) (g/W)²) + ε`` with the wrapped Adam's current
  ``v`` (found as the unique ``nu`` field of the inner state) before the
  cosine, ``W`` the data-parallel world size (``world_size``; the hook's
  loss is divided by ``W·W/2``, so the gradient it squares is ``g/W``);
* ``grad_clip`` / ``grad_clip_iter_range``: the hook's
  ``clip_grad_norm_`` of the full gradient (``max_norm/(‖g‖ + 10⁻⁶)``,
  capped at 1) before the optimizer step, optionally only for
  ``low ≤ t ≤ high``;
* the statistics and scales are computed in the parameters' compute dtype
  (float32, float64 for f64 parameters).

The official hook scales the torch ``param_group['lr']``; optx multiplies
the wrapped optimizer's *update*, which is the same thing when the inner
optimizer applies its learning rate last (``optax.sgd``, ``optx.adamw``,
``optax.lamb``; the decoupled decay is scaled too, as in torch) — but not for
``optax.lars``, whose learning rate enters before its momentum trace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams

_COS_EPS = 1e-8
_D_EPS = 1e-6


class AgvmState(NamedTuple):
    """State of :func:`agvm`.

    Attributes:
      count: steps taken (int32; the hook's ``runner.iter``).
      scales: ``s_i``, one f32 per group (the reference group's stays 1).
      variance_proxy: the last measured ``D_i = 1 − cos(g^A_i, g^B_i)``.
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    scales: jax.Array
    variance_proxy: jax.Array
    inner_state: optax.OptState


def _top_level(path: str) -> str:
    return path.split("/", 1)[0]


def group_names(params: Any, groups: Sequence[str] | None) -> tuple[str, ...]:
    """The group names of :func:`agvm` for ``params`` (index 0 = the reference)."""
    if groups is not None:
        return tuple(groups)
    flat, _ = base.flatten_with_paths(params)
    return tuple(dict.fromkeys(_top_level(p) for p, _ in flat))


def group_labels(params: Any, groups: Sequence[str] | None) -> Any:
    """A tree of int group indices with the structure of ``params``.

    ``groups=None``: one group per top-level key, in tree order. Otherwise a
    leaf belongs to the first pattern (``re.search`` on its '/'-joined path)
    that matches it.

    Raises:
      ValueError: if a leaf matches no pattern.
    """
    names = group_names(params, groups)
    if groups is None:
        index = {n: i for i, n in enumerate(names)}
        return base.tree_map_with_path_str(lambda p, _: index[_top_level(p)], params)
    compiled = [re.compile(g) for g in groups]

    def label(path: str, _: Any) -> int:
        for i, c in enumerate(compiled):
            if c.search(path):
                return i
        raise ValueError(
            f"AGVM: leaf '{path}' matches none of the group patterns {list(groups)}; "
            "add a catch-all group such as r'.*'."
        )

    return base.tree_map_with_path_str(label, params)


def _tree_dtype(tree: Any) -> Any:
    """The real compute dtype of a tree: ``promote(*leaf dtypes, float32)``."""
    dtypes = [
        x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype for x in jax.tree.leaves(tree)
    ]
    return base.real_dtype(base.compute_dtype(*dtypes))


def _group_sums(labels: Any, values: Any, n_groups: int, dtype: Any) -> jax.Array:
    """Sums the per-leaf scalars ``values`` into an ``(n_groups,)`` f32 vector."""
    out = jnp.zeros((n_groups,), dtype)
    for lab, v in zip(jax.tree.leaves(labels), jax.tree.leaves(values)):
        out = out.at[lab].add(v)
    return out


@hyperparams.validated(decay=hyperparams.UNIT_CLOSED)
def agvm(
    inner: optax.GradientTransformation,
    groups: Sequence[str] | None = None,
    *,
    decay: float = 0.97,
    update_interval: int | None = None,
    start_step: int | None = None,
    stop_step: int | None = None,
    min_ratio: float = 0.5,
    max_ratio: float = 10.0,
    adam_preconditioning: bool = False,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    world_size: int | None = None,
    grad_clip: float | None = None,
    grad_clip_iter_range: tuple[int, int] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` with AGVM's per-group learning-rate modulation.

    See the module docstring for the math and the official-code semantics.
    ``update`` needs two keyword-only extra args, every step (under ``jit``
    the measurement decision is traced):

    * ``grads_a``: the gradient of the first half of the batch;
    * ``grads_b``: the gradient of the second half.

    Both have the structure of the gradients; :func:`half_batch_gradients`
    computes them (and the full-batch gradient, their mean) in a jitted train
    step at the cost of one full-batch backward pass. Inside ``optax.masked``
    or ``optax.partition``, which pass extra arguments through whole, the full
    trees are cut to the leaves this transform sees (its groups' statistics
    then come from those leaves alone).

    Args:
      inner: any optax optimizer (SGD, AdamW, LAMB, LARS, ...).
      groups: regex patterns, one per module group, matched (``re.search``)
        against each leaf's '/'-joined key path, first match wins; group 0 is
        the reference (the backbone in the paper). ``None``: one group per
        top-level key in tree order (the first is the reference).
      decay: α of the EMA of the modulation factors (the official
        ``momentum``, 0.97).
      update_interval: measure every ``update_interval`` steps (official 5;
        static; None = 5).
      start_step: first step of the modulation window (official 500; static;
        None = 500).
      stop_step: last step of the window, > ``start_step`` (static; None =
        never stops, the official ``-1``).
      min_ratio, max_ratio: the clip of ``(D₀ + 10⁻⁶)/(D_i + 10⁻⁶)`` (0.5, 10).
      adam_preconditioning: the hook's ``use_adam`` (see the module docstring).
      adam_b2, adam_eps: β₂ and ε of that preconditioning (the wrapped Adam's).
      world_size: the number of data-parallel processes ``W`` of the official
        run (static; None = 1). Only the Adam preconditioning depends on it:
        the official hook divides the loss by ``W·W/2``, so the half-batch
        gradient it squares is ``g/W`` (its current-gradient term
        ``(1−β₂)g²/W²``); optx's ``grads_a``/``grads_b`` are the plain
        half-batch means.
      grad_clip: the hook's ``grad_clip=dict(max_norm=…)`` (``None``: off):
        the full gradient is scaled by ``min(1, max_norm/(‖g‖₂ + 10⁻⁶))``
        (``torch.nn.utils.clip_grad_norm_``, global 2-norm over all leaves)
        before the wrapped optimizer, after the AGVM measurement (which uses
        the unclipped half gradients).
      grad_clip_iter_range: ``(low, high)``: clip only at steps
        ``low ≤ t ≤ high`` (static; ``None``: every step). The official
        detection configs use ``max_norm=1.0`` with ``[820, 1020]``.

    References:
      Xue et al., "Large-batch Optimization for Dense Visual Predictions",
      NeurIPS 2022, arXiv 2210.11078 (code: github.com/Sense-X/AGVM).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'backbone': {'w': jnp.ones(3)}, 'head': {'w': jnp.ones(2)}}
      >>> tx = optx.agvm(optax.sgd(0.1, momentum=0.9), start_step=0, update_interval=1)
      >>> ga = {'backbone': {'w': jnp.array([1.0, 2.0, 3.0])}, 'head': {'w': jnp.ones(2)}}
      >>> gb = {'backbone': {'w': jnp.array([1.0, 2.0, 2.0])}, 'head': {'w': -jnp.ones(2)}}
      >>> g = {'backbone': {'w': jnp.array([1.0, 2.0, 2.5])}, 'head': {'w': jnp.zeros(2)}}
      >>> u, s = tx.update(g, tx.init(params), params, grads_a=ga, grads_b=gb)
      >>> s.scales.shape
      (2,)
    """
    if groups is not None:
        if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
            raise TypeError(
                f"`groups` must be a sequence of regex strings or None, got {groups!r}."
            )
        if not groups:
            raise ValueError("`groups` must name at least one group.")
        for g in groups:
            try:
                re.compile(g)
            except re.error as e:
                raise ValueError(f"Invalid AGVM group pattern {g!r}: {e}") from None
        groups = tuple(groups)
    interval = 5 if update_interval is None else update_interval
    start_step = 500 if start_step is None else start_step
    if stop_step is not None and stop_step <= start_step:
        # The official hook silently ignores such a stop (it never stops).
        raise ValueError(f"`stop_step` ({stop_step}) must be > `start_step` ({start_step}).")
    low, high = base._concrete_float(min_ratio), base._concrete_float(max_ratio)
    if low is not None and high is not None and not 0 < low <= high:  # traced: unchecked
        raise ValueError(f"Need 0 < `min_ratio` <= `max_ratio`, got {min_ratio}, {max_ratio}.")
    world_size = base.check_positive_int("world_size", 1 if world_size is None else world_size)
    if grad_clip is not None:
        base.check_finite("grad_clip", grad_clip)
        if base._concrete_float(grad_clip) is not None and float(grad_clip) <= 0:
            raise ValueError(f"`grad_clip` (max_norm) must be > 0, got {grad_clip!r}.")
    if grad_clip_iter_range is not None:
        if grad_clip is None:
            raise ValueError("`grad_clip_iter_range` needs `grad_clip`.")
        if (
            not isinstance(grad_clip_iter_range, (tuple, list))
            or len(grad_clip_iter_range) != 2
            or not grad_clip_iter_range[0] < grad_clip_iter_range[1]
        ):
            raise ValueError(
                "`grad_clip_iter_range` must be two static ints (low, high) with low < high, "
                f"got {grad_clip_iter_range!r}."
            )
        low, high = (
            base.check_positive_int("grad_clip_iter_range", v, allow_zero=True)
            for v in grad_clip_iter_range
        )
        grad_clip_iter_range = (low, high)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: base.Params) -> AgvmState:
        group_labels(params, groups)  # raises on unmatched leaves
        n = len(group_names(params, groups))
        dtype = _tree_dtype(params)
        return AgvmState(
            count=jnp.zeros([], jnp.int32),
            scales=jnp.ones((n,), dtype),
            variance_proxy=jnp.zeros((n,), dtype),
            inner_state=inner.init(params),
        )

    def precondition(g_half: Any, inner_state: Any) -> Any:
        try:
            nu = optax.tree.get(inner_state, "nu")
        except KeyError as e:
            raise ValueError(
                "adam_preconditioning needs the wrapped optimizer's state to hold exactly "
                f"one Adam second moment `nu`: {e}"
            ) from None
        if nu is None:
            raise ValueError("adam_preconditioning: the wrapped optimizer's state has no `nu`.")

        def leaf(g: jax.Array, v: jax.Array) -> jax.Array:
            cdt = base.compute_dtype(g.dtype, v.dtype)
            gc = g.astype(cdt)
            # The official hook squares the gradient of a loss divided by W·W/2
            # (all-reduced over W/2 ranks): g/W.
            sq = base.abs_sq(gc / world_size) if world_size > 1 else base.abs_sq(gc)
            v_new = adam_b2 * v.astype(cdt) + base.one_minus(adam_b2, cdt).astype(cdt) * sq
            return gc / (jnp.sqrt(v_new) + adam_eps)

        return jax.tree.map(leaf, g_half, nu)

    def update_fn(
        updates: base.Updates,
        state: AgvmState,
        params: base.Params | None = None,
        *,
        grads_a: base.Updates,
        grads_b: base.Updates,
        **extra: Any,
    ) -> tuple[base.Updates, AgvmState]:
        # Inside optax.masked / partition: the half-batch gradients of the inner's leaves.
        grads_a, grads_b = base.masked_like(grads_a, updates), base.masked_like(grads_b, updates)
        base.check_same_structure("grads_a", grads_a, "updates", updates)
        base.check_same_structure("grads_b", grads_b, "updates", updates)
        labels = group_labels(updates, groups)
        n = state.scales.shape[0]
        count = state.count
        in_window = count >= start_step
        if stop_step is not None:
            in_window = in_window & (count <= stop_step)
        measure = in_window & (count % interval == 0)
        sdt = state.scales.dtype

        def measured(_: Any) -> tuple[jax.Array, jax.Array]:
            a, b = grads_a, grads_b
            if adam_preconditioning:
                a, b = precondition(a, state.inner_state), precondition(b, state.inner_state)

            def dot(x: jax.Array, y: jax.Array) -> jax.Array:
                if jnp.iscomplexobj(x) or jnp.iscomplexobj(y):  # Re⟨x, y⟩ = Re Σ x̄ y
                    cdt = base.compute_dtype(x.dtype, y.dtype, sdt)
                    xy = jnp.conj(x.astype(cdt)) * y.astype(cdt)
                    return jnp.sum(jnp.real(xy)).astype(sdt)
                return jnp.sum(x.astype(sdt) * y.astype(sdt))

            ab = _group_sums(labels, jax.tree.map(dot, a, b), n, sdt)
            aa = _group_sums(labels, jax.tree.map(dot, a, a), n, sdt)
            bb = _group_sums(labels, jax.tree.map(dot, b, b), n, sdt)
            cos = ab / (jnp.maximum(jnp.sqrt(aa), _COS_EPS) * jnp.maximum(jnp.sqrt(bb), _COS_EPS))
            proxy = 1.0 - cos
            ratio = jnp.clip((proxy[0] + _D_EPS) / (proxy + _D_EPS), min_ratio, max_ratio)
            scales = decay * state.scales + (1.0 - decay) * jnp.sqrt(ratio)
            return scales.astype(sdt), proxy.astype(sdt)

        if n == 0:  # an empty tree has no groups: nothing to modulate
            scales, proxy = state.scales, state.variance_proxy
        else:
            scales, proxy = base.cond(
                measure, measured, lambda _: (state.scales, state.variance_proxy), None
            )
        if grad_clip is not None:
            clipped = base.clip_grad_norm_like_torch(updates, grad_clip)
            if grad_clip_iter_range is None:
                updates = clipped
            else:
                low, high = grad_clip_iter_range
                use = (count >= low) & (count <= high)
                updates = jax.tree.map(lambda c, u: jnp.where(use, c, u), clipped, updates)
        inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra)
        applied = jnp.where(in_window, scales, jnp.ones_like(scales))
        # Scaled in (at least) f32 and returned in the gradient's dtype.
        new_updates = jax.tree.map(
            lambda u, g, lab: (u * applied[lab]).astype(g.dtype), inner_updates, updates, labels
        )
        return new_updates, AgvmState(
            count=optax.safe_increment(count),
            scales=scales,
            variance_proxy=proxy,
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def half_batch_gradients(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    batch: Any,
) -> tuple[jax.Array, Any, Any, Any]:
    """Loss and gradients of the two halves of ``batch``, for :func:`agvm`.

    Splits every leaf of ``batch`` along axis 0 into two equal halves (static
    shapes; the batch size must be even) and differentiates
    ``loss_fn(params, half)`` on each. Returns ``(loss, grads, grads_a,
    grads_b)`` with ``loss`` and ``grads`` the means over the two halves —
    the full-batch loss and gradient when ``loss_fn`` averages over examples.
    Two half-batch backward passes cost about one full-batch pass.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> def loss_fn(p, batch):
      ...     x, y = batch
      ...     return jnp.mean((x @ p['backbone']['w'] - y) ** 2)
      >>> params = {'backbone': {'w': jnp.zeros(3)}}
      >>> batch = (jnp.ones((4, 3)), jnp.ones(4))
      >>> loss, g, ga, gb = jax.jit(optx.elementwise.half_batch_gradients, static_argnums=0)(
      ...     loss_fn, params, batch)
    """
    sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(batch)}
    if len(sizes) != 1:
        raise ValueError(f"All batch leaves must share their leading size, got {sorted(sizes)}.")
    (size,) = sizes
    if size % 2:
        raise ValueError(f"half_batch_gradients needs an even batch size, got {size}.")
    half = size // 2
    first = jax.tree.map(lambda x: x[:half], batch)
    second = jax.tree.map(lambda x: x[half:], batch)
    loss_a, grads_a = jax.value_and_grad(loss_fn)(params, first)
    loss_b, grads_b = jax.value_and_grad(loss_fn)(params, second)
    grads = jax.tree.map(lambda a, b: 0.5 * (a + b), grads_a, grads_b)
    return 0.5 * (loss_a + loss_b), grads, grads_a, grads_b
