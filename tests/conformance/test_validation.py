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

import jax
import jax.numpy as jnp
import numpy as np
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
        # optax.contrib.muon's positional order (…, beta, eps, weight_decay) on the Muon
        # family without ε: the decay lands on `mask`, which had taken any value.
        (lambda: optx.muon(0.02, "keller", 5, 0.95, 1e-8, 0.1), "mask"),
        (lambda: optx.root(0.02, None, None, 0.95, 1e-8, 0.1), "mask"),
        (lambda: optx.lipschitz_muon(0.02, None, None, 0.95, 1e-8, 0.1), "mask"),
        (lambda: optx.adamw(1e-3, mask="kernel"), "mask"),
        # None where the factory's default is a value (the table allows None for the
        # factories that resolve it): accepted, then failed inside update.
        (lambda: optx.adamw(eps_root=None), "eps_root"),
        (lambda: optx.scale_by_adam(eps_root=None), "eps_root"),
        (lambda: optx.sophia_h(gamma=None), "gamma"),
        (lambda: optx.scale_by_cosh_rms(gamma=None), "gamma"),
        (lambda: optx.scale_by_norm_growth_limiter(gamma=None), "gamma"),
        (lambda: optx.agvm(optax.sgd(0.1), adam_preconditioning=True, adam_eps=None), "adam_eps"),
        (lambda: optx.root(scaling=None), "scaling"),
        # Integer and bool dtypes for states and compute: accepted, then rounded away.
        (lambda: optx.muon(ns_dtype="int8"), "ns_dtype"),
        (lambda: optx.adamw(mu_dtype="int8"), "mu_dtype"),
        (lambda: optx.soap(precond_dtype="int8"), "precond_dtype"),
        (lambda: optx.soap(nu_dtype=jnp.bool_), "nu_dtype"),
        # Structural objects of the wrong form: accepted, then failed at update without a
        # name (or failed at construction naming nothing, or with re.error).
        (lambda: optx.scale_by_newton_schulz(layout="garbage"), "layout"),
        (lambda: optx.scale_by_sai(layout=3), "layout"),
        (lambda: optx.wgsef(0.1, group_weights=-1), "group_weights"),
        (lambda: optx.wgsef(0.1, router="x"), "router"),
        (lambda: optx.muon(router=3.5), "router"),
        (lambda: optx.lora_pro(pairs=3.5), "pairs"),
        (lambda: optx.agvm_sgd(groups=3.5), "groups"),
        (lambda: optx.routed(3.5), "transforms"),
        (lambda: optx.routed({"matrix": 0.1}), "transforms"),
        (lambda: optx.quantization.quantize_moments(optax.adam(1e-3), fields=3), "fields"),
        (lambda: optx.adamw_8bit(full_precision="("), "full_precision"),
        (lambda: optx.sophia_h(axis_name=3.5), "axis_name"),
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


_KEEP_W = {"w": True, "b": False}


