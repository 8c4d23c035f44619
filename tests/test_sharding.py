"""Tests for optx._src.sharding (8 virtual CPU devices from conftest)."""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from optx._src import sharding


def _mesh(kind=AxisType.Explicit):
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(kind,) * 2)


def test_eight_devices_available() -> None:
    assert len(jax.devices()) == 8


def test_zeros_like_spec_keeps_kept_axes_only() -> None:
    mesh = _mesh()
    with jax.set_mesh(mesh):
        w = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, P("data", "model")))
        row = sharding.zeros_like_spec((1, 4), jnp.float32, w)
        col = sharding.zeros_like_spec((8, 1), jnp.float32, w)
        factor = sharding.zeros_like_spec((8, 8), jnp.float32, w, keep=[True, False])
        assert jax.typeof(row).sharding.spec == P(None, "model")
        assert jax.typeof(col).sharding.spec == P("data", None)
        assert jax.typeof(factor).sharding.spec == P("data", None)
    plain = sharding.zeros_like_spec((1, 4), jnp.float32, jnp.ones((8, 4)))
    assert plain.shape == (1, 4)


@pytest.mark.parametrize("strategy", ["auto", "replicate"])
def test_apply_matrix_fn_keeps_sharding(strategy) -> None:
    mesh = _mesh()
    x = jax.random.normal(jax.random.key(0), (16, 8))
    fn = lambda m: m @ m.T @ m  # noqa: E731
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data", "model")))
        y = jax.jit(lambda v: sharding.apply_matrix_fn(fn, v, strategy))(xs)
        assert jax.typeof(y).sharding.spec == P("data", "model")
    np.testing.assert_allclose(np.asarray(y), np.asarray(fn(x)), rtol=1e-5)
    with pytest.raises(ValueError, match="strategy"):
        sharding.apply_matrix_fn(fn, x, "nope")


def test_state_shardings_under_auto_mesh_gives_sharded_state() -> None:
    mesh = _mesh(AxisType.Auto)
    params = {"mlp": {"kernel": jnp.ones((8, 4))}, "bias": jnp.ones(4)}
    specs = {"mlp": {"kernel": P("data", "model")}, "bias": P()}
    sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs)
    tx = optx.normuon()
    # Plain jitted init under Auto axes loses the sharding (the pitfall) ...
    naive = jax.jit(tx.init)(sharded)
    mu = naive.inner_states["matrix"].inner_state[0].mu["mlp"]["kernel"]
    assert not isinstance(mu.sharding, NamedSharding) or mu.sharding.spec != P("data", "model")
    # ... state_shardings fixes it, including the neuron-wise row statistic.
    shardings = optx.sharding.state_shardings(tx, sharded)
    state = jax.jit(tx.init, out_shardings=shardings)(sharded)
    inner = state.inner_states["matrix"].inner_state
    assert inner[0].mu["mlp"]["kernel"].sharding.spec == P("data", "model")
    nu = inner[2][0].nu["mlp"]["kernel"]
    assert nu.shape == (1, 4) and nu.sharding.spec == P(None, "model")


def test_state_shardings_requires_sharded_params() -> None:
    with pytest.raises(ValueError, match="NamedSharding"):
        optx.sharding.state_shardings(optax.adam(1e-3), {"w": jnp.ones(3)})


def test_fill_spec_spreads_unused_mesh_axes() -> None:
    mesh = _mesh()
    fill = sharding.fill_spec
    # Unused axes together on the largest divisible unsharded axis ...
    assert fill(P(), (1, 768, 64), mesh) == P(None, ("data", "model"), None)
    assert fill(P(None, "data", None), (1, 768, 64), mesh) == P(None, "data", "model")
    # ... or the largest alone where their product does not divide; indivisible entries
    # are dropped first; small or indivisible state stays replicated.
    assert fill(P(), (12, 6), mesh) == P("data", None)
    assert fill(P("model", None), (3, 8), mesh) == P(None, ("data", "model"))
    assert fill(P(), (3, 5), mesh) == P(None, None)
    assert fill(None, (8,), mesh) is None
    assert fill(P(), (8,), jnp.ones(8)) == P()  # on no mesh: unchanged


