"""Sharding helpers (DESIGN §5).

``jax.sharding`` is the distributed engine. Two facts shape these helpers
(measured in ``notes/bench_ecosystem.md`` §2.6 with jax 0.10):

* ``jax.make_mesh`` defaults to **Explicit** axes. There, ``x @ x.T`` on a
  matrix whose contracting dimension is sharded fails at trace time with
  ``ShardingTypeError``. Matrix math is therefore run through
  :func:`apply_matrix_fn`, which wraps it in ``jax.sharding.auto_axes`` (the
  compiler picks the collectives) or reshards to replicated, keeping the output
  sharding equal to the input's.
* Under **Auto** axes, ``jax.jit(tx.init)(params)`` returns unsharded state.
  :func:`state_shardings` computes the state's shardings abstractly (under an
  Explicit copy of the mesh, where sharding propagates through ``init``), for
  ``jax.jit(tx.init, out_shardings=...)``.

Non-param-shaped state (row statistics, Kronecker factors, projectors) gets its
sharding from the transform's ``init``: create it with :func:`zeros_like_spec`
or from reductions of the (sharded) params, and :func:`state_shardings` picks it
up. That is the explicit per-state sharding rule DESIGN §2 asks for; optax's
structural ``tree_map_params`` cannot express it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from optx._src import base

STRATEGIES = ("auto", "replicate", "batched")

# Each array's own type says which mesh it lives on (``jax.typeof(x).sharding``),
# so nothing here reads the mesh in context: an update jitted on explicitly
# sharded arrays runs the same code, with the same numbers, with or without
# ``jax.set_mesh``. Shardings are built as ``NamedSharding(mesh_of(x), spec)``
# (a bare ``PartitionSpec`` would need the context mesh).


def _named_sharding_of(x: Any) -> NamedSharding | None:
    """``x``'s NamedSharding with a non-empty mesh, concrete where ``x`` is.

    Concrete arrays and ``jax.ShapeDtypeStruct`` carry a concrete ``Mesh``
    (needed to create arrays outside ``jit``); tracers an ``AbstractMesh``.
    The spec is padded to ``x``'s rank.
    """
    if isinstance(x, jax.ShapeDtypeStruct):
        sh = x.sharding
        if not isinstance(sh, NamedSharding):
            return None
        ndim = len(x.shape)
    else:
        try:
            sh = jax.typeof(x).sharding
        except (TypeError, AttributeError):
            return None
        if not isinstance(sh, NamedSharding):
            return None
        ndim = jnp.ndim(x)
        concrete = None if isinstance(x, jax.core.Tracer) else getattr(x, "sharding", None)
        if isinstance(concrete, NamedSharding) and isinstance(concrete.mesh, jax.sharding.Mesh):
            sh = NamedSharding(concrete.mesh, sh.spec)
    if sh.mesh.empty:
        return None
    spec = tuple(sh.spec) + (None,) * (ndim - len(sh.spec))
    return NamedSharding(sh.mesh, PartitionSpec(*spec))


def _has_explicit_axis(mesh: Any) -> bool:
    return any(t == AxisType.Explicit for t in mesh.axis_types)


def mesh_of(*trees: Any) -> Any:
    """The mesh the first array leaf of ``trees`` placed on a mesh lives on, or None.

    Explicit meshes are preferred (they decide how ``jit`` types the arrays);
    a mesh with only Auto axes is returned when no leaf has an Explicit one.
    """
    found = None
    for leaf in jax.tree.leaves(trees):
        sh = _named_sharding_of(leaf)
        if sh is None:
            continue
        if _has_explicit_axis(sh.mesh):
            return sh.mesh
        found = found if found is not None else sh.mesh
    return found


def explicit_axes(*trees: Any) -> tuple[str, ...]:
    """Names of the Explicit axes of the mesh the arrays in ``trees`` live on.

    Without arrays (the old form), the mesh in context (``jax.set_mesh``).
    """
    mesh = mesh_of(*trees) if trees else jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return ()
    return tuple(n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit)


def spec_of(x: Any) -> PartitionSpec | None:
    """The PartitionSpec in ``x``'s own type when its mesh has Explicit axes, else None.

    Read from the array (``jax.typeof(x).sharding``), not from the mesh in
    context, so it is the same with or without ``jax.set_mesh``.
    """
    sh = _named_sharding_of(x)
    if sh is None or not _has_explicit_axis(sh.mesh):
        return None
    return sh.spec


def is_sharded(x: Any) -> bool:
    """True when ``x``'s type names a mesh axis on any dimension."""
    spec = spec_of(x)
    return spec is not None and any(s is not None for s in spec)


