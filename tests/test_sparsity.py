"""WGSEF: the sparse envelope, its prox, the group transform and the alias.

References are written here from the math: the k-support norm's closed form
and the prox's Algorithm 1 of Argyriou, Foygel & Srebro (arXiv 1204.5043),
checked themselves against a brute-force (scipy) minimization.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

import optx

RNG = np.random.default_rng(20260512)


# ----------------------------------------------------------------------------
# Float64 NumPy references
# ----------------------------------------------------------------------------


def k_support_sq(x: np.ndarray, k: int) -> float:
    """(‖x‖^{sp}_k)² by the closed form (1-indexed z, z_0 = +∞), k < len(x)."""
    z = np.concatenate([[np.inf], np.sort(np.abs(x))[::-1]])
    d = len(x)
    for r in range(k):
        tail = z[k - r : d + 1].sum()
        if z[k - r - 1] > tail / (r + 1) >= z[k - r]:
            return float((z[1 : k - r] ** 2).sum() + tail**2 / (r + 1))
    raise AssertionError("no r satisfies the k-support condition")


def envelope(x: np.ndarray, k: int) -> float:
    """S_k(x) = ½ (‖x‖^{sp}_k)²; ½‖x‖² when k >= len(x)."""
    return 0.5 * float(np.sum(x**2)) if k >= len(x) else 0.5 * k_support_sq(x, k)


def prox_reference(v: np.ndarray, k: int, lam: float) -> np.ndarray:
    """prox of λ S_k = (1/2β)(‖·‖^{sp}_k)², β = 1/λ (Argyriou et al., Alg. 1)."""
    d = len(v)
    if k >= d:
        return v / (1 + lam)
    beta = 1.0 / lam
    order = np.argsort(-np.abs(v))
    z = np.concatenate([[np.inf], np.abs(v)[order], [-np.inf]])  # z_0 .. z_{d+1}
    for q, last in itertools.product(range(k), range(k, d + 1)):
        tsum = z[k - q : last + 1].sum()
        c = tsum / (last - k + (beta + 1) * q + beta + 1)
        if z[k - q - 1] / (beta + 1) > c >= z[k - q] / (beta + 1) and z[last] > c >= z[last + 1]:
            p = np.zeros(d)
            p[: k - q - 1] = beta * z[1 : k - q] / (beta + 1)
            p[k - q - 1 : last] = z[k - q : last + 1] - c
            out = np.zeros(d)
            out[order] = p
            return np.sign(v) * out
    raise AssertionError("no (q, l) satisfies the prox conditions")


def brute_force_prox(v: np.ndarray, objective_penalty, lam: float) -> np.ndarray:
    """argmin ½‖x − v‖² + λ·penalty(x) by Powell from several starts."""

    def obj(x: np.ndarray) -> float:
        return 0.5 * float(np.sum((x - v) ** 2)) + lam * objective_penalty(x)

    best = None
    for start in (v, 0.5 * v, np.zeros_like(v)):
        res = optimize.minimize(obj, start, method="Powell", options={"xtol": 1e-11, "ftol": 1e-14})
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def group_prox_reference(
    w: np.ndarray, lam: float, k: int, batch_axes: tuple[int, ...], group_axis: int
) -> np.ndarray:
    """Group prox per matrix: groups indexed by ``group_axis``, one prox per batch index."""
    rest = [a for a in range(w.ndim) if a not in batch_axes and a != group_axis]
    perm = [*batch_axes, group_axis, *rest]
    x = np.transpose(w, perm)
    shape = x.shape
    x = x.reshape(int(np.prod(shape[: len(batch_axes)])), shape[len(batch_axes)], -1)
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        u = np.linalg.norm(x[b], axis=-1)
        t = prox_reference(u, k, lam)
        out[b] = x[b] * np.where(u > 0, t / np.where(u > 0, u, 1), 0)[:, None]
    return np.transpose(out.reshape(shape), np.argsort(perm))


# ----------------------------------------------------------------------------
# The sparse envelope and its prox on vectors
# ----------------------------------------------------------------------------


def test_references_agree_with_brute_force() -> None:
    """The closed forms used below are right (so the optx checks mean something)."""
    for _ in range(3):
        v, k, lam = RNG.normal(size=5), int(RNG.integers(1, 4)), float(RNG.uniform(0.3, 2.0))
        bf = brute_force_prox(v, lambda x, k=k: envelope(x, k), lam)
        np.testing.assert_allclose(prox_reference(v, k, lam), bf, atol=2e-5)


def test_envelope_is_half_squared_k_support_norm() -> None:
    """S_k = ½‖·‖²_{sp,k}; = ½‖x‖² on k-sparse x; ½‖x‖₁² at k = 1."""
    xs = RNG.normal(size=(6, 7))
    sparse = xs * (np.arange(7) < 2)  # at most 2 non-zeros
    for k in (1, 2, 3, 6):
        got = np.asarray(optx.sparsity.sparse_envelope(jnp.asarray(xs, jnp.float32), k))
        ref = [envelope(x, k) for x in xs]
        np.testing.assert_allclose(got, ref, rtol=2e-6)
    np.testing.assert_allclose(
        optx.sparsity.sparse_envelope(jnp.asarray(sparse), 2),
        0.5 * np.sum(sparse**2, -1),
        rtol=2e-6,
    )
    np.testing.assert_allclose(
        optx.sparsity.sparse_envelope(jnp.asarray(xs), 1),
        0.5 * np.sum(np.abs(xs), -1) ** 2,
        rtol=2e-6,
    )


def test_prox_matches_argyriou_and_brute_force() -> None:
    v = RNG.normal(size=(12, 9))
    ks = (1, 4)
    lams = (0.05, 0.7, 3.0)
    with jax.enable_x64(True):
        fn = jax.jit(optx.sparsity.sparse_envelope_prox, static_argnums=1)
        for k, lam in itertools.product(ks, lams):
            got = np.asarray(fn(jnp.asarray(v), k, jnp.float64(lam)))
            ref = np.stack([prox_reference(row, k, lam) for row in v])
            np.testing.assert_allclose(got, ref, atol=1e-12)
        # strength 0 is the identity; k >= n is a ridge shrink v/(1 + λ).
        np.testing.assert_allclose(fn(jnp.asarray(v), 3, 0.0), v, atol=0)
        np.testing.assert_allclose(fn(jnp.asarray(v), 9, 0.5), v / 1.5, rtol=1e-13)
    # Brute force on a few tiny vectors (float32 implementation).
    for row, k, lam in ((v[0, :5], 2, 0.7), (v[1, :4], 1, 0.2)):
        bf = brute_force_prox(row, lambda x, k=k: envelope(x, k), lam)
        got = optx.sparsity.sparse_envelope_prox(jnp.asarray(row, jnp.float32), k, lam)
        np.testing.assert_allclose(got, bf, atol=3e-5)


def test_weighted_prox_against_brute_force() -> None:
    """prox of λ S_k(√d ⊙ |x|) with unequal weights, and constant d = c ≡ λc."""
    v, d = RNG.normal(size=5), RNG.uniform(0.3, 3.0, size=5)
    for k, lam in ((2, 0.5), (1, 1.5)):
        bf = brute_force_prox(v, lambda x, k=k: envelope(np.sqrt(d) * x, k), lam)
        with jax.enable_x64(True):
            got = optx.sparsity.sparse_envelope_prox(jnp.asarray(v), k, lam, weights=jnp.asarray(d))
        np.testing.assert_allclose(got, bf, atol=2e-5)
    with jax.enable_x64(True):
        got = optx.sparsity.sparse_envelope_prox(jnp.asarray(v), 2, 0.3, weights=4.0)
    np.testing.assert_allclose(got, prox_reference(v, 2, 1.2), atol=1e-12)


# ----------------------------------------------------------------------------
# The group transform
# ----------------------------------------------------------------------------


def test_group_prox_transform_reference_several_steps() -> None:
    """Dense (in, out), stacked (L, in, out) and conv (kh, kw, in, out) kernels,
    output groups, 3 steps of given updates; biases pass through."""
    params = {
        "dense": {"kernel": RNG.normal(size=(6, 5)), "bias": RNG.normal(size=(5,))},
        "stack": {"kernel": RNG.normal(size=(2, 4, 6))},
        "conv": {"kernel": RNG.normal(size=(3, 3, 2, 4))},
    }
    updates = [jax.tree.map(lambda p: 0.1 * RNG.normal(size=p.shape), params) for _ in range(3)]
    lams = (0.5, 0.3, 0.2)
    k = 2
    tx = optx.sparsity.group_sparse_envelope_prox(lambda c: jnp.asarray(lams)[c], k)
    step = jax.jit(tx.update)
    w = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    state = tx.init(w)
    ref = params
    for u, lam in zip(updates, lams, strict=True):
        out, state = step(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), u), state, w)
        w = optax.apply_updates(w, out)
        target = jax.tree.map(lambda a, b: a + b, ref, u)
        ref = {
            "dense": {
                "kernel": group_prox_reference(target["dense"]["kernel"], lam, k, (), 1),
                "bias": target["dense"]["bias"],
            },
            "stack": {"kernel": group_prox_reference(target["stack"]["kernel"], lam, k, (0,), 2)},
            "conv": {"kernel": group_prox_reference(target["conv"]["kernel"], lam, k, (), 3)},
        }
        for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=2e-5, atol=2e-6)
    active = optx.sparsity.group_sparsity(w)
    assert active["conv/kernel"][1] == 4 and active["stack/kernel"][1] == 6
    assert all(a <= n for counts, n in active.values() for a in counts)


def test_group_views_and_options() -> None:
    """'input' and 'heads' groups; fractional and callable k; 'size' weights."""
    w = RNG.normal(size=(8, 2, 4)) * np.array([1.0, 0.2])[:, None]  # (d, heads, head_dim)
    w = jnp.asarray(w)
    lay = optx.ATTENTION_IN.resolve(w.shape)
    for groups, m, r in (("output", 8, 8), ("heads", 2, 32), ("input", 8, 8)):
        g = optx.sparsity.to_groups(w, lay, groups)
        assert g.shape == (1, m, r)
        np.testing.assert_array_equal(optx.sparsity.from_groups(g, lay, groups), w)
    heads = optx.sparsity.to_groups(w, lay, "heads")[0]
    np.testing.assert_array_equal(heads[1], np.asarray(w)[:, 1, :].reshape(-1))
    # Under an attention path, so the name rules give the (d, heads, head_dim) layout.
    params = {"attn": {"query": {"kernel": w}}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    # heads, k=1 of 2 with a strong prox: one head survives, whole.
    tx = optx.sparsity.group_sparse_envelope_prox(5.0, 1, groups="heads")
    u, _ = tx.update(zeros, tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, u)["attn"]["query"]["kernel"])
    alive = [bool(np.any(new[:, h] != 0)) for h in range(2)]
    assert sum(alive) == 1
    # 'size' weights = the unweighted prox with λ·R; fraction and callable k.
    dense = {"hidden": {"kernel": jnp.asarray(RNG.normal(size=(5, 6)))}}
    dz = jax.tree.map(jnp.zeros_like, dense)
    outs = []
    for kw in (
        {"strength": 0.1, "k": 0.5, "group_weights": "size"},
        {"strength": 0.5, "k": lambda path, m: m // 2},
    ):
        t = optx.sparsity.group_sparse_envelope_prox(**kw)
        outs.append(optax.apply_updates(dense, t.update(dz, t.init(dense), dense)[0]))
    np.testing.assert_allclose(
        outs[0]["hidden"]["kernel"], outs[1]["hidden"]["kernel"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("defaults", [False, True])
def test_wgsef_alias_is_sgd_momentum_then_prox(defaults: bool) -> None:
    """optx.wgsef == optax.sgd(lr, momentum) followed by the prox at λ = lr·μ; left to
    their defaults, ``k`` keeps half the groups (rounded up), μ = 0.1, momentum 0.9."""
    fan_out = 5 if defaults else 4
    params = {"hidden": {"kernel": jnp.asarray(RNG.normal(size=(6, fan_out)), jnp.float32)}}
    grads = [
        jax.tree.map(lambda p: jnp.asarray(RNG.normal(size=p.shape), p.dtype), params)
        for _ in range(3)
    ]
    if defaults:
        lr, mu, m, k = 0.5, 0.1, 0.9, 3  # k = ceil(0.5 · 5)
        tx = optx.wgsef(lr)
    else:
        lr, mu, m, k = 0.1, 0.8, 0.7, 2
        tx = optx.wgsef(lr, k, mu, momentum=m)
    state = tx.init(params)
    w = np.asarray(params["hidden"]["kernel"], np.float64)
    buf = np.zeros_like(w)
    p = params
    for g in grads:
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        buf = m * buf + np.asarray(g["hidden"]["kernel"], np.float64)
        w = group_prox_reference(w - lr * buf, lr * mu, k, (), 1)
        np.testing.assert_allclose(np.asarray(p["hidden"]["kernel"]), w, rtol=2e-5, atol=2e-6)
    assert optx.router_of(tx) is not None


def test_errors() -> None:
    params = {"hidden": {"kernel": jnp.zeros((4, 3))}}
    with pytest.raises(ValueError, match="exceeds the number of groups"):
        optx.sparsity.group_sparse_envelope_prox(0.1, 5).init(params)
    with pytest.raises(ValueError, match="exceeds the number of groups"):
        optx.wgsef(0.1, k=4).init(params)
    with pytest.raises(ValueError, match="k"):
        optx.sparsity.group_sparse_envelope_prox(0.1, 0)
    with pytest.raises(ValueError, match="fraction"):
        optx.sparsity.group_sparse_envelope_prox(0.1, 1.5)
    with pytest.raises(TypeError, match="k"):
        optx.sparsity.group_sparse_envelope_prox(0.1, "two")
    with pytest.raises(ValueError, match="groups"):
        optx.sparsity.group_sparse_envelope_prox(0.1, 1, groups="rows")
    with pytest.raises(ValueError, match="group_weights"):
        optx.sparsity.group_sparse_envelope_prox(0.1, 1, group_weights="flops")
    with pytest.raises(ValueError, match="strength"):
        optx.sparsity.group_sparse_envelope_prox(-0.1, 1)
    with pytest.raises(ValueError, match="penalty"):
        optx.wgsef(0.1, 1, penalty=-1.0)
    with pytest.raises(TypeError, match="optimizer"):
        optx.wgsef(0.1, 1, optimizer=optax.sgd(0.1))
    tx = optx.sparsity.group_sparse_envelope_prox(0.1, 1)
    with pytest.raises(ValueError, match="parameters"):
        tx.update(params, tx.init(params))
    with pytest.raises(TypeError, match="complex"):
        tx.init({"hidden": {"kernel": jnp.zeros((4, 3), jnp.complex64)}})
    bad = optx.sparsity.group_sparse_envelope_prox(0.1, 1, group_weights=lambda p, lay, m: -1.0)
    with pytest.raises(ValueError, match="weights"):
        bad.update(params, bad.init(params), params)


def test_group_norms_and_envelope_value_match_numpy() -> None:
    """``group_norms`` (output groups: a kernel's columns; complex: ``√Σ|w|²``) and the
    logged regularizer ``group_sparse_envelope`` = Σ over matrices of S_k(√d ⊙ norms)."""
    a = RNG.normal(size=(5, 6))
    b = RNG.normal(size=(4, 3))
    params = {"hidden": {"kernel": jnp.asarray(a)}, "mlp": {"kernel": jnp.asarray(b)}}
    norms = optx.sparsity.group_norms(params)
    np.testing.assert_allclose(norms["hidden/kernel"], [np.linalg.norm(a, axis=0)], rtol=1e-5)
    got = optx.sparsity.group_sparse_envelope(params, 2)
    want = envelope(np.linalg.norm(a, axis=0), 2) + envelope(np.linalg.norm(b, axis=0), 2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # 'size' weights d_j = |G_j| (rows): S_k(√d ⊙ norms).
    got = optx.sparsity.group_sparse_envelope(params, 2, group_weights="size")
    want = envelope(np.sqrt(5) * np.linalg.norm(a, axis=0), 2) + envelope(
        np.sqrt(4) * np.linalg.norm(b, axis=0), 2
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    c = RNG.normal(size=(3, 4)) + 1j * RNG.normal(size=(3, 4))
    cn = optx.sparsity.group_norms({"hidden": {"kernel": jnp.asarray(c, jnp.complex64)}})
    np.testing.assert_allclose(cn["hidden/kernel"], [np.linalg.norm(c, axis=0)], rtol=1e-5)
