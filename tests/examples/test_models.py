"""Tests for examples/models.py: shapes, scan equivalence, causality, RoPE, routing."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optx
from examples import models

TINY = models.TransformerConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, max_len=8)


def _params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize(("positions", "tied"), [("rope", False), ("learned", True)])
def test_transformer_shapes_and_paths(scan: bool, positions: str, tied: bool) -> None:
    cfg = dataclasses.replace(TINY, scan_layers=scan, positions=positions, tie_embeddings=tied)
    model = models.TransformerLM(cfg, rngs=nnx.Rngs(0))
    logits = model(jnp.zeros((3, 8), jnp.int32))
    assert logits.shape == (3, 8, 11) and logits.dtype == jnp.float32
    p = _params(model)
    assert ("lm_head" in p) is (not tied)
    assert ("pos_embed" in p) is (positions == "learned")
    block = p["blocks"] if scan else p["blocks"][0]
    lead = (2,) if scan else ()
    assert block["attn"]["query"]["kernel"].shape == (*lead, 16, 2, 8)
    assert block["attn"]["out"]["kernel"].shape == (*lead, 2, 8, 16)
    assert block["mlp"]["up"]["kernel"].shape == (*lead, 16, 64)


def _stack_blocks(unscanned: dict, n_layers: int) -> dict:
    blocks = [unscanned["blocks"][i] for i in range(n_layers)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return {**unscanned, "blocks": stacked}


def test_scanned_model_computes_the_unscanned_function() -> None:
    plain = models.TransformerLM(TINY, rngs=nnx.Rngs(1))
    scanned = models.TransformerLM(dataclasses.replace(TINY, scan_layers=True), rngs=nnx.Rngs(2))
    state = nnx.state(scanned, nnx.Param)
    nnx.replace_by_pure_dict(state, _stack_blocks(_params(plain), TINY.n_layers))
    nnx.update(scanned, state)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, TINY.vocab_size)
    np.testing.assert_allclose(scanned(tokens), plain(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_transformer_is_causal(positions: str) -> None:
    model = models.TransformerLM(dataclasses.replace(TINY, positions=positions), rngs=nnx.Rngs(0))
    tokens = jnp.arange(8, dtype=jnp.int32)[None] % TINY.vocab_size
    changed = tokens.at[0, 5].set(10)
    a, b = model(tokens), model(changed)
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(a[:, 5:] - b[:, 5:]))) > 1e-4


def _np_rope(x: np.ndarray, base: float = 10_000.0) -> np.ndarray:
    """Rotary embedding from RoFormer (arXiv 2104.09864, Eq. 34), "rotate-half" pairing."""
    _, length, _, d = x.shape
    theta = base ** (-np.arange(0, d, 2) / d)
    ang = np.arange(length)[:, None] * theta[None, :]
    c, s = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def test_rope_matches_reference_and_is_relative() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 2, 8))
    cos, sin = models.rope_tables(6, 8)
    got = np.asarray(models.apply_rope(jnp.asarray(x, jnp.float32), cos, sin))
    np.testing.assert_allclose(got, _np_rope(x), rtol=1e-5, atol=1e-5)
    # <R_m q, R_n k> depends only on m - n.
    q, k = rng.normal(size=8), rng.normal(size=8)
    seq_q = np.broadcast_to(q, (1, 6, 1, 8)).copy()
    seq_k = np.broadcast_to(k, (1, 6, 1, 8)).copy()
    rq, rk = _np_rope(seq_q)[0, :, 0], _np_rope(seq_k)[0, :, 0]
    got_q = np.asarray(models.apply_rope(jnp.asarray(seq_q, jnp.float32), cos, sin))[0, :, 0]
    np.testing.assert_allclose(got_q, rq, rtol=1e-5, atol=1e-5)
    assert np.isclose(rq[3] @ rk[1], rq[4] @ rk[2], atol=1e-8)


def test_default_router_routes_the_transformer() -> None:
    model = models.TransformerLM(dataclasses.replace(TINY, scan_layers=True), rngs=nnx.Rngs(0))
    labels = {a.path: a.group for a in optx.default_router().assignments(_params(model))}
    matrix = {p for p, g in labels.items() if g == "matrix"}
    assert matrix == {
        f"blocks/{m}/kernel"
        for m in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp/up", "mlp/down")
    }


def test_cnn_and_mlp_shapes_and_routing() -> None:
    cnn = models.CNN((8, 8, 1), rngs=nnx.Rngs(0))
    assert cnn(jnp.zeros((4, 8, 8, 1))).shape == (4, 10)
    mlp = models.MLP(64, (32, 16), rngs=nnx.Rngs(0))
    assert mlp(jnp.zeros((4, 8, 8, 1))).shape == (4, 10)
    groups = {a.path: a.group for a in optx.default_router().assignments(_params(cnn))}
    assert groups["conv1/kernel"] == groups["conv2/kernel"] == groups["dense/kernel"] == "matrix"
    assert groups["head/kernel"] == "fallback"
    groups = {a.path: a.group for a in optx.default_router().assignments(_params(mlp))}
    assert groups["layers/0/kernel"] == groups["layers/1/kernel"] == "matrix"
    assert groups["head/kernel"] == "fallback"


def test_losses_and_a_few_optx_steps_reduce_the_loss() -> None:
    model = models.TransformerLM(dataclasses.replace(TINY, scan_layers=True), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 9), 0, TINY.vocab_size)
    batch = (tokens[:, :-1], tokens[:, 1:])
    opt = nnx.Optimizer(model, optx.muon(0.02, adam_lr_ratio=1.0), wrt=nnx.Param)

    @nnx.jit
    def step(model: models.TransformerLM, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(models.lm_loss)(model, batch)
        opt.update(model, grads)
        return loss

    first = float(step(model, opt))
    assert np.isclose(first, np.log(TINY.vocab_size), atol=0.3)
    for _ in range(8):
        last = float(step(model, opt))
    assert last < first - 0.5

    cnn = models.CNN((8, 8, 1), rngs=nnx.Rngs(0))
    images, labels = jnp.zeros((2, 8, 8, 1)), jnp.array([1, 2])
    expected = optax.softmax_cross_entropy_with_integer_labels(cnn(images), labels).mean()
    np.testing.assert_allclose(models.classification_loss(cnn, (images, labels)), expected)
    assert 0.0 <= float(models.accuracy(cnn, (images, labels))) <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"d_model": 10, "n_heads": 4},
        {"n_layers": 0},
        {"positions": "alibi"},
        {"d_model": 6, "n_heads": 2},  # odd head dim with RoPE
        {"vocab_size": 2.5},
    ],
)
def test_bad_transformer_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(TINY, **kwargs)


def test_bad_inputs() -> None:
    model = models.TransformerLM(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_len"):
        model(jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="image_shape"):
        models.CNN((8, 8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channels"):
        models.CNN((8, 8, 1), channels=(4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden"):
        models.MLP(4, (), rngs=nnx.Rngs(0))