def named(spec: PartitionSpec | None, like: Any) -> NamedSharding | None:
    """``spec`` on the (Explicit) mesh ``like`` lives on; None when there is none.

    ``like`` is an array, a tree of arrays or a mesh.
    """
    if spec is None:
        return None
    if isinstance(like, jax.sharding.Mesh | jax.sharding.AbstractMesh):
        mesh = like
    else:
        mesh = mesh_of(like)
    if mesh is None or not _has_explicit_axis(mesh):
        return None
    return NamedSharding(mesh, spec)


def reshard(y: jax.Array, spec: PartitionSpec, like: Any = None) -> jax.Array:
    """Reshards ``y`` to ``spec`` on ``like``'s mesh (default: ``y``'s own).

    A no-op when neither lives on a mesh with Explicit axes.
    """
    target = named(spec, y if like is None else like)
    if target is None:
        return y
    return jax.sharding.reshard(y, target)


def replicate(x: jax.Array) -> jax.Array:
    """``x`` resharded to replicated on its own mesh (no-op if unsharded)."""
    if not is_sharded(x):
        return x
    return reshard(x, PartitionSpec())


def zeros(shape: Sequence[int], dtype: Any, target: NamedSharding | None) -> jax.Array:
    """``jnp.zeros(shape, dtype)`` with sharding ``target`` (None: unsharded).

    On a concrete mesh (eager ``init``, the mesh taken from a concrete array)
    the zeros are placed with ``jax.device_put``, which needs no mesh in
    context; on an abstract mesh (under ``jit``) they are typed with
    ``out_sharding``.
    """
    shape = tuple(int(d) for d in shape)
    if target is None:
        return jnp.zeros(shape, dtype)
    if isinstance(target.mesh, jax.sharding.Mesh):
        return jax.device_put(jnp.zeros(shape, dtype), target)
    return jnp.zeros(shape, dtype, out_sharding=target)


def put_like(x: Any, like: Any, spec: PartitionSpec | None = None) -> Any:
    """``x`` (a tree) placed on ``like``'s Explicit mesh with ``spec`` (default replicated).

    State an ``init`` creates from scratch (identity factors, flags, PRNG key
    data) would otherwise live on no mesh when no ``jax.set_mesh`` is active,
    and ``jit`` would let the compiler choose its output sharding, so the next
    step's types differ. Placing it on the params' mesh types it as under
    ``jax.set_mesh``. The default replicated spec is padded to each leaf's rank
    (``P(None, None)`` for a matrix), as ``jit`` types the step's outputs: a
    ``P()`` state leaf returned as ``P(None,)`` would compile the step twice. A
    no-op when ``like`` is on no Explicit mesh.
    """
    if spec is not None:
        target = named(spec, like)
        if target is None:
            return x
        return jax.tree.map(lambda leaf: _place(leaf, target), x)
    if named(PartitionSpec(), like) is None:
        return x
    return jax.tree.map(
        lambda leaf: _place(leaf, named(PartitionSpec(*(None,) * jnp.ndim(leaf)), like)), x
    )


def _place(x: jax.Array, target: NamedSharding) -> jax.Array:
    if isinstance(target.mesh, jax.sharding.Mesh):
        return jax.device_put(x, target)
    return jax.sharding.reshard(x, target)


def derived_spec(
    spec: PartitionSpec | None, ndim: int, keep: Sequence[bool]
) -> PartitionSpec | None:
    """``spec`` with the axes where ``keep`` is False unsharded (set to None)."""
    if spec is None:
        return None
    entries = tuple(spec) + (None,) * (ndim - len(spec))
    return PartitionSpec(*(e if k else None for e, k in zip(entries, keep)))


