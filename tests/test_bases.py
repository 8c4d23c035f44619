"""Tests for optx._src.bases: mode views, basis primitives and the SOAP / Conda /
COSMOS transforms against float64 NumPy references written from the papers' math.

The references below never call optx: they re-derive each method per matrix
(or per k-way tensor) with ``numpy.linalg`` (eigh, QR, SVD) in float64, from

* SOAP, arXiv 2409.11321, Algorithms 3-4 (official code semantics: first call
  initializes, power-QR refresh with sorted columns, V permuted, M re-rotated);
* Conda, arXiv 2509.24218, Algorithm 1 (SVD of the momentum on the smaller
  side every T steps from step 0, V not rotated);
* COSMOS, arXiv 2502.17410, Algorithm 1 (official current code: sum momentum,
  one QR power step of the rank-r subspace, Adam on the projection, NS5 on the
  residual).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from optx._src import bases, layouts
from tests.mesh_runs import assert_sharded_run_matches

# ----------------------------------------------------------------------------
# NumPy float64 references
# ----------------------------------------------------------------------------


def np_gram(x: np.ndarray, mode: int) -> np.ndarray:
    other = [i for i in range(x.ndim) if i != mode]
    return np.tensordot(x, x, axes=(other, other))


def np_mode_mul(x: np.ndarray, q: np.ndarray, mode: int, into: bool) -> np.ndarray:
    """into: X'[.., j, ..] = sum_a Q[a, j] X[.., a, ..]; else X = sum_j Q[a, j] X'[.., j, ..]."""
    y = np.tensordot(x, q, axes=([mode], [0 if into else 1]))
    return np.moveaxis(y, -1, mode)


def np_rotate(x: np.ndarray, qs: list[Any], into: bool) -> np.ndarray:
    for i, q in enumerate(qs):
        if q is not None:
            x = np_mode_mul(x, q, i, into)
    return x


def np_eigh_desc(f: np.ndarray) -> np.ndarray:
    _, v = np.linalg.eigh(f)
    return v[:, ::-1]


class NpSoap:
    """SOAP on one k-way tensor; ``rotated[i]`` says whether mode i has a basis."""

    def __init__(self, b1, b2, eps, beta_s, freq, rotated, normalize=False):
        self.b1, self.b2, self.eps, self.bs, self.freq = b1, b2, eps, beta_s, freq
        self.rotated, self.normalize = rotated, normalize
        self.calls = 0

    def step(self, g: np.ndarray) -> np.ndarray:
        k = range(g.ndim)
        if self.calls == 0:
            self.F = [(1 - self.bs) * np_gram(g, i) if self.rotated[i] else None for i in k]
            self.Q = [np_eigh_desc(f) if f is not None else None for f in self.F]
            self.M, self.V = np.zeros_like(g), np.zeros_like(g)
            self.calls = 1
            return np.zeros_like(g)
        t = self.calls
        gr = np_rotate(g, self.Q, into=True)
        self.M = self.b1 * self.M + (1 - self.b1) * gr
        self.V = self.b2 * self.V + (1 - self.b2) * gr**2
        u = np_rotate(self.M / (np.sqrt(self.V) + self.eps), self.Q, into=False)
        if self.normalize:
            u = u / (np.sqrt(np.mean(u**2)) + 1e-30)
        u = u * np.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        for i in k:
            if self.F[i] is not None:
                self.F[i] = self.bs * self.F[i] + (1 - self.bs) * np_gram(g, i)
        if t % self.freq == 0:
            m_orig = np_rotate(self.M, self.Q, into=False)
            for i in k:
                if self.Q[i] is None:
                    continue
                q, f = self.Q[i], self.F[i]
                order = np.argsort(-np.diag(q.T @ f @ q), kind="stable")
                self.V = np.take(self.V, order, axis=i)
                self.Q[i] = np.linalg.qr(f @ q[:, order])[0]
            self.M = np_rotate(m_orig, self.Q, into=True)
        self.calls += 1
        return u


class NpConda:
    """Conda on one matrix (n x m, Flax orientation); ``rotate=False`` is its
    unprojected Adam (no ``scale``)."""

    def __init__(self, b1, b2, eps, gap, scale, rotate=True):
        self.b1, self.b2, self.eps, self.gap, self.scale = b1, b2, eps, gap, scale
        self.rotate = rotate
        self.calls = 0

    def step(self, g: np.ndarray) -> np.ndarray:
        if self.calls == 0:
            self.M, self.V = np.zeros_like(g), np.zeros_like(g)
        self.M = self.b1 * self.M + (1 - self.b1) * g
        left = self.rotate and g.shape[0] <= g.shape[1]
        if self.rotate and self.calls % self.gap == 0:
            u, _, vh = np.linalg.svd(self.M, full_matrices=False)
            self.Q = u if left else vh.T
        if not self.rotate:
            rot = lambda x: x  # noqa: E731
            back = lambda x: x  # noqa: E731
        elif left:
            rot = lambda x: self.Q.T @ x  # noqa: E731
            back = lambda x: self.Q @ x  # noqa: E731
        else:
            rot = lambda x: x @ self.Q  # noqa: E731
            back = lambda x: x @ self.Q.T  # noqa: E731
        gr, mr = rot(g), rot(self.M)
        self.V = self.b2 * self.V + (1 - self.b2) * gr**2
        self.calls += 1
        t = self.calls
        u = back(mr / (np.sqrt(self.V) + self.eps)) * np.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        return u * self.scale if self.rotate else u


def np_newton_schulz5(x: np.ndarray) -> np.ndarray:
    """Muon's quintic Newton–Schulz, 5 steps, (3.4445, −4.7750, 2.0315), eps 1e-7."""
    a, b, c = 3.4445, -4.7750, 2.0315
    y = x / (np.linalg.norm(x) + 1e-7)
    tall = y.shape[0] > y.shape[1]
    if tall:
        y = y.T
    for _ in range(5):
        A = y @ y.T
        y = a * y + (b * A + c * A @ A) @ y
    return y.T if tall else y


