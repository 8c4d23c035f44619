"""Per-neuron, per-matrix and shape-dependent rescalings of matrix updates.

All primitives here act in a leaf's matrix layout (:mod:`optx._src.layouts`):
a *row* is an output neuron (statistics reduce over the reduction/fan-in
axes), a *column* is an input feature (statistics reduce over the output axes),
and a *matrix* is one ``(fan_in, fan_out)`` slice of the batch. Leaves without
a layout pass through unchanged.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts, sharding
from optx._src.layouts import LayoutSpec, ResolvedLayout


class ScaleByAxisRmsState(NamedTuple):
    """State of :func:`scale_by_row_rms` / :func:`scale_by_column_rms`.

    ``nu`` holds, per matrix leaf, the EMA of the mean square with the reduced
    axes kept as size 1 (``optax.MaskedNode()`` for leaves without a layout).
    """

    count: jax.Array
    nu: base.Updates


def _free_matrix_view(x: Any, layout: ResolvedLayout) -> tuple[int, int, int] | None:
    """``layout.matrix_shape`` when viewing ``x`` as matrices is a free reshape, else None.

    True when the layout's axes are already in (batch, fan-in, fan-out) order
    and ``x``'s type carries no Explicit sharding. Per-matrix programs run on
    that view so that leaves of equal matrix shape (an attention ``(d, h, k)``
    input and ``(h, k, d)`` output kernel with ``h·k = d``) run identical XLA
    kernels, compiled once (issue 17 compile time).
    """
    if layout.permutation != tuple(range(len(layout.shape))) or layouts._has_sharded_type(x):
        return None
    return layout.matrix_shape


def _flat_matrix_layout(x: Any, layout: ResolvedLayout) -> ResolvedLayout | None:
    """A ``(batch, fan_in·fan_out)`` layout for per-matrix statistics on the free view.

    None unless :func:`_free_matrix_view` applies; every matrix is one row, so
    leaves with equal matrix sizes share the statistic's XLA kernels.
    """
    if _free_matrix_view(x, layout) is None:
        return None
    return ResolvedLayout((layout.batch_size, layout.fan_in * layout.fan_out), (1,), (), (0,))


def _scale_by_axis_rms(
    which: str,
    beta: Any,
    eps: Any,
    *,
    bias_correction: bool,
    eps_inside_sqrt: bool,
    layout: LayoutSpec,
    nu_dtype: Any,
    conv_view: str = "matrix",
) -> optax.GradientTransformationExtraArgs:
    base.check_in_range(f"beta ({which} rms)", beta, 0.0, 1.0)
    base.check_nonnegative("eps", eps)
    base.check_choice("conv_view", conv_view, layouts.CONV_VIEWS)
    nu_dtype = base.canonicalize_dtype(nu_dtype)

    def axes_of(lay: ResolvedLayout) -> tuple[int, ...]:
        window = layouts.conv_window_axes(lay) if conv_view == "torch" else None
        if window is not None:  # the official 4-D statistic: per (out, in, kh), over kw
            return (window[1],)
        return lay.reduction_axes if which == "row" else lay.output_axes

    def stat_shape(lay: ResolvedLayout) -> tuple[int, ...]:
        return tuple(1 if a in axes_of(lay) else d for a, d in enumerate(lay.shape))

    def init_fn(params: base.Params) -> ScaleByAxisRmsState:
        def leaf(p: Any, lay: ResolvedLayout) -> jax.Array:
            dtype = nu_dtype or base.real_dtype(p.dtype)  # |x|² statistics are real
            return sharding.zeros_like_spec(stat_shape(lay), dtype, p)

        return ScaleByAxisRmsState(
            count=jnp.zeros([], jnp.int32),
            nu=layouts.init_per_matrix_state(leaf, layout, params),
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByAxisRmsState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByAxisRmsState]:
        del params, extra
        count = optax.safe_increment(state.count)
        if bias_correction:
            correction = base.bias_correction(beta, count)
        else:
            correction = base.at_least_f32(1.0)

        def leaf(x: jax.Array, lay: ResolvedLayout, nu: jax.Array) -> tuple[jax.Array, jax.Array]:
            axes = axes_of(lay)
            if axes == (lay.reduction_axes if which == "row" else lay.output_axes):
                view = _free_matrix_view(x, lay)
                if view is not None:  # equal matrix shapes share XLA kernels
                    m = lay.matrix_shape
                    out, new_nu = step(
                        x.reshape(m),
                        nu.reshape(m[0], *((1, m[2]) if which == "row" else (m[1], 1))),
                        (1,) if which == "row" else (2,),
                    )
                    return out.reshape(x.shape), new_nu.reshape(nu.shape)
            return step(x, nu, axes)

        def step(x: jax.Array, nu: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
            cdt = base.compute_dtype(x.dtype, nu.dtype)
            xc = x.astype(cdt)
            mean_sq = jnp.mean(base.abs_sq(xc), axis=axes, keepdims=True)
            rdt = base.real_dtype(cdt)  # the statistics of complex leaves are real
            new_nu = beta * nu.astype(rdt) + (1.0 - beta) * mean_sq
            nu_hat = new_nu / correction.astype(rdt)
            if eps_inside_sqrt:
                denom = jnp.sqrt(nu_hat + eps)
            else:
                denom = jnp.sqrt(nu_hat) + eps
            # A neuron no gradient has reached (ν = 0) at ε = 0: no step, the ε → 0
            # limit (a 0/0 row would spread NaN through the norm-preserving rescale).
            return base.safe_divide(xc, denom).astype(x.dtype), new_nu.astype(nu.dtype)

        out = layouts.map_matrix_leaves(
            leaf, layout, updates, state.nu, otherwise=lambda x, nu: (x, nu)
        )
        new_updates, new_nu = base.unzip_tree(updates, out)
        return new_updates, ScaleByAxisRmsState(count=count, nu=new_nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@hyperparams.validated()
def scale_by_row_rms(
    beta: float = 0.95,
    eps: float = 1e-10,
    *,
    bias_correction: bool = False,
    eps_inside_sqrt: bool = False,
    layout: LayoutSpec = None,
    nu_dtype: base.DTypeLike | None = None,
    conv_view: str = "matrix",
) -> optax.GradientTransformationExtraArgs:
    """Divides each output neuron (row) by the RMS EMA of its entries.

    NorMuon's neuron-wise second moment (arXiv 2510.05491, Alg. 1 lines 7–8):

    .. math::

      v_t = β v_{t-1} + (1-β)\\, \\mathrm{mean}_{\\text{fan-in}}(O_t ⊙ O_t), \\qquad
      \\hat O_t = O_t / (\\sqrt{v_t} + ε),

    one scalar per output neuron (the PyTorch *row*; in a Flax ``(in, out)``
    kernel the mean runs over axis 0). The official code uses no bias
    correction and ε = 1e-10 outside the square root (the defaults);
    ``bias_correction=True`` divides ``v`` by ``1 − βᵗ`` and
    ``eps_inside_sqrt=True`` uses ``sqrt(v + ε)`` (the optax PR's form).

    Args:
      beta: EMA decay (scalar or array; injectable).
      eps: denominator epsilon.
      bias_correction: divide ``v`` by ``1 − βᵗ``.
      eps_inside_sqrt: put ε inside the square root.
      layout: a :data:`~optx.LayoutSpec`.
      nu_dtype: dtype of ``v`` (default: the parameter dtype).
      conv_view: ``'matrix'`` (default: one statistic per output channel) or
        ``'torch'``: on 2-D conv kernels, the official NorMuon statistic of the
        4-D PyTorch tensor ``(out, in, kh, kw)``, a mean over ``kw`` per
        ``(out, in, kh)``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_row_rms(beta=0.0)
      >>> g = {'w': jnp.array([[1.0, 4.0], [1.0, 4.0]])}   # (in=2, out=2)
      >>> u, _ = tx.update(g, tx.init(g))
      >>> u['w']
      Array([[1., 1.],
             [1., 1.]], dtype=float32)
    """
    return _scale_by_axis_rms(
        "row",
        beta,
        eps,
        bias_correction=bias_correction,
        eps_inside_sqrt=eps_inside_sqrt,
        layout=layout,
        nu_dtype=nu_dtype,
        conv_view=conv_view,
    )


@hyperparams.validated()
def scale_by_column_rms(
    beta: float = 0.95,
    eps: float = 1e-10,
    *,
    bias_correction: bool = False,
    eps_inside_sqrt: bool = False,
    layout: LayoutSpec = None,
    nu_dtype: base.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The column twin of :func:`scale_by_row_rms`: one statistic per input feature.

    .. math::

      v_t = β v_{t-1} + (1-β)\\, \\mathrm{mean}_{\\text{fan-out}}(O_t ⊙ O_t), \\qquad
      \\hat O_t = O_t / (\\sqrt{v_t} + ε).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_column_rms(beta=0.0)
      >>> g = {'w': jnp.array([[2.0, 2.0], [3.0, 3.0]])}
      >>> u, _ = tx.update(g, tx.init(g))
      >>> u['w']
      Array([[1., 1.],
             [1., 1.]], dtype=float32)
    """
    return _scale_by_axis_rms(
        "column",
        beta,
        eps,
        bias_correction=bias_correction,
        eps_inside_sqrt=eps_inside_sqrt,
        layout=layout,
        nu_dtype=nu_dtype,
    )


@hyperparams.validated()
def preserve_frobenius_norm(
    inner: optax.GradientTransformation,
    *,
    eps: float = 1e-10,
    layout: LayoutSpec = None,
    conv_view: str = "matrix",
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` and rescales each matrix back to its input Frobenius norm.

    .. math::  \\mathrm{out} = Y \\cdot \\|X\\|_F / (\\|Y\\|_F + ε), \\quad Y = \\mathrm{inner}(X)

    per matrix of the layout (NorMuon's official "norm restore" after the
    neuron-wise normalization, so the update keeps Muon's magnitude). Leaves
    without a layout get ``inner``'s output unchanged. The state is ``inner``'s.
    ``conv_view='torch'`` restores the norm of each ``(out, in)`` slice over the
    window ``(kh, kw)`` of a 2-D conv kernel instead (official NorMuon's
    ``norm(dim=(-2, -1))`` on the 4-D PyTorch tensor).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.preserve_frobenius_norm(optx.scale_by_row_rms(beta=0.0))
      >>> g = {'w': jnp.array([[3.0, 0.0], [0.0, 4.0]])}
      >>> u, _ = tx.update(g, tx.init(g))
      >>> float(jnp.linalg.norm(u['w']))
      5.0
    """
    base.check_nonnegative("eps", eps)
    base.check_choice("conv_view", conv_view, layouts.CONV_VIEWS)
    inner = optax.with_extra_args_support(inner)

    def sum_sq(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
        window = layouts.conv_window_axes(lay) if conv_view == "torch" else None
        if window is None:
            return layouts.matrix_sum_of_squares(x, lay)
        xc = x.astype(base.compute_dtype(x.dtype))
        return jnp.sum(base.abs_sq(xc), axis=window, keepdims=True)

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        new, new_state = inner.update(updates, state, params, **extra)

        def leaf(x: jax.Array, lay: ResolvedLayout, y: jax.Array) -> jax.Array:
            flat = _flat_matrix_layout(x, lay)
            if flat is not None and (conv_view != "torch" or layouts.conv_window_axes(lay) is None):
                return rescale(x.reshape(flat.shape), flat, y.reshape(flat.shape)).reshape(y.shape)
            return rescale(x, lay, y)

        def rescale(x: jax.Array, lay: ResolvedLayout, y: jax.Array) -> jax.Array:
            nx = jnp.sqrt(sum_sq(x, lay))
            ny = jnp.sqrt(sum_sq(y, lay))
            return (y.astype(base.compute_dtype(y.dtype, nx.dtype)) * (nx / (ny + eps))).astype(
                y.dtype
            )

        out = layouts.map_matrix_leaves(leaf, layout, updates, new, otherwise=lambda x, y: y)
        return out, new_state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


SHAPE_RULES = ("keller", "moonlight", "none", "rms_to_rms")


def shape_scale(rule: str, fan_in: int, fan_out: int, rms: float = 0.2) -> float:
    """The static scale factor of :func:`scale_by_shape` for one matrix shape."""
    if rule == "keller":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if rule == "moonlight":
        return rms * math.sqrt(max(fan_in, fan_out))
    if rule == "none":
        return 1.0
    if rule == "rms_to_rms":
        return math.sqrt(fan_out / fan_in)
    raise ValueError(f"Unknown shape rule {rule!r}; choose one of {SHAPE_RULES}.")


@hyperparams.validated()
def scale_by_shape(
    rule: str = "keller", *, rms: float = 0.2, layout: LayoutSpec = None, conv_view: str = "matrix"
) -> optax.GradientTransformationExtraArgs:
    """Multiplies each matrix update by a factor of its shape.

    * ``'keller'``: ``√max(1, fan_out / fan_in)`` (Keller Jordan's Muon; the
      PyTorch ``sqrt(max(1, rows/cols))``);
    * ``'moonlight'``: ``rms · √max(fan_in, fan_out)`` with ``rms = 0.2``, so an
      orthogonal update has RMS ≈ 0.2 like AdamW's (Liu et al., "Muon is
      Scalable for LLM Training", arXiv 2502.16982, Eq. 4);
    * ``'none'``: 1;
    * ``'rms_to_rms'``: ``√(fan_out / fan_in)``, so an orthogonal update has unit
      RMS→RMS operator norm (the modular-norm dualization of Newhouse et al.,
      "Training Transformers with Enforced Lipschitz Constants",
      arXiv 2507.13338, used by :func:`optx.lipschitz_muon`).

    ``fan_in``/``fan_out`` are the products of the layout's reduction/output
    axis sizes (a conv kernel's fan-in includes its window). Keller's code
    computes the ratio on the *4-D* conv gradient, i.e. ``kh/kw``; optx uses the
    matrix view by default (``conv_view='matrix'``); ``conv_view='torch'``
    uses ``kh/kw`` on 2-D conv kernels, as the official code. Stateless.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_shape('keller')
      >>> u, _ = tx.update({'w': jnp.ones((2, 8))}, optax.EmptyState())
      >>> float(u['w'][0, 0])
      2.0
    """
    base.check_choice("rule", rule, SHAPE_RULES)
    base.check_nonnegative("rms", rms)
    base.check_choice("conv_view", conv_view, layouts.CONV_VIEWS)

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra

        def leaf(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
            window = layouts.conv_window_axes(lay) if conv_view == "torch" else None
            fan_in, fan_out = lay.fan_in, lay.fan_out
            if window is not None:  # PyTorch's rows/cols of the 4-D tensor: kh/kw
                fan_in, fan_out = lay.shape[window[1]], lay.shape[window[0]]
            return (x * shape_scale(rule, fan_in, fan_out, rms)).astype(x.dtype)

        return layouts.map_matrix_leaves(leaf, layout, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@hyperparams.validated()
def scale_to_rms(
    rms: float = 0.2, *, eps: float = 1e-10, layout: LayoutSpec = None
) -> optax.GradientTransformationExtraArgs:
    """Rescales each matrix to a target RMS: ``X · rms · √(mn) / (‖X‖_F + ε)``.

    NorMuon's paper form of the step size (arXiv 2510.05491, Alg. 1 line 9,
    ``η̂ = 0.2 η √(mn) / ‖Ô‖_F``), which matches AdamW's update RMS. Stateless.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_to_rms(0.2)
      >>> u, _ = tx.update({'w': 3 * jnp.ones((4, 4))}, optax.EmptyState())
      >>> round(float(jnp.sqrt(jnp.mean(u['w'] ** 2))), 6)
      0.2
    """
    base.check_nonnegative("eps", eps)

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra

        def leaf(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
            norm = jnp.sqrt(layouts.matrix_sum_of_squares(x, lay))
            factor = rms * math.sqrt(lay.fan_in * lay.fan_out) / (norm + eps)
            return (x.astype(base.compute_dtype(x.dtype, norm.dtype)) * factor).astype(x.dtype)

        return layouts.map_matrix_leaves(leaf, layout, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


# ----------------------------------------------------------------------------
# AuON's linear-time normalizations (arXiv 2509.24320)
# ----------------------------------------------------------------------------


@hyperparams.validated()
def normalize_by_frobenius(
    eps: float = 1e-7, *, layout: LayoutSpec = None
) -> optax.GradientTransformationExtraArgs:
    """Divides each matrix by its Frobenius norm: ``X / (‖X‖_F + ε)``.

    AuON's first step (Maity, "AuON: A Linear-time Alternative to
    (Semi-)Orthogonal Momentum Updates", arXiv 2509.24320, §3.1, the
    "Method (equations)" display: ``update := G / (‖G‖_F + 10⁻⁷)``), and the
    pre-normalization every Newton–Schulz iteration starts from. One norm per
    matrix of the layout (conv kernels and stacked ``(L, in, out)`` layers are
    normalized per matrix); linear time, no matrix products. Stateless.

    References:
      Maity, "AuON: A Linear-time Alternative to (Semi-)Orthogonal Momentum
      Updates", arXiv 2509.24320.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.normalize_by_frobenius(eps=0.0)
      >>> u, _ = tx.update({'w': jnp.array([[3.0, 0.0], [0.0, 4.0]])}, optax.EmptyState())
      >>> u['w']
      Array([[0.6, 0. ],
             [0. , 0.8]], dtype=float32)
    """
    base.check_nonnegative("eps", eps)

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra

        def leaf(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
            norm = jnp.sqrt(layouts.matrix_sum_of_squares(x, lay))
            return (x.astype(base.compute_dtype(x.dtype, norm.dtype)) / (norm + eps)).astype(
                x.dtype
            )

        return layouts.map_matrix_leaves(leaf, layout, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@hyperparams.validated()
def scale_by_cosh_rms(
    gamma: float = 1.0,
    eps: float = 1e-8,
    *,
    normalize_argument: bool = False,
    norm_eps: float = 1e-7,
    layout: LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    """AuON's hyperbolic-cosine RMS brake: ``X / (√mean(cosh(γ Z)²) + ε)``.

    Per matrix ``X`` of the layout (arXiv 2509.24320, §3.1):

    .. math::

      r = \\sqrt{\\tfrac{1}{N} \\textstyle\\sum_i \\cosh(γ Z_i)^2}, \\qquad
      \\mathrm{out} = X / (r + ε),

    with ``Z = X`` (the paper, which applies it to an already unit-Frobenius
    ``X``: :func:`normalize_by_frobenius` first) or, with
    ``normalize_argument=True``, ``Z = X / (‖X‖_F + norm_eps)`` (the official
    repository's ``AuON``/``HybridAuON``, which divides the *un-normalized*
    ``X`` by a brake computed from its normalized copy, with ``γ = 1.5``).
    ``r ≥ 1``, so the brake only ever shrinks; it grows with the tails of
    ``Z`` (``cosh`` is even and convex), leaving signs and ratios untouched.
    One scalar per matrix: linear time, no matrix products. Computed in f32
    (or wider); ``cosh`` cannot overflow for normalized arguments. Stateless.

    Args:
      gamma: the argument scale γ (1 in the paper, 1.5 in the repository).
      eps: ε added to ``r`` (1e-8).
      normalize_argument: compute ``r`` from ``X/(‖X‖_F + norm_eps)``.
      norm_eps: ε of that normalization (1e-7).
      layout: a :data:`~optx.LayoutSpec`.

    References:
      Maity, "AuON: A Linear-time Alternative to (Semi-)Orthogonal Momentum
      Updates", arXiv 2509.24320 (code: github.com/ryyzn9/AuON,
      ``auon/optimizer.py``).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> tx = optx.scale_by_cosh_rms(gamma=1.0, eps=0.0)
      >>> u, _ = tx.update({'w': jnp.zeros((2, 3))}, optax.EmptyState())
      >>> float(jnp.abs(u['w']).max())   # cosh(0) = 1: zero stays zero
      0.0
    """
    base.check_nonnegative("eps", eps)
    base.check_nonnegative("norm_eps", norm_eps)
    base.check_finite("gamma", gamma)

    def update_fn(
        updates: base.Updates, state: Any, params: base.Params | None = None, **extra: Any
    ) -> tuple[base.Updates, Any]:
        del params, extra

        def leaf(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
            flat = _flat_matrix_layout(x, lay)
            if flat is not None:  # per-matrix statistics: every matrix as one row
                return brake(x.reshape(flat.shape), flat).reshape(x.shape)
            return brake(x, lay)

        def brake(x: jax.Array, lay: ResolvedLayout) -> jax.Array:
            cdt = base.compute_dtype(x.dtype)
            xc = x.astype(cdt)
            z = xc
            axes = lay.reduction_axes + lay.output_axes
            if normalize_argument:
                sum_sq = jnp.sum(jnp.square(xc), axis=axes, keepdims=True)
                z = xc / (jnp.sqrt(sum_sq) + norm_eps)
            r = jnp.sqrt(jnp.mean(jnp.square(jnp.cosh(gamma * z)), axis=axes, keepdims=True))
            return (xc / (r + eps)).astype(x.dtype)

        return layouts.map_matrix_leaves(leaf, layout, updates), state

    def init_fn(params: base.Params) -> optax.EmptyState:
        # cosh of a complex update is not a magnitude: AuON's brake is real-only.
        base.check_real_params(
            layouts.map_matrix_leaves(lambda x, lay: x, layout, params, otherwise=lambda x: None),
            "optx.scale_by_cosh_rms",
        )
        return optax.EmptyState()

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class NormGrowthLimiterState(NamedTuple):
    """State of :func:`scale_by_norm_growth_limiter`.

    ``norm`` holds, per matrix leaf, the (limited) Frobenius norm of the
    previous output of each matrix, in :meth:`ResolvedLayout.matrix_norm_shape`
    (``optax.MaskedNode()`` for leaves without a layout).
    """

    count: jax.Array
    norm: base.Updates


@hyperparams.validated()
def scale_by_norm_growth_limiter(
    gamma: float = 1.01, *, eps: float = 1e-8, layout: LayoutSpec = None
) -> optax.GradientTransformationExtraArgs:
    """Caps the growth of each matrix update's norm at a factor ``γ`` per step.

    The norm-growth limiter of Fira (Chen et al., arXiv 2410.01623, Eq. 8),
    used by APOLLO (arXiv 2412.05270, Alg. 1):

    .. math::

      \\ell_t = \\max\\!\\big(\\|X_t\\|_F / (N_{t-1} + ε),\\ γ\\big) / γ, \\qquad
      \\tilde X_t = X_t / \\ell_t, \\qquad N_t = \\|X_t\\|_F / \\ell_t

    so ``‖X̃_t‖ ≤ γ N_{t−1}``; the first step is never limited (it only records
    ``N_1 = ‖X_1‖``), and the stored norm is the *limited* one — both as in the
    official APOLLO code. Norms are per matrix of the layout (per stacked layer).
    Leaves without a layout pass through.

    Args:
      gamma: the allowed growth factor (1.01 in APOLLO/Fira).
      eps: added to the stored norm (1e-8).
      layout: a :data:`~optx.LayoutSpec`.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> tx = optx.scale_by_norm_growth_limiter(1.01)
      >>> s = tx.init({'w': jnp.ones((2, 2))})
      >>> _, s = tx.update({'w': jnp.ones((2, 2))}, s)
      >>> u, s = tx.update({'w': 10 * jnp.ones((2, 2))}, s)
      >>> round(float(jnp.linalg.norm(u['w'])), 4)   # 1.01 × the first norm (2)
      2.02
    """
    base.check_nonnegative("eps", eps)

    def init_fn(params: base.Params) -> NormGrowthLimiterState:
        def leaf(p: Any, lay: ResolvedLayout) -> jax.Array:
            dtype = base.real_dtype(base.compute_dtype(p.dtype))
            return sharding.zeros_like_spec(lay.matrix_norm_shape(), dtype, p)

        return NormGrowthLimiterState(
            count=jnp.zeros([], jnp.int32),
            norm=layouts.init_per_matrix_state(leaf, layout, params),
        )

    def update_fn(
        updates: base.Updates,
        state: NormGrowthLimiterState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, NormGrowthLimiterState]:
        del params, extra
        first = state.count == 0

        def leaf(x: jax.Array, lay: ResolvedLayout, prev: jax.Array) -> tuple[Any, Any]:
            norm = jnp.sqrt(layouts.matrix_sum_of_squares(x, lay))
            limiter = jnp.maximum(norm / (prev + eps), gamma) / gamma
            limiter = jnp.where(first, 1.0, limiter).astype(norm.dtype)
            out = (x.astype(base.compute_dtype(x.dtype, norm.dtype)) / limiter).astype(x.dtype)
            return out, (norm / limiter).astype(prev.dtype)

        out = layouts.map_matrix_leaves(
            leaf, layout, updates, state.norm, otherwise=lambda x, n: (x, n)
        )
        new_updates, new_norm = base.unzip_tree(updates, out)
        return new_updates, NormGrowthLimiterState(optax.safe_increment(state.count), new_norm)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