def zeros_like_spec(
    shape: Sequence[int], dtype: Any, like: Any, keep: Sequence[bool] | None = None
) -> jax.Array:
    """Zeros of ``shape`` sharded like ``like`` (an array of the same rank).

    Axes where ``keep`` is False (default: axes whose size differs from
    ``like``'s, e.g. reduced statistics) are unsharded, and so is any axis
    whose size the mesh axes do not divide. For an array ``like`` on no
    Explicit mesh this is plain ``jnp.zeros``.
    """
    shape = tuple(int(d) for d in shape)
    spec = spec_of(like)
    if spec is None:
        return jnp.zeros(shape, dtype)
    like_shape = jnp.shape(like)
    if keep is None:
        keep = [len(like_shape) == len(shape) and a == b for a, b in zip(like_shape, shape)]
        keep += [False] * (len(shape) - len(keep))
    out_spec = divisible_spec(derived_spec(spec, len(shape), keep), shape, like)
    return zeros(shape, dtype, named(out_spec, like))


def divisible_spec(spec: PartitionSpec, shape: Sequence[int], like: Any) -> PartitionSpec:
    """``spec`` with every axis whose size its mesh axes do not divide unsharded."""
    mesh = mesh_of(like)
    if mesh is None:
        return spec
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))

    def ok(entry: Any, d: int) -> bool:
        if entry is None:
            return True
        names = entry if isinstance(entry, tuple) else (entry,)
        return d % math.prod(sizes[n] for n in names) == 0

    entries = tuple(spec) + (None,) * (len(shape) - len(spec))
    return PartitionSpec(*(e if ok(e, d) else None for e, d in zip(entries, shape)))


def fill_spec(
    spec: PartitionSpec | None, shape: Sequence[int], like: Any, prefer: Sequence[int] = ()
) -> PartitionSpec | None:
    """``spec`` with the mesh axes it leaves unused put on one more axis of ``shape``.

    The rule for state whose size is proportional to its parameter's but whose shape is not
    the parameter's (projection matrices, projected moments, stacked blocks, gradient
    buffers): the sharding derived from the parameter (e.g. by :func:`matrix_view_specs`)
    may leave mesh axes unused — a merged axis group, a stack axis — and then every device
    on those axes holds a copy. ``fill_spec`` first unshards what the mesh does not divide,
    then puts the unused Explicit mesh axes (of size > 1) together on the largest axis of
    ``shape`` that is unsharded and divisible by their product, or, failing that, the
    largest unused axis alone on the largest such axis; otherwise ``spec`` is returned
    (small or indivisible state stays replicated). Axes in ``prefer`` are tried first, in
    that order (e.g. a projection's rank axis, so that the contraction producing it
    reduce-scatters instead of gathering). ``like`` is an array (or tree) on the mesh;
    without an Explicit mesh, or with ``spec=None``, this returns ``spec``.

    Example:
      >>> import jax
      >>> from jax.sharding import AxisType, PartitionSpec as P
      >>> from optx._src import sharding
      >>> mesh = jax.make_mesh((1, 1), ('data', 'model'), axis_types=(AxisType.Explicit,) * 2)
      >>> sharding.fill_spec(P(None, 'data', None), (1, 768, 64), mesh)
      P(None, 'data', None)
    """
    if spec is None:
        return None
    mesh = like if isinstance(like, jax.sharding.Mesh | jax.sharding.AbstractMesh) else None
    mesh = mesh if mesh is not None else mesh_of(like)
    if mesh is None or not _has_explicit_axis(mesh):
        return spec
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    shape = tuple(int(d) for d in shape)
    entries = list(tuple(spec) + (None,) * (len(shape) - len(spec)))

    def names(entry: Any) -> tuple[str, ...]:
        return () if entry is None else entry if isinstance(entry, tuple) else (entry,)

    for a, e in enumerate(entries):  # unshard what the mesh does not divide
        if e is not None and shape[a] % math.prod(sizes[n] for n in names(e)):
            entries[a] = None
    used = {n for e in entries for n in names(e)}
    free = [
        n
        for n, t in zip(mesh.axis_names, mesh.axis_types)
        if t == AxisType.Explicit and n not in used and sizes[n] > 1
    ]
    rest = sorted((a for a in range(len(shape)) if a not in prefer), key=lambda a: -shape[a])
    order = [a for a in (*prefer, *rest) if entries[a] is None]
    for group in (free, *sorted(([n] for n in free), key=lambda g: -sizes[g[0]])):
        if not group:
            continue
        k = math.prod(sizes[n] for n in group)
        for a in order:
            if shape[a] % k == 0:
                entries[a] = tuple(group) if len(group) > 1 else group[0]
                return PartitionSpec(*entries)
    return PartitionSpec(*entries)