class NpCosmos:
    """COSMOS's direction U = A + γ R on one matrix (n x m, Flax orientation)."""

    def __init__(self, b1, b2, eps, rank, gamma, nesterov=True):
        self.b1, self.b2, self.eps, self.r, self.gamma = b1, b2, eps, rank, gamma
        self.nesterov = nesterov
        self.calls = 0

    def step(self, g: np.ndarray) -> np.ndarray:
        b1, b2 = self.b1, self.b2
        n, m = g.shape
        self.calls += 1
        t = self.calls
        if t == 1:
            self.M, self.V = np.zeros_like(g), np.zeros((self.r, m))
            w = g @ g.T
            self.P = np_eigh_desc(w)[:, : self.r]
            self.S = (1 - b2) * self.P.T @ w @ self.P
        else:
            new_p = np.linalg.qr(b2 * self.P @ self.S + (1 - b2) * g @ (g.T @ self.P))[0]
            tt = self.P.T @ new_p
            c = new_p.T @ g
            self.S = b2 * tt.T @ self.S @ tt + (1 - b2) * c @ c.T
            self.P = new_p
        self.M = b1 * self.M + g
        self.V = b2 * self.V + (1 - b2) * (self.P.T @ g) ** 2
        c1 = (1 - b1**t) / (1 - b1)
        # Official COSMOS_optim.py (lines 86-87 @61de180e): without Nesterov the *raw
        # gradient* is divided by c1; the momentum is not used.
        g_hat = (g + b1 * self.M) / (1 + b1 * c1) if self.nesterov else g / c1
        coeff = self.P.T @ g_hat
        adam = self.P @ (coeff / (np.sqrt(self.V) / np.sqrt(1 - b2**t) + self.eps))
        res = np_newton_schulz5(g_hat - self.P @ coeff)
        res = np.sqrt(n * m) * res / (np.linalg.norm(res) + self.eps)
        return adam + self.gamma * res


# ----------------------------------------------------------------------------
# Test trees: 2-D, scanned stack, conv kernel, bias (default-router paths)
# ----------------------------------------------------------------------------

# (leaf shape, to per-element k-way tensors, from them)
SHAPES = {
    "dense": (6, 5),  # fan_in 6, fan_out 5
    "stack": (2, 5, 6),  # L = 2 stacked (5, 6) matrices
    "conv": (2, 2, 2, 8),  # (kh, kw, in, out): the (8 x 8) matrix view
    "bias": (5,),
}


def tree_of(arrays: dict[str, Any]) -> dict[str, Any]:
    return {
        "dense": {"kernel": arrays["dense"]},
        "stack": {"kernel": arrays["stack"]},
        "conv": {"kernel": arrays["conv"]},
        "bias": arrays["bias"],
    }


def leaf_of(tree: dict[str, Any], name: str) -> Any:
    return tree[name] if name == "bias" else tree[name]["kernel"]


def elements(name: str, x: np.ndarray) -> list[np.ndarray]:
    """The matrices (or the vector) a leaf is made of, in the matrix view."""
    if name == "stack":
        return [x[i] for i in range(x.shape[0])]
    if name == "conv":
        return [x.reshape(-1, x.shape[-1])]
    return [x]


def gradient_sequence(steps: int, seed: int = 0, shapes=SHAPES) -> list[dict[str, np.ndarray]]:
    """Anisotropic random gradients with a drift, so momentum and rotation matter."""
    r = np.random.default_rng(seed)
    base_ = {k: r.normal(size=s) for k, s in shapes.items()}
    scale = {k: np.exp(0.5 * r.normal(size=s)) for k, s in shapes.items()}
    return [
        {
            k: 0.1 * scale[k] * (base_[k] + 0.3 * (t + 1) / steps + 0.5 * r.normal(size=s))
            for k, s in shapes.items()
        }
        for t in range(steps)
    ]


def run_transform(tx: optax.GradientTransformation, grads: list[dict[str, np.ndarray]]) -> list:
    """Applies ``tx`` (jitted once) to the gradient sequence; returns the updates."""
    params = tree_of({k: jnp.zeros(v.shape, jnp.float32) for k, v in grads[0].items()})
    state = tx.init(params)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(tree_of({k: jnp.asarray(v, jnp.float32) for k, v in g.items()}), state)
        out.append(u)
    return out


def assert_close(got: Any, want: np.ndarray, rtol: float, name: str, step: int) -> None:
    got = np.asarray(got, np.float64)
    scale = max(np.abs(want).max(), 1e-12)
    np.testing.assert_allclose(
        got, want, rtol=rtol, atol=rtol * scale, err_msg=f"{name} step {step}"
    )


# ----------------------------------------------------------------------------
# Mode views
# ----------------------------------------------------------------------------


def test_matrix_modes_for_dense_stack_conv() -> None:
    dense = bases.matrix_modes(optx.DENSE.resolve((6, 5)), 10)
    assert dense.batch_axes == () and dense.modes == ((0,), (1,)) and dense.mode_dims == (6, 5)
    stack = bases.matrix_modes(optx.DENSE.resolve((3, 6, 5)), 10)
    assert stack.batch_shape == (3,) and stack.view_shape == (3, 6, 5)
    conv = bases.matrix_modes(optx.conv_layout().resolve((3, 3, 4, 8)), 30)
    assert conv.modes == ((0, 1, 2), (3,)) and conv.mode_dims == (36, 8)
    assert conv.rotated == (False, True)  # 36 > max_dim 30: that side stays unrotated


def test_axis_modes_and_official_merge_rule() -> None:
    lay = optx.conv_layout().resolve((2, 3, 4, 5))
    assert bases.axis_modes(lay, 10).modes == ((0,), (1,), (2,), (3,))
    # Merged in PyTorch's order (out, in, kh, kw) = axes (3, 2, 0, 1), dims (5, 4, 2, 3),
    # with the official greedy rule: 5*4 > 10 -> (3,); 4*2 = 8, 8*3 > 10 -> (2, 0); (1,).
    assert bases.axis_modes(lay, 10, merge_dims=True).modes == ((3,), (2, 0), (1,))
    # A dimension above the cap with nothing pending stands alone, unrotated:
    # (in, out) = (20, 3) is merged as PyTorch's (out, in) = (3, 20).
    big = bases.axis_modes(optx.DENSE.resolve((20, 3)), 10, merge_dims=True)
    assert big.modes == ((1,), (0,)) and big.rotated == (True, False)
    # Flax's (3, 3, 64, 64) conv merges like PyTorch's (64, 64, 3, 3): 4096 | 9.
    flax_conv = bases.axis_modes(optx.conv_layout().resolve((3, 3, 64, 64)), 10000, merge_dims=True)
    assert flax_conv.mode_dims == (4096, 9)
    # Trailing size-1 axes join the last mode.
    ones = bases.axis_modes(optx.conv_layout().resolve((4, 1, 1, 1)), 10, merge_dims=True)
    assert ones.modes == ((3, 2, 0, 1),)  # (out, in, kh, kw)


