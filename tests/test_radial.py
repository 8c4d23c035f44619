"""optx._src.radial (AdamP/SGDP projection) against a float64 NumPy reference.

The reference applies the official clovaai/AdamP rule to PyTorch-layout
``(out, fan_in)`` matrices: the channel is the output neuron (dim 0 there),
i.e. the *last* axis of a Flax kernel; a stacked ``(L, in, out)`` leaf is L
matrices tested separately.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from optx._src import radial
from tests.signatures import defaults

# The "-wide" cases have a fan-in that is a multiple of 8 (>= 16), so on CPU
# their channel sums take the one-pass blocked reduce of sums_over_axes.
SHAPES = {
    "dense": (6, 4),
    "stacked": (3, 6, 4),
    "conv": (3, 3, 2, 4),
    "dense-wide": (32, 4),
    "stacked-wide": (3, 16, 4),
    "conv-wide": (2, 2, 4, 4),
}
KEYS = {"dense": "hidden", "stacked": "stack", "conv": "conv"}


def _family(kind: str) -> str:
    return kind.split("-")[0]


def _to_torch(x: np.ndarray, kind: str) -> np.ndarray:
    """Flax kernel -> stack of PyTorch (out, fan_in) matrices."""
    kind = _family(kind)
    if kind == "dense":
        return x.T[None]
    if kind == "stacked":
        return np.swapaxes(x, 1, 2)
    kh, kw, cin, cout = x.shape
    return x.reshape(kh * kw * cin, cout).T[None]


def _from_torch(m: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    kind = _family(kind)
    if kind == "dense":
        return m[0].T
    if kind == "stacked":
        return np.swapaxes(m, 1, 2)
    return m[0].T.reshape(shape)


def _project_ref(g, w, d, delta=0.1, eps=1e-8):
    """Official AdamP._projection on one PyTorch matrix: (d, wd_ratio flag, branch)."""
    for branch, view in ((1, lambda x: x.reshape(x.shape[0], -1)), (2, lambda x: x.reshape(1, -1))):
        gv, wv = view(g), view(w)
        cos = np.abs(
            np.sum(
                gv
                / np.maximum(np.linalg.norm(gv, axis=1, keepdims=True), eps)
                * wv
                / np.maximum(np.linalg.norm(wv, axis=1, keepdims=True), eps),
                axis=1,
            )
        )
        if cos.max() < delta / np.sqrt(wv.shape[1]):
            norms = np.linalg.norm(wv, axis=1, keepdims=True) + eps
            w_hat = (wv / norms).reshape(w.shape)
            d = d - w_hat * np.sum(view(w_hat * d), axis=1).reshape(-1, *([1] * (w.ndim - 1)))
            return d, branch
    return d, 0


def _case(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w, g, d) Flax tensors whose matrices take channel / layer / no projection.

    Matrix b of a stack cycles through: channel-orthogonal gradient (branch 1),
    a gradient ±w per row with cancelling row norms (branch 2: every row has
    |cos| = 1 but the layer cosine is 0), and a random gradient (branch 0).
    """
    r = np.random.default_rng(seed)
    shape = SHAPES[kind]
    w_t = _to_torch(r.normal(size=shape), kind)  # (B, out, fan_in)
    g_t = np.empty_like(w_t)
    for b in range(w_t.shape[0]):
        w = w_t[b]
        family = _family(kind)
        kind_b = b % 3 if family == "stacked" else {"dense": 0, "conv": 1}[family]
        if kind_b == 0:
            g = r.normal(size=w.shape)
            g -= np.sum(g * w, axis=1, keepdims=True) / np.sum(w * w, axis=1, keepdims=True) * w
        elif kind_b == 1:
            w[1::2] = w[0::2][:, ::-1]  # rows in pairs of equal norm
            sign = np.where(np.arange(w.shape[0]) % 2 == 0, 1.0, -1.0)[:, None]
            g = sign * w
        else:
            g = r.normal(size=w.shape) + w
        g_t[b] = g
    d_t = r.normal(size=w_t.shape)
    return (
        _from_torch(w_t, kind, shape),
        _from_torch(g_t, kind, shape),
        _from_torch(d_t, kind, shape),
    )


