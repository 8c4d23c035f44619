"""M-FAC: explicit Woodbury (d ≤ 500) float64 references, blockwise, state memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optx

SHAPES = {"dense": (6, 4), "stack": (3, 4, 2), "conv": (2, 2, 2, 3), "bias": (4,)}


def _tree(d):
    return {
        "dense": {"kernel": d["dense"]},
        "stack": {"kernel": d["stack"]},
        "conv": {"kernel": d["conv"]},
        "bias": d["bias"],
    }


def _grads(seed: int, steps: int):
    r = np.random.default_rng(seed)
    return [{k: r.normal(size=s) for k, s in SHAPES.items()} for _ in range(steps)]


def woodbury_inverse(buffer: np.ndarray, damp: float) -> np.ndarray:
    """The repo's test oracle (HInvSlow): H = (λI + (1/m) Σ g gᵀ)⁻¹ by sequential rank-1 updates."""
    m, d = buffer.shape
    h = np.eye(d) / damp
    for g in buffer:
        hg = h @ g
        h = h - np.outer(hg, hg) / (m + g @ hg)
    return h


def _order(d: dict) -> np.ndarray:
    # ravel_pytree order: sorted keys -> bias, conv, dense, stack.
    return np.concatenate([d[k].ravel() for k in ("bias", "conv", "dense", "stack")])


def test_global_mfac_matches_explicit_woodbury() -> None:
    m, damp, steps = 4, 1e-3, 7  # the ring buffer wraps around
    grads = _grads(0, steps)
    with jax.enable_x64(True):
        tx = optx.scale_by_mfac(m, damp, compute_dtype=jnp.float64)
        params = _tree({k: jnp.zeros(s) for k, s in SHAPES.items()})
        state = tx.init(params)
        update = jax.jit(tx.update)
        got = []
        for g in grads:
            u, state = update(_tree({k: jnp.asarray(v) for k, v in g.items()}), state)
            got.append(
                {
                    "dense": u["dense"]["kernel"],
                    "stack": u["stack"]["kernel"],
                    "conv": u["conv"]["kernel"],
                    "bias": u["bias"],
                }
            )
    d = sum(int(np.prod(s)) for s in SHAPES.values())
    assert d <= 500
    buffer = np.zeros((m, d))
    for t, g in enumerate(grads):
        flat = _order(g)
        buffer[t % m] = flat
        expected = woodbury_inverse(buffer, damp) @ flat
        np.testing.assert_allclose(
            _order({k: np.asarray(v) for k, v in got[t].items()}), expected, rtol=1e-8, atol=1e-8
        )


def test_blockwise_mfac_matches_per_matrix_woodbury() -> None:
    m, damp, steps = 3, 1e-2, 5
    grads = _grads(1, steps)
    with jax.enable_x64(True):
        tx = optx.scale_by_mfac(m, damp, blockwise=True, compute_dtype=jnp.float64)
        params = _tree({k: jnp.zeros(s) for k, s in SHAPES.items()})
        state = tx.init(params)
        update = jax.jit(tx.update)
        outs = []
        for g in grads:
            u, state = update(_tree({k: jnp.asarray(v) for k, v in g.items()}), state)
            outs.append(u)

    # Blocks: each (fan_in, fan_out) matrix of the matrix view; the bias is one block.
    def blocks(name: str, x: np.ndarray) -> np.ndarray:
        if name == "bias":
            return x.reshape(1, -1)
        if name == "conv":  # (kh, kw, in, out): fan-in (kh, kw, in)
            return x.reshape(1, -1)
        return x.reshape(-1, x.shape[-2] * x.shape[-1])  # dense (1 block), stack (L blocks)

    buffers = {k: None for k in SHAPES}
    for t, g in enumerate(grads):
        got = {
            "dense": outs[t]["dense"]["kernel"],
            "stack": outs[t]["stack"]["kernel"],
            "conv": outs[t]["conv"]["kernel"],
            "bias": outs[t]["bias"],
        }
        for name in SHAPES:
            b = blocks(name, g[name])
            if buffers[name] is None:
                buffers[name] = np.zeros((b.shape[0], m, b.shape[1]))
            buffers[name][:, t % m] = b
            expected = np.stack(
                [woodbury_inverse(buffers[name][i], damp) @ b[i] for i in range(b.shape[0])]
            ).reshape(g[name].shape)
            np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=1e-8, atol=1e-8)