def _official_merge(shape: tuple[int, ...], max_dim: int) -> list[int]:
    """The official SOAP ``merge_dims`` rule on a PyTorch-ordered shape."""
    out, cur = [], 1
    for d in shape:
        if cur * d > max_dim:
            if cur > 1:
                out, cur = [*out, cur], d
            else:
                out, cur = [*out, d], 1
        else:
            cur *= d
    return [*out, cur] if cur > 1 or not out else out


def test_merge_dims_is_layout_aware() -> None:
    """A conv kernel stored in PyTorch order (out, in, kh, kw) and the same kernel
    in Flax order (kh, kw, in, out) get the official factorization (out·in,
    kh·kw) and the same SOAP update up to the transpose (issue 14 §2)."""
    torch_shape, max_dim = (4, 3, 2, 2), 16
    assert _official_merge(torch_shape, max_dim) == [12, 4]
    to_flax = (2, 3, 1, 0)
    rng = np.random.default_rng(0)
    tx = optx.scale_by_soap(
        factorization="axes",
        merge_dims=True,
        max_precond_dim=max_dim,
        update_proj_gap=2,
        layout={"torch": optx.MatrixLayout((1, 2, 3), (0,)), "flax": optx.conv_layout()},
    )
    grads = [jnp.asarray(rng.normal(size=torch_shape), jnp.float32) for _ in range(4)]
    tree = lambda g: {"torch": g, "flax": jnp.transpose(g, to_flax)}  # noqa: E731
    state = tx.init(tree(grads[0]))
    for f in state.factors[:2]:
        assert f["torch"].shape == f["flax"].shape
    assert [f["flax"].shape for f in state.factors[:2]] == [(12, 12), (4, 4)]
    step = jax.jit(tx.update)
    for g in grads:
        u, state = step(tree(g), state)
        np.testing.assert_array_equal(np.asarray(u["flax"]), np.transpose(u["torch"], to_flax))
    assert float(jnp.abs(u["torch"]).max()) > 0


@pytest.mark.parametrize(
    "shape,layout",
    [((6, 5), optx.DENSE), ((3, 6, 5), optx.DENSE), ((2, 3, 4, 5), optx.conv_layout())],
)
def test_to_modes_round_trip(shape: tuple[int, ...], layout: optx.MatrixLayout) -> None:
    x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    for view in (
        bases.matrix_modes(layout.resolve(shape)),
        bases.axis_modes(layout.resolve(shape), 100),
    ):
        y = bases.to_modes(x, view)
        assert y.shape == view.view_shape
        np.testing.assert_array_equal(bases.from_modes(y, view), x)
    # The matrix view agrees with the foundation's (batch, fan_in, fan_out) view.
    view = bases.matrix_modes(layout.resolve(shape))
    np.testing.assert_array_equal(
        bases.to_modes(x, view).reshape(-1, *view.mode_dims),
        layouts.to_matrices(x, layout.resolve(shape)),
    )


# ----------------------------------------------------------------------------
# Basis primitives
# ----------------------------------------------------------------------------


def _orthogonal(r: np.random.Generator, d: int) -> np.ndarray:
    return np.linalg.qr(r.normal(size=(d, d)))[0]


def test_rotate_and_gram_match_numpy() -> None:
    r = np.random.default_rng(1)
    x = r.normal(size=(2, 3, 4, 5))  # batch 2, modes (3, 4, 5)
    qs = [_orthogonal(r, 3), None, _orthogonal(r, 5)]
    qb = [None if q is None else np.stack([q, q.T]) for q in qs]  # per-batch bases
    got = bases.rotate(
        jnp.asarray(x, jnp.float32),
        [None if q is None else jnp.asarray(q, jnp.float32) for q in qb],
        1,
    )
    want = np.stack(
        [np_rotate(x[i], [None if q is None else q[i] for q in qb], True) for i in range(2)]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    back = bases.rotate_back(
        got, [None if q is None else jnp.asarray(q, jnp.float32) for q in qb], 1
    )
    np.testing.assert_allclose(back, x, rtol=1e-5, atol=1e-5)
    for mode in range(3):
        np.testing.assert_allclose(
            bases.mode_gram(jnp.asarray(x, jnp.float32), mode, 1),
            np.stack([np_gram(x[i], mode) for i in range(2)]),
            rtol=1e-5,
            atol=1e-4,
        )


def test_eigh_basis_descending_and_f32_for_bf16() -> None:
    r = np.random.default_rng(2)
    a = r.normal(size=(6, 6))
    f = a @ a.T
    q = bases.eigh_basis(jnp.asarray(f, jnp.bfloat16))
    assert q.dtype == jnp.float32
    q = np.asarray(bases.eigh_basis(jnp.asarray(f, jnp.float32)), np.float64)
    evals = np.diag(q.T @ f @ q)
    assert np.all(np.diff(evals) < 0)
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-5)


def test_power_qr_basis_sorts_then_orthogonalizes() -> None:
    r = np.random.default_rng(3)
    a = r.normal(size=(5, 5))
    f = a @ a.T
    q0 = _orthogonal(r, 5)
    new, order = bases.power_qr_basis(jnp.asarray(f, jnp.float32), jnp.asarray(q0, jnp.float32))
    want_order = np.argsort(-np.diag(q0.T @ f @ q0))
    np.testing.assert_array_equal(order, want_order)
    want = np.linalg.qr(f @ q0[:, want_order])[0]
    # QR is unique up to the sign of each column.
    signs = np.sign(np.sum(np.asarray(new) * want, axis=0))
    np.testing.assert_allclose(np.asarray(new) * signs, want, rtol=1e-4, atol=1e-5)


