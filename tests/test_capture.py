"""Layer capture for MKOR (NNX and linen): outputs unchanged, statistics from the math."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optx


class _Net(nnx.Module):
    """Conv (SAME, stride 1) -> conv (VALID, stride 2) -> dense -> attention-style -> head."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(2, 3, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(3, 4, (2, 2), strides=2, padding="VALID", rngs=rngs)
        self.dense = nnx.Linear(16, 6, rngs=rngs)
        self.query = nnx.LinearGeneral(6, (2, 3), rngs=rngs)
        self.out = nnx.LinearGeneral((2, 3), 5, axis=(-2, -1), rngs=rngs)
        self.head = nnx.Linear(5, 3, use_bias=True, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.tanh(self.conv1(x))
        x = jax.nn.tanh(self.conv2(x))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.tanh(self.dense(x))
        x = self.out(jax.nn.tanh(self.query(x)))
        return self.head(jax.nn.tanh(x))


def _batch():
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(5, 4, 4, 2)), jnp.float32)
    y = jnp.asarray(r.integers(0, 3, size=(5,)), jnp.int32)
    return x, y


def _loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _patches_mean(x: np.ndarray, kh: int, kw: int, stride: int, pad: tuple[int, int]) -> np.ndarray:
    """Per-sample mean im2col patch, flattened (kh, kw, in) — written from the definition."""
    xp = np.pad(x, ((0, 0), pad, pad, (0, 0)))
    n, hp, wp, _ = xp.shape
    rows = []
    for i in range(0, hp - kh + 1, stride):
        for j in range(0, wp - kw + 1, stride):
            rows.append(xp[:, i : i + kh, j : j + kw, :].reshape(n, -1))
    return np.mean(np.stack(rows, 1), axis=1)


