"""Tests for optx._src.routing: rules, default routing, describe, routed()."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import optx


def _nnx_transformer_params():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(
                num_heads=2, in_features=16, qkv_features=16, decode=False, rngs=rngs
            )
            self.ln1 = nnx.LayerNorm(16, rngs=rngs)
            self.mlp = nnx.Linear(16, 32, rngs=rngs)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(10, 16, rngs=rngs)
            self.conv1 = nnx.Conv(3, 4, kernel_size=(3, 3), rngs=rngs)

            @nnx.split_rngs(splits=3)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(rngs):
                return Block(rngs)

            self.blocks = make(rngs)
            self.lm_head = nnx.Linear(16, 10, rngs=rngs)

    return nnx.state(Model(nnx.Rngs(0)), nnx.Param)


EXPECTED = {
    "blocks/attn/key/bias": ("fallback", None),
    "blocks/attn/key/kernel": ("matrix", optx.ATTENTION_IN),
    "blocks/attn/out/bias": ("fallback", None),  # stacked (L, d) bias: NOT a matrix
    "blocks/attn/out/kernel": ("matrix", optx.ATTENTION_OUT),
    "blocks/ln1/scale": ("fallback", None),  # stacked norm scale (L, d)
    "blocks/mlp/kernel": ("matrix", optx.DENSE),  # scanned (L, in, out) kernel
    "conv1/kernel": ("matrix", optx.conv_layout(2)),
    "conv1/bias": ("fallback", None),
    "embed/embedding": ("fallback", None),
    "lm_head/kernel": ("fallback", None),
}


def test_default_routing_of_an_nnx_model() -> None:
    state = _nnx_transformer_params()
    got = {a.path: (a.group, a.layout) for a in optx.default_router().assignments(state)}
    for path, want in EXPECTED.items():
        assert got[path] == want, path
    # Every leaf is assigned, and .value entries never leak into paths.
    assert all(not p.endswith("value") or "attn/value" in p for p in got)


def test_paths_strip_nnx_value_but_keep_dict_keys_named_value() -> None:
    state = _nnx_transformer_params()
    paths = [a.path for a in optx.default_router().assignments(state)]
    assert "blocks/attn/value/kernel" in paths


def test_describe_prints_a_table() -> None:
    state = _nnx_transformer_params()
    table = optx.describe(optx.muon(), state, print_table=False)
    assert "blocks/mlp/kernel" in table and "3 x (16x32)" in table
    assert "attention-in" in table
    assert table == optx.describe(optx.default_router(), state, print_table=False)
    with pytest.raises(ValueError, match="no routing information"):
        optx.describe(optax.adam(1e-3), state)


def test_custom_rules_take_precedence_and_glob_syntax() -> None:
    params = {"readout": {"kernel": jnp.ones((4, 4))}, "mlp": {"kernel": jnp.ones((4, 4))}}
    router = optx.default_router().with_rules(optx.Rule("readout/*", "fallback", syntax="glob"))
    labels = router.labels(params)
    assert labels == {"readout": {"kernel": "fallback"}, "mlp": {"kernel": "matrix"}}


def test_rule_producing_impossible_layout_names_the_leaf() -> None:
    router = optx.Router([optx.Rule(r".*", "matrix", optx.MatrixLayout((0,), (5,)))])
    with pytest.raises(ValueError, match="'w'"):
        router.assign("w", jnp.ones((4, 4)))
    no_layout = optx.Router([optx.Rule(r".*", "matrix")])
    with pytest.raises(ValueError, match="no layout"):
        no_layout.assign("w", jnp.ones((4, 4)))


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="Invalid rule pattern"):
        optx.Rule("(unclosed", "matrix")
    with pytest.raises(ValueError, match="syntax"):
        optx.Rule(".*", "matrix", syntax="sql")
    with pytest.raises(ValueError, match="non-empty"):
        optx.Rule(".*", "")
    with pytest.raises(TypeError):
        optx.Router(["not a rule"])


def test_routed_raises_for_groups_without_transform() -> None:
    router = optx.Router([optx.Rule(r"^w$", "exotic")], default_group="fallback")
    tx = optx.routed({"fallback": optax.sgd(0.1)}, router)
    with pytest.raises(ValueError, match="'w' -> 'exotic'"):
        tx.init({"w": jnp.ones(2), "b": jnp.ones(2)})


def test_routed_applies_each_group_transform() -> None:
    params = {"mlp": {"kernel": jnp.ones((4, 3))}, "b": jnp.ones(3)}
    tx = optx.routed({"matrix": optax.scale(2.0), "fallback": optax.scale(-1.0)})
    u, _ = tx.update(params, tx.init(params))
    assert float(u["mlp"]["kernel"][0, 0]) == 2.0 and float(u["b"][0]) == -1.0
    assert optx.router_of(tx) == optx.default_router()


def test_router_is_hashable_static_and_not_callable() -> None:
    r = optx.default_router()
    assert not callable(r)
    assert hash(r) == hash(optx.Router())
    tx = optax.inject_hyperparams(optx.muon, static_args=("ns_steps",))(
        learning_rate=0.02, router=r
    )
    params = {"mlp": {"kernel": jnp.ones((4, 3))}}
    jax.jit(tx.update)(params, tx.init(params), params)
