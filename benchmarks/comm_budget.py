"""Communication budget of one optimizer step under FSDP (issue 16 §3).

Every parameter of a GPT-style tree is sharded FSDP-style over an 8-device ``data`` axis (its
largest axis that 8 divides; the rest replicated) and the optimizer state takes the shardings
:func:`optx.sharding.state_shardings` derives. The jitted ``tx.update`` alone is compiled (nothing
runs) and its HLO is read: every collective instruction, its result bytes and its replica
group, converted to the bytes one device *receives* (ring algorithms):

* all-gather, all-to-all: ``result × (g − 1)/g``;
* all-reduce: ``2 × result × (g − 1)/g`` (reduce-scatter + all-gather);
* reduce-scatter: ``result × (g − 1)``; collective-permute: ``result``.

The unit is ``P_mat``, the bytes of the parameters a matrix method orthogonalizes or
preconditions (the router's matrix leaves). AdamW needs no collective (element-wise, every
state leaf sharded like its parameter). The floor of distributed Muon (Jordan et al. 2024;
"each device orthogonalizes its share of whole matrices, the results are gathered once"):
with replicated gradients (DDP/ZeRO-1) one all-gather of the results,
``(N − 1)/N × P_mat``; under FSDP, where gradients arrive sharded and updates are applied
sharded, each device must receive its matrices whole and send their results back:
two all-to-alls, ``2 (N − 1)/N² × P_mat`` (0.22 P_mat at N = 8).

The collectives column counts instructions; the bytes count executions: a collective inside
a loop body (``while``) counts once per iteration where XLA knows the trip count
(``known_trip_count``; else once), and one inside a ``lax.cond`` branch counts as if it ran
every step. The "outside cond" column leaves
out the collectives of ``cond`` branches (their ``op_name`` holds ``/cond/``): the projector,
basis or factor refreshes SOAP, COSMOS and GaLore run once every ``update_proj_gap`` steps —
what every other step moves. The floor columns are each method's minimum (:func:`floor_pmat`),
total and outside ``cond``, and measured / floor.

Run (8 virtual CPU devices; compile only, a few minutes; ``--optimizers soap,cosmos``
restricts the rows)::

  PYTHONPATH=. python benchmarks/comm_budget.py --preset small
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
from typing import Any

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx
from benchmarks import _trees

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_INSTR = re.compile(
    r"=\s*(?P<type>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\((?P<rest>.*)$"
)
_COMMENT = re.compile(r"/\*.*?\*/")
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_IOTA_GROUPS = re.compile(r"replica_groups=\[([0-9,]+)\]<=")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "c64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2,
          "f16": 2, "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1, "c128": 16}  # fmt: skip

#: The methods issue 16 asks about, with the strategies they accept.
METHODS = (
    "adamw", "muon", "normuon", "root", "lipschitz_muon", "soap", "cosmos", "galore", "apollo",
    "dct_adamw",
)  # fmt: skip


def _array_bytes(text: str) -> list[int]:
    return [
        _BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
        for dt, dims in _ARRAY.findall(text)
    ]


def _group_size(rest: str, default: int) -> int:
    m = _IOTA_GROUPS.search(rest)
    if m:
        return int(m.group(1).split(",")[-1])
    m = _LIST_GROUPS.search(rest)
    if m:
        return len([g for g in m.group(1).split(",") if g])
    return default


_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s+\(.*->.*\{\s*$")
_CALLEE = re.compile(
    r"(?P<kind>body|condition|calls|to_apply|true_computation|false_computation)=%(?P<name>[\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{(?P<names>[^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(?P<n>[0-9]+)"\}')


def execution_counts(hlo: str) -> dict[str, int]:
    r"""How many times each computation of an HLO module runs per call of its entry.

    A ``while`` body (and condition) runs ``known_trip_count`` times per execution of the
    computation holding the loop (once where XLA does not know the count); a computation
    called from several places runs once per call site; ``cond`` branches count as run.

    Example:
      >>> hlo = "\n".join([
      ...     "%body (p: s32[]) -> s32[] {", "}",
      ...     "ENTRY %main (a: s32[]) -> s32[] {",
      ...     '  %w = s32[] while(%a), condition=%c, body=%body, '
      ...     'backend_config={"known_trip_count":{"n":"34"}}', "}"])
      >>> execution_counts(hlo)["body"]
      34
    """
    calls: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    current, entry = None, None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group("name")
            entry = current if line.startswith("ENTRY") else entry
            continue
        if current is None:
            continue
        trip = _TRIP_COUNT.search(line)
        for callee in _CALLEE.finditer(line):
            loop = callee.group("kind") in ("body", "condition") and trip
            calls[current].append((callee.group("name"), int(trip.group("n")) if loop else 1))
        for branches in _BRANCHES.finditer(line):
            for name in branches.group("names").split(","):
                calls[current].append((name.strip().lstrip("%"), 1))
    runs: collections.Counter[str] = collections.Counter()

    def visit(name: str, times: int) -> None:
        runs[name] += times
        for callee, factor in calls.get(name, []):
            visit(callee, times * factor)

    if entry is not None:
        visit(entry, 1)
    return dict(runs)


def collective_traffic(hlo: str, n_devices: int) -> dict[str, tuple[int, float]]:
    r"""``{collective: (instructions, bytes received per device per step)}`` of an HLO
    module's text (bytes weighted by :func:`execution_counts`).

    Example:
      >>> line = "%ag = f32[8,4]{1,0} all-gather(f32[1,4]{1,0} %x), replica_groups=[1,8]<=[8]"
      >>> collective_traffic(line, 8)["all-gather"]
      (1, 112.0)
      >>> looped = "\n".join([
      ...     "%body (p: f32[1,4]) -> f32[8,4] {", "  " + line, "}",
      ...     "ENTRY %main (a: f32[1,4]) -> f32[8,4] {",
      ...     '  %w = f32[8,4] while(%a), condition=%c, body=%body, '
      ...     'backend_config={"known_trip_count":{"n":"3"}}', "}"])
      >>> collective_traffic(looped, 8)["all-gather"]  # one instruction, three runs
      (1, 336.0)
    """
    count: collections.Counter[str] = collections.Counter()
    received: collections.Counter[str] = collections.Counter()
    runs = execution_counts(hlo)
    current = None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group("name")
            continue
        m = _INSTR.search(_COMMENT.sub("", line))
        if not m:
            continue
        op, rest = m.group("op"), m.group("rest")
        sizes = _array_bytes(m.group("type"))
        nbytes = sizes[-1] if m.group("start") else sum(sizes)  # async: (operand, result)
        g = _group_size(rest, n_devices)
        factor = {
            "all-gather": (g - 1) / g,
            "all-to-all": (g - 1) / g,
            "all-reduce": 2 * (g - 1) / g,
            "reduce-scatter": float(g - 1),
            "collective-permute": 1.0,
        }[op]
        count[op] += 1
        received[op] += nbytes * factor * runs.get(current, 1)
    return {c: (count[c], received[c]) for c in COLLECTIVES}


def outside_cond(hlo: str) -> str:
    """The lines of ``hlo`` whose ``op_name`` is not inside a ``lax.cond`` branch.

    Example:
      >>> outside_cond('a op_name="jit(f)/cond/branch_1_fun/svd"\\nb op_name="jit(f)/dot"')
      'b op_name="jit(f)/dot"'
    """
    return "\n".join(line for line in hlo.splitlines() if "/cond/" not in line)


def fsdp_params(preset: str, n: int) -> tuple[Any, jax.sharding.Mesh]:
    """The scanned GPT tree, each leaf's largest axis divisible by ``n`` sharded over ``data``."""
    mesh = jax.make_mesh((n,), ("data",), axis_types=(AxisType.Explicit,))
    shape = _trees.PRESETS[preset]
    shapes = _trees.gpt_param_shapes(
        _trees.GPTShape(**{**shape.__dict__, "scanned": True, "max_len": 0})
    )

    def spec(x: jax.ShapeDtypeStruct) -> P:
        axes: list[str | None] = [None] * x.ndim
        for a in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
            if x.shape[a] % n == 0:
                axes[a] = "data"
                break
        return P(*axes)

    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec(x))),
        shapes,
    )
    return params, mesh