def zeros_filled(
    shape: Sequence[int], dtype: Any, spec: PartitionSpec | None, like: Any
) -> jax.Array:
    """:func:`zeros_with_spec` with ``spec`` completed by :func:`fill_spec`.

    ``spec=None`` with ``like`` on an Explicit mesh starts from replicated. Without such a
    mesh this is plain ``jnp.zeros``.
    """
    if spec is None:
        mesh = mesh_of(like)
        if mesh is None or not _has_explicit_axis(mesh):
            return jnp.zeros(tuple(int(d) for d in shape), dtype)
        spec = PartitionSpec()
    return zeros_with_spec(shape, dtype, fill_spec(spec, shape, like), like=like)


def reshard_like(y: jax.Array, x: jax.Array) -> jax.Array:
    """Reshards ``y`` to ``x``'s sharding type (no-op when ``x`` is on no Explicit mesh)."""
    spec = spec_of(x)
    if spec is None:
        return y
    if spec_of(y) == spec:
        return y
    return reshard(y, spec, like=x)


def apply_matrix_fn(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, strategy: str = "auto"
) -> jax.Array:
    """Runs shape-preserving matrix math ``fn`` on a possibly sharded ``x``.

    * ``'auto'``: with ``x`` sharded over Explicit mesh axes, wraps ``fn`` in
      ``jax.sharding.auto_axes`` with ``out_sharding`` = ``x``'s sharding, so
      contractions over sharded dimensions compile (XLA inserts collectives).
    * ``'replicate'``: reshards ``x`` to replicated, runs ``fn`` on every
      device, reshards the result back (one all-gather, redundant compute).
    * ``'batched'`` is a tree-level strategy (see
      :func:`optx.scale_by_newton_schulz`); per leaf it behaves like ``'auto'``.

    The mesh is ``x``'s own (no ``jax.set_mesh`` needed); a replicated ``x``
    on an Explicit mesh also runs under ``auto_axes``, so arrays ``fn``
    creates live on that mesh as they would under ``jax.set_mesh``. For ``x``
    on no mesh (or on Auto axes only, where the compiler shards), this is
    ``fn(x)``.
    """
    base.check_choice("strategy", strategy, STRATEGIES)
    spec = spec_of(x)
    if spec is None:
        return fn(x)
    if strategy == "replicate":
        return reshard(fn(replicate(x)), spec, like=x)
    return jax.sharding.auto_axes(fn, out_sharding=named(spec, x))(x)


def _explicit_mesh_like(mesh: Any) -> jax.sharding.Mesh | jax.sharding.AbstractMesh:
    if all(t == AxisType.Explicit for t in mesh.axis_types):
        return mesh
    if isinstance(mesh, jax.sharding.Mesh):
        return jax.sharding.Mesh(
            mesh.devices, mesh.axis_names, axis_types=(AxisType.Explicit,) * len(mesh.axis_names)
        )
    return mesh.update(axis_types=(AxisType.Explicit,) * len(mesh.axis_names))