def test_permute_mode_per_batch() -> None:
    x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
    order = jnp.array([[2, 0, 1], [1, 2, 0]])
    got = bases.permute_mode(x, order, 0, 1)
    want = np.stack([np.asarray(x[i])[np.asarray(order[i])] for i in range(2)])
    np.testing.assert_array_equal(got, want)


def test_singular_basis_smaller_side() -> None:
    r = np.random.default_rng(4)
    x = r.normal(size=(4, 7))
    u = np.asarray(bases.singular_basis(jnp.asarray(x, jnp.float32), 0))
    want = np.linalg.svd(x, full_matrices=False)[0]
    assert u.shape == (4, 4)
    np.testing.assert_allclose(np.abs(u.T @ want), np.eye(4), atol=1e-5)
    v = np.asarray(bases.singular_basis(jnp.asarray(x.T, jnp.float32), 1))
    assert v.shape == (4, 4)
    np.testing.assert_allclose(np.abs(v.T @ want), np.eye(4), atol=1e-5)
    with pytest.raises(ValueError, match="smaller side"):
        bases.singular_basis(jnp.asarray(x, jnp.float32), 1)


def test_subspace_tracking_matches_numpy() -> None:
    r = np.random.default_rng(5)
    gs = [r.normal(size=(7, 5)) * np.linspace(0.2, 2.0, 7)[:, None] for _ in range(3)]
    beta, rank = 0.9, 2
    p, s, c = bases.subspace_init(jnp.asarray(gs[0], jnp.float32), rank, beta)
    w = gs[0] @ gs[0].T
    pw = np_eigh_desc(w)[:, :rank]
    sign = np.sign(np.sum(np.asarray(p) * pw, axis=0))
    np.testing.assert_allclose(np.asarray(p) * sign, pw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s, (1 - beta) * pw.T @ w @ pw, rtol=1e-4, atol=1e-4)
    ref_p, ref_s = pw, (1 - beta) * pw.T @ w @ pw
    for g in gs[1:]:
        p, s, c = bases.subspace_power_step(p, s, jnp.asarray(g, jnp.float32), beta)
        new = np.linalg.qr(beta * ref_p @ ref_s + (1 - beta) * g @ (g.T @ ref_p))[0]
        t = ref_p.T @ new
        ref_s = beta * t.T @ ref_s @ t + (1 - beta) * (new.T @ g) @ (new.T @ g).T
        ref_p = new
        sign = np.sign(np.sum(np.asarray(p) * ref_p, axis=0))
        np.testing.assert_allclose(np.asarray(p) * sign, ref_p, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(s) * np.outer(sign, sign), ref_s, rtol=1e-4, atol=1e-4
        )
        np.testing.assert_allclose(np.asarray(c) * sign[:, None], ref_p.T @ g, rtol=1e-4, atol=1e-5)
    coeff, residual = bases.subspace_split(jnp.asarray(gs[0], jnp.float32), p)
    np.testing.assert_allclose(np.asarray(p) @ np.asarray(coeff) + residual, gs[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(p).T @ np.asarray(residual), 0.0, atol=1e-5)


# ----------------------------------------------------------------------------
# scale_by_soap against the float64 reference
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_scale_by_soap_matches_reference(normalize: bool) -> None:
    """7 steps (refreshes at real steps 3 and 6) on 2-D, stacked, conv and a bias."""
    b1, b2, eps, bs, freq = 0.9, 0.95, 1e-8, 0.8, 3
    grads = gradient_sequence(8)
    tx = optx.scale_by_soap(
        b1, b2, eps, shampoo_beta=bs, update_proj_gap=freq, normalize_grads=normalize
    )
    updates = run_transform(tx, grads)
    for name in SHAPES:
        refs = [
            NpSoap(b1, b2, eps, bs, freq, [e.ndim == 2] * e.ndim, normalize)
            for e in elements(name, grads[0][name])
        ]
        for t, g in enumerate(grads):
            want = [ref.step(e) for ref, e in zip(refs, elements(name, g[name]))]
            got = elements(name, np.asarray(leaf_of(updates[t], name), np.float64))
            for gw, ww in zip(got, want):
                assert_close(gw, ww, 2e-4, name, t)


def test_scale_by_soap_axes_factorization_and_vectors() -> None:
    """One factor per axis of a conv kernel; a 2-vector with precondition_1d."""
    shapes = {"dense": (3, 4), "stack": (2, 3, 4), "conv": (2, 3, 4, 5), "bias": (2,)}
    b1, b2, eps, freq = 0.95, 0.95, 1e-8, 2
    grads = gradient_sequence(6, seed=7, shapes=shapes)
    tx = optx.scale_by_soap(
        b1, b2, eps, update_proj_gap=freq, factorization="axes", precondition_1d=True
    )
    updates = run_transform(tx, grads)
    refs = NpSoap(b1, b2, eps, b2, freq, [True] * 4)
    vec = NpSoap(b1, b2, eps, b2, freq, [True])
    for t, g in enumerate(grads):
        assert_close(updates[t]["conv"]["kernel"], refs.step(g["conv"]), 2e-4, "conv", t)
        assert_close(updates[t]["bias"], vec.step(g["bias"]), 2e-4, "bias", t)


def test_scale_by_soap_max_precond_dim_leaves_side_unrotated() -> None:
    b1, b2, eps = 0.95, 0.95, 1e-8
    grads = gradient_sequence(4, seed=3)
    tx = optx.scale_by_soap(b1, b2, eps, max_precond_dim=5, update_proj_gap=2)
    state = tx.init(tree_of({k: jnp.zeros(v.shape) for k, v in grads[0].items()}))
    # (6, 5): the fan-in side (6) is too big. factors[i] holds every leaf's mode i.
    assert isinstance(state.factors[0]["dense"]["kernel"], optax.MaskedNode)
    assert state.factors[1]["dense"]["kernel"].shape == (5, 5)
    assert isinstance(state.factors[0]["bias"], optax.MaskedNode)  # 1-D: no modes
    assert len(state.factors) == 2
    updates = run_transform(tx, grads)
    ref = NpSoap(b1, b2, eps, b2, 2, [False, True])
    for t, g in enumerate(grads):
        assert_close(updates[t]["dense"]["kernel"], ref.step(g["dense"]), 2e-4, "dense", t)


def test_scale_by_soap_state_dtypes_and_memory() -> None:
    params = {"hidden": {"kernel": jnp.zeros((8, 4), jnp.bfloat16)}}
    tx = optx.scale_by_soap(mu_dtype=jnp.float32, nu_dtype="float32")
    state = tx.init(params)
    assert state.mu["hidden"]["kernel"].dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.factors))
    # 2mn + 2(m^2 + n^2) floats, plus the counter.
    assert optx.tree_utils.state_bytes(tx, params) == 4 * (2 * 32 + 2 * (64 + 16)) + 4