def test_nnx_capture_keeps_outputs_and_gradients() -> None:
    model = _Net(nnx.Rngs(0))
    x, y = _batch()

    @nnx.jit
    def run(model):
        loss, grads, caps = optx.curvature.value_grad_and_captures(_loss, model, x, y)
        ref_loss, ref_grads = nnx.value_and_grad(_loss)(model, x, y)
        return loss, grads, caps, ref_loss, ref_grads

    loss, grads, caps, ref_loss, ref_grads = run(model)
    assert float(loss) == float(ref_loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_array_equal(a, b)
    assert sorted(caps) == [
        "conv1/kernel",
        "conv2/kernel",
        "dense/kernel",
        "head/kernel",
        "out/kernel",
        "query/kernel",
    ]
    # Dense/LinearGeneral: ḡ = Σ_rows ∂L/∂y = ∂L/∂b (all layers here have a bias).
    for name in ("dense", "query", "out", "head"):
        np.testing.assert_allclose(
            caps[f"{name}/kernel"].output_grads,
            np.ravel(grads[name]["bias"]),
            rtol=1e-5,
            atol=1e-7,
        )
    # Conv: per-sample sums over positions / L, batch-meaned, times N: ∂L/∂b / L.
    np.testing.assert_allclose(
        caps["conv1/kernel"].output_grads, grads["conv1"]["bias"] / 16, rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(
        caps["conv2/kernel"].output_grads, grads["conv2"]["bias"] / 4, rtol=1e-5, atol=1e-8
    )


def test_nnx_capture_input_statistics() -> None:
    model = _Net(nnx.Rngs(1))
    x, y = _batch()
    _, _, caps = nnx.jit(lambda m: optx.curvature.value_grad_and_captures(_loss, m, x, y))(model)
    # conv1: SAME 3x3 -> pad (1, 1); mean patch over positions then over samples.
    ref1 = _patches_mean(np.asarray(x), 3, 3, 1, (1, 1)).mean(0)
    np.testing.assert_allclose(caps["conv1/kernel"].inputs, ref1, rtol=1e-5, atol=1e-6)
    # Consistency with the layer itself: ā · K = mean over (samples, positions) of y − b.
    h1 = model.conv1(x)
    k1 = np.asarray(model.conv1.kernel[...]).reshape(-1, 3)
    np.testing.assert_allclose(
        np.asarray(caps["conv1/kernel"].inputs) @ k1,
        np.asarray(h1 - model.conv1.bias[...]).mean((0, 1, 2)),
        rtol=1e-4,
        atol=1e-5,
    )
    a2 = jnp.tanh(h1)
    ref2 = _patches_mean(np.asarray(a2), 2, 2, 2, (0, 0)).mean(0)
    np.testing.assert_allclose(caps["conv2/kernel"].inputs, ref2, rtol=1e-5, atol=1e-6)
    # out: inputs (batch, heads, head_dim) flattened in the kernel's (heads, hd) order.
    feats = jnp.tanh(model.dense(jnp.tanh(model.conv2(a2)).reshape(5, -1)))
    q = jnp.tanh(model.query(feats))
    np.testing.assert_allclose(caps["query/kernel"].inputs, feats.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        caps["out/kernel"].inputs, q.reshape(5, 6).mean(0), rtol=1e-5, atol=1e-6
    )


def test_statistics_are_clipped_per_sample() -> None:
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    x = jnp.array([[500.0, 1.0], [-20.0, 1.0]])
    loss = lambda m, x: jnp.sum(m(x))  # noqa: E731  (∂L/∂y = 1 per row; N·1 = 2)
    _, _, caps = optx.curvature.value_grad_and_captures(loss, model, x, clip_value=100.0)
    np.testing.assert_allclose(caps["kernel"].inputs, [(100.0 - 20.0) / 2, 1.0])
    _, _, caps = optx.curvature.value_grad_and_captures(loss, model, x, clip_value=1.5)
    np.testing.assert_allclose(caps["kernel"].output_grads, [1.5])


def test_layers_called_twice_are_averaged() -> None:
    class Twice(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(2, 2, rngs=rngs)

        def __call__(self, x):
            return self.dense(self.dense(x))

    model = Twice(nnx.Rngs(0))
    x = jnp.ones((3, 2))
    _, grads, caps = optx.curvature.value_grad_and_captures(
        lambda m, x: jnp.sum(m(x) ** 2), model, x
    )
    h = model.dense(x)
    np.testing.assert_allclose(caps["dense/kernel"].inputs, (x.mean(0) + h.mean(0)) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        caps["dense/kernel"].output_grads, grads["dense"]["bias"] / 2, rtol=1e-5
    )


def test_scanned_layers_are_skipped() -> None:
    class Stack(nnx.Module):
        def __init__(self, rngs):
            @nnx.split_rngs(splits=2)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(rngs):
                return nnx.Linear(3, 3, rngs=rngs)

            self.layers = make(rngs)
            self.head = nnx.Linear(3, 1, rngs=rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def body(h, layer):
                return jnp.tanh(layer(h))

            return self.head(body(x, self.layers))

    model = Stack(nnx.Rngs(0))
    loss = lambda m, x: jnp.mean(m(x) ** 2)  # noqa: E731
    x = jnp.ones((4, 3))

    @nnx.jit
    def run(model):
        return optx.curvature.value_grad_and_captures(loss, model, x)[1:], nnx.grad(loss)(model, x)

    (grads, caps), ref = run(model)
    assert sorted(caps) == ["head/kernel"]  # the scanned layers fall back to gradients
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_mkor_trains_an_nnx_model_with_captures() -> None:
    model = _Net(nnx.Rngs(2))
    x, y = _batch()
    # A top-level LinearGeneral named `out` is only known from the model (by name it
    # would be the output layer); MKOR preconditions the head too (output_group=None).
    router = optx.router_for(model, output_group=None)
    tx = optx.mkor(0.05, update_interval=2, statistics="captures", router=router)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, grads, caps = optx.curvature.value_grad_and_captures(_loss, model, x, y)
        opt.update(model, grads, captures=caps)
        return loss

    losses = [float(step(model, opt)) for _ in range(8)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


# ----------------------------------------------------------------------------
# linen
# ----------------------------------------------------------------------------


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(3, (3, 3), padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        x = jnp.tanh(nn.Dense(4)(x))
        return nn.DenseGeneral((2, 3))(x).reshape(x.shape[0], -1)


def test_linen_capture() -> None:
    model = _LinenNet()
    x, _ = _batch()
    params = model.init(jax.random.key(0), x)["params"]

    def loss_fn(p, x):
        return jnp.mean(model.apply({"params": p}, x) ** 2)

    loss, grads, caps = jax.jit(
        lambda p: optx.curvature.linen_value_grad_and_captures(loss_fn, p, x)
    )(params)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss_fn))(params, x)
    assert float(loss) == pytest.approx(float(ref_loss))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert sorted(caps) == ["Conv_0/kernel", "DenseGeneral_0/kernel", "Dense_0/kernel"]
    np.testing.assert_allclose(
        caps["Dense_0/kernel"].output_grads, grads["Dense_0"]["bias"], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        caps["DenseGeneral_0/kernel"].output_grads,
        np.ravel(grads["DenseGeneral_0"]["bias"]),
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        caps["Conv_0/kernel"].output_grads, grads["Conv_0"]["bias"] / 16, rtol=1e-5, atol=1e-8
    )
    ref = _patches_mean(np.asarray(x), 3, 3, 1, (1, 1)).mean(0)
    np.testing.assert_allclose(caps["Conv_0/kernel"].inputs, ref, rtol=1e-5, atol=1e-6)
    # The MKOR layers of the linen tree match the capture keys.
    assert sorted(optx.curvature.mkor_statistics_from_gradients(grads)) == sorted(caps)


@pytest.mark.parametrize("lift", ["scan", "remat", "vmap"])
def test_linen_layers_inside_lifted_transforms_are_skipped(lift: str) -> None:
    """Layers applied inside ``nn.scan``/``nn.remat``/``nn.vmap`` run in the
    lifted transform's trace: they are not captured (MKOR derives their
    statistics from the gradients), the outer ones are, and gradients are
    ``jax.value_and_grad``'s. Before, their statistics leaked the inner
    tracers (``UnexpectedTracerError``)."""

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
            return x + jnp.tanh(nn.Dense(8)(x)), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.Dense(8)(x)
            if lift == "scan":
                stack = nn.scan(
                    Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
                )
                x, _ = stack(name="stack")(x, None)
            elif lift == "remat":
                x, _ = nn.remat(Layer)(name="block")(x, None)
            else:
                batched = nn.vmap(
                    Layer,
                    in_axes=(0, None),
                    out_axes=(0, None),
                    variable_axes={"params": None},
                    split_rngs={"params": False},
                )
                x, _ = batched(name="block")(x, None)
            return nn.Dense(3)(x)

    model, x = Net(), jnp.linspace(-1.0, 1.0, 24).reshape(4, 6)
    params = model.init(jax.random.key(0), x)["params"]

    def loss_fn(p: Any, x: jax.Array) -> jax.Array:
        return jnp.mean(model.apply({"params": p}, x) ** 2)

    loss, grads, caps = jax.jit(
        lambda p: optx.curvature.linen_value_grad_and_captures(loss_fn, p, x)
    )(params)
    ref_loss, ref_grads = jax.value_and_grad(loss_fn)(params, x)
    assert sorted(caps) == ["Dense_0/kernel", "Dense_1/kernel"]
    assert float(loss) == pytest.approx(float(ref_loss))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "padding,kernel,kwargs",
    [
        ("CIRCULAR", 4, {}),
        ("REFLECT", 4, {}),
        ("REFLECT", 2, {"kernel_dilation": 3}),
        ("CAUSAL", 3, {"kernel_dilation": 2}),
        ("SAME", 3, {"kernel_dilation": 2}),
        ("SAME", 2, {"strides": 2}),
        (((2, 1),), 3, {}),
        (1, 3, {"input_dilation": 2}),
    ],
)
def test_conv_input_statistic_for_every_padding(padding: Any, kernel: int, kwargs: Any) -> None:
    # y = patches · K + b, so ā · K = mean over (samples, positions) of y − b; with a
    # square (fan_in × fan_out) kernel this pins every entry of the mean patch ā.
    fan_in = kernel * 2
    conv = nnx.Conv(2, fan_in, (kernel,), padding=padding, rngs=nnx.Rngs(0), **kwargs)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 7, 2)), jnp.float32)
    _, _, caps = optx.curvature.value_grad_and_captures(lambda m, x: jnp.sum(m(x)), conv, x)
    k = np.asarray(conv.kernel[...], np.float64).reshape(fan_in, fan_in)
    y = np.asarray(conv(x) - conv.bias[...], np.float64)
    np.testing.assert_allclose(
        np.asarray(caps["kernel"].inputs) @ k, y.mean((0, 1)), rtol=1e-4, atol=1e-5
    )


def test_general_statistic_moves_contracted_axes_last() -> None:
    # LinearGeneral contracting a middle axis: the rows are every other index, the
    # features the contracted axis (x (5, 3, 2) contracted on axis 1 -> rows (5·2, 3)).
    layer = nnx.LinearGeneral(3, 4, axis=1, rngs=nnx.Rngs(0))
    x = np.random.default_rng(2).normal(size=(5, 3, 2)).astype(np.float32)
    _, _, caps = optx.curvature.value_grad_and_captures(
        lambda m, x: jnp.sum(m(x)), layer, jnp.asarray(x)
    )
    want = np.moveaxis(x, 1, -1).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(caps["kernel"].inputs, want, rtol=1e-5, atol=1e-6)