def matrix_bytes(params: Any) -> int:
    """Bytes of the leaves the default router sends to the matrix path (``P_mat``)."""
    router = optx.default_router()
    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        if router.group(optx.tree_utils.path_to_str(path), x) != "fallback":
            total += x.size * x.dtype.itemsize
    return total


def step_hlo(tx: Any, params: Any, mesh: jax.sharding.Mesh) -> str:
    """HLO text of the compiled ``tx.update`` with FSDP in/out shardings."""
    shardings = jax.tree.map(lambda x: x.sharding, params)
    state_sh = optx.sharding.state_shardings(tx, params)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(tx.init, params),
        state_sh,
    )
    fn = jax.jit(
        lambda g, s, p: tx.update(g, s, p),
        in_shardings=(shardings, state_sh, shardings),
        out_shardings=(shardings, state_sh),
    )
    with jax.set_mesh(mesh):
        return fn.lower(params, state, params).compile().as_text()


def _nbytes(tree: Any) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _state_parts(state: Any, cls: type) -> list[Any]:
    """Every ``cls`` NamedTuple inside the optimizer state ``state``."""
    found: list[Any] = []

    def visit(x: Any) -> None:
        if isinstance(x, cls):
            found.append(x)
        elif isinstance(x, tuple | list):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y)

    visit(state)
    return found


