"""Official-code conformance of the deviations fixed for issues 14 and 21.

Each test is a float64 NumPy transcription of the official code (or a golden case
generated from it, ``tests/data/*.json`` names the generator) and failed before the
fix it covers.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optx
from optx._src import kronecker

DATA = pathlib.Path(__file__).parent / "data"


# ----------------------------------------------------------------------------
# MKOR: the official half-precision (fp16) Sherman–Morrison factor update (issue 21 §3)
# ----------------------------------------------------------------------------


def test_mkor_fp16_factor_update_matches_official_golden() -> None:
    meta = json.loads((DATA / "mkor__sm_fp16.json").read_text())
    z = np.load(DATA / "mkor__sm_fp16.npz")
    assert meta["reference"]["commit"].startswith("3a0e3bb2")
    f = jnp.eye(z["vectors"].shape[1], dtype=jnp.float16)
    for t, v in enumerate(z["vectors"]):
        f = kronecker.sherman_morrison_update(f, jnp.asarray(v), 0.95, jnp.float16)
        assert f.dtype == jnp.float16
        np.testing.assert_array_equal(np.asarray(f), z["factors"][t], err_msg=f"refresh {t}")


def test_mkor_default_computes_the_factor_update_in_fp16() -> None:
    """optx.mkor's default state after one real refresh equals the fp16 computation."""
    r = np.random.default_rng(3)
    params = {"dense": {"kernel": jnp.asarray(r.normal(size=(4, 3)), jnp.float32)}}
    caps = [
        {
            "dense/kernel": optx.curvature.LayerStatistics(
                jnp.asarray(r.normal(size=4) * 0.5, jnp.float32),
                jnp.asarray(r.normal(size=3) * 0.5, jnp.float32),
            )
        }
        for _ in range(2)
    ]
    tx = optx.mkor(0.1, update_interval=1)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for c in caps:  # refresh 0 only resets to I; refresh 1 is the first SM update
        _, state = update(params, state, params, captures=c)
    a_inv = np.asarray(state.inner_state[0].a_inv["dense"]["kernel"][0])
    want = kronecker.sherman_morrison_update(
        jnp.eye(4, dtype=jnp.float16), caps[1]["dense/kernel"].inputs, 0.95, jnp.float16
    )
    np.testing.assert_array_equal(a_inv, np.asarray(want))
    f32_then_stored = kronecker.sherman_morrison_update(
        jnp.eye(4), caps[1]["dense/kernel"].inputs, 0.95
    ).astype(jnp.float16)
    assert not np.array_equal(a_inv, np.asarray(f32_then_stored))


# ----------------------------------------------------------------------------
# Sophia-G: torch.nn.utils.clip_grad_norm_ form of the GNB clip (issue 21 §2)
# ----------------------------------------------------------------------------


def test_sophia_gnb_clip_is_torch_clip_grad_norm() -> None:
    r = np.random.default_rng(0)
    w = {"a": r.normal(size=(3, 4)), "b": r.normal(size=4)}
    x = r.normal(size=(8, 3))

    def sampled_loss(p, key):
        del key
        return jnp.sum((x @ p["a"] + p["b"]) ** 2)

    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, w)
        got = optx.curvature.gauss_newton_bartlett_diagonal(
            sampled_loss, p, jax.random.key(0), clip_norm=1.0
        )
        g = jax.tree.map(np.asarray, jax.grad(sampled_loss)(p, None))
    norm = np.sqrt(sum(np.sum(v * v) for v in g.values()))
    assert norm > 1.0
    coef = min(1.0, 1.0 / (norm + 1e-6))  # train_sophiag.py @a7e15722: clip_grad_norm_(…, 1.0)
    for k in g:
        np.testing.assert_allclose(np.asarray(got[k]), (g[k] * coef) ** 2, rtol=1e-13)


# ----------------------------------------------------------------------------
# AGVM: world size in the Adam preconditioning; grad_clip and its iteration range
# (issue 14 §2, Sense-X/AGVM @b60d598 agvm/optim/agvm_optimizer_hook.py)
# ----------------------------------------------------------------------------


