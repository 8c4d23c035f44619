"""Kronecker-factored preconditioning with rank-1 inverse updates (MKOR, MKOR-H).

MKOR (arXiv 2306.01685) preconditions each Dense/Conv layer's gradient with
inverse Kronecker factors ``A⁻¹`` (inputs) and ``G⁻¹`` (output gradients)
that it never inverts: every ``update_interval`` steps they are updated by one
Sherman–Morrison step with the *batch-mean* input ``ā`` and output gradient
``ḡ`` (a rank-1 approximation of the covariances). A norm-based stabilizer
resets factors whose entries blow up, and the preconditioned gradient is
rescaled to the gradient's norm before a first-order optimizer takes the step.

Layers are the leaves a router sends to its matrix group (by default every
Dense, attention and conv kernel — including output heads, as the official code
preconditions every ``nn.Linear``; embeddings, norms and biases are not
layers). A kernel's sibling ``bias`` (same parent path) is folded in as an
extra input row, as in the official code's ``[∇W, ∇b]`` matrix.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, routing, sharding
from optx._src.capture import LayerStatistics

RESET_MODES = ("identity", "blend")
STATISTICS = ("auto", "captures", "gradients")


class MKORLayerState(NamedTuple):
    """Per-layer state of :func:`scale_by_mkor` (one entry per matrix of the layer).

    Attributes:
      a_inv: ``(B, n_a, n_a)`` inverse input factor (``n_a`` = fan-in, +1 with bias).
      g_inv: ``(B, n_g, n_g)`` inverse output-gradient factor (``n_g`` = fan-out).
      reset_a, reset_g: ``(B,)`` stabilizer flags: reset at the next refresh.
    """

    a_inv: jax.Array
    g_inv: jax.Array
    reset_a: jax.Array
    reset_g: jax.Array


class SecondOrderSwitchState(NamedTuple):
    """MKOR-H's switch (see :func:`scale_by_mkor`): scalars only.

    Attributes:
      second_order: True while MKOR preconditions (False after the switch).
      window_loss: sum of the losses seen in the current window.
      window_steps: steps in the current window.
      previous_mean: mean loss of the previous window (0 before the first).
      best_rate: largest relative loss decrease per window seen so far.
      windows: windows closed so far (int32).
      switched_at: step of the switch (-1 before).
    """

    second_order: jax.Array
    window_loss: jax.Array
    window_steps: jax.Array
    previous_mean: jax.Array
    best_rate: jax.Array
    windows: jax.Array
    switched_at: jax.Array


class ScaleByMKORState(NamedTuple):
    """State of :func:`scale_by_mkor`.

    The per-layer fields mirror the parameter tree, as optax states do: each is
    a parameter-structured tree holding the layer's array at its kernel leaf and
    ``optax.MaskedNode()`` at every other leaf (so ``optax.tree.map_params``,
    ``optax.masked``, checkpointing and ``nnx.Optimizer`` see plain per-leaf
    state).

    Attributes:
      count: steps taken (int32).
      a_inv: ``(B, n_a, n_a)`` inverse input factors (``n_a`` = fan-in, +1 with bias).
      g_inv: ``(B, n_g, n_g)`` inverse output-gradient factors (``n_g`` = fan-out).
      reset_a, reset_g: ``(B,)`` stabilizer flags: reset at the next refresh.
      switch: MKOR-H's switch state.
    """

    count: jax.Array
    a_inv: Any
    g_inv: Any
    reset_a: Any
    reset_g: Any
    switch: SecondOrderSwitchState


def _layer_states(state: ScaleByMKORState) -> dict[str, MKORLayerState]:
    """``kernel path -> MKORLayerState`` from the parameter-structured fields."""
    columns = [
        dict(base.flatten_with_paths(t)[0])
        for t in (state.a_inv, state.g_inv, state.reset_a, state.reset_g)
    ]
    return {p: MKORLayerState(*(c[p] for c in columns)) for p in columns[0]}


def _with_layer_states(
    state: ScaleByMKORState, layers: dict[str, MKORLayerState]
) -> ScaleByMKORState:
    """``state`` with its per-layer fields replaced from ``layers`` (same keys)."""

    def field(i: int) -> Any:
        return base.tree_map_with_path_str(lambda p, _: layers[p][i], state[1 + i])

    return state._replace(a_inv=field(0), g_inv=field(1), reset_a=field(2), reset_g=field(3))


def mkor_router() -> routing.Router:
    """The default MKOR layers: :func:`optx.default_rules` without the head rule.

    The official code preconditions every ``nn.Linear``/``nn.Conv2d``, output
    layers included, and no embedding; so heads (``head``, ``lm_head``,
    ``classifier``) are layers here, embeddings/norms/biases are not.
    """
    return routing.Router([r for r in routing.default_rules() if r.name != "head"])


class _Layer(NamedTuple):
    path: str
    layout: layouts.ResolvedLayout
    bias: str | None


def _plan(tree: Any, router: routing.Router) -> dict[str, _Layer]:
    """The MKOR layers of ``tree``: kernel path -> (layout, sibling bias path)."""
    flat, _ = base.flatten_with_paths(tree)
    leaves = dict(flat)
    plan = {}
    for path, leaf in flat:
        if not layouts.has_matrix_view(leaf):  # zero-size leaves pass through
            continue
        layout = router.layout(path, leaf)
        if layout is None:
            continue
        lay = layouts.resolve_layout(layout, jnp.shape(leaf), path)
        bias = None
        parent, _, name = path.rpartition("/")
        candidate = f"{parent}/bias" if parent else "bias"
        if name == "kernel" and candidate in leaves:
            expected = tuple(lay.shape[a] for a in lay.batch_axes + lay.output_axes)
            ordered = not lay.batch_axes or max(lay.batch_axes) < min(lay.output_axes)
            if ordered and tuple(jnp.shape(leaves[candidate])) == expected:
                bias = candidate
        plan[path] = _Layer(path, lay, bias)
    return plan


def _on_mesh(*trees: Any) -> bool:
    return any(sharding.spec_of(x) is not None for x in jax.tree.leaves(trees))


def _signature(tree: Any) -> Any:
    return jax.tree.structure(tree), tuple(
        (jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)
    )


class _MatrixGroup(NamedTuple):
    """Layers whose ``(fan_in, fan_out)`` matrices are processed as one stack.

    ``layer`` is the stack's view: a ``(ΣB, fan_in, fan_out)`` layout whose
    matrices are the members' :func:`layouts.to_matrices` concatenated in
    ``members`` order (``sizes`` = each member's ``B``).
    """

    members: tuple[str, ...]
    sizes: tuple[int, ...]
    layer: _Layer


def _matrix_groups(
    plan: dict[str, _Layer], paths: list[str], leaves: dict[str, Any], extra: Any
) -> list[_MatrixGroup]:
    """Layers of ``paths`` grouped by matrix shape, bias presence and dtypes.

    The ``blocks/0/…``, ``blocks/1/…`` kernels of an unscanned model, and the
    attention projections whatever their layout, share one program per
    distinct ``(fan_in, fan_out)`` (every matrix still treated on its own), so
    the traced program and XLA's compile time grow with the number of distinct
    matrix shapes, not of layers. ``extra(path)`` adds per-layer trees whose
    per-matrix shapes and dtypes must also agree (factors, captures).
    """
    groups: dict[Any, list[str]] = {}
    for path in paths:
        layer = plan[path]
        _, fan_in, fan_out = layer.layout.matrix_shape
        bias = leaves.get(layer.bias)
        more = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[-1:], x.dtype), extra(path))
        key = (fan_in, fan_out, jnp.result_type(leaves[path]), _signature(bias), _signature(more))
        groups.setdefault(key, []).append(path)
    out = []
    for members in groups.values():
        first = plan[members[0]]
        sizes = tuple(plan[p].layout.batch_size for p in members)
        _, fan_in, fan_out = first.layout.matrix_shape
        view = layouts.ResolvedLayout((sum(sizes), fan_in, fan_out), (1,), (2,), (0,))
        out.append(_MatrixGroup(tuple(members), sizes, _Layer(members[0], view, first.bias)))
    return out


def _concat(trees: list[Any]) -> Any:
    """Concatenates same-structure trees along axis 0 (one tree: itself)."""
    if len(trees) == 1:
        return trees[0]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


def _split(tree: Any, sizes: tuple[int, ...], indices: Any = None) -> list[Any]:
    """Inverse of :func:`_concat` for members of ``sizes`` rows.

    With ``indices`` (:func:`layouts.runtime_indices`) the members are sliced
    at runtime offsets, so the consumers of same-size members (the per-layer
    updates, factors and flags) compile as one kernel, not one per layer.
    """
    if len(sizes) == 1:
        return [tree]
    leaves, treedef = jax.tree.flatten(tree)
    parts = [layouts.split_rows(x, sizes, indices) for x in leaves]
    return [treedef.unflatten([p[j] for p in parts]) for j in range(len(sizes))]


# ----------------------------------------------------------------------------
# Rank-1 statistics from the gradient (when no capture is available)
# ----------------------------------------------------------------------------


def _leading_pair(mat: jax.Array, iters: int = 8) -> tuple[jax.Array, jax.Array]:
    """Balanced leading singular pair ``(√σ u, √σ v)`` of ``mat (m, n)`` by power iteration."""
    v = jnp.ones(mat.shape[1], mat.dtype) / jnp.sqrt(mat.shape[1])
    v = mat.T @ (mat @ v) + v * 1e-30

    def body(_: int, v: jax.Array) -> jax.Array:
        v = v / jnp.maximum(jnp.linalg.norm(v), 1e-30)
        return mat.T @ (mat @ v)

    v = base.fori_loop(0, iters, body, v)
    v = v / jnp.maximum(jnp.linalg.norm(v), 1e-30)
    mv = mat @ v
    sigma = jnp.linalg.norm(mv)
    u = mv / jnp.maximum(sigma, 1e-30)
    root = jnp.sqrt(sigma)
    return root * u, root * v


def statistics_from_gradient(
    kernel_grad: jax.Array, bias_grad: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """Rank-1 ``(ā, ḡ)`` of one ``(fan_in, fan_out)`` gradient matrix (f32).

    MKOR's own approximation is ``∇W ≈ ā ḡᵀ`` (for a Dense layer
    ``∇W = Σ_rows a_r δ_rᵀ``, ``ḡ = Σ_rows δ_r``). With a bias,
    ``ḡ = ∇b`` exactly and ``ā = ∇W ∇b / ‖∇b‖²`` (least squares); without one
    the split of the leading singular value is ambiguous and the balanced pair
    ``(√σ u, √σ v)`` is used.
    """
    cdt = jnp.result_type(jnp.float32, kernel_grad)
    k = kernel_grad.astype(cdt)
    if bias_grad is not None:
        g = bias_grad.astype(cdt)
        a = (k @ g) / jnp.maximum(jnp.sum(g * g), 1e-30)
        return a, g
    return _leading_pair(k)


def mkor_statistics_from_gradients(
    grads: Any, router: routing.Router | None = None
) -> dict[str, LayerStatistics]:
    """MKOR captures derived from gradients only (see :func:`statistics_from_gradient`).

    The fallback used when a layer has no capture (plain loss functions,
    layers inside ``nnx.scan``); keyed like :func:`optx.curvature.value_grad_and_captures`.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> g = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}
      >>> optx.curvature.mkor_statistics_from_gradients(g)['dense/kernel'].inputs
      Array([1., 1., 1.], dtype=float32)
    """
    router = mkor_router() if router is None else routing.as_router(router)
    plan = _plan(grads, router)
    leaves = dict(base.flatten_with_paths(grads)[0])
    out = {}
    for path, layer in plan.items():
        a, g = _layer_gradient_statistics(layer, leaves[path], leaves.get(layer.bias))
        bshape = layer.layout.batch_shape
        out[path] = LayerStatistics(a.reshape(*bshape, -1), g.reshape(*bshape, -1))
    return out


def _layer_gradient_statistics(layer: _Layer, kernel: jax.Array, bias: jax.Array | None):
    lay = layer.layout
    mats = layouts.to_matrices(kernel, lay)
    if bias is None:
        return jax.vmap(lambda m: statistics_from_gradient(m, None))(mats)
    b = bias.reshape(lay.batch_size, lay.fan_out)
    return jax.vmap(statistics_from_gradient)(mats, b)


# ----------------------------------------------------------------------------
# Factor updates and preconditioning
# ----------------------------------------------------------------------------


def sherman_morrison_update(
    inverse: jax.Array, v: jax.Array, decay: Any, dtype: base.DTypeLike | None = None
) -> jax.Array:
    """``(P⁻¹ + v vᵀ)⁻¹`` with ``P = decay · F⁻¹ + (1 − decay) I``.

    MKOR's released factor update (``sm_inverse(0.95·F + 0.05·I, v)``):
    ``F⁻¹ ← P − (P v)(vᵀ P) / (1 + vᵀ P v)``, computed in ``dtype`` (default
    ``promote(inverse, v, float32)``). A half-precision ``dtype`` follows
    PyTorch's fp16 semantics, as the official ``half_precision=True`` code
    runs: every operation is evaluated in float32 and rounded to ``dtype``
    (``v`` is rounded first), in the official order of operations.
    """
    cdt = jnp.result_type(jnp.float32, inverse, v) if dtype is None else jnp.dtype(dtype)
    n = inverse.shape[-1]
    if jnp.finfo(cdt).bits >= 32:
        f, v = inverse.astype(cdt), v.astype(cdt)
        d = jnp.asarray(decay).astype(cdt)
        p = d * f + (1.0 - d) * jnp.eye(n, dtype=cdt)
        pv, vp = p @ v, v @ p
        return p - jnp.outer(pv, vp) / (1.0 + v @ pv)

    def r(x: jax.Array) -> jax.Array:  # one fp16 operation: f32 math, then rounding
        return x.astype(cdt).astype(jnp.float32)

    f, v = r(inverse.astype(jnp.float32)), r(v.astype(jnp.float32))
    d = jnp.asarray(decay, jnp.float32)
    eye = jnp.eye(n, dtype=jnp.float32)
    p = r(r(d * f) + r((1.0 - d) * eye))
    pv, vp = r(p @ v), r(v @ p)
    coef = r(1.0 / r(1.0 + r(vp @ v)))
    return r(p - r(jnp.outer(r(coef * pv), vp))).astype(cdt)


def _refresh_factor(
    f: jax.Array,
    flag: jax.Array,
    v: jax.Array,
    *,
    decay: Any,
    reset_mode: str,
    stabilization: Any,
    threshold: Any,
    dtype: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """One factor's refresh: reset (``flag``) or Sherman–Morrison, and its blow-up flag."""

    def reset(f: jax.Array) -> jax.Array:
        cdt = jnp.result_type(jnp.float32, f) if dtype is None else jnp.dtype(dtype)
        eye = jnp.eye(f.shape[-1], dtype=cdt)
        if reset_mode == "identity":
            return eye
        zeta = jnp.asarray(stabilization, jnp.promote_types(cdt, jnp.float32))
        return ((1.0 - zeta) * f.astype(zeta.dtype) + zeta * eye).astype(cdt)

    new = jnp.where(flag, reset(f), sherman_morrison_update(f, v, decay, dtype)).astype(f.dtype)
    blew_up = jnp.logical_not(flag) & (jnp.max(jnp.abs(new)) > threshold)
    return new, blew_up


