"""Curvature oracles: the one extra-argument vocabulary of optx's second-order methods.

Second-order methods (Sophia, AdaHessian, MKOR-H, ...) need more than the
gradient. optax has no common vocabulary for that (``obj_fn`` for Sophia,
``value_fn`` for line searches, ``grad_fn`` for SAM), and its Sophia breaks
inside ``optax.partition``/``optax.masked`` because the closure is called on a
masked tree. optx uses **one** vocabulary, passed as keyword extra arguments to
``update(updates, state, params, **extra)``:

============================  ==================================================
extra argument                meaning
============================  ==================================================
``loss_fn``                   ``params -> scalar``: the training loss on the
                              current batch, a function of the **full**
                              parameter tree (the tree the training loop
                              differentiates; with ``nnx.Optimizer``, the
                              ``wrt`` state). ``obj_fn`` (optax's name) is
                              accepted as an alias.
``sampled_loss_fn``           ``(params, key) -> scalar``: the loss with targets
                              sampled from the model's own predictive
                              distribution (Gauss–Newton–Bartlett). Build it
                              from a logits function with
                              :func:`sampled_label_loss`.
``full_params``               the full tree at which the closures are
                              evaluated. Optional at top level (default: the
                              ``params`` the transform receives); **required**
                              when the transform sits inside ``optax.partition``
                              or ``optax.masked`` (it then receives a masked
                              tree).
``key``                       optional PRNG key for probes / label sampling
                              (default: a key kept in the transform's state).
``loss``                      the scalar loss value of this step (MKOR-H).
``captures``                  per-layer input/output-gradient statistics
                              (MKOR), see :func:`optx.curvature.value_grad_and_captures`.
============================  ==================================================

A transform computes what it needs from these — a Hessian-vector product
(forward-over-reverse, :func:`hvp`), a Hutchinson diagonal (:class:`Hutchinson`,
Rademacher or Gaussian probes, several samples) or a Gauss–Newton–Bartlett
diagonal (:class:`GaussNewtonBartlett`, labels sampled from the logits) — **over
the full tree**, then keeps its own leaves by key path
(:func:`estimate_diagonal`). ``optx.tree_utils.path_to_str`` strips NNX's ``.value``, so the
paths of a masked tree, an NNX ``State`` and a plain dict agree. Inside a
partition the full-tree estimate is computed once per transform that needs it.

:func:`curvature_args` builds the dict for plain JAX code and
:func:`nnx_curvature_args` builds it from an NNX model and a batch (call it inside
``nnx.jit``; pass the result to ``nnx.Optimizer.update(model, grads, **args)``).

**Data parallelism.** Under ``jax.jit`` with sharded arrays (the global view),
``loss_fn`` is the loss of the *global* batch, so every estimate is already the
cross-device average: XLA inserts the reductions. Under ``shard_map``/``pmap``
(per-device view, ``loss_fn`` = the local batch's loss) give the estimator an
``axis_name``: it differentiates ``lax.pmean(loss_fn(p), axis_name)``, so
Hutchinson estimates are the HVP of the global mean loss with the same probe on
every device (the key must be replicated — the state key is), and
Gauss–Newton–Bartlett (which folds the device index into the label-sampling
key: independent labels per shard) averages the sampled gradient across devices
**before** squaring it, as the official SophiaG script does under DDP.

References:
  Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for
  Language Model Pre-training", arXiv 2305.14342 (Hutchinson Eq. 8, GNB
  Algorithm 2); Yao et al., "ADAHESSIAN", arXiv 2006.00719 (Eq. 8); Pearlmutter,
  "Fast exact multiplication by the Hessian", Neural Computation 1994;
  Hutchinson, "A stochastic estimator of the trace of the influence matrix",
  1989.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optx._src import base

LossFn = Callable[[Any], jax.Array]
SampledLossFn = Callable[[Any, jax.Array], jax.Array]

DISTRIBUTIONS = ("rademacher", "gaussian")


# ----------------------------------------------------------------------------
# Primitives: HVP and probes
# ----------------------------------------------------------------------------


def hvp(loss_fn: LossFn, params: Any, tangents: Any) -> Any:
    """Hessian-vector product ``H(params) · tangents`` by forward-over-reverse.

    ``jax.jvp(jax.grad(loss_fn), (params,), (tangents,))`` — one extra
    forward/backward, no Hessian is formed (Pearlmutter 1994).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 2.0]) * p['w'] ** 2)
      >>> optx.curvature.hvp(loss, {'w': jnp.ones(2)}, {'w': jnp.ones(2)})['w']
      Array([1., 2.], dtype=float32)
    """
    # Integer and bool leaves (a step counter kept in the params) have no
    # curvature: float0 tangents in, zeros of their dtype out.
    tangents = jax.tree.map(
        lambda p, t: t if _differentiable(p) else np.zeros(jnp.shape(p), jax.dtypes.float0),
        params,
        tangents,
    )
    out = jax.jvp(jax.grad(loss_fn, allow_int=True), (params,), (tangents,))[1]
    return _integer_leaves_zero(params, out)


def _differentiable(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _integer_leaves_zero(params: Any, tree: Any) -> Any:
    """``tree`` with JAX's float0 cotangents of integer/bool leaves as zeros of
    the leaf's dtype, as the optimizer states of those leaves hold."""
    return jax.tree.map(
        lambda p, x: x if _differentiable(p) else jnp.zeros(jnp.shape(p), jnp.result_type(p)),
        params,
        tree,
    )


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al., SC 2011), unrolled.

    The counter-based hash behind ``jax.random``'s default keys. Unrolled, XLA
    fuses the whole hash into one element-wise pass over the counters; JAX's CPU
    lowering keeps it as a rolled loop of five 4-round steps, each a full pass
    over the draw (for a whole-tree draw of millions of values, 2–3× the time).
    """
    u32 = jnp.uint32
    k = (key[0], key[1], key[0] ^ key[1] ^ u32(0x1BD11BDA))
    x0, x1 = x0 + k[0], x1 + k[1]
    for step in range(5):
        for r in _THREEFRY_ROTATIONS[step % 2]:
            x0 = x0 + x1
            x1 = ((x1 << u32(r)) | (x1 >> u32(32 - r))) ^ x0
        x0 = x0 + k[(step + 1) % 3]
        x1 = x1 + k[(step + 2) % 3] + u32(step + 1)
    return x0, x1


def _rademacher_from_threefry(key: jax.Array, total: int) -> jax.Array | None:
    """``jax.random.rademacher(key, (total,), float32)``, in one fused pass, or None.

    The same values wherever JAX's draw is a function of the flat index alone:
    threefry keys with ``jax_threefry_partitionable`` (JAX's default), where
    element ``i`` has the bits ``a ^ b`` of ``(a, b) = threefry(key, (0, i))``
    (``(a << 32) | b`` with ``jax_enable_x64``), and its sign is ``+1`` iff the
    top bit is clear (``uniform < 1/2``).
    """
    if not jax.config.jax_threefry_partitionable or total >= 2**32:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if "threefry" not in str(jax.random.key_impl(key)):
            return None
        data = jax.random.key_data(key)
    elif "threefry" in str(jax.config.jax_default_prng_impl):
        data = key
    else:
        return None
    counters = jax.lax.iota(jnp.uint32, total)
    a, b = _threefry2x32(data.astype(jnp.uint32), jnp.zeros_like(counters), counters)
    # JAX's Rademacher is a Bernoulli(1/2) of the default float: float32 draws use the
    # 32 bits a ^ b, float64 ones (jax_enable_x64) the 64 bits (a << 32) | b.
    wide = jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64
    top = (a if wide else a ^ b) >> jnp.uint32(31)
    return jnp.where(top == 0, 1.0, -1.0).astype(jnp.float32)


def _flat_draw(distribution: str, key: jax.Array, total: int) -> jax.Array:
    """The float32 draw of ``total`` values over the flattened tree (module docstring).

    Rademacher signs come from the fused hash where it gives JAX's values
    (:func:`_rademacher_from_threefry`); a Gaussian draw is ``jax.random.normal``'s
    (its ``erf_inv`` is left to JAX: another program could round it differently).
    """
    if distribution == "rademacher":
        signs = _rademacher_from_threefry(key, total)
        return jax.random.rademacher(key, (total,), jnp.float32) if signs is None else signs
    return jax.random.normal(key, (total,), jnp.float32)


def random_probes(key: jax.Array, tree: Any, distribution: str = "rademacher") -> Any:
    """Random probe tree like ``tree``: Rademacher (±1) or standard normal.

    Drawn in float32 and cast to each leaf's dtype, as **one** draw over all
    leaves (row-major, concatenated in ``jax.tree.leaves`` order) split back
    into the leaves: a single random-bits computation whatever the number of
    leaves, so compile time does not grow with the tree (a draw per leaf cost
    ~300 HLO instructions each), kept out of the consumers' fusions by a
    conditional (``base.materialized``): same bits. Rademacher signs are
    computed from an unrolled Threefry hash of the flat index (JAX's own values
    in one fused pass, :func:`_rademacher_from_threefry`): 2–3× less time than
    ``jax.random.rademacher``'s rolled loop on a whole-tree draw on XLA:CPU. On the benchmark tree
    (preset ``small`` of ``benchmarks/compile_time.py``) this cut the HLO of
    agvm_sgd from 15.2k to 7.9k instructions, sophia_h 10.6k to 7.0k,
    adahessian 5.9k to 5.2k. The leaves are cut out of the draw at runtime
    offsets (``base.split_consecutive``), so that the consumers of same-shape
    leaves (the HVP's, the estimate's EMA and its finiteness check) compile as
    one kernel, not one per leaf (LLVM kernels of a step on the unscanned
    benchmark tree, ``benchmarks/compile_kernels.py``: AdaHessian 117 -> 65,
    Sophia-H 99 -> 71, AGVM 125 -> 69; the same step time).
    """
    base.check_choice("distribution", distribution, DISTRIBUTIONS)
    leaves, treedef = jax.tree.flatten(tree)
    # Integer and bool leaves take no draw (zeros): the float leaves' probes do
    # not depend on them.
    sizes = [math.prod(jnp.shape(x)) if _differentiable(x) else 0 for x in leaves]
    total = sum(sizes)
    flat = base.materialized(lambda k: _flat_draw(distribution, k, total), key)
    pieces = base.split_consecutive(flat, sizes, key)
    out = [
        jnp.reshape(z, jnp.shape(x)).astype(x.dtype)
        if _differentiable(x)
        else jnp.zeros(jnp.shape(x), jnp.result_type(x))
        for x, z in zip(leaves, pieces)
    ]
    # Inside jax.shard_map: a tangent of its leaf (the same draw on every device).
    return base.vary_like(jax.tree.unflatten(treedef, out), tree)


def _averaged(fn: Callable[..., jax.Array], axis_name: str | None) -> Callable[..., jax.Array]:
    """``fn`` averaged over the mapped axis: derivatives of it are cross-device means.

    Differentiating ``pmean(local_loss)`` gives the gradient / HVP of the mean of
    the per-device losses on every device, under ``shard_map`` (whose autodiff
    already sums the cotangents of replicated inputs) and ``pmap`` alike.
    """
    if axis_name is None:
        return fn
    return lambda *args: jax.lax.pmean(fn(*args), axis_name)


def hutchinson_diagonal(
    loss_fn: LossFn,
    params: Any,
    key: jax.Array,
    *,
    num_samples: int = 1,
    distribution: str = "rademacher",
    absolute: bool = False,
    axis_name: str | None = None,
) -> Any:
    """Hutchinson's estimate of ``diag(H)``: the mean over probes of ``z ⊙ Hz``.

    .. math::

      \\hat D = \\frac{1}{S}\\sum_{s=1}^S z_s \\odot (H z_s), \\qquad
      \\mathbb E[z z^\\top] = I

    With ``absolute=True`` the mean of ``|z ⊙ Hz|`` (AdaHessian's ``|Hz|`` for
    Rademacher probes, arXiv 2006.00719 §3.2). Probes are drawn once per sample
    and the samples are accumulated in a ``lax.scan`` (memory of one HVP).
    With ``axis_name`` (per-device ``loss_fn`` under ``shard_map``/``pmap``) the
    HVP is that of the cross-device mean loss (``pmean`` inside the closure),
    so it is averaged over devices before ``|·|``.

    Args:
      loss_fn: ``params -> scalar``.
      params: where to evaluate (any pytree of arrays).
      key: PRNG key (replicate it across devices under ``axis_name``).
      num_samples: number of probes (static).
      distribution: ``'rademacher'`` or ``'gaussian'``.
      absolute: average ``|z ⊙ Hz|`` instead of ``z ⊙ Hz``.
      axis_name: mapped axis to average over (``shard_map``/``pmap``).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 3.0]) * p ** 2)
      >>> optx.curvature.hutchinson_diagonal(loss, jnp.ones(2), jax.random.key(0))
      Array([1., 3.], dtype=float32)
    """
    num_samples = base.check_positive_int("num_samples", num_samples)
    base.check_choice("distribution", distribution, DISTRIBUTIONS)

    loss_fn = _averaged(loss_fn, axis_name)

    def one(k: jax.Array) -> Any:
        z = random_probes(k, params, distribution)
        hz = hvp(loss_fn, params, z)
        est = jax.tree.map(lambda a, b: a * b, z, hz)
        return jax.tree.map(jnp.abs, est) if absolute else est

    if num_samples == 1:
        return one(key)
    keys = jax.random.split(key, num_samples)

    def body(acc: Any, k: jax.Array) -> tuple[Any, None]:
        return jax.tree.map(jnp.add, acc, one(k)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = base.scan(body, zeros, keys)
    return jax.tree.map(lambda t: t / num_samples, total)


def gauss_newton_bartlett_diagonal(
    sampled_loss_fn: SampledLossFn,
    params: Any,
    key: jax.Array,
    *,
    clip_norm: float | None = None,
    axis_name: str | None = None,
) -> Any:
    """The Gauss–Newton–Bartlett diagonal ``ĝ ⊙ ĝ`` (Sophia, arXiv 2305.14342 Alg. 2).

    ``ĝ = ∇_θ L̂(θ)`` where ``L̂`` is the mean loss with labels ``ŷ`` sampled from
    the model's own softmax (``sampled_loss_fn``). The estimator of the paper is
    ``B · ĝ ⊙ ĝ`` for a batch of ``B`` examples; as in the official SophiaG code
    the factor ``B`` is applied by the optimizer (``ρ · B · h``), not here.

    Args:
      sampled_loss_fn: ``(params, key) -> scalar`` (see :func:`sampled_label_loss`).
      params: where to evaluate.
      key: PRNG key for the label sampling.
      clip_norm: clip ``ĝ`` to this global norm before squaring (the official
        training script reuses ``grad_clip = 1.0``) in the official
        ``torch.nn.utils.clip_grad_norm_`` form, ``ĝ · min(1, c/(‖ĝ‖ + 10⁻⁶))``
        (``Liuhong99/Sophia`` ``train_sophiag.py`` @a7e15722); None disables.
      axis_name: mapped axis: ``ĝ`` is the gradient of the cross-device mean
        sampled loss, i.e. averaged before squaring (DDP semantics); the device
        index is folded into the sampling key.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> logits_fn = lambda p: jnp.ones((4, 3)) @ p
      >>> f = optx.curvature.sampled_label_loss(logits_fn)
      >>> h = optx.curvature.gauss_newton_bartlett_diagonal(f, jnp.zeros((3, 3)), jax.random.key(0))
      >>> h.shape
      (3, 3)
    """
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    g = jax.grad(_averaged(sampled_loss_fn, axis_name), allow_int=True)(params, key)
    g = _integer_leaves_zero(params, g)
    if clip_norm is not None:
        g = base.clip_grad_norm_like_torch(g, clip_norm)
    return jax.tree.map(lambda x: x * x, g)


def sampled_label_loss(
    logits_fn: Callable[[Any], jax.Array], *, where: jax.Array | None = None
) -> SampledLossFn:
    """Builds ``(params, key) -> mean CE(logits, ŷ)`` with ``ŷ ~ softmax(logits)``.

    The labels are sampled from the (stopped-gradient) logits of the model
    itself, as in the official SophiaG training loop (``Categorical(logits)
    .sample()`` then ``cross_entropy``). ``logits_fn(params)`` returns
    ``(..., num_classes)``; ``where`` (broadcastable to ``logits.shape[:-1]``)
    masks positions out of the mean (padding tokens).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> f = optx.curvature.sampled_label_loss(lambda p: p)
      >>> float(f(jnp.zeros((2, 4)), jax.random.key(0))) == float(jnp.log(4.0))
      True
    """

    def loss(params: Any, key: jax.Array) -> jax.Array:
        logits = logits_fn(params)
        cdt = base.compute_dtype(logits.dtype)
        labels = jax.random.categorical(key, jax.lax.stop_gradient(logits).astype(cdt))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(cdt), labels)
        if where is None:
            return jnp.mean(ce)
        w = jnp.broadcast_to(where, ce.shape).astype(ce.dtype)
        return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

    return loss


# ----------------------------------------------------------------------------
# Estimators: what a transform asks for, computed over the full tree
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hutchinson:
    """Hutchinson diagonal estimator from ``loss_fn`` (see :func:`hutchinson_diagonal`).

    Attributes:
      num_samples: probes per estimate.
      distribution: ``'rademacher'`` or ``'gaussian'``.
      absolute: estimate ``|z ⊙ Hz|`` (AdaHessian) instead of ``z ⊙ Hz`` (Sophia-H).
      axis_name: mapped axis for cross-device averaging (``shard_map``/``pmap``).
    """

    num_samples: int = 1
    distribution: str = "rademacher"
    absolute: bool = False
    axis_name: str | None = None

    requires = ("loss_fn",)

    def __post_init__(self) -> None:
        base.check_positive_int("num_samples", self.num_samples)
        base.check_choice("distribution", self.distribution, DISTRIBUTIONS)

    def __call__(self, extra: Mapping[str, Any], params: Any, key: jax.Array) -> Any:
        return hutchinson_diagonal(
            extra["loss_fn"],
            params,
            key,
            num_samples=self.num_samples,
            distribution=self.distribution,
            absolute=self.absolute,
            axis_name=self.axis_name,
        )


@dataclasses.dataclass(frozen=True)
class GaussNewtonBartlett:
    """Gauss–Newton–Bartlett estimator from ``sampled_loss_fn``.

    Attributes:
      clip_norm: global-norm clip of the sampled gradient (official: 1.0).
      axis_name: mapped axis for cross-device averaging.
    """

    clip_norm: float | None = 1.0
    axis_name: str | None = None

    requires = ("sampled_loss_fn",)

    def __call__(self, extra: Mapping[str, Any], params: Any, key: jax.Array) -> Any:
        return gauss_newton_bartlett_diagonal(
            extra["sampled_loss_fn"],
            params,
            key,
            clip_norm=self.clip_norm,
            axis_name=self.axis_name,
        )


DiagonalEstimator = Hutchinson | GaussNewtonBartlett

_ALIASES = {"loss_fn": ("loss_fn", "obj_fn")}


def _lookup(extra: Mapping[str, Any], name: str) -> Any:
    for alias in _ALIASES.get(name, (name,)):
        if extra.get(alias) is not None:
            return extra[alias]
    return None


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def is_masked_tree(tree: Any) -> bool:
    """True when ``tree`` holds ``optax.MaskedNode`` subtrees (inside partition/masked)."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: _is_masked_node(x) or x is None)
    return any(_is_masked_node(x) for x in leaves)


