"""Lipschitz projections, the soft-cap coupling and the Lipschitz bound,
against float64 NumPy references written from arXiv 2507.13338."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
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
from optx._src import constraints
from tests.matrix_views import matrices

SHAPES = {"hidden": (6, 10), "stack": (2, 10, 6), "conv": (3, 3, 2, 5)}
HARD_CAP = [
    (0.805032, 0.206361, -0.019763),
    (0.649867, 0.162935, -0.011150),
    (1.810259, -0.200265, 0.008251),
    (1.004384, -0.183490, 0.014413),
]


def alpha_np(w_max: float, delta: float, decay: float = 0.0) -> float:
    """Smallest non-negative real root of −k⁹α⁴ + 3k⁷α³ − 3k⁵α² + (k − w_max)."""
    k = w_max * (1 - decay) + delta
    roots = np.roots([-(k**9), 3 * k**7, -3 * k**5, 0.0, k - w_max])
    real = roots[(np.abs(roots.imag) < 1e-7) & (roots.real >= -1e-15)].real
    if real.size == 0:  # k < w_max: no cap needed (optx's α = 0; the official code gives 1)
        return 0.0
    return float(max(real.min(), 0.0))


def on_singular_values(m: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u * f(s)) @ vt


def reference_projection(name: str, m: np.ndarray, w_max: float, **kw: Any) -> np.ndarray:
    """P(M) for M = W/s, from the SVD of M."""
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    top = np.outer(u[:, 0], vt[0])
    if name == "normalize":
        return m / max(1.0, s[0] / w_max)
    if name == "hammer":
        return m + (w_max - s[0]) * top
    if name == "spectral_wd":
        return m - kw["decay"] * s[0] * top
    if name == "svd_cap":
        return (u * np.minimum(s, w_max)) @ vt
    if name == "soft_cap":
        a = alpha_np(w_max, kw["delta"], kw.get("lam", 0.0))

        def cap(x: np.ndarray) -> np.ndarray:
            y = x - a * x**3
            return y + a * y**3

        return (u * cap(s)) @ vt
    if name == "hard_cap":

        def cap(x: np.ndarray) -> np.ndarray:
            x = x / w_max
            for a, b, c in HARD_CAP:
                x = a * x + b * x**3 + c * x**5
            return w_max * x

        return (u * cap(s)) @ vt
    raise AssertionError(name)


def make_case(seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Weights with a clear spectral gap (so 40 power iterations converge) and
    small updates."""
    r = np.random.default_rng(seed)
    weights, updates = {}, {}
    for kind, shape in SHAPES.items():
        mats = matrices(np.zeros(shape), kind)
        out = np.empty_like(mats)
        for i in range(mats.shape[0]):
            q1, _ = np.linalg.qr(r.normal(size=(mats.shape[1], mats.shape[1])))
            q2, _ = np.linalg.qr(r.normal(size=(mats.shape[2], mats.shape[2])))
            k = min(mats.shape[1:])
            sig = np.linspace(1.6, 0.2, k) * np.array([1.6] + [1.0] * (k - 1))
            out[i] = (q1[:, :k] * sig) @ q2[:, :k].T
        weights[kind] = out.reshape(shape)
        updates[kind] = 0.01 * r.normal(size=shape)
    return weights, updates


