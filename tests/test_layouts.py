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