def _projected_floor(tx: Any, params: Any, n: int, refresh_gathers: Any) -> tuple[float, float]:
    """(per refresh, steady) bytes of the GaLore family's floor: the projected gradient of
    a leaf whose projected axis is sharded is reduce-scattered and its direction
    gathered back (one all-reduce's bytes, ``2 (N − 1)/N × b r m``). A refresh
    (``refresh_gathers``) moves the gradient once: ``'projected'`` (DCT scores ``Dᵀ X``)
    a reduce-scatter where the projected axis is sharded (elsewhere the scores are local
    column sums), ``None`` (a random draw) nothing, and ``'any'`` (SVD) every matrix whose
    fan-in or fan-out is sharded whole on *one* device, as in distributed Muon: the SVD
    of a matrix needs all of it, but not on every device. The devices share the
    matrices, each receives its share whole, ``(N − 1)/N² × |X|`` summed over the
    leaves, and the owners send the new projectors back to the devices that store
    their rows (state sharded on ``d``), ``(N − 1)/N² × |P|``. A matrix whose mesh axes
    are all on the batch (stack) axis is decomposed where it lies, for nothing. (The
    earlier floor, every sharded leaf gathered whole on every device, ``(N − 1)/N ×
    |X|``, is what a replicated SVD costs.) optx's refresh reaches this bound up to
    padding: ``orthogonalization.map_fsdp_matrix_results`` sends each shape's group of
    ``T`` matrices through all-to-alls padded to a multiple of ``N``, so a device receives
    ``⌈T/N⌉`` matrices where the floor counts ``T/N``.

    A stored dense projector (``'any'``: GaLore's ``P``, ``d × r``) of a leaf whose
    projected axis is unsharded but whose other axis is sharded is gathered once per
    step, ``(N − 1)/N × |P|``: ``Pᵀ X[:, own]`` needs the whole ``P``, and the
    alternative (moving ``X`` to rows, ``|X|/N``, and reduce-scattering ``r × D``
    partial products) moves more whenever ``r < D``. ``P`` stays spread over the mesh
    as state: replicating these projectors puts galore_8bit at 1.19 × total/8 on
    ``benchmarks/state_memory.py`` (target 1.15), so this gather is part of the floor."""
    from optx._src import layouts, projection, sharding

    state = jax.eval_shape(tx.init, params)
    parts = _state_parts(state, projection.SubspaceState)
    resolve = layouts.resolved_layout_fn(optx.router_of(tx))
    flat = jax.tree_util.tree_leaves_with_path(params)
    steady = refresh = 0.0
    for part in parts:
        proj = jax.tree_util.tree_leaves_with_path(part.projector)
        rank = {optx.tree_utils.path_to_str(k): x.shape[-1] for k, x in proj}
        p_bytes = {optx.tree_utils.path_to_str(k): x.size * x.dtype.itemsize for k, x in proj}
        for path, x in flat:
            name = optx.tree_utils.path_to_str(path)
            lay = resolve(name, x)
            if name not in rank or lay is None:
                continue
            geo = projection.leaf_geometry(lay, "std", rank[name])
            view = sharding.matrix_view_specs(
                jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), lay
            )
            if view is None or all(v is None for v in view):
                continue
            if refresh_gathers == "any" and (view[1] is not None or view[2] is not None):
                refresh += (n - 1) / n**2 * (x.size * x.dtype.itemsize + p_bytes[name])
            elif refresh_gathers == "projected" and view[1 if geo.axis == "in" else 2] is not None:
                refresh += (n - 1) / n * x.size * x.dtype.itemsize
            if view[1 if geo.axis == "in" else 2] is not None:
                steady += 2 * (n - 1) / n * math.prod(geo.projected_shape()) * x.dtype.itemsize
            elif refresh_gathers == "any":
                steady += (n - 1) / n * p_bytes[name]
    return refresh, steady


