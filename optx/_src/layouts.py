"""Matrix layouts: how a parameter tensor is seen as one or many matrices.

Matrix methods (the Muon family, SOAP, GaLore, ...) need to see a parameter as
a batch of matrices. A :class:`MatrixLayout` names the *reduction* (fan-in)
axes and the *output* (fan-out) axes of a tensor; every other axis is a *batch*
axis. Negative axes count from the end, so one layout serves a plain kernel and
its scanned/stacked version::

  Dense kernel          (in, out)           MatrixLayout((-2,), (-1,))
  scanned Dense stack   (L, in, out)        same layout; L becomes a batch axis
  Conv kernel           (kh, kw, in, out)   MatrixLayout((-4, -3, -2), (-1,))
  attention q/k/v       (d, heads, hd)      MatrixLayout((-3,), (-2, -1))
  attention out         (heads, hd, d)      MatrixLayout((-3, -2), (-1,))

The matrix view of a tensor is ``(batch, fan_in, fan_out)`` — Flax
orientation. Papers written for PyTorch store ``(out, in)``; a paper's "row" or
"neuron" is the **output** axis here, and a per-row statistic reduces over the
reduction axes.

Primitives take a ``layout`` argument (a :data:`LayoutSpec`):

* ``None``: the default router's layouts (``optx.default_router()``): 2-D and
  larger kernels get a layout, biases/norm scales/embeddings/scalars do not;
* a :class:`MatrixLayout`: the same layout for every leaf with ``ndim >= 2``;
* a router (anything with a ``layout(path, leaf)`` method, e.g.
  :class:`optx.Router`);
* a callable ``(path: str, leaf) -> MatrixLayout | None``;
* a pytree of ``MatrixLayout | None`` matched to the updates **by key path**
  (so it keeps working inside ``optax.partition``/``optax.masked``).

Leaves without a layout are passed through unchanged by matrix primitives.
**Zero-size leaves** (a ``(0, 4)`` kernel, an empty stack) have no matrix view:
:func:`resolved_layout_fn` (and so every matrix primitive) treats them as
leaves without a layout, and they pass through (their update is empty).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import optax

from optx._src import base


class MatrixLayout(NamedTuple):
    """Reduction (fan-in) and output (fan-out) axes of a tensor.

    Axes may be negative (counted from the end). All remaining axes are batch
    axes. Both tuples must be non-empty and disjoint.
    """

    reduction_axes: tuple[int, ...] = (-2,)
    output_axes: tuple[int, ...] = (-1,)

    def resolve(self, shape: tuple[int, ...], path: str = "") -> ResolvedLayout:
        """Validates the layout against ``shape`` and returns positive axes."""
        return resolve_layout(self, shape, path)


class ResolvedLayout(NamedTuple):
    """A :class:`MatrixLayout` checked against a concrete shape."""

    shape: tuple[int, ...]
    reduction_axes: tuple[int, ...]
    output_axes: tuple[int, ...]
    batch_axes: tuple[int, ...]

    @property
    def fan_in(self) -> int:
        return math.prod(self.shape[a] for a in self.reduction_axes)

    @property
    def fan_out(self) -> int:
        return math.prod(self.shape[a] for a in self.output_axes)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.batch_axes)

    @property
    def batch_size(self) -> int:
        return math.prod(self.batch_shape)

    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        """``(batch, fan_in, fan_out)``: the shape of :func:`to_matrices`."""
        return (self.batch_size, self.fan_in, self.fan_out)

    @property
    def permutation(self) -> tuple[int, ...]:
        return self.batch_axes + self.reduction_axes + self.output_axes

    def row_stat_shape(self) -> tuple[int, ...]:
        """Shape of a per-output-neuron statistic (reduction axes kept as 1)."""
        return tuple(1 if a in self.reduction_axes else d for a, d in enumerate(self.shape))

    def column_stat_shape(self) -> tuple[int, ...]:
        """Shape of a per-input-feature statistic (output axes kept as 1)."""
        return tuple(1 if a in self.output_axes else d for a, d in enumerate(self.shape))

    def matrix_norm_shape(self) -> tuple[int, ...]:
        """Shape of a per-matrix statistic (reduction and output axes kept as 1)."""
        red = set(self.reduction_axes) | set(self.output_axes)
        return tuple(1 if a in red else d for a, d in enumerate(self.shape))


LayoutFn: TypeAlias = Callable[[str, Any], "MatrixLayout | None"]
LayoutSpec: TypeAlias = Any  # None | MatrixLayout | router | LayoutFn | pytree


# Common layouts -------------------------------------------------------------

DENSE = MatrixLayout((-2,), (-1,))
"""A Flax ``Dense``/``Linear`` kernel ``(..., in, out)``."""

ATTENTION_IN = MatrixLayout((-3,), (-2, -1))
"""An attention input projection ``(..., d_model, heads, head_dim)``."""

ATTENTION_OUT = MatrixLayout((-3, -2), (-1,))
"""An attention output projection ``(..., heads, head_dim, d_model)``."""


def conv_layout(spatial_dims: int = 2) -> MatrixLayout:
    """Layout of a Flax ``Conv`` kernel ``(*window, in, out)``.

    The window and input-channel axes are the fan-in; the output channels are
    the fan-out (PyTorch's ``(out, in*kh*kw)`` view, transposed).
    """
    spatial_dims = base.check_positive_int("spatial_dims", spatial_dims)
    return MatrixLayout(tuple(range(-spatial_dims - 2, -1)), (-1,))


CONV_VIEWS = ("matrix", "torch")


def conv_window_axes(layout: ResolvedLayout) -> tuple[int, int] | None:
    """The ``(kh, kw)`` axes of a 2-D conv kernel, or None for other layouts.

    A 2-D conv kernel has three reduction axes and one output axis; its
    input-channel axis is the reduction axis next to the output axis (Flax
    ``(kh, kw, in, out)`` and PyTorch ``(out, in, kh, kw)`` alike), and the
    other two, in stored order, are the window ``(kh, kw)``. The official
    PyTorch codes compute some statistics on the 4-D ``(out, in, kh, kw)``
    tensor (``conv_view='torch'``), i.e. over these window axes.
    """
    if len(layout.reduction_axes) != 3 or len(layout.output_axes) != 1:
        return None
    out = layout.output_axes[0]
    red = layout.reduction_axes
    channel = out - 1 if out - 1 in red else (out + 1 if out + 1 in red else None)
    if channel is None:
        return None
    kh, kw = (a for a in red if a != channel)
    return kh, kw


def conv_window_slices(spec: LayoutSpec) -> LayoutFn:
    """``spec``'s layouts, with each 2-D conv kernel seen as its ``kh × kw`` slices.

    A conv kernel (see :func:`conv_window_axes`) becomes a batch of ``(kh, kw)``
    matrices over its ``(in, out)`` axes — how the official PyTorch codes that
    batch a 4-D ``(out, in, kh, kw)`` tensor over its leading axes see it.
    Other layouts are unchanged.
    """
    fn = layout_fn_from_spec(spec)

    def layout(path: str, leaf: Any) -> MatrixLayout | None:
        lay = fn(path, leaf)
        if lay is None or not has_matrix_view(leaf):
            return lay
        window = conv_window_axes(resolve_layout(lay, jnp.shape(leaf), path))
        return lay if window is None else MatrixLayout((window[0],), (window[1],))

    return layout


def resolve_layout(layout: MatrixLayout, shape: tuple[int, ...], path: str = "") -> ResolvedLayout:
    """Checks ``layout`` against ``shape``; raises ValueError naming ``path``."""
    where = f" for leaf '{path}'" if path else ""
    if not isinstance(layout, MatrixLayout):
        raise TypeError(f"Expected a MatrixLayout{where}, got {type(layout).__name__}: {layout!r}.")
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"A matrix layout needs a tensor with at least 2 dimensions{where}; got shape "
            f"{shape}. Route scalars, vectors and biases to a fallback optimizer."
        )

    def norm_axes(axes: Any, what: str) -> tuple[int, ...]:
        if isinstance(axes, int):
            axes = (axes,)
        axes = tuple(axes)
        if not axes:
            raise ValueError(f"{what} axes of {layout} are empty{where}.")
        out = []
        for a in axes:
            if isinstance(a, bool) or not isinstance(a, int):
                raise TypeError(f"{what} axes must be ints{where}, got {axes!r}.")
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"{what} axis {a} is out of range for shape {shape} (ndim {ndim}){where}."
                )
            out.append(a % ndim)
        if len(set(out)) != len(out):
            raise ValueError(f"{what} axes {axes} repeat an axis{where} (shape {shape}).")
        return tuple(sorted(out))

    red = norm_axes(layout.reduction_axes, "Reduction")
    outp = norm_axes(layout.output_axes, "Output")
    if set(red) & set(outp):
        raise ValueError(
            f"Reduction axes {layout.reduction_axes} and output axes {layout.output_axes} "
            f"overlap for shape {shape}{where}."
        )
    batch = tuple(a for a in range(ndim) if a not in red and a not in outp)
    return ResolvedLayout(shape, red, outp, batch)


# Matrix views ------------------------------------------------------------------


def to_matrices(x: jax.Array, layout: ResolvedLayout) -> jax.Array:
    """Views ``x`` as a stack of matrices ``(batch, fan_in, fan_out)``."""
    y = jnp.transpose(x, layout.permutation)
    return jnp.reshape(y, layout.matrix_shape)


def from_matrices(m: jax.Array, layout: ResolvedLayout) -> jax.Array:
    """Inverse of :func:`to_matrices`."""
    perm = layout.permutation
    permuted_shape = tuple(layout.shape[a] for a in perm)
    y = jnp.reshape(m, permuted_shape)
    inverse = [0] * len(perm)
    for i, a in enumerate(perm):
        inverse[a] = i
    return jnp.transpose(y, inverse)


def matrix_sum_of_squares(x: jax.Array, layout: ResolvedLayout) -> jax.Array:
    """Per-matrix ``||X||_F^2`` in f32, in :meth:`ResolvedLayout.matrix_norm_shape`."""
    axes = layout.reduction_axes + layout.output_axes
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return jnp.sum(base.abs_sq(x32), axis=axes, keepdims=True)


# Layout specs -------------------------------------------------------------------


def _is_layout_leaf(x: Any) -> bool:
    return x is None or isinstance(x, MatrixLayout)


def layout_fn_from_spec(spec: LayoutSpec) -> LayoutFn:
    """Turns any :data:`LayoutSpec` into a ``(path, leaf) -> MatrixLayout | None``."""
    if spec is None:
        from optx._src import routing  # local import: routing builds on layouts

        router = routing.default_router()
        return router.layout
    if isinstance(spec, MatrixLayout):
        return lambda path, leaf: spec if jnp.ndim(leaf) >= 2 else None
    if hasattr(spec, "layout") and callable(spec.layout):
        return spec.layout
    if callable(spec):
        return spec
    # A pytree of layouts, matched by key path.
    flat, _ = jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_layout_leaf)
    table: dict[str, MatrixLayout | None] = {}
    for p, v in flat:
        if not _is_layout_leaf(v):
            raise TypeError(
                f"A layout tree may only hold MatrixLayout or None leaves; found "
                f"{type(v).__name__} at '{base.path_to_str(p)}'."
            )
        table[base.path_to_str(p)] = v

    def lookup(path: str, leaf: Any) -> MatrixLayout | None:
        if path not in table:
            raise ValueError(
                f"The layout tree has no entry for leaf '{path}'. Known paths: "
                f"{sorted(table)[:8]}{' ...' if len(table) > 8 else ''}"
            )
        return table[path]

    return lookup


def has_matrix_view(leaf: Any) -> bool:
    """Whether a leaf can be seen as matrices at all: it has at least one element.

    A zero-size leaf gets no layout (it passes through matrix primitives)."""
    return math.prod(jnp.shape(leaf)) > 0


def resolved_layout_fn(spec: LayoutSpec) -> Callable[[str, Any], ResolvedLayout | None]:
    """Like :func:`layout_fn_from_spec` but validated against each leaf's shape.

    Zero-size leaves resolve to None (see :func:`has_matrix_view`).
    """
    fn = layout_fn_from_spec(spec)

    def resolved(path: str, leaf: Any) -> ResolvedLayout | None:
        if not has_matrix_view(leaf):
            return None
        layout = fn(path, leaf)
        if layout is None:
            return None
        return resolve_layout(layout, jnp.shape(leaf), path)

    return resolved


def leaves_with_layouts(
    tree: Any, layout: LayoutSpec
) -> tuple[list[tuple[Any, Any]], Any, list[ResolvedLayout | None]]:
    """``tree``'s ``(path, leaf)`` pairs (``None`` leaves kept), its structure, and each
    leaf's resolved layout (``None`` for a ``None`` leaf or a leaf without a matrix view):
    what a transform that handles its matrix leaves together walks."""
    resolve = resolved_layout_fn(layout)
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=base.is_leaf_or_none)
    lays = [None if x is None else resolve(base.path_to_str(path), x) for path, x in flat]
    return flat, treedef, lays


def map_matrix_leaves(
    fn: Callable[..., Any],
    layout: LayoutSpec,
    tree: Any,
    *rest: Any,
    otherwise: Callable[..., Any] | None = None,
) -> Any:
    """Maps ``fn(leaf, resolved_layout, *rest_leaves)`` over leaves that have a layout.

    Leaves without a layout go to ``otherwise(leaf, *rest_leaves)`` (default:
    returned unchanged). ``rest`` trees must have ``tree`` as a prefix (per-leaf
    state subtrees such as NamedTuples or ``optax.MaskedNode`` are fine).
    """
    resolve = resolved_layout_fn(layout)

    def leaf_fn(path: Any, x: Any, *r: Any) -> Any:
        if x is None:
            return None
        res = resolve(base.path_to_str(path), x)
        if res is None:
            return x if otherwise is None else otherwise(x, *r)
        return fn(x, res, *r)

    return jax.tree_util.tree_map_with_path(leaf_fn, tree, *rest, is_leaf=base.is_leaf_or_none)


def init_per_matrix_state(
    init_leaf: Callable[[Any, ResolvedLayout], Any],
    layout: LayoutSpec,
    params: Any,
) -> Any:
    """Builds a per-leaf state tree: ``init_leaf(param, layout)`` or MaskedNode.

    Works on ``jax.ShapeDtypeStruct`` params (abstract init).
    """
    return map_matrix_leaves(init_leaf, layout, params, otherwise=lambda x: optax.MaskedNode())


def _stacked_layout(layout: ResolvedLayout, count: int) -> ResolvedLayout:
    """``layout`` for ``count`` such tensors stacked on a new leading axis."""
    return ResolvedLayout(
        (count, *layout.shape),
        tuple(a + 1 for a in layout.reduction_axes),
        tuple(a + 1 for a in layout.output_axes),
        (0, *(a + 1 for a in layout.batch_axes)),
    )


def _has_sharded_type(x: Any) -> bool:
    """Whether ``x``'s type names a mesh axis (Explicit sharding, any context)."""
    try:
        spec = getattr(jax.typeof(x).sharding, "spec", None)
    except Exception:
        return False
    return spec is not None and any(s is not None for s in spec)


def map_matrix_groups(
    fn: Callable[[Any, ResolvedLayout], Any], layout: LayoutSpec, tree: Any
) -> Any:
    """:func:`map_matrix_leaves` for per-matrix ``fn``, one call per group of
    same-shape leaves.

    ``fn(x, resolved_layout)`` must be shape-preserving and treat every matrix
    of ``x`` (every batch index) independently — a per-matrix statistic,
    threshold or normalization. Leaves with equal shape, dtype and resolved
    layout (the ``blocks/0/…``, ``blocks/1/…`` kernels of an unscanned model)
    are stacked on a new leading batch axis and go through ``fn`` once, so the
    traced program (and XLA's compile time) grows with the number of distinct
    shapes, not of leaves; the stack and unstack are one copy each. Leaves
    whose type carries an Explicit sharding are not stacked (``fn`` sees them
    one by one, as with :func:`map_matrix_leaves`); leaves without a layout are
    returned unchanged.
    """
    resolve = resolved_layout_fn(layout)
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=base.is_leaf_or_none)
    out = [x for _, x in flat]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (path, x) in enumerate(flat):
        if x is None:
            continue
        lay = resolve(base.path_to_str(path), x)
        if lay is None:
            continue
        if _has_sharded_type(x):
            out[i] = fn(x, lay)
            continue
        groups.setdefault((lay, jnp.dtype(x.dtype)), []).append(i)
    for (lay, _), members in groups.items():
        if len(members) == 1:
            out[members[0]] = fn(out[members[0]], lay)
            continue
        stacked = fn(jnp.stack([out[i] for i in members]), _stacked_layout(lay, len(members)))
        for j, i in enumerate(members):
            out[i] = stacked[j]
    return jax.tree_util.tree_unflatten(treedef, out)


