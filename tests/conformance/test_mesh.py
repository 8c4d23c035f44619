"""Conformance: sharded updates with and without a mesh context (DESIGN §5).

Every registered optimizer's jitted update runs on explicitly sharded arrays
whether or not ``jax.set_mesh`` is active, and gives the single-device numbers
both ways. One tree holds a row-sharded hidden kernel, a column-sharded stacked
kernel and a sharded fallback leaf (the embedding), on the 8 CPU devices of
``tests/conftest.py`` (``jax.make_mesh((8,), ('x',))``). Four configurations per
optimizer: Explicit or Auto axes, each with and without ``jax.set_mesh``; one
jitted step function serves them all (one compile per configuration) and the
unsharded reference.
"""

from __future__ import annotations

import contextlib
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
from tests import xla_options
from tests.conformance import problems

NAMES = optx.list_optimizers()
GROUPED = [pytest.param(n, marks=pytest.mark.xdist_group(n), id=n) for n in NAMES]

# A small tree (compile time grows with the leaf count): hidden/kernel (16, 16)
# with rows (fan_in) sharded and a bias (MKOR's 17-wide factor); stack/kernel
# (3, 16, 8) with columns (fan_out) sharded; embed/embedding, a fallback leaf,
# with columns sharded.
SPECS = {
    ("hidden", "kernel"): P("x", None),
    ("stack", "kernel"): P(None, None, "x"),
    ("embed", "embedding"): P(None, "x"),
}


def _params() -> Any:
    k = iter(jax.random.split(jax.random.key(5), 4))

    def n(shape: tuple[int, ...], scale: float = 0.3) -> jax.Array:
        return scale * jax.random.normal(next(k), shape, jnp.float32)

    return {
        "embed": {"embedding": n((16, 8))},
        "hidden": {"kernel": n((16, 16)), "bias": n((16,), 0.1)},
        "stack": {"kernel": n((3, 16, 8))},
    }


def _specs(params: Any) -> Any:
    # Full-length specs: jit outputs carry them, and an input placed with P()
    # would be keyed differently, compiling the step twice.
    specs = jax.tree.map(lambda x: P(*(None,) * x.ndim), params)
    for (a, b), s in SPECS.items():
        specs[a][b] = s
    return specs


# The Muon family under FSDP (Explicit axes, the default strategy): stack/kernel's three
# column-sharded matrices go through two all-to-alls with device-local Newton–Schulz, and
# hidden/kernel, a group of one matrix, is gathered once (cheaper than padding it to 8).
# The value is the number of all-gathers of whole matrices (not the loss's) allowed:
# lipschitz_muon's weight projection (spectral soft cap) is a second matrix function,
# with its own all-to-alls and its own gather of hidden/kernel.
FSDP_GATHERS = {"muon": 1, "normuon": 1, "root": 1, "hybrid_auon": 1, "lipschitz_muon": 2}
_COLLECTIVE = re.compile(r"= (.*?) (all-gather|all-to-all)(?:-start)?\(")


def _fsdp_collectives(hlo: str) -> tuple[int, int]:
    """(all-to-alls, all-gathers of >= 128 elements outside the loss's gradient) in ``hlo``."""
    a2a = gathers = 0
    for line in hlo.splitlines():
        m = _COLLECTIVE.search(line)
        if not m or "jvp(" in line:
            continue
        if m.group(2) == "all-to-all":
            a2a += 1
        elif any(
            np.prod([int(d) for d in dims.split(",") if d]) >= 128
            for dims in re.findall(r"\[([0-9,]*)\]", m.group(1))
        ):
            gathers += 1
    return a2a, gathers


def _step_fn(spec: optx.OptimizerSpec, tx: optax.GradientTransformationExtraArgs):
    key = jax.random.key(7)

    def step(params: Any, state: Any, i: jax.Array) -> tuple[Any, Any, Any]:
        _, grads, extra = problems.extra_args_for(spec, problems.mixed_loss, params, i, key)
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state, updates

    # Compared bit for bit with and without a mesh context: the production emitters.
    return jax.jit(step, compiler_options=xla_options.PRODUCTION)