def test_state_memory_is_m_times_d() -> None:
    params = _tree({k: jnp.zeros(s) for k, s in SHAPES.items()})
    d = optx.tree_utils.param_count(params)
    m = 16
    tx = optx.scale_by_mfac(m)
    expected = m * d * 4 + m * m * 4 + 4  # buffer + Gram (f32) + int32 count
    assert (
        optx.tree_utils.state_bytes(tx, params)
        == expected
        == optx.tree_utils.mfac_state_bytes(d, m)
    )
    # Blockwise: the same m·d buffer, one m×m Gram per block (1 + 3 + 1 + 1 = 6 blocks).
    tx_b = optx.scale_by_mfac(m, blockwise=True)
    assert optx.tree_utils.state_bytes(tx_b, params) == m * d * 4 + 6 * m * m * 4 + 4
    # The alias adds the momentum (d floats) and the counters of its chain.
    alias = optx.mfac(1e-3, num_grads=m)
    assert optx.tree_utils.state_bytes(alias, params) == expected + d * 4 + 4


def test_bf16_params_keep_an_f32_buffer() -> None:
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    tx = optx.scale_by_mfac(4)
    state = tx.init(params)
    assert state.grads.dtype == jnp.float32
    u, state2 = tx.update(params, state)
    assert u["w"].dtype == jnp.bfloat16
    assert state2.grads.dtype == jnp.float32


def test_zero_initialised_buffer_gives_normalised_first_step() -> None:
    """With one gradient in the buffer F⁻¹g = m g / (mλ + ‖g‖²) (official quirk)."""
    g = {"w": jnp.array([3.0, 4.0])}
    m, damp = 8, 1e-5
    u, _ = optx.scale_by_mfac(m, damp).update(g, optx.scale_by_mfac(m, damp).init(g))
    np.testing.assert_allclose(u["w"], m * g["w"] / (m * damp + 25.0), rtol=1e-5)


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        optx.scale_by_mfac(0)
    with pytest.raises(TypeError):
        optx.scale_by_mfac(8.0)
    with pytest.raises(ValueError):
        optx.scale_by_mfac(8, damp=-1.0)


def test_blockwise_and_global_under_an_explicit_mesh() -> None:
    """Sharded leaves: same numbers as on one device, state sharding stable."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    r = np.random.default_rng(3)
    params = {
        "hidden": {"kernel": jnp.asarray(r.normal(size=(8, 16)), jnp.float32)},
        "bias": jnp.asarray(r.normal(size=(16,)), jnp.float32),
    }
    grads = jax.tree.map(lambda x: 0.1 * x + 0.01, params)
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    specs = {"hidden": {"kernel": P("data", "model")}, "bias": P()}

    def put(tree):
        return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)

    for blockwise in (False, True):
        tx = optx.scale_by_mfac(4, 1e-2, blockwise=blockwise)
        ref, _ = tx.update(grads, tx.init(params))
        with jax.set_mesh(mesh):
            sp, sg = put(params), put(grads)
            state0 = tx.init(sp)
            u, state1 = jax.jit(tx.update)(sg, state0)
            assert jax.tree.map(jax.typeof, state1) == jax.tree.map(jax.typeof, state0)
            assert jax.typeof(u["hidden"]["kernel"]).sharding.spec == P("data", "model")
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_defaults_are_the_official_m_and_damp() -> None:
    """``scale_by_mfac()`` keeps m = 1024 gradients with λ = 1e-5 (the official defaults):
    the first step is ``m g / (mλ + ‖g‖²)`` with those values."""
    g = {"w": jnp.array([3.0, 4.0])}
    tx = optx.scale_by_mfac()
    state = tx.init(g)
    assert state.grads.shape == (1024, 2)
    u, _ = tx.update(g, state)
    m, damp = 1024, 1e-5
    np.testing.assert_allclose(u["w"], m * np.array([3.0, 4.0]) / (m * damp + 25.0), rtol=1e-6)
