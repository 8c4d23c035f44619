"""optax's own optimizer test matrix, run on every registered optx optimizer.

The test functions are imported from the installed optax package
(``optax/_src/alias_test.py`` and ``optax/contrib/_common_test.py``) and called
unchanged: optax's assertions, problems, step counts and tolerances. Only the
construction is adapted:

* optax's factory lookups (``alias_test._get_opt``,
  ``_common_test._get_opt_factory``) are monkeypatched to return the optx
  factory under test (its signature with evaluated annotations, so optax's
  ``inspect.signature`` checks see ``optax.ScalarOrSchedule``), called with the
  keyword arguments in :data:`OPTAX_KWARGS` (a learning rate suited to optax's
  problems, as optax's own ``_OPTIMIZERS_UNDER_TEST`` picks one per optimizer);
* an optimizer whose ``update`` needs extra inputs (curvature oracles, losses,
  half-batch gradients) is wrapped so its registry ``extra_args`` builder
  (:class:`optx.ExtraArgsContext`) is fed from what optax's tests pass: the
  contrib matrix passes the objective as ``obj_fn`` when ``opt_name`` is
  ``'sophia'`` (its hook for optimizers that need the loss), the alias matrix
  passes the loss value as ``value`` when ``opt_name`` is ``'polyak_sgd'``;
  those hook names are used for such optimizers.

Every case passes except the exclusions in :data:`EXCLUDED`, each with its
reason; an excluded case for an optimizer that refuses complex parameters
asserts the refusal (a ``TypeError`` naming the leaf) instead of skipping.

Structural arguments a case needs (M-FAC's window ``num_grads``) are bound into
the factory (:data:`OPTAX_STATIC`), not passed as hyper-parameters, so optax's
inject test does not turn them into arrays; optx names that optax's tests
special-case for optax's own optimizer (``lion``) reach them as ``optx.<name>``.

The full matrix (37 optimizers × 31 cases = 1,147) runs with::

    OPTX_OPTAX_MATRIX=full python -m pytest -n 2 tests/conformance/test_optax_suite.py

or one optimizer at a time with ``-k "[<name>-"`` (~1 min each on a loaded
2-core machine). Last full run (2026-12-03; commands, per-optimizer counts and
every exclusion's reason in ``results/optax_matrix/full.md``): 1,021 passed,
126 excluded by design, 0 failed.

==========================================================================  ======  ========  ======
optax test (``test_`` dropped)                                              passed  excluded  failed
==========================================================================  ======  ========  ======
alias.optimization                                                          109     39        0
alias.optimizers_accept_extra_args                                          33      4         0
alias.optimizers_can_be_wrapped_in_inject_hyperparams                       31      6         0
alias.preserve_dtype                                                        66      8         0
alias.state_shape_dtype_shard_stability                                     184     38        0
alias.gradient_accumulation                                                 66      8         0
contrib.optimizers_accept_extra_args                                        36      1         0
contrib.optimizers                                                          138     10        0
contrib.optimizers_can_be_wrapped_in_inject_hyperparams                     34      3         0
contrib.preserve_dtype                                                      72      2         0
contrib.gradient_accumulation                                               72      2         0
contrib.state_shape_dtype_shard_stability                                   144     4         0
contrib.optimizers_accept_learning_rate_schedule_if_type_annotated_as_such  36      1         0
==========================================================================  ======  ========  ======
total                                                                       1021    126       0
==========================================================================  ======  ========  ======
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import optx

alias_test = pytest.importorskip("optax._src.alias_test")
common_test = pytest.importorskip("optax.contrib._common_test")

NAMES = optx.list_optimizers()
FULL = os.environ.get("OPTX_OPTAX_MATRIX", "").lower() == "full"

# ----------------------------------------------------------------------------
# Construction: the keyword arguments optax's tests call each factory with
# ----------------------------------------------------------------------------

# optax's problems are tiny (a 3-vector parabola, a 2-vector Rosenbrock, a 2×2
# matrix parabola) and are run for 10k (alias) or 30k (contrib) steps to a 3e-2
# tolerance; like optax's own table, each entry picks a learning rate for them.
OPTAX_KWARGS: dict[str, dict[str, Any]] = {
    "adabelief": {"learning_rate": 1e-2},
    "adahessian": {"learning_rate": 1e-1},
    "adamp": {"learning_rate": 1e-2},
    "adamw": {"learning_rate": 1e-1},
    "adamw_8bit": {"learning_rate": 1e-2},
    "agvm_sgd": {"learning_rate": 1e-3},
    "apollo": {"learning_rate": 1e-2},
    "apollo_mini": {"learning_rate": 1e-2},
    "auon": {"learning_rate": 1e-2},
    "conda": {"learning_rate": 1e-2},
    "cosmos": {"learning_rate": 1e-2},
    "dct_adamw": {"learning_rate": 1e-2},
    "eggroll": {"learning_rate": 1e-2},
    "exadam": {"learning_rate": 1e-2},
    "frugal": {"learning_rate": 1e-2},
    "galore": {"learning_rate": 1e-2},
    "galore_8bit": {"learning_rate": 1e-2},
    "hybrid_auon": {"learning_rate": 1e-2},
    "lion": {"learning_rate": 1e-2},
    "lion_8bit": {"learning_rate": 1e-2},
    "lion_kappa": {"learning_rate": 1e-2},
    "lipschitz_muon": {"learning_rate": 1e-2},
    "lora_pro": {"learning_rate": 1e-2},
    # η/λ = 1 (the docstring's stability bound for noiseless gradients; the
    # official λ = 1e-5 gives η/λ = 1e3 and diverges); m in OPTAX_STATIC.
    "mfac": {"learning_rate": 2e-2, "damp": 2e-2},
    # MKOR's inner step (and its vector leaves) is SGD with momentum 0.9: optax's
    # own table runs sgd at 1e-3 with momentum 0.9 (1e-2 diverges on Rosenbrock,
    # whose Hessian reaches 1e3).
    "mkor": {"learning_rate": 1e-3},
    "mkor_h": {"learning_rate": 1e-3},
    "muon": {"learning_rate": 1e-2},
    "normuon": {"learning_rate": 1e-2},
    # ROOT's default decoupled weight decay 0.1 moves the minimiser of optax's
    # problems off their target (matrix parabola: 2.06 for 3.0); optax's table
    # runs its optimizers at their (near-)zero default decay.
    "root": {"learning_rate": 1e-2, "weight_decay": 0.0},
    "sgd_momentum_8bit": {"learning_rate": 1e-3},
    "sgd_sai": {"learning_rate": 1e-2},
    # optax's own sgd entry (lr 1e-3, momentum 0.9); SGDP's default momentum is
    # torch's 0, too slow for the complex Rosenbrock in 10k steps.
    "sgdp": {"learning_rate": 1e-3, "momentum": 0.9},
    "soap": {"learning_rate": 1e-2},
    # Sophia-G's clipped (sign-like) step on contrib's Rosenbrock after 30k
    # steps: (0.919, 0.860) at 1e-2, (0.958, 0.926) at 3e-3, (1.002, 1.003) at 1e-3.
    "sophia_g": {"learning_rate": 1e-3, "tokens_per_batch": 1},
    # Sophia-H's default decoupled weight decay 0.1 moves contrib's Rosenbrock
    # minimiser to (0.834, 0.695); optax's contrib.sophia decays at 1e-4.
    "sophia_h": {"learning_rate": 1e-2, "weight_decay": 0.0},
    "sora": {"learning_rate": 1e-2},
    # SGD with momentum 0.9 underneath: optax's sgd entry's 1e-3 (NaN on
    # Rosenbrock at 1e-2).
    "wgsef": {"learning_rate": 1e-3, "penalty": 1e-4},
}


# Structural (static) arguments bound into the factory optax's tests receive:
# they are not hyper-parameters, so optax's inject test must not turn them into
# arrays (optx raises, naming ``static_args=``, when it does).
OPTAX_STATIC: dict[str, dict[str, Any]] = {
    # optax's problems have d ≤ 7 parameters: a window of m = 32 gradients (the
    # registry's small-model default). The official m = 1024 costs one 1024²
    # Cholesky per step whatever d — 0.2 s CPU, 36 min over alias's 10k steps
    # and 110 min over contrib's 30k — as the official code's per-step LU does.
    "mfac": {"num_grads": 32},
}


def _evaluated_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature with string annotations evaluated (``from __future__
    import annotations`` stringifies them; optax compares them to its types)."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # an annotation only importable under TYPE_CHECKING
        return inspect.signature(fn)


def _with_extra_inputs(
    spec: optx.OptimizerSpec, tx: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its registry extra inputs built from optax's hooks.

    ``obj_fn`` (contrib's loss hook) becomes the context's ``loss_fn``,
    ``value`` (alias's ``polyak_sgd`` hook) its ``loss``; extra inputs that
    would need a missing loss are left out, so the optimizer's own error for a
    missing input surfaces.
    """
    tx = optax.with_extra_args_support(tx)
    if spec.extra_args is None:
        return tx

    def update(updates, state, params=None, *, obj_fn=None, value=None, **extra):
        loss = value
        if loss is None and obj_fn is not None:
            loss = obj_fn(params)
        ctx = optx.ExtraArgsContext(
            loss_fn=obj_fn, params=params, grads=updates, loss=loss, key=jax.random.key(0)
        )
        made = spec.make_extra_args(ctx)
        if obj_fn is None:
            for k in ("loss_fn", "sampled_loss_fn"):
                made.pop(k, None)
        if loss is None:
            made.pop("loss", None)
        return tx.update(updates, state, params, **made, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)


