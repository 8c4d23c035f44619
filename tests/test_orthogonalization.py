"""Tests for Newton–Schulz orthogonalization (optx._src.orthogonalization)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from optx._src import orthogonalization as orth
from tests.test_deviations import DION, YOUJIACHENG

KELLER = (3.4445, -4.7750, 2.0315)


def ns_reference(g: np.ndarray, table, eps=1e-7, norm_scale=1.0) -> np.ndarray:
    """float64 NumPy Newton–Schulz, written from the quintic iteration."""
    x = np.asarray(g, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (norm_scale * np.linalg.norm(x) + eps)
    for a, b, c in table:
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (8, 8)])
@pytest.mark.parametrize("preset", ["keller", "polar_express", "dion"])
def test_newton_schulz_matches_float64_reference(shape, preset) -> None:
    g = np.random.default_rng(0).normal(size=shape)
    coeffs = optx.linalg.NS_PRESETS[preset]
    with jax.enable_x64(True):
        got = optx.linalg.newton_schulz(jnp.asarray(g), preset, steps=5)
    want = ns_reference(g, coeffs.for_steps(5), coeffs.eps, coeffs.norm_scale)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


# Tables written from their sources (not read from optx): Keller Jordan's Muon
# (one triple repeated), Dion's 5 steps and YouJiacheng's 6 (tests/test_deviations.py,
# from lipschitz-transformers' nanogpt/train_spectral_cap.py and modula/atom.py).
SOURCE_TABLES = {
    "keller": ([KELLER] * 5, 1e-7),
    "dion": (DION, 1e-7),
    "youjiacheng": (YOUJIACHENG, 1e-12),
}


@pytest.mark.parametrize("preset", sorted(SOURCE_TABLES))
def test_preset_tables_are_their_sources(preset: str) -> None:
    table, eps = SOURCE_TABLES[preset]
    g = np.random.default_rng(1).normal(size=(7, 5))
    with jax.enable_x64(True):
        got = optx.linalg.newton_schulz(jnp.asarray(g), preset, steps=len(table))
    np.testing.assert_allclose(np.asarray(got), ns_reference(g, table, eps), rtol=1e-12, atol=1e-13)


def test_newton_schulz_f32_close_to_f64() -> None:
    g = np.random.default_rng(1).normal(size=(12, 20))
    got = optx.linalg.newton_schulz(jnp.asarray(g, jnp.float32), "keller", 5)
    np.testing.assert_allclose(got, ns_reference(g, [KELLER] * 5), atol=2e-5)


def test_cubic_converges_to_polar_factor() -> None:
    g = np.random.default_rng(2).normal(size=(7, 12))
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    with jax.enable_x64(True):
        got = optx.linalg.newton_schulz(jnp.asarray(g), "cubic", steps=60)
    np.testing.assert_allclose(np.asarray(got), u @ vt, atol=1e-8)


def test_keller_singular_values_land_in_the_known_band() -> None:
    g = jax.random.normal(jax.random.key(0), (64, 128))
    s = jnp.linalg.svd(optx.linalg.newton_schulz(g, "keller", 5), compute_uv=False)
    assert float(s.min()) > 0.6 and float(s.max()) < 1.25


def test_batched_leading_axes_are_independent_matrices() -> None:
    g = jax.random.normal(jax.random.key(1), (3, 5, 9))
    batched = optx.linalg.newton_schulz(g, "keller", 5)
    for i in range(3):
        np.testing.assert_allclose(
            batched[i], optx.linalg.newton_schulz(g[i], "keller", 5), atol=1e-6
        )


def test_bf16_compute_dtype_keeps_input_dtype_and_is_close() -> None:
    g = jax.random.normal(jax.random.key(2), (16, 32))
    lo = optx.linalg.newton_schulz(g, "keller", 5, compute_dtype=jnp.bfloat16)
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, optx.linalg.newton_schulz(g, "keller", 5), atol=5e-2)


def test_polar_express_table_is_reproduced_by_the_generator() -> None:
    regenerated = optx.linalg.polar_express_coefficients(1e-3, 10, safety=1e-2, cushion=0.02)
    np.testing.assert_allclose(
        np.array(regenerated), np.array(orth._POLAR_EXPRESS_TABLE), rtol=1e-6
    )
    # The last polynomial tends to the (15/8, -10/8, 3/8) fixed-point polynomial.
    np.testing.assert_allclose(regenerated[-1], (15 / 8, -10 / 8, 3 / 8), rtol=1e-4)


def test_optimal_quintic_equioscillates() -> None:
    lo, hi = 0.05, 1.0
    a, b, c = orth.optimal_odd_quintic(lo, hi)
    xs = np.linspace(lo, hi, 20001)
    err = 1 - (a * xs + b * xs**3 + c * xs**5)
    e = np.abs(err).max()
    assert abs(err[0] - e) < 1e-6 and abs(err[-1] + e) < 1e-6  # extremes of opposite sign


def test_coefficient_table_validation() -> None:
    with pytest.raises(ValueError, match="has 5 entries but steps=6"):
        optx.scale_by_newton_schulz("dion", ns_steps=6)
    optx.scale_by_newton_schulz("dion", ns_steps=3)  # a prefix of the table is fine
    with pytest.raises(ValueError, match="Unknown Newton–Schulz preset"):
        optx.scale_by_newton_schulz("nope")
    with pytest.raises(ValueError, match="three finite numbers"):
        optx.scale_by_newton_schulz([(1.0, 2.0, float("nan"))], ns_steps=1)
    with pytest.raises(ValueError, match="three"):
        optx.scale_by_newton_schulz([(1.0, 2.0)], ns_steps=1)
    with pytest.raises(TypeError, match="`ns_steps` must be a static Python int"):
        optx.scale_by_newton_schulz(ns_steps=5.0)
    with pytest.raises(ValueError, match="`ns_steps` must be a static Python int >= 1"):
        optx.scale_by_newton_schulz(ns_steps=0)
    with pytest.raises(ValueError, match="strategy"):
        optx.scale_by_newton_schulz(strategy="magic")
    with pytest.raises(ValueError, match="rank >= 2"):
        optx.linalg.newton_schulz(jnp.ones(3))


def test_custom_table_and_shape_callable() -> None:
    g = np.random.default_rng(3).normal(size=(6, 9))
    table = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]
    with jax.enable_x64(True):
        got = optx.linalg.newton_schulz(jnp.asarray(g), table, steps=2)
        seen = []

        def by_shape(lo, hi):
            seen.append((lo, hi))
            return table

        got2 = optx.linalg.newton_schulz(jnp.asarray(g), by_shape, steps=2)
    np.testing.assert_allclose(np.asarray(got), ns_reference(g, table), rtol=1e-10)
    np.testing.assert_allclose(got2, got)
    assert seen == [(6, 9)]


def test_transform_orthogonalizes_each_matrix_of_each_layout() -> None:
    k = iter(jax.random.split(jax.random.key(4), 4))
    grads = {
        "mlp": {"kernel": jax.random.normal(next(k), (6, 10))},
        "stack": {"kernel": jax.random.normal(next(k), (3, 6, 10))},
        "conv": {"kernel": jax.random.normal(next(k), (3, 3, 2, 5))},
        "bias": jnp.ones(4),
    }
    tx = optx.scale_by_newton_schulz(ns_steps=5)
    out, _ = tx.update(grads, tx.init(grads))
    np.testing.assert_allclose(
        out["mlp"]["kernel"], optx.linalg.newton_schulz(grads["mlp"]["kernel"])
    )
    for i in range(3):
        np.testing.assert_allclose(
            out["stack"]["kernel"][i],
            optx.linalg.newton_schulz(grads["stack"]["kernel"][i]),
            atol=1e-6,
        )
    conv_m = grads["conv"]["kernel"].reshape(18, 5)
    np.testing.assert_allclose(
        out["conv"]["kernel"].reshape(18, 5), optx.linalg.newton_schulz(conv_m), atol=1e-6
    )
    np.testing.assert_array_equal(out["bias"], grads["bias"])


@pytest.mark.parametrize("strategy", ["auto", "replicate", "batched"])
def test_sharding_strategies_match_unsharded(strategy) -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    k = iter(jax.random.split(jax.random.key(5), 4))
    grads = {
        "a": {"kernel": jax.random.normal(next(k), (16, 8))},
        "b": {"kernel": jax.random.normal(next(k), (16, 8))},
        "c": {"kernel": jax.random.normal(next(k), (3, 8, 16))},
    }
    specs = {
        "a": {"kernel": P("data", "model")},
        "b": {"kernel": P("model", None)},
        "c": {"kernel": P(None, "data", "model")},
    }
    tx = optx.scale_by_newton_schulz(ns_steps=5, strategy=strategy)
    want, _ = jax.jit(tx.update)(grads, tx.init(grads))
    with jax.set_mesh(mesh):
        sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), grads, specs)
        got, _ = jax.jit(tx.update)(sharded, tx.init(sharded))
        for leaf, spec in zip(jax.tree.leaves(got), jax.tree.leaves(specs)):
            assert jax.typeof(leaf).sharding.spec == spec
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_plain_matmul_fails_on_sharded_contraction_but_transform_does_not() -> None:
    """The failure mode the 'auto' strategy exists for (optax.contrib.muon hits it)."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        w = jax.device_put(jnp.ones((16, 8)), NamedSharding(mesh, P("data", "model")))
        with pytest.raises(Exception, match="Contracting dimensions are sharded"):
            jax.jit(lambda x: x @ x.T)(w)
        tx = optx.scale_by_newton_schulz()
        jax.jit(tx.update)({"w": w}, optax.EmptyState())