def select_by_path(full_tree: Any, like: Any, *, what: str = "estimate") -> Any:
    """Leaves of ``full_tree`` at the key paths of ``like``'s leaves.

    ``like`` may be a masked tree (``optax.MaskedNode`` subtrees are kept as
    they are); paths are compared with :func:`optx.tree_utils.path_to_str`, so NNX's
    ``.value`` entries do not matter.
    """
    flat, _ = base.flatten_with_paths(full_tree)
    table = dict(flat)

    def pick(path: Any, x: Any) -> Any:
        if x is None or _is_masked_node(x):
            return x
        p = base.path_to_str(path)
        if p not in table:
            raise ValueError(
                f"The full-tree {what} has no leaf '{p}'. `full_params` must be the full "
                f"parameter tree `loss_fn` takes (known paths: {sorted(table)[:6]}...)."
            )
        return table[p]

    return jax.tree_util.tree_map_with_path(
        pick, like, is_leaf=lambda x: x is None or _is_masked_node(x)
    )


def missing_arguments(estimator: Any, extra: Mapping[str, Any]) -> list[str]:
    """Names of the extra arguments ``estimator`` needs that ``extra`` lacks."""
    return [n for n in estimator.requires if _lookup(extra, n) is None]


def check_extra_args(estimator: Any, extra: Mapping[str, Any], who: str) -> None:
    """Raises a TypeError naming the missing extra arguments, if any."""
    missing = missing_arguments(estimator, extra)
    if missing:
        raise TypeError(
            f"{who} needs the extra argument(s) {missing} in update(...): "
            f"{', '.join(_DESCRIPTIONS[m] for m in missing)}. Build them with "
            "optx.curvature.curvature_args(...) or optx.curvature.nnx_curvature_args(...)."
        )


