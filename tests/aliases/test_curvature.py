"""Curvature-family aliases: golden trajectories, optax.partition/masked, nnx.Optimizer."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optx

DATA = Path(__file__).parent.parent / "data"


def _case(name: str):
    meta = json.loads((DATA / f"{name}.json").read_text())
    return meta, np.load(DATA / f"{name}.npz")


def _quadratic_loss(z, names):
    """The golden cases' loss 0.5·Σ h w² + Σ b w (PyTorch layout; elementwise, so no transpose)."""
    h = {n: jnp.asarray(z[f"loss/h/{n}"]) for n in names}
    b = {n: jnp.asarray(z[f"loss/b/{n}"]) for n in names}
    return lambda p: sum(0.5 * jnp.sum(h[n] * p[n] ** 2) + jnp.sum(b[n] * p[n]) for n in names)


@dataclasses.dataclass(frozen=True)
class _InjectedHutchinson:
    """z ⊙ Hz with the golden case's recorded probe, passed as the ``probe`` extra arg."""

    requires = ("loss_fn", "probe")

    def __call__(self, extra, params, key):
        z = extra["probe"]
        return jax.tree.map(jnp.multiply, z, optx.curvature.hvp(extra["loss_fn"], params, z))


def test_sophia_h_golden_pytorch_optimizer() -> None:
    """pytorch-optimizer SophiaH(lr, p) == Sophia-H with η = lr·p, ρ = p (Gaussian probes)."""
    meta, z = _case("sophiah__public")
    names, hp = meta["param_order"], meta["hyperparameters"]
    loss_fn = _quadratic_loss(z, names)
    p = hp["p"]
    tx = optax.chain(
        optx.scale_by_sophia(
            *hp["betas"],
            gamma=p,
            tokens_per_batch=1.0,
            eps=p * hp["eps"],
            estimator=_InjectedHutchinson(),
            update_interval=hp["update_period"],
            refresh_at_start=True,
        ),
        optax.add_decayed_weights(hp["weight_decay"]),
        optax.scale_by_learning_rate(hp["lr"] * p),
    )
    params = {n: jnp.asarray(z[f"init/{n}"]) for n in names}
    state = tx.init(params)
    step = jax.jit(lambda g, s, p_, probe: tx.update(g, s, p_, loss_fn=loss_fn, probe=probe))
    for t in range(meta["T"]):
        grads = jax.grad(loss_fn)(params)
        for n in names:
            np.testing.assert_allclose(grads[n], z[f"grads/{n}"][t], atol=1e-6)
        probe = {
            n: jnp.asarray(z[f"inject/probe/{n}/step{t}"])
            if f"inject/probe/{n}/step{t}" in z
            else jnp.zeros_like(params[n])
            for n in names
        }
        u, state = step(grads, state, params, probe)
        params = optax.apply_updates(params, u)
        for n in names:
            np.testing.assert_allclose(
                params[n],
                z[f"params_after/{n}"][t],
                rtol=0,
                atol=meta["tolerance"]["params_after_atol"],
            )
    for n in names:
        np.testing.assert_allclose(state[0].mu[n], z[f"state/{n}/momentum"], atol=1e-6)


def test_adahessian_golden_official() -> None:
    meta, z = _case("adahessian__public")
    names, hp = meta["param_order"], meta["hyperparameters"]
    loss_fn = _quadratic_loss(z, names)
    # PyTorch layout; the 2-D weights are not conv kernels, so no averaging either way.
    tx = optx.adahessian(
        hp["lr"],
        *hp["betas"],
        hp["eps"],
        weight_decay=hp["weight_decay"],
        hessian_power=hp["hessian_power"],
    )
    params = {n: jnp.asarray(z[f"init/{n}"]) for n in names}
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn))
    for t in range(meta["T"]):
        u, state = step(jax.grad(loss_fn)(params), state, params)
        params = optax.apply_updates(params, u)
        for n in names:
            np.testing.assert_allclose(
                params[n],
                z[f"params_after/{n}"][t],
                rtol=0,
                atol=meta["tolerance"]["params_after_atol"],
            )


