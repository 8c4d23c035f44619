"""Tests for row/column RMS, norm preservation and shape scaling."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx
from tests.signatures import defaults


def row_rms_reference(xs, beta, eps, axis, bias_correction=False, eps_inside=False):
    """float64 NumPy neuron-wise second moment (NorMuon Alg. 1 lines 7-8)."""
    v = 0.0
    out = []
    for t, x in enumerate(xs, start=1):
        v = beta * v + (1 - beta) * np.mean(x**2, axis=axis, keepdims=True)
        vh = v / (1 - beta**t) if bias_correction else v
        out.append(x / (np.sqrt(vh + eps) if eps_inside else np.sqrt(vh) + eps))
    return out


@pytest.mark.parametrize(
    "shape,layout,row_axes,col_axes",
    [
        ((6, 4), optx.DENSE, (0,), (1,)),
        ((3, 6, 4), optx.DENSE, (1,), (2,)),
        ((3, 3, 2, 4), optx.conv_layout(2), (0, 1, 2), (3,)),
    ],
)
@pytest.mark.parametrize("which", ["row", "column"])
@pytest.mark.parametrize("variant", [(False, False), (True, True)])
def test_axis_rms_matches_reference(shape, layout, row_axes, col_axes, which, variant) -> None:
    bias_correction, eps_inside = variant
    xs = list(np.random.default_rng(0).normal(size=(4, *shape)))
    axes = row_axes if which == "row" else col_axes
    want = row_rms_reference(xs, 0.9, 1e-8, axes, bias_correction, eps_inside)
    factory = optx.scale_by_row_rms if which == "row" else optx.scale_by_column_rms
    with jax.enable_x64(True):
        tx = factory(
            0.9, 1e-8, bias_correction=bias_correction, eps_inside_sqrt=eps_inside, layout=layout
        )
        state = tx.init(jnp.zeros(shape, jnp.float64))
        for x, w in zip(xs, want):
            u, state = tx.update(jnp.asarray(x), state)
            np.testing.assert_allclose(np.asarray(u), w, rtol=1e-10)
    stat_shape = tuple(1 if a in axes else d for a, d in enumerate(shape))
    assert state.nu.shape == stat_shape


def test_row_rms_skips_leaves_without_layout_and_keeps_dtypes() -> None:
    params = {"mlp": {"kernel": jnp.ones((4, 3), jnp.bfloat16)}, "bias": jnp.ones(3, jnp.bfloat16)}
    tx = optx.scale_by_row_rms(nu_dtype=jnp.float32)
    state = tx.init(params)
    assert isinstance(state.nu["bias"], optax.MaskedNode)
    assert state.nu["mlp"]["kernel"].dtype == jnp.float32
    u, s2 = jax.jit(tx.update)(params, state)
    assert u["mlp"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(u["bias"], params["bias"])
    assert s2.nu["mlp"]["kernel"].dtype == jnp.float32


def test_preserve_frobenius_norm_per_matrix() -> None:
    x = jax.random.normal(jax.random.key(0), (3, 6, 4))
    tx = optx.preserve_frobenius_norm(optx.scale_by_row_rms(beta=0.0), layout=optx.DENSE)
    u, _ = tx.update(x, tx.init(x))
    for i in range(3):
        np.testing.assert_allclose(jnp.linalg.norm(u[i]), jnp.linalg.norm(x[i]), rtol=1e-5)
    # and the rows were equalized first
    row_norms = jnp.linalg.norm(u[0], axis=0)
    np.testing.assert_allclose(row_norms, row_norms[0] * jnp.ones(4), rtol=1e-5)


@pytest.mark.parametrize(
    "rule,shape,factor",
    [
        ("keller", (4, 8), math.sqrt(2.0)),  # fan_out / fan_in = 2
        ("keller", (8, 4), 1.0),
        ("moonlight", (4, 8), 0.2 * math.sqrt(8)),
        ("moonlight", (3, 3, 2, 5), 0.2 * math.sqrt(18)),
        ("none", (4, 8), 1.0),
    ],
)
def test_scale_by_shape(rule, shape, factor) -> None:
    tx = optx.scale_by_shape(rule)
    name = "conv" if len(shape) == 4 else "mlp"  # the default router's conv rule is by name
    u, _ = tx.update({name: {"kernel": jnp.ones(shape)}}, tx.init(None))
    np.testing.assert_allclose(u[name]["kernel"], factor * np.ones(shape), rtol=1e-6)


def test_scale_to_rms() -> None:
    x = jax.random.normal(jax.random.key(1), (2, 5, 7))
    u, _ = optx.scale_to_rms(0.2, layout=optx.DENSE).update(x, optax.EmptyState())
    rms = jnp.sqrt(jnp.mean(u**2, axis=(1, 2)))
    np.testing.assert_allclose(rms, [0.2, 0.2], rtol=1e-5)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="rule"):
        optx.scale_by_shape("wide")
    with pytest.raises(ValueError, match="beta"):
        optx.scale_by_row_rms(beta=1.0)
    with pytest.raises(ValueError, match="eps"):
        optx.scale_by_column_rms(eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        optx.scale_to_rms(eps=float("inf"))


# ----------------------------------------------------------------------------
# Memory-efficient family additions (issue 7)
# ----------------------------------------------------------------------------


CONV = optx.MatrixLayout((-4, -3, -2), (-1,))


def test_norm_growth_limiter_matches_reference() -> None:
    """Fira/APOLLO: l = max(|X|/(N+1e-8), γ)/γ, X/l, N <- |X|/l; first step free."""
    rng = np.random.default_rng(0)
    shapes = {"dense": (4, 5), "stack": (3, 4, 5), "conv": (2, 2, 3, 4)}
    layout = lambda path, leaf: CONV if path == "conv" else optx.DENSE  # noqa: E731
    tx = optx.scale_by_norm_growth_limiter(1.01, layout=layout)
    grads = [{k: rng.standard_normal(s) * (3.0**t) for k, s in shapes.items()} for t in range(4)]
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    stored: dict[str, np.ndarray] = {}
    for t, g in enumerate(grads):
        u, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state)
        for k, x in g.items():
            mats = x.reshape(1, -1, x.shape[-1]) if k == "conv" else x.reshape(-1, *x.shape[-2:])
            norm = np.linalg.norm(mats, axis=(1, 2))
            lim = (
                np.ones_like(norm) if t == 0 else np.maximum(norm / (stored[k] + 1e-8), 1.01) / 1.01
            )
            stored[k] = norm / lim
            ref = (mats / lim[:, None, None]).reshape(x.shape)
            np.testing.assert_allclose(np.asarray(u[k]), ref, rtol=1e-5, err_msg=k)
    # Growing inputs: every later output grows by exactly 1% per step.
    assert np.isclose(np.linalg.norm(np.asarray(u["dense"])), stored["dense"].item())


def test_limiter_leaves_vectors_alone_and_keeps_dtype() -> None:
    tx = optx.scale_by_norm_growth_limiter()
    g = {"bias": jnp.ones(3, jnp.bfloat16), "kernel": jnp.ones((2, 3), jnp.bfloat16)}
    state = tx.init(g)
    for _ in range(2):
        u, state = tx.update(jax.tree.map(lambda x: 5 * x, g), state)
    assert u["bias"].dtype == jnp.bfloat16 and float(u["bias"][0]) == 5.0
    assert state.norm["kernel"].dtype == jnp.float32 and state.norm["kernel"].shape == (1, 1)


def test_normuon_eps_zero_gives_an_untouched_neuron_no_step() -> None:
    """NorMuon at ε = 0 with one output neuron's gradient column zero: that neuron gets
    no step (the ε → 0 limit) and the others the small-ε numbers; its 0/0 had made the
    whole matrix NaN through the norm-preserving rescale."""
    g = jax.random.normal(jax.random.key(0), (16, 8)).at[:, 3].set(0.0)
    params = {"dense": {"kernel": jnp.zeros((16, 8))}}
    grads = {"dense": {"kernel": g}}
    steps = {}
    for eps in (0.0, 1e-30):
        tx = optx.normuon(0.02, eps=eps, weight_decay=0.0)
        steps[eps] = tx.update(grads, tx.init(params), params)[0]["dense"]["kernel"]
    assert bool(jnp.all(jnp.isfinite(steps[0.0])))
    np.testing.assert_array_equal(np.asarray(steps[0.0][:, 3]), 0.0)
    np.testing.assert_allclose(np.asarray(steps[0.0]), np.asarray(steps[1e-30]), rtol=1e-6)


def test_defaults_are_the_papers() -> None:
    """NorMuon's neuron-wise β₂ 0.95 (arXiv 2510.05491), Moonlight's RMS 0.2
    (arXiv 2502.16982) and APOLLO/Fira's norm-growth limit 1.01."""
    assert defaults(optx.scale_by_row_rms, "beta") == {"beta": 0.95}
    assert defaults(optx.scale_by_column_rms, "beta") == {"beta": 0.95}
    assert defaults(optx.scale_by_shape, "rms") == {"rms": 0.2}
    assert defaults(optx.scale_to_rms, "rms") == {"rms": 0.2}
    assert defaults(optx.scale_by_norm_growth_limiter, "gamma") == {"gamma": 1.01}
