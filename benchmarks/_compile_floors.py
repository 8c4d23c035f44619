"""Measured compile-time floors: the programs a method cannot avoid compiling.

A compile-time target (issue 17: ≤ 3× ``optax.adamw`` unscanned, ≤ 1.5×
scanned) that a method misses must be explained by a *measured* floor: the
compile time of the irreducible programs its math needs on the same tree
(e.g. SOAP: one ``eigh`` and one QR per distinct factor shape; APOLLO: one
random projection per distinct matrix shape), plus AdamW's element-wise step.

:data:`FLOORS` maps a registry name to a builder ``params -> [FloorProgram]``;
:func:`floor_seconds` jits and compiles each program once, from fresh, and sums
trace+lower+compile seconds. ``benchmarks/compile_time.py`` prints the floor
next to the optimizer's own time. Add a floor with::

    @register("soap")
    def _soap(params):
        return [FloorProgram("eigh 64x64", jnp.linalg.eigh, (jnp.eye(64),)), ...]
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class FloorProgram:
    """One program the method cannot avoid: ``fn(*args)`` is jitted and compiled."""

    label: str
    fn: Callable[..., Any]
    args: Sequence[Any]


FloorBuilder = Callable[[Any], list[FloorProgram]]
FLOORS: dict[str, FloorBuilder] = {}


def register(name: str) -> Callable[[FloorBuilder], FloorBuilder]:
    """Declare the floor programs of registry optimizer ``name``."""

    def deco(builder: FloorBuilder) -> FloorBuilder:
        FLOORS[name] = builder
        return builder

    return deco


def floor_seconds(name: str, params: Any) -> float | None:
    """Trace+lower+compile seconds of ``name``'s floor programs, or ``None``."""
    if name not in FLOORS:
        return None
    total = 0.0
    for prog in FLOORS[name](params):
        t0 = time.perf_counter()
        jax.jit(prog.fn).trace(*prog.args).lower().compile()
        total += time.perf_counter() - t0
    jax.clear_caches()
    return total


# ----------------------------------------------------------------------------
# Curvature and variance methods (helper "kron"). Each floor is ONE jitted
# program: AdamW's element-wise step (the baseline) plus the estimate the
# method's math needs, under the refresh ``lax.cond`` where the method has a
# refresh period, on the same tree and loss as benchmarks/compile_time.py.
# ----------------------------------------------------------------------------


