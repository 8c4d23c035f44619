"""Tests of optx/_src/quantization_kernels.py: the fused Pallas kernel of
``quantize_moments(kernel='pallas')`` against the XLA path (interpret mode on
CPU), its fallbacks, its refusals and its lowering for CUDA."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optx

# A leaf of whole tiles, one whose size is a multiple of neither the block nor
# the tile (masked tail), one below min_size (full precision), a bf16 leaf.
SHAPES = {"a": (64, 64), "d": (5000,), "s": (3,), "h": (8, 512)}
DTYPES = {"h": jnp.bfloat16}


def _tree(rng: np.random.Generator, scale: float = 1.0) -> dict:
    return {
        k: jnp.asarray(rng.standard_normal(s) * scale, DTYPES.get(k, jnp.float32))
        for k, s in SHAPES.items()
    }


def _pallas_calls(fn, *args) -> int:
    """Kernel calls in the traced step (each appears in a CUDA and an interpret
    branch). Counted over the equations, sub-jaxprs included: the printed
    jaxpr shows a kernel shared by two same-size leaves once."""

    def count(jaxpr: jax.extend.core.Jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == "pallas_call"
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        n += count(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        n += count(sub)
        return n

    return count(jax.make_jaxpr(fn)(*args).jaxpr) // 2


def _compare(make, steps: int, seed: int = 0) -> None:
    """Teacher-forced: each step of both kernels starts from the XLA path's state.
    Codes identical; block scales to one float32 ulp and updates to the
    quantization tests' tolerance: XLA:CPU contracts the moments' multiply-adds
    differently in the two programs (bit-identical without FMA, see
    ``test_bit_identical_without_fma``)."""
    rng = np.random.default_rng(seed)
    params = _tree(rng)
    txs = {k: make(k) for k in ("xla", "pallas")}
    fns = {k: jax.jit(tx.update) for k, tx in txs.items()}
    state = txs["xla"].init(params)
    assert _pallas_calls(txs["pallas"].update, params, state, params) == 3
    for _ in range(steps):
        grads = _tree(rng, 10.0 ** rng.uniform(-3, 1))
        (ux, sx), (up, sp) = (fns[k](grads, state, params) for k in ("xla", "pallas"))
        assert jax.tree.structure(sx) == jax.tree.structure(sp)
        for a, b in zip(jax.tree.leaves(sx), jax.tree.leaves(sp)):
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.dtype == jnp.uint8:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            else:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(ux), jax.tree.leaves(up)):
            assert a.dtype == b.dtype
            # bf16 updates: the float32 difference can move the rounding by one bf16 ulp.
            rtol = max(2e-5, float(jnp.finfo(a.dtype).eps))
            np.testing.assert_allclose(
                np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=1e-6
            )
        state = sx


def test_adamw_8bit_kernel_matches_xla_path() -> None:
    """Three steps of adamw_8bit: signed (mu) and unsigned (nu) maps, a masked
    tail, a min_size leaf on the XLA path, a bf16 leaf."""
    _compare(lambda k: optx.adamw_8bit(1e-3, min_size=64, kernel=k), steps=3)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: optx.lion_8bit(1e-3, min_size=64, kernel=k),
        lambda k: optx.sgd_momentum_8bit(1e-2, 0.9, True, min_size=64, kernel=k),
        # An inner that reads the parameter: the kernel loads it.
        lambda k: optx.quantization.quantize_moments(
            optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(0.1)),
            min_size=64,
            kernel=k,
        ),
    ],
    ids=["lion_8bit", "sgd_momentum_8bit_nesterov", "adam_with_decay_inner"],
)
def test_other_8bit_aliases_match_xla_path(make) -> None:
    _compare(make, steps=1, seed=1)


def test_bit_identical_without_fma() -> None:
    """Without FMA (``--xla_cpu_max_isa=SSE4_2``) both programs compute the same
    moments, so codes and block scales are bit-identical over several steps
    (a fresh process: XLA flags are read once)."""
    code = textwrap.dedent(
        """
        import jax, numpy as np, optx
        import jax.numpy as jnp
        rng = np.random.default_rng(2)
        shapes = {"d": (5000,)}
        tree = lambda s: {k: jnp.asarray(rng.standard_normal(v) * s, jnp.float32)
                          for k, v in shapes.items()}
        params = tree(1.0)
        tx = {k: optx.adamw_8bit(1e-3, min_size=64, kernel=k) for k in ("xla", "pallas")}
        state = {k: t.init(params) for k, t in tx.items()}
        for _ in range(3):
            g = tree(10.0 ** rng.uniform(-3, 1))
            out = {k: jax.jit(t.update)(g, state[k], params) for k, t in tx.items()}
            for a, b in zip(*(jax.tree.leaves(out[k][1]) for k in ("xla", "pallas"))):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(*(jax.tree.leaves(out[k][0]) for k in ("xla", "pallas"))):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
            state = {k: out[k][1] for k in out}
        print("identical")
        """
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and "identical" in run.stdout, run.stderr[-3000:]


class _State(NamedTuple):
    mu: Any


def _one_minus_square() -> optax.GradientTransformation:
    """``mu ← 1 − g²`` (element-wise): below 1 on every real entry, exactly 1 on
    the zeros a tile's masked tail loads."""

    def update(g, state, params=None):
        del params
        mu = jax.tree.map(lambda m, x: 0.0 * m + 1.0 - x * x, state.mu, g)
        return mu, _State(mu)

    return optax.GradientTransformation(lambda p: _State(jax.tree.map(jnp.zeros_like, p)), update)


