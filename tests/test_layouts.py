"""Tests for optx._src.layouts: matrix views, validation, layout specs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from optx._src import layouts


@pytest.mark.parametrize(
    "shape,layout,expected",
    [
        ((4, 6), optx.DENSE, (1, 4, 6)),
        ((3, 4, 6), optx.DENSE, (3, 4, 6)),  # scanned stack: L is a batch axis
        ((3, 3, 2, 5), optx.conv_layout(2), (1, 18, 5)),
        ((8, 2, 4), optx.ATTENTION_IN, (1, 8, 8)),
        ((2, 4, 8), optx.ATTENTION_OUT, (1, 8, 8)),
        ((5, 8, 2, 4), optx.ATTENTION_IN, (5, 8, 8)),
        ((4, 6), optx.MatrixLayout((1,), (0,)), (1, 6, 4)),
    ],
)
def test_matrix_view_shapes_and_round_trip(shape, layout, expected) -> None:
    x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    res = optx.resolve_layout(layout, shape)
    m = optx.to_matrices(x, res)
    assert m.shape == expected
    np.testing.assert_array_equal(optx.from_matrices(m, res), x)


def test_matrix_view_matches_numpy_transpose_reshape() -> None:
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6))
    res = optx.resolve_layout(optx.MatrixLayout((1, 3), (0,)), x.shape)
    assert res.batch_axes == (2,)
    m = np.asarray(optx.to_matrices(jnp.asarray(x), res))
    ref = np.transpose(x, (2, 1, 3, 0)).reshape(5, 4 * 6, 3)
    np.testing.assert_allclose(m, ref, rtol=1e-6)
    assert (res.fan_in, res.fan_out, res.batch_size) == (24, 3, 5)


def test_stat_shapes() -> None:
    res = optx.resolve_layout(optx.conv_layout(2), (3, 3, 2, 5))
    assert res.row_stat_shape() == (1, 1, 1, 5)
    assert res.column_stat_shape() == (3, 3, 2, 1)
    assert res.matrix_norm_shape() == (1, 1, 1, 1)
    stacked = optx.resolve_layout(optx.DENSE, (7, 4, 6))
    assert stacked.matrix_norm_shape() == (7, 1, 1)


@pytest.mark.parametrize(
    "shape,layout,match",
    [
        ((5,), optx.DENSE, "at least 2 dimensions"),
        ((4, 6), optx.MatrixLayout((2,), (1,)), "out of range"),
        ((4, 6), optx.MatrixLayout((0,), (0,)), "overlap"),
        ((4, 6), optx.MatrixLayout((), (1,)), "empty"),
        ((4, 6, 2), optx.MatrixLayout((0, 0), (1,)), "repeat"),
    ],
)
def test_impossible_layouts_raise_with_path(shape, layout, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        optx.resolve_layout(layout, shape, "blocks/mlp/kernel")
    assert "blocks/mlp/kernel" in str(err.value)


def test_non_int_axes_raise_type_error() -> None:
    with pytest.raises(TypeError):
        optx.resolve_layout(optx.MatrixLayout((0.5,), (1,)), (4, 6))
    with pytest.raises(TypeError):
        optx.resolve_layout("dense", (4, 6))


def test_layout_tree_is_matched_by_path_and_survives_masking() -> None:
    params = {"a": jnp.ones((4, 6)), "b": jnp.ones((6,)), "c": jnp.ones((2, 3))}
    spec = {"a": optx.MatrixLayout((1,), (0,)), "b": None, "c": optx.DENSE}
    fn = layouts.resolved_layout_fn(spec)
    assert fn("a", params["a"]).reduction_axes == (1,)
    assert fn("b", params["b"]) is None
    # Inside optax.masked the tree has MaskedNode holes but the same paths.
    masked = {"a": params["a"], "b": optax.MaskedNode(), "c": optax.MaskedNode()}
    out = layouts.map_matrix_leaves(lambda x, lay: x * lay.fan_in, spec, masked)
    np.testing.assert_array_equal(out["a"], 6 * jnp.ones((4, 6)))
    with pytest.raises(ValueError, match="no entry for leaf 'zzz'"):
        fn("zzz", params["a"])


def test_layout_spec_forms() -> None:
    x = jnp.ones((3, 4, 6))
    assert layouts.layout_fn_from_spec(optx.DENSE)("w", x) == optx.DENSE
    assert layouts.layout_fn_from_spec(optx.DENSE)("b", jnp.ones(3)) is None
    assert (
        layouts.layout_fn_from_spec(lambda p, leaf: optx.ATTENTION_IN)("w", x) == optx.ATTENTION_IN
    )
    router = optx.default_router()
    assert layouts.layout_fn_from_spec(router)("mlp/kernel", x) == optx.DENSE
    assert layouts.layout_fn_from_spec(None)("mlp/kernel", x) == optx.DENSE
    with pytest.raises(TypeError, match="only hold MatrixLayout"):
        layouts.layout_fn_from_spec({"a": 3})


def test_init_per_matrix_state_works_on_abstract_params() -> None:
    params = {
        "w": jax.ShapeDtypeStruct((4, 6), jnp.float32),
        "b": jax.ShapeDtypeStruct((6,), jnp.float32),
    }
    state = layouts.init_per_matrix_state(
        lambda p, lay: jnp.zeros(lay.row_stat_shape(), p.dtype), None, params
    )
    assert state["w"].shape == (1, 6)
    assert isinstance(state["b"], optax.MaskedNode)


def test_axes_are_taken_in_stored_order_whatever_order_they_are_given() -> None:
    # The fan-in of a matrix view is its reduction axes flattened in stored order
    # (np.transpose to batch + reduction + output, then reshape), however the
    # layout lists them.
    x = np.random.default_rng(1).normal(size=(3, 4, 5, 6))
    res = optx.resolve_layout(optx.MatrixLayout((-1, 1), (0,)), x.shape)
    assert res.reduction_axes == (1, 3)
    m = np.asarray(optx.to_matrices(jnp.asarray(x), res))
    ref = np.transpose(x, (2, 1, 3, 0)).reshape(5, 4 * 6, 3)
    np.testing.assert_allclose(m, ref, rtol=1e-6)


def test_from_matrices_inverts_a_non_involutive_permutation() -> None:
    # permutation (2, 1, 3, 0) is not its own inverse (its inverse is (3, 1, 0, 2)).
    x = np.random.default_rng(2).normal(size=(3, 4, 5, 6))
    res = optx.resolve_layout(optx.MatrixLayout((1, 3), (0,)), x.shape)
    m = np.transpose(x, (2, 1, 3, 0)).reshape(5, 24, 3)
    np.testing.assert_allclose(np.asarray(optx.from_matrices(jnp.asarray(m), res)), x, rtol=1e-6)


def test_matrix_sum_of_squares_is_the_squared_frobenius_norm_per_matrix() -> None:
    x = np.random.default_rng(3).normal(size=(2, 3, 4))
    res = optx.resolve_layout(optx.DENSE, x.shape)
    got = np.asarray(layouts.matrix_sum_of_squares(jnp.asarray(x, jnp.float32), res))
    assert got.shape == (2, 1, 1)
    np.testing.assert_allclose(got[:, 0, 0], np.sum(x**2, axis=(1, 2)), rtol=1e-5)
    z = x + 1j * np.random.default_rng(4).normal(size=x.shape)
    got = np.asarray(layouts.matrix_sum_of_squares(jnp.asarray(z, jnp.complex64), res))
    np.testing.assert_allclose(got[:, 0, 0], np.sum(np.abs(z) ** 2, axis=(1, 2)), rtol=1e-5)


def test_map_matrix_groups_stacks_leaves_that_already_have_batch_axes() -> None:
    # Two same-shape scanned stacks (2, 4, 6) go through fn as one (2, 2, 4, 6)
    # stack; fn sees the matrices through to_matrices, so the stacked layout's
    # batch axes must be the new axis and the shifted old one.
    r = np.random.default_rng(5)
    tree = {"a": jnp.asarray(r.normal(size=(2, 4, 6)), jnp.float32)}
    tree["b"] = jnp.asarray(r.normal(size=(2, 4, 6)), jnp.float32)

    def fn(x: jax.Array, lay: optx.ResolvedLayout) -> jax.Array:
        m = optx.to_matrices(x, lay)
        scale = jnp.arange(1, m.shape[0] + 1, dtype=m.dtype)[:, None, None]
        return optx.from_matrices(m * scale / jnp.max(jnp.abs(m), axis=(1, 2), keepdims=True), lay)

    calls = []
    out = layouts.map_matrix_groups(
        lambda x, lay: calls.append(lay.shape) or fn(x, lay), None, tree
    )
    assert calls == [(2, 2, 4, 6)]
    stacked = np.stack([np.asarray(tree["a"]), np.asarray(tree["b"])]).reshape(4, 4, 6)
    ref = stacked * np.arange(1, 5)[:, None, None] / np.abs(stacked).max(axis=(1, 2), keepdims=True)
    ref = ref.reshape(2, 2, 4, 6)
    np.testing.assert_allclose(np.asarray(out["a"]), ref[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["b"]), ref[1], rtol=1e-6)


@pytest.mark.parametrize("runtime", [False, True])
def test_split_rows_cuts_consecutive_pieces(runtime: bool) -> None:
    x = jnp.arange(12.0).reshape(6, 2)
    indices = layouts.runtime_indices(6, layouts.data_anchor(x)) if runtime else None
    parts = layouts.split_rows(x, (1, 3, 2), indices)
    want = np.split(np.arange(12.0).reshape(6, 2), [1, 4])
    assert len(parts) == 3
    for p, w in zip(parts, want):
        np.testing.assert_array_equal(np.asarray(p), w)


def test_conv_window_slices_are_kh_by_kw_matrices() -> None:
    # A Flax (kh, kw, in, out) kernel becomes a batch of in·out matrices of shape
    # (kh, kw); a PyTorch-stored (out, in, kh, kw) one likewise.
    x = np.random.default_rng(6).normal(size=(3, 2, 4, 5))
    lay = layouts.conv_window_slices(None)("conv/kernel", jnp.asarray(x))
    res = optx.resolve_layout(lay, x.shape)
    assert layouts.conv_window_axes(optx.resolve_layout(optx.conv_layout(2), x.shape)) == (0, 1)
    m = np.asarray(optx.to_matrices(jnp.asarray(x), res))
    np.testing.assert_allclose(m, np.transpose(x, (2, 3, 0, 1)).reshape(20, 3, 2), rtol=1e-6)
    torch = optx.MatrixLayout((1, 2, 3), (0,))
    y = np.transpose(x, (3, 2, 0, 1))  # (out, in, kh, kw)
    lay = layouts.conv_window_slices(torch)("conv/kernel", jnp.asarray(y))
    m = np.asarray(optx.to_matrices(jnp.asarray(y), optx.resolve_layout(lay, y.shape)))
    np.testing.assert_allclose(m, y.reshape(20, 3, 2), rtol=1e-6)
