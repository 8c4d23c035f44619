"""Tests of optx/_src/quantization.py: the dynamic map, block-wise quantization
and the generic quantized-state wrapper."""

from __future__ import annotations

import json
import pathlib
import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx

DATA = pathlib.Path(__file__).resolve().parent / "data"


def _reference_map(signed: bool) -> np.ndarray:
    """The dynamic tree map from the paper's description (arXiv 2110.02861 §2.3)."""
    values = [0.0, 1.0]
    for e in range(7):  # exponent 10^(e-6); fraction = midpoints of a linear grid
        n_fraction = 2**e if signed else 2 ** (e + 1)
        grid = np.linspace(0.1, 1.0, n_fraction + 1)
        mids = 10.0 ** (e - 6) * (grid[1:] + grid[:-1]) / 2
        values += list(mids) + (list(-mids) if signed else [])
    return np.sort(np.array(values))


# ----------------------------------------------------------------------------
# The map
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_structure(signed: bool) -> None:
    m = optx.quantization.dynamic_map(signed).astype(np.float64)
    assert m.shape == (256,) and m.dtype == np.float64
    assert np.all(np.diff(m) > 0), "256 distinct sorted codes"
    assert m[-1] == 1.0 and 0.0 in m
    np.testing.assert_allclose(m, _reference_map(signed), rtol=1e-7)
    nonzero = np.abs(m[m != 0])
    if signed:
        assert -1.0 not in m and np.isclose(m[0], -0.99296875)
        assert np.isclose(nonzero.min(), 5.5e-7)
    else:
        assert m[0] == 0.0 and np.isclose(nonzero.min(), 3.25e-7)


def test_dynamic_map_matches_bitsandbytes_to_two_ulps() -> None:
    z = np.load(DATA / "adam8bit__public.npz")
    for signed, key in ((True, "qmap1"), (False, "qmap2")):
        ref = z[f"state/w8/{key}"]
        ours = optx.quantization.dynamic_map(signed)
        ulp = np.spacing(np.abs(ref).astype(np.float32))
        assert np.all(np.abs(ours - ref) <= 2 * ulp), key  # bnb rounds in float32


# ----------------------------------------------------------------------------
# Block-wise quantization: error bounds over random magnitudes
# ----------------------------------------------------------------------------

# Flattened blocks ((37,), (8, 33), (3, 4, 20)) and blocks of whole slices, viewed
# without flattening ((16, 32), (4, 8, 64): quantization._block_view).
SHAPES = ((37,), (8, 33), (3, 4, 20), (16, 32), (4, 8, 64))


def _blocks(x: np.ndarray, block: int) -> np.ndarray:
    flat = x.reshape(-1).astype(np.float64)
    pad = -flat.size % block
    return np.concatenate([flat, np.zeros(pad)]).reshape(-1, block)