# State proportional to its parameter but not shaped like it: M-FAC's gradient buffer,
# FRUGAL's stacked active blocks, ConDA's bases. (GaLore's, APOLLO's and DCT-AdamW's
# projections: tests/test_projection.py::test_projector_state_sharding_rules.)
SPREAD = ("mfac", "frugal", "conda")


def _fsdp_tree() -> tuple[dict, dict]:
    k = iter(jax.random.split(jax.random.key(3), 3))
    params = {
        "attn": {"out": {"kernel": jax.random.normal(next(k), (4, 8, 16))}},  # fan-in merged
        "mlp": {"kernel": jax.random.normal(next(k), (16, 32))},
        "head": {"kernel": jax.random.normal(next(k), (16, 8))},
    }
    specs = {
        "attn": {"out": {"kernel": P(None, "model", "data")}},
        "mlp": {"kernel": P("model", "data")},
        "head": {"kernel": P("data", "model")},
    }
    return params, specs


@pytest.mark.filterwarnings("ignore:FRUGAL")  # one active block per group of one matrix
@pytest.mark.parametrize("name", SPREAD)
def test_parameter_sized_state_is_spread_over_every_device(name) -> None:
    """The rule: state leaves of 128 entries or more hold 1/8 of their entries per device
    (state_shardings, abstract); a step under those shardings (Explicit axes) gives the
    unsharded numbers, and keeps the state's shardings."""
    spec = optx.get_optimizer(name)
    tx = spec.build(**{**spec.test_overrides, **({"num_grads": 4} if name == "mfac" else {})})
    params, specs = _fsdp_tree()
    mesh = _mesh()
    sharded = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    shardings = optx.sharding.state_shardings(tx, sharded)
    state = jax.eval_shape(tx.init, params)
    big = [
        (s.shape, sh.spec)
        for s, sh in zip(jax.tree.leaves(state), jax.tree.leaves(shardings))
        if s.size >= 128
    ]
    assert big
    for shape, sh in big:
        assert np.prod(NamedSharding(mesh, sh).shard_shape(shape)) * 8 == np.prod(shape), sh
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    want, got = (params, tx.init(params)), (sharded, jax.device_put(tx.init(sharded), shardings))
    for i in range(2):
        g = jax.tree.map(lambda x, i=i: (x + 0.1 * i) ** 3, want[0])
        u_want, s_want = step(g, want[1], want[0])
        u_got, s_got = step(jax.device_put(g, jax.tree.map(lambda x: x.sharding, sharded)),
                            got[1], got[0])  # fmt: skip
        for a, b in zip(jax.tree.leaves(u_got), jax.tree.leaves(u_want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
        for s, sh in zip(jax.tree.leaves(s_got), jax.tree.leaves(shardings)):
            assert s.sharding.is_equivalent_to(sh, s.ndim), (name, s.shape, s.sharding)
        want, got = (want[0], s_want), (got[0], s_got)


# Communication under FSDP (issue 16 §3): the collectives of one compiled update on a
# row-sharded matrix, by kind and result size. benchmarks/comm_budget.py has the figures.
_COLLECTIVE_LINE = re.compile(
    r"= (.*?) (all-gather|all-reduce|reduce-scatter|all-to-all)(?:-start)?\("
)


def _collectives(tx: optax.GradientTransformation, shape: tuple[int, int]) -> list[tuple[str, int]]:
    """``[(kind, largest result entry count)]`` of ``tx.update`` on a ``shape`` kernel
    whose rows are sharded over 8 devices (Explicit axes), compiled once."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    sh = {"dense": {"kernel": NamedSharding(mesh, P("x", None))}}
    params = {
        "dense": {
            "kernel": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sh["dense"]["kernel"])
        }
    }
    state_sh = optx.sharding.state_shardings(tx, params)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(tx.init, params),
        state_sh,
    )
    step = jax.jit(lambda g, s: tx.update(g, s, g), out_shardings=(sh, state_sh))
    out = []
    for line in step.lower(params, state).compile().as_text().splitlines():
        m = _COLLECTIVE_LINE.search(line)
        if m:
            sizes = [np.prod([int(d) for d in dims.split(",") if d])
                     for dims in re.findall(r"\[([0-9,]*)\]", m.group(1))]  # fmt: skip
            out.append((m.group(2), int(max(sizes, default=0))))
    return out


@pytest.mark.xdist_group("soap")
def test_soap_scattered_step_collectives_and_numbers() -> None:
    """SOAP under FSDP (Explicit axes) on a 32 × 8 row-sharded kernel and a 2 × 8 × 16
    column-sharded stack, a refresh every second step, per-matrix normalization.

    Collectives: the eigh / QR refresh runs on whole factors gathered once (the 32²
    factor and its basis: two gathers), never on a partitioned program that
    all-reduces 32² intermediates. Outside the refresh (bases._soap_step_scattered)
    each gradient is gathered once, the rotation back of the direction is
    reduce-scattered, and nothing gradient-sized is all-reduced; the sharded side's
    basis is stored by its columns and not gathered.

    Numbers: the unsharded step's over three steps, state included (the eigh's column
    signs are fixed, so the bases agree too)."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    k = jax.random.split(jax.random.key(1), 2)
    params = {
        "rows": {"kernel": jax.random.normal(k[0], (32, 8))},
        "cols": {"kernel": jax.random.normal(k[1], (2, 8, 16))},
    }
    specs = {"rows": {"kernel": P("x", None)}, "cols": {"kernel": P(None, None, "x")}}
    sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    tx = optx.soap(0.01, update_proj_gap=2, normalize_grads=True)
    sharded = jax.device_put(params, sh)
    shardings = optx.sharding.state_shardings(tx, sharded)
    assert shardings[0].bases[0]["rows"]["kernel"].spec == P(None, "x")
    assert shardings[0].bases[1]["cols"]["kernel"].spec == P(None, None, "x")
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    want, got = tx.init(params), jax.device_put(tx.init(sharded), shardings)
    compiled = step.lower(sharded, got, sharded).compile()
    steady, refresh = [], []
    for line in compiled.as_text().splitlines():
        m = _COLLECTIVE_LINE.search(line)
        if m:
            n = max(np.prod([int(d) for d in dims.split(",") if d])
                    for dims in re.findall(r"\[([0-9,]*)\]", m.group(1)))  # fmt: skip
            (refresh if "/cond/" in line else steady).append((m.group(2), int(n)))
    big = [kind for kind, n in refresh if n >= 32 * 32]
    assert big.count("all-gather") <= 2 and "all-reduce" not in big, refresh
    assert ("all-gather", 32 * 8) in steady and ("reduce-scatter", 32 * 8 // 8) in steady, steady
    assert ("all-gather", 2 * 8 * 16) in steady and ("reduce-scatter", 2 * 8 * 2) in steady
    assert not [n for kind, n in steady if kind == "all-reduce" and n >= 8 * 16], steady
    for i in range(3):
        g = jax.tree.map(lambda x, i=i: jnp.sin((i + 1) * x) ** 3, params)
        u_want, want = step(g, want, params)
        u_got, got = compiled(jax.device_put(g, sh), got, sharded)
        for a, b in zip(jax.tree.leaves((u_got, got)), jax.tree.leaves((u_want, want))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
    for s, want_sh in zip(jax.tree.leaves(got), jax.tree.leaves(shardings)):
        assert s.sharding.is_equivalent_to(want_sh, s.ndim)


@pytest.mark.xdist_group("cosmos")
def test_cosmos_first_eigh_gathers_the_gradient_not_the_gram() -> None:
    """COSMOS's first step takes the eigh of the 64² Gram of a 64 × 8 row-sharded
    gradient: the gradient (64 × 8) is gathered, no Gram-sized array is moved."""
    got = _collectives(optx.cosmos(0.01, rank=2), (64, 8))
    assert not [k for k, n in got if n >= 64 * 64], got
    assert any(k == "all-gather" and n == 64 * 8 for k, n in got), got


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n))
                                  for n in ("galore", "apollo", "dct_adamw")])  # fmt: skip
