"""Tests for the rotated-basis aliases: optx.soap, optx.conda, optx.cosmos.

Golden trajectories (``tests/data``, produced by the official PyTorch codes; see
each sidecar) are compared in Flax orientation: PyTorch ``(out, in)`` weights
are transposed to ``(in, out)`` kernels and back. The per-step math is checked
against float64 references in ``tests/test_bases.py``; here: the official
trajectories, the alias-level semantics (first-step skip, decay order, routing,
fallbacks, scales) and the memory claims.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optx

DATA = pathlib.Path(__file__).parent.parent / "data"

# The golden cases name their matrices w1, w2 (and sq); everything else (the
# 1-D bias) is a fallback leaf.
GOLDEN_ROUTER = optx.Router(
    [optx.Rule(r"^(w1|w2|sq)$", "matrix", optx.DENSE), optx.Rule(r".*", "fallback")]
)


def load(case: str) -> tuple[dict[str, Any], Any]:
    meta = json.loads((DATA / f"{case}.json").read_text())
    return meta, np.load(DATA / f"{case}.npz")


def flax(x: np.ndarray) -> np.ndarray:
    """PyTorch (out, in) -> Flax (in, out); vectors unchanged."""
    return x.T if x.ndim == 2 else x


def run_golden(case: str, tx: optax.GradientTransformation, inject=None) -> dict[str, np.ndarray]:
    """Feeds the recorded gradients; returns params after every step (T, ...)."""
    meta, z = load(case)
    names = meta["param_order"]
    params = {n: jnp.asarray(flax(z[f"init/{n}"])) for n in names}
    state = tx.init(params)
    update = jax.jit(tx.update)
    history: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for t in range(meta["T"]):
        grads = {n: jnp.asarray(flax(z[f"grads/{n}"][t])) for n in names}
        updates, state = update(grads, state, params)
        if t == 0 and inject is not None:
            state = inject(state, z)
        params = optax.apply_updates(params, updates)
        for n in names:
            history[n].append(flax(np.asarray(params[n])))
    return {n: np.stack(h) for n, h in history.items()}


# ----------------------------------------------------------------------------
# Golden trajectories
# ----------------------------------------------------------------------------


def test_soap_matches_official_trajectory() -> None:
    """Acceptance: SOAP matches the official trajectory to rtol 1e-4.

    ``w1``/``w2`` are non-square: their larger factor is rank-deficient at the
    first eigh and LAPACK's null-space basis is arbitrary, so the recorded first
    eigenbasis is injected for them (as the sidecar prescribes); ``sq`` and ``b``
    run free.
    """
    meta, z = load("soap__public")
    hp = meta["hyperparameters"]
    tol = meta["tolerance"]

    def inject(state: Any, z: Any) -> Any:
        soap_state = state[0]
        bases = list(soap_state.bases)
        for name in tol["needs_injected_first_Q"]:
            # PyTorch Q/<p>/1 acts on `in` (our fan-in mode 0), Q/<p>/0 on `out`.
            for mode, torch_dim in ((0, 1), (1, 0)):
                bases[mode] = {**bases[mode], name: jnp.asarray(z[f"aux/Q/{name}/{torch_dim}"][0])}
        return (soap_state._replace(bases=tuple(bases)), *state[1:])

    tx = optx.soap(
        hp["lr"],
        *hp["betas"],
        eps=hp["eps"],
        weight_decay=hp["weight_decay"],
        update_proj_gap=hp["precondition_frequency"],
        max_precond_dim=hp["max_precond_dim"],
        router=GOLDEN_ROUTER,
    )
    got = run_golden("soap__public", tx, inject)
    for name in meta["param_order"]:
        want = z[f"params_after/{name}"]
        # The first step only initializes: the weights are untouched (no decay).
        np.testing.assert_array_equal(got[name][0], z[f"init/{name}"])
        atol = (
            tol["params_after_atol_well_posed_params"]
            if name in tol["well_posed_params"]
            else tol["params_after_atol_with_injected_first_Q"]
        )
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=atol, err_msg=name)
        assert np.abs(got[name][-1] - z[f"init/{name}"]).max() > 10 * atol  # it moved


def test_conda_matches_official_trajectory() -> None:
    meta, z = load("conda__public")
    group = meta["hyperparameters"]["projected_group"]
    hp = meta["hyperparameters"]["defaults_relied_on"]
    tx = optx.conda(
        hp["lr"],
        *hp["betas"],
        eps=hp["eps"],
        weight_decay=hp["weight_decay"],
        update_proj_gap=group["update_proj_gap"],
        scale=group["scale"],
        router=GOLDEN_ROUTER,
    )
    got = run_golden("conda__public", tx)
    for name in meta["param_order"]:
        np.testing.assert_allclose(
            got[name],
            z[f"params_after/{name}"],
            rtol=0,
            atol=meta["tolerance"]["params_after_atol"],
            err_msg=name,
        )


@pytest.mark.parametrize("variant", ["f32ns", "bf16ns"])
def test_cosmos_matches_official_trajectory(variant: str) -> None:
    """f32ns: the official code with its bf16 Newton–Schulz cast removed (tight);
    bf16ns: as-is, torch.compile'd bf16 NS (loose)."""
    case = f"cosmos__public_{variant}"
    meta, z = load(case)
    hp = meta["hyperparameters"]
    tx = optx.cosmos(
        hp["lr"],
        *hp["betas"],
        eps=hp["eps"],
        weight_decay=hp["weight_decay"],
        lr_ratio=hp["lr_ratio"],
        rank=hp["rank"],
        gamma=hp["gamma"],
        nesterov=hp["nestrov"],
        ns_dtype="bfloat16" if variant == "bf16ns" else None,
        router=GOLDEN_ROUTER,
    )
    got = run_golden(case, tx)
    for name in meta["param_order"]:
        np.testing.assert_allclose(
            got[name],
            z[f"params_after/{name}"],
            rtol=0,
            atol=meta["tolerance"]["params_after_atol"],
            err_msg=name,
        )