def optx_factory(name: str) -> Callable[..., optax.GradientTransformationExtraArgs]:
    """The factory optax's tests receive in place of an optax alias."""
    spec = optx.get_optimizer(name)
    static = OPTAX_STATIC.get(name, {})

    def factory(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        # inject_hyperparams passes every default explicitly (None for these)
        kwargs |= {k: v for k, v in static.items() if kwargs.get(k) is None}
        return _with_extra_inputs(spec, spec.factory(*args, **kwargs))

    functools.update_wrapper(factory, spec.factory)
    factory.__signature__ = _evaluated_signature(spec.factory)  # type: ignore[attr-defined]
    return factory


# Optimizers whose update needs the loss function or the loss value.
_NEEDS_LOSS = ("adahessian", "mkor_h", "sophia_g", "sophia_h")


# optx names that optax's tests special-case for optax's own optimizer of that
# name (alias_test skips the complex cases of 'lion': optax.lion refuses them).
_OPTAX_SPECIAL_CASED = ("lion",)


def _hook_name(name: str, suite: str) -> str:
    """The ``opt_name`` optax's test sees: the optx name (prefixed where optax
    special-cases that name for its own optimizer), or optax's hook name for an
    optimizer whose update needs the loss."""
    if name in _OPTAX_SPECIAL_CASED:
        return f"optx.{name}"
    if name not in _NEEDS_LOSS:
        return name
    return "sophia" if suite == "contrib" else "polyak_sgd"


# ----------------------------------------------------------------------------
# The matrix: optax's test functions and their parametrizations
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptaxTest:
    suite: str  # 'alias' (optax/_src/alias_test.py) or 'contrib' (contrib/_common_test.py)
    name: str  # the test method's name in optax
    grid: Mapping[str, tuple[Any, ...]]  # the non-optimizer parametrization, as optax's

    def cases(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            out = [{**o, key: v} for o in out for v in values]
        return out

    def function(self) -> Callable[..., None]:
        """optax's test method (the function under absl's parametrization)."""
        cls = alias_test.AliasTest if self.suite == "alias" else common_test.ContribTest
        pattern = re.compile(re.escape(self.name) + r"\d+")
        generated = next(getattr(cls, k) for k in sorted(vars(cls)) if pattern.fullmatch(k))
        return generated.__wrapped__

    def instance(self) -> Any:
        cls = alias_test.AliasTest if self.suite == "alias" else common_test.ContribTest
        return cls()


_A, _C = "alias", "contrib"
TESTS = (
    OptaxTest(
        _A,
        "test_optimization",
        {
            "target": (alias_test._setup_parabola, alias_test._setup_rosenbrock),
            "dtype": (jnp.float32, jnp.complex64),
        },
    ),
    OptaxTest(_A, "test_optimizers_accept_extra_args", {}),
    OptaxTest(_A, "test_optimizers_can_be_wrapped_in_inject_hyperparams", {}),
    OptaxTest(_A, "test_preserve_dtype", {"dtype": ("bfloat16", "float32")}),
    OptaxTest(
        _A,
        "test_state_shape_dtype_shard_stability",
        {
            "dtype": (
                jnp.float16,
                jnp.bfloat16,
                jnp.float32,
                jnp.float64,
                jnp.complex64,
                jnp.complex128,
            )
        },
    ),
    OptaxTest(_A, "test_gradient_accumulation", {"dtype": ("bfloat16", "float32")}),
    OptaxTest(
        _C,
        "test_optimizers_accept_extra_args",
        {"wrapper_name": (None,), "wrapper_kwargs": (None,), "wrap": (False,)},
    ),
    OptaxTest(
        _C,
        "test_optimizers",
        {
            "wrapper_name": (None,),
            "wrapper_kwargs": (None,),
            "target": (
                common_test._setup_parabola,
                common_test._setup_rosenbrock,
                common_test._setup_matrix_parabola,
                common_test._setup_mixed_tensor_target,
            ),
            "dtype": ("float32",),
        },
    ),
    OptaxTest(_C, "test_optimizers_can_be_wrapped_in_inject_hyperparams", {}),
    OptaxTest(_C, "test_preserve_dtype", {"dtype": ("bfloat16", "float32")}),
    OptaxTest(_C, "test_gradient_accumulation", {"dtype": ("bfloat16", "float32")}),
    OptaxTest(
        _C,
        "test_state_shape_dtype_shard_stability",
        {
            "wrapper_name": (None,),
            "wrapper_kwargs": (None,),
            "dtype": (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64),
        },
    ),
    OptaxTest(
        _C,
        "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such",
        {"wrapper_name": (None,), "wrapper_kwargs": (None,)},
    ),
)


def _param_id(value: Any) -> str:
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__.removeprefix("_setup_")
    if isinstance(value, type):
        return value.__name__
    try:
        return jnp.dtype(value).name
    except TypeError:
        return str(value)


def _case_id(test: OptaxTest, params: Mapping[str, Any]) -> str:
    shown = [_param_id(v) for k, v in params.items() if k not in ("wrapper_name", "wrapper_kwargs")]
    shown = [s for s in shown if s != "False"]
    return f"{test.suite}.{test.name.removeprefix('test_')}" + (
        f"[{','.join(shown)}]" if shown else ""
    )


# ----------------------------------------------------------------------------
# Exclusions: cases a method cannot meet by design
# ----------------------------------------------------------------------------

_NEEDS_LOSS_FN = (
    "needs the loss function (Hessian-vector products / sampled losses); optax's alias "
    "matrix has no hook that passes the objective (polyak_sgd's `value` is a number): "
    "the same checks run in the contrib matrix through its `obj_fn` hook"
)


def _needs_loss_fn(name: str) -> bool:
    return name in ("adahessian", "sophia_g", "sophia_h")


def _complex(params: Mapping[str, Any]) -> bool:
    dtype = params.get("dtype")
    return dtype is not None and jnp.issubdtype(jnp.dtype(dtype), jnp.complexfloating)


def _refuses_complex(name: str) -> bool:
    """Whether ``name`` refuses complex parameters at init (the complex policy)."""
    tx = optx.get_optimizer(name).build()
    try:
        jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((3,), jnp.complex64)})
    except TypeError as e:
        return "complex" in str(e)
    return False