_quantize = jax.jit(optx.quantization.quantize_blockwise, static_argnames=("signed", "block_size"))
_dequantize = jax.jit(
    optx.quantization.dequantize_blockwise, static_argnames=("signed", "block_size")
)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
    shape=st.sampled_from(SHAPES),
    block=st.sampled_from((8, 64, 256)),
    log_scale=st.floats(-8.0, 6.0),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_quantize_is_nearest_code_with_bounded_error(
    shape: tuple[int, ...], block: int, log_scale: float, signed: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    # Heavy-tailed values spanning several orders of magnitude inside a block.
    x = rng.standard_normal(shape) * np.exp(rng.uniform(-6, 0, shape)) * 10.0**log_scale
    if not signed:
        x = np.abs(x)
    x = x.astype(np.float32)
    q = _quantize(jnp.asarray(x), signed=signed, block_size=block)
    assert q.codes.shape == shape and q.codes.dtype == jnp.uint8
    blocks = _blocks(x, block)
    absmax = np.abs(blocks).max(axis=1)
    np.testing.assert_array_equal(np.asarray(q.absmax), absmax.astype(np.float32))

    m = optx.quantization.dynamic_map(signed).astype(np.float64)
    y = (blocks / np.where(absmax > 0, absmax, 1.0)[:, None]).reshape(-1)[: x.size]
    codes = np.asarray(q.codes).reshape(-1).astype(int)
    best = np.abs(y[:, None] - m[None, :]).min(axis=1)
    err = np.abs(y - m[codes])
    assert np.all(err <= best + 1e-7), "not the nearest code"
    # Absolute bound: half the largest gap of the map, times the block scale.
    xhat = np.asarray(_dequantize(q, signed=signed, block_size=block))
    scale = np.repeat(absmax, block)[: x.size].reshape(shape)
    bound = np.diff(m).max() / 2 * scale + 1e-7 * scale
    assert np.all(np.abs(xhat - x) <= bound)
    # The block maximum itself is exact (codes ±1 are in the map, or -0.99297).
    i = np.argmax(np.abs(x.reshape(-1)))
    rel = abs(xhat.reshape(-1)[i] - x.reshape(-1)[i]) / abs(x.reshape(-1)[i])
    assert rel <= (1 - 0.99296875) + 1e-6


def _boundary_values(m: np.ndarray) -> np.ndarray:
    """Every code, every float32 midpoint of adjacent codes and the 3 floats on
    each side of it: the values where a rounding rule can differ."""
    mids = (m[1:] + m[:-1]) * np.float32(0.5)
    out = [m, mids]
    for direction in (np.float32(-2.0), np.float32(2.0)):
        v = mids
        for _ in range(3):
            v = np.nextafter(v, direction)
            out.append(v)
    return np.concatenate(out).astype(np.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_rounding_rule_at_code_boundaries(signed: bool) -> None:
    """The stated rule, exactly: ``argmin_k fl(|y − map[k]|)`` in float32,
    ties to the lower code index, checked at every code boundary (codes,
    float32 midpoints, ±3 ulps) and on random values of both signs."""
    m = optx.quantization.dynamic_map(signed)
    rng = np.random.default_rng(7)
    y = np.concatenate([_boundary_values(m), -_boundary_values(m)])
    rand = rng.standard_normal(20_000) * np.exp(rng.uniform(-17, 0, 20_000))
    y = np.concatenate([y, rand.astype(np.float32)])
    y = np.clip(y, -1.0 if signed else 0.0, 1.0).astype(np.float32)
    dist = np.abs(y[:, None] - m[None, :])  # float32 arithmetic
    want = np.argmin(dist, axis=1)  # first index on ties
    ties = np.sum(np.sum(dist == dist.min(axis=1, keepdims=True), axis=1) > 1)
    assert ties >= 100, "the boundary set must contain exact ties"
    # One block whose absmax is 1.0, so the normalized value is y itself.
    x = np.concatenate([y, [1.0]]).astype(np.float32)
    q = _quantize(jnp.asarray(x), signed=signed, block_size=x.size)
    assert float(q.absmax[0]) == 1.0
    np.testing.assert_array_equal(np.asarray(q.codes)[:-1], want)
    xhat = np.asarray(_dequantize(q, signed=signed, block_size=x.size))
    np.testing.assert_array_equal(xhat[:-1], m[want])


def _neighbours(x: np.float32, n: int) -> list[np.float32]:
    """The ``n`` float32 values on either side of ``x``."""
    out = []
    for direction in (np.float32(-np.inf), np.float32(np.inf)):
        y = x
        for _ in range(n):
            y = np.nextafter(y, direction, dtype=np.float32)
            out.append(y)
    return out


def test_normalization_multiplies_by_the_reciprocal() -> None:
    """``y = x · fl(1/a)`` as bitsandbytes computes it, not ``fl(x / a)``: values
    where the two land on different sides of a code boundary take the
    multiply's code, jitted and eager."""
    m = optx.quantization.dynamic_map(True).astype(np.float32)
    cases = []
    for a in (np.float32(3.0), np.float32(0.3), np.float32(1.7)):
        inv = np.float32(1) / a
        for k in range(100, 250):
            mid = np.float32((np.float64(m[k]) + np.float64(m[k + 1])) / 2 * a)
            for x in _neighbours(mid, 40):
                by_div = np.argmin(np.abs(np.float32(x / a) - m))
                by_mul = np.argmin(np.abs(np.float32(x * inv) - m))
                if by_div != by_mul:
                    cases.append((a, x, by_mul))
                    break
    assert len(cases) >= 20, "the boundary set must separate the two rules"
    for a, x, want in cases:
        block = jnp.asarray([a, x], jnp.float32)
        for quantize in (_quantize, optx.quantization.quantize_blockwise):
            codes = np.asarray(quantize(block, signed=True, block_size=2).codes)
            assert int(codes[1]) == int(want), (float(a), float(x))


def test_zero_blocks_negative_unsigned_and_bf16() -> None:
    x = jnp.concatenate([jnp.zeros(8), jnp.array([-1.0, 2.0, 0.5, 0.0, 0, 0, 0, 0])])
    q = optx.quantization.quantize_blockwise(x, signed=False, block_size=8)
    np.testing.assert_array_equal(np.asarray(q.absmax), [0.0, 2.0])
    xhat = optx.quantization.dequantize_blockwise(q, signed=False, block_size=8)
    assert float(xhat[8]) == 0.0, "negative values clip to the unsigned map's 0"
    np.testing.assert_array_equal(np.asarray(xhat[:8]), 0.0)
    qb = optx.quantization.quantize_blockwise(x.astype(jnp.bfloat16), block_size=8)
    out = optx.quantization.dequantize_blockwise(qb, block_size=8, dtype=jnp.bfloat16)
    assert out.dtype == jnp.bfloat16 and out.shape == x.shape


def test_bad_quantization_arguments() -> None:
    with pytest.raises(ValueError):
        optx.quantization.quantize_blockwise(jnp.ones(4), block_size=0)
    with pytest.raises(TypeError):
        optx.quantization.quantize_blockwise(jnp.ones(4), block_size=2.5)
    with pytest.raises(ValueError):
        optx.quantization.quantize_moments(optax.scale_by_adam(), min_size=-1)
    with pytest.raises(TypeError):
        optx.quantization.quantize_moments(optax.scale_by_adam(), full_precision=3)
    with pytest.raises(TypeError):
        optx.quantization.quantize_moments(optax.scale_by_adam(), block_size=None)


# ----------------------------------------------------------------------------
# quantize_moments
# ----------------------------------------------------------------------------


def test_selection_min_size_fields_and_full_precision() -> None:
    params = {"big": jnp.zeros((64, 64)), "embed": jnp.zeros((64, 64)), "small": jnp.zeros(8)}
    tx = optx.quantization.quantize_moments(optax.scale_by_adam(), full_precision=r"(^|/)embed$")
    state = tx.init(params)
    adam = state.inner_state
    assert adam.mu["big"].dtype == jnp.uint8 and adam.nu["big"].dtype == jnp.uint8
    assert adam.mu["embed"].dtype == jnp.float32, "full_precision keeps it in f32"
    assert adam.mu["small"].dtype == jnp.float32, "below min_size"
    scales = jax.tree.leaves(state.absmax)
    assert all(a.shape == (16,) for a in scales) and len(scales) == 2
    assert state.absmax.mu["big"].shape == (16,) and state.absmax.nu["big"].shape == (16,)
    for leaf in (state.absmax.count, state.absmax.mu["embed"], state.absmax.mu["small"]):
        assert isinstance(leaf, optax.MaskedNode)

    only_mu = optx.quantization.quantize_moments(optax.scale_by_adam(), fields=("mu",), min_size=0)
    s = only_mu.init(params).inner_state
    assert s.mu["small"].dtype == jnp.uint8 and s.nu["small"].dtype == jnp.float32

    by_pred = optx.quantization.quantize_moments(
        optax.scale_by_adam(), full_precision=lambda path: path.endswith("big")
    )
    s = by_pred.init(params).inner_state
    assert s.mu["big"].dtype == jnp.float32 and s.mu["embed"].dtype == jnp.uint8


def test_second_moment_uses_unsigned_map() -> None:
    """nu gets the unsigned map: its codes index [0, 1], mu's the signed map."""
    g = {"w": jnp.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64)}
    tx = optx.quantization.quantize_moments(optax.scale_by_adam(b1=0.0, b2=0.0), min_size=0)
    _, state = tx.update(g, tx.init(g))
    mu_codes, nu_codes = state.inner_state.mu["w"], state.inner_state.nu["w"]
    signed, unsigned = optx.quantization.dynamic_map(True), optx.quantization.dynamic_map(False)
    mu_scale = np.repeat(np.asarray(state.absmax.mu["w"]), 256).reshape(64, 64)
    nu_scale = np.repeat(np.asarray(state.absmax.nu["w"]), 256).reshape(64, 64)
    mu = signed[np.asarray(mu_codes)] * mu_scale
    nu = unsigned[np.asarray(nu_codes)] * nu_scale
    np.testing.assert_allclose(mu, np.asarray(g["w"]), atol=0.0071)
    np.testing.assert_allclose(nu, np.asarray(g["w"]) ** 2, atol=0.0036)


def _quadratic(seed: int = 0) -> tuple[dict, callable]:
    rng = np.random.default_rng(seed)
    target = jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
    curv = jnp.asarray(rng.uniform(0.5, 2.0, (64, 64)), jnp.float32)

    def loss(p: dict) -> jax.Array:
        return 0.5 * jnp.sum(curv * (p["w"] - target) ** 2)

    return {"w": jnp.zeros((64, 64))}, loss


def _trajectory(tx: optax.GradientTransformation, steps: int) -> list[np.ndarray]:
    params, loss = _quadratic()
    state = tx.init(params)

    @jax.jit
    def step(p: dict, s: optax.OptState) -> tuple[dict, optax.OptState]:
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(np.asarray(params["w"]))
    return out


@pytest.mark.parametrize("block_size", [256, 2048])
def test_8bit_adam_trajectory_close_to_32bit(block_size: int) -> None:
    """8-bit Adam tracks 32-bit Adam: the dynamic map's relative precision
    (a few % for entries far below their block's absmax) bounds the gap."""
    lr = 1e-2
    q = _trajectory(
        optax.chain(
            optx.quantization.quantize_moments(optax.scale_by_adam(), block_size=block_size),
            optax.scale(-lr),
        ),
        20,
    )
    ref = _trajectory(optax.adam(lr), 20)
    for a, b in zip(q, ref):
        assert np.abs(a - b).max() <= 0.25 * np.abs(b).max()
    assert np.abs(q[-1] - ref[-1]).mean() <= 0.05 * np.abs(ref[-1]).mean()
    _, loss = _quadratic()
    l8, l32 = float(loss({"w": jnp.asarray(q[-1])})), float(loss({"w": jnp.asarray(ref[-1])}))
    assert abs(l8 - l32) <= 0.01 * l32


def test_state_is_two_bytes_per_parameter_for_adam() -> None:
    params = {"w": jax.ShapeDtypeStruct((512, 384), jnp.float32)}
    n = 512 * 384
    for block in (256, 2048):
        tx = optx.quantization.quantize_moments(optax.scale_by_adam(), block_size=block)
        expected = 2 * n + 2 * 4 * (n // block) + 4  # codes + absmax + count
        assert optx.tree_utils.state_bytes(tx, params) == expected
        assert optx.tree_utils.state_bytes(tx, params) / n < 2.04
    assert optx.tree_utils.state_bytes(optax.scale_by_adam(), params) == 8 * n + 4


def test_jit_cond_type_stability_and_momentum_inner() -> None:
    g = {"w": jnp.ones((32, 32)), "b": jnp.ones(3)}
    tx = optx.quantization.quantize_moments(optax.trace(0.9), min_size=64)
    state = tx.init(g)
    assert state.inner_state.trace["w"].dtype == jnp.uint8
    assert state.inner_state.trace["b"].dtype == jnp.float32

    @jax.jit
    def maybe(
        s: optx.quantization.QuantizedState, pred: jax.Array
    ) -> optx.quantization.QuantizedState:
        return jax.lax.cond(pred, lambda s: tx.update(g, s)[1], lambda s: s, s)

    for pred in (True, False):
        new = maybe(state, jnp.asarray(pred))
        assert jax.tree.map(jax.typeof, new) == jax.tree.map(jax.typeof, state)
    u, state = tx.update(g, state)
    u, state = tx.update(g, state)
    np.testing.assert_allclose(np.asarray(u["w"]), 1.9, rtol=0.01)  # 1 + 0.9·(~1)


def test_sharded_codes_follow_the_parameter() -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    params = {"w": jnp.linspace(-1, 1, 64 * 32).reshape(64, 32)}
    tx = optx.quantization.quantize_moments(optax.scale_by_adam(), min_size=0, block_size=64)
    ref_u, ref_s = jax.jit(tx.update)(params, tx.init(params))
    with jax.set_mesh(mesh):
        sharded = {"w": jax.device_put(params["w"], NamedSharding(mesh, P("data", "model")))}
        state = tx.init(sharded)
        assert jax.typeof(state.inner_state.mu["w"]).sharding.spec == P("data", "model")
        assert jax.typeof(state.absmax.mu["w"]).sharding.spec == P(None)
        u, new = jax.jit(tx.update)(sharded, state)
        assert jax.tree.map(jax.typeof, new) == jax.tree.map(jax.typeof, state)
        assert jax.typeof(u["w"]).sharding.spec == P("data", "model")
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(ref_u["w"]), rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(new.inner_state.nu["w"]), np.asarray(ref_s.inner_state.nu["w"])
    )


@pytest.mark.parametrize("spec", [P(None, "x"), P("x", None)], ids=["columns", "rows"])
@pytest.mark.parametrize("name", ["adamw_8bit", "lion_8bit", "sgd_momentum_8bit"])
def test_sharded_8bit_step_gathers_no_matrix(name: str, spec: P) -> None:
    """A (256, 64) kernel sharded over 8 devices on either axis: block maxima and
    codes are computed shard by shard (a block is 32 whole rows, so the step splits
    the row axis instead of flattening), with no all-gather of the matrix — a
    flattened column-sharded kernel had been gathered whole, 5–10 times a step —
    and the unsharded numbers."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    w = jax.random.normal(jax.random.key(1), (256, 64))
    params = {"dense": {"kernel": w}}
    tx = optx.get_optimizer(name).build()
    want_u, want_s = jax.jit(tx.update)(params, tx.init(params), params)
    sharded = jax.device_put(params, NamedSharding(mesh, spec))
    state = tx.init(sharded)
    compiled = jax.jit(tx.update).lower(sharded, state, sharded).compile()
    gathered = [
        int(np.prod([int(d) for d in dims.split(",") if d]))
        for line in compiled.as_text().splitlines()
        if " all-gather(" in line or " all-gather-start(" in line
        for dims in re.findall(r"\[([0-9,]*)\]", line.split("=")[1].split("all-gather")[0])
    ]
    assert all(n < w.size // 8 for n in gathered), gathered
    u, s = compiled(sharded, state, sharded)
    np.testing.assert_allclose(
        np.asarray(u["dense"]["kernel"]),
        np.asarray(want_u["dense"]["kernel"]),
        rtol=1e-6,
        atol=1e-9,
    )
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(want_s)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_block_views_split_one_axis_and_match_the_flat_blocks() -> None:
    """Blocks viewed by splitting one axis (no flattening; what sharded leaves use)
    where a block is whole slices: the same maxima, codes and decoded values as the
    flattened blocks (unsharded leaves' path), for both maps."""
    from optx._src import quantization as q

    assert q._block_view((256, 64), 2048) == ((8, 32, 64), 1)
    assert q._block_view((4096, 4096), 2048) == ((4096, 2, 2048), 2)
    assert q._block_view((3, 16, 8), 64) == ((3, 2, 8, 8), 2)
    assert q._block_view((7, 5), 5) == ((7, 1, 5), 2)
    assert q._block_view((7, 5), 10) is None  # 7 rows: a partial last block
    assert q._block_view((6, 4), 3) is None  # blocks straddle rows
    rng = np.random.default_rng(3)
    for shape, block in [((256, 64), 2048), ((32, 2, 64), 256), ((4, 3, 3, 16), 48), ((96,), 32)]:
        assert q._block_view(shape, block) is not None
        x = jnp.asarray(rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape), jnp.float32)
        for signed in (True, False):
            v = x if signed else jnp.abs(x)
            outs = {}
            for split in (True, False):
                (a,) = q._block_absmax([v], block, split)
                codes = q._encode(v, a, signed, block, split)
                outs[split] = (a, codes, q._decode(codes, a, signed, block, jnp.float32, split))
            flat = np.asarray(v).reshape(-1, block)
            np.testing.assert_array_equal(np.asarray(outs[True][0]), np.abs(flat).max(axis=1))
            for got, want in zip(outs[True], outs[False]):
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_golden_sidecar_block_layout() -> None:
    """bitsandbytes blocks the row-major flattening in 256s: (64·72)/256 = 18."""
    meta = json.loads((DATA / "adam8bit__public.json").read_text())
    assert meta["arrays"]["state/w8/absmax1"]["shape"] == [18]
    q = optx.quantization.quantize_blockwise(jnp.ones((64, 72)))
    assert q.absmax.shape == (18,)


def test_state_mirrors_the_parameter_tree() -> None:
    """Block scales live in a tree of the inner state's structure (MaskedNode
    where a leaf is not quantized), so optax's parameter-tree tools work:
    ``optax.tree.map_params`` (identity and per-parameter), ``optax.masked``."""
    params = {"w": jnp.ones((32, 32)), "b": jnp.ones(8), "e": {"k": jnp.ones((16, 8))}}
    tx = optx.adamw_8bit(1e-3, min_size=64, full_precision="e/")
    state = tx.init(params)
    scales = state[0].absmax
    is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    for field in (scales.mu, scales.nu):
        assert jax.tree.structure(field, is_leaf=is_masked) == jax.tree.structure(params)
        assert field["w"].shape == (4,) and is_masked(field["b"]) and is_masked(field["e"]["k"])
    same = optax.tree.map_params(tx, lambda v: v, state)
    assert jax.tree.structure(same) == jax.tree.structure(state)
    # A per-parameter map over every parameter-shaped subtree (here: leaf names).
    names = {"w": "w", "b": "b", "e": {"k": "e/k"}}
    tagged = optax.tree.map_params(
        tx,
        lambda v, n: n if not is_masked(v) else v,
        state,
        names,
        transform_non_params=lambda _: None,
        is_leaf=is_masked,
    )
    assert tagged[0].absmax.mu["w"] == "w" and tagged[0].inner_state.nu["e"]["k"] == "e/k"
    assert tagged[0].inner_state.count is None
    masked = optax.masked(optx.adamw_8bit(1e-3, min_size=64), {"w": True, "b": False, "e": False})
    m_state = masked.init(params)
    u, m_state = jax.jit(masked.update)(params, m_state, params)
    assert m_state.inner_state[0].inner_state.mu["w"].dtype == jnp.uint8
    np.testing.assert_array_equal(u["b"], params["b"])
    optax.tree.map_params(masked, lambda v: v, m_state, is_leaf=is_masked)


def _np_quantize(x: np.ndarray, signed: bool, block: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference of the coding rule: block absmax, nearest map value."""
    blocks = _blocks(x, block)
    absmax = np.abs(blocks).max(axis=1)
    y = (blocks / np.where(absmax > 0, absmax, 1.0)[:, None]).reshape(-1)[: x.size]
    m = optx.quantization.dynamic_map(signed).astype(np.float64)
    return np.argmin(np.abs(y[:, None] - m[None, :]), axis=1).reshape(x.shape), absmax


def _np_dequantize(codes: np.ndarray, absmax: np.ndarray, signed: bool, block: int) -> np.ndarray:
    values = optx.quantization.dynamic_map(signed).astype(np.float64)[codes.reshape(-1)]
    scale = np.repeat(absmax.astype(np.float64), block)[: codes.size]
    return (values * scale).reshape(codes.shape)


def test_step_codes_every_leaf_with_its_own_block_maxima() -> None:
    """One jitted step of 8-bit Adam and 8-bit momentum from a non-zero state
    against a float64 NumPy reference (dequantize, update, re-quantize). The
    block maxima of same-size leaves are reduced together (two parameters of
    one size, moments of one parameter, a single momentum leaf), so each leaf
    must get back its own scales; a padded last block and a full-precision
    leaf ride along."""
    rng = np.random.default_rng(3)
    shapes = {"a": (40, 50), "b": (50, 40), "c": (16, 16), "s": (3,)}
    g1, g2 = (
        {
            k: jnp.asarray(rng.standard_normal(s) * rng.uniform(0.1, 10.0), jnp.float32)
            for k, s in shapes.items()
        }
        for _ in range(2)
    )
    block, b1, b2, eps = 64, 0.9, 0.99, 1e-8
    inners = {"mu": optax.scale_by_adam(b1, b2, eps), "trace": optax.trace(b1)}
    txs = {
        f: optx.quantization.quantize_moments(inner, block_size=block, min_size=64)
        for f, inner in inners.items()
    }

    @jax.jit
    def step(g: dict, states: dict) -> dict:
        return {f: tx.update(g, states[f]) for f, tx in txs.items()}

    s1 = {f: state for f, (_, state) in step(g1, {f: tx.init(g1) for f, tx in txs.items()}).items()}
    for first, (u2, s2) in step(g2, s1).items():  # the same compiled step
        s1_f = s1[first]
        fields = ("mu", "nu") if first == "mu" else ("trace",)
        for k, shape in shapes.items():
            g = np.asarray(g2[k], np.float64)
            old = {}
            for f in fields:
                leaf = getattr(s1_f.inner_state, f)[k]
                if k == "s":
                    old[f] = np.asarray(leaf, np.float64)
                else:
                    scales = np.asarray(getattr(s1_f.absmax, f)[k])
                    old[f] = _np_dequantize(np.asarray(leaf), scales, f != "nu", block)
            if fields[0] == "mu":
                new = {"mu": b1 * old["mu"] + (1 - b1) * g, "nu": b2 * old["nu"] + (1 - b2) * g * g}
                update = (new["mu"] / (1 - b1**2)) / (np.sqrt(new["nu"] / (1 - b2**2)) + eps)
            else:
                new = {"trace": g + b1 * old["trace"]}
                update = new["trace"]
            np.testing.assert_allclose(np.asarray(u2[k]), update, rtol=2e-5, atol=1e-6)
            for f in fields:
                leaf = getattr(s2.inner_state, f)[k]
                if k == "s":
                    np.testing.assert_allclose(np.asarray(leaf), new[f], rtol=1e-6)
                    continue
                want_codes, want_absmax = _np_quantize(new[f], f != "nu", block)
                np.testing.assert_allclose(
                    np.asarray(getattr(s2.absmax, f)[k]), want_absmax, rtol=1e-6
                )
                codes = np.asarray(leaf).astype(int)
                assert codes.shape == shape and np.abs(codes - want_codes).max() <= 1
                assert np.mean(codes != want_codes) <= 0.01, (k, f)  # float32 vs float64 ties


@pytest.mark.parametrize(
    ("name", "field"), [("adamw_8bit", "mu"), ("lion_8bit", "mu"), ("sgd_momentum_8bit", "trace")]
)
def test_optax_name_based_state_tools_find_each_field_once(name: str, field: str) -> None:
    """``optax.tree.get`` (optax's own ``test_explicit_dtype`` reads ``mu`` so) and
    ``optax.tree.set``: the block scales' mirror of the inner state is a
    ``StateScales`` node, not a ``NamedTuple``, so ``count`` and the moments are found
    once, in the inner state. The mirror had made ``get`` raise "multiple values" and
    ``set(count=…)`` write the mirror's slot, which the step then decoded as a
    quantized leaf (a uint8 count and a doubled step)."""
    params = {"w": jnp.ones((64, 64)), "b": jnp.ones(4)}
    tx = optx.get_optimizer(name).build(min_size=0)
    state = tx.init(params)
    moment = optax.tree.get(state, field)
    assert moment["w"].dtype == jnp.uint8 and moment["w"].shape == (64, 64)
    scales = optax.tree.get(state, "absmax")
    assert isinstance(scales, optx.quantization.StateScales)
    assert getattr(scales, field)["w"].shape == (16,)  # 4096 entries in blocks of 256
    if name == "sgd_momentum_8bit":  # a momentum state has no count
        return
    assert optax.tree.get(state, "count").dtype == jnp.int32
    moved = optax.tree.set(state, count=jnp.asarray(100, jnp.int32))
    assert jax.tree.structure(moved) == jax.tree.structure(state)
    u, after = jax.jit(tx.update)(params, moved, params)
    assert optax.tree.get(after, "count") == 101
    # The same alias with nothing quantized, its count set the same way: the same step
    # (the moments of a constant gradient are exact in 8 bits).
    full = optx.get_optimizer(name).build(min_size=10**9)
    full_state = optax.tree.set(full.init(params), count=jnp.asarray(100, jnp.int32))
    want, _ = jax.jit(full.update)(params, full_state, params)
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(want["w"]), rtol=1e-6)


def test_sgd_momentum_8bit_without_decay_needs_no_params() -> None:
    """As ``optax.sgd``: ``update(grads, state)`` with the default ``weight_decay=0``
    (the chain had always started with ``add_decayed_weights``, which needs params);
    with a decay, params are still required."""
    g = {"w": jnp.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64)}
    tx = optx.sgd_momentum_8bit(0.1, momentum=0.9, min_size=10**9)
    ref = optax.sgd(0.1, momentum=0.9)
    u, _ = tx.update(g, tx.init(g))
    want, _ = ref.update(g, ref.init(g))
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(want["w"]), rtol=1e-6)
    decayed = optx.sgd_momentum_8bit(0.1, weight_decay=0.1)
    with pytest.raises(ValueError):
        decayed.update(g, decayed.init(g))


def test_misspelled_fields_are_refused_at_init() -> None:
    """``fields=('mu_typo',)`` had quantized nothing, silently (a full-precision state)."""
    params = {"w": jnp.ones((64, 64))}
    tx = optx.quantization.quantize_moments(optax.scale_by_adam(), fields=("mu_typo",))
    with pytest.raises(ValueError, match=r"`fields` names \['mu_typo'\].*'count', 'mu', 'nu'"):
        tx.init(params)
    ok = optx.quantization.quantize_moments(optax.scale_by_adam(), fields=("mu",), min_size=0)
    state = ok.init(params)
    assert state.inner_state.mu["w"].dtype == jnp.uint8
    assert state.inner_state.nu["w"].dtype == jnp.float32


@pytest.mark.parametrize("kernel", ["xla", "pallas"])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_leaves_step_in_float32(dtype: jnp.dtype, kernel: str) -> None:
    """float16/bfloat16 parameters: the inner update runs in float32, as
    bitsandbytes' kernels do. The codes and block scales are those of the
    float32 run on the same values, the update that run's cast to the leaf's
    dtype, and a float16 gradient whose square overflows (|g| > 256) or
    underflows leaves every other entry of its block alone. Before, ``g²``
    in float16 put ``inf`` in the block maximum and NaN in the whole block."""
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(0.02 * rng.standard_normal((64, 96)), dtype),
        "b": jnp.asarray(0.02 * rng.standard_normal(8), dtype),  # full precision
    }
    wide = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    tx = optx.quantization.quantize_moments(optax.scale_by_adam(), min_size=64, kernel=kernel)
    step = jax.jit(tx.update)
    state, state32 = tx.init(params), tx.init(wide)
    for t in range(3):
        g = 1e-3 * rng.standard_normal((64, 96))
        g[t, :8], g[t + 8, :8] = 400.0, 1e-5
        grads = {"w": jnp.asarray(g, dtype), "b": jnp.asarray(rng.standard_normal(8), dtype)}
        updates, state = step(grads, state, params)
        updates32, state32 = step(
            jax.tree.map(lambda x: x.astype(jnp.float32), grads), state32, wide
        )
        for u in jax.tree.leaves(updates):
            assert u.dtype == dtype and bool(jnp.isfinite(u).all())
        np.testing.assert_array_equal(
            np.asarray(updates["w"]), np.asarray(updates32["w"].astype(dtype))
        )
        for name in ("mu", "nu"):
            for tree in ("inner_state", "absmax"):
                np.testing.assert_array_equal(
                    np.asarray(getattr(getattr(state, tree), name)["w"]),
                    np.asarray(getattr(getattr(state32, tree), name)["w"]),
                )
            assert getattr(state.inner_state, name)["b"].dtype == dtype  # as initialized