# ----------------------------------------------------------------------------
# Alias semantics
# ----------------------------------------------------------------------------


def _tree(seed: int = 0) -> dict[str, Any]:
    r = np.random.default_rng(seed)

    def n(*shape: int) -> jax.Array:
        return jnp.asarray(0.3 * r.normal(size=shape), jnp.float32)

    return {
        "embed": {"embedding": n(12, 6)},
        "hidden": {"kernel": n(6, 6), "bias": n(6)},
        "stack": {"kernel": n(2, 6, 5)},
        "head": {"kernel": n(6, 12)},
        "ln": {"scale": n(2, 6)},  # a stacked norm scale: two 1-D parameters
    }


def _grads(params: Any, i: int) -> Any:
    return jax.grad(
        lambda p: sum(jnp.sum(jnp.cos(x * (1 + 0.2 * i)) * x) for x in jax.tree.leaves(p))
    )(params)


def test_soap_first_step_skip_and_decay_after_step() -> None:
    lr, wd = 1e-2, 0.1
    params = _tree()
    # One compiled update serves both runs: weight decay is an injected hyper-parameter.
    tx = optax.inject_hyperparams(optx.soap)(learning_rate=lr, weight_decay=wd)
    update = jax.jit(tx.update)
    state = tx.init(params)
    state_plain = state._replace(
        hyperparams={
            **state.hyperparams,
            "weight_decay": jnp.zeros_like(state.hyperparams["weight_decay"]),
        }
    )
    u0, state = update(_grads(params, 0), state, params)
    _, state_plain = update(_grads(params, 0), state_plain, params)
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u0))  # no step, no decay
    g1 = _grads(params, 1)
    u1, _ = update(g1, state, params)
    v1, _ = update(g1, state_plain, params)  # -lr * U
    # W_new = (W - lr U)(1 - lr wd)
    for w, u, v in zip(jax.tree.leaves(params), jax.tree.leaves(u1), jax.tree.leaves(v1)):
        np.testing.assert_allclose(w + u, (w + v) * (1 - lr * wd), rtol=1e-5, atol=1e-7)