def test_projection_reduce_scatters_the_projected_gradient(name: str) -> None:
    """A 32 × 64 row-sharded gradient projected on its (sharded) fan-in, rank 8: each
    device projects its rows and the sum is reduce-scattered onto the rank axis (the
    projected state's sharding), not all-reduced whole and sliced."""
    spec = optx.get_optimizer(name)
    got = _collectives(spec.build(**{**spec.test_overrides, "rank": 8}), (32, 64))
    assert ("reduce-scatter", 8 // 8 * 64) in got, got
    assert ("all-reduce", 8 * 64) not in got, got
    if name == "dct_adamw":  # the refresh's scores Dᵀ X: reduce-scattered onto the DCT index
        assert ("reduce-scatter", 32 // 8 * 64) in got, got
        assert not [n for k, n in got if k == "all-reduce" and n >= 32 * 64], got


@pytest.mark.xdist_group("dct_adamw")
def test_dct_scattered_scores_select_the_unsharded_indices() -> None:
    """DCT-AdamW's refresh with the scores reduce-scattered (projection.dct_select_scattered)
    on a 32 × 64 kernel sharded over both axes of a (4, 2) mesh (the scores summed over
    the fan-out blocks too): the unsharded projector indices and updates over two steps."""
    mesh = _mesh()
    params = {"dense": {"kernel": jax.random.normal(jax.random.key(2), (32, 64))}}
    sh = {"dense": {"kernel": NamedSharding(mesh, P("data", "model"))}}
    tx = optx.dct_adamw(0.01, rank=8, update_proj_gap=1)
    step = jax.jit(lambda g, s: tx.update(g, s, g))
    want, got = tx.init(params), tx.init(jax.device_put(params, sh))
    for i in range(2):
        g = jax.tree.map(lambda x, i=i: jnp.sin((i + 1) * x) ** 3, params)
        u_want, want = step(g, want)
        u_got, got = step(jax.device_put(g, sh), got)
        np.testing.assert_allclose(np.asarray(u_got["dense"]["kernel"]),
                                   np.asarray(u_want["dense"]["kernel"]), rtol=1e-4, atol=1e-6)  # fmt: skip
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            if jnp.issubdtype(a.dtype, jnp.integer):  # the selected DCT indices
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.xdist_group("lipschitz_muon")
def test_lipschitz_muon_batched_projects_fsdp_matrices_through_all_to_alls() -> None:
    """strategy='batched': the weight projection (spectral soft cap) of a row-sharded
    matrix goes through two all-to-alls like Newton–Schulz (four in all, no gather of the
    whole matrix), with the numbers of the default strategy."""
    tx_b = optx.lipschitz_muon(0.01, strategy="batched")
    got = _collectives(tx_b, (16, 16))
    assert [k for k, _ in got].count("all-to-all") >= 4, got
    assert not [n for k, n in got if k == "all-gather" and n >= 16 * 16], got
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    w = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (16, 16))}}
    w = jax.device_put(w, NamedSharding(mesh, P("x", None)))
    g = jax.tree.map(lambda x: x**3, w)
    outs = [jax.jit(tx.update)(g, tx.init(w), w)[0] for tx in (tx_b, optx.lipschitz_muon(0.01))]
    np.testing.assert_allclose(
        np.asarray(outs[0]["dense"]["kernel"]), np.asarray(outs[1]["dense"]["kernel"]),
        rtol=1e-5, atol=1e-7,
    )  # fmt: skip


