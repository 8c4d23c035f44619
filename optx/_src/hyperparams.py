"""One table of hyper-parameter constraints for every public optx factory.

Every public factory (the registered optimizers, the ``scale_by_*`` primitives
and the other transforms ``optx`` exports) is wrapped by :func:`validated`. At
construction the wrapper binds the call's arguments, applies the signature's
defaults and checks every argument against :data:`TABLE` — the constraint of
its *name* — or against the override the factory declares for that name:

.. code-block:: python

  @hyperparams.validated(b1=hyperparams.UNIT_CLOSED)   # Lion: b1 = 1 is allowed
  def lion(learning_rate=1e-4, b1=0.9, b2=0.99, ...): ...

so every error names the argument **the user passed** with its allowed range
(``ValueError``) or type (``TypeError``), whichever primitive the value is later
handed to. Constraints only look at concrete values: under
``optax.inject_hyperparams`` numeric hyper-parameters arrive as tracers, which
are let through, and schedules (callables, where the argument accepts one) are
checked at step 0.

Structural arguments (shapes, ranks, step counts, seeds, dtypes, strings,
routers) must stay static. ``optax.inject_hyperparams`` turns every number and
every callable it is given into an array; a structural argument that arrives as
an array therefore means it was injected, and the wrapper raises **one**
``TypeError`` naming every such argument and the exact ``static_args=(...)`` to
use. Structural integer arguments default to ``None`` (resolved inside the
factory) so that ``optax.inject_hyperparams(optx.X)(learning_rate=...)``, which
applies every default, works for every registered optimizer as written.

Every argument of a decorated factory must have a constraint (the table entry
or an override): :func:`validated` raises at import otherwise, so a new
argument cannot be added without declaring its range.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

KINDS = ("real", "int", "choice", "bool", "dtype", "mask", "transform", "any")


@dataclasses.dataclass(frozen=True)
class Constraint:
    """The allowed values of one argument.

    Attributes:
      kind: ``'real'`` (a number), ``'int'`` (a static Python int), ``'choice'``
        (one of ``choices``), ``'bool'``, ``'dtype'`` or ``'any'`` (unchecked).
      low, high: bounds of ``'real'``/``'int'`` values (None: unbounded).
      low_closed, high_closed: whether the bounds are allowed values.
      optional: None is allowed (it means "the documented default").
      schedule: a callable is a schedule; its value at step 0 is checked.
      static: the argument is structural: it must not arrive as an array
        (see the module docstring).
      choices: the allowed values of a ``'choice'``.
      callable_ok: a ``'choice'`` also accepts a callable (a custom kind).
      allow_inf: a ``'real'`` also accepts ``+inf`` (e.g. an ℓ∞ norm's ``p``).
      shape_of: for an ``'any'`` structural object, a check of its form: returns
        what the value must be when it is not (a TypeError names the argument),
        None when it is.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = True
    optional: bool = False
    schedule: bool = False
    static: bool = False
    choices: tuple[Any, ...] = ()
    callable_ok: bool = False
    allow_inf: bool = False
    shape_of: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Constraint kind must be one of {KINDS}, got {self.kind!r}.")

    def but(self, **changes: Any) -> Constraint:
        """A copy with ``changes`` (e.g. ``UNIT.but(optional=True)``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ text

    def range_text(self) -> str:
        """``'[0, 1)'``, ``'> 0'``, ``'>= 1'``, ... (empty when unbounded)."""
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            lb = "[" if self.low_closed else "("
            hb = "]" if self.high_closed else ")"
            return f"{lb}{_num(lo)}, {_num(hi)}{hb}"
        if lo is not None:
            return f"{'>=' if self.low_closed else '>'} {_num(lo)}"
        if hi is not None:
            return f"{'<=' if self.high_closed else '<'} {_num(hi)}"
        return ""

    def describe(self) -> str:
        """A short human-readable description (used in error messages and docs)."""
        extra = " or None" if self.optional else ""
        if self.kind == "real":
            rng = self.range_text()
            text = "a finite number" + (f" in {rng}" if rng.startswith(("[", "(")) else "")
            if rng and not rng.startswith(("[", "(")):
                text += f" {rng}"
            if self.allow_inf:
                text += " or inf"
            if self.schedule:
                text += " (or a schedule)"
            return text + extra
        if self.kind == "int":
            rng = self.range_text()
            return "a static Python int" + (f" {rng}" if rng else "") + extra
        if self.kind == "choice":
            options = ", ".join(repr(c) for c in self.choices)
            alt = " or a callable" if self.callable_ok else ""
            return f"one of {options}{alt}" + extra
        if self.kind == "bool":
            return "a Python bool"
        if self.kind == "dtype":
            return "a floating dtype (e.g. 'float32', jnp.bfloat16)" + extra
        if self.kind == "mask":
            return "a bool, a tree of bools (a prefix of the params) or a callable" + extra
        if self.kind == "transform":
            named = f" or one of {', '.join(repr(c) for c in self.choices)}" if self.choices else ""
            return "an optax.GradientTransformation" + named + extra
        return "any value"

    # ----------------------------------------------------------------- check

    def check(self, name: str, value: Any, owner: str = "") -> None:
        """Raises ValueError/TypeError naming ``name`` if ``value`` is not allowed."""
        where = f" ({owner})" if owner else ""
        if value is None:
            if self.optional or self.kind == "any":
                return
            raise TypeError(f"`{name}` must be {self.describe()}, got None{where}.")
        if self.kind == "any":
            expected = None if self.shape_of is None else self.shape_of(value)
            if expected is not None:
                raise TypeError(f"`{name}` must be {expected}, got {value!r}{where}.")
            return
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(
                    f"`{name}` must be {self.describe()}, got {value!r} of type "
                    f"{type(value).__name__}{where}."
                )
            return
        if self.kind == "dtype":
            try:
                dtype = jnp.dtype(value)
            except TypeError:
                dtype = None
            # States and compute dtypes hold real (or complex) numbers: an integer or
            # bool dtype would round them away silently.
            if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
                raise TypeError(
                    f"`{name}` must be {self.describe()}, got {value!r}{where}."
                ) from None
            return
        if self.kind == "choice":
            if self.callable_ok and callable(value):
                return
            if not isinstance(value, str) and isinstance(value, (jax.Array, np.ndarray)):
                return  # an injected value: reported by the structural check
            if value not in self.choices:
                raise ValueError(f"`{name}` must be {self.describe()}, got {value!r}{where}.")
            return
        if self.kind == "int":
            self._check_int(name, value, where)
            return
        if self.kind == "transform":
            # Duck-typed as optax chains it: an ``init`` and an ``update`` to call.
            if value in self.choices if isinstance(value, str) else _is_transform(value):
                return
            # An unknown name where names are allowed is a bad value, anything else a bad type.
            error = ValueError if isinstance(value, str) and self.choices else TypeError
            raise error(f"`{name}` must be {self.describe()}, got {value!r}{where}.")
        if self.kind == "mask":
            # A number or a string is no mask (optax would take it as "everything"):
            # typically a positional argument one place off (an ε where the mask is).
            numeric = isinstance(value, numbers.Number | str) or (
                isinstance(value, np.generic | np.ndarray | jax.Array)
                and not jnp.issubdtype(np.asarray(value).dtype, np.bool_)
            )
            if numeric and not isinstance(value, bool | np.bool_):
                raise TypeError(f"`{name}` must be {self.describe()}, got {value!r}{where}.")
            return
        self._check_real(name, value, where)

    def _check_int(self, name: str, value: Any, where: str) -> None:
        if isinstance(value, (jax.Array, np.ndarray)):
            return  # an injected value: reported by the structural check
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"`{name}` must be {self.describe()}, got {value!r} of type "
                f"{type(value).__name__}{where}. Shapes, ranks, step counts and seeds are static."
            )
        if not self._in_range(float(value)):
            raise ValueError(f"`{name}` must be {self.describe()}, got {value!r}{where}.")

    def _check_real(self, name: str, value: Any, where: str) -> None:
        if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
            if not self.schedule:
                raise TypeError(
                    f"`{name}` must be {self.describe()}, got the callable {value!r}{where}. "
                    "To schedule it, wrap the optimizer in optax.inject_hyperparams."
                )
            value = _schedule_at_zero(value)
            if value is None:
                return
            where = f" (the schedule's value at step 0){where}"
        concrete = _concrete_scalar(value)
        if concrete is _NOT_SCALAR:
            raise TypeError(
                f"`{name}` must be {self.describe()}, got {value!r} of type "
                f"{type(value).__name__}{where}."
            )
        if concrete is None:
            return  # a tracer (inject_hyperparams under jit): checked by nobody
        infinite = self.allow_inf and concrete == math.inf
        if not (math.isfinite(concrete) or infinite) or not self._in_range(concrete):
            raise ValueError(
                f"`{name}` must be {self.describe()}, got {value!r}{where}.{_rounded_hint(value)}"
            )

    def _in_range(self, v: float) -> bool:
        if self.low is not None and (v < self.low or (v == self.low and not self.low_closed)):
            return False
        return not (
            self.high is not None and (v > self.high or (v == self.high and not self.high_closed))
        )

    # ------------------------------------------------------------- for tests

    def invalid_values(self) -> list[Any]:
        """Values this constraint rejects (the validation tests try each one)."""
        out: list[Any] = []
        if self.kind == "real":
            if self.low is not None:
                out.append(self.low if not self.low_closed else self.low - 0.5)
            if self.high is not None:
                out.append(self.high if not self.high_closed else self.high + 0.5)
            out += [float("nan"), "0.1"]
        elif self.kind == "int":
            if self.low is not None:
                out.append(int(self.low) - 1)
            if self.high is not None:
                out.append(int(self.high) + 1)
            out.append(2.5)
        elif self.kind == "choice":
            out.append("__not_a_choice__")
        elif self.kind == "bool":
            out.append("yes")
        elif self.kind == "dtype":
            out += ["not_a_dtype", "int8", jnp.bool_]
        elif self.kind == "mask":
            out += [0.1, "w"]
        elif self.kind == "transform":
            out += ["__not_a_transform__", 0.1, float]  # float: a callable, no transform
        if not self.optional and self.kind not in ("any",):
            out.append(None)
        return out


_NOT_SCALAR = object()


def _is_transform(value: Any) -> bool:
    return callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _concrete_scalar(value: Any) -> Any:
    """``float(value)`` for a concrete real scalar; None for a tracer; _NOT_SCALAR else."""
    if isinstance(value, (bool, np.bool_)):
        return _NOT_SCALAR
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        if np.ndim(value) != 0 or not (
            jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
        ):
            return _NOT_SCALAR
        if isinstance(value, jax.core.Tracer):
            return None
        return float(value)
    return _NOT_SCALAR


def _rounded_hint(value: Any) -> str:
    """Why a low-precision array may be out of range: inject_hyperparams' cast."""
    dtype = getattr(value, "dtype", None)
    if dtype is None or jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return ""
    return (
        f" A {jnp.dtype(dtype).name} value: optax.inject_hyperparams casts hyper-parameters to "
        "the parameters' dtype (0.999 becomes 1 in bfloat16); pass "
        "hyperparam_dtype=jnp.float32 to optax.inject_hyperparams."
    )


def _schedule_at_zero(fn: Callable[..., Any]) -> Any:
    """A schedule's value at step 0, or None when it cannot be evaluated here."""
    try:
        return fn(0)
    except Exception:
        return None


# ----------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------


def real(
    low: float | None = None,
    high: float | None = None,
    *,
    low_closed: bool = True,
    high_closed: bool = True,
    optional: bool = False,
    schedule: bool = False,
    static: bool = False,
) -> Constraint:
    """A finite real number in the given range."""
    return Constraint(
        "real",
        low,
        high,
        low_closed,
        high_closed,
        optional=optional,
        schedule=schedule,
        static=static,
    )


def integer(low: int | None = 1, high: int | None = None, *, optional: bool = False) -> Constraint:
    """A static Python int in ``[low, high]`` (structural)."""
    return Constraint("int", low, high, optional=optional, static=True)


def choice(*choices: Any, optional: bool = False, callable_ok: bool = False) -> Constraint:
    """One of ``choices`` (structural)."""
    return Constraint(
        "choice", choices=tuple(choices), optional=optional, callable_ok=callable_ok, static=True
    )


UNIT = real(0.0, 1.0, high_closed=False)
"""``[0, 1)``: an EMA / momentum coefficient (1 would never forget, or divide by 0)."""
UNIT_CLOSED = real(0.0, 1.0)
"""``[0, 1]``."""
POSITIVE = real(0.0, low_closed=False)
"""``> 0``."""
NONNEGATIVE = real(0.0)
"""``>= 0``."""
RATE = real(0.0, schedule=True)
"""``>= 0``, a number or a schedule (learning rates, weight decays)."""
FLAG = Constraint("bool")
DTYPE = Constraint("dtype", optional=True, static=True)
MASK = Constraint("mask", optional=True)
"""optax's weight-decay mask: None, a bool, a tree of bools or a callable."""
ANY = Constraint("any")
TRANSFORM = Constraint("transform", optional=True, static=True)
"""An optax transform (``init``/``update``), e.g. a wrapper's ``inner``."""
STATIC = Constraint("any", static=True)
"""Structural and unchecked here (routers, layouts, transforms, trees, tables)."""


def _is_str_sequence(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(v, str) for v in value)
    )