def test_soap_rotates_fallback_matrices_like_the_official_code() -> None:
    params = _tree()
    state = optx.soap().init(params)[0]
    emb = [f["embed"]["embedding"] for f in state.factors]
    assert [e.shape for e in emb] == [(12, 12), (6, 6)]
    assert isinstance(state.factors[0]["hidden"]["bias"], optax.MaskedNode)
    assert isinstance(state.factors[0]["ln"]["scale"], optax.MaskedNode)
    state = optx.soap(rotate_fallback_matrices=False, max_precond_dim=8).init(params)[0]
    assert isinstance(state.factors[0]["embed"]["embedding"], optax.MaskedNode)
    assert state.factors[0]["stack"]["kernel"].shape == (2, 6, 6)  # routed: per layer
    # max_precond_dim: the 12-wide side of the head stays unrotated.
    assert isinstance(state.factors[1]["head"]["kernel"], optax.MaskedNode)


def float_state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
    """optx.tree_utils.state_bytes without the int32 step counters."""
    counters = [x for x in jax.tree.leaves(tx.init(params)) if x.dtype == jnp.int32]
    return optx.tree_utils.state_bytes(tx, params) - sum(x.size * 4 for x in counters)


def test_soap_state_memory_formula() -> None:
    m, n = 6, 10
    params = {"hidden": {"kernel": jnp.zeros((n, m))}}
    assert float_state_bytes(optx.soap(), params) == 4 * (2 * m * n + 2 * (m * m + n * n))


def test_routers_are_attached_and_describe_works() -> None:
    params = _tree()
    for tx in (optx.soap(), optx.conda(), optx.cosmos(rank=2)):
        assert optx.router_of(tx) is not None
        table = str(optx.describe(tx, params))
        assert "hidden/kernel" in table and "matrix" in table


