"""A roofline per optimizer: FLOPs and bytes moved per step, and this device's peaks.

Every registered optimizer has a **cost model** in :data:`COST_MODELS`: a
function of the parameter tree (:class:`TreeInfo`, the default router's matrix
views) and the optimizer's registry defaults returning a :class:`Cost` — the
work of an ideal implementation of the *method* per step:

* **bytes**: one read of the gradient and the parameter, one write of the
  parameter, one read and one write of every optimizer-state word
  (``4·(3 + 2·s)`` bytes per parameter for ``s`` float32 state words; 8-bit
  states: what the loops of ``quantize_moments`` read and write,
  :func:`coded_moments`), plus the passes a method cannot fuse away (a second read
  for a per-matrix reduction, a curvature oracle's extra gradient passes);
* **flops**: the dense linear algebra (``2·m·k·n`` per matmul): Newton–Schulz
  iterations, Kronecker-factor and rotation products, low-rank projections,
  eigh/QR/SVD refreshes amortized over their period (``≈ 10·d³`` per eigh or
  SVD of a ``d × d`` factor, ``≈ 4·d³`` per power-iteration + QR). Element-wise
  arithmetic is not counted: it is memory-bound.

The bound for a step is ``flops / peak_flops + bytes / peak_bandwidth``
(matmul phases and element-wise phases do not overlap in a jitted step), with
both peaks measured by :func:`calibrate` on this device at start: a square
float32 matmul and a streaming ``y = a·x + y``. ``benchmarks/step_cost.py``
prints the bound next to the measured step and the fraction reached
(``bound / measured``; 1.0 would be an ideal kernel at this device's peaks).

Example::

  python benchmarks/roofline.py --preset small          # the models' table only
  python benchmarks/step_cost.py --preset small         # measured vs bound

A new optimizer adds one entry to :data:`COST_MODELS` (``tests`` check that
every registered name has one).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import pathlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

import optx
from optx._src import quantization

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _trees

WORD = 4  # bytes of a float32


@dataclasses.dataclass(frozen=True)
class Cost:
    """FLOPs (dense linear algebra) and bytes moved (DRAM traffic) per step.

    ``periodic_flops`` / ``periodic_bytes`` hold work that runs every ``k > 1``
    steps (eigh, power-QR, SVD refreshes, curvature oracles), already divided
    by ``k``: the *typical* step (what a median over steps measures) costs
    ``flops`` and ``bytes``; the long-run average adds the periodic part.
    """

    flops: float = 0.0
    bytes: float = 0.0
    periodic_flops: float = 0.0
    periodic_bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def scaled(self, k: float) -> Cost:
        return Cost(*(a * k for a in dataclasses.astuple(self)))

    def seconds(self, peak_flops: float, peak_bytes: float, amortized: bool = False) -> float:
        """The roofline bound of a typical step (``amortized``: plus the
        periodic work's average): compute and memory phases back to back."""
        flops = self.flops + (self.periodic_flops if amortized else 0.0)
        moved = self.bytes + (self.periodic_bytes if amortized else 0.0)
        return flops / peak_flops + moved / peak_bytes


ZERO = Cost()


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A parameter leaf: its path, size, shape and default-router matrix view."""

    path: str
    size: int
    shape: tuple[int, ...]
    view: tuple[int, int, int] | None  # (batch, fan_in, fan_out), None if not routed


@dataclasses.dataclass(frozen=True)
class TreeInfo:
    """What the cost models need to know about a parameter tree."""

    leaves: tuple[Leaf, ...]

    @classmethod
    def from_params(cls, params: Any, router: optx.Router | None = None) -> TreeInfo:
        router = router or optx.default_router()
        out = []
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = optx.tree_utils.path_to_str(path)
            layout = router.layout(name, leaf)
            view = None
            if layout is not None:
                view = optx.resolve_layout(layout, tuple(leaf.shape)).matrix_shape
            out.append(Leaf(name, math.prod(leaf.shape), tuple(leaf.shape), view))
        return cls(tuple(out))

    @property
    def size(self) -> int:
        return sum(x.size for x in self.leaves)

    @property
    def matrices(self) -> list[Leaf]:
        return [x for x in self.leaves if x.view is not None]

    @property
    def matrix_size(self) -> int:
        return sum(x.size for x in self.matrices)

    @property
    def fallback_size(self) -> int:
        return self.size - self.matrix_size

    def dense_views(self) -> list[tuple[int, int, int]]:
        """Every ≥2-D leaf as matrices (routed view, else ``(1, prod(shape[:-1]), last)``)."""
        views = []
        for x in self.leaves:
            if x.view is not None:
                views.append(x.view)
            elif len(x.shape) >= 2:
                views.append((1, x.size // x.shape[-1], x.shape[-1]))
        return views


# ----------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------


def elementwise(n: float, state_words: float, extra_passes: float = 0.0) -> Cost:
    """One fused pass: read g and p, write p, read+write ``state_words`` words
    per parameter, plus ``extra_passes`` further reads of one word."""
    return Cost(0.0, WORD * n * (3 + 2 * state_words + extra_passes))


def matmul(m: float, k: float, n: float, batch: float = 1) -> Cost:
    """``(m×k)·(k×n)``: 2mkn flops; operands read and result written once."""
    return Cost(2.0 * batch * m * k * n, WORD * batch * (m * k + k * n + m * n))


def newton_schulz(view: tuple[int, int, int], steps: int) -> Cost:
    """Quintic Newton–Schulz on ``batch`` matrices: per step ``A = XXᵀ``,
    ``B = bA + cA²``, ``X ← aX + BX`` with X in its wide orientation."""
    b, m, n = view
    short, wide = min(m, n), max(m, n)
    per_step = matmul(short, wide, short, b) + matmul(short, short, short, b)
    per_step = per_step + matmul(short, short, wide, b)
    return per_step.scaled(steps)


def _every(flops: float, every: float) -> Cost:
    """Work done once every ``every`` steps, per step (periodic if ``every > 1``)."""
    if every <= 1:
        return Cost(flops, 0.0)
    return Cost(periodic_flops=flops / every)


def eigh(d: float, every: float = 1.0, batch: float = 1) -> Cost:
    """A symmetric eigendecomposition (or SVD) of ``d × d``, amortized."""
    return _every(10.0 * batch * d**3, every)


def power_qr(d: float, every: float = 1.0, batch: float = 1) -> Cost:
    """One power iteration ``P Q`` plus a QR of ``d × d``, amortized."""
    return _every(4.0 * batch * d**3, every)


def two_sided_rotation(view: tuple[int, int, int], count: int) -> Cost:
    """``count`` products ``Qₗᵀ X Qᵣ`` (or back) of an ``m × n`` matrix."""
    b, m, n = view
    return (matmul(m, m, n, b) + matmul(m, n, n, b)).scaled(count)


def low_rank_projection(view: tuple[int, int, int], rank: int, count: int) -> Cost:
    """``count`` products of an ``m × n`` matrix with an ``r``-column basis
    on its smaller side."""
    b, m, n = view
    r = min(rank, m, n)
    return matmul(r, min(m, n), max(m, n), b).scaled(count)


# None structural defaults documented in a grouped Args entry (MKOR's official inv_freq).
_UNDOCUMENTED_NONE = {"update_interval": 10}


def hyper(spec: optx.OptimizerSpec, name: str) -> Any:
    """A hyper-parameter of ``spec``: its registry default, else the factory's."""
    if name in spec.defaults:
        return spec.defaults[name]
    param = inspect.signature(spec.factory).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        raise KeyError(f"{spec.name} has no hyper-parameter {name!r}")
    if param.default is None:
        # Structural defaults are None (inject_hyperparams-safe), resolved inside the
        # factory; its docstring states the value as "None = N".
        doc = spec.factory.__doc__ or ""
        entry = re.search(rf"\n\s+{name}\b.*?(?=\n\s+[a-z_0-9, ]+:|\n\n)", doc, re.S)
        found = re.search(r"None = ([0-9.e+-]+)", entry.group(0)) if entry else None
        if found is None and name in _UNDOCUMENTED_NONE:
            return _UNDOCUMENTED_NONE[name]
        if found is None:
            raise KeyError(f"{spec.name}: no documented value for {name}=None")
        return float(found.group(1))
    return param.default


def _steps(spec: optx.OptimizerSpec, default: int = 5) -> int:
    try:
        value = hyper(spec, "ns_steps")
    except KeyError:
        return default
    return default if value is None else int(value)


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------

CostModel = Callable[[TreeInfo, optx.OptimizerSpec], Cost]


def _adamw(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    return elementwise(t.size, 2)


def _one_moment(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    return elementwise(t.size, 1)


def coded_moments(n: float, moments: int, gradient_words: float = 1.0, output: bool = True) -> Cost:
    """``optx.quantization.quantize_moments``' step on ``n`` quantized entries
    with ``moments`` 1-byte codes each (float32 block scales, one per 256,
    not counted): no dequantized or new moment is ever written; three loops
    recompute dequantize → update from the codes and the gradient
    (``gradient_words`` words per entry: 2 where a weight decay before the
    moments reads the parameter too):

    * the block maxima of the new moments (one variadic reduction): reads the
      codes and the gradient;
    * the update: reads the codes, the gradient and the parameter, writes the
      parameter (``output=False``: GaLore's projected update, one word written);
    * the codes, one loop per moment: reads its codes and the gradient, writes
      its codes.

    8-bit AdamW: 26 bytes read and 6 written per parameter (AdamW: 16 and 12).
    """
    g = WORD * gradient_words
    update_reads = moments + (WORD + WORD if output else WORD)
    reads = (moments + g) + update_reads + moments * (1 + g)
    return Cost(0.0, n * (reads + WORD + moments))


def _min_size(spec: optx.OptimizerSpec) -> int:
    """Leaves (or projected moments) with fewer entries keep float32 moments."""
    value = spec.defaults.get("min_size")
    return max(int(quantization.REFERENCE_MIN_SIZE if value is None else value), 1)


def _coded_sizes(t: TreeInfo, spec: optx.OptimizerSpec) -> tuple[int, int]:
    """Entries of the leaves with 8-bit moments and of the others (min_size)."""
    min_size = _min_size(spec)
    coded = sum(x.size for x in t.leaves if x.size >= min_size)
    return coded, t.size - coded


def _eight_bit(moments: int) -> CostModel:
    """8-bit Adam (2 moments), Lion and momentum (1): :func:`coded_moments` on
    the leaves of at least ``min_size`` entries, float32 moments elsewhere."""

    def model(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
        coded, small = _coded_sizes(t, spec)
        # SGD's weight decay comes before the momentum: every loop reads p too.
        decay_first = spec.name == "sgd_momentum_8bit" and float(hyper(spec, "weight_decay"))
        g = 2.0 if decay_first else 1.0
        return coded_moments(coded, moments, g) + elementwise(small, moments)

    return model


def _adam_like(extra_words: float = 0.0, extra_passes: float = 0.0) -> CostModel:
    def model(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
        return elementwise(t.size, 2 + extra_words, extra_passes)

    return model


def _radial(state_words: float) -> CostModel:
    """AdamP/SGDP: the per-channel cosine needs p and the update read again."""

    def model(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
        return elementwise(t.size, state_words, extra_passes=2)

    return model


def _fallback(t: TreeInfo) -> Cost:
    """AdamW on the leaves the router does not send to the matrix method."""
    return elementwise(t.fallback_size, 2)


def _muon_like(ns_steps: Callable[[optx.OptimizerSpec], int], extra_passes: float = 0.0):
    def model(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
        cost = _fallback(t) + elementwise(t.matrix_size, 1, extra_passes)
        steps = ns_steps(spec)
        for x in t.matrices:
            cost = cost + newton_schulz(x.view, steps)
        return cost

    return model


def _lipschitz_muon(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    cost = _muon_like(_steps)(t, spec)
    iters = int(hyper(spec, "power_iterations"))
    for x in t.matrices:  # power iteration on W for the spectral cap: two mat-vecs
        b, m, n = x.view
        cost = cost + Cost(4.0 * b * m * n * iters, WORD * x.size * 2)
    return cost


def _auon(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    # The cosh-RMS normalization is element-wise with per-matrix reductions.
    return _fallback(t) + elementwise(t.matrix_size, 1, extra_passes=1)


def _soap(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    freq = int(hyper(spec, "update_proj_gap"))
    max_dim = int(hyper(spec, "max_precond_dim"))
    cost = elementwise(t.size, 2, extra_passes=1)  # Adam moments (rotated) + factor input
    for view in t.dense_views():  # hidden matrices, embeddings and heads (official)
        b, m, n = view
        # Factor updates GGᵀ, GᵀG; the gradient rotated in, the update out.
        cost = cost + matmul(m, n, m, b) + matmul(n, m, n, b) + two_sided_rotation(view, 2)
        # Every f steps: power-QR of each basis, the first moment re-rotated.
        refresh = two_sided_rotation(view, 2).flops
        for d in (m, n):
            if d <= max_dim:
                refresh += 4.0 * b * d**3
                cost = cost + Cost(0.0, WORD * b * d * d * 4)  # factor + basis read/write
        cost = cost + _every(refresh, freq)
    return cost  # 1-D leaves: element-wise Adam (precondition_1d off)


def _conda(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    gap = int(hyper(spec, "update_proj_gap"))
    cost = _fallback(t) + elementwise(t.matrix_size, 2, extra_passes=1)
    for x in t.matrices:
        b, m, n = x.view
        d = min(m, n)
        # Q on the smaller side: rotate g and m in, the update back out.
        cost = cost + low_rank_projection(x.view, d, 3) + eigh(d, gap, b)
        cost = cost + _every(2.0 * b * m * n * d, gap)  # the SVD's Gram product
    return cost


def _cosmos(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    rank = int(hyper(spec, "rank"))
    cost = _fallback(t) + elementwise(t.matrix_size, 1, extra_passes=2)
    steps = _steps(spec)
    for x in t.matrices:
        b, m, n = x.view
        r = min(rank, m, n)
        # SOAP in the rank-r subspace (projections, r×r factor, eigh every step
        # of the official code) + Newton–Schulz on the residual.
        cost = cost + low_rank_projection(x.view, r, 4) + eigh(r, 1, b)
        cost = cost + newton_schulz(x.view, steps)
    return cost


def _low_rank_adam(
    t: TreeInfo, rank: int, state_words: float, projections: int, gap: int | None
) -> Cost:
    """Adam moments in an ``r × l`` projected space per matrix, ``projections``
    products with the basis per step, an SVD of the smaller side every ``gap``
    steps (``None``: a random basis, no decomposition)."""
    cost = _fallback(t) + elementwise(t.matrix_size, 0, extra_passes=1 if gap is None else 0)
    for x in t.matrices:
        b, m, n = x.view
        r = min(rank, m, n)
        cost = cost + elementwise(b * r * max(m, n), state_words)
        cost = cost + low_rank_projection(x.view, r, projections)
        if gap is not None:
            cost = cost + eigh(min(m, n), gap, b) + _every(2.0 * b * m * n * min(m, n), gap)
    return cost


def _galore_8bit(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    """GaLore with 8-bit Adam moments (:func:`coded_moments`) in the ``r × l``
    projected space of each matrix and on the fallback leaves."""
    rank, gap = int(hyper(spec, "rank")), int(hyper(spec, "update_proj_gap"))
    min_size = _min_size(spec)

    def adam8(n: float, output: bool) -> Cost:
        if n >= min_size:
            return coded_moments(n, 2, output=output)
        return elementwise(n, 2) if output else Cost(0.0, WORD * n * 6)

    cost = elementwise(t.matrix_size, 0)  # read g (projected in) and p, write p
    for x in t.leaves:
        if x.view is None:
            cost = cost + adam8(x.size, output=True)
            continue
        b, m, n = x.view
        r = min(rank, m, n)
        # The projections write the projected gradient and read the projected update.
        cost = cost + adam8(b * r * max(m, n), output=False)
        cost = cost + low_rank_projection(x.view, r, 2)
        cost = cost + eigh(min(m, n), gap, b) + _every(2.0 * b * m * n * min(m, n), gap)
    return cost


def _galore(state_words: float) -> CostModel:
    """Project in and back out; SVD refresh every ``update_proj_gap`` steps."""

    def model(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
        rank, gap = int(hyper(spec, "rank")), int(hyper(spec, "update_proj_gap"))
        return _low_rank_adam(t, rank, state_words, projections=2, gap=gap)

    return model


def _apollo(rank_of: Callable[[optx.OptimizerSpec], int]) -> CostModel:
    """Random projection in, Adam in the ``r × l`` space; the channel-wise norm
    ratio scales the raw gradient (one more read, no projection back)."""

    def model(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
        return _low_rank_adam(t, rank_of(spec), 2, projections=1, gap=None)

    return model


def _frugal(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    density = float(hyper(spec, "density"))
    return (
        _fallback(t)
        + elementwise(t.matrix_size * density, 2)
        + elementwise(t.matrix_size * (1 - density), 0)
    )


def _dct_adamw(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    rank = int(hyper(spec, "rank"))
    gap = int(hyper(spec, "update_proj_gap"))
    cost = _fallback(t) + elementwise(t.matrix_size, 0)
    for x in t.matrices:
        b, m, n = x.view
        d, r = min(m, n), min(rank, m, n)
        # Alignment scores of every DCT column (G·D on the smaller side) each
        # refresh; project in and out with the r chosen columns every step.
        cost = cost + _every(matmul(d, d, max(m, n), b).flops, gap)
        cost = cost + low_rank_projection(x.view, r, 2) + elementwise(b * r * max(m, n), 2)
    return cost


def _mfac(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    k = int(hyper(spec, "num_grads"))
    # Dynamic algorithm: k dot products with the gradient ring buffer, the
    # IHVP as a k-term combination (two reads of the k×d buffer, one row written).
    d = t.size
    return Cost(4.0 * k * d, WORD * d * (2 * k + 1)) + elementwise(d, 0) + Cost(2.0 * k**3, 0)


def _mkor(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
    inv_freq = int(hyper(spec, "update_interval"))
    router = optx.curvature.mkor_router()  # heads are layers too; embeddings are not
    views = {}
    for x in t.leaves:
        layout = router.layout(x.path, jax.ShapeDtypeStruct(x.shape, jnp.float32))
        if layout is not None:
            views[x.path] = optx.resolve_layout(layout, x.shape).matrix_shape
    sizes = sum(x.size for x in t.leaves if x.path in views)
    cost = elementwise(t.size - sizes, 1) + elementwise(sizes, 1)
    for b, m, n in views.values():
        # A⁻¹ G G⁻¹ every step; rank-1 Sherman–Morrison on both factors every inv_freq.
        cost = cost + matmul(m, m, n, b) + matmul(m, n, n, b)
        cost = cost + _every(4.0 * b * (m * m + n * n), inv_freq)
        cost = cost + Cost(0.0, WORD * b * (m * m + n * n))  # factors read
    return cost


def _curvature(
    state_words: float, oracle_passes: float, every: Callable[[optx.OptimizerSpec], int]
) -> CostModel:
    """Diagonal curvature methods: an oracle (HVP / sampled gradient of the
    surrogate loss: ``oracle_passes`` passes over the parameters) every
    ``every`` steps, then an element-wise update."""

    def model(t: TreeInfo, spec: optx.OptimizerSpec) -> Cost:
        k = every(spec)
        oracle = WORD * t.size * oracle_passes
        periodic = Cost(0.0, oracle) if k <= 1 else Cost(periodic_bytes=oracle / k)
        return elementwise(t.size, state_words) + periodic

    return model


def _interval(spec: optx.OptimizerSpec) -> int:
    return int(hyper(spec, "update_interval"))


COST_MODELS: Mapping[str, CostModel] = {
    "adabelief": _adam_like(),
    "adahessian": _curvature(2, oracle_passes=6, every=_interval),
    "adamp": _radial(2),
    "adamw": _adamw,
    "adamw_8bit": _eight_bit(2),
    "agvm_sgd": _curvature(1, oracle_passes=4, every=lambda s: 1),  # two half-batch grads
    "apollo": _apollo(lambda s: int(hyper(s, "rank"))),
    "apollo_mini": _apollo(lambda s: 1),
    "auon": _auon,
    "conda": _conda,
    "cosmos": _cosmos,
    "dct_adamw": _dct_adamw,
    "exadam": _adam_like(),
    "frugal": _frugal,
    "galore": _galore(2),
    "galore_8bit": _galore_8bit,
    "hybrid_auon": _muon_like(lambda s: 1, extra_passes=1),
    "lion": _one_moment,
    "lion_8bit": _eight_bit(1),
    "lion_kappa": _muon_like(_steps),
    "lipschitz_muon": _lipschitz_muon,
    "mfac": _mfac,
    "mkor": _mkor,
    "mkor_h": _mkor,
    "muon": _muon_like(_steps),
    "normuon": _muon_like(_steps, extra_passes=1),
    "root": _muon_like(_steps, extra_passes=1),  # + one selection pass for the quantile
    "sgd_momentum_8bit": _eight_bit(1),
    "sgd_sai": _one_moment,
    "sgdp": _radial(1),
    "soap": _soap,
    "sophia_g": _curvature(2, oracle_passes=4, every=_interval),
    "sophia_h": _curvature(2, oracle_passes=6, every=_interval),
    # Lower bounds: the element-wise base step only (LoRA-Pro's r x r eigendecompositions,
    # SoRA's gate threshold, EGGROLL's noise regeneration and WGSEF's per-group sort are
    # not modelled yet).
    "eggroll": _one_moment,
    "lora_pro": _adam_like(),
    "sora": _adam_like(),
    "wgsef": _one_moment,
}
"""Registered optimizer name -> cost model (see the module docstring)."""

REFERENCE_MODELS: Mapping[str, CostModel] = {
    "optax.adamw": _adamw,
    "optax.contrib.muon": _muon_like(lambda s: 5),
}


def cost_of(name: str, tree: TreeInfo) -> Cost:
    """The model's cost of optimizer ``name`` (registry defaults) on ``tree``."""
    if name in REFERENCE_MODELS:
        spec = optx.get_optimizer("adamw")
        return REFERENCE_MODELS[name](tree, spec)
    if name not in COST_MODELS:
        raise KeyError(f"No cost model for {name!r}; add one to benchmarks/roofline.py.")
    return COST_MODELS[name](tree, optx.get_optimizer(name))


# ----------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Peaks:
    """Measured peaks of this device (best of a few runs)."""

    flops: float  # float32 matmul FLOP/s
    bytes: float  # streaming bytes/s


def median_seconds(fn: Callable[[Any], Any], arg: Any, reps: int) -> float:
    """Median wall time of ``fn(arg)`` over ``reps`` calls after a warm-up."""
    jax.block_until_ready(fn(arg))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(
    matmul_size: int | None = None, stream_words: int | None = None, repeats: int = 5
) -> Peaks:
    """Peak float32 matmul FLOP/s and streaming bandwidth of the default device.

    A ``matmul_size``³ jitted matmul and ``y ← a·x + y`` over ``stream_words``
    floats (12 bytes per word: two reads, one write); best of ``repeats``. The
    defaults fit the device: 1024³ and 2²⁵ words on a CPU; 8192³ and 2²⁸ words
    (1 GiB per array, far past any cache) on an accelerator, where a 1024³
    product is too short to leave launch overhead behind.
    """
    accelerator = jax.default_backend() != "cpu"
    matmul_size = matmul_size or (8192 if accelerator else 1024)
    stream_words = stream_words or (1 << 28 if accelerator else 1 << 25)
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (matmul_size, matmul_size), jnp.float32)
    b = jax.random.normal(k2, (matmul_size, matmul_size), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    t_mm = _best_seconds(lambda: mm(a, b), repeats)
    x = jnp.ones((stream_words,), jnp.float32)
    box = [jnp.ones((stream_words,), jnp.float32)]
    # Donated: the output reuses y's buffer (no fresh pages to fault in per call).
    axpy = jax.jit(lambda x, y: 1.0001 * x + y, donate_argnums=1)

    def stream() -> jax.Array:
        box[0] = axpy(x, box[0])
        return box[0]

    t_st = _best_seconds(stream, repeats)
    return Peaks(flops=2.0 * matmul_size**3 / t_mm, bytes=12.0 * stream_words / t_st)


# ----------------------------------------------------------------------------
# CLI: the models' table
# ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python benchmarks/roofline.py", description=__doc__)
    p.add_argument("--preset", default="small", choices=sorted(_trees.PRESETS))
    p.add_argument("--scanned", action="store_true")
    p.add_argument("--no-calibrate", action="store_true")
    args = p.parse_args(argv)
    shape = dataclasses.replace(_trees.PRESETS[args.preset], scanned=args.scanned)
    tree = TreeInfo.from_params(_trees.gpt_param_shapes(shape))
    peaks = None if args.no_calibrate else calibrate()
    if peaks:
        print(
            f"device {jax.devices()[0].device_kind}: {peaks.flops / 1e9:.1f} GFLOP/s f32 matmul, "
            f"{peaks.bytes / 1e9:.1f} GB/s streaming\n"
        )
    print("| optimizer | GFLOP/step | MB/step | periodic GFLOP/step | bound ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in [*REFERENCE_MODELS, *optx.list_optimizers()]:
        c = cost_of(name, tree)
        bound = f"{1e3 * c.seconds(peaks.flops, peaks.bytes):.2f}" if peaks else "-"
        print(
            f"| {name} | {c.flops / 1e9:.3f} | {c.bytes / 1e6:.1f} | "
            f"{c.periodic_flops / 1e9:.3f} | {bound} |"
        )


if __name__ == "__main__":
    main()