def _agvm_data(steps: int):
    r = np.random.default_rng(5)
    shapes = {"backbone": (4, 3), "head": (3,)}
    ga = [{k: r.normal(size=s) for k, s in shapes.items()} for _ in range(steps)]
    gb = [{k: ga[t][k] + r.normal(size=s) for k, s in shapes.items()} for t in range(steps)]
    g = [{k: 0.5 * (ga[t][k] + gb[t][k]) for k in shapes} for t in range(steps)]
    return shapes, ga, gb, g


def test_agvm_adam_preconditioning_uses_the_world_size() -> None:
    world, b1, b2, eps, mom, steps = 8, 0.9, 0.999, 1e-8, 0.97, 3
    shapes, ga, gb, g = _agvm_data(steps)
    # The official hook: loss / (W·W/2) reduced over W/2 ranks -> param.grad = g_half / W;
    # new = param.grad / (sqrt(β₂ v + (1−β₂) param.grad²) + ε); times W; cosine per group.
    v = {k: np.zeros(s) for k, s in shapes.items()}
    scales = np.ones(2)
    for t in range(steps):

        def pre(h, v=v):
            return {
                k: world
                * (h[k] / world)
                / (np.sqrt(v[k] * b2 + (h[k] / world) ** 2 * (1 - b2)) + eps)
                for k in shapes
            }

        a, b = pre(ga[t]), pre(gb[t])
        sim = np.array(
            [
                1 - a[k].ravel() @ b[k].ravel() / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))
                for k in ("backbone", "head")
            ]
        )
        new = np.sqrt(np.clip((sim[0] + 1e-6) / (sim + 1e-6), 0.5, 10.0))
        scales = mom * scales + (1 - mom) * new
        v = {k: b2 * v[k] + (1 - b2) * g[t][k] ** 2 for k in shapes}  # Adam's step
    with jax.enable_x64(True):
        tx = optx.agvm(
            optx.adamw(1e-3, b1, b2, eps, weight_decay=0.0),
            ("backbone", "head"),
            start_step=0,
            update_interval=1,
            adam_preconditioning=True,
            world_size=world,
        )
        params = {k: jnp.zeros(s) for k, s in shapes.items()}
        state = tx.init(params)
        for t in range(steps):
            j = lambda d: jax.tree.map(jnp.asarray, d)  # noqa: E731
            _, state = tx.update(j(g[t]), state, params, grads_a=j(ga[t]), grads_b=j(gb[t]))
        np.testing.assert_allclose(np.asarray(state.scales), scales, rtol=1e-12)


def test_agvm_grad_clip_in_its_iteration_range() -> None:
    steps, lr, max_norm = 4, 0.1, 0.5
    shapes, ga, gb, g = _agvm_data(steps)
    with jax.enable_x64(True):
        tx = optx.agvm(
            optax.sgd(lr), start_step=100, grad_clip=max_norm, grad_clip_iter_range=(1, 2)
        )
        params = {k: jnp.zeros(s) for k, s in shapes.items()}
        state = tx.init(params)
        for t in range(steps):
            j = lambda d: jax.tree.map(jnp.asarray, d)  # noqa: E731
            u, state = tx.update(j(g[t]), state, params, grads_a=j(ga[t]), grads_b=j(gb[t]))
            norm = np.sqrt(sum(np.sum(x * x) for x in g[t].values()))
            coef = min(1.0, max_norm / (norm + 1e-6)) if 1 <= t <= 2 else 1.0
            for k in shapes:
                np.testing.assert_allclose(np.asarray(u[k]), -lr * coef * g[t][k], rtol=1e-13)


# ----------------------------------------------------------------------------
# SGDP dampening (issue 14 §2; clovaai/AdamP @7f6f038 adamp/sgdp.py lines 69-84)
# ----------------------------------------------------------------------------