def _router_form(value: Any) -> str | None:
    from optx._src import routing  # local import: routing is validated by this module

    ok = isinstance(value, routing.Router) or (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(r, routing.Rule) for r in value)
    )
    return None if ok else "an optx.Router, a sequence of optx.Rule or None"


def _layout_form(value: Any) -> str | None:
    from optx._src import layouts  # local import: layouts builds on this module

    expected = (
        "a LayoutSpec: None, an optx.MatrixLayout, a router, a callable "
        "(path, leaf) -> MatrixLayout | None, or a tree of MatrixLayout/None"
    )
    if callable(value) or callable(getattr(value, "layout", None)):
        return None  # a layout function, or a router (its ``layout`` method)
    if isinstance(value, layouts.MatrixLayout):
        return None
    if isinstance(value, (str, bytes, numbers.Number, np.ndarray, jax.Array)):
        return expected
    leaves = jax.tree.leaves(value, is_leaf=lambda x: isinstance(x, layouts.MatrixLayout))
    ok = all(isinstance(x, layouts.MatrixLayout) for x in leaves)
    return None if ok else expected


def _strings_form(value: Any) -> str | None:
    return None if _is_str_sequence(value) else "a sequence of str"


def _groups_form(value: Any) -> str | None:
    ok = isinstance(value, str) or _is_str_sequence(value)
    return None if ok else "a str or a sequence of str"