_DESCRIPTIONS = {
    "loss_fn": "`loss_fn` (params -> scalar loss of the current batch, over the full tree)",
    "sampled_loss_fn": "`sampled_loss_fn` ((params, key) -> loss with labels sampled from "
    "the model's logits): build it from your model's `logits_fn` with "
    "optx.curvature.curvature_args(loss_fn, params, sampled_loss_fn=optx.curvature.sampled_label_loss(logits_fn)) "
    "or pass `logits_fn=` to optx.curvature.nnx_curvature_args(model, batch, loss_fn, logits_fn=...)",
}


def estimate_diagonal(estimator: Any, params: Any, extra: Mapping[str, Any], key: jax.Array) -> Any:
    """Runs ``estimator`` over the full tree and returns the leaves of ``params``.

    ``extra`` is the update's extra-argument dict (the vocabulary above). When
    ``params`` is a masked tree, ``extra['full_params']`` must be given.
    """
    full = extra.get("full_params")
    if full is None:
        if params is None or is_masked_tree(params):
            raise ValueError(
                "This transform sits inside optax.partition/optax.masked (it received a "
                "masked params tree) or got no params: pass the full parameter tree as the "
                "extra argument `full_params` (optx.curvature.curvature_args does it)."
            )
        full = params
    resolved = {n: _lookup(extra, n) for n in estimator.requires}
    diag = estimator(resolved, full, key)
    # No params (an update called without them, ``full_params`` given): the whole tree.
    return diag if params is None else select_by_path(diag, params)


