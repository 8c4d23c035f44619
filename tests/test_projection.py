"""Tests of optx/_src/projection.py against float64 NumPy references.

The references below are written from the papers' update rules (GaLore
arXiv 2403.03507 Alg. 2, APOLLO arXiv 2412.05270 Alg. 1, FRUGAL
arXiv 2411.07837 Alg. 1, DCT-AdamW arXiv 2505.17967 Alg. 1), on 2-D, stacked
``(L, in, out)`` and conv ``(kh, kw, in, out)`` inputs. Random projections
cannot be reproduced bit-for-bit in NumPy, so the references use a
deterministic custom projection (passed to optx as a callable) or, for the
random kinds, check the projector's distributional properties.
"""

from __future__ import annotations

import itertools
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
from tests.matrix_views import matrices
from tests.mesh_runs import assert_sharded_run_matches
from tests.projection_reference import (
    adam_moments,
    columns_projection,
    dct_columns,
    dct_projection,
    down,
    jax_columns_projection,
    projected_axis,
    up,
)

CONV = optx.MatrixLayout((-4, -3, -2), (-1,))
SHAPES = {"hidden": (10, 6), "stack": (3, 6, 10), "conv": (3, 3, 2, 5)}


def _layout(path: str, leaf: Any) -> Any:
    return CONV if path.startswith("conv") else optx.DENSE


def _tree(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) * np.exp(rng.uniform(-1, 1, s)) for k, s in SHAPES.items()}


def _run(tx: optax.GradientTransformation, grads: list[dict], params: Any = None) -> list[dict]:
    state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
    step = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = step(jax.tree.map(jnp.asarray, g), state, params)
        out.append(jax.tree.map(np.asarray, u))
    return out


# ----------------------------------------------------------------------------
# Geometry, bases and projector kinds
# ----------------------------------------------------------------------------


def test_projected_axis_rules() -> None:
    # 'std' projects the smaller dimension, ties -> fan-in (PyTorch "right").
    assert optx.projections.projected_axis(4, 8, "std") == "in"
    assert optx.projections.projected_axis(8, 4, "std") == "out"
    assert optx.projections.projected_axis(6, 6, "std") == "in"
    assert optx.projections.projected_axis(4, 8, "reverse_std") == "out"
    assert optx.projections.projected_axis(6, 6, "reverse_std") == "out"
    assert optx.projections.projected_axis(8, 4, "in") == "in"
    with pytest.raises(ValueError):
        optx.projections.projected_axis(4, 8, "left")


def test_dct_basis_matches_closed_form_and_is_orthonormal() -> None:
    d = 12
    ref = dct_columns(d)  # the DCT-II matrix; its columns are the basis
    np.testing.assert_allclose(np.asarray(optx.projections.dct_basis(d)), ref, atol=1e-6)
    idx = jnp.array([[3, 0], [11, 5]])
    np.testing.assert_allclose(
        np.asarray(optx.projections.dct_basis(d, idx)),
        ref[:, np.asarray(idx)].transpose(1, 0, 2),
        atol=1e-6,
    )
    big = optx.projections.dct_basis(4096, jnp.array([4095, 1]))
    np.testing.assert_allclose(np.asarray(big.T @ big), np.eye(2), atol=1e-4)


def test_projector_kinds_properties() -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 12, 30)), jnp.float32)
    key = jax.random.key(1)
    svd = optx.projections.compute_projector(x, None, projection="svd", axis="in", rank=3)
    u = np.linalg.svd(np.asarray(x, np.float64))[0][:, :, :3]
    for b in range(2):  # same subspace as NumPy's top-3 left singular vectors
        np.testing.assert_allclose(np.abs(u[b].T @ np.asarray(svd[b])), np.eye(3), atol=1e-4)
    orth = optx.projections.compute_projector(x, key, projection="orthogonal", axis="out", rank=5)
    assert orth.shape == (2, 30, 5)
    np.testing.assert_allclose(
        np.einsum("bdr,bds->brs", orth, orth), np.broadcast_to(np.eye(5), (2, 5, 5)), atol=1e-5
    )
    gauss = optx.projections.compute_projector(
        jnp.zeros((4, 400, 2)), key, projection="random", axis="in", rank=50
    )
    assert abs(float(jnp.mean(gauss))) < 0.01
    assert abs(float(jnp.var(gauss)) * 50 - 1.0) < 0.05  # N(0, 1/r)
    coord = np.asarray(
        optx.projections.compute_projector(x, key, projection="coordinate", axis="in", rank=4)
    )
    assert coord.dtype == np.int32 and coord.shape == (2, 4)
    assert all(len(set(row)) == 4 and row.min() >= 0 and row.max() < 12 for row in coord)
    dct = np.asarray(
        optx.projections.compute_projector(x, None, projection="dct", axis="out", rank=4)
    )
    Q = np.asarray(optx.projections.dct_basis(30), np.float64)
    scores = np.abs(np.asarray(x, np.float64) @ Q).sum(axis=1)  # l1 per basis column
    np.testing.assert_array_equal(dct, np.argsort(-scores, axis=1)[:, :4])