def _run(step: Any, params: Any, state: Any, steps: int) -> list[tuple[Any, Any, Any]]:
    """[(params, state, updates)] after each of ``steps`` steps."""
    out = []
    for i in range(steps):
        params, state, updates = step(params, state, jnp.asarray(i))
        out.append((params, state, updates))
    return out


def _types(tree: Any) -> Any:
    return jax.tree.map(jax.typeof, tree)


def _assert_close(a: Any, b: Any, tol: float, what: str) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=1e-4 * tol, atol=1e-6 * tol, err_msg=what
        )


@pytest.mark.parametrize("name", GROUPED)
def test_sharded_update_with_and_without_set_mesh(name: str) -> None:
    spec = optx.get_optimizer(name)
    tx = spec.build(**spec.test_overrides)
    step = _step_fn(spec, tx)
    params = _params()
    specs = _specs(params)
    tol = spec.equivalence_tolerance
    results = {}
    for kind in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((8,), ("x",), axis_types=(kind,))
        sharded = jax.device_put(params, jax.tree.map(lambda s, m=mesh: NamedSharding(m, s), specs))
        shardings = optx.sharding.state_shardings(tx, sharded)
        for context in (False, True):
            where = f"{name}: {kind.name} axes, set_mesh={context}"
            with jax.set_mesh(mesh) if context else contextlib.nullcontext():
                state0 = tx.init(sharded)
                if kind == AxisType.Explicit:
                    # Sharded state is sharded as optx.sharding.state_shardings says.
                    for s, sh in zip(jax.tree.leaves(state0), jax.tree.leaves(shardings)):
                        if any(e is not None for e in sh.spec):
                            assert s.sharding.is_equivalent_to(sh, s.ndim), (where, s.sharding)
                # Placed as jax.jit(tx.init, out_shardings=shardings) would (without a
                # mesh context, eager init leaves replicated scalars on one device,
                # and under Auto axes it drops shardings), without compiling init.
                state0 = jax.device_put(state0, shardings)
                compiled = step._cache_size()
                # Explicit axes: two steps, the second reusing the first's program
                # (state types are stable). Auto axes: the compiler picks the output
                # shardings, so a second step would compile again; one is enough.
                out = _run(step, sharded, state0, 2 if kind == AxisType.Explicit else 1)
                assert step._cache_size() == compiled + 1, where
                if kind == AxisType.Explicit and context:
                    # The user's jax.jit(tx.init) types the state as the step returns it
                    # (a P() key where the step returns P(None,) compiled the step twice).
                    _run(step, sharded, jax.jit(tx.init)(sharded), 1)
                    assert step._cache_size() == compiled + 1, f"{where}: jit(init)'s state"
            if kind == AxisType.Explicit:
                assert _types(out[1][1]) == _types(out[0][1]), where
                if name in FSDP_GATHERS and not context:
                    hlo = step.lower(sharded, state0, jnp.asarray(0)).compile().as_text()
                    a2a, gathers = _fsdp_collectives(hlo)
                    assert a2a >= 2 and gathers <= FSDP_GATHERS[name], (where, a2a, gathers)
                for (a, b), ps in SPECS.items():
                    for p, _, u in out:
                        assert jax.typeof(u[a][b]).sharding.spec == ps, where
                        assert jax.typeof(p[a][b]).sharding.spec == ps, where
            results[kind, context] = [(u, s) for _, s, u in out]
        # The mesh context changes nothing: the same numbers either way.
        a, b = results[kind, False], results[kind, True]
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{name} {kind}")
    # Auto axes run the single-device code (types carry no sharding; the
    # compiler partitions it), so they are the reference for the Explicit path,
    # whose matrix math runs on sharded types (auto_axes, reshards).
    explicit, auto = results[AxisType.Explicit, False], results[AxisType.Auto, False]
    _assert_close(explicit[0], auto[0], tol, f"{name}: Explicit vs Auto axes")
    if spec.uses_matrix_path:  # the sharded leaves take the matrix path
        router = optx.router_of(tx)
        assert router is not None
        for path in ("hidden/kernel", "stack/kernel"):
            assert router.group(path, params[path.split("/")[0]]["kernel"]) == "matrix"