def _pattern_form(value: Any) -> str | None:
    if callable(value):
        return None
    if not isinstance(value, str):
        return "a regular expression (str) or a callable"
    try:
        re.compile(value)
    except re.error as e:
        return f"a valid regular expression ({e})"
    return None


def _axis_name_form(value: Any) -> str | None:
    ok = isinstance(value, str) or (
        isinstance(value, tuple) and value and all(isinstance(v, str) for v in value)
    )
    return None if ok else "a mesh axis name (str), a tuple of them or None"


def _pairs_form(value: Any) -> str | None:
    from optx._src import lora  # local import: lora is validated by this module

    def is_pair(p: Any) -> bool:  # an adapter, or refactorize_every's (left, right) paths
        return isinstance(p, lora.LoRAPair) or (
            isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p)
        )

    ok = callable(value) or (isinstance(value, Sequence) and all(is_pair(p) for p in value))
    return (
        None
        if ok
        else (
            "a sequence of optx.lora.LoRAPair (optx.lora.lora_pairs) or of (left_path, "
            "right_path) pairs, a callable or None"
        )
    )


def _transforms_form(value: Any) -> str | None:
    ok = isinstance(value, Mapping) and all(
        isinstance(k, str) and _is_transform(v) for k, v in value.items()
    )
    return None if ok else "a mapping from group names to optax transforms"