@pytest.mark.parametrize("kind", ["svd", "orthogonal", "coordinate", "dct"])
@pytest.mark.parametrize("axis", ["in", "out"])
def test_back_projection_and_residual(kind: str, axis: str) -> None:
    """For orthonormal bases, up∘down is the orthogonal projection onto the
    subspace: idempotent, and the residual is orthogonal to the subspace."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 7)), jnp.float32)
    p = optx.projections.compute_projector(x, jax.random.key(0), projection=kind, axis=axis, rank=3)
    r = optx.projections.project(x, p, projection=kind, axis=axis)
    assert r.shape == ((2, 3, 7) if axis == "in" else (2, 9, 3))
    back = optx.projections.project_back(r, p, projection=kind, axis=axis, matrix_shape=x.shape)
    res = optx.projections.residual(x, p, projection=kind, axis=axis)
    np.testing.assert_allclose(np.asarray(back + res), np.asarray(x), atol=1e-5)
    again = optx.projections.project(back, p, projection=kind, axis=axis)
    np.testing.assert_allclose(np.asarray(again), np.asarray(r), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(optx.projections.project(res, p, projection=kind, axis=axis)), 0.0, atol=1e-5
    )


# ----------------------------------------------------------------------------
# scale_by_subspace: GaLore, FRUGAL-style residual, DCT refresh phase
# ----------------------------------------------------------------------------


def _np_subspace_adam(
    grads: list[dict],
    *,
    rank: int,
    gap: int,
    scale: float,
    residual: str | None = None,
    reset: bool = False,
    phase: int = 0,
    official_eps: bool = True,
    projector: Any = columns_projection,
    side: str = "std",
) -> list[dict]:
    """Float64 reference: projector refresh, Adam in the subspace, back, residual."""
    b1, b2 = 0.9, 0.999
    eps = 1e-6 if official_eps else 1e-8
    outs: list[dict] = []
    st: dict[str, dict] = {}
    t = 0
    for step, g in enumerate(grads):
        refresh = step == 0 or (step + phase) % gap == 0
        if refresh and reset:
            st, t = {}, 0
        t += 1
        out = {}
        for name, x in g.items():
            X = matrices(x, name)
            fi, fo = X.shape[1:]
            axis = projected_axis(fi, fo, side)
            s = st.setdefault(name, {})
            if refresh:
                s["P"] = projector(X, min(rank, fi if axis == "in" else fo), axis)
            R = down(X, s["P"], axis)
            adam_moments(s, R, b1, b2)
            if official_eps:  # eps on the uncorrected sqrt(v), correction in the step
                N = np.sqrt(1 - b2**t) / (1 - b1**t) * s["m"] / (np.sqrt(s["v"]) + eps)
            else:
                N = (s["m"] / (1 - b1**t)) / (np.sqrt(s["v"] / (1 - b2**t)) + eps)
            U = scale * up(N, s["P"], axis)
            if residual is not None:
                res = X - up(R, s["P"], axis)
                U = U + (np.sign(res) if residual == "sign" else res)
            out[name] = U.reshape(x.shape)
        outs.append(out)
    return outs


@pytest.mark.parametrize("axis", ["in", "out"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.complex64])
def test_rank_one_projection_equals_the_matrix_product(axis: str, dtype: Any) -> None:
    """Rank-1 projections (APOLLO-Mini's) and back-projections, real, bf16 and
    complex, against float64 products of the same (rounded) inputs."""
    from optx._src import projection

    r = np.random.default_rng(7)
    x = r.normal(size=(3, 37, 29))
    d = 37 if axis == "in" else 29
    q = r.normal(size=(3, d, 1))
    if dtype == jnp.complex64:
        x, q = x + 1j * r.normal(size=x.shape), q + 1j * r.normal(size=q.shape)
    xj, qj = jnp.asarray(x, dtype), jnp.asarray(q, dtype)
    got = projection.project(xj, qj, projection="svd", axis=axis)
    xe, qe = np.asarray(xj, np.complex128), np.asarray(qj, np.complex128)
    want = (
        np.einsum("bdr,bdo->bro", qe.conj(), xe)
        if axis == "in"
        else np.einsum("bid,bdr->bir", xe, qe.conj())
    )
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(got, np.complex128), want, rtol=tol, atol=tol)
    assert got.dtype == dtype
    back = projection.project_back(got, qj, projection="svd", axis=axis, matrix_shape=x.shape)
    ge = np.asarray(got, np.complex128)
    want_back = (
        np.einsum("bdr,bro->bdo", qe, ge) if axis == "in" else np.einsum("bir,bdr->bid", ge, qe)
    )
    np.testing.assert_allclose(np.asarray(back, np.complex128), want_back, rtol=tol, atol=tol)
    assert back.shape == x.shape and back.dtype == dtype


@pytest.mark.parametrize("gap", [2, 100])
def test_galore_subspace_adam_matches_reference(gap: int) -> None:
    grads = [_tree(s) for s in range(5)]
    inner = optx.scale_by_adam(0.9, 0.999, 1e-6, eps_placement="uncorrected")
    tx = optx.scale_by_subspace(
        inner,
        rank=3,
        projection=jax_columns_projection,
        update_proj_gap=gap,
        scale=0.25,
        layout=_layout,
    )
    ours = _run(tx, grads)
    ref = _np_subspace_adam(grads, rank=3, gap=gap, scale=0.25)
    for a, b in zip(ours, ref):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-6, err_msg=k)


def test_svd_subspace_matches_numpy_svd_reference() -> None:
    """With one refresh (moments start at zero) SVD signs cancel exactly."""
    grads = [_tree(s) for s in range(4)]

    def np_svd(X: np.ndarray, r: int, axis: str) -> np.ndarray:
        u, _, vh = np.linalg.svd(X, full_matrices=False)
        return u[:, :, :r] if axis == "in" else np.swapaxes(vh[:, :r, :], 1, 2)

    tx = optx.scale_by_subspace(
        optx.scale_by_adam(0.9, 0.999, 1e-6, eps_placement="uncorrected"),
        rank=2,
        update_proj_gap=200,
        scale=1.0,
        layout=_layout,
    )
    ours = _run(tx, grads)
    ref = _np_subspace_adam(grads, rank=2, gap=200, scale=1.0, projector=np_svd)
    for a, b in zip(ours, ref):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_svd_projector_is_the_leading_singular_vectors_exactly() -> None:
    """The SVD projector is ``u[:, :, :r]`` (``'in'``) or ``(vh[:, :r, :])ᵀ`` (``'out'``)
    of the same library SVD, bit for bit (the transpose-then-slice order of the
    fan-out side only changes the layout XLA gives the result)."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 12, 9)), jnp.float32)
    u, _, vh = jnp.linalg.svd(x, full_matrices=False)
    for axis, want in (("in", u[:, :, :4]), ("out", jnp.swapaxes(vh[:, :4, :], 1, 2))):
        got = optx.projections.compute_projector(x, None, projection="svd", axis=axis, rank=4)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=axis)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's layout assignment")