def _refresh_matrix(
    a_inv: jax.Array,
    g_inv: jax.Array,
    reset_a: jax.Array,
    reset_g: jax.Array,
    a: jax.Array,
    g: jax.Array,
    **kw: Any,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One refresh of one layer matrix, in the released code's order (A, then G)."""
    a_new, blew_a = _refresh_factor(a_inv, reset_a, a, **kw)
    # A blow-up flags both factors: G is reset (not updated) at this same refresh.
    reset_g = reset_g | blew_a
    g_new, blew_g = _refresh_factor(g_inv, reset_g, g, **kw)
    return a_new, g_new, blew_a | blew_g, blew_g


def _precondition(
    kernel: jax.Array,
    bias: jax.Array | None,
    st: MKORLayerState,
    lay: layouts.ResolvedLayout,
) -> tuple[jax.Array, jax.Array | None]:
    """``G⁻¹ [∇W, ∇b] A⁻¹`` (PyTorch view), rescaled to the gradient's norm."""
    cdt = jnp.result_type(jnp.float32, kernel, st.a_inv)
    k = layouts.to_matrices(kernel, lay).astype(cdt)  # (B, fan_in, fan_out)
    parts = [k]
    if bias is not None:
        parts.append(bias.reshape(lay.batch_size, 1, lay.fan_out).astype(cdt))
    mat = jnp.concatenate(parts, axis=1) if bias is not None else k
    a = jnp.swapaxes(st.a_inv.astype(cdt), -1, -2)
    g = jnp.swapaxes(st.g_inv.astype(cdt), -1, -2)
    pre = a @ mat @ g  # Flax view of G⁻¹ M_torch A⁻¹ (transposed)

    def norms(x: jax.Array) -> jax.Array:
        n = jnp.linalg.norm(x[:, : lay.fan_in, :], axis=(1, 2))
        if bias is not None:
            n = n + jnp.linalg.norm(x[:, lay.fan_in, :], axis=-1)
        return n

    grad_norm, pre_norm = norms(mat), norms(pre)
    fix = grad_norm / jnp.where(pre_norm > 0, pre_norm, 1.0)
    ok = (pre_norm > 0) & jnp.isfinite(fix)
    out = jnp.where(ok[:, None, None], pre * fix[:, None, None], mat)
    new_kernel = layouts.from_matrices(out[:, : lay.fan_in, :], lay).astype(kernel.dtype)
    new_bias = None
    if bias is not None:
        new_bias = out[:, lay.fan_in, :].reshape(bias.shape).astype(bias.dtype)
    return new_kernel, new_bias


def _factor_spec(n: int, like: Any) -> Any:
    """Spec of a ``(B, n, n)`` factor for a layer whose kernel is ``like``.

    On an Explicit mesh the factor's rows are sharded over all the mesh's
    Explicit axes together, else over the largest single axis that divides
    ``n`` (replicated when none does): a vocabulary head's ``G⁻¹`` is
    ``vocab²`` entries, far larger than the head itself, so no device holds
    it whole. ``None`` (no placement) off such a mesh.
    """
    axes = sharding.explicit_axes(like)
    if not axes:
        return None
    mesh = sharding.mesh_of(like)
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    candidates = [axes, *sorted(((a,) for a in axes), key=lambda c: -sizes[c[0]])]
    for c in candidates:
        if n % math.prod(sizes[a] for a in c) == 0:
            return jax.sharding.PartitionSpec(None, c if len(c) > 1 else c[0], None)
    return jax.sharding.PartitionSpec()


def _sharded_call(fn: Any, args: tuple[Any, ...], outs_like: Any) -> Any:
    """``fn(*args)``; under an Explicit mesh with sharded inputs, via ``auto_axes``.

    Outputs get the shardings of ``outs_like`` (a tree of arrays, or None for
    replicated outputs), so matrix math over sharded contracting dimensions
    compiles and the results keep a fixed sharding.
    """
    out_specs = None if outs_like is None else jax.tree.map(sharding.spec_of, outs_like)
    return sharding.call_with_out_specs(fn, args, out_specs)


@hyperparams.validated()
def scale_by_mkor(
    update_interval: int | None = None,
    *,
    factor_decay: float = 0.95,
    stabilization_factor: float = 0.1,
    reset_mode: str = "identity",
    reset_threshold: float = 2.0,
    clip_value: float = 100.0,
    warmup_steps: int | None = None,
    statistics: str = "auto",
    factor_dtype: base.DTypeLike | None = "float16",
    factor_compute_dtype: base.DTypeLike | None = None,
    router: routing.Router | None = None,
    hybrid: bool = False,
    switch_window: int | None = None,
    switch_threshold: float = 0.1,
    switch_min_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """MKOR's preconditioner: rank-1 Sherman–Morrison inverse Kronecker factors.

    Per layer (a routed kernel, with its sibling bias folded in as the last
    input row; PyTorch view ``M = [∇W, ∇b]`` of shape ``(out, in+1)``):

    .. math::

      \\text{every } \\texttt{inv\\_freq} \\text{ steps:}\\quad
      A^{-1} \\leftarrow \\mathrm{SM}\\big(γ A^{-1} + (1-γ) I,\\ \\bar a\\big),\\quad
      G^{-1} \\leftarrow \\mathrm{SM}\\big(γ G^{-1} + (1-γ) I,\\ \\bar g\\big),

      \\mathrm{SM}(P, v) = P - \\frac{P v\\, v^\\top P}{1 + v^\\top P v}
      = (P^{-1} + v v^\\top)^{-1},

      \\text{every step:}\\quad Δ = G^{-1} M A^{-1}, \\qquad
      Δ \\leftarrow Δ\\, \\frac{\\|∇W\\| + \\|∇b\\|}{\\|Δ_W\\| + \\|Δ_b\\|}

    (arXiv 2306.01685, Algorithm 1 and §3.2–3.4; released package
    ``mkor/mkor.py``, commit 3a0e3bb2). ``ā`` is the batch-mean layer input
    with a trailing 1 for the bias, ``ḡ`` the batch-mean output gradient times
    the number of rows (:func:`optx.curvature.value_grad_and_captures`). Factors start at
    ``I``. **Norm-based stabilizer:** after an SM update, if ``max|F⁻¹| > 2``
    both factors of the layer are flagged and reset at the next refresh
    (``reset_mode='identity'``: to ``I``, what the released code does — its
    blend branch is unreachable, see below; ``'blend'``: ``(1−ζ)F⁻¹ + ζI``, the
    intended path, ζ = ``stabilization_factor``). A refresh that resets a factor
    skips that factor's SM update; a blow-up of ``A⁻¹`` resets ``G⁻¹`` in the
    same refresh (the released code's order). Flags start set, so the first
    refresh (step 0) only resets to ``I``. If ``Δ`` is zero the raw gradient is
    kept. Chain a first-order optimizer after this transform (:func:`optx.mkor`).

    **Statistics.** The ``captures`` extra argument maps kernel paths to
    :class:`optx.curvature.LayerStatistics`. ``statistics='auto'`` uses captures where
    given and, for other layers (or without ``captures``), rank-1 statistics
    derived from the layer's gradient (:func:`optx.curvature.statistics_from_gradient`:
    ``ḡ = ∇b``, ``ā = ∇W∇b/‖∇b‖²`` with a bias, the balanced leading singular
    pair without) — an approximation for plain loss functions and layers the
    capture cannot see (``nnx.scan``). ``'captures'`` requires a capture for
    every layer; ``'gradients'`` ignores captures.

    **Sharding.** On an Explicit mesh the factors' rows are sharded over
    the mesh (all its axes together where they divide the factor size, else
    the largest axis that does; replicated otherwise): a language-model
    head's ``G⁻¹`` is ``vocab²`` entries, so with replicated factors it alone
    would outweigh the sharded parameters (GPT-2 small: 5 GB in fp16).

    **MKOR-H** (``hybrid=True``; the paper's hybrid, not in the released code,
    so this rule is optx's specification of "switch to the first-order optimizer
    once second-order updates stop reducing the loss faster"): every
    ``switch_window`` steps the mean of the ``loss`` extra argument over the
    window gives the relative decrease rate
    ``r_k = (L̄_{k−1} − L̄_k)/|L̄_{k−1}|``; the best rate so far is ``r*``; once
    ``r_k < switch_threshold · r*`` (with ``r* > 0`` and at least
    ``switch_min_steps`` steps) MKOR stops preconditioning for good and the
    inner optimizer continues on raw gradients (its state carries over). The
    switch state is in ``state.switch``.

    Official-code quirks, and what optx does:

    * The factor update hard-codes γ = 0.95 (``stat_decay`` is unused):
      ``factor_decay`` defaults to 0.95.
    * ``_reset_factors`` tests ``module not in factor_dict`` on a list of
      tensors, which is always true: resets always go to ``I``
      (``reset_mode='identity'``).
    * Factors, ``ā`` and ``ḡ`` are stored in fp16 (``half_precision=True``,
      the official default) and the SM update and resets run in fp16
      (``mkor/mkor.py`` ``_invert_factor``/``sm_inverse``, every operation
      rounded to fp16); the preconditioning ``G⁻¹ M A⁻¹`` casts the factors
      to f32. optx does the same by default: factors are stored in
      ``factor_dtype`` (fp16) and updated in ``factor_compute_dtype``
      (default: ``factor_dtype``); ``factor_compute_dtype=jnp.float32``
      computes the update in f32 and only stores fp16 (more accurate, not the
      official numbers); ``factor_dtype=jnp.float32`` is the official
      ``half_precision=False``. The preconditioning runs in the gradient's
      compute dtype (f32, f64 for f64 parameters).
    * Inputs and output gradients are clamped to ±100 per sample before the
      batch mean (``clip_value`` in the capture; the means are clamped again
      here). **Deviation** with fp16 factors: the official code rounds each
      sample's clamped statistic to fp16 and averages in fp16
      (``_save_input``/``_save_grad_output``, ``low_rank_approx``); optx's
      captures are method-agnostic and average in float32, and only the mean
      is rounded to fp16 when stored. Measured against the official code on a
      small conv net (update interval 2): 1.1e-4 of the weight change at the
      first factor update, 1.8e-3 after 11 steps; with the official code
      patched to round only the mean, 1e-6–1e-5.
    * While ``step < warmup_steps`` the factors are refreshed every step.
    * Gradient-accumulation and loss-scaling arguments are not needed: use
      :func:`optx.accumulate_gradients` (captures of the last micro-batch are
      used).

    Args:
      update_interval: refresh period of the factors (the official ``inv_freq``;
        static; None = 10).
      factor_decay: γ of ``P = γF⁻¹ + (1−γ)I`` (official 0.95).
      stabilization_factor: ζ of ``reset_mode='blend'`` (official 0.1).
      reset_mode: ``'identity'`` (released behaviour) or ``'blend'``.
      reset_threshold: blow-up threshold on ``max|F⁻¹|`` (official 2).
      clip_value: clamp of the batch-mean statistics ``ā`` (with its bias input 1, which
        becomes ``min(1, clip_value)`` as in the official code) and ``ḡ`` (official
        100). The official per-sample clamp is the capture's: pass the same value to
        :func:`optx.curvature.value_grad_and_captures` (``clip_value=``).
      warmup_steps: refresh every step before this step (static; None = 0,
        official).
      statistics: ``'auto'``, ``'captures'`` or ``'gradients'``.
      factor_dtype: storage dtype of the factors (official fp16).
      factor_compute_dtype: dtype of the Sherman–Morrison update and the
        resets (static; ``None``: ``factor_dtype``, as the official code).
      router: which leaves are layers (default :func:`optx.curvature.mkor_router`).
      hybrid: MKOR-H switching (needs the ``loss`` extra argument).
      switch_window: steps per loss window (static; None = 100).
      switch_threshold: switch when the window's rate falls below this
        fraction of the best rate.
      switch_min_steps: never switch before this step (static; None = 0).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(2)}}
      >>> tx = optax.chain(optx.scale_by_mkor(update_interval=1), optax.sgd(0.1))
      >>> u, s = tx.update(params, tx.init(params), params)
    """
    k = 10 if update_interval is None else update_interval
    warmup_steps = 0 if warmup_steps is None else warmup_steps
    window = 100 if switch_window is None else switch_window
    switch_min_steps = 0 if switch_min_steps is None else switch_min_steps
    factor_dtype = base.canonicalize_dtype("float16" if factor_dtype is None else factor_dtype)
    if not jnp.issubdtype(factor_dtype, jnp.floating):
        raise TypeError(f"`factor_dtype` must be a floating dtype, got {factor_dtype}.")
    update_dtype = base.canonicalize_dtype(factor_compute_dtype) or factor_dtype
    if not jnp.issubdtype(update_dtype, jnp.floating):
        raise TypeError(f"`factor_compute_dtype` must be a floating dtype, got {update_dtype}.")
    router = mkor_router() if router is None else routing.as_router(router)

    def init_fn(params: base.Params) -> ScaleByMKORState:
        base.check_real_params(params, "optx.scale_by_mkor")  # real-only math (docstring)
        plan = _plan(params, router)
        leaves = dict(base.flatten_with_paths(params)[0])

        def layer_state(layer: _Layer) -> MKORLayerState:
            lay = layer.layout
            na = lay.fan_in + (1 if layer.bias is not None else 0)

            def eye(n: int) -> jax.Array:
                return jnp.broadcast_to(jnp.eye(n, dtype=factor_dtype), (lay.batch_size, n, n))

            like = leaves[layer.path]

            def flags() -> jax.Array:  # one buffer per field: a donated state must not alias
                return jnp.ones((lay.batch_size,), jnp.bool_)

            # On the params' mesh (typed as under jax.set_mesh): factor rows
            # sharded (see _factor_spec), flags replicated.
            return MKORLayerState(
                a_inv=sharding.put_like(eye(na), like, _factor_spec(na, like)),
                g_inv=sharding.put_like(eye(lay.fan_out), like, _factor_spec(lay.fan_out, like)),
                reset_a=sharding.put_like(flags(), like),
                reset_g=sharding.put_like(flags(), like),
            )

        layers = {p: layer_state(plan[p]) for p in plan}

        def field(i: int) -> Any:
            return base.tree_map_with_path_str(
                lambda p, _: layers[p][i] if p in layers else optax.MaskedNode(), params
            )

        return ScaleByMKORState(
            count=jnp.zeros([], jnp.int32),
            a_inv=field(0),
            g_inv=field(1),
            reset_a=field(2),
            reset_g=field(3),
            switch=SecondOrderSwitchState(
                second_order=jnp.ones([], jnp.bool_),
                # Loss statistics in the widest enabled float (f64 under x64).
                window_loss=jnp.zeros([], base.scalar_dtype()),
                window_steps=jnp.zeros([], jnp.int32),
                previous_mean=jnp.zeros([], base.scalar_dtype()),
                best_rate=jnp.zeros([], base.scalar_dtype()),
                windows=jnp.zeros([], jnp.int32),
                switched_at=jnp.full([], -1, jnp.int32),
            ),
        )

    def check_capture(layer: _Layer, cap: LayerStatistics) -> None:
        lay = layer.layout
        want_a, want_g = (*lay.batch_shape, lay.fan_in), (*lay.batch_shape, lay.fan_out)
        if jnp.shape(cap.inputs) != want_a or jnp.shape(cap.output_grads) != want_g:
            raise ValueError(
                f"Capture of layer '{layer.path}' has shapes {jnp.shape(cap.inputs)}, "
                f"{jnp.shape(cap.output_grads)}; expected {want_a} and {want_g} from the "
                f"router's layout of the kernel (reduction axes {lay.reduction_axes}, output axes "
                f"{lay.output_axes}). A kernel routed by its "
                "name with another layout than the layer's (e.g. a conv named like a dense "
                "layer) needs the model's router: router=optx.router_for(model, x); "
                "optx.describe shows each leaf's layout."
            )

    def capture_of(captures: Any, path: str) -> Any:
        return None if captures is None or statistics == "gradients" else captures.get(path)

    def layer_vectors(layer: _Layer, kernel: Any, bias: Any, captures: Any, clip: Any):
        """Clipped (ā, ḡ) of every matrix of a layer: ``(B, n_a)``, ``(B, n_g)``."""
        lay = layer.layout
        cap = None if captures is None or statistics == "gradients" else captures.get(layer.path)
        if cap is None:
            if statistics == "captures":
                raise ValueError(
                    f"statistics='captures' but there is no capture for layer '{layer.path}' "
                    f"(captured: {sorted(captures or {})[:6]})."
                )
            a, g = _layer_gradient_statistics(layer, kernel, bias)
        else:
            check_capture(layer, cap)
            cdt = jnp.result_type(jnp.float32, cap.inputs, cap.output_grads)
            a = jnp.asarray(cap.inputs, cdt).reshape(lay.batch_size, lay.fan_in)
            g = jnp.asarray(cap.output_grads, cdt).reshape(lay.batch_size, lay.fan_out)
        if layer.bias is not None:
            # The official handler appends the bias input, then clamps: the ones become
            # ``min(1, clip_value)``.
            a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
        return jnp.clip(a, -clip, clip), jnp.clip(g, -clip, clip)

    def refresh(plan, leaves, layer_states, captures, due, ix):
        """``layer_states`` refreshed where ``due``, else unchanged (one ``lax.cond``).

        Unsharded layers' factors leave the cond stacked, one array per factor
        group (see ``refresh_local``), and are split per layer after it: split
        inside, XLA would fuse the whole Sherman–Morrison chain into every
        layer's slice (one copy of the program per layer).
        """
        # Numeric hyper-parameters travel as arguments (they may be tracers under
        # inject_hyperparams, which auto_axes must not close over).
        hp = tuple(
            jnp.asarray(x)
            for x in (factor_decay, stabilization_factor, reset_threshold, clip_value)
        )
        sharded, local = [], []
        for path, layer in plan.items():
            cap = capture_of(captures, path)
            on = _on_mesh(leaves[path], leaves.get(layer.bias), layer_states[path], cap)
            (sharded if on else local).append(path)

        def vec_dtype(path: str) -> Any:
            cap = capture_of(captures, path)
            if cap is None:
                return jnp.result_type(jnp.float32, leaves[path])
            return jnp.result_type(jnp.float32, cap.inputs, cap.output_grads)

        def groups_of(field: int) -> list[tuple[str, ...]]:
            out: dict[Any, list[str]] = {}
            for p in local:
                f = layer_states[p][field]
                out.setdefault((f.shape[1:], f.dtype, vec_dtype(p)), []).append(p)
            return [tuple(m) for m in out.values()]

        a_groups, g_groups = groups_of(0), groups_of(1)

        def fresh(states):
            new = {p: refresh_sharded(plan[p], leaves, states[p], captures, hp) for p in sharded}
            return new, *refresh_local(
                plan, local, a_groups, g_groups, leaves, states, captures, hp, ix
            )

        def keep(states):
            a = [_concat([states[p].a_inv for p in m]) for m in a_groups]
            g = [_concat([states[p].g_inv for p in m]) for m in g_groups]
            flags = {p: (states[p].reset_a, states[p].reset_g) for p in local}
            return {p: states[p] for p in sharded}, a, g, flags

        new, a_st, g_st, flags = base.cond(due, fresh, keep, layer_states)
        a_inv, g_inv = {}, {}
        for groups, stacks, out in ((a_groups, a_st, a_inv), (g_groups, g_st, g_inv)):
            for members, stack in zip(groups, stacks):
                sizes = tuple(layer_states[p][0].shape[0] for p in members)
                out.update(zip(members, _split(stack, sizes, ix)))
        new.update({p: MKORLayerState(a_inv[p], g_inv[p], *flags[p]) for p in local})
        return new

    def refresh_sharded(layer, leaves, st, captures, hp):
        """One layer on an Explicit mesh: its own program, under ``auto_axes``."""
        path = layer.path

        def fn(kernel, bias, st, caps, hp):
            decay, stabilization, threshold, clip = hp
            a, g = layer_vectors(layer, kernel, bias, caps, clip)
            kw = refresh_kwargs(decay, stabilization, threshold)
            out = jax.vmap(functools.partial(_refresh_matrix, **kw))(*st, a, g)
            return MKORLayerState(*out)

        cap = capture_of(captures, path)
        caps = None if cap is None else {path: cap}
        args = (leaves[path], leaves.get(layer.bias), st, caps, hp)
        return _sharded_call(fn, args, st)  # the state keeps its sharding

    def refresh_kwargs(decay: Any, stabilization: Any, threshold: Any) -> dict[str, Any]:
        return dict(
            decay=decay,
            reset_mode=reset_mode,
            stabilization=stabilization,
            threshold=threshold,
            dtype=update_dtype,
        )

    def stacked_matrices(plan, grp, leaves):
        """The group's kernels as one ``(ΣB, fan_in, fan_out)`` stack, and bias rows."""
        m = grp.members
        kernel = _concat([layouts.to_matrices(leaves[p], plan[p].layout) for p in m])
        if grp.layer.bias is None:
            return kernel, None
        return kernel, _concat(
            [jnp.reshape(leaves[plan[p].bias], (b, -1)) for p, b in zip(m, grp.sizes)]
        )

    def refresh_local(plan, paths, a_groups, g_groups, leaves, layer_states, captures, hp, ix):
        """Unsharded layers: statistics per distinct matrix shape, then each factor
        group's Sherman–Morrison updates in one program (A first, then G).

        Returns the new factors stacked per group and ``{path: (reset_a, reset_g)}``.
        """
        decay, stabilization, threshold, clip = hp
        vecs = {}
        for grp in _matrix_groups(plan, paths, leaves, lambda p: capture_of(captures, p)):
            kernel, bias = stacked_matrices(plan, grp, leaves)
            caps = [capture_of(captures, p) for p in grp.members]
            cap = None
            if caps[0] is not None:
                rows = [
                    (jnp.reshape(c.inputs, (b, -1)), jnp.reshape(c.output_grads, (b, -1)))
                    for c, b in zip(caps, grp.sizes)
                ]
                cap = {grp.layer.path: LayerStatistics(*_concat(rows))}
            a, g = layer_vectors(grp.layer, kernel, bias, cap, clip)
            vecs.update(zip(grp.members, _split((a, g), grp.sizes, ix)))
        kw = refresh_kwargs(decay, stabilization, threshold)
        st = layer_states
        a_new, blew_a = refresh_factors(
            a_groups, lambda p: (st[p].a_inv, st[p].reset_a, vecs[p][0]), kw, ix
        )
        # A blow-up flags both factors: G is reset (not updated) at this same refresh.
        g_new, blew_g = refresh_factors(
            g_groups, lambda p: (st[p].g_inv, st[p].reset_g | blew_a[p], vecs[p][1]), kw, ix
        )
        return a_new, g_new, {p: (blew_a[p] | blew_g[p], blew_g[p]) for p in paths}

    def refresh_factors(groups, inputs, kw, ix):
        """``_refresh_factor`` of every layer's (factor, flag, vector), one vmap per
        group; the new factors stay stacked per group."""
        stacks, blew = [], {}
        for members in groups:
            sizes = tuple(jnp.shape(inputs(p)[0])[0] for p in members)
            f, b = jax.vmap(functools.partial(_refresh_factor, **kw))(
                *_concat([inputs(p) for p in members])
            )
            stacks.append(f)
            blew.update(zip(members, _split(b, sizes, ix)))
        return stacks, blew

    def precondition(plan, leaves, layer_states, ix):
        out, local = {}, []
        for path, layer in plan.items():
            kernel, bias = leaves[path], leaves.get(layer.bias)
            if not _on_mesh(kernel, bias, layer_states[path]):
                local.append(path)
                continue

            def fn(kernel, bias, st, layer=layer):  # one sharded layer
                new_k, new_b = _precondition(kernel, bias, st, layer.layout)
                return (new_k,) if new_b is None else (new_k, new_b)

            like = (kernel,) if bias is None else (kernel, bias)
            outs = _sharded_call(fn, (kernel, bias, layer_states[path]), like)
            out[path] = outs[0]
            if layer.bias is not None:
                out[layer.bias] = outs[1]
        groups = _matrix_groups(
            plan, local, leaves, lambda p: (layer_states[p].a_inv, layer_states[p].g_inv)
        )
        for grp in groups:  # unsharded layers: one program per distinct matrix shape
            kernel, bias = stacked_matrices(plan, grp, leaves)
            st = _concat([layer_states[p] for p in grp.members])
            new = _precondition(kernel, bias, st, grp.layer.layout)
            for p, (k, b) in zip(grp.members, _split(new, grp.sizes, ix)):
                lay = plan[p].layout
                out[p] = layouts.from_matrices(k, lay).astype(leaves[p].dtype)
                if b is not None:
                    bp = plan[p].bias
                    out[bp] = jnp.reshape(b, jnp.shape(leaves[bp])).astype(leaves[bp].dtype)
        return out

    def switch_update(sw: SecondOrderSwitchState, loss: Any, count: jax.Array):
        loss = jnp.asarray(loss, sw.window_loss.dtype)
        total = sw.window_loss + loss
        steps = sw.window_steps + 1
        closing = steps >= window
        mean = total / steps.astype(total.dtype)
        prev = sw.previous_mean
        have_prev = sw.windows > 0
        rate = jnp.where(have_prev, (prev - mean) / jnp.maximum(jnp.abs(prev), 1e-12), 0.0)
        best = jnp.where(closing & have_prev, jnp.maximum(sw.best_rate, rate), sw.best_rate)
        trigger = (
            closing
            & have_prev
            & (sw.best_rate > 0)
            & (count >= switch_min_steps)
            & (rate < switch_threshold * sw.best_rate)
        )
        second_order = sw.second_order & jnp.logical_not(trigger)
        return SecondOrderSwitchState(
            second_order=second_order,
            window_loss=jnp.where(closing, 0.0, total),
            window_steps=jnp.where(closing, 0, steps).astype(jnp.int32),
            previous_mean=jnp.where(closing, mean, prev),
            best_rate=best,
            windows=sw.windows + closing.astype(jnp.int32),
            switched_at=jnp.where(sw.second_order & trigger, count, sw.switched_at),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByMKORState,
        params: base.Params | None = None,
        *,
        captures: Any = None,
        loss: Any = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByMKORState]:
        del params, extra
        if hybrid and loss is None:
            raise TypeError(
                "MKOR-H (hybrid=True) needs the `loss` extra argument: "
                "update(grads, state, params, loss=loss_value)."
            )
        if statistics == "captures" and captures is None:
            raise TypeError(
                "statistics='captures' needs the `captures` extra argument "
                "(optx.curvature.value_grad_and_captures / optx.curvature.linen_value_grad_and_captures)."
            )
        plan = _plan(updates, router)
        flat, _ = base.flatten_with_paths(updates)
        leaves = dict(flat)
        state_flat = _layer_states(state)
        if sorted(state_flat) != sorted(plan):
            raise ValueError(
                f"The MKOR state has layers {sorted(state_flat)} but the updates have "
                f"{sorted(plan)}: init and update trees differ."
            )
        for path, layer in plan.items():
            cap = capture_of(captures, path)
            if cap is not None:
                check_capture(layer, cap)
        count = state.count
        switch = switch_update(state.switch, loss, count) if hybrid else state.switch
        due = (count % k == 0) | (count < warmup_steps)
        # Runtime slice offsets for every stack of layers (see _split).
        ix = layouts.runtime_indices(sum(ly.layout.batch_size for ly in plan.values()), count)

        def second_order(_: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            layer_states = refresh(plan, leaves, state_flat, captures, due, ix)
            return precondition(plan, leaves, layer_states, ix), layer_states

        def first_order(_: Any) -> tuple[dict[str, Any], dict[str, Any]]:
            keep = {p: leaves[p] for p in plan}
            keep.update({ly.bias: leaves[ly.bias] for ly in plan.values() if ly.bias is not None})
            return keep, state_flat

        if hybrid:
            new_leaves, new_states = base.cond(switch.second_order, second_order, first_order, None)
        else:
            new_leaves, new_states = second_order(None)

        new_updates = base.tree_map_with_path_str(lambda p, x: new_leaves.get(p, x), updates)
        new_state = _with_layer_states(state, new_states)
        return new_updates, new_state._replace(count=optax.safe_increment(count), switch=switch)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