# ----------------------------------------------------------------------------
# scale_by_conda against the float64 reference
# ----------------------------------------------------------------------------


def test_scale_by_conda_matches_reference() -> None:
    """7 steps with T = 3 (SVD at calls 0, 3, 6); both sides; the bias is plain Adam."""
    b1, b2, eps, gap, scale = 0.9, 0.99, 1e-8, 3, 0.5
    grads = gradient_sequence(7, seed=11)
    tx = optx.scale_by_conda(b1, b2, eps, update_proj_gap=gap, scale=scale)
    updates = run_transform(tx, grads)
    for name in SHAPES:
        refs = [
            NpConda(b1, b2, eps, gap, scale, rotate=name != "bias")
            for _ in elements(name, grads[0][name])
        ]
        for t, g in enumerate(grads):
            want = [ref.step(e) for ref, e in zip(refs, elements(name, g[name]))]
            got = elements(name, np.asarray(leaf_of(updates[t], name), np.float64))
            for gw, ww in zip(got, want):
                assert_close(gw, ww, 2e-4, name, t)


def test_scale_by_conda_basis_side_and_shape() -> None:
    params = {"a": {"kernel": jnp.zeros((3, 7))}, "b": {"kernel": jnp.zeros((7, 3))}}
    state = optx.scale_by_conda().init(params)
    assert state.bases["a"]["kernel"].shape == (3, 3)
    assert state.bases["b"]["kernel"].shape == (3, 3)
    assert bases.conda_side(bases.matrix_modes(optx.DENSE.resolve((4, 4)))) == 0  # tie: fan-in


def _official_conda_directions(
    grads: list[np.ndarray], proj_type: str, b1: float, b2: float, eps: float, gap: int
) -> list[np.ndarray]:
    """Float64 transcription of the official ``CondaProjector`` + ``Conda.step``
    (jie040109/Conda @449af713) on one PyTorch ``(out, in)`` matrix: the update
    direction ``scale·√(1−β₂ᵗ)/(1−β₁ᵗ)·back(M̃/(√V + ε))`` with ``scale = 1``.
    On the larger side of a non-square weight, where the official code fails
    (its ``V`` is parameter-shaped), the transcription projects as GaLore does."""
    tall = grads[0].shape[0] >= grads[0].shape[1]
    kind = {"std": "right" if tall else "left", "reverse_std": "left" if tall else "right"}
    kind = kind.get(proj_type, proj_type)
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        if (t - 1) % gap == 0:
            u, _, vh = np.linalg.svd(m, full_matrices=False)
            q = vh if kind == "right" else u
        right = kind == "right"
        rg, rm = (g @ q.T, m @ q.T) if right else (q.T @ g, q.T @ m)
        v = b2 * v + (1 - b2) * rg**2
        n = rm / (np.sqrt(v) + eps)
        out.append((n @ q if right else q @ n) * np.sqrt(1 - b2**t) / (1 - b1**t))
    return out


@pytest.mark.parametrize("side", ["std", "reverse_std", "in", "out"])
@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (5, 5)], ids=["wide", "tall", "square"])
def test_scale_by_conda_sides_match_the_official_projector(side: str, shape: tuple) -> None:
    """Every ``side`` (the official ``proj_type``: std, reverse_std, right = 'in',
    left = 'out') on Flax kernels of both orientations, 7 steps with refreshes at
    calls 0, 3, 6, float64: the official projector's directions to 1e-10. On the
    larger side the basis is ``(d, k)`` and ``V`` the projected matrix."""
    b1, b2, eps, gap = 0.9, 0.99, 1e-8, 3
    proj_type = {"in": "right", "out": "left"}.get(side, side)
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(shape) * rng.uniform(0.5, 2.0, shape[1]) for _ in range(7)]
    want = _official_conda_directions([g.T for g in grads], proj_type, b1, b2, eps, gap)
    with jax.enable_x64(True):
        tx = optx.scale_by_conda(b1, b2, eps, update_proj_gap=gap, side=side)
        params = {"w": {"kernel": jnp.zeros(shape, jnp.float64)}}
        state, update = tx.init(params), jax.jit(tx.update)
        k = min(shape)
        mode = bases.conda_side(bases.matrix_modes(optx.DENSE.resolve(shape)), side)
        assert state.bases["w"]["kernel"].shape == (shape[mode], k)
        nu_shape = tuple(k if i == mode else d for i, d in enumerate(shape))
        assert state.nu["w"]["kernel"].shape == nu_shape
        for g, w in zip(grads, want):
            u, state = update({"w": {"kernel": jnp.asarray(g)}}, state)
            np.testing.assert_allclose(np.asarray(u["w"]["kernel"]), w.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("side", ["reverse_std", "out"])
def test_conda_alias_side_on_a_sharded_mesh(side: str) -> None:
    """The larger-side projection (``V`` of the projected shape) on an 8-device
    Explicit mesh with a sharded kernel gives the unsharded numbers, with and
    without ``jax.set_mesh``."""
    rng = np.random.default_rng(8)
    params = {"w": {"kernel": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)}}
    grads = [jax.tree.map(lambda x, c=t + 1.0: x * c + 0.1, params) for t in range(3)]
    assert_sharded_run_matches(optx.conda(1e-2, update_proj_gap=2, side=side), params, grads)