@pytest.mark.parametrize(
    ("mask", "full"),
    [
        (None, {"w": True, "b": True}),
        (True, {"w": True, "b": True}),
        (False, {"w": False, "b": False}),
        ({"w": True, "b": False}, _KEEP_W),
        (np.bool_(True), {"w": True, "b": True}),
        (lambda p: {"w": True, "b": False}, _KEEP_W),
    ],
    ids=["none", "true", "false", "prefix_tree", "numpy_bool", "callable"],
)
def test_optax_masks_are_accepted(mask: Any, full: dict) -> None:
    """Every form of optax's mask, prefix trees included, gives the step of the
    equivalent full tree of bools (AdamP/SGDP's decay had required the full tree)."""
    params = {"w": 0.3 * jnp.ones((4, 4)), "b": jnp.ones(4)}
    for factory in (optx.adamw, optx.muon, optx.adamp, optx.sgdp):
        tx, ref = factory(weight_decay=0.1, mask=mask), factory(weight_decay=0.1, mask=full)
        got, _ = tx.update(params, tx.init(params), params)
        want, _ = ref.update(params, ref.init(params), params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_low_precision_injected_values_say_why() -> None:
    """optax.inject_hyperparams casts hyper-parameters to the params' dtype: b2 = 0.999
    is 1 in bfloat16. The error says so and names the fix."""
    tx = optax.inject_hyperparams(optx.adamw)(learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"`b2` .*bfloat16.*hyperparam_dtype=jnp.float32"):
        tx.init({"w": jnp.ones((4, 4), jnp.bfloat16)})
    fixed = optax.inject_hyperparams(optx.adamw, hyperparam_dtype=jnp.float32)(learning_rate=1e-3)
    params = {"w": jnp.ones((4, 4), jnp.bfloat16)}
    updates, _ = fixed.update(params, fixed.init(params), params)
    # (float32 updates, as optax.adamw gives under a float32 hyperparam_dtype)
    assert bool(jnp.all(jnp.isfinite(updates["w"]))) and bool(jnp.all(updates["w"] != 0))


def test_documented_schedules_are_accepted() -> None:
    """OpenES/EGGROLL's σ and SoRA's gate decay are documented as schedules (σ of the
    generation): accepted, and a generation's update is that of the constant σ it reads."""
    params = {"w": jnp.zeros(3)}
    key = jax.random.key(0)
    sigma = optax.exponential_decay(0.1, 1, 0.5)  # 0.1, then 0.05

    def update(tx: Any, state: Any, s: float) -> tuple[Any, Any]:
        gen = optax.tree_utils.tree_get(state, "generation")
        f = optx.evolution.es_evaluate(
            lambda p, n: -jnp.sum((p["w"] + n["w"] - 1.0) ** 2), params, key, 8,
            sigma=s, rank=None, generation=gen,
        )  # fmt: skip
        return tx.update(params, state, params, fitness=f, key=key)

    scheduled = optx.openes(0.1, sigma=sigma)
    state = scheduled.init(params)
    for gen, s in enumerate((0.1, 0.05)):
        constant = optx.openes(0.1, sigma=s)
        want, _ = update(constant, state, s)
        got, state = update(scheduled, state, s)
        np.testing.assert_allclose(np.asarray(got["w"]), np.asarray(want["w"]), rtol=1e-6)
        assert gen == 0 or not np.allclose(np.asarray(got["w"]), 0.0)
    optx.eggroll(0.1, sigma=sigma, rank=1)
    optx.sora(gate_weight_decay=optax.linear_schedule(0.1, 0.0, 10))


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


NS_FACTORIES = [n for n, fn in FACTORIES.items() if "ns_coeffs" in inspect.signature(fn).parameters]


@pytest.mark.parametrize("name", NS_FACTORIES)
@pytest.mark.parametrize(
    "bad", ["no_such_preset", (1.0, 2.0), ((3.0, -4.0), (3.0, -4.0, 1.0)), 3.0]
)
def test_malformed_newton_schulz_coefficients_fail_at_construction(name: str, bad: Any) -> None:
    """A malformed ``ns_coeffs`` (an unknown preset, a pair, a table with a
    short entry, a number) raises when the transform is built, naming
    ``ns_coeffs`` (``orthogonalization.check_ns_coeffs``): Lion-𝒦 took them
    until its first step, COSMOS and Lipschitz-Muon raised without the name,
    and a pair raised "'float' object is not iterable"."""
    fn = FACTORIES[name]
    with pytest.raises((TypeError, ValueError), match="`ns_coeffs`"):
        fn(**{**_base_kwargs(name, fn), "ns_coeffs": bad})


def test_transform_arguments_are_checked_by_name() -> None:
    """``inner``/``base_optimizer``/``tx`` take a transform (MKOR's ``inner``
    also 'sgd', 'adam', 'adamw'): a name or an uncalled factory such as
    ``optax.sgd`` is refused at construction, naming the argument."""
    for call, arg, error in [
        (lambda: optx.agvm(inner="sgd"), "inner", TypeError),
        (lambda: optx.galore(base_optimizer="adam"), "base_optimizer", TypeError),
        (lambda: optx.quantization.quantize_moments(optax.adam), "inner", TypeError),
        (lambda: optx.mkor(inner="sgdm"), "inner", ValueError),  # an unknown name
        (lambda: optx.mkor(inner=optax.sgd), "inner", TypeError),
    ]:
        with pytest.raises(error, match=f"`{arg}` must be an optax.GradientTransformation"):
            call()
    optx.mkor(inner="adam")
    optx.mkor(inner=optax.scale_by_lion())


#: Public primitives whose update needs extra arguments this check does not build.
_NEEDS_EXTRA_ARGS = {
    "agvm",
    "openes",
    "scale_by_adahessian",
    "scale_by_eggroll",
    "scale_by_sophia",
}


#: Primitives that need more than a plain tree: low-rank factor pairs (refactorize_every),
#: a projection callable (spectral_projection; its named projections are checked).
_NOT_ON_A_PLAIN_TREE = {"refactorize_every", "spectral_projection"}


@pytest.mark.parametrize(
    "name",
    [n for n in FACTORIES if n not in optx.list_optimizers() and n not in _NOT_ON_A_PLAIN_TREE],
)
def test_every_public_primitive_works_under_inject_hyperparams(name: str) -> None:
    """``optax.inject_hyperparams(optx.X, static_args=<its structural arguments>)``, traced:
    every default becomes an array, and no factory check may branch on it (the
    registered optimizers have their own check in tests/test_conformance.py)."""
    fn = FACTORIES[name]
    static = tuple(n for n, c in hyperparams.constraints_of(fn).items() if c.static)
    tx = optax.inject_hyperparams(fn, static_args=static)(**_base_kwargs(name, fn))
    params = {"w": jnp.ones((8, 6)), "b": jnp.ones(6)}
    state = jax.eval_shape(tx.init, params)
    assert "hyperparams" in state._fields
    if name not in _NEEDS_EXTRA_ARGS:
        jax.eval_shape(lambda s: tx.update(params, s, params), state)


def test_numpy_scalars_are_static_numbers() -> None:
    """A NumPy scalar is a static number like a Python one (``density`` had required a
    Python float); an array is not."""
    params = {"w": jnp.ones((4, 8, 8))}
    quiet = optx.Router(warn_guessed=False)
    for density in (np.float32(0.25), np.float64(0.25), 0.25):
        optx.frugal(density=density, router=quiet).init(params)
        optx.scale_by_block_subspace(density=density, layout=quiet).init(params)
    with pytest.raises(TypeError, match="`density`"):
        optx.frugal(density=jnp.asarray(0.25))
    # agvm's EMA and agvm_sgd's (the same α) accept the same range.
    optx.agvm(optax.sgd(0.1), decay=1.0)
    optx.agvm_sgd(agvm_decay=1.0)
