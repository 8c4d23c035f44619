"""Test problems and helpers for the conformance suite (DESIGN §6).

Every problem is a pure function of a parameter tree whose key paths route
through :func:`optx.default_router`: ``hidden/kernel`` leaves go to the matrix
path of matrix methods, ``bias``/``xy``/``embed`` leaves to the fallback. So
the matrix code path and the fallback are both exercised by the same suite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optx


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    init: Callable[[], Any]
    loss: Callable[[Any], jax.Array]
    solution: Any  # the minimizer (a param tree)
    steps: int


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def parabola() -> Problem:
    """``½ Σ h ⊙ (p − p*)²`` with mild curvature spread, on a matrix and a bias."""
    r = _rng(0)
    target = {
        "hidden": {"kernel": jnp.asarray(r.uniform(-0.5, 0.5, (6, 4)), jnp.float32)},
        "bias": jnp.asarray(r.uniform(-0.5, 0.5, (4,)), jnp.float32),
    }
    h = jax.tree.map(lambda t: jnp.asarray(r.uniform(0.5, 2.0, t.shape), jnp.float32), target)

    def loss(p: Any) -> jax.Array:
        terms = jax.tree.map(lambda x, t, c: 0.5 * jnp.sum(c * (x - t) ** 2), p, target, h)
        return sum(jax.tree.leaves(terms))

    return Problem("parabola", lambda: jax.tree.map(jnp.zeros_like, target), loss, target, 2000)


def rosenbrock() -> Problem:
    """The Rosenbrock function ``(1 − x)² + 10 (y − x²)²`` (minimum at (1, 1))."""
    target = {"xy": jnp.ones((2,), jnp.float32)}

    def loss(p: Any) -> jax.Array:
        x, y = p["xy"][0], p["xy"][1]
        return (1.0 - x) ** 2 + 10.0 * (y - x**2) ** 2

    return Problem("rosenbrock", lambda: {"xy": jnp.zeros((2,), jnp.float32)}, loss, target, 4000)


def matrix_least_squares() -> Problem:
    """``½‖X W + b − Y‖² / n`` with anisotropic inputs; ``(W*, b*)`` is exact."""
    r = _rng(1)
    n, d_in, d_out = 48, 8, 6
    scales = np.geomspace(0.3, 3.0, d_in)
    X = jnp.asarray(r.normal(size=(n, d_in)) * scales, jnp.float32)
    W = jnp.asarray(r.uniform(-0.5, 0.5, (d_in, d_out)), jnp.float32)
    b = jnp.asarray(r.uniform(-0.3, 0.3, (d_out,)), jnp.float32)
    Y = X @ W + b
    target = {"hidden": {"kernel": W}, "bias": b}

    def loss(p: Any) -> jax.Array:
        pred = X @ p["hidden"]["kernel"] + p["bias"]
        return 0.5 * jnp.sum((pred - Y) ** 2) / n

    return Problem(
        "matrix_least_squares", lambda: jax.tree.map(jnp.zeros_like, target), loss, target, 2000
    )


def quantized_least_squares() -> Problem:
    """``½ mean(q(X W + b − Y)²)`` with residuals quantized to steps of 0.05.

    Piecewise constant: its gradient is zero almost everywhere, so only a
    zeroth-order method (evolution strategies) can minimize it. The
    conformance problem of the ``'evolution'`` family
    (``tests/conformance/test_zeroth_order.py``); ``(W*, b*)`` is exact.
    """
    r = _rng(2)
    n, d_in, d_out = 16, 4, 3
    X = jnp.asarray(r.normal(size=(n, d_in)), jnp.float32)
    W = jnp.asarray(r.uniform(-0.5, 0.5, (d_in, d_out)), jnp.float32)
    b = jnp.asarray(r.uniform(-0.3, 0.3, (d_out,)), jnp.float32)
    Y = X @ W + b
    target = {"hidden": {"kernel": W}, "bias": b}

    def loss(p: Any) -> jax.Array:
        residual = X @ p["hidden"]["kernel"] + p["bias"] - Y
        return 0.5 * jnp.mean((0.05 * jnp.round(residual / 0.05)) ** 2)

    return Problem(
        "quantized_least_squares", lambda: jax.tree.map(jnp.zeros_like, target), loss, target, 300
    )


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "parabola": parabola,
    "rosenbrock": rosenbrock,
    "matrix_least_squares": matrix_least_squares,
}


def mixed_params(dtype: Any = jnp.float32, seed: int = 0) -> dict[str, Any]:
    """A tree exercising the routing cases: dense, stacked, conv, attention,
    embedding, head, norm, bias."""
    k = iter(jax.random.split(jax.random.key(seed), 16))

    def n(shape: tuple[int, ...], scale: float = 0.3) -> jax.Array:
        return (scale * jax.random.normal(next(k), shape)).astype(dtype)

    # Kept small: compile time dominates the suite and grows with the leaf count.
    # Each matrix leaf exercises a different layout: 2-D, a stack axis (3-D),
    # several reduction axes (conv) and several output axes (attention).
    return {
        "embed": {"embedding": n((12, 8))},
        "hidden": {"kernel": n((8, 16)), "bias": n((16,), 0.1)},
        "stack": {"kernel": n((3, 16, 8))},
        "conv": {"kernel": n((3, 3, 2, 4))},
        "attn": {"query": {"kernel": n((8, 2, 4))}},
        "ln": {"scale": jnp.ones((8,), dtype)},
        "head": {"kernel": n((8, 12))},
    }


def mixed_loss(params: Any) -> jax.Array:
    """A smooth loss over :func:`mixed_params` trees (a weighted quadratic with
    a quartic term, so Hessian-based methods see non-constant curvature)."""

    def leaf(x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        w = jnp.linspace(0.5, 1.5, x32.size).reshape(x32.shape)
        return jnp.sum(w * (x32 - 0.1) ** 2) + 0.05 * jnp.sum(x32**4)

    return sum(jax.tree.leaves(jax.tree.map(leaf, params)))


def extra_args_for(
    spec: optx.OptimizerSpec,
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    step: Any,
    key: Any,
    *,
    conjugate: bool = False,
) -> tuple[jax.Array, Any, dict[str, Any]]:
    """(loss, grads, extra_args) for one step of ``spec`` on ``loss_fn``.

    ``conjugate``: the gradients are ``conj(jax.grad)``, the descent direction
    of a real loss of complex parameters (tests/conformance/test_complex.py).
    """
    loss, grads = jax.value_and_grad(loss_fn)(params)
    if conjugate:
        grads = jax.tree.map(jnp.conj, grads)
    ctx = optx.ExtraArgsContext(
        loss_fn=loss_fn,
        params=params,
        grads=grads,
        loss=loss,
        key=jax.random.fold_in(key, step),
        step=step,
    )
    return loss, grads, spec.make_extra_args(ctx)


def run_steps(
    spec: optx.OptimizerSpec,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[Any], jax.Array],
    params: Any,
    steps: int,
    *,
    key: jax.Array | None = None,
) -> tuple[Any, Any]:
    """Runs ``steps`` jitted optimizer steps in a ``lax.scan``; returns (params, state)."""
    key = jax.random.key(0) if key is None else key
    state = tx.init(params)

    def body(carry: Any, step: jax.Array) -> tuple[Any, None]:
        p, s = carry
        _, grads, extra = extra_args_for(spec, loss_fn, p, step, key)
        u, s = tx.update(grads, s, p, **extra)
        return (optax.apply_updates(p, u), s), None

    (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, jnp.arange(steps)))(
        (params, state)
    )
    return params, state


def tree_rel_distance(a: Any, b: Any) -> float:
    num = optax.tree.norm(jax.tree.map(lambda x, y: x.astype(jnp.float32) - y, a, b))
    den = optax.tree.norm(b)
    return float(num / den)


def floating_state_leaves(state: Any) -> list[jax.Array]:
    return [
        x
        for x in jax.tree.leaves(state)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
    ]


def decaying(lr: float, steps: int) -> optax.Schedule:
    """Constant for the first half, then cosine decay to zero — what a
    fixed-step-size method (Muon, Lion, signSGD) needs to converge exactly."""
    half = steps // 2
    return optax.join_schedules(
        [optax.constant_schedule(lr), optax.cosine_decay_schedule(lr, steps - half)], [half]
    )


# ----------------------------------------------------------------------------
# Low-rank adapter problems (issue 15): the standard problems have no LoRA
# pairs, so adapter optimizers (registry family "adapters") are also run here.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdapterProblem:
    """A fine-tuning problem: adapters on frozen base weights (closed over by ``loss``).

    ``effective(params)`` maps the trainable tree to the weights the loss
    sees (``s·A diag(g) B`` per adapter, other leaves as is); convergence is
    measured there, since the factors themselves are not unique.
    """

    name: str
    init: Callable[[], Any]
    loss: Callable[[Any], jax.Array]
    effective: Callable[[Any], Any]
    target: Any
    steps: int


def _adapter_problem(name: str, gated: bool, seed: int) -> AdapterProblem:
    """``Σ_l ½‖X_l(W₀ + A_l diag(g_l) B_l) + b − Y_l‖²/n`` for a 2-D and a stacked
    ``(2, in, r)`` adapter; the targets are exactly rank 2 (the adapters have
    rank 3 with gates, 2 without)."""
    r = _rng(seed)
    n, d_in, d_out, rank = 32, 8, 6, 3 if gated else 2
    scales = np.geomspace(0.5, 2.0, d_in)

    def f32(x: Any) -> jax.Array:
        return jnp.asarray(x, jnp.float32)

    xs = {
        k: f32(r.normal(size=(*lead, n, d_in)) * scales)
        for k, lead in (("dense", ()), ("stack", (2,)))
    }
    w0 = {
        k: f32(r.normal(size=(*x.shape[:-2], d_in, d_out)) / np.sqrt(d_in)) for k, x in xs.items()
    }
    delta = {
        k: f32(
            0.5
            * r.normal(size=(*x.shape[:-2], d_in, 2))
            @ r.normal(size=(*x.shape[:-2], 2, d_out))
            / np.sqrt(d_in)
        )
        for k, x in xs.items()
    }
    b_true = f32(r.uniform(-0.3, 0.3, d_out))
    ys = {k: xs[k] @ (w0[k] + delta[k]) + b_true for k in xs}

    def init() -> Any:
        rr = _rng(seed + 100)
        params: dict[str, Any] = {"bias": jnp.zeros((d_out,), jnp.float32)}
        for k, x in xs.items():
            lead = x.shape[:-2]
            leaf = {
                "lora_a": f32(rr.uniform(-1, 1, (*lead, d_in, rank)) / np.sqrt(d_in)),
                "lora_b": jnp.zeros((*lead, rank, d_out), jnp.float32),
            }
            if gated:
                leaf["lora_gate"] = jnp.ones((*lead, rank), jnp.float32)
            params[k] = {"lora": leaf}
        return params

    def effective(p: Any) -> Any:
        out = {"bias": p["bias"]}
        for k in xs:
            ad = p[k]["lora"]
            out[k] = optx.lora.lora_delta(ad["lora_a"], ad["lora_b"], gate=ad.get("lora_gate"))
        return out

    def loss(p: Any) -> jax.Array:
        e = effective(p)
        total = 0.0
        for k, x in xs.items():
            pred = x @ (w0[k] + e[k].astype(jnp.float32)) + e["bias"].astype(jnp.float32)
            total = total + 0.5 * jnp.sum((pred - ys[k]) ** 2) / n
        return total

    return AdapterProblem(name, init, loss, effective, {"bias": b_true, **delta}, 1500)


def lora_least_squares() -> AdapterProblem:
    return _adapter_problem("lora_least_squares", gated=False, seed=3)


def gated_lora_least_squares() -> AdapterProblem:
    return _adapter_problem("gated_lora_least_squares", gated=True, seed=4)


ADAPTER_PROBLEMS: dict[str, Callable[[], AdapterProblem]] = {
    "lora_least_squares": lora_least_squares,
    "gated_lora_least_squares": gated_lora_least_squares,
}