def _adamw_step(params: Any) -> tuple[Callable[..., Any], Any]:
    import optax

    tx = optax.adamw(1e-3)

    def step(grads: Any, state: Any, params: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step, tx.init(params)


def _curvature_floor(params: Any, label: str, estimate: Callable[..., Any]) -> list[FloorProgram]:
    """AdamW's step and the estimate's EMA under the refresh cond, with the checks the
    reliability contract requires of a curvature method (the brief: a non-finite
    curvature input skips the step, it does not poison the state): the gradient's
    finiteness, and the refreshed EMA's, kept only where finite
    (``nonfinite.keep_if_not_finite`` with ``written_once``, the cheaper to compile)."""
    import jax.numpy as jnp

    from optx._src import nonfinite

    step, state = _adamw_step(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)

    def prog(g: Any, s: Any, p: Any, h: Any, key: jax.Array, count: jax.Array) -> Any:
        grad_ok = nonfinite.all_finite(g)

        def refresh() -> Any:
            ema = lambda a, b: 0.99 * a + 0.01 * b  # noqa: E731
            return nonfinite.keep_if_not_finite(h, estimate(p, key), ema, grad_ok)

        h, ok = jax.lax.cond(count % 10 == 0, refresh, lambda: (h, jnp.asarray(True)))
        return step(g, s, p), h, ok & grad_ok

    args = (grads, state, params, params, jax.random.key(0), jnp.zeros([], jnp.int32))
    return [FloorProgram(f"adamw step + {label} EMA + finiteness checks", prog, args)]


def _loss(params: Any) -> jax.Array:
    try:
        import _trees  # benchmarks/ on sys.path (the benchmark scripts)
    except ImportError:
        from benchmarks import _trees  # the repository root (tests)

    return _trees.quadratic_loss(params)


@register("sophia_h")
def _sophia_h(params: Any) -> list[FloorProgram]:
    from optx import curvature

    def est(p: Any, key: jax.Array) -> Any:
        return curvature.hutchinson_diagonal(_loss, p, key, distribution="gaussian")

    return _curvature_floor(params, "Hutchinson diagonal (Gaussian probes, one HVP)", est)


@register("adahessian")
def _adahessian(params: Any) -> list[FloorProgram]:
    from optx import curvature

    def est(p: Any, key: jax.Array) -> Any:
        return curvature.hutchinson_diagonal(_loss, p, key, absolute=True)

    return _curvature_floor(params, "Hutchinson |z*Hz| (Rademacher, one HVP)", est)


@register("sophia_g")
def _sophia_g(params: Any) -> list[FloorProgram]:
    from optx import curvature

    def est(p: Any, key: jax.Array) -> Any:
        sampled = lambda q, k: _loss(q)  # noqa: E731  (the registry's label-free problem)
        return curvature.gauss_newton_bartlett_diagonal(sampled, p, key, clip_norm=1.0)

    return _curvature_floor(params, "GNB diagonal (sampled-loss gradient, clipped, squared)", est)


@register("agvm_sgd")
def _agvm_sgd(params: Any) -> list[FloorProgram]:
    import jax.numpy as jnp

    import optx
    from optx._src import base

    spec = optx.get_optimizer("agvm_sgd")
    step, state = _adamw_step(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    groups = {}
    for path, _ in base.flatten_with_paths(params)[0]:
        groups.setdefault(path.split("/", 1)[0], len(groups))

    def prog(g: Any, s: Any, p: Any, key: jax.Array, count: jax.Array) -> Any:
        ctx = optx.ExtraArgsContext(loss_fn=_loss, params=p, grads=g, loss=_loss(p), key=key)
        extra = spec.make_extra_args(ctx)
        a, b = extra["grads_a"], extra["grads_b"]

        def cosines() -> jax.Array:
            flat = base.flatten_with_paths
            sums = jnp.zeros((3, len(groups)), jnp.float32)
            for (path, x), (_, y) in zip(flat(a)[0], flat(b)[0]):
                i = groups[path.split("/", 1)[0]]
                sums = sums.at[:, i].add(
                    jnp.stack([jnp.vdot(x, y), jnp.vdot(x, x), jnp.vdot(y, y)])
                )
            return sums[0] / jnp.sqrt(sums[1] * sums[2])

        cos = jax.lax.cond(count % 5 == 0, cosines, lambda: jnp.zeros(len(groups)))
        return step(g, s, p), cos

    args = (grads, state, params, jax.random.key(0), jnp.zeros([], jnp.int32))
    return [FloorProgram("adamw step + registry half-batch noise + group cosines", prog, args)]


def _mkor_floor(params: Any, hybrid: bool) -> list[FloorProgram]:
    """AdamW + MKOR's math at its minimum: one fp16 Sherman–Morrison program per
    distinct factor size, one rank-1 statistic (power iteration) and one
    preconditioning ``A⁻¹ M G⁻¹`` per distinct matrix shape, all layers of a
    size stacked; the refresh under one cond (and, for MKOR-H, the
    preconditioning under the switch's cond)."""
    import jax.numpy as jnp

    from optx._src import kronecker

    plan = kronecker._plan(params, kronecker.mkor_router())
    shapes: dict[tuple[int, int], int] = {}
    sizes: dict[int, int] = {}
    for layer in plan.values():
        b, fi, fo = layer.layout.matrix_shape
        fi += layer.bias is not None
        shapes[fi, fo] = shapes.get((fi, fo), 0) + b
        sizes[fi] = sizes.get(fi, 0) + b
        sizes[fo] = sizes.get(fo, 0) + b
    step, state = _adamw_step(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    mats = {k: jnp.full((c, *k), 1e-3) for k, c in shapes.items()}
    factors = {n: jnp.zeros((c, n, n), jnp.float16) for n, c in sizes.items()}

    def refresh(factors: Any, mats: Any) -> Any:
        vecs = {}
        for (fi, fo), m in mats.items():
            a, g = jax.vmap(lambda x: kronecker.statistics_from_gradient(x, None))(m)
            vecs.setdefault(fi, []).append(a)
            vecs.setdefault(fo, []).append(g)
        out = {}
        for n, f in factors.items():
            v = jnp.concatenate(vecs[n])[: f.shape[0]]
            sm = jax.vmap(lambda x, y: kronecker.sherman_morrison_update(x, y, 0.95, jnp.float16))
            out[n] = sm(f, v).astype(f.dtype)
        return out

    def precondition(factors: Any, mats: Any) -> Any:
        out = {}
        for (fi, fo), m in mats.items():
            a = factors[fi][: m.shape[0]].astype(m.dtype)
            g = factors[fo][: m.shape[0]].astype(m.dtype)
            pre = a @ m @ g
            fix = jnp.linalg.norm(m, axis=(1, 2)) / jnp.linalg.norm(pre, axis=(1, 2))
            out[fi, fo] = pre * fix[:, None, None]
        return out

    def prog(g: Any, s: Any, p: Any, factors: Any, mats: Any, count: jax.Array) -> Any:
        factors = jax.lax.cond(count % 10 == 0, refresh, lambda f, m: f, factors, mats)
        if hybrid:
            pre = jax.lax.cond(count < 100, precondition, lambda f, m: m, factors, mats)
        else:
            pre = precondition(factors, mats)
        return step(g, s, p), factors, pre

    args = (grads, state, params, factors, mats, jnp.zeros([], jnp.int32))
    return [
        FloorProgram("adamw step + MKOR refresh/preconditioning per distinct shape", prog, args)
    ]


@register("mkor")
def _mkor(params: Any) -> list[FloorProgram]:
    return _mkor_floor(params, hybrid=False)


@register("mkor_h")
def _mkor_h(params: Any) -> list[FloorProgram]:
    return _mkor_floor(params, hybrid=True)


@register("root")
def _root(params: Any) -> list[FloorProgram]:
    """AdamW + ROOT's per-matrix math at its minimum: one exact 0.9-quantile
    selection of ``|M|`` (``optx.linalg.matrix_quantile``: the order statistics
    ``torch.quantile`` interpolates) per distinct number of entries per matrix
    (all such matrices as rows of one stack: the quantile ignores the entries'
    order), and one 5-step Newton–Schulz per distinct matrix shape."""
    import jax.numpy as jnp

    import optx
    from optx._src import base, layouts

    router = optx.default_router()
    shapes: dict[tuple[int, int], int] = {}
    for path, leaf in base.flatten_with_paths(params)[0]:
        spec = router.layout(path, leaf) if layouts.has_matrix_view(leaf) else None
        if spec is not None:
            b, m, n = layouts.resolve_layout(spec, jnp.shape(leaf), path).matrix_shape
            shapes[m, n] = shapes.get((m, n), 0) + b
    step, state = _adamw_step(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    mats = {k: jnp.full((c, *k), 1e-3) for k, c in shapes.items()}

    def prog(g: Any, s: Any, p: Any, mats: Any) -> Any:
        rows: dict[int, list[jax.Array]] = {}
        starts = {}
        for (m, n), x in mats.items():
            starts[m, n] = sum(r.shape[0] for r in rows.get(m * n, []))
            rows.setdefault(m * n, []).append(jnp.abs(x).reshape(x.shape[0], 1, m * n))
        eps = {}
        for size, parts in rows.items():
            stack = jnp.concatenate(parts)
            lay = layouts.ResolvedLayout(stack.shape, (1,), (2,), (0,))
            eps[size] = optx.linalg.matrix_quantile(stack, 0.9, lay)
        out = {}
        for (m, n), x in mats.items():
            e = eps[m * n][starts[m, n] : starts[m, n] + x.shape[0]]
            clipped = jnp.clip(x, -e, e)
            out[m, n] = optx.linalg.newton_schulz(x - clipped) + clipped
        return step(g, s, p), out

    return [
        FloorProgram(
            "adamw step + quantile select per matrix size + Newton–Schulz per shape",
            prog,
            (grads, state, params, mats),
        )
    ]


# ----------------------------------------------------------------------------
# Element-wise and Muon-family floors (helper "elem", issue 17 §2)
# ----------------------------------------------------------------------------
#
# XLA:CPU compiles one kernel per fusion and reuses a kernel whose fused
# computation is identical, so compile time grows with the *distinct* kernels:
# same-shape leaves (``blocks/0/…``, ``blocks/1/…``) share theirs, while
# slicing per-leaf results out of a concatenated/stacked group makes every
# consumer kernel distinct (a static slice offset is a constant in it). The
# floors are therefore: AdamW's element-wise step on the whole tree (the
# baseline's own program) plus the method's per-matrix program once per
# distinct matrix shape of the tree under the default router.


def _spec(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _step_program(params: Any, tx: Any, label: str) -> FloorProgram:
    """An optax transform's jitted step (update + apply) on the whole tree."""
    import optax

    abstract = jax.tree.map(lambda p: _spec(p.shape, p.dtype), params)
    state = jax.eval_shape(tx.init, abstract)

    def step(g: Any, s: Any, p: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return FloorProgram(label, step, (abstract, state, abstract))


def _adamw_step_program(params: Any) -> FloorProgram:
    """``optax.adamw``'s jitted step (update + apply) on the whole tree."""
    import optax

    return _step_program(params, optax.adamw(1e-3, weight_decay=1e-4), "optax.adamw step")


def _distinct_layouts(params: Any, router: Any = None) -> list[tuple[Any, Any]]:
    """``(resolved layout, dtype)`` of the matrix leaves of ``router`` (default:
    the default router), one per shape."""
    import optx
    from optx._src import base, layouts

    resolve = layouts.resolved_layout_fn(optx.default_router() if router is None else router)
    seen: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        lay = resolve(base.path_to_str(path), leaf)
        if lay is not None:
            seen.setdefault((lay, jax.numpy.dtype(leaf.dtype)), (lay, leaf.dtype))
    return list(seen.values())


def _per_matrix_shape(
    params: Any, label: str, fn: Callable[..., Any], n_args: int = 1
) -> list[FloorProgram]:
    """``fn`` once per distinct ``(batch, fan_in, fan_out)`` matrix shape and dtype."""
    shapes = {(lay.matrix_shape, dtype) for lay, dtype in _distinct_layouts(params)}
    return [
        FloorProgram(f"{label} {shape}", fn, (_spec(shape, dtype),) * n_args)
        for shape, dtype in sorted(shapes, key=str)
    ]


def _newton_schulz_programs(params: Any, steps: int = 5) -> list[FloorProgram]:
    """One Newton–Schulz program (5 Keller steps) per distinct matrix shape."""
    from optx._src import orthogonalization

    return _per_matrix_shape(
        params,
        "newton_schulz",
        lambda x: orthogonalization.newton_schulz(x, "keller", steps),
    )


def _muon_family(params: Any) -> list[FloorProgram]:
    return [_adamw_step_program(params), *_newton_schulz_programs(params)]


for _name in ("muon", "normuon", "hybrid_auon"):
    register(_name)(_muon_family)


@register("lion_kappa")
def _lion_kappa(params: Any) -> list[FloorProgram]:
    """The registry's Lion-𝒦 (``kappa='nuclear'``: Lion's direction orthogonalized):
    Lion's element-wise step plus Newton–Schulz once per matrix shape."""
    import optax

    lion = _step_program(params, optax.lion(1e-4), "optax.lion step")
    return [lion, *_newton_schulz_programs(params)]


@register("lipschitz_muon")
def _lipschitz_muon(params: Any) -> list[FloorProgram]:
    """Newton–Schulz plus the soft cap's two odd-polynomial steps per matrix shape."""
    from optx._src import constraints

    caps = _per_matrix_shape(
        params,
        "soft cap",
        lambda x: constraints.odd_polynomial_steps(x, ((1.0, -0.1, 0), (1.0, 0.1, 0))),
    )
    return [_adamw_step_program(params), *_newton_schulz_programs(params), *caps]


def _radial_programs(params: Any) -> list[FloorProgram]:
    """AdamP's cosine test and projection once per distinct matrix shape.

    ``project_out_radial`` runs the test on the ``(batch, fan_in, fan_out)``
    view (a free reshape for the router's layouts), so that is its granularity.
    """
    from optx._src import layouts, radial

    def test(g: Any, w: Any, d: Any) -> Any:
        return radial.radial_projection(g, w, d, layouts.DENSE.resolve(g.shape))

    return _per_matrix_shape(params, "radial projection", test, n_args=3)


def _radial_family(params: Any) -> list[FloorProgram]:
    return [_adamw_step_program(params), *_radial_programs(params)]


for _name in ("adamp", "sgdp"):
    register(_name)(_radial_family)


# ----------------------------------------------------------------------------
# 8-bit states (quant): the element-wise step with float32 states plus one
# program that codes every quantized leaf (dequantize -> block maxima of the
# leaf's moments in one reduction -> codes). The state mirrors the parameter
# tree (one code array per leaf, as optax states do), so the coding is per leaf:
# XLA's HLO passes see each leaf's coding, and XLA:CPU compiles one kernel per
# distinct fusion *shape*. Viewing every coded leaf as ``(blocks, block_size)``
# (a free reshape) so that same-size leaves could share kernels was measured:
# XLA folds the views back into the fusions (the same 36 kernels for
# adamw_8bit on the scanned tree, with or without an ``optimization_barrier``
# around the views). Coding the concatenated state in one program (the floor
# used before 2026-12-05) needs a flat state buffer, i.e. copies of every leaf
# in and out of it each step. Not in the floor: quantize_moments' three traces
# of the inner update (its step-time design: XLA:CPU recomputes the moments in
# each coding loop instead of writing them out).
# ----------------------------------------------------------------------------


def _coded_leaves(name: str, params: Any) -> list[list[tuple[tuple[int, ...], bool]]]:
    """The ``uint8`` state leaves of optimizer ``name`` as ``(shape, signed)``,
    grouped by parameter (``nu`` fields use the unsigned map, as
    ``quantize_moments``' default)."""
    import jax.numpy as jnp

    import optx

    state = jax.eval_shape(optx.get_optimizer(name).build().init, params)
    groups: dict[tuple[Any, ...], list[tuple[tuple[int, ...], bool]]] = {}
    for path, x in jax.tree_util.tree_leaves_with_path(state):
        if getattr(x, "dtype", None) == jnp.uint8:
            fields = {getattr(k, "name", None) for k in path}
            param = tuple(k for k in path if not isinstance(k, jax.tree_util.GetAttrKey))
            groups.setdefault(param, []).append((tuple(x.shape), "nu" not in fields))
    return list(groups.values())


def _eight_bit_floor(params: Any, tx: Any, label: str, name: str) -> list[FloorProgram]:
    """``tx``'s step (float32 states) + the coding of every quantized leaf of
    optimizer ``name``'s state."""
    import optax

    state = jax.eval_shape(tx.init, params)

    def step(g: Any, s: Any, p: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    return [
        FloorProgram(f"{label} step (f32 states)", step, (params, state, params)),
        _coding_program(params, name),
    ]


def _coding_program(params: Any, name: str) -> FloorProgram:
    """One program: every quantized leaf of optimizer ``name``'s state
    dequantized, halved and re-quantized, the block maxima of a parameter's
    moments in one reduction (as ``quantize_moments`` groups them)."""
    import jax.numpy as jnp

    from optx._src import quantization as q

    groups = _coded_leaves(name, params)
    block = q.REFERENCE_BLOCK_SIZE
    args = [
        [
            (
                jax.ShapeDtypeStruct(shape, jnp.uint8),
                jax.ShapeDtypeStruct((q.num_blocks(math.prod(shape), block),), jnp.float32),
            )
            for shape, _ in group
        ]
        for group in groups
    ]

    def coding(arrays: Any) -> Any:
        out = []
        for group, coded in zip(groups, arrays, strict=True):
            maps = [signed for _, signed in group]
            xs = [
                q.dequantize_blockwise(q.QuantizedArray(c, a), signed=signed) * 0.5
                for signed, (c, a) in zip(maps, coded, strict=True)
            ]
            out.append(q._quantize_group(xs, maps, block, xs))
        return out

    label = f"8-bit coding of {sum(map(len, groups))} quantized leaves"
    return FloorProgram(label, coding, (args,))


@register("adamw_8bit")
def _adamw_8bit(params: Any) -> list[FloorProgram]:
    import optax

    return _eight_bit_floor(
        params, optax.adamw(1e-3, weight_decay=1e-4), "optax.adamw", "adamw_8bit"
    )


@register("lion_8bit")
def _lion_8bit(params: Any) -> list[FloorProgram]:
    import optax

    return _eight_bit_floor(params, optax.lion(1e-4), "optax.lion", "lion_8bit")


@register("sgd_momentum_8bit")
def _sgd_momentum_8bit(params: Any) -> list[FloorProgram]:
    import optax

    return _eight_bit_floor(params, optax.sgd(1e-2, momentum=0.9), "optax.sgd", "sgd_momentum_8bit")


@register("galore_8bit")
def _galore_8bit(params: Any) -> list[FloorProgram]:
    """GaLore's floor (below) plus the coding of every quantized leaf of
    galore_8bit's state (the projected moments and the fallback leaves' moments)."""
    return [*_galore(params), _coding_program(params, "galore_8bit")]


# ----------------------------------------------------------------------------
# GaLore and DCT-AdamW (helper "projection"): ONE program, optax.adamw's step on the
# whole tree plus, once per distinct matrix shape, the projection math the method cannot avoid:
# the refresh under ``lax.cond`` (GaLore: an SVD's top-r singular vectors; DCT-AdamW:
# the DCT basis, the scores ``Qᵀ X``, ``top_k`` and the stable slot rule), the
# projection ``Pᵀ X``, Adam's moments and normalization ``N`` in the projected space
# and the back-projection ``P N``. What the floors leave out is per-leaf
# bookkeeping (one projector and one cond per leaf, the router's partition).
# Stacking same-shape leaves into one refresh per shape (one cond per group, the SVD
# or the DCT scores over the stack, vmapped draws for APOLLO) was measured and did not
# pay on XLA:CPU: galore 0.83 -> 1.46 s compile CPU (the stacked SVD is a ``lax.map``
# loop of the same LAPACK calls), apollo 2.50 -> 3.05 s, dct_adamw unchanged within
# noise, although the HLO shrank 2.3x for dct_adamw (fewer, larger kernels).
# ----------------------------------------------------------------------------


def _fallback_leaves(params: Any, router: Any) -> list[Any]:
    """The leaves ``router`` leaves to the fallback (no matrix layout)."""
    from optx._src import base, layouts

    resolve = layouts.resolved_layout_fn(router)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [x for path, x in flat if resolve(base.path_to_str(path), x) is None]


def _projection_floor(
    params: Any, name: str, kind: str, rank: int | None = None
) -> list[FloorProgram]:
    """ONE program: optax.adamw's step on the fallback leaves plus, per distinct
    matrix shape, the refresh under ``lax.cond``, the projection, Adam's moments
    and normalization in the projected space, the back-projection and the
    decayed apply (``rank``: the registry default's, whose router sends matrices
    with a side ``<= rank`` to the fallback; or given, for every matrix)."""
    import jax.numpy as jnp

    import optx
    from optx._src import projection

    router = optx.default_router()
    if rank is None:
        rank = optx.get_optimizer(name).defaults["rank"]
        router = router.with_rank_limit(rank)
    geos, xs, projs, moments = [], [], [], []
    for lay, dtype in _distinct_layouts(params, router):
        geo = projection.leaf_geometry(lay, "std", rank)
        geos.append(geo)
        x = _spec(lay.matrix_shape, jnp.promote_types(dtype, jnp.float32))
        proj = _spec(*projection._projector_shape_dtype(kind, geo, dtype))
        r = jax.eval_shape(
            lambda x, p, geo=geo: projection.project(x, p, projection=kind, axis=geo.axis), x, proj
        )
        xs.append(x)
        projs.append(proj)
        moments.append((r, r))
    adamw = _adamw_step_program(_fallback_leaves(params, router))

    def one(geo: Any, x: Any, w: Any, proj: Any, mv: Any, refresh: Any) -> Any:
        def fresh() -> Any:
            new = projection.compute_projector(
                x, None, projection=kind, axis=geo.axis, rank=geo.rank
            )
            if kind == "dct":
                new = projection.stable_slots(proj, new)
            return new.astype(proj.dtype)

        p = jax.lax.cond(refresh, fresh, lambda: proj)
        r = projection.project(x, p, projection=kind, axis=geo.axis)
        m = 0.9 * mv[0] + 0.1 * r
        v = 0.999 * mv[1] + 0.001 * r * r
        n = m / (jnp.sqrt(v) + 1e-8)
        back = projection.project_back(n, p, projection=kind, axis=geo.axis, matrix_shape=x.shape)
        return w - 1e-3 * (back + 1e-4 * w), p, (m, v)

    def prog(g: Any, s: Any, p: Any, xs: Any, projs: Any, mvs: Any, refresh: Any) -> Any:
        per_shape = zip(geos, xs, xs, projs, mvs, strict=True)
        out = [one(*args, refresh) for args in per_shape]
        return adamw.fn(g, s, p), out

    label = f"optax.adamw on the fallback + {kind} refresh, projected Adam x {len(geos)} shapes"
    args = (*adamw.args, xs, projs, moments, _spec((), jnp.bool_))
    return [FloorProgram(label, prog, args)]


@register("galore")
def _galore(params: Any) -> list[FloorProgram]:
    return _projection_floor(params, "galore", "svd")


@register("dct_adamw")
def _dct_adamw(params: Any) -> list[FloorProgram]:
    return _projection_floor(params, "dct_adamw", "dct")


@register("conda")
def _conda(params: Any) -> list[FloorProgram]:
    """Conda rotates each matrix's smaller side by the full SVD basis of its momentum
    (refreshed every T steps): GaLore's program at full rank."""
    return _projection_floor(params, "conda", "svd", rank=2**31 - 1)


# ----------------------------------------------------------------------------
# APOLLO (quant): optax.adamw's step plus the per-leaf Gaussian projector
# draws its documented key chain requires (one key per matrix leaf,
# ``split(k)[0]`` per refresh, the splits batched), in one program. A single threefry draw compiles
# in ~0.4 s here and 24 per-leaf draws in ~2.2 s; a vmapped draw over the 24
# keys took ~1.5 s plus the per-leaf slices (~0.9 s), which is why grouping
# same-shape leaves did not cut APOLLO's compile time (README).
# ----------------------------------------------------------------------------


@register("apollo")
def _apollo(params: Any, name: str = "apollo") -> list[FloorProgram]:
    """ONE program: AdamW on the fallback leaves; every matrix leaf's projector draw
    (the key chain's splits batched, each leaf's key at a runtime offset so that
    same-shape draws share kernels); per distinct matrix shape APOLLO's math: the
    projection, Adam's moments in the projected space, the channel-wise (APOLLO-Mini:
    tensor-wise) scaling factors applied to the raw gradient, the norm-growth limiter
    and the decayed apply."""
    import math

    import jax.numpy as jnp

    import optx
    from optx._src import projection

    spec = optx.get_optimizer(name)
    rank = spec.defaults.get("rank", 1)
    channelwise = name == "apollo"
    router = optx.default_router().with_rank_limit(rank)
    state = jax.eval_shape(spec.build().init, params)
    shapes = [
        x.shape
        for path, x in jax.tree_util.tree_leaves_with_path(state)
        if "projector" in jax.tree_util.keystr(path) and getattr(x, "ndim", 0) == 3
    ]
    adamw = _adamw_step_program(_fallback_leaves(params, router))
    geos, xs, moments = [], [], []
    for lay, dtype in _distinct_layouts(params, router):
        geo = projection.leaf_geometry(lay, "std", rank)
        x = _spec(lay.matrix_shape, jnp.promote_types(dtype, jnp.float32))
        proj = _spec(*projection._projector_shape_dtype("random", geo, dtype))
        r = jax.eval_shape(
            lambda x, p, geo=geo: projection.project(x, p, projection="random", axis=geo.axis),
            x,
            proj,
        )
        geos.append((geo, proj.shape))
        xs.append(x)
        moments.append((r, r))

    def draws(keys: list[jax.Array]) -> list[jax.Array]:
        uses = projection.next_keys(keys)  # the method's batched key-chain split
        return [
            jax.random.normal(jax.random.wrap_key_data(k), shape) / math.sqrt(shape[-1])
            for k, shape in zip(uses, shapes, strict=True)
        ]

    def one(geo: Any, p: jax.Array, x: jax.Array, mv: Any, prev: jax.Array) -> Any:
        r = projection.project(x, p, projection="random", axis=geo.axis)
        m = 0.9 * mv[0] + 0.1 * r
        v = 0.999 * mv[1] + 0.001 * r * r
        n = m / (jnp.sqrt(v) + 1e-6)
        axes = ((1 if geo.axis == "in" else 2),) if channelwise else (1, 2)
        norm = lambda a: jnp.sqrt(jnp.sum(a * a, axis=axes, keepdims=True))  # noqa: E731
        scaled = x * (norm(n) / (norm(r) + 1e-8))
        total = jnp.sqrt(jnp.sum(scaled * scaled))
        limit = jnp.maximum(total / (1.01 * prev), 1.0)
        return x - 1e-2 * (scaled / limit + 1e-4 * x), (m, v), total / limit

    def prog(g: Any, s: Any, p: Any, keys: Any, xs: Any, mvs: Any, prev: Any) -> Any:
        drawn = draws(keys)
        first = {shape: d for shape, d in zip(shapes, drawn)}
        out = [
            one(geo, first.get(pshape, drawn[0]), x, mv, prev)
            for (geo, pshape), x, mv in zip(geos, xs, mvs, strict=True)
        ]
        return adamw.fn(g, s, p), drawn, out

    keys = [jax.ShapeDtypeStruct((2,), jnp.uint32) for _ in shapes]
    args = (*adamw.args, keys, xs, moments, _spec((), jnp.float32))
    label = f"AdamW on the fallback + {len(shapes)} draws + APOLLO math x {len(geos)} shapes"
    return [FloorProgram(label, prog, args)]


def _adamw_program(params: Any) -> FloorProgram:
    import optax

    tx = optax.adamw(1e-3)
    state = jax.eval_shape(tx.init, params)
    return FloorProgram("adamw step", lambda g, s, p: tx.update(g, s, p), (params, state, params))


def _square_shapes(tree: Any) -> list[tuple[int, Any]]:
    """Distinct ``(d, dtype)`` of the ``(…, d, d)`` leaves of ``tree``."""
    found = {(x.shape[-1], x.dtype) for x in jax.tree.leaves(tree) if len(x.shape) >= 2}
    return sorted(found, key=lambda t: t[0])


def _soap_matrix_shapes(state: Any) -> dict[tuple[int, int, Any], int]:
    """``(n, m, dtype) -> matrices`` of SOAP's state: the leaves with both modes rotated."""
    import optax

    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    left = jax.tree.leaves(state.factors[0], is_leaf=masked)
    right = jax.tree.leaves(state.factors[1], is_leaf=masked)
    shapes: dict[tuple[int, int, Any], int] = {}
    for f0, f1 in zip(left, right, strict=True):
        if masked(f0) or masked(f1):
            continue
        key = (f0.shape[-1], f1.shape[-1], f0.dtype)
        shapes[key] = shapes.get(key, 0) + max(1, math.prod(f0.shape[:-2]))
    return shapes


def _soap_step(g: Any, mv: Any, fs: Any, qs: Any, new_qs: Any, refresh: Any) -> Any:
    """SOAP's per-matrix step (Algorithm 3) on a stack ``(b, n, m)``: ``G`` rotated
    into the bases, Adam there, rotated back, the Kronecker factors' EMA; under the
    refresh ``cond``, the first moment rotated from the old bases to the new ones
    and ``V`` permuted by the eigenvalue-estimate order of each side (the official
    code's moment handling)."""
    import jax.numpy as jnp

    (m, v), (f0, f1), (q0, q1) = mv, fs, qs
    rot = jnp.einsum("bin,bij,bjm->bnm", q0, g, q1)
    m = 0.95 * m + 0.05 * rot
    v = 0.95 * v + 0.05 * rot * rot
    u = jnp.einsum("bin,bnm,bjm->bij", q0, m / (jnp.sqrt(v) + 1e-8), q1)
    f0 = 0.95 * f0 + 0.05 * jnp.einsum("bik,bjk->bij", g, g)
    f1 = 0.95 * f1 + 0.05 * jnp.einsum("bki,bkj->bij", g, g)

    def moments(m: Any, v: Any) -> Any:
        back = jnp.einsum("bin,bnm,bjm->bij", q0, m, q1)
        m = jnp.einsum("bin,bij,bjm->bnm", new_qs[0], back, new_qs[1])
        for axis, (f, q) in enumerate(((f0, q0), (f1, q1)), start=1):
            order = jnp.argsort(-jnp.einsum("bij,bik,bkj->bj", q, f, q), axis=-1)
            v = jnp.take_along_axis(v, jnp.expand_dims(order, 3 - axis), axis=axis)
        return m, v

    m, v = jax.lax.cond(refresh, moments, lambda m, v: (m, v), m, v)
    return u, m, v, f0, f1


def _power_qr(f: Any, q: Any) -> Any:
    """SOAP's refresh (Algorithm 4) for one factor size: the estimated eigenvalues
    ``diag(QᵀFQ)``, the columns of ``Q`` sorted by them, then ``QR(F Q_sorted)``."""
    import jax.numpy as jnp

    from optx._src import linalg

    order = jnp.argsort(-jnp.einsum("bij,bik,bkj->bj", q, f, q), axis=-1)
    return linalg.qr(f @ jnp.take_along_axis(q, order[:, None, :], axis=-1))[0]


@register("soap")
def _soap(params: Any) -> list[FloorProgram]:
    """AdamW; per distinct Kronecker-factor size one eigh (the first call's
    eigenbasis) and one power-QR refresh (estimate, sort, ``QR(F Q)``); per
    distinct matrix shape (all such matrices stacked) the SOAP step: rotation in
    and out of the bases, Adam in the rotated basis, the factors' EMA, and the
    refresh's moment re-rotation and ``V`` permutation (one program per shape).

    Not in the floor (optx's documented deviation, ``tests/test_deviations.py``):
    the null-space completion of rank-deficient bases (the QR under a
    ``while_loop``, the fixed generic fill) and the roundoff drop of rotated
    coordinates."""
    import jax.numpy as jnp

    import optx

    state = jax.eval_shape(optx.soap().init, params)[0]
    programs = [_adamw_program(params)]
    for d, dtype in _square_shapes(state.factors):
        f = jax.ShapeDtypeStruct((1, d, d), dtype)
        programs.append(FloorProgram(f"eigh {d}", lambda x: jnp.linalg.eigh(x)[1], (f,)))
        programs.append(FloorProgram(f"power-QR refresh {d}", _power_qr, (f, f)))
    for (n, m, dtype), b in sorted(_soap_matrix_shapes(state).items(), key=str):
        mat = jax.ShapeDtypeStruct((b, n, m), dtype)
        fs = (jax.ShapeDtypeStruct((b, n, n), dtype), jax.ShapeDtypeStruct((b, m, m), dtype))
        args = (mat, (mat, mat), fs, fs, fs, jax.ShapeDtypeStruct((), jnp.bool_))
        programs.append(FloorProgram(f"SOAP step {b}x{n}x{m}", _soap_step, args))
    return programs


def _cosmos_step(x: Any, mu: Any, p: Any, s: Any, v: Any) -> Any:
    """COSMOS's per-matrix step (arXiv 2502.17410, Algorithm 1) on a stack
    ``(b, n, m)`` with rank ``r``, but its Newton–Schulz: the momentum, the QR power
    step of the subspace ``P`` and its ``S`` update, Adam on the coordinates
    ``C = PᵀX`` and the residual ``X − P Pᵀ X`` of the Nesterov gradient."""
    import jax.numpy as jnp

    from optx._src import linalg

    mu = 0.9 * mu + x
    new_p = linalg.qr(0.999 * (p @ s) + 0.001 * (x @ (jnp.swapaxes(x, 1, 2) @ p)))[0]
    t = jnp.swapaxes(p, 1, 2) @ new_p
    c = jnp.swapaxes(new_p, 1, 2) @ x
    s = 0.999 * (jnp.swapaxes(t, 1, 2) @ s @ t) + 0.001 * (c @ jnp.swapaxes(c, 1, 2))
    v = 0.999 * v + 0.001 * c * c
    g = (x + 0.9 * mu) / 1.9
    coeff = jnp.swapaxes(new_p, 1, 2) @ g
    adam = new_p @ (coeff / (jnp.sqrt(v) + 1e-8))
    return adam, g - new_p @ coeff, mu, new_p, s, v


def _cosmos_combine(adam: Any, residual: Any) -> Any:
    """Newton–Schulz of the residual and the combination ``adam + γ √(nm) O/‖O‖``."""
    import jax.numpy as jnp

    import optx

    o = optx.linalg.newton_schulz(residual, "keller", 5)
    norm = jnp.sqrt(jnp.sum(o * o, axis=(1, 2), keepdims=True))
    return adam + 0.2 * math.sqrt(o.shape[1] * o.shape[2]) * o / (norm + 1e-8)


@register("cosmos")
def _cosmos(params: Any) -> list[FloorProgram]:
    """AdamW, plus per distinct matrix shape ``n × m`` (rank ``r``; all such
    matrices stacked): one eigh ``n × n`` (first step), the subspace step with its
    QR ``n × r`` (:func:`_cosmos_step`) and one Newton–Schulz of ``n × m`` with the
    combination (:func:`_cosmos_combine`).

    Not in the floor (optx's documented deviation, ``tests/test_deviations.py``):
    the fixed completion of rank-deficient subspaces (a second QR ``n × r``, one for
    the first step's eigh and the power step: ``bases.subspace_update``) and the
    roundoff drop of projected coordinates."""
    import jax.numpy as jnp

    import optx

    found = jax.tree.leaves(
        jax.eval_shape(optx.cosmos().init, params),
        is_leaf=lambda x: isinstance(x, optx.ScaleByCosmosState),
    )
    state = next(x for x in found if isinstance(x, optx.ScaleByCosmosState))
    shapes: dict[tuple[int, int, int, Any], int] = {}
    for p, v in zip(jax.tree.leaves(state.basis), jax.tree.leaves(state.nu), strict=True):
        key = (p.shape[-2], v.shape[-1], p.shape[-1], p.dtype)
        shapes[key] = shapes.get(key, 0) + max(1, math.prod(p.shape[:-2]))
    programs = [_adamw_program(params)]
    for (n, m, r, dtype), b in sorted(shapes.items(), key=str):

        def spec(*shape: int, dtype: Any = dtype) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(shape, dtype)

        programs.append(
            FloorProgram(f"eigh {n}", lambda x: jnp.linalg.eigh(x)[1], (spec(1, n, n),))
        )
        programs.append(
            FloorProgram(
                f"subspace step {b}x{n}x{m} (rank {r})",
                _cosmos_step,
                (spec(b, n, m), spec(b, n, m), spec(b, n, r), spec(b, r, r), spec(b, r, m)),
            )
        )
        programs.append(
            FloorProgram(
                f"newton-schulz + combination {b}x{n}x{m}",
                _cosmos_combine,
                (spec(b, n, m), spec(b, n, m)),
            )
        )
    return programs


# ----------------------------------------------------------------------------
# NorMuon (helper "compile", issue 17 §2). Replaces the Muon-family entry
# registered above for "normuon": NorMuon's neuron-wise normalization is its
# math, not overhead, so its floor is the Muon floor plus, per distinct matrix
# shape, the row second-moment EMA (one reduction over fan-in), the division and
# the Frobenius-norm restore (two reductions), in the same program as that
# shape's Newton–Schulz.
# ----------------------------------------------------------------------------


@register("normuon")
def _normuon(params: Any) -> list[FloorProgram]:
    import jax.numpy as jnp

    from optx._src import orthogonalization

    def per_shape(x: jax.Array, v: jax.Array) -> Any:
        o = orthogonalization.newton_schulz(x, "keller", 5)
        v = 0.95 * v + 0.05 * jnp.mean(o * o, axis=1, keepdims=True)
        y = o / (jnp.sqrt(v) + 1e-10)
        norm = lambda a: jnp.sqrt(jnp.sum(a * a, axis=(1, 2), keepdims=True))  # noqa: E731
        return y * (norm(o) / (norm(y) + 1e-10)), v

    programs = [_adamw_step_program(params)]
    shapes = {(lay.matrix_shape, dtype) for lay, dtype in _distinct_layouts(params)}
    for (b, fi, fo), dtype in sorted(shapes, key=str):
        args = (_spec((b, fi, fo), dtype), _spec((b, 1, fo), dtype))
        programs.append(FloorProgram(f"NS + row RMS + norm restore {(b, fi, fo)}", per_shape, args))
    return programs


@register("apollo_mini")
def _apollo_mini(params: Any) -> list[FloorProgram]:
    """APOLLO's floor with APOLLO-Mini's rank-1 projectors (same per-leaf key chain).

    Measured (helper "compile"): replacing APOLLO's draws by a constant
    projector (a callable ``projection``) cuts its compile by ~1.2 s CPU
    unscanned (4.65x -> 3.48x optax.adamw) and ~0.9 s scanned (3.64x -> 2.48x),
    so even a free draw leaves APOLLO above the 1.5x scanned target.
    """
    return _apollo(params, "apollo_mini")


# ----------------------------------------------------------------------------
# EGGROLL and WGSEF (helper "zo", issue 17 §2). Each floor is ONE program with
# the method's math and no key chain or bookkeeping: for EGGROLL, one normal
# draw for every pair's noise (all leaves, one threefry + erf_inv region), the
# population's loss at its perturbed parameters (the benchmark's fitness, low-
# rank ``B Aᵀ`` products per matrix), the antithetic contraction and SGD; for
# WGSEF, SGD with momentum, the group norms of every matrix and one water-
# filling sort per distinct group count.
# ----------------------------------------------------------------------------


@register("eggroll")
def _eggroll(params: Any) -> list[FloorProgram]:
    import math

    import jax.numpy as jnp

    from optx._src import base, evolution, layouts

    pairs, rank, sigma = 8, 1, 0.02
    resolve = layouts.resolved_layout_fn(evolution.es_router())
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    lays = [resolve(base.path_to_str(p), x) for p, x in flat]
    sizes = [
        math.prod(x.shape) if lay is None else lay.batch_size * (lay.fan_in + lay.fan_out) * rank
        for (_, x), lay in zip(flat, lays, strict=True)
    ]

    def noise(z: jax.Array, key: jax.Array) -> list[Any]:
        # Runtime offsets: the consumers of same-shape blocks share kernels.
        blocks = base.split_consecutive(z, sizes, key, axis=1)
        out = []
        for (_, x), lay, block in zip(flat, lays, blocks, strict=True):
            if lay is None:
                out.append(jnp.reshape(block, (pairs, *x.shape)))
                continue
            zz = jnp.reshape(block, (pairs, lay.batch_size, lay.fan_in + lay.fan_out, rank))
            out.append((zz[..., : lay.fan_in, :], zz[..., lay.fan_in :, :]))
        return out

    def perturbed(p: list[Any], e: list[Any], s: float) -> Any:
        leaves = []
        for x, n, lay in zip(p, e, lays, strict=True):
            if lay is not None:
                b, a = n
                m = layouts.from_matrices(b @ jnp.swapaxes(a, -1, -2), lay)
                leaves.append(x + s * sigma * m)
            else:
                leaves.append(x + s * sigma * n)
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def prog(p: Any, key: jax.Array) -> Any:
        z = jax.random.normal(key, (pairs, sum(sizes)), jnp.float32)
        e = noise(z, key)
        leaves = jax.tree_util.tree_leaves(p)

        def fit(ej: list[Any]) -> jax.Array:
            return jnp.stack([-_loss(perturbed(leaves, ej, s)) for s in (1.0, -1.0)])

        f = jnp.reshape(jax.vmap(fit)(e), (-1,))
        f = (f - jnp.mean(f)) / jnp.sqrt(jnp.var(f) + 1e-5)
        d = f[0::2] - f[1::2]
        new = []
        for x, n, lay in zip(leaves, e, lays, strict=True):
            if lay is not None:
                b, a = n
                g = layouts.from_matrices(jnp.einsum("p,pbir,pbjr->bij", d, b, a), lay)
            else:
                g = jnp.tensordot(d, n, axes=1)
            new.append(x + 0.01 * g)
        return jax.tree_util.tree_unflatten(treedef, new)

    args = (params, jax.random.key(0))
    return [FloorProgram("one draw + population loss + antithetic sum + SGD", prog, args)]


@register("wgsef")
def _wgsef(params: Any) -> list[FloorProgram]:
    import math

    import jax.numpy as jnp
    import optax

    import optx
    from optx._src import base, layouts, sparsity

    tx = optax.sgd(0.05, momentum=0.9)
    resolve = layouts.resolved_layout_fn(None)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [base.path_to_str(p) for p, _ in flat]
    lays = [resolve(n, x) for n, (_, x) in zip(names, flat, strict=True)]

    def prog(g: Any, s: Any, p: Any) -> Any:
        u, s = tx.update(g, s, p)
        x = jax.tree_util.tree_leaves(optax.apply_updates(p, u))
        groups: dict[int, list[int]] = {}
        views = {}
        for i, lay in enumerate(lays):
            if lay is not None:
                views[i] = sparsity.to_groups(x[i], lay, "output")
                groups.setdefault(views[i].shape[1], []).append(i)
        for m, members in groups.items():
            norms = jnp.concatenate([jnp.linalg.norm(views[i], axis=-1) for i in members])
            scaled = optx.sparsity.sparse_envelope_prox(norms, math.ceil(0.5 * m), 0.005)
            start = 0
            for i in members:
                n = views[i].shape[0]
                factor = scaled[start : start + n] / jnp.linalg.norm(views[i], axis=-1)
                start += n
                x[i] = sparsity.from_groups(views[i] * factor[..., None], lays[i], "output")
        return x, s

    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    return [
        FloorProgram(
            "SGD momentum + group norms + one sort per group count",
            prog,
            (grads, tx.init(params), params),
        )
    ]


# ----------------------------------------------------------------------------
# FRUGAL (block subspace, the registry's default): AdamW on the leaves outside
# the matrix group; per group of same-shape matrices (the block choice is per
# shape group, across leaves), Adam on the round(ρ·N) active matrices, which
# needs them gathered by their (changing) indices and scattered back, and the
# sign of the others.
# ----------------------------------------------------------------------------


@register("frugal")
def _frugal(params: Any) -> list[FloorProgram]:
    import jax.numpy as jnp
    import optax

    import optx
    from optx._src import base, layouts, routing

    density = optx.get_optimizer("frugal").defaults.get("density") or 0.25
    router = routing.as_router(None)
    resolve = layouts.resolved_layout_fn(router)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    lays: list[Any] = []
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (path, x) in enumerate(flat):
        name = base.path_to_str(path)
        lay = resolve(name, x) if router.assign(name, x).group == routing.MATRIX else None
        lays.append(lay)
        if lay is not None:
            groups.setdefault((*lay.matrix_shape[1:], jnp.dtype(x.dtype)), []).append(i)
    others = [x for (_, x), lay in zip(flat, lays) if lay is None]
    adamw = optax.adamw(1e-3)
    n_active = {
        g: max(1, round(density * sum(lays[i].batch_size for i in idx)))
        for g, idx in groups.items()
    }
    moments = {g: [_spec((k, g[0], g[1]), jnp.float32)] * 2 for g, k in n_active.items()}
    active = {g: _spec((k,), jnp.int32) for g, k in n_active.items()}

    def adam_on_active(g: Any, stack: Any, mom: Any, act: Any, count: Any) -> Any:
        """Adam (bias-corrected, reset at a refresh) on the gathered active blocks."""
        fresh = count % 200 == 0
        a = jnp.take(stack, act, axis=0)
        m = 0.9 * jnp.where(fresh, 0.0, mom[0]) + 0.1 * a
        v = 0.999 * jnp.where(fresh, 0.0, mom[1]) + 0.001 * a * a
        t = jnp.where(fresh, 1, count % 200 + 1).astype(jnp.float32)
        d = (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return jnp.sign(stack).at[act].set(d), [m, v]

    def prog(g_all: Any, p_all: Any, s: Any, mom: Any, act: Any, count: Any) -> Any:
        g_leaves, p_leaves = treedef.flatten_up_to(g_all), treedef.flatten_up_to(p_all)
        fb = [x for x, lay in zip(g_leaves, lays) if lay is None]
        fb_p = [x for x, lay in zip(p_leaves, lays) if lay is None]
        upd, s = adamw.update(fb, s, fb_p)
        new_p = dict(
            zip([i for i, lay in enumerate(lays) if lay is None], optax.apply_updates(fb_p, upd))
        )
        for g, idx in groups.items():
            stack = jnp.concatenate([layouts.to_matrices(g_leaves[i], lays[i]) for i in idx])
            full, mom[g] = adam_on_active(g, stack, mom[g], act[g], count)
            offset = 0
            for i in idx:
                b = lays[i].batch_size
                u = layouts.from_matrices(full[offset : offset + b], lays[i])
                new_p[i] = p_leaves[i] - 1e-3 * u
                offset += b
        return [new_p[i] for i in range(len(lays))], s, mom

    args = (
        params,
        params,
        jax.eval_shape(adamw.init, others),
        moments,
        active,
        _spec((), jnp.int32),
    )
    label = "adamw (others) + Adam on the gathered active blocks, sign of the rest, applied"
    return [FloorProgram(label, prog, args)]