_ZEROTH_ORDER = (
    "zeroth-order (evolution strategies): the update ignores the gradient and needs a "
    "loss function evaluated on a perturbed population; checked in "
    "tests/conformance/test_zeroth_order.py"
)
_SIGN_ROSENBROCK = (
    "sign-based step of constant size: on optax's Rosenbrock it ends in a limit cycle "
    "short of the minimum (lion at lr 1e-2: (0.94, 0.87) after 10k steps; at 3e-3: "
    "(0.73, 0.53), not yet there) — optax's 3e-2 tolerance needs a decaying step"
)
_EXADAM_ROSENBROCK = (
    "EXAdam's accelerated step on optax's Rosenbrock: (1.044, 1.095) after 10k steps at "
    "lr 1e-2 (outside 3e-2), divergent at 3e-2, (0.959, 0.925) at 3e-3; on the complex "
    "Rosenbrock (target (1+i, 2i)): (0.72+0.72i, 1.04i) at 1e-2, (0.97+0.97i, 1.86i) at 3e-3"
)
_SPECTRAL_BALL = (
    "Lipschitz-constrained: the weights are kept in a spectral-norm ball (w_max) that "
    "does not contain the target matrix of optax's matrix problems"
)
_INJECT_ROUNDING = (
    "optax's inject test compares injected (float32-array) and plain (Python-float) "
    "hyper-parameters at rtol 1e-3: 1 − float32(β) differs from the exact 1 − β by 2e-7 "
    "relative, and Adam in the eigenbasis of a rank-deficient factor amplifies that "
    "round-off to O(1) (optax's problem has a rank-1 gradient); checked with float32-exact "
    "β in tests/test_conformance.py::test_inject_hyperparams_equivalence"
)