# ----------------------------------------------------------------------------
# scale_by_cosmos against the float64 reference
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [True, False])
def test_scale_by_cosmos_matches_reference(nesterov: bool) -> None:
    shapes = {"dense": (8, 6), "stack": (2, 6, 8), "conv": (2, 2, 2, 6), "bias": (5,)}
    b1, b2, eps, rank, gamma = 0.9, 0.99, 1e-8, 3, 0.2
    grads = gradient_sequence(5, seed=21, shapes=shapes)
    tx = optx.scale_by_cosmos(b1, b2, eps, rank=rank, gamma=gamma, nesterov=nesterov)
    updates = run_transform(tx, grads)
    for name in ("dense", "stack", "conv"):
        elems = elements(name, grads[0][name])
        refs = [NpCosmos(b1, b2, eps, rank, gamma, nesterov) for _ in elems]
        for t, g in enumerate(grads):
            want = [ref.step(e) for ref, e in zip(refs, elements(name, g[name]))]
            got = elements(name, np.asarray(leaf_of(updates[t], name), np.float64))
            for gw, ww in zip(got, want):
                assert_close(gw, ww, 5e-4, name, t)
    # Leaves without a layout pass through (the alias routes them to AdamW).
    np.testing.assert_array_equal(updates[0]["bias"], np.asarray(grads[0]["bias"], np.float32))


def test_scale_by_cosmos_rank_is_clipped_to_fan_in() -> None:
    params = {"hidden": {"kernel": jnp.zeros((4, 16))}, "wide": {"kernel": jnp.zeros((16, 4))}}
    state = optx.scale_by_cosmos(rank=8).init(params)
    assert state.basis["hidden"]["kernel"].shape == (4, 4)
    assert state.basis["wide"]["kernel"].shape == (16, 8)
    assert state.nu["wide"]["kernel"].shape == (8, 4)
    assert state.basis_moment["wide"]["kernel"].shape == (8, 8)
    g = jax.tree.map(lambda p: jnp.ones_like(p) + 0.1 * jnp.arange(p.size).reshape(p.shape), params)
    u, _ = optx.scale_by_cosmos(rank=8).update(g, state)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


