"""Pair-aware transforms for low-rank adapters: LoRA-Pro and SoRA's gate step.

Both act on the adapter leaves found by :func:`optx.lora.lora_pairs` (Flax
orientation, ``ΔW = s·A B`` with ``A`` ``(…, fan_in, r)``, ``B``
``(…, r, fan_out)``; see :mod:`optx._src.lora`):

* :func:`scale_by_lora_pro` — LoRA-Pro's equivalent-gradient adjustment, a
  full-size Adam on the equivalent gradient and the Sylvester-solve map back
  (Wang et al., arXiv 2407.18242). Its state (the full ``fan_in × fan_out``
  moments) lives on each pair's ``A`` leaf; ``B`` and other leaves get
  ``optax.MaskedNode()``.
* :func:`scale_by_gate_threshold` — SoRA's proximal step on the gates after
  the optimizer step (Ding et al., arXiv 2311.11696), ``u ← prox(w + u) − w``.
* :func:`sparsifying_thresholds` / :func:`sparsifying_schedule` — SoRA's
  sparsifying scheduler (the ξ stages of Algorithm 1) as an optax schedule.

``BᵀB`` and ``AAᵀ`` (PyTorch names; ``B Bᵀ`` and ``Aᵀ A`` here) are symmetric
positive semi-definite, so every inverse and the Sylvester equation go through
two symmetric eigendecompositions of ``r × r`` matrices per step — no complex
``eig`` as in the official code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optx._src import base, hyperparams, lora, sharding

LORA_PRO_VARIANTS = ("paper", "official")
LORA_PRO_SCALINGS = ("lora", "rslora", "official")
OFFICIAL_LORA_PRO_SCALE = 2.0  # 16 / 8, hard-coded in lorapro_full_adjustment
THRESHOLD_MODES = ("official", "soft")
SCHEDULE_KINDS = ("linear", "log_linear", "exp_linear")


class ScaleByLoRAProState(NamedTuple):
    """State of :func:`scale_by_lora_pro`.

    ``mu``/``nu`` mirror the parameter tree: each pair's ``A`` leaf holds the
    full-size ``(…, fan_in, fan_out)`` Adam moment of the equivalent gradient;
    every other leaf is ``optax.MaskedNode()``.
    """

    count: jax.Array
    mu: base.Updates
    nu: base.Updates


def _t(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _sym_pinv(w: jax.Array, v: jax.Array, delta: Any) -> jax.Array:
    """``pinv(S + δI)`` from ``S = V diag(w) Vᵀ``, with ``torch.linalg.pinv``'s cutoff.

    Eigenvalues of ``S + δI`` with ``|λ| ≤ r·ε·max|λ|`` are dropped (PyTorch's
    default ``rtol = max(m, n)·ε``).
    """
    lam = w + jnp.asarray(delta, w.dtype)
    mag = jnp.abs(lam)
    cutoff = w.shape[-1] * jnp.finfo(w.dtype).eps * jnp.max(mag, axis=-1, keepdims=True)
    keep = mag > cutoff
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return (v * inv[..., None, :]) @ _t(v)


def solve_sylvester_psd(
    wa: jax.Array, va: jax.Array, wb: jax.Array, vb: jax.Array, c: jax.Array
) -> jax.Array:
    """Solves ``Sa Y + Y Sb = C`` for symmetric ``Sa = Va diag(wa) Vaᵀ``, ``Sb = Vb diag(wb) Vbᵀ``.

    ``Y = Va [(Vaᵀ C Vb) / (wa_i + wb_j)] Vbᵀ``. A zero denominator (both
    matrices singular along the same pair of directions, where the equation
    has no unique solution) gives a zero entry instead of the official code's
    inf/NaN.
    """
    f = _t(va) @ c @ vb
    den = wa[..., :, None] + wb[..., None, :]
    y = jnp.where(den == 0, 0.0, f / jnp.where(den == 0, 1.0, den))
    return va @ y @ _t(vb)


def _pair_scale(
    pair: lora.LoRAPair, alpha: Any, scaling: str
) -> Any:  # a Python float or a traced scalar
    if scaling == "official":
        return OFFICIAL_LORA_PRO_SCALE
    if alpha is None:
        return 1.0 if pair.scale is None else pair.scale
    return lora.lora_scale(alpha, pair.rank, scaling)


def _bias_correction(decay: Any, t: jax.Array, dtype: Any) -> jax.Array:
    """``1 − βᵗ`` as ``−expm1(t·log β)`` with ``log β`` in double precision when β is
    a Python number (as PyTorch's Python-float bias corrections): in f32,
    ``1 − f32(0.999)ᵗ`` is off by 1e-5 relative at small ``t``."""
    d = base._concrete_float(decay)
    if d is None or not 0.0 < d < 1.0:
        return base.bias_correction(decay, t).astype(dtype)
    return -jnp.expm1(t.astype(dtype) * jnp.asarray(math.log(d), dtype))


def _project_out_rows(g: jax.Array, b: jax.Array, sb_inv: jax.Array) -> jax.Array:
    """``g (I − Bᵀ (B Bᵀ)⁻¹ B)`` without forming the ``fan_out × fan_out`` projector."""
    return g - ((g @ _t(b)) @ sb_inv) @ b


def _lora_pro_pair(
    a: jax.Array,
    b: jax.Array,
    ga: jax.Array,
    gb: jax.Array,
    mu: jax.Array,
    nu: jax.Array,
    count: jax.Array,
    *,
    s: Any,
    b1: Any,
    b2: Any,
    eps: Any,
    delta: Any,
    official: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One LoRA-Pro step for one pair (Flax orientation); returns (Δa, Δb, mu, nu)."""
    cdt = base.compute_dtype(a.dtype, b.dtype)
    a, b, ga, gb = (x.astype(cdt) for x in (a, b, ga, gb))
    s = jnp.asarray(s, cdt)
    inv_s2 = 1.0 / (s * s)
    if official:  # ``delta * torch.eye(r)``: a float32 δ, even in a float64 run
        delta = jnp.asarray(delta, jnp.float32)
    at = _t(a)
    wa, va = jnp.linalg.eigh(at @ a)  # PyTorch A Aᵀ
    wb, vb = jnp.linalg.eigh(b @ _t(b))  # PyTorch Bᵀ B
    sa_inv, sb_inv = _sym_pinv(wa, va, delta), _sym_pinv(wb, vb, delta)
    # The official code's first-step branch is unreachable (its step counter is
    # incremented before the adjustment); the paper variant uses it at t = 1.
    first = jnp.logical_and(count == 0, not official)

    # 1. Closed-form adjusted gradients and the equivalent full gradient.
    ga_adj = jnp.where(first, ga, inv_s2 * (ga @ sb_inv))
    gb_adj = inv_s2 * (sa_inv @ jnp.where(first, gb, _project_out_rows(gb, b, sb_inv)))
    equiv = s * (ga_adj @ b) + s * (a @ gb_adj)

    # 2. Full-size Adam on the equivalent gradient.
    new_mu = b1 * mu.astype(cdt) + (1.0 - b1) * equiv
    sq = equiv
    if official:  # exp_avg_sq is fed bf16 copies of the gradient after the first step
        sq = jnp.where(count == 0, equiv, equiv.astype(jnp.bfloat16).astype(cdt))
    new_nu = b2 * nu.astype(cdt) + (1.0 - b2) * sq * sq
    t = optax.safe_increment(count) + (1 if official else 0)
    bc1, bc2 = _bias_correction(b1, t, cdt), _bias_correction(b2, t, cdt)
    u = (new_mu / bc1) / (jnp.sqrt(new_nu) / jnp.sqrt(bc2) + eps)

    # 3. Map back: the LoRA gradients of U, then the Sylvester-corrected adjustment.
    ga_u, gb_u = s * (u @ _t(b)), s * (at @ u)
    c = -inv_s2 * ((at @ ga_u) @ sb_inv)
    y = solve_sylvester_psd(wa, va, wb, vb, c)
    da = jnp.where(first, ga_u, inv_s2 * (ga_u @ sb_inv) + a @ y)
    db_first = inv_s2 * (sa_inv @ gb_u)
    db = jnp.where(first, db_first, inv_s2 * (sa_inv @ _project_out_rows(gb_u, b, sb_inv)) - y @ b)
    return da, db, new_mu, new_nu


def check_lora_pro_args(
    b1: Any, b2: Any, eps: Any, delta: Any, alpha: Any, scaling: str, variant: str
) -> None:
    """Validates LoRA-Pro's hyper-parameters (concrete values only)."""
    base.check_in_range("b1", b1, 0.0, 1.0)
    base.check_in_range("b2", b2, 0.0, 1.0)
    base.check_nonnegative("eps", eps)
    base.check_nonnegative("delta", delta)
    base.check_choice("scaling", scaling, LORA_PRO_SCALINGS)
    base.check_choice("variant", variant, LORA_PRO_VARIANTS)
    if alpha is not None:
        a = base._concrete_float(alpha)
        if a is not None and not (a > 0 and np.isfinite(a)):
            raise ValueError(f"`alpha` must be a positive finite number, got {alpha!r}.")


def _full_moment(a: Any, b: Any, dtype: Any) -> jax.Array:
    """Zeros ``(…, fan_in, fan_out)`` sharded like ``A`` on ``(…, fan_in)`` and like
    ``B`` on ``fan_out`` (under an Explicit mesh; a mesh axis used twice is dropped)."""
    shape = (*a.shape[:-1], b.shape[-1])
    sa, sb = sharding.spec_of(a), sharding.spec_of(b)
    if sa is None and sb is None:
        return jnp.zeros(shape, dtype)
    ea = tuple(sa or ()) + (None,) * (len(a.shape) - len(sa or ()))
    eb = tuple(sb or ()) + (None,) * (len(b.shape) - len(sb or ()))
    entries = [*ea[:-1], eb[-1]]
    used = [n for e in entries[:-1] if e is not None for n in (e if isinstance(e, tuple) else (e,))]
    last = entries[-1]
    if last is not None and set(last if isinstance(last, tuple) else (last,)) & set(used):
        entries[-1] = None
    spec = jax.sharding.PartitionSpec(*entries)
    return sharding.zeros(shape, dtype, sharding.named(spec, a if sa is not None else b))


def _sharded_pair_step(
    leaves: tuple[jax.Array, ...],
    moments: tuple[jax.Array, jax.Array],
    count: jax.Array,
    hparams: tuple[Any, ...],
    official: bool,
) -> tuple[jax.Array, ...]:
    """:func:`_lora_pro_pair` under ``auto_axes`` when the factors are sharded.

    Numeric hyper-parameters that are arrays (tracers under
    ``inject_hyperparams``) travel as arguments; Python numbers stay static
    (the bias corrections use them in double precision).
    """
    dynamic = [i for i, h in enumerate(hparams) if not isinstance(h, (int, float))]

    def fn(*args: jax.Array) -> tuple[jax.Array, ...]:
        a, b, ga, gb, mu, nu, count, *dyn = args
        hp = list(hparams)
        for i, value in zip(dynamic, dyn):
            hp[i] = value
        b1, b2, eps, delta, s = hp
        return _lora_pro_pair(
            a, b, ga, gb, mu, nu, count, s=s, b1=b1, b2=b2, eps=eps, delta=delta, official=official
        )

    a, b = leaves[0], leaves[1]
    specs = tuple(sharding.spec_or_replicated(x) for x in (a, b, *moments))
    args = (*leaves, *moments, count, *(hparams[i] for i in dynamic))
    return sharding.call_with_out_specs(fn, args, specs)


@hyperparams.validated(scaling=hyperparams.choice(*LORA_PRO_SCALINGS))
def scale_by_lora_pro(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    delta: float = 1e-8,
    alpha: float | None = None,
    scaling: str = "lora",
    variant: str = "paper",
    pairs: Sequence[lora.LoRAPair] | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """LoRA-Pro's adjusted LoRA gradients (Wang et al., arXiv 2407.18242, §2.2–2.4).

    For each adapter (``W = W₀ + s·A B``; Flax ``A`` ``(n, r)``, ``B``
    ``(r, m)``; PyTorch's ``AAᵀ`` is ``Sa = AᵀA``, its ``BᵀB`` is ``Sb = BBᵀ``)
    with gradients ``g_A = s·G Bᵀ``, ``g_B = s·Aᵀ G`` of ``G = ∂L/∂W``:

    1. closed-form minimisers of ``‖s(g̃_A B + A g̃_B) − G‖_F`` (Theorem 2.1):
       ``g̃_A = s⁻² g_A Sb⁻¹``, ``g̃_B = s⁻² Sa⁻¹ g_B (I − Bᵀ Sb⁻¹ B)``,
       and the equivalent gradient ``G̃ = s(g̃_A B + A g̃_B)`` (``n × m``);
    2. full-size Adam on ``G̃``: ``U = m̂/(√v̂ + ε)``;
    3. map back (Theorem 2.2, the ``X`` minimising the distance to ``U``):
       ``g'_A = s U Bᵀ``, ``g'_B = s Aᵀ U``, solve the Sylvester equation
       ``Sa Y + Y Sb = −s⁻² Aᵀ g'_A Sb⁻¹`` and return
       ``Δ_A = s⁻² g'_A Sb⁻¹ + A Y``,
       ``Δ_B = s⁻² Sa⁻¹ g'_B (I − Bᵀ Sb⁻¹ B) − Y B``.

    At the first step (``B = 0``, ``Sb`` singular) the paper's special case
    ``g̃_A = g_A``, ``g̃_B = s⁻² Sa⁻¹ g_B``, ``Δ_A = g'_A``,
    ``Δ_B = s⁻² Sa⁻¹ g'_B`` is used. Inverses are ``pinv(S + δI)`` as in the
    official code, computed (like the Sylvester solve) from symmetric
    eigendecompositions of the ``r × r`` matrices (δ at the leaf's precision
    with ``variant='paper'``; see the quirks for ``'official'``). Leaves that belong to no
    pair pass through unchanged (:func:`optx.lora_pro` sends them to AdamW).

    Official-code quirks (``lorapro_full_adjustment`` in the patched DeepSpeed
    of ``mrflogs/LoRA-Pro`` at ``fe26027``), reproduced by
    ``variant='official'``:

    * the step counter is incremented *before* the adjustment, so its
      bias corrections use ``t + 1`` (the first update is ≈ 0.74·sign instead of
      sign) and its first-step branch never runs — with ``B₀ = 0`` the general
      branch gives the same adjusted gradients, since ``g_A = 0`` then;
    * after the first step the second moment is accumulated from a bfloat16
      copy of ``G̃`` (a no-op in its bf16 training, a rounding in f32/f64);
    * ``delta * torch.eye(r)`` is a float32 tensor even in a float64 run, so
      its δ is float32-rounded (at δ = 1e-8 the exact δ moves a float64
      trajectory with ``B₀ = 0`` by up to 5e-11 of the weight change);
    * the scale is hard-coded to ``s = 16/8 = 2`` whatever the model uses
      (also for rsLoRA): ``scaling='official'``;
    * clipping in that DeepSpeed pipeline divides the *adjusted* update by the
      raw gradient's global norm (``gradient_clipping``); compose optax
      clipping yourself if you want it.

    Args:
      b1, b2, eps: Adam's coefficients on the equivalent gradient (official
        0.9, 0.999, 1e-8, hard-coded there).
      delta: the ridge δ in ``pinv(S + δI)`` (official 1e-8).
      alpha: LoRA α; the scale is ``α/r`` (``scaling='lora'``) or ``α/√r``
        (``'rslora'``) with each pair's rank. None: the module's own scale
        (``optx.lora.ScaledLoRA.scale``, 1.0 for ``nnx.LoRA``, which applies none).
      scaling: ``'lora'``, ``'rslora'`` or ``'official'`` (``s = 2``).
      variant: ``'paper'`` (standard bias correction, first-step special
        case) or ``'official'`` (the quirks above).
      pairs: the adapters (:func:`optx.lora.lora_pairs` of the model, which knows
        the module scales); default: found by leaf name in the tree.
      mu_dtype, nu_dtype: dtypes of the full-size moments (default: the
        parameter dtype, as optax).

    References:
      Wang, Liang, He, Wang, Tan, "LoRA-Pro: Are Low-Rank Adapters Properly
      Optimized?", ICLR 2025, arXiv 2407.18242 (code: github.com/mrflogs/LoRA-Pro).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> p = {'lora_a': jnp.ones((4, 2)), 'lora_b': jnp.zeros((2, 3))}
      >>> tx = optx.scale_by_lora_pro()
      >>> state = tx.init(p)
      >>> state.mu['lora_a'].shape   # the full-size moment lives on A
      (4, 3)
      >>> u, state = tx.update({'lora_a': jnp.zeros((4, 2)), 'lora_b': jnp.ones((2, 3))}, state, p)
    """
    check_lora_pro_args(b1, b2, eps, delta, alpha, scaling, variant)
    official = variant == "official"
    mu_dtype, nu_dtype = base.canonicalize_dtype(mu_dtype), base.canonicalize_dtype(nu_dtype)

    def init_fn(params: base.Params) -> ScaleByLoRAProState:
        base.check_real_params(params, "optx.scale_by_lora_pro")
        found = lora.resolve_pairs(params, pairs, method="optx.scale_by_lora_pro")
        by_a = {p.a: p for p in found}
        leaves = lora._leaves_by_path(params)

        def moment(dtype: Any) -> Any:
            def leaf(path: str, x: Any) -> Any:
                p = by_a.get(path)
                if p is None:
                    return optax.MaskedNode()
                return _full_moment(x, leaves[p.b], dtype or x.dtype)

            return base.tree_map_with_path_str(leaf, params)

        return ScaleByLoRAProState(
            count=jnp.zeros([], jnp.int32), mu=moment(mu_dtype), nu=moment(nu_dtype)
        )

    def update_fn(
        updates: base.Updates,
        state: ScaleByLoRAProState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, ScaleByLoRAProState]:
        del extra
        if params is None:
            raise ValueError("optx.scale_by_lora_pro needs `params` (the LoRA factors).")
        found = lora.resolve_pairs(params, pairs, method="optx.scale_by_lora_pro")
        p_leaves = lora._leaves_by_path(params)
        g_leaves = lora._leaves_by_path(updates)
        mu_leaves = lora._leaves_by_path(state.mu)
        nu_leaves = lora._leaves_by_path(state.nu)
        new_g: dict[str, Any] = {}
        new_mu: dict[str, Any] = {}
        new_nu: dict[str, Any] = {}
        for p in found:
            leaves = (p_leaves[p.a], p_leaves[p.b], g_leaves[p.a], g_leaves[p.b])
            moments = (mu_leaves[p.a], nu_leaves[p.a])
            da, db, m, v = _sharded_pair_step(
                leaves,
                moments,
                state.count,
                (b1, b2, eps, delta, _pair_scale(p, alpha, scaling)),
                official,
            )
            new_g[p.a] = da.astype(g_leaves[p.a].dtype)
            new_g[p.b] = db.astype(g_leaves[p.b].dtype)
            new_mu[p.a] = sharding.reshard_like(m.astype(mu_leaves[p.a].dtype), mu_leaves[p.a])
            new_nu[p.a] = sharding.reshard_like(v.astype(nu_leaves[p.a].dtype), nu_leaves[p.a])

        def pick(table: dict[str, Any]) -> Any:
            return lambda path, x: table.get(path, x)

        return (
            base.tree_map_with_path_str(pick(new_g), updates),
            ScaleByLoRAProState(
                count=optax.safe_increment(state.count),
                mu=base.tree_map_with_path_str(pick(new_mu), state.mu),
                nu=base.tree_map_with_path_str(pick(new_nu), state.nu),
            ),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# SoRA: the gate's proximal step and the sparsifying scheduler
# ----------------------------------------------------------------------------


class GateThresholdState(NamedTuple):
    """State of :func:`scale_by_gate_threshold`: the step counter (for a ξ schedule)."""

    count: jax.Array


def gate_threshold(x: jax.Array, threshold: Any, mode: str = "official") -> jax.Array:
    """SoRA's threshold of the gate values ``x`` (``mode`` as in :func:`scale_by_gate_threshold`).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> x = jnp.array([0.5, 1.5, 2.5, -2.5])
      >>> optx.lora.gate_threshold(x, 1.0).tolist(), optx.lora.gate_threshold(x, 1.0, 'soft').tolist()
      ([0.0, 0.0, 1.5, -1.5], [0.0, 0.5, 1.5, -1.5])
    """
    base.check_choice("mode", mode, THRESHOLD_MODES)
    xi = jnp.asarray(threshold, x.dtype)
    if mode == "soft":
        return jnp.sign(x) * jnp.maximum(jnp.abs(x) - xi, 0.0).astype(x.dtype)
    # The official code's in-place sequence: each mask sees the previous result.
    x = jnp.where(x > xi, x - xi, x)
    x = jnp.where(x < -xi, x + xi, x)
    return jnp.where(jnp.abs(x) < xi, jnp.zeros_like(x), x)


@hyperparams.validated()
def scale_by_gate_threshold(
    threshold: base.ScalarOrSchedule = 1e-3,
    *,
    mode: str = "official",
    gates: Sequence[str] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SoRA's proximal gate step after the optimizer step: ``u ← prox_ξ(w + u) − w``.

    Put it *last* in the chain (after ``scale_by_learning_rate``): the
    official ``SparseAdamW`` thresholds the gate values after its AdamW step,
    with ξ = ``sparse_lambda_2`` not multiplied by the learning rate (the
    repo's ``sparse_optimizer_multiply_lr.py`` uses ξ·η: pass a schedule
    ``lambda t: ξ * lr(t)`` for that). Modes:

    * ``'official'`` (default): the repo's in-place sequence
      ``x > ξ → x − ξ``; ``x < −ξ → x + ξ``; ``|x| < ξ → 0``. Each mask sees
      the previous result, so the effective map is
      ``0 if |x| < 2ξ else x − ξ·sign(x)`` — a dead zone of 2ξ, not the
      textbook soft threshold (values exactly at ±ξ are kept, as there).
    * ``'soft'``: the paper's proximal step (Eq. 6),
      ``S_ξ(x) = sign(x)·max(|x| − ξ, 0)``.

    Leaves named ``lora_gate`` (or the paths in ``gates``) are thresholded;
    every other leaf passes through unchanged. Needs ``params``.

    Args:
      threshold: ξ (scalar or schedule, e.g. :func:`sparsifying_schedule`).
      mode: ``'official'`` or ``'soft'``.
      gates: explicit gate paths (default: leaves named ``lora_gate``).

    References:
      Ding, Lv, Wang, Chen, Wang, Ji, Liu, Zhou, Zeng, Chen, Wang, Zhang, "Sparse
      Low-rank Adaptation of Pre-trained Language Models", EMNLP 2023,
      arXiv 2311.11696 (code: github.com/TsinghuaC3I/SoRA).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> w = {'lora_gate': jnp.array([0.5, 3.0])}
      >>> tx = optx.scale_by_gate_threshold(1.0)
      >>> u, _ = tx.update({'lora_gate': jnp.zeros(2)}, tx.init(w), w)
      >>> optax.apply_updates(w, u)['lora_gate'].tolist()
      [0.0, 2.0]
    """
    base.check_choice("mode", mode, THRESHOLD_MODES)
    if not callable(threshold):
        base.check_nonnegative("threshold", threshold)
    wanted = None if gates is None else frozenset(gates)

    def is_gate(path: str) -> bool:
        if wanted is not None:
            return path in wanted
        return path.rpartition("/")[2].lower() == lora.GATE_NAME

    def init_fn(params: base.Params) -> GateThresholdState:
        del params
        return GateThresholdState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: base.Updates,
        state: GateThresholdState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, GateThresholdState]:
        del extra
        if params is None:
            raise ValueError("optx.scale_by_gate_threshold needs `params` (the gate values).")
        xi = threshold(state.count) if callable(threshold) else threshold

        def leaf(path: str, u: Any, w: Any) -> Any:
            if u is None or not is_gate(path):
                return u
            cdt = base.compute_dtype(w.dtype)
            x = w.astype(cdt) + u.astype(cdt)
            y = gate_threshold(x.astype(w.dtype), xi, mode)
            return (y.astype(cdt) - w.astype(cdt)).astype(u.dtype)

        new = base.tree_map_with_path_str(leaf, updates, params)
        return new, GateThresholdState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sparsifying_thresholds(
    threshold: float, max_threshold: float, num_stages: int, kind: str = "linear"
) -> np.ndarray:
    """SoRA's ξ values of the sparsifying scheduler (``SparseAdamW._build_lambda_list``).

    ``'linear'``: ``linspace(ξ₀, ξ_max, n)``; ``'log_linear'``:
    ``log(linspace(e^{ξ₀}, e^{ξ_max}, n))``; ``'exp_linear'``:
    ``exp(linspace(log ξ₀, log ξ_max, n))`` (needs ξ₀ > 0).

    Example:
      >>> import optx
      >>> optx.lora.sparsifying_thresholds(0.0, 6e-4, 4).round(6).tolist()
      [0.0, 0.0002, 0.0004, 0.0006]
    """
    base.check_choice("kind", kind, SCHEDULE_KINDS)
    num_stages = base.check_positive_int("num_stages", num_stages)
    base.check_nonnegative("threshold", threshold)
    base.check_nonnegative("max_threshold", max_threshold)
    if kind == "linear":
        return np.linspace(threshold, max_threshold, num_stages)
    if kind == "log_linear":
        return np.log(np.linspace(np.exp(threshold), np.exp(max_threshold), num_stages))
    if threshold <= 0 or max_threshold <= 0:
        raise ValueError("kind='exp_linear' needs positive `threshold` and `max_threshold`.")
    return np.exp(np.linspace(np.log(threshold), np.log(max_threshold), num_stages))


def sparsifying_schedule(
    threshold: float,
    max_threshold: float,
    num_stages: int,
    stage_steps: int,
    *,
    kind: str = "linear",
    first_stage_steps: int | None = None,
) -> optax.Schedule:
    """SoRA's sparsifying scheduler (Algorithm 1) as a piecewise-constant ξ schedule.

    ξ₀ for the first ``first_stage_steps`` (default ``stage_steps``) steps —
    the main training — then each further value of
    :func:`sparsifying_thresholds` for ``stage_steps`` steps (the official
    script trains 15 epochs per stage), the last one held. Pass it as
    ``threshold`` of :func:`optx.sora`; track the active rank after each stage.

    Example:
      >>> import optx
      >>> f = optx.schedules.sparsifying_schedule(0.0, 2e-3, 3, stage_steps=10, first_stage_steps=100)
      >>> [round(float(f(t)), 6) for t in (0, 99, 100, 110, 500)]
      [0.0, 0.0, 0.001, 0.002, 0.002]
    """
    values = sparsifying_thresholds(threshold, max_threshold, num_stages, kind)
    stage_steps = base.check_positive_int("stage_steps", stage_steps)
    first = stage_steps if first_stage_steps is None else first_stage_steps
    first = base.check_positive_int("first_stage_steps", first)
    boundaries = np.asarray([first + k * stage_steps for k in range(num_stages - 1)], np.int32)
    table = np.asarray(values, np.float64)

    def schedule(count: Any) -> jax.Array:
        # In the widest enabled float: a float64 run gets the official float64 values.
        stage = jnp.sum(jnp.asarray(count) >= boundaries)
        return jnp.asarray(table, base.scalar_dtype())[stage]

    return schedule


def sora_l1_penalty(tree: Any, sparse_lambda: Any = 1e-3) -> jax.Array:
    """SoRA's gate penalty added to the loss: ``λ₁·Σ|g| / n_gates`` over all ``lora_gate`` leaves.

    The official ``SparseTrainer.compute_loss`` adds
    ``sparse_lambda · Σ_gates Σ|g| / Σ_gates numel(g)`` (``sparse_lambda``
    default 1e-3) to the task loss. ``tree`` is a parameter tree or an NNX
    module; returns 0 when there are no gates.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> p = {'l': {'lora_gate': jnp.array([1.0, -3.0])}, 'w': jnp.ones(4)}
      >>> float(optx.lora.sora_l1_penalty(p, 0.5))
      1.0
    """
    if lora.is_nnx_module(tree):
        tree = lora._nnx().state(tree)
    gates = [
        x
        for path, x in base.flatten_with_paths(tree)[0]
        if path.rpartition("/")[2].lower() == lora.GATE_NAME
    ]
    if not gates:
        return jnp.zeros([], jnp.float32)
    total = sum(jnp.sum(jnp.abs(g.astype(base.compute_dtype(g.dtype)))) for g in gates)
    count = sum(int(np.size(g)) for g in gates)
    return sparse_lambda * total / count