def state_shardings(tx: optax.GradientTransformation, params: Any) -> Any:
    """Shardings of ``tx.init(params)`` for sharded ``params``, computed abstractly.

    ``params`` leaves are arrays or ``jax.ShapeDtypeStruct`` carrying a
    ``NamedSharding`` (all on one mesh, Explicit or Auto axes). The state is
    evaluated with ``jax.eval_shape`` under an Explicit copy of the mesh, so
    param-shaped state inherits the param sharding and non-param-shaped state
    gets the sharding its ``init`` derives (see :func:`zeros_like_spec`). On a
    mesh mixing Explicit and Auto axes the Explicit axes are placed as ``init``
    places them on that mesh (the step's types must match them), and an Auto
    axis is kept where the all-Explicit evaluation put it on a dimension the
    Explicit axes leave free.
    Returns a tree of ``NamedSharding`` on the params' mesh, ready for
    ``jax.jit(tx.init, out_shardings=...)``.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ('x',))
      >>> p = {'w': jax.ShapeDtypeStruct((4, 2), jnp.float32,
      ...                                 sharding=NamedSharding(mesh, P('x')))}
      >>> s = optx.sharding.state_shardings(optx.muon(0.02), p)
    """
    leaves = jax.tree.leaves(params)
    meshes = []
    for leaf in leaves:
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding):
            meshes.append(sh.mesh)
    if not meshes:
        raise ValueError(
            "state_shardings needs params whose leaves carry a NamedSharding "
            "(sharded arrays or jax.ShapeDtypeStruct(..., sharding=NamedSharding(...)))."
        )
    mesh = meshes[0]
    explicit = _explicit_mesh_like(mesh)
    state = _abstract_state_specs(tx, params, explicit)
    auto = {n for n, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Explicit}
    if auto and len(auto) < len(mesh.axis_names):
        placed = _abstract_state_specs(tx, params, mesh)
        state = jax.tree.map(
            lambda p, e: _with_free_auto_axes(p, e, auto), placed, state, is_leaf=_is_spec
        )
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), state, is_leaf=_is_spec)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def _abstract_state_specs(tx: optax.GradientTransformation, params: Any, mesh: Any) -> Any:
    """``tx.init``'s state as a tree of rank-padded ``PartitionSpec``, evaluated on ``mesh``.

    Specs are padded to the leaf's rank, as jit types its outputs: a state placed
    with ``P()`` where a step returns ``P(None,)`` would compile the step twice.
    """

    def to_abstract(x: Any) -> jax.ShapeDtypeStruct:
        sh = getattr(x, "sharding", None)
        spec = sh.spec if isinstance(sh, NamedSharding) else PartitionSpec()
        return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=NamedSharding(mesh, spec))

    def to_spec(s: Any) -> PartitionSpec:
        # The traced type's spec: it names every Explicit axis, also on a mesh
        # mixing axis types (where eval_shape's outputs carry no sharding).
        sh = jax.typeof(s).sharding
        spec = tuple(sh.spec) if isinstance(sh, NamedSharding) else ()
        return PartitionSpec(*spec, *(None,) * (jnp.ndim(s) - len(spec)))

    specs = []

    def init_specs(p: Any) -> Any:
        state = tx.init(p)
        specs.append(jax.tree.map(to_spec, state))
        return state

    with jax.set_mesh(mesh):
        jax.eval_shape(init_specs, jax.tree.map(to_abstract, params))
    return specs[0]


def _with_free_auto_axes(
    placed: PartitionSpec, everywhere: PartitionSpec, auto: set[str]
) -> PartitionSpec:
    """``placed`` (Explicit axes only) plus ``everywhere``'s Auto axes on its free dimensions."""

    def names(entry: Any) -> tuple:
        return () if entry is None else entry if isinstance(entry, tuple) else (entry,)

    used = {n for e in placed for n in names(e)}
    out = []
    for p, e in zip(placed, everywhere):
        extra = tuple(n for n in names(e) if n in auto and n not in used) if p is None else ()
        used.update(extra)
        out.append(p if p is not None else (extra[0] if len(extra) == 1 else extra or None))
    return PartitionSpec(*out)


def reduce_scattered(
    partial_fn: Callable[..., jax.Array],
    args: Sequence[jax.Array],
    in_specs: Sequence[PartitionSpec],
    out_spec: PartitionSpec,
    axis_name: Any,
    dimension: int,
) -> jax.Array:
    """``partial_fn`` on each device's blocks of ``args``, its partial results summed
    over ``axis_name`` and scattered onto ``dimension`` (one ``psum_scatter``), on
    the mesh in context (inside ``auto_axes``).

    For a contraction over a sharded axis whose result is sharded on another: the
    compiler alone all-reduces the whole product and slices it; this moves
    ``1/N`` of it (SOAP's rotation of a sharded mode, GaLore's projection of
    sharded rows)."""

    def local(*xs: jax.Array) -> jax.Array:
        return jax.lax.psum_scatter(
            partial_fn(*xs), axis_name, scatter_dimension=dimension, tiled=True
        )

    return jax.shard_map(
        local,
        mesh=jax.sharding.get_abstract_mesh(),
        in_specs=tuple(in_specs),
        out_specs=out_spec,
        check_vma=False,
    )(*args)