def data_anchor(x: jax.Array) -> jax.Array:
    """An integer scalar XLA cannot fold: the bits of ``x``'s first element.

    The ``anchor`` of :func:`runtime_indices` (and ``base.materialized``) in a
    program without a step counter (a stateless transform): any value works.
    """
    first = jnp.ravel(x)[0]
    if jnp.issubdtype(first.dtype, jnp.integer):
        return first
    return jax.lax.bitcast_convert_type(first, jnp.dtype(f"int{8 * first.dtype.itemsize}"))


def runtime_indices(n: int, anchor: jax.Array) -> tuple[jax.Array, ...]:
    """``0, 1, …, n − 1`` as int32 scalars XLA cannot constant-fold.

    Computed in one ``base.materialized`` region (``anchor``: an integer array
    of the program, such as a step counter, or :func:`data_anchor`); the
    offsets of :func:`split_rows`. A slice at a static offset is a constant of
    every consumer fusion, so slicing ``k`` same-shape leaves out of a stack
    compiles ``k`` distinct kernels; at runtime offsets the consumers of
    same-shape slices are one kernel (distinct fusions on the small unscanned
    tree of ``benchmarks/compile_time.py``: SOAP 382 -> 274, COSMOS 336 -> 216,
    MKOR 318 -> 149). Same values; the cond costs one predicate per step.
    """
    return base.runtime_offsets(range(n), anchor)


def split_rows(
    x: jax.Array, sizes: Sequence[int], indices: Sequence[jax.Array] | None = None
) -> list[jax.Array]:
    """``x`` cut along axis 0 into consecutive pieces of ``sizes`` rows.

    With ``indices`` (:func:`runtime_indices` of at least ``x.shape[0]``) the
    pieces are sliced at runtime offsets. A slice at a static offset is a
    constant of every fusion that consumes it, so ``k`` same-size pieces cost
    XLA ``k`` distinct kernels to compile; at runtime offsets their consumers
    are one kernel (SOAP's, COSMOS's and MKOR's stacks, ROOT's selection rows).
    Same values.
    """
    sizes = tuple(int(s) for s in sizes)
    if sum(sizes) != x.shape[0]:
        raise ValueError(f"split_rows: sizes {sizes} do not add up to {x.shape[0]} rows.")
    if len(sizes) == 1:
        return [x]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if indices is None:
        return [x[s : s + n] for s, n in zip(starts, sizes, strict=True)]
    return [
        jax.lax.dynamic_slice_in_dim(x, indices[s], n, axis=0)
        for s, n in zip(starts, sizes, strict=True)
    ]