def test_masked_tail_stays_out_of_the_block_maximum() -> None:
    """A leaf whose size is a multiple of neither the block nor the tile: the
    tail's padding entries (loaded as zeros) must not enter the last block's
    maximum, as the XLA path's zero padding does not."""
    params = {"d": jnp.zeros((1000,))}
    g = {"d": jnp.asarray(np.random.default_rng(5).uniform(0.05, 0.1, 1000), jnp.float32)}
    out = {}
    for k in ("xla", "pallas"):
        tx = optx.quantization.quantize_moments(_one_minus_square(), min_size=64, kernel=k)
        out[k] = jax.jit(tx.update)(g, tx.init(params))[1]
    scales = [np.asarray(out[k].absmax.mu["d"]) for k in ("xla", "pallas")]
    assert scales[0][-1] < 1.0
    np.testing.assert_array_equal(scales[0], scales[1])
    np.testing.assert_array_equal(
        np.asarray(out["xla"].inner_state.mu["d"]), np.asarray(out["pallas"].inner_state.mu["d"])
    )


def test_precise_evaluation_reproduces_the_inner(monkeypatch) -> None:
    """On CUDA the kernel evaluates the inner's jaxpr with float32 ``div`` and
    ``sqrt`` of tiles swapped for PTX instructions; with the plain operations
    in their place the evaluator (literals, inlined calls, several outputs)
    reproduces the inner bit for bit."""
    from optx._src import quantization_kernels as qk

    def plain(name, args, shape):
        args = [jnp.broadcast_to(jnp.asarray(a, jnp.float32), shape) for a in args]
        return args[0] / args[1] if name == "div" else jnp.sqrt(args[0])

    monkeypatch.setattr(qk, "_ptx", plain)
    tx = optx.scale_by_adam(0.9, 0.99, 1e-8)
    rng = np.random.default_rng(4)
    g, mu = (jnp.asarray(rng.standard_normal((2, 8)), jnp.float32) for _ in range(2))
    state = tx.init(g)._replace(mu=mu, nu=mu * mu, count=jnp.asarray(3, jnp.int32))
    want = jax.jit(tx.update)(g, state)

    def evaluated(g, state):
        closed, shape = jax.make_jaxpr(tx.update, return_shape=True)(g, state)
        outs = qk._eval_jaxpr(closed.jaxpr, closed.consts, *jax.tree.leaves((g, state)))
        return jax.tree.unflatten(jax.tree.structure(shape), outs)

    got = jax.jit(evaluated)(g, state)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _kernel_dtypes(fn, *args) -> set[tuple[tuple[str, ...], str]]:
    """Per kernel call of the traced step: the dtypes of its leaf-size operands
    (codes, gradient, parameter) and of its update output."""
    found = set()

    def visit(jaxpr: jax.extend.core.Jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                n = eqn.outvars[0].aval.size
                ins = tuple(str(v.aval.dtype) for v in eqn.invars if v.aval.size == n)
                found.add((ins, str(eqn.outvars[0].aval.dtype)))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        visit(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_leaves_are_widened_inside_the_kernel(dtype: jnp.dtype) -> None:
    """A bfloat16/float16 leaf's gradient and parameter enter the kernel as
    stored (widened to float32 in registers) and its update leaves it in the
    gradient's dtype: no widening pass before the kernel, no narrowing pass
    after it. The numbers are the XLA path's (``_compare`` runs a bf16 leaf)."""
    params = {"w": jnp.ones((64, 64), dtype)}
    inner = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(0.1))
    tx = optx.quantization.quantize_moments(inner, min_size=64, kernel="pallas")
    name = jnp.dtype(dtype).name
    found = _kernel_dtypes(tx.update, params, tx.init(params), params)
    assert found == {(("uint8", "uint8", name, name), name)}


def test_fallbacks_to_the_xla_path() -> None:
    """Leaves the kernel does not take run on the XLA path in the same step:
    a block size that is not a power of two, a full-precision moment next to a
    quantized one, a sharded leaf."""
    params = {"w": jnp.ones((64, 64)), "v": jnp.ones((32, 64))}

    def calls(**kw) -> int:
        tx = optx.quantization.quantize_moments(
            optax.scale_by_adam(), min_size=64, kernel="pallas", **kw
        )
        return _pallas_calls(tx.update, params, tx.init(params), params)

    assert calls() == 2
    assert calls(block_size=96) == 0
    assert calls(fields=("mu",)) == 0
    assert calls(full_precision="v") == 1
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with jax.set_mesh(mesh):
        sharded = {
            "w": jax.device_put(params["w"], NamedSharding(mesh, P("data", None))),
            "v": jax.device_put(params["v"], NamedSharding(mesh, P())),
        }
        tx = optx.quantization.quantize_moments(optax.scale_by_adam(), min_size=64, kernel="pallas")
        assert _pallas_calls(tx.update, sharded, tx.init(sharded), sharded) == 1


@pytest.mark.parametrize("context", [False, True])
def test_runs_on_an_explicit_mesh_with_and_without_set_mesh(context: bool) -> None:
    """Compiled and run (not only traced) on an Explicit mesh: a replicated leaf on
    the kernel next to a sharded one on the XLA path gives the XLA path's numbers,
    with or without ``jax.set_mesh`` (under it, Pallas' interpret-mode lowering had
    failed on the replicated leaf: a tile got sharded types)."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(3)
    specs = {"w": P("data", None), "v": P()}
    params = {
        k: jax.device_put(
            jnp.asarray(rng.standard_normal((32, 64)), jnp.float32), NamedSharding(mesh, s)
        )
        for k, s in specs.items()
    }
    grads = jax.tree.map(lambda x: 0.1 * x + 0.01, params)
    out = {}
    with jax.set_mesh(mesh) if context else contextlib.nullcontext():
        for kernel in ("xla", "pallas"):
            tx = optx.adamw_8bit(1e-3, min_size=64, block_size=64, kernel=kernel)
            state = tx.init(params)
            if kernel == "pallas":
                assert _pallas_calls(tx.update, grads, state, params) == 1
            out[kernel] = jax.jit(tx.update)(grads, state, params)
    for a, b in zip(jax.tree.leaves(out["xla"]), jax.tree.leaves(out["pallas"])):
        assert jax.typeof(a).sharding.spec == jax.typeof(b).sharding.spec
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize(
    "name, varied, kwargs",
    [
        ("adamw_8bit", "b1", {"learning_rate": 1e-3, "b1": 0.8}),
        ("lion_8bit", "b2", {"learning_rate": 1e-3, "b2": 0.9}),
        (
            "sgd_momentum_8bit",
            "momentum",
            {"learning_rate": 1e-2, "momentum": 0.8, "nesterov": True},
        ),
    ],
)
def test_injected_hyperparameters_are_kernel_inputs(name: str, varied: str, kwargs: dict) -> None:
    """``optax.inject_hyperparams(optx.adamw_8bit)(..., kernel='pallas')``: the inner's
    ``b1``/``b2``/``eps`` are traced values the kernel cannot capture (it had raised,
    then fallen back to the XLA path); they are now kernel inputs. With one injected
    value changed between steps, three steps give the XLA path's codes and updates."""
    params = {"w": jnp.full((64, 64), 0.1), "b": jnp.ones((5000,))}
    static = optx.get_optimizer(name).all_static_args()
    out, states = {}, {}
    for kernel in ("xla", "pallas"):
        tx = optax.inject_hyperparams(getattr(optx, name), static_args=static)(
            **kwargs, min_size=0, kernel=kernel
        )
        state = tx.init(params)
        grads = jax.tree.map(lambda x: 0.3 * x + 0.01, params)
        if kernel == "pallas":
            assert _pallas_calls(tx.update, grads, state, params) == 2
        step = jax.jit(tx.update)
        for t, value in enumerate((0.8, 0.5, 0.95)):
            state.hyperparams[varied] = jnp.asarray(value)
            grads = jax.tree.map(lambda x, t=t: (t + 1) * x - 0.02 * t, grads)
            out[kernel], state = step(grads, state, params)
        states[kernel] = state
    for a, b in zip(jax.tree.leaves(states["xla"]), jax.tree.leaves(states["pallas"])):
        if a.dtype == jnp.uint8:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["xla"]), jax.tree.leaves(out["pallas"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-9)


def test_injected_value_changes_the_kernels_result() -> None:
    """The injected ``b1`` is read by the kernel, not frozen at trace time: one
    jitted update with two values of ``b1`` gives two different first moments."""
    params = {"w": jnp.full((64, 64), 0.1)}
    quantization = optx.quantization

    def adam_8bit(b1: float) -> optax.GradientTransformation:
        return quantization.quantize_moments(
            optax.scale_by_adam(b1=b1), min_size=0, kernel="pallas"
        )

    tx = optax.inject_hyperparams(adam_8bit)(b1=0.9)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for b1 in (0.9, 0.1):
        state.hyperparams["b1"] = jnp.asarray(b1)
        _, new = step(jax.tree.map(jnp.ones_like, params), state, params)
        codes = new.inner_state.inner_state.mu["w"]
        scales = new.inner_state.absmax.mu["w"]
        mu = quantization.dequantize_blockwise(quantization.QuantizedArray(codes, scales))
        np.testing.assert_allclose(np.asarray(mu), 1 - b1, rtol=1e-6)


def _flagged_momentum(flag: jax.Array, power: jax.Array) -> optax.GradientTransformation:
    """``mu ← 0.5 mu + (g if flag else -g)^power``: closes over a traced boolean and
    a traced integer when injected."""
    tr = optax.trace(0.5)

    def update(g, state, params=None):
        del params
        g = jax.tree.map(lambda x: jnp.where(flag, x, -x) ** power, g)
        return tr.update(g, state)

    return optax.GradientTransformation(tr.init, update)


def test_injected_boolean_and_integer_are_kernel_inputs() -> None:
    """A traced boolean (which travels as int32: Triton loads no booleans) and a
    traced integer reach the kernel: the XLA path's codes for both values of the
    flag, in one compiled update."""
    params = {"w": jnp.full((64, 64), 0.1)}
    grads = {"w": jnp.asarray(np.random.default_rng(6).uniform(0.1, 1.0, (64, 64)), jnp.float32)}
    out = {}
    for kernel in ("xla", "pallas"):
        make = lambda flag, power, k=kernel: optx.quantization.quantize_moments(  # noqa: E731
            _flagged_momentum(flag, power), min_size=0, kernel=k
        )
        tx = optax.inject_hyperparams(make)(flag=jnp.asarray(True), power=jnp.asarray(3))
        state = tx.init(params)
        if kernel == "pallas":
            assert _pallas_calls(tx.update, grads, state) == 1
        step = jax.jit(tx.update)
        out[kernel] = []
        for flag in (True, False):
            state.hyperparams["flag"] = jnp.asarray(flag)
            out[kernel].append(step(grads, state))
    for a, b in zip(jax.tree.leaves(out["xla"]), jax.tree.leaves(out["pallas"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first, second = (np.asarray(u["w"]) for u, _ in out["pallas"])
    np.testing.assert_allclose(first, -second)


def test_non_scalar_captured_array_runs_on_the_xla_path() -> None:
    """An inner closing over an array of more than one entry (no tile of it in the
    kernel) runs on the XLA path, with a warning, and gives its numbers."""
    params = {"w": jnp.full((64, 64), 0.1)}
    grads = {"w": jnp.full((64, 64), 0.3)}
    weights = jnp.linspace(0.5, 1.5, 4096).reshape(64, 64)

    def scaled_momentum(inner_weights: jax.Array) -> optax.GradientTransformation:
        tr = optax.trace(0.9)
        return optax.GradientTransformation(
            tr.init, lambda g, s, p=None: tr.update(jax.tree.map(lambda x: x * inner_weights, g), s)
        )

    out = {}
    for kernel in ("xla", "pallas"):
        tx = optx.quantization.quantize_moments(scaled_momentum(weights), min_size=0, kernel=kernel)

        def update(g, s, p, tx=tx):
            return tx.update(g, s, p)

        state = tx.init(params)
        if kernel == "pallas":
            with pytest.warns(UserWarning, match="more than one entry"):
                assert _pallas_calls(update, grads, state, params) == 0
        out[kernel] = jax.jit(update)(grads, state, params)
    for a, b in zip(jax.tree.leaves(out["xla"]), jax.tree.leaves(out["pallas"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_refuses_non_elementwise_inner_and_bad_names() -> None:
    params = {"w": jnp.ones((64, 64))}
    tx = optx.quantization.quantize_moments(
        optax.chain(optax.scale_by_adam(), optax.normalize_by_update_norm()),
        min_size=64,
        kernel="pallas",
    )
    with pytest.raises(ValueError, match=r"element-wise.*reduce_sum"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="kernel"):
        optx.quantization.quantize_moments(optax.scale_by_adam(), kernel="triton")
    with pytest.raises(ValueError, match="kernel"):
        optx.adamw_8bit(1e-3, kernel="cuda")


@pytest.mark.parametrize("injected", [False, True], ids=["plain", "inject_hyperparams"])
def test_kernel_lowers_for_cuda_with_triton(injected: bool) -> None:
    """The whole adamw_8bit step exports for CUDA without a GPU: one Triton
    kernel per quantized leaf, the reciprocal and Adam's division and square
    root as ``div.rn.f32`` / ``sqrt.rn.f32`` (not libdevice's), no interpret
    loop; also with its hyper-parameters injected (kernel inputs)."""
    try:
        from jax.experimental.pallas import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the installed jaxlib
        pytest.skip(f"this jaxlib has no Pallas Triton lowering: {e}")
    params = {"a": jnp.zeros((64, 64)), "d": jnp.zeros((5000,)), "s": jnp.zeros(3)}
    if injected:  # b1, b2, eps and the weight decay as traced values: kernel inputs
        static = optx.get_optimizer("adamw_8bit").all_static_args()
        tx = optax.inject_hyperparams(optx.adamw_8bit, static_args=static)(
            1e-3, min_size=64, kernel="pallas"
        )
    else:
        tx = optx.adamw_8bit(1e-3, min_size=64, kernel="pallas")
    exported = jax.export.export(
        jax.jit(tx.update),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(params, tx.init(params), params)
    text = exported.mlir_module()
    calls = [line for line in text.splitlines() if "custom_call @__gpu$xla.gpu.triton" in line]
    assert len(calls) == 2 and all('name = "quantized_moments_step"' in c for c in calls)
    assert "div.rn.f32" in text and "sqrt.rn.f32" in text and "__nv_sqrtf" not in text
    assert "stablehlo.while" not in text