def test_conda_scale_and_unrotated_fallback() -> None:
    params = _tree()
    g = _grads(params, 0)
    tx1, tx2 = optx.conda(1e-3, scale=1.0), optx.conda(1e-3, scale=0.25)
    u1, s1 = tx1.update(g, tx1.init(params), params)
    u2, _ = tx2.update(g, tx2.init(params), params)
    # `scale` multiplies the rotated (routed) leaves only.
    np.testing.assert_allclose(u2["hidden"]["kernel"], 0.25 * u1["hidden"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(u2["hidden"]["bias"], u1["hidden"]["bias"], rtol=1e-6)
    assert isinstance(s1[0].bases["embed"]["embedding"], optax.MaskedNode)
    # The fallback leaves get Conda's Adam: eps on the uncorrected sqrt(v),
    # correction folded into the step (first step: lr * sqrt(1-b2)/(1-b1) * m/(sqrt(v)+eps)).
    gb = np.asarray(g["hidden"]["bias"], np.float64)
    m, v = 0.1 * gb, 0.001 * gb**2
    want = -1e-3 * np.sqrt(0.001) / 0.1 * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(u1["hidden"]["bias"], want, rtol=1e-5)


def test_conda_decays_after_the_step() -> None:
    lr, wd = 1e-2, 0.5
    params = _tree()
    g = _grads(params, 0)
    u, _ = optx.conda(lr, weight_decay=wd).update(
        g, optx.conda(lr, weight_decay=wd).init(params), params
    )
    v, _ = optx.conda(lr).update(g, optx.conda(lr).init(params), params)
    for w, a, b in zip(jax.tree.leaves(params), jax.tree.leaves(u), jax.tree.leaves(v)):
        np.testing.assert_allclose(w + a, (w + b) * (1 - lr * wd), rtol=1e-5, atol=1e-7)


def test_cosmos_matrix_step_rms_and_adamw_fallback() -> None:
    lr, ratio, wd = 2e-3, 0.2, 0.1
    params = _tree()
    g = _grads(params, 0)
    tx = optx.cosmos(lr, 0.95, 0.95, weight_decay=wd, lr_ratio=ratio, rank=3)
    u, _ = tx.update(g, tx.init(params), params)
    # Matrix leaves: -lr * (ratio * sqrt(nm) U / |U|_F + wd W): the step has RMS lr * ratio
    # per matrix (per layer of the stack).
    for path in (("hidden", "kernel"), ("stack", "kernel")):
        step = np.asarray(u[path[0]][path[1]], np.float64) + lr * wd * np.asarray(
            params[path[0]][path[1]]
        )
        step = step.reshape((-1, *step.shape[-2:]))
        rms = np.sqrt(np.mean(step**2, axis=(-2, -1)))
        np.testing.assert_allclose(rms, lr * ratio, rtol=1e-5)
    # Embeddings, heads, biases: the standard AdamW at the full learning rate with
    # the same betas, eps and decay (not the official hard-coded 0.1 / 0.9 Adam).
    adamw = optx.adamw(lr, 0.95, 0.95, 1e-8, weight_decay=wd)
    ua, _ = adamw.update(g, adamw.init(params), params)
    for path in (("embed", "embedding"), ("head", "kernel"), ("hidden", "bias")):
        np.testing.assert_allclose(u[path[0]][path[1]], ua[path[0]][path[1]], rtol=1e-6)


def test_cosmos_uses_less_state_than_soap() -> None:
    """The paper's point: mn + (m + n) r + r² against SOAP's 2mn + 2(m² + n²)."""
    d, layers, rank = 64, 2, 8
    params = {
        "embed": {"embedding": jnp.zeros((100, d))},
        "mlp": {"fc": {"kernel": jnp.zeros((layers, d, 4 * d))}},
        "attn": {"qkv": {"kernel": jnp.zeros((layers, d, 3 * d))}},
    }
    soap = float_state_bytes(optx.soap(rotate_fallback_matrices=False), params)
    cosmos = float_state_bytes(optx.cosmos(rank=rank), params)
    adamw = float_state_bytes(optx.adamw(), params)
    assert cosmos < soap
    # Exact COSMOS matrix state (f32): per layer mn + n r + r² + r m, plus AdamW on the embedding.
    fc = d * 4 * d + d * rank + rank * rank + rank * 4 * d
    qkv = d * 3 * d + d * rank + rank * rank + rank * 3 * d
    embedding_adam = 2 * 100 * d
    assert cosmos == 4 * (layers * (fc + qkv) + embedding_adam)
    assert soap > adamw


def test_alias_bad_input() -> None:
    with pytest.raises(TypeError, match="`learning_rate`"):
        optx.soap(learning_rate=None)
    with pytest.raises(TypeError):
        optx.conda(learning_rate="fast")
    with pytest.raises(TypeError):
        optx.cosmos(router="default")
    with pytest.raises(ValueError, match="merge_dims"):
        optx.soap(merge_dims=True)
    with pytest.raises(ValueError):
        optx.soap(weight_decay=-0.1)
    with pytest.raises(ValueError):
        optx.cosmos(rank=0)
    with pytest.raises(TypeError):
        optx.conda(update_proj_gap=10.0)
    with pytest.raises(ValueError):
        optx.cosmos(b2=1.0)


def test_registered_specs() -> None:
    for name in ("soap", "conda", "cosmos"):
        spec = optx.get_optimizer(name)
        assert spec.family == "rotated" and spec.uses_matrix_path
        tx = spec.build()
        params = _tree()
        u, _ = tx.update(_grads(params, 0), tx.init(params), params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def test_cosmos_official_fallback_reproduces_the_quirky_adam() -> None:
    """official_fallback=True: m = b1 m + 0.1 g and 1 - 0.9^t whatever b1 (decay before)."""
    lr, b1, b2, eps, wd = 1e-2, 0.95, 0.95, 1e-8, 0.1
    params = _tree()
    tx = optx.cosmos(lr, b1, b2, eps, weight_decay=wd, rank=2, official_fallback=True)
    state = tx.init(params)
    w = np.asarray(params["hidden"]["bias"], np.float64)
    m = v = np.zeros_like(w)
    update = jax.jit(tx.update)
    for t in range(1, 4):
        g = _grads(params, t)
        u, state = update(g, state, params)
        gb = np.asarray(g["hidden"]["bias"], np.float64)
        m, v = b1 * m + 0.1 * gb, b2 * v + (1 - b2) * gb**2
        adam = (m / (1 - 0.9**t)) / (np.sqrt(v) / np.sqrt(1 - b2**t) + eps)
        want = -lr * (adam + wd * np.asarray(params["hidden"]["bias"], np.float64))
        np.testing.assert_allclose(u["hidden"]["bias"], want, rtol=2e-5, atol=1e-8)
        params = optax.apply_updates(params, u)
    # At b1 = 0.9 it is AdamW.
    g = _grads(params, 0)
    a, _ = optx.cosmos(lr, official_fallback=True).update(g, optx.cosmos(lr).init(params), params)
    b, _ = optx.cosmos(lr).update(g, optx.cosmos(lr).init(params), params)
    np.testing.assert_allclose(a["embed"]["embedding"], b["embed"]["embedding"], rtol=1e-5)


def test_soap_unrolled_steps_are_reverse_differentiable() -> None:
    """Meta-learning through SOAP: ``jax.grad`` of the loss after unrolled steps
    (refreshes included, inside ``lax.scan``) with respect to an injected
    learning rate matches central differences to the basis' own share, and with
    respect to the initial weights is finite. The basis is a constant of its
    factors under differentiation (``bases.eigh_basis``): the derivative holds
    the rotation fixed, measured 1.2e-4 relative from the central difference
    (-114.2149 vs -114.2008, float64), which moves the basis too. Before, the
    null-column completion's ``while_loop`` refused reverse mode."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        w0 = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(8, 6)))}}
        weights = jnp.asarray(np.linspace(0.5, 1.5, 48).reshape(8, 6))

        def loss(p: Any) -> jax.Array:
            return jnp.sum(weights * (p["hidden"]["kernel"] - 0.1) ** 2)

        def unrolled(learning_rate: Any, w: Any) -> jax.Array:
            tx = optax.inject_hyperparams(optx.soap, static_args=("update_proj_gap",))(
                learning_rate=learning_rate, update_proj_gap=2
            )

            def step(carry: Any, _: None) -> tuple[Any, None]:
                p, s = carry
                u, s = tx.update(jax.grad(loss)(p), s, p)
                return (optax.apply_updates(p, u), s), None

            (p, _), _ = jax.lax.scan(step, (w, tx.init(w)), None, length=5)
            return loss(p)

        lr, h = 1e-2, 1e-6
        by_lr = jax.jit(jax.grad(unrolled))(lr, w0)
        f = jax.jit(unrolled)
        central = (f(lr + h, w0) - f(lr - h, w0)) / (2 * h)
        np.testing.assert_allclose(float(by_lr), float(central), rtol=1e-3)
        by_w = jax.jit(jax.grad(unrolled, argnums=1))(lr, w0)
        assert bool(jnp.isfinite(by_w["hidden"]["kernel"]).all())


@pytest.mark.parametrize(("name", "gap"), [("soap", 10), ("conda", 50)])
def test_default_refresh_period_is_the_official_one(name: str, gap: int) -> None:
    """``update_proj_gap=None`` is the official period (SOAP's ``precondition_frequency``
    10, Conda's CLI 50): ``gap + 2`` steps, a refresh after step ``gap``, equal the
    explicit setting."""
    params = {"mlp": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)))}}
    gs = jnp.asarray(np.random.default_rng(1).normal(size=(gap + 2, 4, 3)), jnp.float32)

    def run(update_proj_gap: int | None) -> np.ndarray:
        tx = getattr(optx, name)(1e-2, update_proj_gap=update_proj_gap)

        def body(state: Any, g: jax.Array) -> tuple[Any, jax.Array]:
            u, state = tx.update({"mlp": {"kernel": g}}, state, params)
            return state, u["mlp"]["kernel"]

        return np.asarray(jax.jit(lambda: jax.lax.scan(body, tx.init(params), gs)[1])())

    np.testing.assert_array_equal(run(None), run(gap))


def test_cosmos_default_rank_is_64() -> None:
    """``rank=None`` is the official 64: the basis of a matrix with 80 rows is 80 × 64."""
    params = {"mlp": {"kernel": jax.ShapeDtypeStruct((80, 70), jnp.float32)}}
    state = jax.eval_shape(optx.cosmos().init, params)
    assert optax.tree_utils.tree_get(state, "basis")["mlp"]["kernel"].shape == (80, 64)


def test_official_cosmos_adam_first_step_has_eps_outside_the_root() -> None:
    """First step ``u = g / (|g| + ε)`` with the default ε = 1e-8: a 1e-8 gradient gives ½,
    a zero gradient a zero (not 0/0) update."""
    tx = optx.scale_by_official_cosmos_adam()
    g = jnp.array([2.0, 1e-8, 0.0], jnp.float32)
    u, _ = tx.update(g, tx.init(jnp.zeros(3)))
    np.testing.assert_allclose(u, [2.0 / (2.0 + 1e-8), 0.5, 0.0], rtol=1e-5)