@pytest.mark.parametrize("kind", list(SHAPES))
def test_radial_projection_matches_official_rule(kind: str) -> None:
    w, g, d = _case(kind)
    lay = optx.default_router().layout(f"{KEYS[_family(kind)]}/kernel", w).resolve(w.shape)
    got, branch = optx.constraints.radial_projection(
        jnp.asarray(g, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(d, jnp.float32), lay
    )
    w_t, g_t, d_t = (_to_torch(x, kind) for x in (w, g, d))
    ref_t, ref_branch = [], []
    for b in range(w_t.shape[0]):
        db, br = _project_ref(g_t[b], w_t[b], d_t[b])
        ref_t.append(db)
        ref_branch.append(br)
    np.testing.assert_allclose(
        np.asarray(got, np.float64), _from_torch(np.stack(ref_t), kind, w.shape), atol=2e-6
    )
    np.testing.assert_array_equal(np.asarray(branch).ravel(), ref_branch)
    if _family(kind) == "stacked":
        assert ref_branch == [1, 2, 0], "the test case should exercise every branch"


def test_projection_removes_radial_component_per_channel() -> None:
    w, g, d = _case("dense")
    lay = optx.MatrixLayout().resolve(w.shape)
    got, branch = optx.constraints.radial_projection(
        jnp.asarray(g), jnp.asarray(w), jnp.asarray(d), lay
    )
    assert int(branch[0, 0]) == 1
    # Each output column of the Flax kernel is orthogonal to its weight column.
    np.testing.assert_allclose(np.sum(np.asarray(got) * w, axis=0), 0.0, atol=1e-5)


def _adam_ref(grads, b1=0.9, b2=0.999, eps=1e-8):
    m = np.zeros_like(grads[0])
    v = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out.append(m / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps) / (1 - b1**t))
    return out


@pytest.mark.parametrize("kind", list(SHAPES))
def test_project_out_radial_wrapping_adam_is_adamp(kind: str) -> None:
    """Several steps of chain(project_out_radial(adam, λ), lr) = official AdamP updates."""
    w, g0, _ = _case(kind, seed=1)
    r = np.random.default_rng(5)
    grads = [g0 * (1 + 0.1 * t) + 0.01 * r.normal(size=w.shape) for t in range(4)]
    lr, wd = 1e-2, 0.1
    tx = optax.chain(
        optx.constraints.project_out_radial(optax.scale_by_adam(), weight_decay=wd),
        optax.scale_by_learning_rate(lr),
    )
    key = KEYS[_family(kind)]
    params = {key: {"kernel": jnp.asarray(w, jnp.float32)}}
    state = tx.init(params)
    update = jax.jit(tx.update)
    directions = _adam_ref(grads)
    w64 = w.copy()
    for g, dirn in zip(grads, directions):
        u, state = update({key: {"kernel": jnp.asarray(g, jnp.float32)}}, state, params)
        params = optax.apply_updates(params, u)
        w_t, g_t, d_t = (_to_torch(x, kind) for x in (w64, g, dirn))
        new_t = []
        for b in range(w_t.shape[0]):
            db, br = _project_ref(g_t[b], w_t[b], d_t[b])
            ratio = 0.1 if br else 1.0
            new_t.append(w_t[b] * (1 - lr * wd * ratio) - lr * db)
        w64 = _from_torch(np.stack(new_t), kind, w.shape)
        np.testing.assert_allclose(np.asarray(params[key]["kernel"]), w64, rtol=1e-5, atol=1e-6)