def _soap_floor(tx: Any, params: Any, n: int) -> tuple[float, float]:
    """(steady, per refresh) bytes of SOAP's floor.

    A step of a leaf ``G`` (``m × d``, its mode of size ``d`` sharded over ``N``
    devices, the moments ``M``, ``V`` sharded like ``G``) needs on each device
    (a) its block of ``Vᵀ``'s update, the rotated gradient ``Q_mᵀ G Q_d[:, own]``,
    (b) its block of the direction ``Q_m D' Q_d[own, :]ᵀ``, and (c) its block of the
    factor ``Gᵀ G`` (``d × d``, sharded like ``Q_d``: ``G[:, own]ᵀ G``). (c) needs the
    whole ``G``: ``(N − 1)/N × |G|`` received, and the least any layout of the ``d × d``
    factor allows on a 1-D mesh; with ``G`` whole, (a) is local when ``Q_d`` is stored by
    columns. (b) is a contraction over the sharded rotated axis whose result is sharded on
    the other: each device holds ``D'[:, own]``, so either ``D'`` is gathered or the
    ``m × d`` partial products are reduce-scattered, ``(N − 1)/N × |G|`` either way. The
    bases of the other modes (``Q_m``, sharded over the mesh as state) are gathered once
    for (a) and (b): ``(N − 1)/N × |Q_m|``. The factor ``G Gᵀ`` is local from the whole
    ``G``. Per step: ``(N − 1)/N × (2 |G| + Σ |Q_other|)``. (A leaf with no or several
    sharded modes: three ``(N − 1)/N × |G|``, the generic estimate.)

    A refresh gathers every factor and basis once (eigh / QR run whole on every
    device), re-rotates the first moment into the new basis (a contraction over the
    sharded axis, ``(N − 1)/N × |M|``) and permutes ``V``'s entries by the new order
    (``(N − 1)/N × |V|``): ``(N − 1)/N × (|factors| + |bases| + 2 |G|)``."""
    from optx._src import layouts, sharding

    (part,) = _state_parts(jax.eval_shape(tx.init, params), optx.ScaleBySoapState)
    modes = {}  # leaf path -> bases per mode (None where unrotated)
    for i, tree in enumerate(part.bases):
        for path, q in jax.tree_util.tree_leaves_with_path(tree):
            modes.setdefault(optx.tree_utils.path_to_str(path), {})[i] = q
    from optx._src.aliases.rotated import fallback_matrix_layout

    router = optx.router_of(tx)
    resolve = layouts.resolved_layout_fn(router)
    extra = layouts.resolved_layout_fn(fallback_matrix_layout(router))  # embeddings, heads
    frac = (n - 1) / n
    steady = rotated = 0.0
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        name = optx.tree_utils.path_to_str(path)
        if name not in modes:
            continue
        size = x.size * x.dtype.itemsize
        rotated += size
        lay = resolve(name, x) or extra(name, x)
        view = None if lay is None else sharding.matrix_view_specs(x, lay)
        sharded = [] if view is None else [i for i in (0, 1) if view[1 + i] is not None]
        if len(sharded) == 1 and sharded[0] in modes[name]:
            others = [q for i, q in modes[name].items() if i != sharded[0]]
            steady += frac * (2 * size + sum(q.size * q.dtype.itemsize for q in others))
        else:
            steady += 3 * frac * size
    refresh = frac * (_nbytes(part.factors) + _nbytes(part.bases) + 2 * rotated)
    return steady, refresh