_MFAC_COMPLEX_ROSENBROCK = (
    "M-FAC's empirical Fisher λI + (1/m)Σ g gᴴ is no model of the complex Rosenbrock's "
    "curvature with noiseless gradients (the docstring's instability): 10k steps end at "
    "NaN (lr 2e-2, λ 2e-2; lr 1e-2, λ 1e-2) or far off (1.27+1.60i, −0.97+4.10i) (lr 1e-2, "
    "λ 2e-2), (3.27−0.31i, 10.6−1.97i) (lr 3e-2, λ 3e-2), for the target (1+i, 2i); the "
    "real Rosenbrock passes, and complex M-FAC is checked in tests/conformance/test_complex.py"
)


_REFUSES_COMPLEX = "refuses complex parameters (TypeError at init naming the leaf)"


def exclusion(name: str, test: OptaxTest, params: Mapping[str, Any]) -> str | None:
    """Why ``(name, test, params)`` is excluded, or None when it must pass."""
    if name == "eggroll":
        return _ZEROTH_ORDER
    if test.suite == _A and _needs_loss_fn(name):
        return _NEEDS_LOSS_FN
    if _complex(params) and _refuses_complex(name):
        return _REFUSES_COMPLEX
    target = getattr(params.get("target"), "__name__", "")
    if name in ("lion", "lion_8bit", "lion_kappa") and "rosenbrock" in target:
        return _SIGN_ROSENBROCK
    if name == "exadam" and "rosenbrock" in target:
        return _EXADAM_ROSENBROCK
    if name == "lipschitz_muon" and target in (
        "_setup_matrix_parabola",
        "_setup_mixed_tensor_target",
    ):
        return _SPECTRAL_BALL
    if name == "mfac" and "rosenbrock" in target and _complex(params):
        return _MFAC_COMPLEX_ROSENBROCK
    if name in ("conda", "soap") and "inject" in test.name:
        return _INJECT_ROUNDING
    return None