def test_leaves_without_layout_are_not_projected() -> None:
    """Biases (no layout) get the plain direction and the full decay."""
    tx = optx.constraints.project_out_radial(optax.identity(), weight_decay=0.5)
    params = {"bias": jnp.array([1.0, -2.0]), "embed": {"embedding": jnp.ones((3, 2))}}
    g = {"bias": jnp.array([2.0, 1.0]), "embed": {"embedding": jnp.eye(3, 2)}}
    u, s = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(u["bias"], g["bias"] + 0.5 * params["bias"])
    np.testing.assert_allclose(u["embed"]["embedding"], g["embed"]["embedding"] + 0.5)
    assert isinstance(s.branch["bias"], optax.MaskedNode)


def test_weight_decay_schedule_uses_own_count() -> None:
    tx = optx.constraints.project_out_radial(optax.identity(), weight_decay=lambda c: 0.1 * (c + 1))
    params = {"bias": jnp.ones(2)}
    s = tx.init(params)
    u1, s = tx.update({"bias": jnp.zeros(2)}, s, params)
    u2, s = tx.update({"bias": jnp.zeros(2)}, s, params)
    np.testing.assert_allclose(u1["bias"], 0.1)
    np.testing.assert_allclose(u2["bias"], 0.2)


def test_project_out_radial_needs_params_and_valid_args() -> None:
    tx = optx.constraints.project_out_radial(optax.identity())
    params = {"hidden": {"kernel": jnp.ones((3, 2))}}
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError):
        optx.constraints.project_out_radial(optax.identity(), delta=-0.1)
    with pytest.raises(ValueError):
        optx.constraints.project_out_radial(optax.identity(), weight_decay=-1.0)