def floor_pmat(name: str, tx: Any, params: Any, n: int, p_mat: int) -> tuple[float, float] | None:
    """(static total, outside cond) floor of ``name`` in ``P_mat``, or None (not derived).

    * Muon family (muon, normuon, root): two all-to-alls, ``2 (N − 1)/N²``;
      lipschitz_muon two matrix functions (Newton–Schulz on the update, the spectral cap
      on the weights), twice that. The cap's FSDP groups are by shape alone, as
      Newton–Schulz's (each matrix's geometry scale travels as per-matrix data and a
      column-sharded matrix is capped transposed, the cap being spectral), so both pad
      alike; split by scale and orientation, the cap was at 1.42 of this floor.
    * SOAP: :func:`_soap_floor`.
    * COSMOS: Newton–Schulz of the residual on the Muon floor; the subspace coordinates
      ``Pᵀ X`` of a leaf whose fan-in (the subspace side) is sharded reduce-scattered and
      gathered back (its ``r × m`` second moment's bytes, twice; elsewhere they are
      local); the first step's eigh gathers the gradient once. COSMOS's ``lax.cond``
      is "first step (eigh) or power step", so its second branch runs on *every* later
      step and the "outside cond" column leaves it out: the step is that column plus
      the power step ``P' = QR(β P S + (1−β) X (Xᵀ P))``, ``C = P'ᵀ X`` (``X``: ``n × m``,
      ``P``: ``n × r``). Its floor: with the fan-in ``n`` sharded, ``Xᵀ P`` (``r × m``) is a
      contraction over the sharded axis that every device needs whole (an all-reduce,
      ``2 (N − 1)/N × |V|``), the tall ``n × r`` QR runs whole after one gather of its
      input (``(N − 1)/N × |P|``), and ``C`` (``r × m``), a contraction over the sharded
      axis too, is all-reduced (``2 (N − 1)/N × |V|``: ``V ← β V + (1−β) C²`` is
      replicated there, its state sharding); with the fan-out ``m`` sharded, ``P`` is
      replicated (its fan-in is not sharded) and ``X (Xᵀ P)`` (``n × r``) is all-reduced
      (``2 (N − 1)/N × |P|``), ``C`` is local (its columns). Either way one ``r × r``
      product is a contraction over the sharded axis (``Pᵀ P'`` with the fan-in sharded,
      ``C Cᵀ`` with the fan-out sharded: ``2 (N − 1)/N × |S|``), and with the fan-in
      sharded the ``m`` column norms of ``X`` (``C``'s roundoff floor, optx's
      determinism deviation) are summed too (``2 (N − 1)/N × m`` floats).
      ``bases.subspace_power_step_sharded`` is this schedule. This is in the total,
      not in the "outside cond" floor.
    * GaLore (SVD), DCT-AdamW (DCT scores), APOLLO (random, no refresh gather):
      :func:`_projected_floor`.
    """
    muon = 2 * (n - 1) / n**2
    if name == "adamw":
        return 0.0, 0.0
    if name in ("muon", "normuon", "root"):
        return muon, muon
    if name == "lipschitz_muon":
        return 2 * muon, 2 * muon
    if name == "soap":
        steady, refresh = _soap_floor(tx, params, n)
        return (steady + refresh) / p_mat, steady / p_mat
    if name == "cosmos":
        from optx._src import layouts, sharding

        (part,) = _state_parts(jax.eval_shape(tx.init, params), optx.ScaleByCosmosState)
        moved = _nbytes(part.mu)
        nu = {
            optx.tree_utils.path_to_str(k): v
            for k, v in jax.tree_util.tree_leaves_with_path(part.nu)
        }
        basis = {
            optx.tree_utils.path_to_str(k): v
            for k, v in jax.tree_util.tree_leaves_with_path(part.basis)
        }
        moment = {
            optx.tree_utils.path_to_str(k): v
            for k, v in jax.tree_util.tree_leaves_with_path(part.basis_moment)
        }
        resolve = layouts.resolved_layout_fn(optx.router_of(tx))
        coords = 0  # the r × m coordinates of leaves whose fan-in (the subspace side) is sharded
        power = 0.0  # the power step's (every step after the first, inside the cond)
        for path, x in jax.tree_util.tree_leaves_with_path(params):
            name_ = optx.tree_utils.path_to_str(path)
            lay = resolve(name_, x)
            if name_ not in nu or lay is None:
                continue
            view = sharding.matrix_view_specs(x, lay)
            v_bytes = nu[name_].size * nu[name_].dtype.itemsize
            p_bytes = basis[name_].size * basis[name_].dtype.itemsize
            s_bytes = moment[name_].size * moment[name_].dtype.itemsize
            if view is not None and view[1] is not None:
                coords += v_bytes
                norms = v_bytes // nu[name_].shape[-2]  # one float per column of X
                power += (n - 1) / n * (4 * v_bytes + p_bytes + 2 * s_bytes + 2 * norms)
            elif view is not None and view[2] is not None:
                power += (n - 1) / n * 2 * (p_bytes + s_bytes)
        steady = muon * moved + 2 * (n - 1) / n * coords
        return (steady + power + (n - 1) / n * moved) / p_mat, steady / p_mat
    if name in ("galore", "dct_adamw", "apollo"):
        how = {"galore": "any", "dct_adamw": "projected", "apollo": None}[name]
        refresh, steady = _projected_floor(tx, params, n, how)
        return (steady + refresh) / p_mat, steady / p_mat
    return None