EXCLUDED = {
    "needs the loss function (alias matrix only)": ("adahessian", "sophia_g", "sophia_h"),
    "refuses complex parameters (the complex cases of alias.optimization and "
    "alias.state_shape_dtype_shard_stability assert the TypeError)": "see _refuses_complex",
    _ZEROTH_ORDER: ("eggroll",),
    _SIGN_ROSENBROCK: ("lion", "lion_8bit", "lion_kappa"),
    _EXADAM_ROSENBROCK: ("exadam",),
    _SPECTRAL_BALL: ("lipschitz_muon",),
    _INJECT_ROUNDING: ("conda", "soap"),
    _MFAC_COMPLEX_ROSENBROCK: ("mfac",),
}


# ----------------------------------------------------------------------------
# The parametrization: the full matrix, or the default subset
# ----------------------------------------------------------------------------

ALL_CASES = [
    (name, test, params, _case_id(test, params))
    for name in NAMES
    for test in TESTS
    for params in test.cases()
]


def _default_subset() -> list[tuple[str, OptaxTest, dict[str, Any], str]]:
    """One case per optimizer, walking the test functions in turn (optimizer
    ``i`` runs test ``i mod len(TESTS)`` at parametrization ``i // len(TESTS)``,
    cycled), so every optimizer and every optax test function runs by default.
    Complex parametrizations are left to the full matrix (the complex policy has
    its own conformance checks), and excluded cases are not picked."""
    picked = []
    for i, name in enumerate(NAMES):
        test = TESTS[i % len(TESTS)]
        cases = [c for c in test.cases() if not _complex(c) and exclusion(name, test, c) is None]
        if not cases:  # every case of this test is excluded: the next test with one
            runnable = [
                (t, [c for c in t.cases() if not _complex(c) and exclusion(name, t, c) is None])
                for t in TESTS
            ]
            test, cases = next(((t, c) for t, c in runnable if c), (test, test.cases()[:1]))
        params = cases[(i // len(TESTS)) % len(cases)]
        picked.append((name, test, params, _case_id(test, params)))
    return picked


CASES = ALL_CASES if FULL else _default_subset()


@pytest.fixture
def optax_lookups(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Points optax's factory lookups at the optx optimizer under test."""

    def use(name: str) -> None:
        factory = optx_factory(name)
        monkeypatch.setattr(alias_test, "_get_opt", lambda self, opt_name: factory)
        monkeypatch.setattr(common_test, "_get_opt_factory", lambda opt_name: factory)

    return use


@pytest.mark.parametrize(
    ("name", "test", "params"),
    [
        pytest.param(n, t, p, marks=pytest.mark.xdist_group(f"optax-{n}"), id=f"{n}-{i}")
        for n, t, p, i in CASES
    ],
)
def test_optax_matrix(
    name: str, test: OptaxTest, params: dict[str, Any], optax_lookups: Callable[[str], None]
) -> None:
    optax_lookups(name)
    reason = exclusion(name, test, params)
    run = functools.partial(
        test.function(),
        test.instance(),
        opt_name=_hook_name(name, test.suite),
        opt_kwargs=dict(OPTAX_KWARGS[name]),
        **params,
    )
    if reason is None:
        run()
    elif reason == _REFUSES_COMPLEX:
        with pytest.raises(TypeError, match=r"complex parameters; leaf"):
            if _hook_name(name, test.suite) == name:
                run()
            else:  # optax skips complex cases of its hook (polyak_sgd) before init
                tx = optx_factory(name)(**OPTAX_KWARGS[name])
                tx.init(jnp.zeros(3, params["dtype"]))
    else:
        pytest.skip(reason)


def test_matrix_table_is_complete() -> None:
    assert sorted(OPTAX_KWARGS) == NAMES, "every registered optimizer needs an OPTAX_KWARGS entry"
    assert set(OPTAX_STATIC) <= set(NAMES)
    for name, static in OPTAX_STATIC.items():  # bound args must be static ones
        assert set(static) <= set(optx.get_optimizer(name).static_args), name
    covered = {(t.suite, t.name) for _, t, _, _ in _default_subset()}
    assert covered == {(t.suite, t.name) for t in TESTS}
    assert {n for n, *_ in _default_subset()} == set(NAMES)


def teardown_module() -> None:
    jax.clear_caches()
