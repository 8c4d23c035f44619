"""clip_by_quantile (ROOT's per-matrix soft threshold) against float64 NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from tests.matrix_views import matrices

SHAPES = {"hidden": (5, 9), "stack": (3, 9, 4), "conv": (3, 3, 2, 6)}


def quantile_linear(v: np.ndarray, q: float) -> float:
    """torch.quantile / 'linear': x_(⌊h⌋) + (h − ⌊h⌋)(x_(⌈h⌉) − x_(⌊h⌋)), h = q(N−1)."""
    s = np.sort(v.ravel())
    h = q * (s.size - 1)
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    return float(s[lo] + (h - lo) * (s[hi] - s[lo]))


def soft_threshold_clip(m: np.ndarray, q: float, eps: float) -> np.ndarray:
    t = quantile_linear(np.abs(m), q) + eps
    return m - np.sign(m) * np.maximum(np.abs(m) - t, 0.0)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.9, 1.0])
def test_clip_by_quantile_matches_reference_per_matrix(q: float) -> None:
    r = np.random.default_rng(0)
    g = {k: r.standard_t(3, size=s) for k, s in SHAPES.items()}  # heavy tails
    with jax.enable_x64(True):
        tx = optx.clip_by_quantile(q, 1e-9)
        u, _ = tx.update({k: {"kernel": jnp.asarray(v)} for k, v in g.items()}, optax.EmptyState())
    for k, v in g.items():
        want = np.stack([soft_threshold_clip(m, q, 1e-9) for m in matrices(v, k)])
        np.testing.assert_allclose(matrices(np.asarray(u[k]["kernel"]), k), want, rtol=1e-14)


def test_matrices_of_one_size_share_one_selection() -> None:
    """Leaves whose matrices have the same number of entries (36 here: a
    (6, 6) and a (4, 9) kernel, a (2, 9, 4) stack, a (3, 3, 2, 2) conv) share
    one selection loop whatever their layouts; each matrix keeps its own quantile."""
    r = np.random.default_rng(3)
    shapes = {"a": (6, 6), "b": (4, 9), "stack": (2, 9, 4), "conv": (3, 3, 2, 2)}
    kinds = {"a": "hidden", "b": "hidden", "stack": "stack", "conv": "conv"}
    g = {k: r.standard_t(3, size=s) for k, s in shapes.items()}
    with jax.enable_x64(True):
        tree = {k: {"kernel": jnp.asarray(v)} for k, v in g.items()}
        lowered = jax.jit(optx.clip_by_quantile(0.9, 1e-9).update).lower(tree, optax.EmptyState())
        assert lowered.as_text().count("stablehlo.while") == 1
        u, _ = lowered.compile()(tree, optax.EmptyState())
    for k, v in g.items():
        want = np.stack([soft_threshold_clip(m, 0.9, 1e-9) for m in matrices(v, kinds[k])])
        got = matrices(np.asarray(u[k]["kernel"]), kinds[k])
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_quantile_interpolates_like_torch() -> None:
    x = jnp.array([[4.0, 1.0], [3.0, 2.0]])
    lay = optx.MatrixLayout().resolve(x.shape)
    # h = 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
    np.testing.assert_allclose(optx.linalg.matrix_quantile(x, 0.9, lay), [[3.7]], rtol=1e-6)
    u, _ = optx.clip_by_quantile(0.9, 0.0).update({"w": x}, optax.EmptyState())
    np.testing.assert_allclose(u["w"], [[3.7, 1.0], [3.0, 2.0]], rtol=1e-6)


def test_traced_quantile_under_inject_hyperparams() -> None:
    tx = optax.inject_hyperparams(optx.clip_by_quantile)(quantile=0.5)
    g = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
    state = tx.init(g)
    u, state = jax.jit(tx.update)(g, state)
    np.testing.assert_allclose(u["w"], jnp.minimum(g["w"], 4.5))
    state.hyperparams["quantile"] = jnp.asarray(1.0)
    u, _ = jax.jit(tx.update)(g, state)
    np.testing.assert_allclose(u["w"], g["w"])


def test_dtype_and_passthrough() -> None:
    g = {"w": jnp.ones((4, 6), jnp.bfloat16), "b": jnp.arange(4.0)}
    u, _ = optx.clip_by_quantile().update(g, optax.EmptyState())
    assert u["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(u["b"], g["b"])


def _selection_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Stacks of matrices (batch axis first) with ties, signs, zeros, infinities."""
    normal = rng.standard_t(2, size=(4, 5, 9))
    ties = np.round(rng.standard_normal((4, 5, 9)))  # many equal values, ±0
    ties[1] = 3.0  # one matrix constant
    ties[2, 0, :4] = -0.0
    special = rng.standard_normal((3, 2, 3))
    special[0, 0, 0] = np.inf
    special[1, 1, 2] = -np.inf
    special[2, 0, 1] = np.nan
    return {
        "normal": normal,
        "ties": ties,
        "tiny": rng.standard_normal((3, 1, 1)),
        "row": -np.abs(rng.standard_normal((2, 1, 7))),
        "special": special,
    }