def test_batched_strategy_without_mesh_matches_per_leaf() -> None:
    grads = {f"l{i}": {"kernel": jax.random.normal(jax.random.key(i), (5, 7))} for i in range(3)}
    a, _ = optx.scale_by_newton_schulz(strategy="batched").update(grads, optax.EmptyState())
    b, _ = optx.scale_by_newton_schulz().update(grads, optax.EmptyState())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def _while_loops(tx: optax.GradientTransformation, grads: dict) -> int:
    jaxpr = jax.make_jaxpr(lambda g: tx.update(g, optax.EmptyState())[0])(grads)
    return sum(str(jaxpr).count(f" {loop}[") for loop in ("while", "scan"))


@pytest.mark.parametrize(
    ("backend", "devices", "loops"), [("gpu", 1, 1), ("cpu", 1, 3), ("gpu", 8, 3)]
)
def test_default_strategy_stacks_same_shape_matrices_on_one_accelerator(
    monkeypatch: pytest.MonkeyPatch, backend: str, devices: int, loops: int
) -> None:
    # One Newton–Schulz loop for three same-shape matrices on one GPU/TPU (batched
    # matmuls); one per leaf on a CPU or on several devices. The numbers are the same.
    grads = {f"l{i}": {"kernel": jax.random.normal(jax.random.key(i), (5, 7))} for i in range(3)}
    expected, _ = optx.scale_by_newton_schulz().update(grads, optax.EmptyState())
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(jax, "device_count", lambda *a: devices)
    tx = optx.scale_by_newton_schulz()
    assert _while_loops(tx, grads) == loops
    out, _ = tx.update(grads, optax.EmptyState())
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_batched_and_default_strategies_under_fsdp_use_all_to_alls() -> None:
    """FSDP-sharded matrices (one axis, the major axis of fan-in or fan-out): each device
    orthogonalizes whole matrices after one all-to-all and returns blocks with a second."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    k = iter(jax.random.split(jax.random.key(7), 8))
    grads = {
        "rows": {"kernel": jax.random.normal(next(k), (16, 8))},  # fan-in sharded
        "rows2": {"kernel": jax.random.normal(next(k), (16, 8))},  # same group
        "cols": {"kernel": jax.random.normal(next(k), (8, 16))},  # fan-out sharded
        "stack": {"kernel": jax.random.normal(next(k), (3, 8, 12))},  # padded to 4
        "attn": {"query": {"kernel": jax.random.normal(next(k), (8, 4, 2))}},  # heads sharded
    }
    specs = {
        "rows": {"kernel": P("data", None)},
        "rows2": {"kernel": P("data", None)},
        "cols": {"kernel": P(None, "data")},
        "stack": {"kernel": P(None, "data", None)},
        "attn": {"query": {"kernel": P(None, "data", None)}},
    }
    router = optx.default_router()
    tx = optx.scale_by_newton_schulz(ns_steps=5, strategy="batched", layout=router)
    want, _ = jax.jit(tx.update)(grads, tx.init(grads))
    with jax.set_mesh(mesh):
        sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), grads, specs)
        fn = jax.jit(tx.update)
        hlo = fn.lower(sharded, tx.init(sharded)).compile().as_text()
        got, _ = fn(sharded, tx.init(sharded))
    assert " all-to-all(" in hlo and " all-gather(" not in hlo
    for leaf, spec in zip(jax.tree.leaves(got), jax.tree.leaves(specs)):
        assert jax.typeof(leaf).sharding.spec == spec
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    # The default picks the all-to-alls by itself for groups of two matrices or more (rows,
    # rows2 and the transposed cols: 3; stack: 3) and gathers the group of one (attn) once,
    # without a mesh in context.
    auto = optx.scale_by_newton_schulz(ns_steps=5, layout=router)
    fn = jax.jit(auto.update)
    hlo = fn.lower(sharded, auto.init(sharded)).compile().as_text()
    got, _ = fn(sharded, auto.init(sharded))
    assert hlo.count(" all-to-all(") == 4 and hlo.count(" all-gather(") == 1
    for leaf, spec in zip(jax.tree.leaves(got), jax.tree.leaves(specs)):
        assert jax.typeof(leaf).sharding.spec == spec
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    # 2 ⌈T/N⌉ ≤ T: the padded all-to-alls move no more than gathering the T matrices.
    assert [orth.all_to_all_pays(t, 2) for t in (1, 2, 3, 4, 5)] == [0, 1, 0, 1, 0]
    assert [orth.all_to_all_pays(t, 8) for t in (1, 2, 9)] == [0, 1, 1]


def test_fsdp_matrix_results_run_each_matrix_whole_on_one_device() -> None:
    """``map_fsdp_matrix_results`` with a function that is not spectral and depends on the
    orientation (``f(X) = 2 X[:, :8] + X 1``, rows × 8): on 8 devices every result equals
    ``f`` of the whole matrix in its own orientation, exactly, and comes back sharded like
    its template. Groups: a row-sharded 16 × 24 kernel with a 3-matrix stack of the same
    shape (4 matrices, padded to 8; results sharded on their last axis); a row-sharded
    and a column-sharded 16 × 16 kernel (square: one group, the column-sharded one
    transposed back on its device; results sharded on their rows); a lone 8 × 32 kernel
    (gathering it moves less than the all-to-alls: left out)."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    k = iter(jax.random.split(jax.random.key(11), 5))
    cases = [  # (shape, spec, layout)
        ((16, 24), P("x", None), ((0,), (1,), ())),
        ((3, 16, 24), P(None, "x", None), ((1,), (2,), (0,))),
        ((16, 16), P("x", None), ((0,), (1,), ())),
        ((16, 16), P(None, "x"), ((0,), (1,), ())),
        ((8, 32), P("x", None), ((0,), (1,), ())),
    ]
    xs = [jax.random.normal(next(k), shape) for shape, _, _ in cases]
    lays = [optx.ResolvedLayout(s, *axes) for (s, _, axes) in cases]
    sharded = [jax.device_put(x, NamedSharding(mesh, spec)) for x, (_, spec, _) in zip(xs, cases)]
    result_specs = [P(None, None, "x")] * 2 + [P(None, "x", None)] * 3

    def f(m: jax.Array) -> jax.Array:
        return 2 * m[:, :, :8] + jnp.sum(m, axis=2, keepdims=True)

    def run(xs: list[jax.Array]) -> tuple[list[list[int]], dict[int, jax.Array]]:
        leaves = list(zip(xs, lays))
        like = [
            jax.device_put(jnp.zeros((lay.batch_size, lay.fan_in, 8)), NamedSharding(mesh, spec))
            for lay, spec in zip(lays, result_specs)
        ]
        groups = orth.fsdp_result_groups(leaves, like)
        done = orth.map_fsdp_matrix_results(leaves, like, lambda i: f, groups)
        return [list(g.members) for g in groups], done

    groups, done = run(sharded)
    assert sorted(groups) == [[0, 1], [2, 3]], groups
    hlo = jax.jit(lambda xs: run(xs)[1]).lower(sharded).compile().as_text()
    assert hlo.count(" all-to-all(") == 4 and " all-gather(" not in hlo
    for i, y in done.items():
        whole = np.asarray(xs[i]).reshape(lays[i].batch_size, lays[i].fan_in, lays[i].fan_out)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(f(jnp.asarray(whole))))
        assert jax.typeof(y).sharding.spec == result_specs[i]


