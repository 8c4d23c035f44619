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

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from optx._src import base

STRATEGIES = ("auto", "replicate", "batched")


def explicit_axes() -> tuple[str, ...]:
    """Names of the Explicit axes of the mesh in context (``jax.set_mesh``)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    return tuple(n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit)


def context_mesh_axes() -> tuple[str, ...]:
    """All axis names of the mesh in context, or ``()``."""
    mesh = jax.sharding.get_abstract_mesh()
    return () if mesh.empty else tuple(mesh.axis_names)


def spec_of(x: Any) -> PartitionSpec | None:
    """The PartitionSpec in ``x``'s type under an Explicit mesh, else None."""
    if not explicit_axes():
        return None
    try:
        sharding = jax.typeof(x).sharding
    except Exception:
        return None
    spec = getattr(sharding, "spec", None)
    return spec if isinstance(spec, PartitionSpec) else None


def is_sharded(x: Any) -> bool:
    """True when ``x``'s type names a mesh axis on any dimension."""
    spec = spec_of(x)
    return spec is not None and any(s is not None for s in spec)


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
    ``like``'s, e.g. reduced statistics) are unsharded. Outside an Explicit
    mesh this is plain ``jnp.zeros``.
    """
    shape = tuple(int(d) for d in shape)
    spec = spec_of(like)
    if spec is None:
        return jnp.zeros(shape, dtype)
    like_shape = jnp.shape(like)
    if keep is None:
        keep = [len(like_shape) == len(shape) and a == b for a, b in zip(like_shape, shape)]
        keep += [False] * (len(shape) - len(keep))
    out_spec = derived_spec(spec, len(shape), keep)
    return jnp.zeros(shape, dtype, out_sharding=out_spec)


def reshard_like(y: jax.Array, x: jax.Array) -> jax.Array:
    """Reshards ``y`` to ``x``'s sharding type (no-op outside Explicit meshes)."""
    spec = spec_of(x)
    if spec is None:
        return y
    if spec_of(y) == spec:
        return y
    return jax.sharding.reshard(y, spec)


def apply_matrix_fn(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array, strategy: str = "auto"
) -> jax.Array:
    """Runs shape-preserving matrix math ``fn`` on a possibly sharded ``x``.

    * ``'auto'``: under an Explicit mesh with ``x`` sharded, wraps ``fn`` in
      ``jax.sharding.auto_axes`` with ``out_sharding`` = ``x``'s sharding, so
      contractions over sharded dimensions compile (XLA inserts collectives).
    * ``'replicate'``: reshards ``x`` to replicated, runs ``fn`` on every
      device, reshards the result back (one all-gather, redundant compute).
    * ``'batched'`` is a tree-level strategy (see
      :func:`optx.scale_by_newton_schulz`); per leaf it behaves like ``'auto'``.

    Outside a mesh, or for an unsharded ``x``, this is ``fn(x)``.
    """
    base.check_choice("strategy", strategy, STRATEGIES)
    if not is_sharded(x):
        return fn(x)
    spec = spec_of(x)
    if strategy == "replicate":
        y = fn(jax.sharding.reshard(x, PartitionSpec()))
        return jax.sharding.reshard(y, spec)
    return jax.sharding.auto_axes(fn, out_sharding=spec)(x)


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
    gets the sharding its ``init`` derives (see :func:`zeros_like_spec`).
    Returns a tree of ``NamedSharding`` on the params' mesh, ready for
    ``jax.jit(tx.init, out_shardings=...)``.

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ('x',))
      >>> p = {'w': jax.ShapeDtypeStruct((4, 2), jnp.float32,
      ...                                 sharding=NamedSharding(mesh, P('x')))}
      >>> s = optx.state_shardings(optx.muon(0.02), p)
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

    def to_abstract(x: Any) -> jax.ShapeDtypeStruct:
        sh = getattr(x, "sharding", None)
        spec = sh.spec if isinstance(sh, NamedSharding) else PartitionSpec()
        return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype, sharding=NamedSharding(explicit, spec))

    abstract = jax.tree.map(to_abstract, params)
    with jax.set_mesh(explicit):
        state = jax.eval_shape(tx.init, abstract)

    def to_sharding(s: Any) -> NamedSharding:
        sh = getattr(s, "sharding", None)
        spec = sh.spec if isinstance(sh, NamedSharding) else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(to_sharding, state)


def call_with_out_specs(fn: Callable[..., Any], args: Sequence[Any], out_specs: Any) -> Any:
    """Runs ``fn(*args)``, fixing the output shardings when inputs are sharded.

    Under an Explicit mesh with any array in ``args`` sharded, ``fn`` runs inside
    ``jax.sharding.auto_axes`` (the compiler picks the collectives for reshapes,
    contractions and gathers over sharded dimensions) and its outputs get the
    ``PartitionSpec``\\ s in ``out_specs`` (a pytree matching the output). That is
    how non-param-shaped results (projections, quantization scales, projected
    moments) keep the sharding their ``init`` gave them (see
    :func:`zeros_like_spec`). Otherwise this is plain ``fn(*args)``.
    """
    if not any(is_sharded(a) for a in jax.tree.leaves(tuple(args))):
        return fn(*args)
    return jax.sharding.auto_axes(fn, out_sharding=out_specs)(*args)


def spec_or_replicated(x: Any) -> PartitionSpec:
    """``x``'s PartitionSpec under an Explicit mesh, else the replicated ``P()``."""
    spec = spec_of(x)
    return PartitionSpec() if spec is None else spec


def zeros_with_spec(shape: Sequence[int], dtype: Any, spec: PartitionSpec | None) -> jax.Array:
    """Zeros with an explicit ``PartitionSpec`` under an Explicit mesh.

    For state whose rank differs from its parameter's (projectors, projected
    moments, per-block scales) :func:`zeros_like_spec` cannot line axes up;
    the caller derives ``spec`` from the parameter's (e.g. with
    :func:`matrix_view_specs`). Outside an Explicit mesh, or with ``spec=None``,
    this is plain ``jnp.zeros``.
    """
    shape = tuple(int(d) for d in shape)
    if spec is None or not explicit_axes():
        return jnp.zeros(shape, dtype)
    return jnp.zeros(shape, dtype, out_sharding=spec)


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