def test_projection_keeps_sharding_under_explicit_mesh() -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    w, g, _ = _case("dense")
    w8 = np.tile(w, (2, 2))[:8, :8]
    g8 = np.tile(g, (2, 2))[:8, :8]
    tx = optx.constraints.project_out_radial(optax.scale_by_adam(), weight_decay=0.1)
    params = {"hidden": {"kernel": jnp.asarray(w8, jnp.float32)}}
    grads = {"hidden": {"kernel": jnp.asarray(g8, jnp.float32)}}
    ref, _ = tx.update(grads, tx.init(params), params)
    with jax.set_mesh(mesh):
        sh = NamedSharding(mesh, P("data", "model"))
        ps = jax.tree.map(lambda x: jax.device_put(x, sh), params)
        gs = jax.tree.map(lambda x: jax.device_put(x, sh), grads)
        s0 = tx.init(ps)
        u, s1 = jax.jit(tx.update)(gs, s0, ps)
        assert jax.typeof(u["hidden"]["kernel"]).sharding.spec == P("data", "model")
        assert jax.tree.map(jax.typeof, s1) == jax.tree.map(jax.typeof, s0)
    np.testing.assert_allclose(
        np.asarray(u["hidden"]["kernel"]), ref["hidden"]["kernel"], rtol=1e-5
    )


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((32, 6), (0,)),  # Dense, blocked on CPU
        ((16, 3, 5), (0,)),  # attention input, blocked
        ((2, 4, 24), (0, 1)),  # attention output, blocked
        ((3, 40, 5), (1,)),  # stacked Dense, blocked
        ((2, 2, 4, 3), (0, 1, 2)),  # conv, blocked
        ((12, 5), (0,)),  # fan-in not a multiple of 8: jnp.sum
        ((8, 5), (0,)),  # fan-in below 2 blocks: jnp.sum
        ((16, 3, 8), (0, 2)),  # non-consecutive axes: jnp.sum
    ],
)
def test_sums_over_axes_matches_float64_sums(shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
    r = np.random.default_rng(3)
    xs = tuple(r.normal(size=shape) for _ in range(3))
    got = jax.jit(lambda *xs: radial.sums_over_axes(xs, axes))(
        *(jnp.asarray(x, jnp.float32) for x in xs)
    )
    assert len(got) == 3
    for x, y in zip(xs, got):
        assert y.shape == tuple(1 if i in axes else n for i, n in enumerate(shape))
        np.testing.assert_allclose(
            np.asarray(y), np.sum(x, axis=axes, keepdims=True), rtol=1e-5, atol=1e-5
        )


def test_blocked_sums_is_one_variadic_reduce_on_cpu() -> None:
    """The CPU path really is the blocked reduce (the slow path is jnp.sum)."""
    xs = tuple(jnp.ones((32, 6)) * k for k in range(1, 4))
    hlo = jax.jit(lambda *xs: radial.sums_over_axes(xs, (0,))).lower(*xs).as_text()
    if jax.default_backend() == "cpu":
        assert "tensor<4x8x6xf32>" in hlo, "fan-in 32 should be split into 4 blocks of 8"
    np.testing.assert_allclose(radial._blocked_sums(xs, (0,), 8)[2], np.full((1, 6), 96.0))


def test_split_reduction_axis_sharded_under_explicit_mesh_falls_back() -> None:
    """A fan-in axis sharded 4 ways with 2 blocks of 8 cannot be split: jnp.sum is used."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    r = np.random.default_rng(0)
    w, g = (r.normal(size=(16, 8)).astype(np.float32) for _ in range(2))
    tx = optx.constraints.project_out_radial(optax.scale_by_adam(), weight_decay=0.1)
    params = {"hidden": {"kernel": jnp.asarray(w)}}
    grads = {"hidden": {"kernel": jnp.asarray(g)}}
    ref, _ = tx.update(grads, tx.init(params), params)
    with jax.set_mesh(mesh):
        sh = NamedSharding(mesh, P("data", "model"))
        ps = jax.tree.map(lambda x: jax.device_put(x, sh), params)
        gs = jax.tree.map(lambda x: jax.device_put(x, sh), grads)
        u, _ = jax.jit(tx.update)(gs, tx.init(ps), ps)
        assert jax.typeof(u["hidden"]["kernel"]).sharding.spec == P("data", "model")
    np.testing.assert_allclose(
        np.asarray(u["hidden"]["kernel"]), ref["hidden"]["kernel"], rtol=1e-5
    )


def test_defaults_are_adamps() -> None:
    """clovaai/AdamP: ``delta`` 0.1, ``wd_ratio`` 0.1, ``eps`` 1e-8 (the cosine's floor),
    no weight decay."""
    official = {"delta": 0.1, "wd_ratio": 0.1, "eps": 1e-8, "weight_decay": 0.0}
    for fn, names in (
        (radial.project_out_radial, ("delta", "wd_ratio", "eps", "weight_decay")),
        (radial.radial_projection, ("delta", "eps")),
    ):
        assert defaults(fn, *names) == {k: official[k] for k in names}


def test_complex_projection_is_hermitian_orthogonal_per_channel() -> None:
    """Complex kernel, gradient Hermitian-orthogonal to each weight column (cos = 0, the
    channel branch): the projected direction satisfies ``Σ w̄ d' = 0`` per column, and
    equals ``d − ŵ⟨ŵ, d⟩`` with ``⟨x, y⟩ = Σ x̄ y`` (float64 reference)."""
    r = np.random.default_rng(7)

    def c(shape: tuple[int, ...]) -> np.ndarray:
        return r.normal(size=shape) + 1j * r.normal(size=shape)

    w, g, d = c((6, 4)), c((6, 4)), c((6, 4))
    g = g - w * np.sum(np.conj(w) * g, axis=0) / np.sum(np.abs(w) ** 2, axis=0)
    lay = optx.MatrixLayout().resolve(w.shape)
    got, branch = optx.constraints.radial_projection(
        *(jnp.asarray(x, jnp.complex64) for x in (g, w, d)), lay
    )
    assert int(branch[0, 0]) == 1
    w_hat = w / np.linalg.norm(w, axis=0)
    want = d - w_hat * np.sum(np.conj(w_hat) * d, axis=0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sum(np.conj(w) * np.asarray(got), axis=0), 0.0, atol=1e-4)