def test_fsdp_matrix_results_split_further_over_the_other_mesh_axes() -> None:
    """On a (data 4, model 2) mesh, a 4-matrix stack sharded over ``'data'`` alone whose
    results are stored over ``('data', 'model')`` (``fill_spec`` spreads state over every
    device): the all-to-alls run over ``'data'`` and each device keeps its ``'model'``
    slice of the rows it receives, so every result equals the function of the whole
    matrix, exactly, sharded like its template."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    x = jax.random.normal(jax.random.key(12), (4, 16, 24))
    lay = optx.ResolvedLayout((4, 16, 24), (1,), (2,), (0,))
    spec = P(None, ("data", "model"), None)

    def f(m: jax.Array) -> jax.Array:
        return 2 * m[:, :, :8] + jnp.sum(m, axis=2, keepdims=True)

    @jax.jit
    def run(x: jax.Array) -> jax.Array:
        like = [jax.device_put(jnp.zeros((4, 16, 8)), NamedSharding(mesh, spec))]
        groups = orth.fsdp_result_groups([(x, lay)], like)
        assert [g.result_more for g in groups] == [("model",)], groups
        return orth.map_fsdp_matrix_results([(x, lay)], like, lambda i: f, groups)[0]

    y = run(jax.device_put(x, NamedSharding(mesh, P(None, "data", None))))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(f(x)))
    assert jax.typeof(y).sharding.spec == spec


def test_polar_express_preset_normalizes_by_1_01_norm_plus_1e_7() -> None:
    """The Polar Express iteration (arXiv 2505.16932, official code): ``X / (1.01‖X‖_F +
    1e-7)`` then the generator's table; float64 reference, 2 steps (later steps converge
    whatever the scale)."""
    g = np.random.default_rng(3).normal(size=(5, 8))
    table = optx.linalg.polar_express_coefficients(1e-3, 10, safety=1e-2, cushion=0.02)
    with jax.enable_x64(True):
        got = optx.linalg.newton_schulz(jnp.asarray(g), "polar_express", steps=2)
    want = ns_reference(g, table[:2], eps=1e-7, norm_scale=1.01)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-11)


def test_polar_express_generator_defaults_are_the_paper_settings() -> None:
    """``polar_express_coefficients()`` uses the paper code's ℓ = 1e-3, 10 steps, safety 1e-2
    and cushion 0.02 (the explicit call, whose table is checked above)."""
    np.testing.assert_array_equal(
        np.array(optx.linalg.polar_express_coefficients()),
        np.array(optx.linalg.polar_express_coefficients(1e-3, 10, safety=1e-2, cushion=0.02)),
    )