def test_sgdp_dampening_matches_official() -> None:
    lr, mu, damp, wd, steps = 0.1, 0.9, 0.3, 1e-2, 4
    r = np.random.default_rng(8)
    w0, grads = r.normal(size=4), r.normal(size=(steps, 4))
    for nesterov in (False, True):
        w, buf = w0.copy(), np.zeros(4)
        want = []
        for g in grads:  # a 1-D tensor is never projected: wd_ratio = 1
            buf = mu * buf + (1 - damp) * g
            d_p = g + mu * buf if nesterov else buf
            w = w * (1 - lr * wd / (1 - mu)) - lr * d_p
            want.append(w.copy())
        with jax.enable_x64(True):
            tx = optx.sgdp(lr, mu, nesterov=nesterov, weight_decay=wd, dampening=damp)
            p = {"bias": jnp.asarray(w0)}
            s = tx.init(p)
            for g, ww in zip(grads, want):
                u, s = tx.update({"bias": jnp.asarray(g)}, s, p)
                p = optax.apply_updates(p, u)
                np.testing.assert_allclose(np.asarray(p["bias"]), ww, rtol=1e-13)


# ----------------------------------------------------------------------------
# MKOR with the official optimizer='adam' (torch.optim.Adam: coupled L2) (issue 14 §2)
# ----------------------------------------------------------------------------


def test_mkor_inner_adam_is_torch_adam_with_coupled_decay() -> None:
    lr, b1, b2, eps, wd, steps = 1e-2, 0.9, 0.999, 1e-8, 0.1, 3
    r = np.random.default_rng(9)
    w0, grads = r.normal(size=5), r.normal(size=(steps, 5))
    w, m, v, want = w0.copy(), np.zeros(5), np.zeros(5), []
    for t, g in enumerate(grads, start=1):  # torch.optim.Adam, weight_decay=wd
        d = g + wd * w
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        denom = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
        w = w - lr / (1 - b1**t) * m / denom
        want.append(w.copy())
    with jax.enable_x64(True):
        # A 1-D 'scale' leaf is not an MKOR layer: MKOR passes it to the inner optimizer.
        tx = optx.mkor(lr, inner="adam", b1=b1, b2=b2, eps=eps, weight_decay=wd)
        p = {"scale": jnp.asarray(w0)}
        s = tx.init(p)
        for g, ww in zip(grads, want):
            u, s = tx.update({"scale": jnp.asarray(g)}, s, p)
            p = optax.apply_updates(p, u)
            np.testing.assert_allclose(np.asarray(p["scale"]), ww, rtol=1e-12)


# ----------------------------------------------------------------------------
# Sophia-G's default decay mask: Linear weights only (issue 14 §2; Liuhong99/Sophia
# @a7e15722 model.py configure_optimizers)
# ----------------------------------------------------------------------------


def test_sophia_g_decays_only_linear_weights_by_default() -> None:
    params = {
        "h0": {"mlp": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}},
        "ln_f": {"scale": jnp.ones(3)},
        "wte": {"embedding": jnp.ones((5, 3))},
        "lm_head": {"kernel": jnp.ones((3, 5))},
    }
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = optx.sophia_g(0.1, weight_decay=0.5, tokens_per_batch=1)
    extra = {"sampled_loss_fn": lambda p, k: 0.0, "key": jax.random.key(0)}
    u, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))(zero, tx.init(params), params)
    decayed = {"h0/mlp/kernel": True, "h0/mlp/bias": False, "ln_f/scale": False}
    decayed |= {"wte/embedding": False, "lm_head/kernel": True}
    flat, _ = optx._src.base.flatten_with_paths(u)
    for path, x in flat:
        np.testing.assert_allclose(np.asarray(x), -0.05 if decayed[path] else 0.0, err_msg=path)


# ----------------------------------------------------------------------------
# FRUGAL: the official pre-training block order is 'descending' (issue 14 §2)
# ----------------------------------------------------------------------------


def test_frugal_default_block_order_is_descending() -> None:
    params = {"blocks": {"kernel": jnp.zeros((8, 3, 3))}}  # 8 stacked (3 x 3) blocks
    tx = optx.frugal(1e-3, density=0.25, update_proj_gap=2)
    s = tx.init(params)
    chosen = []

    def block_state(tree):
        is_block = lambda x: isinstance(x, optx.BlockSubspaceState)  # noqa: E731
        return next(x for x in jax.tree.leaves(tree, is_leaf=is_block) if is_block(x))

    for _ in range(4):  # refreshes at steps 0 and 2
        _, s = tx.update(jax.tree.map(jnp.ones_like, params), s, params)
        chosen.append(tuple(int(i) for i in jax.tree.leaves(block_state(s).active)[0]))
    assert chosen == [(7, 6), (7, 6), (5, 4), (5, 4)]