def _fsdp_against_unsharded(tx: Any, steps: int) -> list[tuple[str, str, str]]:
    """``tx`` under FSDP (Explicit axes, 8 devices) on a 32 × 24 row-sharded kernel, a
    2 × 24 × 16 column-sharded stack and a 16 × 8 column-sharded kernel: ``steps``
    updates equal the unsharded ones (updates and state, float tolerance) and the state
    keeps its shardings. Returns the compiled update's collectives, ``(kind, result
    type, op_name)``."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    k = jax.random.split(jax.random.key(3), 3)
    params = {
        "rows": {"kernel": jax.random.normal(k[0], (32, 24))},
        "cols": {"kernel": jax.random.normal(k[1], (2, 24, 16))},
        "wide": {"kernel": jax.random.normal(k[2], (16, 8))},
    }
    specs = {
        "rows": {"kernel": P("x", None)},
        "cols": {"kernel": P(None, None, "x")},
        "wide": {"kernel": P(None, "x")},
    }
    sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    sharded = jax.device_put(params, sh)
    shardings = optx.sharding.state_shardings(tx, sharded)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    want, got = tx.init(params), jax.device_put(tx.init(sharded), shardings)
    compiled = step.lower(sharded, got, sharded).compile()
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)  # noqa: E731
    for i in range(steps):
        g = jax.tree.map(lambda x, i=i: jnp.sin((i + 1) * x) ** 3, params)
        u_want, want = step(g, want, params)
        u_got, got = compiled(jax.device_put(g, sh), got, sharded)
        jax.tree.map(close, (u_got, got), (u_want, want))
    placed = jax.tree.map(
        lambda x, want_sh: x.sharding.is_equivalent_to(want_sh, x.ndim), got, shardings
    )
    assert all(jax.tree.leaves(placed)), placed
    kinds = "all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute"
    out = []
    for line in compiled.as_text().splitlines():
        m = re.search(rf"= (.*?) ({kinds})(?:-start)?\(", line)
        if m:
            out.append((m.group(2), m.group(1), re.search(r'op_name="([^"]*)"', line).group(1)))
    return out


@pytest.mark.xdist_group("cosmos")
def test_cosmos_power_step_under_fsdp_is_explicit_and_matches_unsharded() -> None:
    """COSMOS under FSDP (:func:`_fsdp_against_unsharded`), rank 4, four steps (three
    power steps).

    The power step (the ``lax.cond``'s second branch, every step after the first) runs
    as one ``shard_map`` (bases.subspace_power_step_sharded): the QR's input is
    gathered once (its ``32 × 4`` rows) and the QR runs whole on every device, so no
    collective runs inside its loops and nothing is permuted (the compiler's partition
    of the Householder QR all-reduced per column, inside the loops)."""
    tx = optx.cosmos(0.01, rank=4, router=optx.Router(warn_guessed=False))
    power = [c for c in _fsdp_against_unsharded(tx, 4) if "branch_0_fun" in c[2]]
    assert power and not [c for c in power if c[0] == "collective-permute"], power
    assert not [c for c in power if "/while/" in c[2]], power
    assert [c for c in power if c[0] == "all-gather" and "[32,4]" in c[1]], power


@pytest.mark.xdist_group("soap")
def test_soap_refresh_rebases_the_moment_by_reduce_scatter_under_fsdp() -> None:
    """SOAP under FSDP (:func:`_fsdp_against_unsharded`), a refresh every second step,
    five steps (refreshes at steps 2 and 4).

    The refresh's change of basis of the first moment (bases._soap_moment_rebased:
    ``M`` times the old-to-new transitions ``Q_iᵀ Q'_i``) reduce-scatters its partial
    products onto the sharded mode; no moment-sized array is all-reduced in the
    refresh (the compiler's partition of the rotation back and forth all-reduced
    them). Numbers: the unsharded step's (its rotation back and forth), to float
    tolerance."""
    tx = optx.soap(0.01, update_proj_gap=2, router=optx.Router(warn_guessed=False))
    refresh = [c for c in _fsdp_against_unsharded(tx, 5) if "/cond/" in c[2]]
    moments = ("[32,24]", "[2,24,16]", "[16,8]", "[1,32,24]", "[1,16,8]")
    assert [c for c in refresh if c[0] == "reduce-scatter"], refresh
    assert not [c for c in refresh if c[0] == "all-reduce" and any(x in c[1] for x in moments)]


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        optx.scale_by_soap(update_proj_gap=0)
    with pytest.raises(TypeError):
        optx.scale_by_soap(update_proj_gap=2.5)
    with pytest.raises(TypeError):
        optx.scale_by_soap(max_precond_dim=None)
    with pytest.raises(ValueError, match="factorization"):
        optx.scale_by_soap(factorization="kronecker")
    with pytest.raises(ValueError, match="merge_dims"):
        optx.scale_by_soap(merge_dims=True)
    with pytest.raises(ValueError):
        optx.scale_by_soap(b1=1.0)
    with pytest.raises(ValueError):
        optx.scale_by_soap(shampoo_beta=1.5)
    with pytest.raises(TypeError, match="precond_dtype"):
        optx.scale_by_soap(precond_dtype="float-ish")
    with pytest.raises(ValueError):
        optx.scale_by_conda(update_proj_gap=0)
    with pytest.raises(ValueError):
        optx.scale_by_conda(eps=-1.0)
    with pytest.raises(ValueError):
        optx.scale_by_conda(scale=float("nan"))
    with pytest.raises(ValueError):
        optx.scale_by_cosmos(rank=0)
    with pytest.raises(TypeError):
        optx.scale_by_cosmos(rank=4.0)
    with pytest.raises(ValueError, match="Newton"):
        optx.scale_by_cosmos(ns_coeffs="nope")
    with pytest.raises(ValueError, match="layout"):
        # A layout tree with no entry for a leaf names that leaf at init.
        optx.scale_by_soap(layout={"other": optx.DENSE}).init({"w": jnp.zeros((2, 2))})


# ----------------------------------------------------------------------------
# Sharding: factors, bases and subspace state on the 8-device CPU mesh
# ----------------------------------------------------------------------------


def _mesh_case(square: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sharded params. SOAP gets square matrices: a non-square matrix's larger
    factor is rank-deficient at the first eigh, and the (arbitrary) null-space
    basis the sharded and unsharded eigh return differs, which SOAP's Adam is
    not invariant to."""
    r = np.random.default_rng(9)
    wide = 8 if square else 16
    params = {
        "hidden": {"kernel": jnp.asarray(r.normal(size=(wide, 8)), jnp.float32)},
        "stack": {"kernel": jnp.asarray(r.normal(size=(2, 8, wide)), jnp.float32)},
        "bias": jnp.asarray(r.normal(size=(8,)), jnp.float32),
    }
    specs = {
        "hidden": {"kernel": P("data", "model")},
        "stack": {"kernel": P("model", "data", None)},
        "bias": P(),
    }
    return params, specs


TRANSFORMS = {
    "soap": lambda: optx.scale_by_soap(update_proj_gap=2),
    "conda": lambda: optx.scale_by_conda(update_proj_gap=2),
    "cosmos": lambda: optx.scale_by_cosmos(rank=3),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_state_sharding_rules_under_explicit_mesh(name: str) -> None:
    tx = TRANSFORMS[name]()
    params, specs = _mesh_case(square=name == "soap")
    loss = lambda p: sum(jnp.sum(jnp.sin(x) * x) for x in jax.tree.leaves(p))  # noqa: E731
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)

    def grads(p: Any, i: jax.Array) -> Any:
        # A different gradient every step: SOAP's first real step must not see the
        # gradient its basis diagonalizes exactly (round-off would dominate).
        return jax.grad(loss)(jax.tree.map(lambda x: x * (1.0 + 0.1 * i), p))

    def run(p: Any, n: int) -> tuple[Any, list[Any]]:
        state, outs = tx.init(p), []
        step = jax.jit(lambda p, s, i: tx.update(grads(p, i), s, p))
        for i in range(n):
            u, state = step(p, state, jnp.asarray(i, jnp.float32))
            outs.append(u)
        return state, outs

    _, ref = run(params, 3)
    with jax.set_mesh(mesh):
        sharded = jax.tree.map(
            lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs
        )
        state0 = tx.init(sharded)
        abstract = optx.sharding.state_shardings(tx, sharded)
        for s, a in zip(jax.tree.leaves(state0), jax.tree.leaves(abstract)):
            assert s.sharding.is_equivalent_to(a, s.ndim), (s.sharding, a)
        state, outs = run(sharded, 3)
        assert jax.tree.map(jax.typeof, state) == jax.tree.map(jax.typeof, state0)
    # Deliberate rules: a per-mode state axis inherits its leaf axis' sharding,
    # batch (stack) axes keep theirs.
    if name == "soap":
        # ... and the mesh axis a factor's first axis leaves unused goes on its second
        # (state proportional to the parameter's share, issue 16 §2).
        f_in, f_out = (f["hidden"]["kernel"] for f in state0.factors)
        assert f_in.sharding.spec == P("data", "model")
        assert f_out.sharding.spec == P("model", "data")
        # A basis takes its mode's sharding on its columns (bases.basis_zeros: the step
        # rotates the gathered gradient into each device's columns).
        s_in = state0.bases[0]["stack"]["kernel"]
        assert s_in.sharding.spec == P("model", None, "data")
    elif name == "conda":
        # the basis's first axis follows the leaf's; the unused 'data' goes on the second
        assert state0.bases["hidden"]["kernel"].sharding.spec == P("model", "data")
        assert state0.bases["stack"]["kernel"].sharding.spec == P("model", "data", None)
    else:
        assert state0.basis["hidden"]["kernel"].sharding.spec == P("data", None)
        assert state0.nu["hidden"]["kernel"].sharding.spec == P(None, "model")
        assert state0.basis_moment["stack"]["kernel"].sharding.spec == P("model", None, None)
    assert jax.typeof(outs[-1]["hidden"]["kernel"]).sharding.spec == P("data", "model")
    for a, b in zip(jax.tree.leaves(outs), jax.tree.leaves(ref)):
        # f32 reductions run in another order when sharded (NS amplifies it a little).
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_subspace_split_keeps_real_coordinates_of_a_large_gradient() -> None:
    """The roundoff floor of ``Pᵀ X`` is per column (``8 ε √n ‖X_{:,j}‖``): on a
    512 × 256 full-rank gradient it zeroes no real coordinate (a floor of
    ``8 n ε ‖X‖_F`` zeroed ~6 % of them), and it still zeroes roundoff."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 256)).astype(np.float32)
    p, _ = np.linalg.qr(rng.standard_normal((512, 64)))
    p = p.astype(np.float32)
    c, res = bases.subspace_split(jnp.asarray(x), jnp.asarray(p))
    exact = p.astype(np.float64).T @ x.astype(np.float64)
    col = np.linalg.norm(x.astype(np.float64), axis=0)
    real = np.abs(exact) > 1e-3 * col  # far above roundoff (~1e-5 · ‖col‖)
    assert np.all(np.asarray(c)[real] != 0.0)
    np.testing.assert_allclose(np.asarray(c), exact, atol=1e-4 * col.max())
    np.testing.assert_allclose(np.asarray(res), x - p @ (p.T @ x), atol=1e-4)
    # A gradient inside the subspace: the residual is roundoff and returned as zero.
    inside = p @ rng.standard_normal((64, 256)).astype(np.float32)
    _, res_in = bases.subspace_split(jnp.asarray(inside), jnp.asarray(p))
    assert not np.any(np.asarray(res_in))


def test_scale_by_cosmos_gamma_zero_and_eps_zero() -> None:
    """γ = 0 (allowed by the alias and the primitive alike) drops the Newton–Schulz
    residual: the update is the γ > 0 one minus γ times the normalized residual, so
    two runs at γ and 2γ differ by exactly that term; ε = 0 with the rank at the fan-in
    (the residual is zero) stays finite (it had been 0/0)."""
    r = np.random.default_rng(4)
    g = {"w": jnp.asarray(r.normal(size=(6, 10)), jnp.float32)}
    outs = {}
    for gamma in (0.0, 0.2, 0.4):
        tx = optx.scale_by_cosmos(gamma=gamma, rank=3)
        u, _ = tx.update(g, tx.init(g))
        outs[gamma] = np.asarray(u["w"])
    np.testing.assert_allclose(outs[0.4] - outs[0.2], outs[0.2] - outs[0.0], atol=1e-5)
    assert np.abs(outs[0.2] - outs[0.0]).max() > 1e-3
    tx = optx.scale_by_cosmos(eps=0.0, rank=6)
    state = tx.init(g)
    for _ in range(3):
        u, state = tx.update(g, state)
        assert bool(jnp.all(jnp.isfinite(u["w"])))


@pytest.mark.parametrize("name", ["scale_by_soap", "scale_by_cosmos", "scale_by_conda"])
def test_eps_zero_is_the_limit_of_small_eps(name: str) -> None:
    """``eps=0`` (allowed, as in optax) in a rotated or projected basis: SOAP zeroes
    its roundoff coordinates (``M' = V = 0``), a 16 × 32 gradient reaches only 16 of
    the 32 right-basis directions, and COSMOS's residual is zero at full rank. Those
    coordinates get no step, as any ``eps > 0`` gives them; the update equals the
    ``eps = 1e-30`` one (it had been NaN for SOAP and COSMOS)."""
    r = np.random.default_rng(5)
    w = jnp.asarray(0.3 * r.normal(size=(16, 32)), jnp.float32)
    g = {"w": jnp.sin(w) + w * jnp.cos(w) + w}
    kw = {"rank": 16} if name == "scale_by_cosmos" else {}
    outs = []
    for eps in (0.0, 1e-30):
        tx = getattr(optx, name)(eps=eps, **kw)
        state = tx.init(g)
        for _ in range(3):
            u, state = tx.update(g, state)
        outs.append(np.asarray(u["w"]))
    assert np.all(np.isfinite(outs[0]))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-7)


def test_eigh_basis_column_signs_are_fixed_by_the_generic_vector() -> None:
    """LAPACK's eigenvector signs are arbitrary; ``eigh_basis`` fixes each column's sign so
    its projection on the fixed generic vector is positive (deterministic stored basis)."""
    a = np.random.default_rng(7).normal(size=(6, 6))
    f = jnp.asarray(a @ a.T, jnp.float32)
    q = np.asarray(bases.eigh_basis(f), np.float64)
    g = np.asarray(bases._generic((6, 1), jnp.float32), np.float64)[:, 0]
    assert np.all(q.T @ g > 0)
    # Same eigenvectors as the float64 eigh (descending), up to those signs.
    _, v = np.linalg.eigh(a @ a.T)
    v = v[:, ::-1]
    np.testing.assert_allclose(np.abs(q.T @ v), np.eye(6), atol=1e-4)


def test_power_qr_basis_of_a_rank_deficient_factor_is_scale_invariant() -> None:
    """The basis of ``c F`` is that of ``F``: the null-space completion is at the scale of
    ``F Q``, so no real column is mistaken for roundoff however large ``F`` is."""
    r = np.random.default_rng(5)
    a = r.normal(size=(5, 2))
    f = a @ a.T  # rank 2: three null columns to complete
    q0 = jnp.asarray(np.linalg.qr(r.normal(size=(5, 5)))[0], jnp.float32)
    want, _ = bases.power_qr_basis(jnp.asarray(f, jnp.float32), q0)
    for c in (1e-6, 1e6):
        got, _ = bases.power_qr_basis(jnp.asarray(c * f, jnp.float32), q0)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_scale_by_soap_shampoo_beta_defaults_to_b2() -> None:
    """``shampoo_beta=None`` is the official ``−1``: the factors' EMA decays with ``b2``
    (b1 ≠ b2 here, so a factor EMA at ``b1`` would show)."""
    b1, b2, eps, freq = 0.5, 0.95, 1e-8, 2
    grads = gradient_sequence(5, seed=11)
    updates = run_transform(optx.scale_by_soap(b1, b2, eps, update_proj_gap=freq), grads)
    ref = NpSoap(b1, b2, eps, b2, freq, [True, True])
    for t, g in enumerate(grads):
        assert_close(updates[t]["dense"]["kernel"], ref.step(g["dense"]), 2e-4, "dense", t)