@pytest.mark.parametrize("case", ["mfac__public_f64", "mfac__public_f32"])
def test_mfac_golden_official(case: str) -> None:
    meta, z = _case(case)
    names, hp = meta["param_order"], meta["hyperparameters"]
    x64 = meta["dtype"] == "float64"
    with jax.enable_x64(x64):
        dtype = jnp.float64 if x64 else jnp.float32
        tx = optx.mfac(
            hp["lr"],
            hp["momentum"],
            weight_decay=hp["weight_decay"],
            num_grads=hp["ngrads"],
            damp=hp["damp"],
            compute_dtype=dtype,
        )
        params = {n: jnp.asarray(z[f"init/{n}"], dtype) for n in names}
        state = tx.init(params)
        step = jax.jit(tx.update)
        for t in range(meta["T"]):
            grads = {n: jnp.asarray(z[f"grads/{n}"][t], dtype) for n in names}
            u, state = step(grads, state, params)
            params = optax.apply_updates(params, u)
            for n in names:
                np.testing.assert_allclose(
                    np.asarray(params[n]),
                    z[f"params_after/{n}"][t],
                    rtol=0,
                    atol=meta["tolerance"]["params_after_atol"],
                )
        # The Gram matrix of the (wrapped-around) ring buffer, as in the reference.
        if x64:
            np.testing.assert_allclose(
                np.asarray(state[1].gram), z["state/global/dots"], rtol=1e-10, atol=1e-12
            )


# ----------------------------------------------------------------------------
# Inside optax.partition / optax.masked
# ----------------------------------------------------------------------------


def _problem():
    r = np.random.default_rng(4)
    x = jnp.asarray(r.normal(size=(12, 3)), jnp.float32)
    y = jnp.asarray(r.normal(size=(12, 2)), jnp.float32)
    params = {
        "l1": {
            "kernel": jnp.asarray(r.normal(size=(3, 5)), jnp.float32),
            "bias": jnp.zeros(5, jnp.float32),
        },
        "l2": {"kernel": jnp.asarray(r.normal(size=(5, 2)) * 0.5, jnp.float32)},
    }

    def loss_fn(p):
        h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
        return jnp.mean((h @ p["l2"]["kernel"] - y) ** 2)

    return params, loss_fn


def _kernel_labels(tree):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "curv" if optx.tree_utils.path_to_str(p).endswith("kernel") else "adam", tree
    )


CURVATURE = {
    "sophia_h": lambda: optx.sophia_h(0.05, refresh_at_start=True, update_interval=2),
    "sophia_g": lambda: optx.sophia_g(0.05, tokens_per_batch=12, refresh_at_start=True),
    "adahessian": lambda: optx.adahessian(0.05),
}


@pytest.mark.parametrize("name", sorted(CURVATURE))
@pytest.mark.parametrize("wrapper", ["partition", "masked"])
def test_inside_partition_and_masked(name: str, wrapper: str) -> None:
    params, loss_fn = _problem()
    sampled = lambda p, key: loss_fn(p)  # noqa: E731  (deterministic stand-in for GNB)
    if wrapper == "partition":
        tx = optax.partition({"curv": CURVATURE[name](), "adam": optax.adam(1e-3)}, _kernel_labels)
    else:
        tx = optax.masked(
            CURVATURE[name](),
            lambda t: jax.tree.map(lambda label: label == "curv", _kernel_labels(t)),
        )
    alone = CURVATURE[name]()
    state, state_alone = tx.init(params), alone.init(params)
    extra = optx.curvature.curvature_args(loss_fn, params, sampled_loss_fn=sampled)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
    step_alone = jax.jit(lambda g, s, p: alone.update(g, s, p, **extra))
    for _ in range(3):
        g = jax.grad(loss_fn)(params)
        u, state = step(g, state, params)
        u_alone, state_alone = step_alone(g, state_alone, params)
        # The curvature leaves get exactly the numbers of the optimizer on the full tree.
        for leaf in ("l1", "l2"):
            np.testing.assert_allclose(u[leaf]["kernel"], u_alone[leaf]["kernel"], rtol=1e-6)
    # Without the full tree the transform cannot evaluate loss_fn: a clear error.
    no_full = {k: v for k, v in extra.items() if k != "full_params"}
    with pytest.raises(ValueError, match="full_params"):
        tx.update(g, state, params, **no_full)