def _order_stat_reference(m: np.ndarray, q: float, dtype: type) -> tuple[float, float, float]:
    """(lower, higher, linear) by sorting, with h = q(N−1) in ``dtype`` (jnp's rule)."""
    s = np.sort(m.ravel().astype(dtype))
    h = dtype(q) * (dtype(s.size) - dtype(1))
    lo, hi = int(np.clip(np.floor(h), 0, s.size - 1)), int(np.clip(np.ceil(h), 0, s.size - 1))
    w = h - np.floor(h)
    if np.isnan(s).any():
        return np.nan, np.nan, np.nan
    with np.errstate(invalid="ignore"):  # inf·0 at w = 0 is NaN, as in jnp.quantile
        return s[lo], s[hi], s[lo] * (dtype(1) - w) + s[hi] * w


QS = (0.0, 0.1, 0.37, 0.5, 0.9, 0.95, 1.0)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("x64", [False, True])
def test_matrix_quantile_selects_exact_order_statistics(
    monkeypatch: pytest.MonkeyPatch, x64: bool, bits: int
) -> None:
    """Lower/higher order statistics are bit-identical to a sort; the linear
    quantile matches np.quantile and jnp.quantile (today's sort-based rule) to
    the last ulp (XLA may fuse the final ``a·(1−w) + b·w`` into an FMA). Whatever
    the key bits decided per counting pass (1 on a CPU, 2 on an accelerator)."""
    from optx._src import clipping

    monkeypatch.setattr(clipping, "bits_per_pass", lambda: bits)
    dtype = np.float64 if x64 else np.float32
    cases = {k: v.astype(dtype) for k, v in _selection_cases(np.random.default_rng(3)).items()}

    def run(xs: dict) -> dict:
        out = {}
        for k, x in xs.items():
            lay = optx.MatrixLayout().resolve(x.shape)
            qs = jnp.asarray(QS, x.dtype)
            per_q = {
                m: jax.vmap(lambda q, m=m, x=x, lay=lay: optx.linalg.matrix_quantile(x, q, lay, m))(
                    qs
                )
                for m in ("lower", "higher", "linear")
            }
            flat = jnp.reshape(x, (x.shape[0], -1))
            per_q["today"] = jnp.quantile(flat, qs, axis=-1, method="linear")
            out[k] = per_q
        return out

    with jax.enable_x64(x64):
        got = jax.jit(run)({k: jnp.asarray(v) for k, v in cases.items()})
    ulp = np.finfo(dtype).eps
    for k, x in cases.items():
        g = got[k]
        assert g["lower"].dtype == dtype and g["lower"].shape == (len(QS), x.shape[0], 1, 1)
        for i, q in enumerate(QS):
            for b, m in enumerate(x):
                ref_lo, ref_hi, ref_lin = _order_stat_reference(m, q, dtype)
                msg = f"{k}[{b}] q={q}"
                np.testing.assert_array_equal(g["lower"][i, b, 0, 0], ref_lo, err_msg=msg)
                np.testing.assert_array_equal(g["higher"][i, b, 0, 0], ref_hi, err_msg=msg)
                lin = g["linear"][i, b, 0, 0]
                np.testing.assert_allclose(lin, ref_lin, rtol=2 * ulp, atol=0, err_msg=msg)
                np.testing.assert_allclose(lin, g["today"][i, b], rtol=2 * ulp, atol=0)
                if np.isfinite(m).all():
                    want = np.quantile(m.astype(np.float64), q, method="linear")
                    np.testing.assert_allclose(lin, want, rtol=4 * ulp, atol=4 * ulp, err_msg=msg)


def test_matrix_quantile_reduces_the_layout_axes_without_reshaping() -> None:
    """Conv and attention layouts: the quantile runs over the fan-in × fan-out
    entries of each matrix, batch axes kept."""
    x = jax.random.normal(jax.random.key(1), (3, 4, 2, 5))  # attention-out (h, hd, d) x3
    lay = optx.MatrixLayout((-3, -2), (-1,)).resolve(x.shape)
    got = optx.linalg.matrix_quantile(x, 0.9, lay, method="higher")
    assert got.shape == (3, 1, 1, 1)
    want = [_order_stat_reference(np.asarray(m), 0.9, np.float32)[1] for m in x]
    np.testing.assert_array_equal(got.ravel(), want)
    with pytest.raises(ValueError, match="method"):
        optx.linalg.matrix_quantile(x, 0.9, lay, method="nearest")
    with pytest.raises(TypeError, match="real"):
        optx.linalg.matrix_quantile(x.astype(jnp.complex64), 0.9, lay)


