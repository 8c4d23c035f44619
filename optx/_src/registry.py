"""The optimizer registry: every named optx optimizer, runnable by name.

The conformance suite (``tests/test_conformance.py``) is parametrized over this
registry, and the benchmark runners build optimizers from it, so registering a
new optimizer — one :func:`register` call next to its alias — puts it through
every conformance check and makes it available to ``examples``/``benchmarks``.

Optimizers that need extra arguments (curvature oracles, layer captures,
losses) declare an ``extra_args`` builder: a function of an
:class:`ExtraArgsContext` returning the keyword arguments for ``update``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

# Extra-arg-free hyper-parameters that are never injectable: shapes, step counts,
# routing, dtypes and strings. Specs add their own on top.
COMMON_STATIC_ARGS = (
    "ns_steps",
    "ns_coeffs",
    "ns_dtype",
    "mu_dtype",
    "nu_dtype",
    "router",
    "strategy",
    "momentum_kind",
    "scaling",
)


@dataclasses.dataclass(frozen=True)
class ExtraArgsContext:
    """What an ``extra_args`` builder may use to build ``update``'s extra args.

    Attributes:
      loss_fn: ``params -> scalar`` loss on the current batch (a closure over
        the full parameter tree).
      params: the current parameters.
      grads: the gradients of ``loss_fn`` at ``params``.
      loss: ``loss_fn(params)``.
      key: a PRNG key for this step.
      step: the (Python or traced) step index.
      batch: the current batch, when the problem has one (else None).
      aux: problem-specific extras (e.g. layer inputs/output gradients).
    """

    loss_fn: Callable[[Any], jax.Array]
    params: Any
    grads: Any
    loss: jax.Array
    key: jax.Array
    step: Any = 0
    batch: Any = None
    aux: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer.

    Attributes:
      name: registry name (``optx.get_optimizer(name)``).
      factory: the alias (e.g. ``optx.muon``).
      paper: arXiv id (or reference) of the method.
      family: the method family (``'orthogonalized'``, ``'elementwise'``, ...).
      defaults: keyword arguments for a typical small-model run (including
        ``learning_rate`` where the factory takes one).
      lr_grid: learning rates a benchmark sweep tries (the fairness protocol).
      static_args: factory arguments that ``optax.inject_hyperparams`` must
        treat as static (in addition to :data:`COMMON_STATIC_ARGS` present in
        the signature).
      extra_args: builder of ``update``'s extra arguments, or None.
      uses_matrix_path: whether 2-D hidden leaves take a matrix code path (the
        sharding conformance test checks it actually runs sharded).
      test_overrides: keyword overrides used by the conformance convergence
        tests (e.g. a smaller learning rate), merged over ``defaults``.
      description: one line for tables.
      equivalence_tolerance: multiplier on the conformance suite's tolerances
        where two runs are equal in exact arithmetic (``inject_hyperparams``,
        gradient accumulation, sharded vs. single device). Methods whose update
        depends on eigen- or singular vectors (SOAP, Conda, COSMOS) amplify
        round-off by the inverse spectral gap: a 1e-7 relative input change
        moves their update by ~1e-4 of its scale. Smooth methods keep 1.0.
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    paper: str
    family: str
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lr_grid: tuple[float, ...] = ()
    static_args: tuple[str, ...] = ()
    extra_args: Callable[[ExtraArgsContext], dict[str, Any]] | None = None
    uses_matrix_path: bool = False
    test_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    equivalence_tolerance: float = 1.0

    def build(self, **overrides: Any) -> optax.GradientTransformationExtraArgs:
        """``factory(**defaults, **overrides)`` as an ExtraArgs transform."""
        kwargs = {**self.defaults, **overrides}
        return optax.with_extra_args_support(self.factory(**kwargs))

    def all_static_args(self) -> tuple[str, ...]:
        params = inspect.signature(self.factory).parameters
        common = tuple(a for a in COMMON_STATIC_ARGS if a in params)
        return tuple(dict.fromkeys(common + tuple(self.static_args)))

    def make_extra_args(self, ctx: ExtraArgsContext) -> dict[str, Any]:
        return {} if self.extra_args is None else dict(self.extra_args(ctx))


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec, *, overwrite: bool = False) -> OptimizerSpec:
    """Adds ``spec`` to the registry (raises on a duplicate name)."""
    if not isinstance(spec, OptimizerSpec):
        raise TypeError(f"register expects an OptimizerSpec, got {type(spec).__name__}.")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"An optimizer named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def get_optimizer(name: str) -> OptimizerSpec:
    """The :class:`OptimizerSpec` registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"No optimizer named {name!r}; registered: {sorted(_REGISTRY)}.") from None


def list_optimizers(family: str | None = None) -> list[str]:
    """Registered names, optionally filtered by family."""
    return sorted(n for n, s in _REGISTRY.items() if family is None or s.family == family)


def registered_specs() -> list[OptimizerSpec]:
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
