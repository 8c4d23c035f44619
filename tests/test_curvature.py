"""The curvature extra-argument vocabulary: HVP, Hutchinson, Gauss–Newton–Bartlett,
selection by key path, device averaging on the 8-device CPU mesh, NNX helpers."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from optx._src import curvature


def _mlp(seed: int = 0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(size=(16, 3)), dtype)
    y = jnp.asarray(r.normal(size=(16, 2)), dtype)
    params = {
        "l1": {"kernel": jnp.asarray(r.normal(size=(3, 4)), dtype), "bias": jnp.zeros(4, dtype)},
        "l2": {"kernel": jnp.asarray(r.normal(size=(4, 2)) * 0.5, dtype)},
    }

    def loss_fn(p, x=x, y=y):
        h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return 0.5 * jnp.mean(jnp.sum((h @ p["l2"]["kernel"] - y) ** 2, -1))

    return params, loss_fn, (x, y)


def _exact_hessian(loss_fn, params) -> tuple[np.ndarray, np.ndarray]:
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return np.asarray(jax.hessian(lambda v: loss_fn(unravel(v)))(flat)), np.asarray(flat)


def _ravel(tree) -> np.ndarray:
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def test_hvp_matches_exact_hessian() -> None:
    with jax.enable_x64(True):
        params, loss_fn, _ = _mlp(dtype=jnp.float64)
        hess, _ = _exact_hessian(loss_fn, params)
        v = jax.tree.map(
            lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params
        )
        got = _ravel(optx.curvature.hvp(loss_fn, params, v))
        np.testing.assert_allclose(got, hess @ _ravel(v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_is_probe_times_hvp(distribution: str) -> None:
    with jax.enable_x64(True):
        params, loss_fn, _ = _mlp(dtype=jnp.float64)
        hess, _ = _exact_hessian(loss_fn, params)
        key = jax.random.key(7)
        z = _ravel(optx.curvature.random_probes(key, params, distribution))
        if distribution == "rademacher":
            assert set(np.unique(z)) <= {-1.0, 1.0}
        est = optx.curvature.hutchinson_diagonal(loss_fn, params, key, distribution=distribution)
        np.testing.assert_allclose(_ravel(est), z * (hess @ z), rtol=1e-10, atol=1e-12)
        est_abs = optx.curvature.hutchinson_diagonal(
            loss_fn, params, key, distribution=distribution, absolute=True
        )
        np.testing.assert_allclose(_ravel(est_abs), np.abs(z * (hess @ z)), rtol=1e-10, atol=1e-12)


def test_random_probes_are_the_plain_draw_bit_for_bit() -> None:
    """The draw kept out of its consumers' fusions (``base.materialized``) has
    the bits of one plain float32 draw over the flattened tree, for typed and raw
    keys, and under ``vmap`` (where the cond becomes a select)."""
    params, _, _ = _mlp()
    total = sum(x.size for x in jax.tree.leaves(params))
    key, keys = jax.random.key(3), jax.random.split(jax.random.key(4), 2)

    @jax.jit
    def probes(key, keys):
        rp = optx.curvature.random_probes
        return (
            rp(key, params, "rademacher"),
            rp(jax.random.key_data(key), params, "gaussian"),
            jax.vmap(lambda k: rp(k, params, "gaussian"))(keys),
        )

    rad, gauss, batched = probes(key, keys)
    np.testing.assert_array_equal(_ravel(rad), jax.random.rademacher(key, (total,), jnp.float32))
    np.testing.assert_array_equal(_ravel(gauss), jax.random.normal(key, (total,), jnp.float32))
    second = _ravel(jax.tree.map(lambda x: x[1], batched))
    np.testing.assert_array_equal(second, jax.random.normal(keys[1], (total,), jnp.float32))


def test_random_probes_cut_leaves_at_runtime_offsets() -> None:
    """Each leaf is cut out of the one draw by a ``dynamic_slice`` at an offset XLA
    cannot fold (a static slice offset is a constant of every consumer fusion, so
    same-shape leaves would compile one kernel each), with the plain draw's values;
    a single leaf is the draw itself."""
    params = {"a": jnp.zeros((8, 16)), "b": jnp.zeros((8, 16)), "c": jnp.zeros((5,))}
    key = jax.random.key(11)
    fn = jax.jit(lambda k: optx.curvature.random_probes(k, params))
    text = fn.lower(key).as_text()
    assert text.count("stablehlo.dynamic_slice") == 3
    static = [line for line in text.splitlines() if "stablehlo.slice" in line and "f32>" in line]
    assert not static  # the only static slices left are of the key's two words
    total = 8 * 16 * 2 + 5
    np.testing.assert_array_equal(
        _ravel(fn(key)), jax.random.rademacher(key, (total,), jnp.float32)
    )
    one = jax.jit(lambda k: optx.curvature.random_probes(k, {"a": jnp.zeros((3, 4))}))
    assert "dynamic_slice" not in one.lower(key).as_text()


@pytest.mark.parametrize(("partitionable", "x64"), [(True, False), (False, False), (True, True)])
def test_random_probes_drawn_in_rows_keep_the_plain_bits(partitionable: bool, x64: bool) -> None:
    """A tree larger than one row of the draw (Rademacher signs are drawn as rows where
    the bits allow it) still gets the values of the plain 1-D draw, for both
    distributions, typed and raw keys, under ``vmap``, with ``jax_enable_x64`` (JAX's
    Rademacher signs are then float64 Bernoulli draws: other bits) and with
    ``jax_threefry_partitionable`` off (plain draw)."""
    params = {"a": jnp.zeros((33, 70), jnp.float32), "b": jnp.zeros((900,), jnp.bfloat16)}
    total = 33 * 70 + 900  # 3210: three full rows of 1024 and a partial one
    key, keys = jax.random.key(7), jax.random.split(jax.random.key(8), 2)
    rp = optx.curvature.random_probes

    @jax.jit
    def probes(key, keys):
        return (
            rp(key, params, "rademacher"),
            rp(jax.random.key_data(key), params, "gaussian"),
            jax.vmap(lambda k: rp(k, params, "rademacher"))(keys),
        )

    with jax.threefry_partitionable(partitionable), jax.enable_x64(x64):
        rad, gauss, batched = probes(key, keys)
        plain_rad = jax.random.rademacher(key, (total,), jnp.float32)
        plain_gauss = jax.random.normal(key, (total,), jnp.float32)
        plain_second = jax.random.rademacher(keys[1], (total,), jnp.float32)

    def flat(tree: Any) -> np.ndarray:  # the leaves in tree order, as float32
        return np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)])

    def cast(x: jax.Array) -> np.ndarray:  # the plain draw cast to each leaf's dtype
        a, b = x[: 33 * 70], x[33 * 70 :].astype(jnp.bfloat16)
        return np.concatenate([np.asarray(a), np.asarray(b, np.float32)])

    np.testing.assert_array_equal(flat(rad), cast(plain_rad))
    np.testing.assert_array_equal(flat(gauss), cast(plain_gauss))
    second = jax.tree.map(lambda x: x[1], batched)
    np.testing.assert_array_equal(flat(second), cast(plain_second))
    # Keys of another implementation take JAX's own draw.
    rbg = jax.random.key(7, impl="rbg")
    np.testing.assert_array_equal(
        flat(rp(rbg, params, "rademacher")),
        cast(jax.random.rademacher(rbg, (total,), jnp.float32)),
    )


def test_hutchinson_is_unbiased_on_mlp() -> None:
    """The mean of many probes approaches the exact Hessian diagonal."""
    with jax.enable_x64(True):
        params, loss_fn, _ = _mlp(dtype=jnp.float64)
        hess, _ = _exact_hessian(loss_fn, params)
        est = optx.curvature.hutchinson_diagonal(
            loss_fn, params, jax.random.key(0), num_samples=4096
        )
        diag = np.diag(hess)
        # Rademacher: the error of coordinate i has std ||H_i,-i|| / sqrt(S).
        off = np.sqrt(np.sum(hess**2, axis=1) - diag**2) / np.sqrt(4096)
        assert np.all(np.abs(_ravel(est) - diag) < 5 * off + 1e-12)


def test_gauss_newton_bartlett_is_unbiased_for_softmax_regression() -> None:
    """B · E[ĝ ⊙ ĝ] = diag of the Gauss–Newton matrix (arXiv 2305.14342, Eq. 10–12)."""
    r = np.random.default_rng(1)
    n, d, c = 6, 3, 4
    x = r.normal(size=(n, d))
    w = r.normal(size=(d, c)) * 0.5
    logits_fn = lambda p: jnp.asarray(x, jnp.float32) @ p  # noqa: E731
    sampled = optx.curvature.sampled_label_loss(logits_fn)
    keys = jax.random.split(jax.random.key(0), 20000)
    est = jax.vmap(
        lambda k: optx.curvature.gauss_newton_bartlett_diagonal(
            sampled, jnp.asarray(w, jnp.float32), k
        )
    )(keys)
    got = n * np.asarray(est).mean(0)
    # Gauss–Newton diagonal of the mean CE of a linear softmax model.
    z = x @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ggn = (x[:, :, None] ** 2 * (p * (1 - p))[:, None, :]).mean(0)
    np.testing.assert_allclose(got, ggn, rtol=0.08, atol=1e-3)


def test_gauss_newton_bartlett_clip_norm() -> None:
    f = optx.curvature.sampled_label_loss(lambda p: p)
    params = jnp.array([[5.0, -5.0, 0.0], [0.0, 3.0, -3.0]])
    key = jax.random.key(3)
    raw = optx.curvature.gauss_newton_bartlett_diagonal(f, params, key)
    clipped = optx.curvature.gauss_newton_bartlett_diagonal(f, params, key, clip_norm=0.1)
    norm2 = float(jnp.sum(raw))
    assert norm2 > 0.01
    np.testing.assert_allclose(float(jnp.sum(clipped)), 0.01, rtol=1e-5)
    np.testing.assert_allclose(clipped, raw * 0.01 / norm2, rtol=1e-5)


def test_sampled_label_loss_mask() -> None:
    logits = jnp.array([[0.0, 0.0], [10.0, -10.0]])
    f = optx.curvature.sampled_label_loss(lambda p: p, where=jnp.array([True, False]))
    np.testing.assert_allclose(float(f(logits, jax.random.key(0))), np.log(2.0), rtol=1e-6)


def test_sampled_label_loss_mask_is_a_mean_over_kept_positions() -> None:
    """Two kept positions with uniform logits (CE = log 3 whatever label is drawn), one
    masked out: the loss is their mean ``log 3``, not their sum."""
    logits = jnp.array([[0.0, 0.0, 0.0], [10.0, -10.0, 0.0], [1.0, 1.0, 1.0]])
    f = optx.curvature.sampled_label_loss(lambda p: p, where=jnp.array([True, False, True]))
    np.testing.assert_allclose(float(f(logits, jax.random.key(1))), np.log(3.0), rtol=1e-6)


# ----------------------------------------------------------------------------
# Selection by key path (partition / masked / NNX)
# ----------------------------------------------------------------------------


def test_estimate_over_full_tree_selects_own_leaves() -> None:
    params, loss_fn, _ = _mlp()
    key = jax.random.key(0)
    full = optx.curvature.hutchinson_diagonal(loss_fn, params, key)
    masked = {
        "l1": {"kernel": params["l1"]["kernel"], "bias": optax.MaskedNode()},
        "l2": optax.MaskedNode(),
    }
    est = optx.curvature.Hutchinson()
    got = optx.curvature.estimate_diagonal(
        est, masked, {"loss_fn": loss_fn, "full_params": params}, key
    )
    assert isinstance(got["l2"], optax.MaskedNode)
    assert isinstance(got["l1"]["bias"], optax.MaskedNode)
    np.testing.assert_array_equal(got["l1"]["kernel"], full["l1"]["kernel"])
    with pytest.raises(ValueError, match="full_params"):
        optx.curvature.estimate_diagonal(est, masked, {"loss_fn": loss_fn}, key)
    with pytest.raises(ValueError, match="no leaf"):
        optx.curvature.select_by_path(full, {"other": jnp.zeros(2)})


def test_select_by_path_ignores_nnx_value_boxes() -> None:
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    boxed = nnx.state(model, nnx.Param)  # leaves under '.value' attributes
    pure = nnx.as_pure(boxed)
    doubled = jax.tree.map(lambda x: 2 * x, pure)
    got = optx.curvature.select_by_path(doubled, boxed)
    np.testing.assert_array_equal(jax.tree.leaves(got)[0], jax.tree.leaves(doubled)[0])


def test_missing_arguments_message() -> None:
    with pytest.raises(TypeError, match="sampled_loss_fn") as info:
        curvature.check_extra_args(optx.curvature.GaussNewtonBartlett(), {}, "Sophia-G")
    assert "`logits_fn`" in str(info.value) and "logits_fn=" in str(info.value)
    assert curvature.missing_arguments(optx.curvature.Hutchinson(), {"obj_fn": lambda p: 0.0}) == []
    args = optx.curvature.curvature_args(lambda p: 0.0, {"w": 1.0}, key=jax.random.key(0), loss=1.0)
    assert set(args) == {"loss_fn", "full_params", "key", "loss"}


# ----------------------------------------------------------------------------
# Data parallelism on the 8-device CPU mesh
# ----------------------------------------------------------------------------


def _batch_problem():
    r = np.random.default_rng(5)
    x = jnp.asarray(r.normal(size=(32, 3)), jnp.float32)
    labels = jnp.asarray(r.integers(0, 4, size=(32,)), jnp.int32)
    params = {"w": jnp.asarray(r.normal(size=(3, 4)) * 0.3, jnp.float32), "b": jnp.zeros(4)}

    def logits(p, x):
        return jnp.tanh(x @ p["w"]) * 2 + p["b"]

    def loss(p, x, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits(p, x), labels).mean()

    return params, x, labels, logits, loss


def test_global_view_estimates_are_cross_device_averages() -> None:
    """Under jit with a batch sharded over 8 devices the estimate equals the unsharded one."""
    params, x, labels, _, loss = _batch_problem()
    key = jax.random.key(1)
    ref = optx.curvature.hutchinson_diagonal(partial(loss, x=x, labels=labels), params, key)
    # Auto axes: the user's own gradient of x @ W (batch-sharded contraction) needs them.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ls = jax.device_put(labels, NamedSharding(mesh, P("data")))

    @jax.jit
    def estimate(params, xs, ls):
        return optx.curvature.hutchinson_diagonal(lambda p: loss(p, xs, ls), params, key)

    got = estimate(params, xs, ls)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_shard_map_axis_name_averages_hvp_and_gnb() -> None:
    params, x, labels, logits, loss = _batch_problem()
    key = jax.random.key(2)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    ref = optx.curvature.hutchinson_diagonal(partial(loss, x=x, labels=labels), params, key)

    def per_device(params, x, labels):
        hutch = optx.curvature.hutchinson_diagonal(
            lambda p: loss(p, x, labels), params, key, axis_name="data"
        )
        sampled = optx.curvature.sampled_label_loss(lambda p: logits(p, x))
        gnb = optx.curvature.gauss_newton_bartlett_diagonal(sampled, params, key, axis_name="data")
        return hutch, gnb

    sharded = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=(P(), P())
    )
    hutch, gnb = jax.jit(sharded)(params, x, labels)
    # Same probe on every device: the HVP of the global mean loss.
    for a, b in zip(jax.tree.leaves(hutch), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # GNB: per-shard sampled gradients (device index folded into the key),
    # averaged across devices before squaring (DDP semantics).
    shard_grads = [
        jax.grad(optx.curvature.sampled_label_loss(lambda p, d=d: logits(p, x[4 * d : 4 * d + 4])))(
            params, jax.random.fold_in(key, d)
        )
        for d in range(8)
    ]
    g_mean = jax.tree.map(lambda *g: sum(g) / 8, *shard_grads)
    for a, b in zip(jax.tree.leaves(gnb), jax.tree.leaves(g_mean)):
        np.testing.assert_allclose(a, b * b, rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------
# NNX helper
# ----------------------------------------------------------------------------


class _Classifier(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(3, 8, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.hidden(x)))


def test_nnx_curvature_args_closures() -> None:
    model = _Classifier(nnx.Rngs(0))
    x = jnp.ones((5, 3))
    labels = jnp.arange(5) % 4
    batch = (x, labels)

    def loss_fn(m, b):
        return optax.softmax_cross_entropy_with_integer_labels(m(b[0]), b[1]).mean()

    @nnx.jit
    def run(model):
        args = optx.curvature.nnx_curvature_args(
            model, batch, loss_fn, logits_fn=lambda m, b: m(b[0]), key=jax.random.key(0)
        )
        direct = loss_fn(model, batch)
        via = args["loss_fn"](args["full_params"])
        sampled = args["sampled_loss_fn"](args["full_params"], args["key"])
        return direct, via, sampled

    direct, via, sampled = run(model)
    np.testing.assert_allclose(direct, via, rtol=1e-6)
    assert np.isfinite(float(sampled))


def test_sophia_without_params_reads_full_params() -> None:
    """``update(grads, state, None, full_params=p, ...)`` (what optx.curvature_args
    passes): the estimate covers the full tree. It had returned None for every leaf
    (selected by a None params tree), failing inside the non-finite check with a
    structure error; now the step runs and equals the one given ``params``."""
    p = {"w": jnp.linspace(0.5, 1.5, 6).reshape(3, 2), "b": jnp.ones(2)}
    loss = lambda q: sum(jnp.sum(x**4) for x in jax.tree.leaves(q))  # noqa: E731
    g = jax.grad(loss)(p)
    tx = optx.scale_by_sophia(estimator=optx.curvature.Hutchinson())
    extra = {"loss_fn": loss, "full_params": p, "key": jax.random.key(0)}
    want, _ = tx.update(g, tx.init(p), p, **extra)
    got, _ = tx.update(g, tx.init(p), None, **extra)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["sophia_h", "sophia_g", "adahessian"])
def test_integer_leaves_have_no_curvature(name: str) -> None:
    """An int32 leaf in the params (a step counter) gets float0 tangents and a
    zero diagonal (``hvp``, the Gauss–Newton–Bartlett gradient); the float
    leaves' estimates and steps are those of the tree without it. Before,
    ``jax.jvp`` raised on the integer probe."""
    w = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), jnp.float32)
    labels = jnp.asarray([0, 2, 1, 1])

    def logits(p: Any) -> jax.Array:
        return jnp.eye(4, 4) @ p["w"]

    def loss_fn(p: Any) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(logits(p), labels).mean()

    sampled = curvature.sampled_label_loss(logits)
    spec = optx.get_optimizer(name)
    out = []
    for params in ({"w": w, "count": jnp.int32(3)}, {"w": w}):
        tx = spec.build(weight_decay=0.0)
        grads = jax.grad(loss_fn, allow_int=True)(params)
        grads = {k: jnp.zeros((), jnp.int32) if k == "count" else g for k, g in grads.items()}
        ctx = optx.ExtraArgsContext(
            loss_fn=loss_fn,
            params=params,
            grads=grads,
            loss=loss_fn(params),
            key=jax.random.key(1),
            aux={"sampled_loss_fn": sampled},
        )
        state = tx.init(params)
        for _ in range(2):
            u, state = tx.update(grads, state, params, **spec.make_extra_args(ctx))
        out.append(u)
        if "count" in params:
            assert float(u["count"]) == 0.0  # float32 -0.0, as optax.adamw's
    np.testing.assert_array_equal(np.asarray(out[0]["w"]), np.asarray(out[1]["w"]))
    h = curvature.hvp(loss_fn, {"w": w, "count": jnp.int32(3)}, {"w": w, "count": jnp.int32(1)})
    assert h["count"].dtype == jnp.int32 and int(h["count"]) == 0