# ----------------------------------------------------------------------------
# Inside nnx.Optimizer (and a routed partition inside nnx.Optimizer)
# ----------------------------------------------------------------------------


class _Classifier(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.tanh(self.hidden(x)))


def _data():
    r = np.random.default_rng(5)
    x = jnp.asarray(r.normal(size=(16, 4)), jnp.float32)
    labels = jnp.asarray(r.integers(0, 3, size=(16,)), jnp.int32)
    return x, labels


def _ce(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch[0]), batch[1]).mean()


NNX_CASES = {
    "sophia_g": lambda: optx.sophia_g(0.02, tokens_per_batch=16, update_interval=2),
    "sophia_h": lambda: optx.sophia_h(0.02, update_interval=2),
    "adahessian": lambda: optx.adahessian(0.05),
    "routed_adahessian": lambda: optx.routed(
        {"matrix": optx.adahessian(0.05), "fallback": optx.adamw(1e-2)}
    ),
}


@pytest.mark.parametrize("name", sorted(NNX_CASES))
def test_inside_nnx_optimizer(name: str) -> None:
    batch = _data()
    model = _Classifier(nnx.Rngs(0))
    twin = _Classifier(nnx.Rngs(0))  # the same initial parameters, trained functionally
    opt = nnx.Optimizer(model, NNX_CASES[name](), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, i):
        loss, grads = nnx.value_and_grad(_ce)(model, batch)
        extra = optx.curvature.nnx_curvature_args(
            model, batch, _ce, logits_fn=lambda m, b: m(b[0]), key=jax.random.key(i)
        )
        opt.update(model, grads, **extra)
        return loss

    tx = NNX_CASES[name]()
    graphdef, params, rest = nnx.split(twin, nnx.Param, ...)
    params = nnx.as_pure(params)
    state = tx.init(params)

    def functional_loss(p):
        return _ce(nnx.merge(graphdef, p, rest, copy=True), batch)

    sampled = optx.curvature.sampled_label_loss(
        lambda p: nnx.merge(graphdef, p, rest, copy=True)(batch[0])
    )

    @jax.jit
    def functional_step(params, state, i):
        g = jax.grad(functional_loss)(params)
        u, state = tx.update(
            g,
            state,
            params,
            **optx.curvature.curvature_args(
                functional_loss, params, sampled_loss_fn=sampled, key=jax.random.key(i)
            ),
        )
        return optax.apply_updates(params, u), state

    losses = []
    for i in range(6):
        losses.append(float(step(model, opt, jnp.asarray(i))))
        params, state = functional_step(params, state, jnp.asarray(i))
    assert losses[-1] < losses[0]
    got = nnx.as_pure(nnx.state(model, nnx.Param))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mkor_h_forwards_every_argument_to_mkor() -> None:
    """``mkor_h(**kw)`` is ``mkor(**kw, hybrid=True)`` for every argument, each given a
    non-default value (inner Adam, so ``b1``/``b2``/``eps`` reach the numbers). A new
    argument of ``mkor_h`` must be added here."""
    kw = dict(
        momentum=0.7, nesterov=True, inner="adam", switch_window=2, switch_threshold=0.3,
        switch_min_steps=1, weight_decay=0.01, mask=None, b1=0.8, b2=0.95, eps=1e-3,
        update_interval=2, factor_decay=0.9, stabilization_factor=0.2,
        reset_mode="identity", reset_threshold=3.0, clip_value=50.0, warmup_steps=1,
        statistics="auto", factor_dtype="float32", router=None, nu_dtype=None,
        mu_dtype=None,
    )  # fmt: skip
    assert set(inspect.signature(optx.mkor_h).parameters) - {"learning_rate"} == set(kw)
    params = {"dense": {"kernel": jnp.ones((3, 2)) * 0.5, "bias": jnp.zeros(2)}}
    r = np.random.default_rng(0)
    grads = [
        jax.tree.map(lambda x: jnp.asarray(r.normal(size=x.shape), jnp.float32), params)
        for _ in range(4)
    ]

    def run(tx: optax.GradientTransformation) -> list[jax.Array]:
        state, out = tx.init(params), []
        for i, g in enumerate(grads):
            u, state = tx.update(g, state, params, loss=jnp.asarray(1.0 / (i + 1)))
            out += jax.tree.leaves(u)
        return out

    got = run(optx.mkor_h(0.01, **kw))
    for a, b in zip(got, run(optx.mkor(0.01, hybrid=True, **kw)), strict=True):
        np.testing.assert_array_equal(a, b)
    # The comparison sees the inner Adam's β₂ (a swapped argument would show).
    other = run(optx.mkor(0.01, hybrid=True, **{**kw, "b2": kw["b1"]}))
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, other)) > 1e-6