def _weights_form(value: Any) -> str | None:
    return None if isinstance(value, str) or callable(value) else "None, 'size' or a callable"


# ----------------------------------------------------------------------------
# The table: one constraint per argument name
# ----------------------------------------------------------------------------

TABLE: dict[str, Constraint] = {
    # --- rates and decays
    "learning_rate": RATE,
    "adam_learning_rate": RATE.but(optional=True),
    "weight_decay": RATE,
    "adam_weight_decay": RATE.but(optional=True),
    "spectral_decay": RATE,
    "max_update_norm": RATE.but(optional=True),
    "decay": RATE,
    "adam_lr_ratio": NONNEGATIVE.but(optional=True),
    "lr_ratio": POSITIVE,
    "wd_ratio": NONNEGATIVE,
    "scale": NONNEGATIVE,
    "inactive_lr_scale": NONNEGATIVE,
    "proj_lr_scale": NONNEGATIVE,
    "residual_scale": NONNEGATIVE,
    # --- moment coefficients
    "b1": UNIT,
    "b2": UNIT,
    "adam_b1": UNIT.but(optional=True),
    "adam_b2": UNIT.but(optional=True),
    "beta": UNIT,
    "momentum": UNIT,
    "agvm_decay": UNIT_CLOSED,  # as agvm's `decay`: 1 keeps the initial factors
    "shampoo_beta": UNIT.but(optional=True),
    "factor_decay": UNIT_CLOSED,
    "dampening": UNIT_CLOSED,
    # --- epsilons
    "eps": NONNEGATIVE,
    "adam_eps": NONNEGATIVE.but(optional=True),
    "eps_root": NONNEGATIVE.but(optional=True),
    "norm_eps": POSITIVE,
    "clip_eps": NONNEGATIVE,
    "damp": POSITIVE,
    # --- method-specific numbers
    "gamma": POSITIVE.but(optional=True),
    "rms": POSITIVE,
    "delta": POSITIVE,
    "p": real(1.0, low_closed=False),
    "quantile": UNIT_CLOSED,
    "w_max": POSITIVE,
    "hessian_power": UNIT_CLOSED,
    "tokens_per_batch": POSITIVE,
    "stabilization_factor": UNIT_CLOSED,
    "reset_threshold": NONNEGATIVE,
    "clip_value": NONNEGATIVE,
    "switch_threshold": NONNEGATIVE,
    "min_ratio": POSITIVE,
    "max_ratio": POSITIVE,
    "norm_growth_limit": real(1.0, optional=True),
    "max_inflation_factor": POSITIVE,
    # --- structural numbers
    "ns_steps": integer(1, optional=True),
    "rank": integer(1, optional=True),
    "update_proj_gap": integer(1, optional=True),
    "update_interval": integer(1, optional=True),
    "every_k": integer(1),
    "seed": integer(0, optional=True),
    "num_samples": integer(1, optional=True),
    "block_size": integer(1, optional=True),
    "min_size": integer(0, optional=True),
    "num_grads": integer(1, optional=True),
    "power_iterations": integer(0, optional=True),
    "max_precond_dim": integer(1, optional=True),
    "warmup_steps": integer(0, optional=True),
    "switch_window": integer(1, optional=True),
    "switch_min_steps": integer(0, optional=True),
    "start_step": integer(0, optional=True),
    "stop_step": integer(0, optional=True),
    "skip_steps": integer(0),
    "refresh_phase": integer(0),
    "feature_axis": integer(None),
    "density": real(0.0, 1.0, optional=True, static=True),
    "score_norm": real(0.0, low_closed=False, optional=True, static=True).but(allow_inf=True),
    "gnb_clip_norm": POSITIVE.but(optional=True),
    "grad_clip": POSITIVE.but(optional=True),
    "world_size": integer(1, optional=True),
    # --- dtypes
    "mu_dtype": DTYPE,
    "nu_dtype": DTYPE,
    "ns_dtype": DTYPE,
    "precond_dtype": DTYPE,
    "buffer_dtype": DTYPE,
    "factor_dtype": DTYPE,
    "factor_compute_dtype": DTYPE,
    "compute_dtype": DTYPE,
    "accumulator_dtype": DTYPE,
    # --- names
    "strategy": choice("auto", "replicate", "batched"),
    "side": choice("std", "reverse_std", "in", "out"),
    "distribution": choice("rademacher", "gaussian"),
    "kind": choice("ema", "sum"),
    "momentum_kind": choice("ema", "sum"),
    "eps_placement": choice("corrected", "uncorrected"),
    "adam_eps_placement": choice("corrected", "uncorrected"),
    "geometry": choice("rms", "l2"),
    "coupling": choice("rms", "modula"),
    "form": choice("paper", "repo"),
    "order": choice("random", "ascending", "descending"),
    "slot_order": choice("stable", "score"),
    "conv_view": choice("matrix", "torch"),
    "density_rounding": choice("round", "floor"),
    "scale_type": choice("channel", "tensor"),
    "scale_rule": choice("gsnr", "gsnr_max", "sqrt_numel"),
    "factorization": choice("matrix", "axes"),
    "reset_mode": choice("identity", "blend"),
    "statistics": choice("auto", "captures", "gradients"),
    "rule": choice("keller", "moonlight", "none", "rms_to_rms"),
    "inactive_update_rule": choice("sign", "sgd", optional=True),
    "residual": choice("sign", "sgd", optional=True),
    "preset": choice("official", optional=True),
    # FRUGAL's ``'block'`` is its own override (``aliases/memory.py``).
    "projection": choice("svd", "random", "orthogonal", "coordinate", "dct", callable_ok=True),
    "scaling": choice("keller", "moonlight", "none", optional=True),
    "kernel": choice("xla", "pallas", optional=True),
    # --- evolution strategies (EGGROLL / OpenES)
    "sigma": POSITIVE.but(schedule=True),
    "population_size": integer(2, optional=True),
    "noise_reuse": integer(0, optional=True),
    "group_size": integer(0, optional=True),
    "fitness_shaping": choice("standardize", "centered_ranks", "none"),
    "freeze_nonmatrix": FLAG,
    # --- group-sparse prox (WGSEF)
    "strength": RATE,
    "penalty": RATE,
    # --- low-rank adapters (LoRA-Pro, SoRA)
    "alpha": POSITIVE.but(optional=True),
    "variant": choice("paper", "official"),
    "threshold": RATE,
    "mode": choice("official", "soft"),
    "threshold_mode": choice("official", "soft"),
    "gate_learning_rate": RATE.but(optional=True),
    "gate_b1": UNIT,
    "gate_b2": UNIT,
    "gate_eps": NONNEGATIVE,
    "gate_weight_decay": NONNEGATIVE.but(schedule=True),
    "kappa": STATIC,
    # --- flags
    **{
        flag: FLAG
        for flag in (
            "nesterov",
            "check_outputs",
            "bias_correction",
            "exact_bias_correction",
            "rectify",
            "degenerated_to_sgd",
            "amsgrad",
            "weight_decouple",
            "fixed_decay",
            "dynamic_step_size",
            "scale_front",
            "store_projector",
            "reset_on_refresh",
            "reset_statistics",
            "merge_dims",
            "precondition_1d",
            "rotate_fallback_matrices",
            "normalize_grads",
            "refresh_at_start",
            "warm_start",
            "blockwise",
            "hybrid",
            "official_fallback",
            "project_momentum_buffer",
            "adam_preconditioning",
            "eps_inside_sqrt",
            "normalize_argument",
            "use_grad_mean",
            "reset_state",
            "project_embeddings",
        )
    },
    # --- structural objects (checked by the factory that uses them)
    **{
        obj: STATIC
        for obj in (
            "ns_coeffs",
            "inputs",
            "project",
            "hyperparams",
            "estimator",
            "project_inner_state",
            "spatial_axes",
            "grad_clip_iter_range",
            "optimizer",
            "gates",
            "k",
        )
    },
    # --- structural objects whose form is checked here (their contents by the factory)
    "router": STATIC.but(shape_of=_router_form),
    "layout": STATIC.but(shape_of=_layout_form),
    "extra_layout": STATIC.but(shape_of=_layout_form),
    "fields": STATIC.but(shape_of=_strings_form),
    "unsigned_fields": STATIC.but(shape_of=_strings_form),
    "groups": STATIC.but(shape_of=_groups_form),
    "full_precision": STATIC.but(shape_of=_pattern_form),
    "axis_name": STATIC.but(shape_of=_axis_name_form),
    "pairs": STATIC.but(shape_of=_pairs_form),
    "group_weights": STATIC.but(shape_of=_weights_form),
    "transforms": STATIC.but(shape_of=_transforms_form),
    # --- transforms (duck-typed: an ``init`` and an ``update``)
    "inner": TRANSFORM,
    "base_optimizer": TRANSFORM,
    "tx": TRANSFORM,
    # --- trees and callables applied to the parameters
    "mask": MASK,
}