MIXED_AXES = ["galore", "apollo", "dct_adamw", "frugal", "muon"]


@pytest.mark.filterwarnings("ignore:FRUGAL")  # one active block per group of one matrix
@pytest.mark.parametrize("spec", [P("data", None), P("data", "model"), P(None, "model")], ids=str)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in MIXED_AXES]
)
def test_state_shardings_on_a_mesh_mixing_explicit_and_auto_axes(name: str, spec: P) -> None:
    """``data`` Explicit, ``model`` Auto: the README recipe (``jit(init, out_shardings=
    state_shardings)``, then a jitted update) runs and gives the unsharded numbers. The
    shardings had been derived on an all-Explicit copy of the mesh, which placed the
    projected moments on other dimensions than the real ``init`` types them with."""
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit, AxisType.Auto))
    opt = optx.get_optimizer(name)
    tx = opt.build(**opt.test_overrides)
    params = {"dense": {"kernel": jax.random.normal(jax.random.key(3), (32, 64))}}
    want = tx.update(params, tx.init(params), params)[0]["dense"]["kernel"]
    with jax.set_mesh(mesh):
        p = jax.device_put(params, NamedSharding(mesh, spec))
        shardings = optx.sharding.state_shardings(tx, p)
        state = jax.jit(tx.init, out_shardings=shardings)(p)
        plain = jax.jit(tx.init)(p)
        # The Explicit axis where the real init puts it.
        assert jax.tree.map(jax.typeof, state) == jax.tree.map(jax.typeof, plain)
        got = jax.jit(tx.update)(p, state, p)[0]["dense"]["kernel"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_state_shardings_keep_auto_axes_on_free_dimensions() -> None:
    """On a mixed mesh a parameter-shaped moment keeps the Auto axis of its parameter."""
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit, AxisType.Auto))
    p = {
        "w": jax.ShapeDtypeStruct(
            (8, 16), jnp.float32, sharding=NamedSharding(mesh, P("data", "model"))
        )
    }
    shardings = optx.sharding.state_shardings(optx.adamw(1e-3), p)
    mu = shardings[0].mu["w"]
    assert mu.spec == P("data", "model") and mu.mesh == mesh