def call_with_out_specs(fn: Callable[..., Any], args: Sequence[Any], out_specs: Any) -> Any:
    """Runs ``fn(*args)``, fixing the output shardings when inputs are sharded.

    With any array in ``args`` on a mesh with Explicit axes (sharded or
    replicated), ``fn`` runs inside ``jax.sharding.auto_axes`` on that mesh (the compiler picks
    the collectives for reshapes, contractions, eigh/QR/SVD and gathers over
    sharded dimensions) and its outputs get the ``PartitionSpec``\\ s in
    ``out_specs`` (a pytree matching the output; ``None`` entries are
    replicated). That is how non-param-shaped results (projections,
    quantization scales, projected moments, Kronecker factors) keep the sharding
    their ``init`` gave them (see :func:`zeros_like_spec`). Otherwise this is
    plain ``fn(*args)``. The mesh in context plays no part.
    """
    on_mesh = [a for a in jax.tree.leaves(tuple(args)) if spec_of(a) is not None]
    if not on_mesh:
        return fn(*args)
    mesh = mesh_of(on_mesh[0])
    out_sharding = jax.tree.map(
        lambda s: NamedSharding(mesh, PartitionSpec() if s is None else s),
        out_specs,
        is_leaf=lambda s: s is None or isinstance(s, PartitionSpec),
    )
    return jax.sharding.auto_axes(fn, out_sharding=out_sharding)(*args)


def spec_or_replicated(x: Any) -> PartitionSpec:
    """``x``'s PartitionSpec on an Explicit mesh, else the replicated ``P()``."""
    spec = spec_of(x)
    return PartitionSpec() if spec is None else spec


def zeros_with_spec(
    shape: Sequence[int], dtype: Any, spec: PartitionSpec | None, like: Any = None
) -> jax.Array:
    """Zeros with an explicit ``PartitionSpec`` on ``like``'s Explicit mesh.

    For state whose rank differs from its parameter's (projectors, projected
    moments, per-block scales) :func:`zeros_like_spec` cannot line axes up;
    the caller derives ``spec`` from the parameter ``like`` (e.g. with
    :func:`matrix_view_specs`). Axes the mesh does not divide are unsharded.
    Without a mesh (``like`` on none, and none in context), or with
    ``spec=None``, this is plain ``jnp.zeros``.
    """
    shape = tuple(int(d) for d in shape)
    if spec is None:
        return jnp.zeros(shape, dtype)
    mesh = mesh_of(like) if like is not None else None
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or not _has_explicit_axis(mesh):
            return jnp.zeros(shape, dtype)
        return jnp.zeros(shape, dtype, out_sharding=spec)
    spec = divisible_spec(spec, shape, like)
    return zeros(shape, dtype, named(spec, mesh))


def matrix_view_specs(x: Any, layout: Any) -> tuple[Any, Any, Any] | None:
    """Mesh axes of the ``(batch, fan_in, fan_out)`` view of a sharded leaf.

    Each of the three view dimensions keeps the sharding of the parameter axis
    it comes from when it comes from exactly one axis (one batch axis, one
    reduction axis, one output axis); merged axis groups (a conv window, two
    stack axes) are unsharded in the view. Returns None when ``x`` carries no
    Explicit sharding. ``layout`` is a :class:`optx.ResolvedLayout`.
    """
    spec = spec_of(x)
    if spec is None:
        return None
    entries = tuple(spec) + (None,) * (len(layout.shape) - len(spec))

    def one(axes: tuple[int, ...]) -> Any:
        return entries[axes[0]] if len(axes) == 1 else None

    return one(layout.batch_axes), one(layout.reduction_axes), one(layout.output_axes)