# ----------------------------------------------------------------------------
# The decorator
# ----------------------------------------------------------------------------


def _is_array(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray))


def static_args_error(owner: str, names: list[str]) -> TypeError:
    """The one error for structural arguments that arrived as arrays."""
    listed = ", ".join(f"`{n}`" for n in names)
    static = "(" + ", ".join(repr(n) for n in names) + ("," if len(names) == 1 else "") + ")"
    return TypeError(
        f"{owner}: {listed} {'is a structural argument' if len(names) == 1 else 'are structural arguments'} "
        "(shapes, ranks, step counts, seeds, dtypes, names, routers) but arrived as an array: "
        "optax.inject_hyperparams turns every number and callable it is given into an array. "
        f"Keep {'it' if len(names) == 1 else 'them'} static: "
        f"optax.inject_hyperparams({owner}, static_args={static})(...)."
    )


def check_arguments(
    owner: str, constraints: Mapping[str, Constraint], arguments: Mapping[str, Any]
) -> None:
    """Checks bound ``arguments`` against ``constraints`` (see :func:`validated`)."""
    injected = [
        n
        for n, v in arguments.items()
        if n in constraints and constraints[n].static and _is_array(v)
    ]
    if injected:
        raise static_args_error(owner, injected)
    for name, value in arguments.items():
        constraint = constraints.get(name)
        if constraint is not None:
            constraint.check(name, value, owner)


