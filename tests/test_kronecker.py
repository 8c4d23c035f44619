"""MKOR / MKOR-H: float64 references with explicit inverses of the damped factors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx

# layer -> (kernel shape, bias shape or None, batch B, fan_in, fan_out)
LAYERS = {
    "dense": ((6, 4), (4,), 1, 6, 4),
    "stack": ((3, 4, 2), (3, 2), 3, 4, 2),
    "conv": ((2, 2, 2, 3), None, 1, 8, 3),
}


def _params(r: np.random.Generator) -> dict:
    p = {"embed": {"embedding": r.normal(size=(5, 3))}}
    for name, (ks, bs, *_) in LAYERS.items():
        p[name] = {"kernel": r.normal(size=ks)}
        if bs is not None:
            p[name]["bias"] = r.normal(size=bs)
    return p


def _matrices(name: str, x: np.ndarray) -> np.ndarray:
    _, _, b, fan_in, fan_out = LAYERS[name]
    return x.reshape(b, fan_in, fan_out)


def explicit_refresh(inv: np.ndarray, v: np.ndarray, gamma: float) -> np.ndarray:
    """(P⁻¹ + v vᵀ)⁻¹ with P = γ F⁻¹ + (1 − γ) I, by explicit inversion."""
    n = inv.shape[0]
    p = gamma * inv + (1 - gamma) * np.eye(n)
    return np.linalg.inv(np.linalg.inv(p) + np.outer(v, v))


def reference_mkor(init, grads, captures, *, lr, momentum, inv_freq, gamma, warmup=0):
    params = jax.tree.map(np.array, init)
    buf = jax.tree.map(np.zeros_like, init)
    fac = {}
    for name, (_, bs, b, fan_in, fan_out) in LAYERS.items():
        na = fan_in + (bs is not None)
        fac[name] = [[np.eye(na), np.eye(fan_out), True, True] for _ in range(b)]
    out = []
    for t, g in enumerate(grads):
        d = jax.tree.map(np.array, g)
        refresh = t % inv_freq == 0 or t < warmup
        for name, (_, bs, b, fan_in, fan_out) in LAYERS.items():
            a_vec = captures[t][name][0].reshape(b, fan_in)
            g_vec = captures[t][name][1].reshape(b, fan_out)
            k_mats = _matrices(name, g[name]["kernel"])
            new_k = np.zeros_like(k_mats)
            new_b = np.zeros((b, fan_out))
            for i in range(b):
                A, G, ra, rg = fac[name][i]
                if refresh:
                    a = np.append(a_vec[i], 1.0) if bs is not None else a_vec[i]
                    if ra:  # released code: reset (to I) instead of updating
                        A, ra = np.eye(len(a)), False
                    else:
                        A = explicit_refresh(A, a, gamma)
                        if np.max(np.abs(A)) > 2:  # stabilizer flags both factors
                            ra = rg = True
                    if rg:
                        G, rg = np.eye(fan_out), False
                    else:
                        G = explicit_refresh(G, g_vec[i], gamma)
                        if np.max(np.abs(G)) > 2:
                            ra = rg = True
                    fac[name][i] = [A, G, ra, rg]
                A, G = fac[name][i][0], fac[name][i][1]
                # PyTorch view: M = [∇Wᵀ | ∇b] (out, in+1); Δ = G⁻¹ M A⁻¹.
                m_t = k_mats[i].T
                if bs is not None:
                    m_t = np.concatenate([m_t, g[name]["bias"].reshape(b, fan_out)[i][:, None]], 1)
                delta = G @ m_t @ A
                gn = np.linalg.norm(m_t[:, :fan_in]) + (
                    np.linalg.norm(m_t[:, fan_in]) if bs is not None else 0.0
                )
                dn = np.linalg.norm(delta[:, :fan_in]) + (
                    np.linalg.norm(delta[:, fan_in]) if bs is not None else 0.0
                )
                delta = delta * gn / dn
                new_k[i] = delta[:, :fan_in].T
                if bs is not None:
                    new_b[i] = delta[:, fan_in]
            d[name]["kernel"] = new_k.reshape(g[name]["kernel"].shape)
            if bs is not None:
                d[name]["bias"] = new_b.reshape(g[name]["bias"].shape)
        # torch SGD with momentum (dampening 0, no Nesterov, no decay).
        buf = jax.tree.map(lambda bb, dd: momentum * bb + dd, buf, d)
        params = jax.tree.map(lambda p, bb: p - lr * bb, params, buf)
        out.append(params)
    return out


def _random_case(seed: int, steps: int):
    r = np.random.default_rng(seed)
    init = _params(r)
    grads = [_params(r) for _ in range(steps)]
    captures = []
    for _ in range(steps):
        caps = {}
        for name, (_, _, b, fan_in, fan_out) in LAYERS.items():
            bshape = (b,) if name == "stack" else ()
            caps[name] = (r.normal(size=(*bshape, fan_in)), r.normal(size=(*bshape, fan_out)))
        captures.append(caps)
    return init, grads, captures


@pytest.mark.parametrize("warmup", [0, 3])
def test_mkor_matches_explicit_inverse_reference(warmup: int) -> None:
    steps, lr, mom, inv_freq = 6, 0.1, 0.9, 2
    init, grads, captures = _random_case(0, steps)
    with jax.enable_x64(True):
        tx = optx.mkor(
            lr,
            momentum=mom,
            update_interval=inv_freq,
            warmup_steps=warmup,
            factor_dtype=jnp.float64,
            statistics="captures",
        )
        params = jax.tree.map(jnp.asarray, init)
        state = tx.init(params)
        step = jax.jit(lambda g, s, p, c: tx.update(g, s, p, captures=c))
        got = []
        for t in range(steps):
            caps = {
                f"{n}/kernel": optx.curvature.LayerStatistics(jnp.asarray(a), jnp.asarray(g))
                for n, (a, g) in captures[t].items()
            }
            u, state = step(jax.tree.map(jnp.asarray, grads[t]), state, params, caps)
            params = optax.apply_updates(params, u)
            got.append(params)
    ref = reference_mkor(
        init, grads, captures, lr=lr, momentum=mom, inv_freq=inv_freq, gamma=0.95, warmup=warmup
    )
    for t in range(steps):
        for a, b in zip(jax.tree.leaves(got[t]), jax.tree.leaves(ref[t])):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-9, atol=1e-10)


def test_sherman_morrison_is_the_explicit_inverse() -> None:
    r = np.random.default_rng(2)
    q = r.normal(size=(5, 5))
    f = q @ q.T / 5 + np.eye(5) * 0.5
    v = r.normal(size=5)
    with jax.enable_x64(True):
        got = optx.linalg.sherman_morrison_update(jnp.asarray(f), jnp.asarray(v), 0.9)
    np.testing.assert_allclose(np.asarray(got), explicit_refresh(f, v, 0.9), rtol=1e-10)


def test_norm_based_stabilizer_resets_in_the_released_order() -> None:
    """A blow-up of A⁻¹ flags both factors; G⁻¹ is reset in the same refresh, A⁻¹ at the next."""
    params = {"dense": {"kernel": jnp.ones((3, 2))}}
    tx = optx.scale_by_mkor(update_interval=1, factor_dtype=jnp.float32, statistics="captures")
    state = tx.init(params)
    big = optx.curvature.MKORLayerState(
        a_inv=3.0 * jnp.eye(3)[None],  # P = 0.95·3I + 0.05I = 2.9I: SM keeps entries > 2
        g_inv=0.5 * jnp.eye(2)[None],
        reset_a=jnp.zeros((1,), bool),
        reset_g=jnp.zeros((1,), bool),
    )
    # The per-layer fields mirror the parameter tree (the kernel's leaf).
    state = state._replace(
        a_inv={"dense": {"kernel": big.a_inv}},
        g_inv={"dense": {"kernel": big.g_inv}},
        reset_a={"dense": {"kernel": big.reset_a}},
        reset_g={"dense": {"kernel": big.reset_g}},
        count=jnp.asarray(1, jnp.int32),
    )

    def layer(s: optx.ScaleByMKORState) -> optx.curvature.MKORLayerState:
        return optx.curvature.MKORLayerState(
            *(t["dense"]["kernel"] for t in (s.a_inv, s.g_inv, s.reset_a, s.reset_g))
        )

    caps = {"dense/kernel": optx.curvature.LayerStatistics(jnp.array([0.1, 0.0, 0.0]), jnp.ones(2))}
    _, s1 = tx.update(params, state, captures=caps)
    l1 = layer(s1)
    assert float(jnp.max(jnp.abs(l1.a_inv))) > 2
    np.testing.assert_array_equal(l1.g_inv[0], np.eye(2))  # reset, not updated
    assert bool(l1.reset_a[0]) and not bool(l1.reset_g[0])
    _, s2 = tx.update(params, s1, captures=caps)
    l2 = layer(s2)
    np.testing.assert_array_equal(l2.a_inv[0], np.eye(3))
    assert not bool(l2.reset_a[0])
    # 'blend' resets to (1 − ζ)F⁻¹ + ζI instead.
    tx_b = optx.scale_by_mkor(
        update_interval=1,
        factor_dtype=jnp.float32,
        reset_mode="blend",
        stabilization_factor=0.1,
        statistics="captures",
    )
    _, s2b = tx_b.update(params, s1, captures=caps)
    np.testing.assert_allclose(layer(s2b).a_inv[0], 0.9 * l1.a_inv[0] + 0.1 * np.eye(3), rtol=1e-6)


def test_first_refresh_only_resets_and_zero_gradients_stay_raw() -> None:
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    tx = optx.scale_by_mkor(update_interval=1)
    state = tx.init(params)
    u, state = tx.update(params, state)
    np.testing.assert_allclose(u["dense"]["kernel"], params["dense"]["kernel"])  # factors = I
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, _ = tx.update(zeros, state)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))


# ----------------------------------------------------------------------------
# Statistics derived from gradients
# ----------------------------------------------------------------------------


def test_statistics_from_rank_one_gradients_are_exact() -> None:
    a = jnp.array([1.0, -2.0, 0.5])
    g = jnp.array([0.3, 0.7])
    # With a bias, ḡ = ∇b and ā = ∇W∇b/‖∇b‖² recover the rank-1 model exactly.
    a_hat, g_hat = optx.curvature.statistics_from_gradient(jnp.outer(a, g), g)
    np.testing.assert_allclose(a_hat, a, rtol=1e-5)
    np.testing.assert_allclose(g_hat, g, rtol=1e-6)
    # Without one the balanced pair reproduces the outer product.
    a_hat, g_hat = optx.curvature.statistics_from_gradient(jnp.outer(a, g), None)
    np.testing.assert_allclose(jnp.outer(a_hat, g_hat), jnp.outer(a, g), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(a_hat), jnp.linalg.norm(g_hat), rtol=1e-4)


def test_gradient_statistics_cover_the_router_layers() -> None:
    r = np.random.default_rng(0)
    grads = jax.tree.map(jnp.asarray, _params(r))
    caps = optx.curvature.mkor_statistics_from_gradients(grads)
    assert sorted(caps) == ["conv/kernel", "dense/kernel", "stack/kernel"]
    assert caps["stack/kernel"].inputs.shape == (3, 4)
    assert caps["stack/kernel"].output_grads.shape == (3, 2)
    assert caps["conv/kernel"].inputs.shape == (8,)
    # statistics='auto' without captures is the same as passing these captures.
    tx = optx.scale_by_mkor(update_interval=1, factor_dtype=jnp.float32)
    s = tx.init(grads)
    _, s = tx.update(grads, s)  # first refresh: reset only
    u_auto, _ = tx.update(grads, s)
    u_caps, _ = tx.update(grads, s, captures=caps)
    for x, y in zip(jax.tree.leaves(u_auto), jax.tree.leaves(u_caps)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_heads_are_layers_and_embeddings_are_not() -> None:
    router = optx.curvature.mkor_router()
    assert router.group("head/kernel", jnp.zeros((4, 3))) == "matrix"
    assert router.group("lm_head/kernel", jnp.zeros((4, 3))) == "matrix"
    assert router.group("embed/embedding", jnp.zeros((4, 3))) == "fallback"
    assert router.group("dense/bias", jnp.zeros((3,))) == "fallback"


# ----------------------------------------------------------------------------
# MKOR-H
# ----------------------------------------------------------------------------


def test_mkor_h_switches_when_the_loss_rate_drops() -> None:
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    tx = optx.scale_by_mkor(update_interval=1, hybrid=True, switch_window=2, switch_threshold=0.5)
    state = tx.init(params)
    # Window means: 10, 5 (rate 0.5), 2.5 (0.5), 2.4 (0.04 < 0.5·0.5) -> switch at step 7.
    losses = [10, 10, 5, 5, 2.5, 2.5, 2.4, 2.4, 1.0, 1.0]
    second = []
    for loss in losses:
        u, state = tx.update(grads, state, loss=jnp.asarray(loss))
        second.append(bool(state.switch.second_order))
    assert second == [True] * 7 + [False] * 3
    assert int(state.switch.switched_at) == 7
    # After the switch: raw gradients pass through and the factors are frozen.
    frozen = (state.a_inv, state.g_inv, state.reset_a, state.reset_g)
    u, state = tx.update(grads, state, loss=jnp.asarray(0.5))
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves((state.a_inv, state.g_inv, state.reset_a, state.reset_g)),
        jax.tree.leaves(frozen),
    ):
        np.testing.assert_array_equal(a, b)


def test_mkor_h_loss_statistics_in_float64_under_x64() -> None:
    """Under x64 the switch's loss statistics are float64 (the widest enabled
    float, as other scalar statistics): a float64 loss whose window means
    differ below float32 resolution still gives the rate. Before, they were
    float32 and the loss was cast down (the rates 0, the switch never armed)."""
    with jax.enable_x64(True):
        params = {"dense": {"kernel": jnp.ones((3, 2), jnp.float64)}}
        tx = optx.scale_by_mkor(update_interval=1, hybrid=True, switch_window=1)
        state = tx.init(params)
        for f in (state.switch.window_loss, state.switch.previous_mean, state.switch.best_rate):
            assert f.dtype == jnp.float64
        for loss in (1.0, 1.0 - 1e-9):
            _, state = tx.update(params, state, loss=jnp.asarray(loss, jnp.float64))
        assert float(state.switch.best_rate) == pytest.approx(1e-9, rel=1e-6)


def test_mkor_h_needs_the_loss() -> None:
    params = {"dense": {"kernel": jnp.ones((3, 2))}}
    tx = optx.mkor_h(0.1)
    with pytest.raises(TypeError, match="loss"):
        tx.update(params, tx.init(params), params)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        optx.scale_by_mkor(update_interval=0)
    with pytest.raises(TypeError):
        optx.scale_by_mkor(update_interval=2.5)
    with pytest.raises(ValueError):
        optx.scale_by_mkor(reset_mode="zero")
    with pytest.raises(ValueError):
        optx.scale_by_mkor(statistics="hooks")
    with pytest.raises(TypeError):
        optx.scale_by_mkor(factor_dtype=jnp.int32)
    with pytest.raises(ValueError):
        optx.scale_by_mkor(factor_decay=1.5)
    with pytest.raises(TypeError):
        optx.mkor(0.1, inner=optax.adam)
    with pytest.raises(ValueError):
        optx.mkor(0.1, inner="lamb")
    params = {"dense": {"kernel": jnp.ones((3, 2))}}
    tx = optx.scale_by_mkor(statistics="captures")
    with pytest.raises(TypeError, match="captures"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="no capture"):
        tx.update(params, tx.init(params), captures={})
    bad = {"dense/kernel": optx.curvature.LayerStatistics(jnp.ones(4), jnp.ones(2))}
    with pytest.raises(ValueError, match="shapes"):
        tx.update(params, tx.init(params), captures=bad)


def test_inner_optimizers() -> None:
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    for inner in ("sgd", "adamw", optax.scale_by_lion()):
        tx = optx.mkor(1e-2, inner=inner, update_interval=1)
        u, _ = tx.update(params, tx.init(params), params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
    # AdamW inner: the first step of Adam is -lr·sign(Δ) (no decay on these leaves).
    tx = optx.mkor(1e-2, inner="adamw", weight_decay=0.0, update_interval=1)
    u, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_allclose(u["dense"]["bias"], -1e-2 * np.ones(2), rtol=1e-4)


def test_mkor_with_injected_hyperparameters_under_an_explicit_mesh() -> None:
    """Traced hyper-parameters and sharded kernels: same numbers as on one device."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    r = np.random.default_rng(5)
    params = {
        "hidden": {
            "kernel": jnp.asarray(r.normal(size=(8, 16)), jnp.float32),
            "bias": jnp.asarray(r.normal(size=(16,)), jnp.float32),
        }
    }
    grads = jax.tree.map(lambda x: 0.1 * x, params)
    static = optx.get_optimizer("mkor").all_static_args()
    tx = optax.inject_hyperparams(optx.mkor, static_args=static)(
        learning_rate=0.1, factor_decay=0.9, clip_value=50.0, update_interval=1
    )
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    state = tx.init(params)
    for _ in range(2):
        ref, state = step(grads, state, params)
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        specs = {"hidden": {"kernel": P("data", "model"), "bias": P("model")}}
        put = lambda t: jax.tree.map(  # noqa: E731
            lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs
        )
        sp, sg = put(params), put(grads)
        s0 = tx.init(sp)
        _, s1 = step(sg, s0, sp)
        u, s2 = step(sg, s1, sp)
        assert jax.tree.map(jax.typeof, s2) == jax.tree.map(jax.typeof, s0)
        assert jax.typeof(u["hidden"]["kernel"]).sharding.spec == P("data", "model")
        # Factor rows sharded over the whole mesh where it divides them (G⁻¹: 16
        # rows over 8 devices), replicated where not (A⁻¹: 8 inputs + bias).
        mk = next(
            x
            for x in jax.tree.leaves(s2, is_leaf=lambda x: hasattr(x, "g_inv"))
            if hasattr(x, "g_inv")
        )
        g_spec = jax.typeof(mk.g_inv["hidden"]["kernel"]).sharding.spec
        a_spec = jax.typeof(mk.a_inv["hidden"]["kernel"]).sharding.spec
        assert tuple(g_spec) == (None, ("data", "model"), None), g_spec
        assert all(e is None for e in a_spec), a_spec
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_init_state_leaves_are_distinct_buffers() -> None:
    """A train step donates the state: no two state leaves may share a buffer."""
    params = {"a": {"kernel": jnp.ones((3, 2))}, "b": {"kernel": jnp.ones((3, 2))}}
    leaves = jax.tree.leaves(optx.mkor(0.1).init(params))
    assert len({id(x) for x in leaves}) == len(leaves)
    step = jax.jit(
        lambda g, s: optx.scale_by_mkor(update_interval=1).update(g, s), donate_argnums=1
    )
    state = optx.scale_by_mkor(update_interval=1).init(params)
    for _ in range(2):  # would raise "donate the same buffer twice"
        _, state = step(params, state)