# ----------------------------------------------------------------------------
# Bad input and registry
# ----------------------------------------------------------------------------


def test_alias_bad_input() -> None:
    with pytest.raises(TypeError, match="tokens_per_batch"):
        optx.sophia_g(1e-4)  # B is required: the GNB estimator's scale
    with pytest.raises(ValueError):
        optx.sophia_g(1e-4, tokens_per_batch=-1)
    with pytest.raises(ValueError):
        optx.sophia_h(1e-4, distribution="cauchy")
    with pytest.raises(TypeError):
        optx.adahessian("fast")
    with pytest.raises(ValueError):
        optx.mfac(1e-3, num_grads=0)
    with pytest.raises(ValueError):
        optx.mkor_h(0.1, switch_window=0)


def test_registry_entries() -> None:
    names = set(optx.list_optimizers("curvature"))
    assert names == {"sophia_g", "sophia_h", "adahessian", "mfac", "mkor", "mkor_h"}
    spec = optx.get_optimizer("sophia_g")
    ctx = optx.ExtraArgsContext(
        loss_fn=lambda p: jnp.sum(p**2),
        params=jnp.ones(2),
        grads=2 * jnp.ones(2),
        loss=jnp.asarray(2.0),
        key=jax.random.key(0),
    )
    extra = spec.make_extra_args(ctx)
    assert {"loss_fn", "sampled_loss_fn", "full_params", "key", "loss", "captures"} <= set(extra)
    # The fallback sampled loss of a plain loss is the loss itself (empirical Fisher).
    assert float(extra["sampled_loss_fn"](jnp.ones(2), jax.random.key(1))) == 2.0


def test_registry_extra_args_build_sampled_loss_from_logits() -> None:
    spec = optx.get_optimizer("sophia_g")
    ctx = optx.ExtraArgsContext(
        loss_fn=lambda p: jnp.sum(p**2),
        params=jnp.zeros((2, 3)),
        grads=jnp.zeros((2, 3)),
        loss=jnp.asarray(0.0),
        key=jax.random.key(0),
        aux={"logits_fn": lambda p: p},
    )
    sampled = spec.make_extra_args(ctx)["sampled_loss_fn"]
    # Uniform logits: the sampled-label cross-entropy is log(3) whatever the labels.
    np.testing.assert_allclose(
        float(sampled(jnp.zeros((2, 3)), jax.random.key(1))), np.log(3.0), rtol=1e-6
    )