#: Kinds whose None keeps its meaning whatever the signature's default (no mask, the
#: leaf's dtype, no transform, anything).
_NONE_MEANS_DEFAULT_KINDS = ("any", "mask", "dtype", "transform")


def _none_excluded(parameter: inspect.Parameter, constraint: Constraint) -> bool:
    """Whether a table entry that allows None must not for this parameter: the table
    allows it for the factories that resolve None to a default, and this one neither
    defaults to None nor declares None in its annotation (None would fail in update)."""
    default = parameter.default
    return (
        constraint.optional
        and constraint.kind not in _NONE_MEANS_DEFAULT_KINDS
        and default is not None
        and default is not inspect.Parameter.empty
        and "None" not in str(parameter.annotation)
    )


def validated(**overrides: Constraint) -> Callable[[F], F]:
    """Checks a factory's arguments against :data:`TABLE` (and ``overrides``).

    The wrapped factory keeps its signature, docstring and module (so
    ``optax.inject_hyperparams`` and doctests see the original), and exposes
    its constraints as ``factory.constraints`` (name → :class:`Constraint`).

    A table entry that allows None (for the factories that resolve it to a default)
    does not where this factory's parameter has a value as its default and no
    ``None`` in its annotation: ``None`` is then rejected by name, as any other
    invalid value.

    Raises:
      KeyError: at decoration, if an argument has no constraint (add it to
        :data:`TABLE` or pass an override).
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = sorted(set(overrides) - set(signature.parameters))
        if unknown:
            raise KeyError(f"{fn.__qualname__}: overrides for unknown arguments {unknown}.")
        constraints: dict[str, Constraint] = {}
        for name in signature.parameters:
            constraint = overrides.get(name, TABLE.get(name))
            if constraint is None:
                raise KeyError(
                    f"{fn.__module__}.{fn.__qualname__}: argument {name!r} has no constraint; "
                    "add it to optx._src.hyperparams.TABLE or pass an override to validated()."
                )
            if name not in overrides and _none_excluded(signature.parameters[name], constraint):
                constraint = constraint.but(optional=False)
            constraints[name] = constraint
        owner = f"optx.{fn.__name__}"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check_arguments(owner, constraints, bound.arguments)
            return fn(*args, **kwargs)

        wrapper.constraints = MappingProxyType(constraints)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def constraints_of(factory: Callable[..., Any]) -> Mapping[str, Constraint] | None:
    """The constraints a :func:`validated` factory declares (None if undecorated)."""
    return getattr(factory, "constraints", None)