# ----------------------------------------------------------------------------
# Building the extra arguments
# ----------------------------------------------------------------------------


def curvature_args(
    loss_fn: LossFn,
    params: Any,
    *,
    sampled_loss_fn: SampledLossFn | None = None,
    key: jax.Array | None = None,
    loss: jax.Array | None = None,
) -> dict[str, Any]:
    """The extra-argument dict of the curvature vocabulary for plain JAX code.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> loss_fn = lambda p: jnp.sum(p['w'] ** 2)
      >>> params = {'w': jnp.ones(3)}
      >>> tx = optx.sophia_h(learning_rate=1e-2)
      >>> state = tx.init(params)
      >>> u, state = tx.update(jax.grad(loss_fn)(params), state, params,
      ...                      **optx.curvature.curvature_args(loss_fn, params))
    """
    out: dict[str, Any] = {"loss_fn": loss_fn, "full_params": params}
    if sampled_loss_fn is not None:
        out["sampled_loss_fn"] = sampled_loss_fn
    if key is not None:
        out["key"] = key
    if loss is not None:
        out["loss"] = loss
    return out


def nnx_curvature_args(
    model: Any,
    batch: Any,
    loss_fn: Callable[[Any, Any], jax.Array],
    *,
    logits_fn: Callable[[Any, Any], jax.Array] | None = None,
    wrt: Any = None,
    key: jax.Array | None = None,
    where: jax.Array | None = None,
) -> dict[str, Any]:
    """The curvature extra arguments for a Flax NNX model and a batch.

    Splits ``model`` into the ``wrt`` state (``nnx.Param`` by default, the same
    filter as the ``nnx.Optimizer``) and the rest, and closes ``loss_fn(model,
    batch)`` (and ``logits_fn(model, batch)`` for Gauss–Newton–Bartlett) over
    the rest, as functions of the parameter state. Call it inside ``nnx.jit``
    and pass the dict to ``optimizer.update(model, grads, **args)``.

    Args:
      model: the NNX module.
      batch: the current batch (closed over).
      loss_fn: ``(model, batch) -> scalar``.
      logits_fn: ``(model, batch) -> logits (..., classes)``; adds
        ``sampled_loss_fn`` (labels sampled from these logits).
      wrt: the parameter filter (default ``nnx.Param``).
      key: an optional PRNG key for probes / label sampling.
      where: optional mask of the sampled-label loss positions.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optx
      >>> from flax import nnx
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> opt = nnx.Optimizer(model, optx.sophia_h(1e-3), wrt=nnx.Param)
      >>> batch = (jnp.ones((4, 3)), jnp.zeros((4, 2)))
      >>> mse = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
      >>> @nnx.jit
      ... def step(model, opt, batch):
      ...     loss, grads = nnx.value_and_grad(mse)(model, batch)
      ...     opt.update(model, grads, **optx.curvature.nnx_curvature_args(model, batch, mse))
      ...     return loss
      >>> _ = step(model, opt, batch)
    """
    from flax import nnx  # local import: flax is only needed for NNX helpers

    wrt = nnx.Param if wrt is None else wrt
    graphdef, params, rest = nnx.split(model, wrt, ...)
    params = nnx.as_pure(params)

    def merged(p: Any) -> Any:
        return nnx.merge(graphdef, p, rest, copy=True)

    out: dict[str, Any] = {
        "loss_fn": lambda p: loss_fn(merged(p), batch),
        "full_params": params,
    }
    if logits_fn is not None:
        out["sampled_loss_fn"] = sampled_label_loss(
            lambda p: logits_fn(merged(p), batch), where=where
        )
    if key is not None:
        out["key"] = key
    return out