def test_complex_updates_keep_their_phase() -> None:
    """Complex M: thresholded on |M|, so a global phase rotates the output."""
    r = np.random.default_rng(4)
    g = r.standard_normal((6, 5)) + 1j * r.standard_normal((6, 5))
    tx = optx.clip_by_quantile(0.5, 0.0)
    phase = np.exp(0.7j)
    u, _ = tx.update({"w": jnp.asarray(g, jnp.complex64)}, optax.EmptyState())
    v, _ = tx.update({"w": jnp.asarray(g * phase, jnp.complex64)}, optax.EmptyState())
    np.testing.assert_allclose(np.asarray(v["w"]), np.asarray(u["w"]) * phase, atol=1e-6)
    t = _order_stat_reference(np.abs(g), 0.5, np.float64)[2]
    want = np.where(np.abs(g) > t, g / np.abs(g) * t, g)
    np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=1e-5)


def _sharded_tree(mesh: jax.sharding.Mesh, tree: dict) -> dict:
    specs = {"rows": P("x", None), "cols": P(None, "x"), "stack": P("x", None, None)}
    return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_leaves_with_and_without_mesh_context(axis_type: AxisType) -> None:
    """Row-, column- and layer-sharded leaves on 8 devices give the unsharded
    numbers, under ``jax.set_mesh`` and without any mesh context."""
    keys = jax.random.split(jax.random.key(0), 3)
    tree = {
        "rows": jax.random.normal(keys[0], (16, 12)),
        "cols": jax.random.normal(keys[1], (12, 16)),
        "stack": jax.random.normal(keys[2], (8, 6, 4)),
    }
    tx = optx.clip_by_quantile(0.9)
    update = jax.jit(lambda g: tx.update(g, optax.EmptyState())[0])
    ref = update(tree)
    mesh = jax.make_mesh((8,), ("x",), axis_types=(axis_type,))
    sharded = _sharded_tree(mesh, tree)
    without = update(sharded)
    with jax.set_mesh(mesh):
        within = update(sharded)
    for k in tree:
        np.testing.assert_array_equal(np.asarray(without[k]), np.asarray(ref[k]), err_msg=k)
        np.testing.assert_array_equal(np.asarray(within[k]), np.asarray(ref[k]), err_msg=k)
        if axis_type == AxisType.Explicit:
            assert jax.typeof(within[k]).sharding.spec == jax.typeof(sharded[k]).sharding.spec


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quantile"):
        optx.clip_by_quantile(1.5)
    with pytest.raises(ValueError, match="eps"):
        optx.clip_by_quantile(0.9, eps=-1.0)
    with pytest.raises(ValueError, match="strategy"):
        optx.clip_by_quantile(0.9, strategy="scatter")


def test_selection_counts_in_int32_past_float_exactness() -> None:
    """Matrices above 2**24 entries count in int32 (f32 sums would round):
    forced here through the private selector on a small matrix."""
    from optx._src import clipping

    x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 7, 9)), jnp.float32)
    k = jnp.full((1, 1, 1), 40, jnp.int32)
    exact = jax.jit(clipping._order_statistic_pair, static_argnums=(3, 4, 5))
    want = np.sort(np.asarray(x).ravel())[40:42]
    for bits in (1, 2):
        small = exact(x, k, k + 1, (1, 2), 63, bits)
        huge = exact(x, k, k + 1, (1, 2), 2**30, bits)
        np.testing.assert_array_equal(np.ravel(small), want)
        np.testing.assert_array_equal(np.ravel(huge), want)


def test_batch_axis_between_the_matrix_axes() -> None:
    # Layout (fan-in 0, fan-out 2): axis 1 is the batch axis, so matrix b is g[:, b, :]
    # and each gets its own threshold (not a row block of the flattened tensor).
    r = np.random.default_rng(7)
    g = r.standard_t(3, size=(4, 3, 5))
    g[:, 1, :] *= 10.0  # matrices of very different scales
    lay = optx.MatrixLayout((0,), (2,))
    with jax.enable_x64(True):
        u, _ = optx.clip_by_quantile(0.5, 1e-9, layout=lay).update(
            {"w": jnp.asarray(g)}, optax.EmptyState()
        )
    want = np.stack([soft_threshold_clip(g[:, b, :], 0.5, 1e-9) for b in range(3)], axis=1)
    np.testing.assert_allclose(np.asarray(u["w"]), want, rtol=1e-14)
