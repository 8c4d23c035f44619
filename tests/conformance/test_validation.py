"""Every hyper-parameter of every public factory is validated from one table.

The constraints live in ``optx._src.hyperparams.TABLE`` (per argument name) and
the per-factory overrides given to ``hyperparams.validated``. This module walks
every registered optimizer and every public ``GradientTransformation`` factory
of ``optx``, derives invalid values from each argument's constraint and checks
that construction raises a ``ValueError``/``TypeError`` naming **that**
argument (the one the user passed, not an internal one). No compilation: it
only builds transforms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax
import pytest

import optx
from optx._src import hyperparams

# Valid values for arguments without a default (the primitives' wrapped
# transforms, step counts, ...).
REQUIRED: dict[str, Any] = {
    "inner": optax.identity(),
    "every_k": 2,
    "transforms": {"matrix": optax.identity(), "fallback": optax.identity()},
    "project": lambda mats, hp, pi: mats,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "tx": optax.identity(),
    "sigma": 0.1,
    "strength": 0.1,
    "k": 1,
    "router": optx.default_router(),
}


def _public_factories() -> dict[str, Callable[..., Any]]:
    out = {}
    modules = [getattr(optx, n) for n in optx.__all__ if inspect.ismodule(getattr(optx, n))]
    namespaces = [optx, *modules]
    for namespace in namespaces:
        for name in namespace.__all__:
            fn = getattr(namespace, name)
            if not inspect.isfunction(fn):
                continue
            if "GradientTransformation" in str(inspect.signature(fn).return_annotation):
                out[name] = fn
    for spec in optx.registered_specs():
        out[spec.name] = spec.factory
    return dict(sorted(out.items()))


FACTORIES = _public_factories()


def _base_kwargs(name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    kwargs = {
        k: v for k, v in REQUIRED.items() if k in params and params[k].default is params[k].empty
    }
    if name in optx.list_optimizers():
        spec = optx.get_optimizer(name)
        kwargs.update(spec.defaults)
    return kwargs


def test_every_public_factory_is_validated() -> None:
    assert len(FACTORIES) > 70
    missing = [n for n, fn in FACTORIES.items() if hyperparams.constraints_of(fn) is None]
    assert not missing, f"undecorated public factories: {missing}"


@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_declared_constraint_raises_naming_the_argument(name: str) -> None:
    """Each invalid value derived from the table raises, naming the argument."""
    fn = FACTORIES[name]
    base = _base_kwargs(name, fn)
    fn(**base)  # the defaults themselves are valid
    constraints = hyperparams.constraints_of(fn)
    assert set(constraints) == set(inspect.signature(fn).parameters)
    tried = 0
    for arg, constraint in constraints.items():
        for bad in constraint.invalid_values():
            with pytest.raises((ValueError, TypeError)) as info:
                fn(**{**base, arg: bad})
            assert f"`{arg}`" in str(info.value), (name, arg, bad, str(info.value))
            tried += 1
    if any(c.kind != "any" for c in constraints.values()):
        assert tried > 0


@pytest.mark.parametrize(
    "call,argument",
    [
        # The accepted-invalid cases of issues 13 and 20.
        (lambda: optx.adamw(b1=1.0), "b1"),
        (lambda: optx.adamw(b2=1.5), "b2"),
        (lambda: optx.adamw(eps=-1.0), "eps"),
        (lambda: optx.adamw(-1e-3), "learning_rate"),
        (lambda: optx.adamw(optax.linear_schedule(-1e-3, 0.0, 10)), "learning_rate"),
        (lambda: optx.adamw_8bit(b1=1.0), "b1"),
        (lambda: optx.galore(b1=1.0), "b1"),
        (lambda: optx.apollo(b2=1.0), "b2"),
        (lambda: optx.exadam(b2=-0.5), "b2"),
        (lambda: optx.sophia_g(tokens_per_batch=0), "tokens_per_batch"),
        (lambda: optx.muon(adam_b2=1.0), "adam_b2"),
        (lambda: optx.normuon(adam_eps=-1.0), "adam_eps"),
        (lambda: optx.root(adam_learning_rate=-1.0), "adam_learning_rate"),
        (lambda: optx.cosmos(rank=0), "rank"),
        # Errors that used to name another (internal) argument.
        (lambda: optx.muon(b1=1.2), "b1"),
        (lambda: optx.normuon(b2=1.2), "b2"),
        (lambda: optx.root(clip_eps=-1.0), "clip_eps"),
        (lambda: optx.lipschitz_muon(weight_decay=-0.1), "weight_decay"),
        (lambda: optx.lipschitz_muon(-0.02), "learning_rate"),
    ],
)
def test_issue_cases_name_the_argument(call: Callable[[], Any], argument: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert f"`{argument}`" in str(info.value)


def test_messages_state_the_allowed_range() -> None:
    with pytest.raises(ValueError, match=r"`b1` must be a finite number in \[0, 1\), got 1.0"):
        optx.adamw(b1=1.0)
    with pytest.raises(ValueError, match=r"`learning_rate` .* >= 0 .* step 0"):
        optx.muon(lambda count: -0.02 + 0.0 * count)
    with pytest.raises(TypeError, match=r"`rank` must be a static Python int >= 1"):
        optx.galore(rank=2.5)
    with pytest.raises(TypeError, match=r"`b1` must be .*callable"):
        optx.adamw(b1=lambda count: 0.9)


def test_injected_structural_arguments_get_one_error_with_static_args() -> None:
    """Structural arguments passed through inject_hyperparams: one error naming all."""
    tx = optax.inject_hyperparams(optx.galore)(learning_rate=1e-2, rank=4, update_proj_gap=10)
    with pytest.raises(TypeError) as info:
        tx.init({"w": jnp.ones((8, 8))})
    msg = str(info.value)
    assert "`rank`, `update_proj_gap`" in msg
    assert "optax.inject_hyperparams(optx.galore, static_args=('rank', 'update_proj_gap'))" in msg
    fixed = optax.inject_hyperparams(optx.galore, static_args=("rank", "update_proj_gap"))
    fixed(learning_rate=1e-2, rank=4, update_proj_gap=10).init({"w": jnp.ones((8, 8))})
    # A dtype class is callable: inject takes it for a schedule, and the error says so.
    tx = optax.inject_hyperparams(optx.muon)(learning_rate=0.02, mu_dtype=jnp.bfloat16)
    with pytest.raises(TypeError, match=r"static_args=\('mu_dtype',\)"):
        tx.init({"w": jnp.ones((8, 8))})
    # So is a Newton–Schulz shape table (inject calls it with the step count).
    tx = optax.inject_hyperparams(optx.root)(
        learning_rate=1e-3, ns_coeffs=optx.linalg.ROOT_COEFFICIENTS
    )
    with pytest.raises(TypeError, match=r"static_args=\('ns_coeffs',\)"):
        tx.init({"w": jnp.ones((8, 8))})


def test_table_choices_match_the_modules() -> None:
    """The table's names of choices are the modules' own constants."""
    from optx._src import (
        adaptive,
        bases,
        constraints,
        curvature,
        kronecker,
        moments,
        normalization,
        projection,
        sharding,
    )

    table = hyperparams.TABLE
    pairs = {
        "strategy": sharding.STRATEGIES,
        "side": projection.SIDES,
        "order": projection.BLOCK_ORDERS,
        "scale_type": projection.APOLLO_SCALE_TYPES,
        "distribution": curvature.DISTRIBUTIONS,
        "kind": moments.MOMENTUM_KINDS,
        "momentum_kind": moments.MOMENTUM_KINDS,
        "eps_placement": moments.EPS_PLACEMENTS,
        "geometry": constraints.GEOMETRIES,
        "coupling": constraints.COUPLINGS,
        "scale_rule": adaptive.SAI_SCALE_RULES,
        "factorization": bases.FACTORIZATIONS,
        "reset_mode": kronecker.RESET_MODES,
        "statistics": kronecker.STATISTICS,
        "rule": normalization.SHAPE_RULES,
    }
    for name, choices in pairs.items():
        assert set(table[name].choices) == set(choices), name
    assert set(projection.PROJECTIONS) == set(table["projection"].choices)


# Choices that need something the construction alone does not have.
_NEEDS_MORE = {("mkor", "statistics", "captures"), ("mkor_h", "statistics", "captures")}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_declared_choice_and_flag_is_accepted(name: str) -> None:
    """The other side of the table: each value a choice declares, and each flag's
    other value, builds (``projection='block'`` had been declared for every
    projected method; only FRUGAL takes it)."""
    fn = FACTORIES[name]
    base = _base_kwargs(name, fn)
    sig = inspect.signature(fn).parameters
    for arg, constraint in hyperparams.constraints_of(fn).items():
        if constraint.kind == "choice":
            values = [c for c in constraint.choices if c is not None]
        elif constraint.kind == "bool" and isinstance(base.get(arg, sig[arg].default), bool):
            values = [not base.get(arg, sig[arg].default)]
        else:
            continue
        for value in values:
            if (name, arg, value) in _NEEDS_MORE:
                continue
            try:
                fn(**{**base, arg: value})
            except (ValueError, TypeError) as e:
                # A value refused only in combination with another argument's default.
                assert f"`{arg}`" not in str(e).split(";")[0] or "needs" in str(e), (
                    name,
                    arg,
                    value,
                    str(e),
                )