def run_projection(
    tx: optax.GradientTransformation, w: dict[str, np.ndarray], u: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    params = {k: {"kernel": jnp.asarray(v)} for k, v in w.items()}
    updates = {k: {"kernel": jnp.asarray(v)} for k, v in u.items()}
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    new = optax.apply_updates(params, out)
    return {k: np.asarray(v["kernel"]) for k, v in new.items()}


CASES = {
    "normalize": (lambda: optx.constraints.spectral_normalize(0.9, power_iterations=40), {}),
    "hammer": (lambda: optx.constraints.spectral_hammer(0.9, power_iterations=40), {}),
    "spectral_wd": (
        lambda: optx.constraints.spectral_weight_decay(0.1, power_iterations=40),
        {"decay": 0.1},
    ),
    "svd_cap": (lambda: optx.constraints.spectral_svd_cap(0.9), {}),
    "soft_cap": (
        lambda: optx.constraints.spectral_soft_cap(0.9, max_update_norm=0.05, decay=0.01),
        {"delta": 0.05, "lam": 0.01},
    ),
    "hard_cap": (lambda: optx.constraints.spectral_hard_cap(0.9), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_projection_matches_reference_in_rms_geometry(name: str) -> None:
    factory, kw = CASES[name]
    w, u = make_case(0)
    with jax.enable_x64(True):
        got = run_projection(factory(), w, u)
    for kind in SHAPES:
        target = matrices(w[kind] + u[kind], kind)
        fan_in, fan_out = target.shape[1:]
        s = math.sqrt(fan_out / fan_in)
        want = np.stack([s * reference_projection(name, m / s, 0.9, **kw) for m in target])
        np.testing.assert_allclose(matrices(got[kind], kind), want, atol=1e-9, err_msg=kind)


def test_l2_geometry_caps_the_plain_spectral_norm() -> None:
    w = {"hidden": np.diag([3.0, 1.0, 0.5]) @ np.ones((3, 12)) / np.sqrt(12)}
    for geometry, factor in (("l2", 1.0), ("rms", math.sqrt(12 / 3))):
        out = run_projection(
            optx.constraints.spectral_svd_cap(1.0, geometry=geometry),
            w,
            {"hidden": np.zeros((3, 12))},
        )
        assert abs(np.linalg.norm(out["hidden"], 2) - factor) < 1e-5


def test_soft_cap_coupling_matches_numpy_roots() -> None:
    with jax.enable_x64(True):
        coupling = jax.jit(optx.constraints.soft_cap_coupling)
        for w_max in (0.5, 1.0, 8.0):
            for delta in (1e-4, 0.01, 0.3, 2.0):
                for decay in (0.0, 1e-3):
                    got = float(coupling(w_max, delta, decay))
                    want = alpha_np(w_max, delta, decay)
                    assert got == pytest.approx(want, rel=1e-9, abs=1e-14), (w_max, delta, decay)
                    k = w_max * (1 - decay) + delta
                    y = k - got * k**3
                    if k > w_max:  # the cap maps the worst singular value k to w_max
                        assert y + got * y**3 == pytest.approx(w_max, rel=1e-9)
    # float32, traced (as under inject_hyperparams with a schedule).
    alpha = jax.jit(optx.constraints.soft_cap_coupling)(
        jnp.float32(1.0), jnp.float32(0.02), jnp.float32(0.0)
    )
    assert float(alpha) == pytest.approx(alpha_np(1.0, 0.02), rel=1e-5)


def test_soft_cap_solves_a_static_coupling_once_per_step() -> None:
    """Static w_max, δ, λ: α is one constant of the step (no root-solving loop
    per matrix in the program); scheduled values solve it in the step. Same caps."""
    r = np.random.default_rng(2)
    w = {
        f"l{i}": {"kernel": jnp.asarray(r.normal(size=s), jnp.float32)}
        for i, s in enumerate([(6, 4), (5, 7), (6, 4), (3, 3)])
    }
    u = jax.tree.map(lambda x: jnp.asarray(0.3 * r.normal(size=x.shape), jnp.float32), w)
    static = constraints.spectral_soft_cap(1.0, max_update_norm=0.2, decay=0.01)
    scheduled = constraints.spectral_soft_cap(
        1.0, max_update_norm=lambda c: 0.2 + 0.0 * c, decay=lambda c: 0.01 + 0.0 * c
    )
    out = {}
    for name, tx in (("static", static), ("scheduled", scheduled)):
        step = jax.jit(lambda u, s, p, tx=tx: tx.update(u, s, p)[0])
        text = step.lower(u, tx.init(w), w).as_text()
        out[name] = (step(u, tx.init(w), w), len(re.findall(r"stablehlo\.while", text)))
    assert out["static"][1] == 0 and out["scheduled"][1] > 0
    for a, b in zip(jax.tree.leaves(out["static"][0]), jax.tree.leaves(out["scheduled"][0])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_coupling_is_zero_when_decay_keeps_weights_inside() -> None:
    # w_max·λ ≥ δ: k ≤ w_max, no cap needed (the official code returns α = 1 here).
    assert float(optx.constraints.soft_cap_coupling(8.0, 0.1, 0.2)) == 0.0
    assert float(optx.constraints.soft_cap_coupling(1.0, 0.0)) == 0.0


def test_modula_coupling_divides_the_update_norm_by_the_scale() -> None:
    w = {"hidden": 0.2 * np.random.default_rng(0).normal(size=(4, 16))}
    u = {"hidden": np.zeros((4, 16))}
    s = math.sqrt(16 / 4)
    with jax.enable_x64(True):
        got = run_projection(optx.constraints.spectral_soft_cap(1.0, 0.3, coupling="modula"), w, u)
    a = alpha_np(1.0, 0.3 / s)

    def cap(x: np.ndarray) -> np.ndarray:
        y = x - a * x**3
        return y + a * y**3

    want = s * on_singular_values(w["hidden"] / s, cap)
    np.testing.assert_allclose(got["hidden"], want, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5)])
def test_power_iteration_and_polynomial_steps(shape: tuple[int, int]) -> None:
    r = np.random.default_rng(1)
    q1, _ = np.linalg.qr(r.normal(size=(shape[0], shape[0])))
    q2, _ = np.linalg.qr(r.normal(size=(shape[1], shape[1])))
    sig = np.array([2.0, 1.0, 0.7, 0.3, 0.1])
    m = (q1[:, :5] * sig) @ q2[:, :5].T
    with jax.enable_x64(True):
        start = jnp.asarray(r.normal(size=(1, min(shape))))
        sigma, u, v, _ = optx.linalg.power_iteration(jnp.asarray(m)[None], start, 60)
        np.testing.assert_allclose(float(sigma[0]), 2.0, rtol=1e-12)
        np.testing.assert_allclose(np.abs(np.asarray(u[0]) @ q1[:, 0]), 1.0, rtol=1e-10)
        np.testing.assert_allclose(np.abs(np.asarray(v[0]) @ q2[:, 0]), 1.0, rtol=1e-10)
        coeffs = ((1.2, -0.3, 0.05), (0.9, 0.1, 0.0))
        got = constraints.odd_polynomial_steps(jnp.asarray(m), coeffs)

    def f(x: np.ndarray) -> np.ndarray:
        for a, b, c in coeffs:
            x = a * x + b * x**3 + c * x**5
        return x

    np.testing.assert_allclose(np.asarray(got), on_singular_values(m, f), atol=1e-12)
    zero = optx.linalg.power_iteration(jnp.zeros((1, 3, 4)), jnp.ones((1, 3)), 4)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in zero) and float(zero[0][0]) == 0.0


def test_warm_start_converges_across_steps() -> None:
    """One iteration per step: warm-started vectors converge, re-seeded ones do not."""
    r = np.random.default_rng(2)
    q1, _ = np.linalg.qr(r.normal(size=(8, 8)))
    q2, _ = np.linalg.qr(r.normal(size=(8, 8)))
    w = {"hidden": {"kernel": jnp.asarray((q1 * np.linspace(2.0, 1.6, 8)) @ q2.T, jnp.float32)}}
    zero = jax.tree.map(jnp.zeros_like, w)
    errors = {}
    for warm in (True, False):
        tx = optx.constraints.spectral_normalize(
            1.0, power_iterations=1, warm_start=warm, geometry="l2"
        )
        state = tx.init(w)
        step = jax.jit(tx.update)
        for _ in range(30):
            u, state = step(zero, state, w)
        scale = 2.0 / float(jnp.linalg.norm(optax.apply_updates(w, u)["hidden"]["kernel"], 2))
        errors[warm] = abs(scale - 2.0)  # W/σ̂ has norm 2/σ̂ ... exact: σ̂ = 2
    assert errors[True] < 1e-3 < errors[False]


def test_state_layout_key_and_abstract_init() -> None:
    params = {
        "stack": {"kernel": jnp.ones((3, 4, 6))},
        "conv": {"kernel": jnp.ones((3, 3, 2, 5))},
        "bias": jnp.ones(6),
    }
    tx = optx.constraints.spectral_hammer(1.0)
    state = tx.init(params)
    assert state.vectors["stack"]["kernel"].shape == (3, 4)
    assert state.vectors["conv"]["kernel"].shape == (1, 5)
    assert isinstance(state.vectors["bias"], optax.MaskedNode)
    abstract = jax.eval_shape(tx.init, params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    direct = tx.init(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    assert jax.tree.structure(direct) == jax.tree.structure(state)
    _, new = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    assert not bool(jnp.all(new.key == state.key)) and int(new.count) == 1
    assert isinstance(optx.constraints.spectral_svd_cap().init(params).key, optax.EmptyState)


def test_sharded_projection_keeps_the_sharding() -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    w = {"hidden": {"kernel": jax.random.normal(jax.random.key(0), (8, 16))}}
    u = jax.tree.map(lambda x: 0.1 * x, w)
    for tx in (optx.constraints.spectral_hammer(1.0), optx.constraints.spectral_soft_cap(1.0, 0.1)):
        ref, _ = tx.update(u, tx.init(w), w)
        with jax.set_mesh(mesh):
            shard = jax.tree.map(
                lambda x: jax.device_put(x, NamedSharding(mesh, P("data", "model"))), w
            )
            us = jax.tree.map(
                lambda x: jax.device_put(x, NamedSharding(mesh, P("data", "model"))), u
            )
            state = tx.init(shard)
            out, new_state = jax.jit(tx.update)(us, state, shard)
            assert jax.typeof(out["hidden"]["kernel"]).sharding.spec == P("data", "model")
            assert jax.tree.map(jax.typeof, new_state) == jax.tree.map(jax.typeof, state)
        np.testing.assert_allclose(
            np.asarray(out["hidden"]["kernel"]),
            np.asarray(ref["hidden"]["kernel"]),
            rtol=1e-5,
            atol=1e-6,
        )


# Issue 16 §3: the caps under FSDP. up (4, 8, 16) has its fan-out sharded (its matrices are
# sent transposed, (16, 8), geometry scale √2), down (4, 16, 8) its fan-in (scale 1/√2):
# eight matrices of one shape, one per device of the 8-device mesh.
_FSDP_SPECS = {"up": P(None, None, "x"), "down": P(None, "x", None)}
_ALL_TO_ALL = re.compile(r"= (.*?) all-to-all(?:-start)?\(")


def _fsdp_case(entry: Any = "x") -> tuple[dict[str, Any], dict[str, Any], Any]:
    k = jax.random.split(jax.random.key(11), 4)
    w = {
        "up": {"kernel": 0.3 * jax.random.normal(k[0], (4, 8, 16))},
        "down": {"kernel": 0.3 * jax.random.normal(k[1], (4, 16, 8))},
    }
    u = {
        "up": {"kernel": 0.05 * jax.random.normal(k[2], (4, 8, 16))},
        "down": {"kernel": 0.05 * jax.random.normal(k[3], (4, 16, 8))},
    }
    specs = {
        name: {"kernel": P(*(entry if e == "x" else e for e in spec))}
        for name, spec in _FSDP_SPECS.items()
    }
    return w, u, specs


def _all_to_all_entries(hlo: str) -> list[int]:
    """The result entry count of every all-to-all in ``hlo`` (summed over a tuple result)."""
    out = []
    for line in hlo.splitlines():
        m = _ALL_TO_ALL.search(line)
        if m:
            dims = re.findall(r"\[([0-9,]*)\]", m.group(1))
            out.append(sum(int(np.prod([int(d) for d in x.split(",") if d])) for x in dims))
    return out


@pytest.mark.parametrize("mesh_shape, entry", [((8,), "x"), ((4, 2), ("x", "y"))], ids=["x", "x-y"])
def test_fsdp_caps_group_matrices_by_shape_alone(mesh_shape: tuple[int, ...], entry: Any) -> None:
    """The caps are spectral (``s·P(Wᵀ/s) = (s·P(W/s))ᵀ``), so FSDP matrices of one shape
    share one all-to-all pair whatever their geometry scale and orientation, each carrying
    its own scale: two all-to-alls of one matrix per device (2 (N − 1)/N² of the bytes, the
    floor). Grouped by (scale, orientation), up and down each went through their own pair,
    padded from 4 to 8 matrices: four all-to-alls, twice the bytes. The numbers are the
    unsharded ones (the modula coupling's α depends on each matrix's scale); on a
    two-axis entry the per-matrix scales follow the all-to-all's device order."""
    names = ("x", "y")[: len(mesh_shape)]
    mesh = jax.make_mesh(mesh_shape, names, axis_types=(AxisType.Explicit,) * len(names))
    w, u, specs = _fsdp_case(entry)
    caps = {
        "soft_cap": optx.constraints.spectral_soft_cap(1.0, 0.05, 0.01),
        "soft_cap_modula": optx.constraints.spectral_soft_cap(1.0, 0.05, coupling="modula"),
        "hard_cap": optx.constraints.spectral_hard_cap(0.8),
        "svd_cap": optx.constraints.spectral_svd_cap(0.8),
    }
    if len(mesh_shape) > 1:
        caps = {"soft_cap_modula": caps["soft_cap_modula"]}
    put = lambda t: jax.tree.map(  # noqa: E731
        lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs
    )
    ws, us = put(w), put(u)
    per_device = 4 * 2 * 16 * 8 // 8  # 8 matrices of 16 × 8 over 8 devices
    for name, tx in caps.items():
        want, _ = jax.jit(tx.update)(u, tx.init(w), w)
        fn = jax.jit(tx.update)
        state = tx.init(ws)
        hlo = fn.lower(us, state, ws).compile().as_text()
        assert _all_to_all_entries(hlo) == [per_device, per_device], name
        assert " all-gather(" not in hlo, name
        got, _ = fn(us, state, ws)
        for a, b, s in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(specs)):
            assert jax.typeof(a).sharding.spec == s, name
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=name
            )


def test_fsdp_projection_of_the_user_keeps_its_orientation() -> None:
    """A projection that does not commute with transposition (each column of ``M`` scaled
    to unit norm) is not marked spectral: its FSDP groups stay split by orientation (and
    scale), each matrix projected as ``(fan_in, fan_out)``: the unsharded numbers."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    w, u, specs = _fsdp_case()
    tx = optx.constraints.spectral_projection(
        lambda m, hp, pi: m / jnp.linalg.norm(m, axis=-2, keepdims=True)
    )
    want, _ = jax.jit(tx.update)(u, tx.init(w), w)
    put = lambda t: jax.tree.map(  # noqa: E731
        lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), t, specs
    )
    ws, us = put(w), put(u)
    fn = jax.jit(tx.update)
    hlo = fn.lower(us, tx.init(ws), ws).compile().as_text()
    assert len(_all_to_all_entries(hlo)) == 4
    got, _ = fn(us, tx.init(ws), ws)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_embedding_rms_projection() -> None:
    r = np.random.default_rng(3)
    table = r.normal(size=(7, 4)) * np.array([[3.0], [0.1], [1.0], [0.5], [2.0], [0.01], [1.2]])
    for f in (1.0, 4.0):
        tx = optx.constraints.embedding_rms_projection(f)
        with jax.enable_x64(True):
            params = {
                "embed": {"embedding": jnp.asarray(table)},
                "hidden": {"kernel": jnp.ones((4, 4))},
            }
            zero = jax.tree.map(jnp.zeros_like, params)
            u, _ = tx.update(zero, tx.init(params), params)
        rms = np.sqrt(np.mean(table**2, axis=-1, keepdims=True))
        want = table / np.maximum(1.0 / f, rms)
        np.testing.assert_allclose(np.asarray(u["embed"]["embedding"]) + table, want, rtol=1e-12)
        np.testing.assert_array_equal(u["hidden"]["kernel"], 0.0)  # not an embedding
    with pytest.raises(ValueError, match="params"):
        tx.update(zero, tx.init(params))


def test_spectral_norms_and_lipschitz_bound() -> None:
    r = np.random.default_rng(4)
    w1, w2 = r.normal(size=(3, 8)), r.normal(size=(8, 2))
    stack = r.normal(size=(2, 8, 8))
    conv = r.normal(size=(3, 3, 2, 4))
    params = {
        "l1": {"kernel": w1, "bias": np.zeros(8)},
        "blocks": {"kernel": stack},
        "l2": {"kernel": w2},
        "conv": {"kernel": conv},
    }
    with jax.enable_x64(True):
        report = optx.constraints.lipschitz_bound(jax.tree.map(jnp.asarray, params))
        rms = optx.constraints.spectral_norms(jax.tree.map(jnp.asarray, params), geometry="rms")
    n = lambda m: np.linalg.norm(m, 2)  # noqa: E731
    conv_norm = n(conv.reshape(-1, 4))
    want = n(w1) * n(stack[0]) * n(stack[1]) * n(w2) * 3.0 * conv_norm
    np.testing.assert_allclose(float(report.bound), want, rtol=1e-10)
    np.testing.assert_allclose(report.norms["blocks/kernel"], [n(stack[0]), n(stack[1])])
    np.testing.assert_allclose(float(report.factors["conv/kernel"]), 3.0 * conv_norm)
    np.testing.assert_allclose(float(rms["l1/kernel"]), n(w1) * math.sqrt(3 / 8))
    assert "l1/bias" not in report.norms


def test_lipschitz_bound_of_an_nnx_model() -> None:
    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.a = nnx.Linear(4, 6, rngs=rngs)
            self.b = nnx.Linear(6, 2, rngs=rngs)

    model = Net(nnx.Rngs(0))
    report = optx.constraints.lipschitz_bound(model)
    want = np.linalg.norm(np.asarray(model.a.kernel[...]), 2) * np.linalg.norm(
        np.asarray(model.b.kernel[...]), 2
    )
    np.testing.assert_allclose(float(report.bound), want, rtol=1e-5)
    assert sorted(report.norms) == ["a/kernel", "b/kernel"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="w_max"):
        optx.constraints.spectral_normalize(0.0)
    with pytest.raises(ValueError, match="w_max"):
        optx.constraints.spectral_svd_cap(-1.0)
    with pytest.raises(ValueError, match="geometry"):
        optx.constraints.spectral_hammer(1.0, geometry="linf")
    with pytest.raises(ValueError, match="power_iterations"):
        optx.constraints.spectral_hammer(1.0, power_iterations=0)
    with pytest.raises(TypeError, match="power_iterations"):
        optx.constraints.spectral_normalize(1.0, power_iterations=2.0)
    with pytest.raises(ValueError, match="decay"):
        optx.constraints.spectral_weight_decay(1.5)
    with pytest.raises(ValueError, match="coupling"):
        optx.constraints.spectral_soft_cap(1.0, coupling="torch")
    with pytest.raises(ValueError, match="max_update_norm"):
        optx.constraints.spectral_soft_cap(1.0, max_update_norm=-0.1)
    with pytest.raises(ValueError, match="max_inflation_factor"):
        optx.constraints.embedding_rms_projection(0.0)
    with pytest.raises(ValueError, match="geometry"):
        optx.constraints.lipschitz_bound({"a": {"kernel": jnp.ones((2, 2))}}, geometry="linf")
    tx = optx.constraints.spectral_svd_cap()
    p = {"hidden": {"kernel": jnp.ones((3, 3))}}
    with pytest.raises(ValueError, match="params"):
        tx.update(p, tx.init(p))


def test_hard_cap_range_is_as_documented() -> None:
    """``spectral_hard_cap``'s polynomials (the official coefficients) cap singular
    values up to about 3.5 ``w_max`` and not beyond: the numbers its docstring quotes."""
    sigma = np.array([0.5, 1.0, 2.0, 3.0, 3.4, 3.6, 3.7, 4.0])
    w = {"w": jnp.diag(jnp.asarray(sigma, jnp.float32))}
    tx = optx.constraints.spectral_hard_cap(1.0, geometry="l2")
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, w), tx.init(w), w)
    got = np.diag(np.asarray(optax.apply_updates(w, u)["w"]))
    inside = sigma <= 3.4
    np.testing.assert_allclose(got[inside], np.minimum(sigma[inside], 1.0), atol=0.04)
    np.testing.assert_allclose(got[~inside], [0.657, -0.321, -0.998], atol=0.01)