def test_capture_of_a_conv_routed_as_dense_names_the_router() -> None:
    """An NNX conv named ``c1`` is routed by name as stacked dense layers
    (``[guessed]``), so its capture does not fit: the error says which layout
    the router gave and that ``optx.router_for(model, x)`` routes it as the
    conv it is; with that router the step runs."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.c1 = nnx.Conv(3, 5, (3, 3), rngs=rngs)
            self.head = nnx.Linear(5, 2, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.head(jnp.tanh(self.c1(x)).mean((1, 2)))

    x = jnp.ones((2, 6, 6, 3))

    def loss(m: Net, x: jax.Array) -> jax.Array:
        return jnp.mean(m(x) ** 2)

    for router in (None, "model"):
        model = Net(nnx.Rngs(0))
        kwargs = {} if router is None else {"router": optx.router_for(model, x)}
        optimizer = nnx.Optimizer(model, optx.mkor(0.05, **kwargs), wrt=nnx.Param)
        _, grads, captures = optx.curvature.value_grad_and_captures(loss, model, x)
        if router is None:
            with pytest.raises(ValueError, match=r"c1/kernel.*router_for\(model, x\)"):
                optimizer.update(model, grads, captures=captures)
        else:
            optimizer.update(model, grads, captures=captures)


@pytest.mark.parametrize("clip_value", [0.5, 100.0])
def test_bias_input_is_clamped_with_the_statistics(clip_value: float) -> None:
    """The official ``AHandler`` appends the bias input 1 to ``a`` and then clamps to
    ``±clip_value``: below 1 the bias input is ``clip_value``. After the first refresh
    (a reset to I), the second is one Sherman–Morrison step of I with
    ``v = clip([ā, 1])``: ``A⁻¹ = I − vvᵀ / (1 + vᵀv)``."""
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    a = jnp.asarray([0.2, -0.8, 1.7])
    g = jnp.asarray([0.3, -2.0])
    captures = {"dense/kernel": optx.curvature.LayerStatistics(a, g)}
    tx = optx.mkor(
        0.1, update_interval=1, clip_value=clip_value, factor_dtype=jnp.float32, weight_decay=0.0
    )
    state = tx.init(params)
    for _ in range(2):
        _, state = tx.update(params, state, params, captures=captures)
    mk = next(
        x
        for x in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "a_inv"))
        if hasattr(x, "a_inv")
    )
    v = np.clip(np.append(np.asarray(a), 1.0), -clip_value, clip_value)
    want = np.eye(4) - np.outer(v, v) / (1.0 + v @ v)
    np.testing.assert_allclose(np.asarray(mk.a_inv["dense"]["kernel"])[0], want, atol=1e-6)


def test_mkor_h_rate_is_relative_to_the_previous_window_mean() -> None:
    """``r_k = (L̄_{k−1} − L̄_k)/|L̄_{k−1}|``: a loss halving every window has the constant
    rate ½ (so r* = ½ and no switch even at threshold 0.9), although its absolute decrease
    shrinks 5, 2.5, 1.25."""
    params = {"dense": {"kernel": jnp.ones((3, 2))}}
    tx = optx.scale_by_mkor(update_interval=1, hybrid=True, switch_window=1, switch_threshold=0.9)
    state = tx.init(params)
    for loss in (10.0, 5.0, 2.5, 1.25):
        _, state = tx.update(params, state, loss=jnp.asarray(loss))
    assert float(state.switch.best_rate) == pytest.approx(0.5, rel=1e-6)
    assert bool(state.switch.second_order)


def test_mkor_h_switch_rule_is_strict() -> None:
    """The switch needs ``r_k < switch_threshold · r*`` (strict): window rates ½ (r* = ½)
    then exactly ¼ = 0.5·½ keep preconditioning; the next rate, ⅙, switches."""
    params = {"dense": {"kernel": jnp.ones((3, 2))}}
    tx = optx.scale_by_mkor(
        update_interval=1, hybrid=True, switch_window=1, switch_threshold=0.5, switch_min_steps=0
    )
    state = tx.init(params)
    second = []
    for loss in (16.0, 8.0, 6.0, 5.0):  # rates: -, 1/2, 1/4, 1/6 (exact in float32)
        _, state = tx.update(params, state, loss=jnp.asarray(loss))
        second.append(bool(state.switch.second_order))
    assert second == [True, True, True, False]