def budget_rows(
    preset: str, n: int, methods: tuple[str, ...] = METHODS
) -> tuple[list[dict[str, Any]], int]:
    params, mesh = fsdp_params(preset, n)
    p_mat = matrix_bytes(params)
    rows = []
    for name in methods:
        spec = optx.get_optimizer(name)
        strategies: tuple[str | None, ...] = (None,)
        if "strategy" in __import__("inspect").signature(spec.factory).parameters:
            strategies = optx._src.sharding.STRATEGIES
        for strategy in strategies:
            kwargs = {} if strategy is None else {"strategy": strategy}
            tx = spec.build(**kwargs)
            hlo = step_hlo(tx, params, mesh)
            traffic = collective_traffic(hlo, n)
            total = sum(b for _, b in traffic.values())
            steady = sum(b for _, b in collective_traffic(outside_cond(hlo), n).values())
            floor = floor_pmat(name, tx, params, n, p_mat)
            rows.append(
                {
                    "method": name if strategy is None else f"{name} ({strategy})",
                    "counts": {c: k for c, (k, _) in traffic.items() if k},
                    "mb": total / 2**20,
                    "x_pmat": total / p_mat,
                    "x_pmat_steady": steady / p_mat,
                    "floor": floor,
                }
            )
    return rows, p_mat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=sorted(_trees.PRESETS))
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument(
        "--optimizers", default=",".join(METHODS), help="comma-separated registry names"
    )
    args = parser.parse_args()
    rows, p_mat = budget_rows(args.preset, args.devices, tuple(args.optimizers.split(",")))
    n = args.devices
    print(
        f"FSDP over {n} devices, preset {args.preset!r} (scanned): P_mat = {p_mat / 2**20:.2f} MB;"
        f" Muon floor {2 * (n - 1) / n**2:.3f} P_mat (FSDP), {(n - 1) / n:.3f} P_mat (ZeRO-1)"
    )
    print(
        "| method (strategy) | collectives | received MB/device | × P_mat | outside cond "
        "| floor (outside cond) | measured / floor |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        counts = ", ".join(f"{k} {c}" for c, k in r["counts"].items()) or "none"
        floor, ratio = "—", "—"
        if r["floor"] is not None:
            total, steady = r["floor"]
            floor = f"{total:.3f} ({steady:.3f})"
            if total > 0:
                ratio = f"{r['x_pmat'] / total:.2f}"
                if steady > 0:
                    ratio += f" ({r['x_pmat_steady'] / steady:.2f})"
        print(
            f"| {r['method']} | {counts} | {r['mb']:.2f} | {r['x_pmat']:.3f} "
            f"| {r['x_pmat_steady']:.3f} | {floor} | {ratio} |"
        )


if __name__ == "__main__":
    main()
