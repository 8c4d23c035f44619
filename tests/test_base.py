"""Tests for argument validation and key-path helpers (optx._src.base)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optx._src import base


def test_check_positive_int() -> None:
    assert base.check_positive_int("steps", 3) == 3
    assert base.check_positive_int("steps", np.int64(3)) == 3
    assert base.check_positive_int("k", 0, allow_zero=True) == 0
    for bad in (3.0, True, "3", None, jnp.asarray(3)):
        with pytest.raises(TypeError, match="static Python int"):
            base.check_positive_int("steps", bad)
    with pytest.raises(ValueError, match="> 0"):
        base.check_positive_int("steps", 0)
    with pytest.raises(ValueError, match=">= 0"):
        base.check_positive_int("steps", -1, allow_zero=True)


def test_check_learning_rate() -> None:
    base.check_learning_rate("lr", 0.1)
    base.check_learning_rate("lr", jnp.asarray(0.1))
    base.check_learning_rate("lr", lambda c: 0.1)
    for bad in (float("nan"), float("inf"), jnp.asarray(float("nan"))):
        with pytest.raises(ValueError, match="finite"):
            base.check_learning_rate("lr", bad)
    with pytest.raises(ValueError, match="scalar"):
        base.check_learning_rate("lr", jnp.ones(3))
    with pytest.raises(ValueError, match="None"):
        base.check_learning_rate("lr", None)
    with pytest.raises(TypeError):
        base.check_learning_rate("lr", "fast")


def test_validators_let_tracers_through() -> None:
    @jax.jit
    def f(beta):
        base.check_in_range("beta", beta, 0.0, 1.0)
        base.check_nonnegative("eps", beta)
        base.check_learning_rate("lr", beta)
        return beta

    f(5.0)  # a traced out-of-range value cannot be checked, and must not crash
    with pytest.raises(ValueError):
        base.check_in_range("beta", 5.0, 0.0, 1.0)


def test_paths() -> None:
    class Box:
        pass

    tree = {"attn": {"value": {"kernel": 1}}, "seq": [2, 3]}
    flat, _ = base.flatten_with_paths(tree)
    assert [p for p, _ in flat] == ["attn/value/kernel", "seq/0", "seq/1"]
    path = (jax.tree_util.DictKey("w"), jax.tree_util.GetAttrKey("value"))
    assert base.path_to_str(path) == "w"
    path = (jax.tree_util.DictKey("value"),)
    assert base.path_to_str(path) == "value"


def test_check_same_structure() -> None:
    base.check_same_structure("a", {"x": 1}, "b", {"x": 2})
    with pytest.raises(ValueError, match="same tree structure"):
        base.check_same_structure("a", {"x": 1}, "b", {"y": 2})


def test_bias_correction_precision() -> None:
    count = jnp.asarray(3, jnp.int32)
    assert base.bias_correction(jnp.asarray(0.9, jnp.bfloat16), count).dtype == jnp.float32
    np.testing.assert_allclose(base.bias_correction(0.9, count), 1 - 0.9**3, rtol=1e-6)
    with jax.enable_x64(True):
        np.testing.assert_allclose(base.bias_correction(0.9, count), 1 - 0.9**3, rtol=1e-15)


def test_runtime_offsets_are_the_offsets_and_not_constants() -> None:
    """``base.runtime_offsets`` gives the offsets themselves, computed inside one
    conditional (so XLA cannot fold them into the consumers as constants), from a key or
    an integer anchor, jitted or not."""
    offsets = (0, 7, 130)
    for anchor in (jax.random.key(3), jnp.arange(4, dtype=jnp.int32)):
        assert [int(o) for o in base.runtime_offsets(offsets, anchor)] == list(offsets)
        fn = jax.jit(lambda a: base.runtime_offsets(offsets, a))
        assert [int(o) for o in fn(anchor)] == list(offsets)
        assert "stablehlo.case" in fn.lower(anchor).as_text()


def test_split_consecutive_cuts_at_runtime_offsets() -> None:
    """``base.split_consecutive`` gives the slices of ``x`` along ``axis`` (the pieces
    of two or more: dynamic slices at runtime offsets; one piece: a plain slice)."""
    x = jnp.arange(2 * 9, dtype=jnp.float32).reshape(2, 9)
    anchor = jnp.zeros((1,), jnp.int32)
    fn = jax.jit(lambda x, a: base.split_consecutive(x, [2, 3, 4], a, axis=1))
    pieces = fn(x, anchor)
    for got, (lo, hi) in zip(pieces, [(0, 2), (2, 5), (5, 9)], strict=True):
        np.testing.assert_array_equal(got, x[:, lo:hi])
    assert fn.lower(x, anchor).as_text().count("stablehlo.dynamic_slice") == 3
    (whole,) = base.split_consecutive(x, [2], anchor)
    np.testing.assert_array_equal(whole, x)


def test_safe_divide_is_zero_only_where_the_denominator_is_zero() -> None:
    x = jnp.array([1.0, 0.0, 2.0, 3.0, 1.0 + 2.0j])
    den = jnp.array([2.0, 0.0, 0.0, jnp.nan, 4.0])
    got = np.asarray(base.safe_divide(x, den))
    np.testing.assert_array_equal(got[:3], [0.5, 0.0, 0.0])
    assert np.isnan(got[3])  # a NaN denominator is not hidden
    assert got[4] == (1.0 + 2.0j) / 4.0
    g = jax.grad(lambda d: base.safe_divide(jnp.float32(3.0), d))(jnp.float32(0.0))
    assert bool(jnp.isfinite(g))  # no NaN leaks through the unselected branch


@pytest.mark.parametrize(
    ("shape", "tail", "want"),
    [
        ((2, 3, 4), 2, (2, 3, 4)),
        ((2, 3, 4), 1, (6, 4)),
        ((0,), 1, (1, 0)),
        ((3, 0), 1, (3, 0)),
        ((0, 4, 5), 2, (0, 4, 5)),
        ((2, 0, 3), 1, (0, 3)),
        ((5,), 0, (5,)),
    ],
)
def test_merge_leading_spells_out_the_merged_size(shape, tail, want) -> None:
    """Zero-size arrays included (a ``-1`` reshape raises on ``(0,)`` with tail 1)."""
    x = jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape)
    got = base.merge_leading(x, tail)
    assert got.shape == want
    np.testing.assert_array_equal(np.asarray(got).ravel(), np.asarray(x).ravel())