@pytest.mark.parametrize("side", ["std", "reverse_std", "out"])
def test_svd_refresh_keeps_the_stored_projector_layout(side: str) -> None:
    """The refresh ``cond`` returns the projector in the state's row-major layout on
    every side: XLA:CPU once gave the fan-out side's result the transposed layout that
    made the SVD branch's transpose free, and then copied the stored projector into it
    and back on every step (GaLore 1.12–1.17× optax.contrib.galore, issue 17)."""
    tx = optx.scale_by_subspace(rank=8, update_proj_gap=10, side=side)
    grads = {
        "square": {"kernel": jnp.ones((16, 16))},
        "wide": {"kernel": jnp.ones((16, 40))},
        "tall": {"kernel": jnp.ones((40, 16))},
    }
    hlo = jax.jit(tx.update).lower(grads, tx.init(grads)).compile().as_text()
    results = " ".join(re.findall(r"= \(([^)]*)\) conditional\(", hlo[hlo.index("ENTRY") :]))
    layouts = re.findall(r"f32\[\d+,\d+,\d+\]\{([\d,]+)\}", results)
    assert layouts == ["2,1,0"] * 3, layouts


@pytest.mark.xdist_group("galore")
def test_galore_svd_refresh_under_fsdp_decomposes_each_matrix_on_one_device() -> None:
    """GaLore (rank 4, a refresh every second step) under FSDP on 8 devices (Explicit
    axes): three row-sharded and one column-sharded 16 × 16 kernel (one group of four),
    a row-sharded 32 × 16 kernel with a 2-matrix row-sharded stack of the same shape, and
    a column-sharded 16 × 32 kernel alone in its orientation.

    The refresh hands each device whole matrices through one all-to-all per group and
    returns the projectors' blocks through a second
    (``orthogonalization.map_fsdp_matrix_results``): no matrix of the two groups is
    gathered whole inside the refresh, as the per-leaf SVD did on every device; the lone
    16 × 32 kernel is (one gather moves less than two all-to-alls padded to 8). Numbers: the unsharded run's over four steps (two refreshes), state included;
    the state keeps its shardings."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    shapes = {
        "q": ((16, 16), P("x", None)),
        "k": ((16, 16), P("x", None)),
        "v": ((16, 16), P("x", None)),
        "o": ((16, 16), P(None, "x")),
        "down": ((32, 16), P("x", None)),
        "stack": ((2, 32, 16), P(None, "x", None)),
        "up": ((16, 32), P(None, "x")),
    }
    keys = iter(jax.random.split(jax.random.key(5), len(shapes)))
    params = {n: {"kernel": jax.random.normal(next(keys), s)} for n, (s, _) in shapes.items()}
    sh = {n: {"kernel": NamedSharding(mesh, spec)} for n, (_, spec) in shapes.items()}
    tx = optx.galore(0.01, rank=4, update_proj_gap=2, router=optx.Router(warn_guessed=False))
    sharded = jax.device_put(params, sh)
    shardings = optx.sharding.state_shardings(tx, sharded)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    want, got = tx.init(params), jax.device_put(tx.init(sharded), shardings)
    compiled = step.lower(sharded, got, sharded).compile()
    refresh = [
        (m.group(2), m.group(1))
        for line in compiled.as_text().splitlines()
        if "/cond/" in line
        and (m := re.search(r"= (.*?) (all-gather|all-reduce|all-to-all)(?:-start)?\(", line))
    ]
    assert [kind for kind, _ in refresh].count("all-to-all") == 4, refresh
    gathered = [c[1] for c in refresh if c[0] != "all-to-all"]
    assert len(gathered) == 1 and gathered[0].startswith("f32[1,16,32]"), refresh
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    for i in range(4):
        g = jax.tree.map(lambda x, i=i: jnp.sin((i + 1) * x) ** 3, params)
        u_want, want = step(g, want, params)
        u_got, got = compiled(jax.device_put(g, sh), got, sharded)
        jax.tree.map(close, (u_got, got), (u_want, want))
    placed = jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), got, shardings)
    assert all(jax.tree.leaves(placed)), placed


@pytest.mark.filterwarnings("ignore::optx.RoutingWarning")  # 'm2' is routed by its name
def test_dct_refresh_is_one_cond_with_same_shapes_stacked() -> None:
    """Without a mesh, the DCT column choice of every matrix runs in one refresh
    ``cond`` (same-shape matrices stacked), and chooses what the per-leaf refresh
    chooses (the per-leaf path runs under a mesh)."""
    r = np.random.default_rng(4)
    shapes = [(12, 8), (12, 8), (3, 12, 8), (8, 12), (9, 5)]
    params = {f"m{i}": {"kernel": jnp.zeros(s)} for i, s in enumerate(shapes)}
    grads = [
        jax.tree.map(lambda x: jnp.asarray(r.normal(size=x.shape), jnp.float32), params)
        for _ in range(4)
    ]
    tx = optx.dct_adamw(1e-2, rank=3, update_proj_gap=2)

    def conds(tree: Any) -> int:
        text = jax.jit(tx.update).lower(tree, tx.init(tree), tree).as_text()
        return len(re.findall(r"stablehlo\.(?:if|case)\b", text))

    assert conds(params) == conds({"m0": params["m0"]})

    def run() -> list[Any]:
        state, out = tx.init(params), []
        for g in grads:
            u, state = jax.jit(tx.update)(g, state, params)
            out.append((u, state))
        return out

    stacked = run()
    with jax.set_mesh(jax.make_mesh((1,), ("x",), axis_types=(AxisType.Auto,))):
        per_leaf = run()
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(per_leaf), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_residual_sign_and_reset_match_frugal_reference() -> None:
    grads = [_tree(10 + s) for s in range(5)]
    tx = optx.scale_by_subspace(
        optx.scale_by_adam(),
        density=0.34,
        projection=jax_columns_projection,
        update_proj_gap=2,
        residual="sign",
        reset_on_refresh=True,
        layout=_layout,
    )
    ours = _run(tx, grads)

    def rank_of_density(X: np.ndarray, r: int, axis: str) -> np.ndarray:
        d = X.shape[1] if axis == "in" else X.shape[2]
        return columns_projection(X, max(1, round(0.34 * d)), axis)

    ref = _np_subspace_adam(
        grads,
        rank=10**6,
        gap=2,
        scale=1.0,
        residual="sign",
        reset=True,
        official_eps=False,
        projector=rank_of_density,
    )
    for a, b in zip(ours, ref):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_dct_refresh_phase_and_scores_match_reference() -> None:
    grads = [_tree(20 + s) for s in range(5)]

    tx = optx.scale_by_subspace(
        optx.scale_by_adam(),
        rank=2,
        projection="dct",
        update_proj_gap=2,
        refresh_phase=1,
        slot_order="score",  # the reference keeps the columns sorted by score
        layout=_layout,
    )
    ours = _run(tx, grads)
    ref = _np_subspace_adam(
        grads, rank=2, gap=2, scale=1.0, phase=1, official_eps=False, projector=dct_projection
    )
    for a, b in zip(ours, ref):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("score_norm", [1.0, 2.0, 0.5, float("inf")])
@pytest.mark.parametrize("axis", ["in", "out"])
def test_dct_scores_are_the_lp_norms_of_the_official_code(score_norm: float, axis: str) -> None:
    """The ``'dct'`` selection ranks basis vectors by the ℓp norm of their
    alignments ``S`` (the official ``S.norm(p=ell_norm)``), ``p = inf`` included
    (the largest ``|S|``)."""
    from optx._src import projection

    x = np.random.default_rng(3).standard_normal((2, 12, 9)) * np.linspace(0.5, 2, 9)
    d = x.shape[1] if axis == "in" else x.shape[2]
    q = dct_columns(d)
    s = np.einsum("dk,bdo->bko", q, x) if axis == "in" else np.einsum("bid,dk->bik", x, q)
    norms = np.linalg.norm(s, ord=score_norm, axis=2 if axis == "in" else 1)
    want = np.argsort(-norms, axis=1, kind="stable")[:, :4]
    got = projection.compute_projector(
        jnp.asarray(x, jnp.float32),
        None,
        projection="dct",
        axis=axis,
        rank=4,
        score_norm=score_norm,
    )
    np.testing.assert_array_equal(np.asarray(got), want)


def test_dct_adamw_linf_scores_on_a_mesh_sharded_on_both_axes() -> None:
    """``score_norm=inf`` on an Explicit mesh with the kernel sharded on both
    axes: the scores' blocks of the other axis combine by a max (not a sum), so
    the sharded selection and trajectory are the unsharded ones."""
    rng = np.random.default_rng(9)
    kernel = rng.standard_normal((16, 8))
    params = {"w": {"kernel": jnp.asarray(kernel, jnp.float32)}}
    column_scales = [np.random.default_rng(s).uniform(0.2, 3.0, (1, 8)) for s in range(4)]
    grads = [{"w": {"kernel": jnp.asarray(kernel * c, jnp.float32)}} for c in column_scales]
    tx = optx.dct_adamw(1e-2, rank=3, score_norm=float("inf"))
    assert_sharded_run_matches(tx, params, grads)


def test_refresh_runs_only_on_schedule() -> None:
    g = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)), jnp.float32)}
    tx = optx.scale_by_subspace(rank=2, projection="orthogonal", update_proj_gap=3)
    state = tx.init(g)
    seen = []
    for _ in range(7):
        _, state = tx.update(g, state)
        seen.append(np.asarray(state.projector["w"]).copy())
    changed = [not np.array_equal(a, b) for a, b in itertools.pairwise(seen)]
    # counts before the step: 0 (draw), 1, 2, 3 (draw), 4, 5, 6 (draw)
    assert changed == [False, False, True, False, False, True]


def test_leaves_without_layout_get_inner_at_full_size() -> None:
    g = {"bias": jnp.ones(5), "kernel": jnp.ones((6, 4))}
    tx = optx.scale_by_subspace(optax.scale(-2.0), rank=1)
    u, state = tx.update(g, tx.init(g))
    np.testing.assert_allclose(np.asarray(u["bias"]), -2.0)
    assert isinstance(state.projector["bias"], optax.MaskedNode)


# ----------------------------------------------------------------------------
# scale_by_apollo
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale_type", ["channel", "tensor"])
def test_apollo_scaling_matches_reference(scale_type: str) -> None:
    grads = [_tree(30 + s) for s in range(4)]
    tx = optx.scale_by_apollo(
        rank=2,
        scale_type=scale_type,
        projection=jax_columns_projection,
        update_proj_gap=2,
        layout=_layout,
    )
    ours = _run(tx, grads)
    b1, b2, eps = 0.9, 0.999, 1e-6
    st: dict[str, dict] = {}
    for step, (g, out) in enumerate(zip(grads, ours)):
        for name, x in g.items():
            X = matrices(x, name)
            axis = projected_axis(*X.shape[1:])
            s = st.setdefault(name, {})
            if step % 2 == 0:
                s["P"] = columns_projection(X, 2, axis)
            R = down(X, s["P"], axis)
            adam_moments(s, R, b1, b2)
            N = s["m"] / (np.sqrt(s["v"]) + eps)  # no bias correction in the ratio
            if scale_type == "tensor":
                factor = np.linalg.norm(N, axis=(1, 2), keepdims=True) / (
                    np.linalg.norm(R, axis=(1, 2), keepdims=True) + 1e-8
                )
            else:  # channels = the unprojected axis; norms over the rank axis
                ax = 1 if axis == "in" else 2
                factor = np.linalg.norm(N, axis=ax, keepdims=True) / (
                    np.linalg.norm(R, axis=ax, keepdims=True) + 1e-8
                )
            ref = (X * factor).reshape(x.shape)  # the RAW gradient is scaled
            np.testing.assert_allclose(out[name], ref, rtol=2e-4, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------
# Block subspace (FRUGAL's default)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("residual", ["sign", "sgd", None])
def test_block_subspace_matches_reference_ascending_order(residual: str | None) -> None:
    """Inactive blocks get ``ρ ψ(G)``: ψ = sign (FRUGAL's signSGD), the identity
    (``'sgd'``) or nothing (``None``)."""
    shapes = {"a": (4, 6, 5), "b": (6, 5), "c": (5, 6)}  # groups 6x5 (N=5), 5x6 (N=1)
    rng = np.random.default_rng(5)
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(5)]
    tx = optx.scale_by_block_subspace(
        density=0.4,
        update_proj_gap=2,
        order="ascending",
        residual=residual,
        residual_scale=0.5,
        layout=optx.DENSE,
    )
    with pytest.warns(UserWarning, match=r"round\(0.4·1\) = 0 active blocks"):
        state = tx.init(jax.tree.map(jnp.asarray, grads[0]))
        ours = _run(tx, grads)
    # The 6x5 group's state sits at its first leaf: round(0.4·5) = 2 blocks; the 5x6
    # group's round(0.4·1) = 0 is raised to 1 (with the warning above).
    assert state.active["a"].shape == (2,)
    assert isinstance(state.active["b"], optax.MaskedNode)
    assert state.active["c"].shape == (1,)
    assert state.inner_state.mu["a"].shape == (2, 6, 5)
    b1, b2, eps = 0.9, 0.999, 1e-8
    start, t, m, v, active = 0, 0, None, None, None
    mc = vc = 0.0
    for step, (g, out) in enumerate(zip(grads, ours)):
        stack = np.concatenate([g["a"], g["b"][None]])  # the 6x5 group, N = 5
        if step % 2 == 0:  # refresh: next two blocks cyclically, state reset
            active = [(start + i) % 5 for i in range(2)]
            start = (start + 2) % 5
            t, m, v, mc, vc = 0, 0.0, 0.0, 0.0, 0.0
        t += 1
        A = stack[active]
        m = b1 * m + (1 - b1) * A
        v = b2 * v + (1 - b2) * A**2
        psi = {"sign": np.sign(stack), "sgd": stack, None: np.zeros_like(stack)}[residual]
        full = 0.5 * psi
        full[active] = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(out["a"], full[:4], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out["b"], full[4], rtol=1e-4, atol=1e-6)
        mc = b1 * mc + (1 - b1) * g["c"]
        vc = b2 * vc + (1 - b2) * g["c"] ** 2
        ref_c = (mc / (1 - b1**t)) / (np.sqrt(vc / (1 - b2**t)) + eps)
        np.testing.assert_allclose(out["c"], ref_c, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("n", "density", "expected"), [(3, 0.5, 2), (1, 0.5, 1)])
def test_block_subspace_block_count_rounds_and_takes_at_least_one(n, density, expected) -> None:
    """ρN = 1.5 rounds to 2 (not int's 1); ρN = 0.5 rounds to 0, raised to 1 with a warning."""
    g = {"s": jnp.ones((n, 4, 3))}
    tx = optx.scale_by_block_subspace(density=density, layout=optx.DENSE)
    if density * n < 1:
        with pytest.warns(UserWarning, match="taking 1"):
            state = tx.init(g)
    else:
        state = tx.init(g)
    assert state.active["s"].shape == (expected,)


def test_block_subspace_random_order_draws_distinct_blocks() -> None:
    g = {"s": jnp.ones((8, 4, 4))}
    tx = optx.scale_by_block_subspace(density=0.5, update_proj_gap=1, seed=3)
    state = tx.init(g)
    draws = []
    for _ in range(4):
        _, state = tx.update(g, state)
        draws.append(tuple(np.asarray(state.active["s"])))
    assert all(len(set(d)) == 4 for d in draws) and len(set(draws)) > 1


# ----------------------------------------------------------------------------
# Sharding rules for projector state (8-device CPU mesh)
# ----------------------------------------------------------------------------


def test_projector_state_sharding_rules() -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(0)
    params = {
        "hidden": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32),
        "stack": jnp.asarray(rng.standard_normal((4, 16, 8)), jnp.float32),
    }
    specs = {"hidden": P("data", "model"), "stack": P("data", "model", None)}
    tx = optx.scale_by_subspace(rank=2, projection="orthogonal", layout=optx.DENSE)
    ref_u, _ = jax.jit(tx.update)(params, tx.init(params))
    with jax.set_mesh(mesh):
        sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
        state = tx.init(sharded)
        spec = lambda x: jax.typeof(x).sharding.spec  # noqa: E731
        # hidden (8, 16): fan_in 8 <= 16 -> project fan-in; P (1, 8, 2) keeps 'data', and the
        # unused 'model' goes on the rank axis (sharding.fill_spec)
        assert spec(state.projector["hidden"]) == P(None, "data", "model")
        mu = state.inner_state.mu
        assert mu["hidden"].shape == (1, 2, 16) and spec(mu["hidden"]) == P(None, None, "model")
        # stack (4, 16, 8): fan_out 8 < 16 -> project fan-out; batch keeps 'data', 'model'
        # goes on the fan-out axis of P (4, 8, 2)
        assert spec(state.projector["stack"]) == P("data", "model", None)
        assert spec(mu["stack"]) == P("data", "model", None)
        abstract = optx.sharding.state_shardings(tx, sharded)
        for s, a in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
            assert s.sharding.is_equivalent_to(a, s.ndim)
        step = jax.jit(tx.update)
        u, new = step(sharded, state)
        assert jax.tree.map(jax.typeof, new) == jax.tree.map(jax.typeof, state)
        _, new2 = step(u, new)
        assert jax.tree.map(jax.typeof, new2) == jax.tree.map(jax.typeof, state)
        assert spec(u["hidden"]) == P("data", "model")
    for k in params:
        np.testing.assert_allclose(np.asarray(u[k]), np.asarray(ref_u[k]), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        optx.scale_by_subspace(rank=0)
    with pytest.raises(TypeError):
        optx.scale_by_subspace(rank=2.0)
    with pytest.raises(ValueError):
        optx.scale_by_subspace(rank=4, density=0.5)
    with pytest.raises(ValueError):
        optx.scale_by_subspace(rank=None, density=1.5)
    with pytest.raises(ValueError):
        optx.scale_by_subspace(projection="qr")
    with pytest.raises(ValueError):
        optx.scale_by_subspace(side="left")
    with pytest.raises(ValueError):
        optx.scale_by_subspace(update_proj_gap=0)
    with pytest.raises(ValueError):
        optx.scale_by_subspace(residual="adam")
    with pytest.raises(ValueError):
        optx.scale_by_apollo(scale_type="row")
    with pytest.raises(ValueError):
        optx.scale_by_block_subspace(order="mirror")
    with pytest.raises(TypeError):
        optx.scale_by_block_subspace(density="0.5")
    bad = optx.scale_by_subspace(rank=2, projection=lambda k, x, r, a: jnp.zeros((1, 3, 3)))
    g = {"w": jnp.ones((6, 4))}
    with pytest.raises(ValueError, match="custom projection"):
        bad.update(g, bad.init(g))


def test_seed_only_projector_gives_the_same_updates_with_less_state() -> None:
    grads = [_tree(40 + s) for s in range(5)]
    kwargs = dict(rank=2, projection="random", update_proj_gap=2, layout=_layout)
    stored = optx.scale_by_subspace(**kwargs)
    seed_only = optx.scale_by_subspace(store_projector=False, **kwargs)
    for a, b in zip(_run(stored, grads), _run(seed_only, grads)):
        for k in SHAPES:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)
    params = jax.tree.map(jnp.asarray, grads[0])
    saved = optx.tree_utils.state_bytes(stored, params) - optx.tree_utils.state_bytes(
        seed_only, params
    )
    # dense (10, 6): P (1, 6, 2); stack (3, 6, 10): P (3, 6, 2); conv (18, 5): P (1, 5, 2)
    assert saved == 4 * (6 * 2 + 3 * 6 * 2 + 5 * 2)
    with pytest.raises(ValueError, match="store_projector"):
        optx.scale_by_subspace(projection="svd", store_projector=False)


def _stable_slots_reference(prev: list[int], new: list[int]) -> list[int]:
    """The slot rule, one column at a time: kept columns stay in their (first) slot,
    new ones fill the free slots in ascending order, best score first."""
    first = {v: j for j, v in reversed(list(enumerate(prev)))}
    out: list[int | None] = [None] * len(prev)
    for v in new:
        if v in first:
            out[first[v]] = v
    fresh = [v for v in new if v not in first]
    free = [j for j in range(len(prev)) if out[j] is None]
    for j, v in zip(free, fresh, strict=True):
        out[j] = v
    return [int(v) for v in out]


def test_stable_slots_matches_the_slot_rule() -> None:
    from optx._src.projection import stable_slots

    rng = np.random.default_rng(0)
    for trial in range(60):
        r, b = int(rng.integers(1, 10)), 3
        d = 2 * r + 3
        prev = np.stack([rng.choice(d, r, replace=False) for _ in range(b)])
        if trial % 3 == 0:
            prev[:] = 0  # the initial projector: only slot 0 counts
        elif trial % 3 == 1:
            prev = rng.integers(0, r, (b, r))  # repeated indices
        keep = int(rng.integers(0, r + 1))
        new = []
        for p in prev:
            old = rng.permutation(np.unique(p))[:keep]
            rest = rng.choice(np.setdiff1d(np.arange(d), old), r - len(old), replace=False)
            new.append(rng.permutation(np.concatenate([old, rest])))
        new = np.stack(new)
        got = np.asarray(jax.jit(stable_slots)(prev, new))
        want = [_stable_slots_reference(list(p), list(n)) for p, n in zip(prev, new)]
        np.testing.assert_array_equal(got, np.asarray(want))


def test_orthogonal_projector_is_the_sign_fixed_qr_of_the_gaussian_draw() -> None:
    """``'orthogonal'`` is the QR of the Gaussian that ``'random'`` draws from the same
    key, with ``diag(R) > 0`` (``torch.nn.init.orthogonal_``: the unique, Haar-distributed
    Q), so ``Z = Q R`` with R upper triangular with a positive diagonal."""
    x = jnp.zeros((2, 9, 4), jnp.float32)
    key = jax.random.key(3)
    z = np.asarray(
        optx.projections.compute_projector(x, key, projection="random", axis="in", rank=3),
        np.float64,
    )
    q = np.asarray(
        optx.projections.compute_projector(x, key, projection="orthogonal", axis="in", rank=3),
        np.float64,
    )
    for b in range(2):
        want, r = np.linalg.qr(z[b])
        want = want * np.sign(np.diag(r))
        np.testing.assert_allclose(q[b], want, atol=1e-5)
