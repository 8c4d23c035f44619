"""The non-finite policy for extra inputs: skip the whole step, count it.

``optax.apply_if_finite`` protects a run against a non-finite *gradient*: the
step is skipped and counted. Optimizers that take more than the gradient — a
Hessian estimate computed from ``loss_fn``, a sampled loss, per-layer
``captures``, the ``loss`` value, AGVM's half-batch gradients, ES fitnesses —
are poisoned by a NaN or Inf in those inputs in the same way, and
``apply_if_finite`` cannot see them. :func:`skip_if_not_finite` applies the same
policy to them:

* every array leaf of the named extra inputs is checked, and so is the
  gradient (``updates``);
* inputs that are functions (``loss_fn``, ``sampled_loss_fn``) are checked
  through the estimates made from them, at the steps that use them: a
  primitive that makes such an estimate reports it in a boolean state field
  named ``estimate_finite`` (:data:`ESTIMATE_FINITE`; e.g.
  :class:`optx.ScaleBySophiaState`), and every such field of the inner step's
  new state is read;
* with ``check_outputs`` (the default for a user's own inner transform)
  everything the inner step computes — its updates and its whole new state —
  is checked as well. The named aliases turn it off: their inputs and
  estimates are checked where they enter, which is what makes a step
  non-finite, and checking every output leaf cost them up to half their
  compile time and doubled Sophia's step on XLA:CPU;
* a primitive with an ``estimate_finite`` field *keeps itself*: where its
  estimate is not finite, or where the wrapper's input check fails (the
  extra argument ``inputs_finite``, read with :func:`inputs_finite`), it
  returns its state unchanged and zero updates, selecting inside its own
  refresh branch. When such a primitive is the only thing beyond the inputs
  that can fail the step (one such state, ``check_outputs=False``) and it
  read the input check, the wrapper does not select its state a second time
  (only its flag): after a ``lax.cond`` whose other branch passes a state
  leaf through, that selection cost XLA a copy and a select pass per step
  (Sophia's ``h``: +6 of 15 ms on the benchmark tree);
* if anything is non-finite the whole step is skipped: zero updates (the
  parameters do not move) and the inner state is returned unchanged (its step
  counters included), so the next steps are exactly those of a run that never
  saw the bad step;
* the skip is counted as ``optax.apply_if_finite`` counts it:
  ``notfinite_count`` (consecutive skips), ``last_finite`` and
  ``total_notfinite``.

Unlike ``apply_if_finite`` there is no ``max_consecutive_errors``: a
non-finite curvature input never reaches the state. A run whose inputs stay
non-finite stops moving; watch ``total_notfinite``.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams


class SkipIfNotFiniteState(NamedTuple):
    """State of :func:`skip_if_not_finite` (the fields of ``optax.ApplyIfFiniteState``).

    Attributes:
      notfinite_count: consecutive skipped steps (0 after a finite step).
      last_finite: whether the last step was applied.
      total_notfinite: skipped steps since ``init``.
      inner_state: the wrapped transform's state.
    """

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


ESTIMATE_FINITE = "estimate_finite"
"""Name of the state field in which a primitive reports that the estimate it made
this step from a function input (a Hessian diagonal from ``loss_fn``, say) was
finite; :func:`skip_if_not_finite` skips the step where any such field is False."""


INPUTS_FINITE = "inputs_finite"
"""Name of the extra argument by which :func:`skip_if_not_finite` hands its check of the
gradient and the array inputs to a self-keeping primitive (see :func:`inputs_finite`)."""


class InputsCheck:
    """The wrapper's input check, passed to the inner step as ``inputs_finite``.

    ``ok`` is the check; ``readers`` counts, at trace time, the primitives that
    read it (:func:`inputs_finite`), so the wrapper knows the check reached them.
    """

    def __init__(self, ok: jax.Array) -> None:
        self.ok = ok
        self.readers = 0


def inputs_finite(extra: dict[str, Any]) -> jax.Array:
    """The wrapper's input check from a step's extra arguments (True without a wrapper).

    A self-keeping primitive (one with an ``estimate_finite`` field) calls it
    once per ``update`` and keeps its state where it is False.
    """
    check = extra.get(INPUTS_FINITE)
    if isinstance(check, InputsCheck):
        check.readers += 1
        return check.ok
    return jnp.ones([], jnp.bool_)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _all(flags: list[jax.Array]) -> jax.Array:
    """The conjunction of scalar flags as one reduction, not a chain of ``&``.

    XLA fuses a chain of ``&`` over per-leaf reductions into every consumer of
    the result (each element-wise pass that selects on it took every per-leaf
    flag as an operand); one reduction over the stacked flags is one scalar the
    passes read.
    """
    if not flags:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.asarray(f, jnp.bool_) for f in flags]))


def all_finite(tree: Any) -> jax.Array:
    """True iff every inexact array leaf of ``tree`` is finite (non-arrays are ignored)."""
    flags = []
    for x in jax.tree.leaves(tree):
        if _is_key(x) or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.inexact):
            continue
        if x.size:
            flags.append(_leaf_finite(x))
    return _all(flags)


def _leaf_finite(x: jax.Array) -> jax.Array:
    """``all(isfinite(x))`` as the minimum of ``isfinite(x)`` coded as uint8.

    The same values and bytes as ``jnp.all`` (one byte written and read per
    entry), but XLA:CPU compiles a predicate reduction as several kernels per
    leaf shape (its tree-reduction rewrite is not shared between leaves) and a
    uint8 one as one kernel shared by every leaf: over the 35 leaves of the
    benchmark tree the check compiled as 10 kernels instead of 22, in 0.11
    instead of 0.23 s (``benchmarks/compile_kernels.py --probe isfinite``).
    """
    return jnp.min(jnp.isfinite(x).astype(jnp.uint8)) > 0


def keep_if_not_finite(
    old: Any,
    entering: Any,
    update: Callable[[jax.Array, jax.Array], jax.Array],
    ok: jax.Array,
    *,
    written_once: bool = True,
) -> tuple[Any, jax.Array]:
    """``(where(ok & finite, update(old, entering), old), finite)``, leaf by leaf.

    A self-keeping primitive's refresh (Sophia's ``h``, AdaHessian's ``ν``)
    keeps its state finite: ``finite`` says that the values entering the state
    are — the estimate as the EMA takes it, after any transformation
    (AdaHessian's squared, averaged diagonal, so a finite estimate whose square
    overflows is caught too) — or, with ``written_once``, the new state itself.

    ``written_once`` (for refreshes that do not run every step): the new state
    is written out once (an optimization barrier), then checked and selected.
    Otherwise XLA fuses the estimate's last element-wise steps into both the
    check and the selection, which compiles two kernels per leaf instead of one
    per leaf shape (Sophia-H on the benchmark tree: 127 kernels instead of 99
    with ``written_once=False``, ``benchmarks/compile_kernels.py``) but saves a write and two reads: AdaHessian refreshes
    every step and keeps ``written_once=False`` (19.5 instead of 26 ms a step
    there, ``benchmarks/step_cost.py``; checking the new state without the
    barrier costs the same reads again).
    """
    if written_once:
        new = jax.lax.optimization_barrier(jax.tree.map(update, old, entering))
        finite = all_finite(new)
    else:
        new = jax.tree.map(update, old, entering)
        finite = all_finite(entering)
    take = finite & ok
    return jax.tree.map(lambda n, o: jnp.where(take, n, o), new, old), finite


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    def leaf(n: Any, o: Any) -> Any:
        if _is_key(n):
            data = jnp.where(ok, jax.random.key_data(n), jax.random.key_data(o))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(n))
        return jnp.where(ok, n, o)

    return jax.tree.map(leaf, new, old)


def _has_flag(x: Any) -> bool:
    return isinstance(x, tuple) and ESTIMATE_FINITE in getattr(x, "_fields", ())


def _select_around_kept(ok: jax.Array, new: Any, old: Any) -> Any:
    """:func:`_select`, except in the states that kept themselves: only their flag."""

    def node(n: Any, o: Any) -> Any:
        if _has_flag(n):
            flag = jnp.where(ok, getattr(n, ESTIMATE_FINITE), getattr(o, ESTIMATE_FINITE))
            return n._replace(**{ESTIMATE_FINITE: flag})
        return _select(ok, n, o)

    return jax.tree.map(node, new, old, is_leaf=_has_flag)


def _warn_on_misspelled_inputs(names: Sequence[str], extra: dict[str, Any]) -> None:
    """A named input that is absent while a close spelling was passed (at trace time):
    a missing input is not checked, by design, so a typo would turn the check off."""
    for n in names:
        if n in extra:
            continue
        close = difflib.get_close_matches(n, list(extra), n=1, cutoff=0.75)
        if close:
            warnings.warn(
                f"skip_if_not_finite: `inputs` names {n!r}, which this update did not "
                f"receive; it received {close[0]!r}. {n!r} is not checked.",
                stacklevel=3,
            )


@hyperparams.validated()
def skip_if_not_finite(
    inner: optax.GradientTransformation,
    inputs: Sequence[str] = (),
    *,
    check_outputs: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Skips (and counts) every step whose extra inputs are not all finite.

    The non-finite policy of optx (README "Reliability"): a NaN or Inf in any
    extra input of an optimizer's ``update`` — or in anything the step computes
    from it — skips the whole step with zero updates and the inner state
    unchanged, counted as ``optax.apply_if_finite`` counts a non-finite
    gradient. The curvature, capture, AGVM and ES aliases are built with it
    (``check_outputs=False``: their function inputs are checked through the
    ``estimate_finite`` flags of their primitives, see the module docstring).

    Args:
      inner: the transform to protect.
      inputs: names of the extra arguments of ``update`` to check (array
        pytrees; a missing or ``None`` argument is not checked; functions are
        checked through the ``estimate_finite`` flags of the inner state and
        through ``check_outputs``). The gradient is always checked.
      check_outputs: also skip when the inner step's updates or new state are
        not finite (this catches estimates computed from ``loss_fn`` /
        ``sampled_loss_fn`` by a transform that has no ``estimate_finite``
        flag, at the cost of one finiteness reduction per output leaf).

    Returns:
      A transform with state :class:`SkipIfNotFiniteState`.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.skip_if_not_finite(optax.sgd(0.1), inputs=('loss',))
      >>> p = {'w': jnp.ones(2)}
      >>> u, s = tx.update(p, tx.init(p), p, loss=jnp.asarray(jnp.nan))
      >>> u['w'].tolist(), int(s.total_notfinite)
      ([0.0, 0.0], 1)
    """
    if isinstance(inputs, str):
        raise TypeError(
            f"`inputs` must be a sequence of argument names, got the string {inputs!r}."
        )
    names = tuple(inputs)
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: base.Params) -> SkipIfNotFiniteState:
        return SkipIfNotFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32),
            last_finite=jnp.ones([], jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: base.Updates,
        state: SkipIfNotFiniteState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, SkipIfNotFiniteState]:
        _warn_on_misspelled_inputs(names, extra)
        checked = [extra.get(n) for n in names if not callable(extra.get(n))]
        check = InputsCheck(all_finite([updates, *checked]))
        new_updates, new_inner = inner.update(
            updates, state.inner_state, params, **{**extra, INPUTS_FINITE: check}
        )
        # Every ``estimate_finite`` field (:data:`ESTIMATE_FINITE`) of the new state.
        kept = optax.tree_utils.tree_get_all_with_path(new_inner, ESTIMATE_FINITE)
        flags = [check.ok, *(jnp.all(flag) for _, flag in kept)]
        if check_outputs:
            flags.append(all_finite((new_updates, new_inner)))
        ok = _all(flags)
        new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        # One self-keeping primitive that read the input check, and nothing else to fail:
        # its own keep condition is ``ok``, so its state is already the right one.
        if not check_outputs and len(kept) == 1 and check.readers == 1:
            inner_state = _select_around_kept(ok, new_inner, state.inner_state)
        else:
            inner_state = _select(ok, new_inner, state.inner_state)
        skipped = jnp.logical_not(ok).astype(jnp.int32)
        return new_updates, SkipIfNotFiniteState(
            notfinite_count=jnp.where(ok, 0, state.notfinite_count + 1).astype(jnp.int32),
            last_finite=ok,
            total_notfinite=state.total_notfinite + skipped,
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