@pytest.mark.parametrize(
    ("shape", "spec"),
    [((8, 4, 32), P(None, None, "x")), ((3, 3, 16, 32), P(None, None, None, "x"))],
    ids=["attention_out", "conv"],
)
@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_radial_projection_on_leaves_sharded_off_the_summed_axes(name, shape, spec) -> None:
    """AdamP/SGDP's channel sums on a leaf sharded on its output channels (summed axes
    unsharded): the CPU blocked sum's reshape has no Explicit sharding rule, so it had
    raised ``ShardingTypeError`` with or without ``jax.set_mesh``; now the plain sums."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    # Named as a model names them, so the layouts are the attention and conv ones.
    module = {"attn": {"out": {}}} if len(shape) == 3 else {"conv": {}}
    inner = module["attn"]["out"] if len(shape) == 3 else module["conv"]
    inner["kernel"] = jax.random.normal(jax.random.key(4), shape)
    params, kernel = module, lambda t: jax.tree.leaves(t)[0]
    grads = jax.tree.map(lambda x: x**3, params)
    tx = optx.get_optimizer(name).build()
    want = kernel(jax.jit(tx.update)(grads, tx.init(params), params)[0])
    for context in (False, True):
        with jax.set_mesh(mesh) if context else contextlib.nullcontext():
            ps, gs = jax.device_put((params, grads), NamedSharding(mesh, spec))
            got = kernel(jax.jit(tx.update)(gs, tx.init(ps), ps)[0])
        assert jax.typeof(got).sharding.spec == spec
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["lora_pro", "sora"])
def test_lora_state_on_an_explicit_mesh_without_set_mesh(name: str) -> None:
    """An FSDP-sharded LoRA pair, eager ``init`` with no mesh in context: LoRA-Pro's full
    moments had been created with a bare ``PartitionSpec`` (an error outside
    ``jax.set_mesh``); the state is now placed on the pair's own mesh, as
    ``state_shardings`` says, and the jitted update runs."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    params = {"layer": {"lora_a": 0.1 * jnp.ones((32, 4)), "lora_b": 0.01 * jnp.ones((4, 64))}}
    sh = {"layer": {"lora_a": NamedSharding(mesh, P("x", None)),
                    "lora_b": NamedSharding(mesh, P(None, "x"))}}  # fmt: skip
    params = jax.device_put(params, sh)
    tx = optx.get_optimizer(name).build()
    state = tx.init(params)
    for s, want in zip(
        jax.tree.leaves(state), jax.tree.leaves(optx.sharding.state_shardings(tx, params))
    ):
        if any(e is not None for e in want.spec):
            assert s.sharding.is_equivalent_to(want, s.ndim), (s.shape, s.sharding, want)
    updates, _ = jax.jit(tx.update)(params, state, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