# ----------------------------------------------------------------------------
# ROOT's AdamW fallback: ε on the uncorrected √v (issue 14 §2)
# ----------------------------------------------------------------------------


def test_root_fallback_puts_eps_on_the_uncorrected_sqrt_v() -> None:
    lr, b1, b2, eps, wd, steps = 1e-3, 0.9, 0.95, 1e-8, 0.1, 3
    r = np.random.default_rng(11)
    w0, grads = r.normal(size=4) * 1e-6, r.normal(size=(steps, 4)) * 1e-7
    w, m, v, want = w0.copy(), np.zeros(4), np.zeros(4), []
    for t, g in enumerate(grads, start=1):  # official ROOT's AdamW for 1-D parameters
        w = w * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        want.append(w.copy())
    with jax.enable_x64(True):
        tx = optx.root(lr, weight_decay=wd)
        p = {"bias": jnp.asarray(w0)}
        s = tx.init(p)
        for g, ww in zip(grads, want):
            u, s = tx.update({"bias": jnp.asarray(g)}, s, p)
            p = optax.apply_updates(p, u)
            np.testing.assert_allclose(np.asarray(p["bias"]), ww, rtol=1e-12)


# ----------------------------------------------------------------------------
# quick_recovery_schedule = the official lambda with LambdaLR's offset (issue 21 §5;
# OptimAI-Lab/Memory_Efficient_Pretraining @9f803d4 training_utils.py)
# ----------------------------------------------------------------------------


def test_quick_recovery_schedule_matches_official() -> None:
    total, warmup, cycle, recovery, min_ratio, lr = 200, 15, 50, 10, 0.1, 3e-3

    def normal(step):  # the official get_normal_lr
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def lam(step):  # _get_cosine_schedule_with_quick_recovery_lambda
        last = (step // cycle) * cycle
        since = step - last
        if since < recovery:
            target = normal(last + recovery)
            start = target * 0.001
            return start + (target - start) * min(since / (recovery - 1), 1.0)
        return normal(step)

    # LambdaLR(last_epoch=-1) at the start, rebuilt with last_epoch=K at each restart: the
    # constructor steps once, so update t >= K uses lambda(t + 1).
    want = [lr * lam(t if t < cycle else t + 1) for t in range(total)]

    def base(step):
        step = jnp.asarray(step, jnp.float64)
        cos = min_ratio + (1 - min_ratio) * 0.5 * (
            1 + jnp.cos(jnp.pi * (step - warmup) / (total - warmup))
        )
        return lr * jnp.where(step < warmup, step / warmup, cos)

    with jax.enable_x64(True):
        sched = optx.schedules.quick_recovery_schedule(base, cycle, recovery)
        got = np.asarray(jax.vmap(sched)(jnp.arange(total)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-18)


# ----------------------------------------------------------------------------
# Newton–Schulz: the 5-step Polar Express variant of microsoft/dion (issue 14 §2)
# ----------------------------------------------------------------------------

# dion/polar_express.py (_POLAR_EXPRESS_COEFFS; normalization ‖X‖·1.02 + 1e-6).
DION_POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def test_polar_express_5_is_the_dion_table() -> None:
    gen = optx.linalg.polar_express_coefficients(1e-3, 5, safety=2e-2, cushion=0.02)
    np.testing.assert_allclose(gen, DION_POLAR_EXPRESS, rtol=1e-13)
    r = np.random.default_rng(2)
    g = r.normal(size=(6, 9))
    x = g / (np.linalg.norm(g) * 1.02 + 1e-6)  # the official (wide) iteration in float64
    for a, b, c in DION_POLAR_EXPRESS:
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    with jax.enable_x64(True):
        got = optx.linalg.newton_schulz(jnp.asarray(g), "polar_express_5", 5)
    np.testing.assert_allclose(np.asarray(got), x, rtol=1e-11, atol=1e-13)
