"""Model zoo for optx.router_for: Flax models written the way users write them.

Each model has a table of where every parameter must go — its group and the
``(batch, fan_in, fan_out)`` matrix view (None off the matrix path) — checked for
:func:`optx.router_for` and, where the names allow it, for the plain name rules
(:func:`optx.default_router`). Models are tiny; linen models and one NNX model
are only ever initialized abstractly.
"""

from __future__ import annotations

import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optx

SDS = jax.ShapeDtypeStruct
F, M = "fallback", "matrix"
NAMES_CANNOT_KNOW = object()  # a leaf the name rules cannot route like the model


def _abstract(make: Any) -> Any:
    """An NNX model with ShapeDtypeStruct variables (nothing is computed or compiled)."""
    return nnx.eval_shape(lambda: make(nnx.Rngs(0)))


def _views(router: optx.Router, params: Any) -> dict[str, tuple[str, Any]]:
    out = {}
    for a in router.assignments(params):
        view = None
        if a.layout is not None:
            view = optx.MatrixLayout.resolve(a.layout, a.shape, a.path).matrix_shape
        out[a.path] = (a.group, view)
    return out


def _check(router: optx.Router, params: Any, table: dict[str, Any], names: dict[str, Any]) -> None:
    """``table`` for the model router; ``names`` (differences) for the default rules."""
    assert _views(router, params) == table
    assert not [a.path for a in router.assignments(params) if a.guessed]
    expected = {p: names.get(p, want) for p, want in table.items()}
    got = _views(optx.default_router(), params)
    for path, want in expected.items():
        if want is not NAMES_CANNOT_KNOW:
            assert got[path] == want, path


# -- 1. linen CNN with auto-names ---------------------------------------------------


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def test_linen_cnn_with_auto_names() -> None:
    x = SDS((1, 8, 8, 1), jnp.float32)
    params = jax.eval_shape(LinenCNN().init, jax.random.key(0), x)["params"]
    table = {
        "Conv_0/kernel": (M, (1, 9, 8)),
        "Conv_0/bias": (F, None),
        "Conv_1/kernel": (M, (1, 72, 16)),
        "Conv_1/bias": (F, None),
        "Dense_0/kernel": (M, (1, 256, 32)),
        "Dense_0/bias": (F, None),
        "Dense_1/kernel": (F, None),  # the output layer: from the call order
        "Dense_1/bias": (F, None),
    }
    router = optx.router_for(LinenCNN(), x)
    _check(router, params, table, {"Dense_1/kernel": (M, (1, 32, 10))})
    assert router.assign("Dense_1/kernel", params["Dense_1"]["kernel"]).rule == "head"
    # The whole variables dict (with its 'params' prefix) routes the same.
    assert _views(router, {"params": params})["params/Conv_1/kernel"] == (M, (1, 72, 16))


# -- 2. linen ResNet with BatchNorm ---------------------------------------------------


class ResBlock(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = lambda **kw: nn.BatchNorm(use_running_average=not train, **kw)  # noqa: E731
        y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros)(y)
        if x.shape != y.shape:
            x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False, name="proj")(x)
            x = norm(name="proj_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = nn.Conv(8, (3, 3), use_bias=False, name="conv_init")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn_init")(x))
        x = ResBlock(8)(x, train)
        x = ResBlock(16, 2)(x, train)
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def test_linen_resnet_with_batchnorm() -> None:
    x = SDS((2, 8, 8, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: ResNet().init(jax.random.key(0), x, train=False), x)
    assert "batch_stats" in variables
    params = variables["params"]
    bn = {f"{p}/{k}": (F, None) for p in ("bn_init",) for k in ("scale", "bias")}
    for block in ("ResBlock_0", "ResBlock_1"):
        bn |= {f"{block}/BatchNorm_{i}/{k}": (F, None) for i in (0, 1) for k in ("scale", "bias")}
    bn |= {f"ResBlock_1/proj_bn/{k}": (F, None) for k in ("scale", "bias")}
    table = {
        "conv_init/kernel": (M, (1, 27, 8)),
        "ResBlock_0/Conv_0/kernel": (M, (1, 72, 8)),
        "ResBlock_0/Conv_1/kernel": (M, (1, 72, 8)),
        "ResBlock_1/Conv_0/kernel": (M, (1, 72, 16)),
        "ResBlock_1/Conv_1/kernel": (M, (1, 144, 16)),
        "ResBlock_1/proj/kernel": (M, (1, 8, 16)),  # a 1×1 conv
        "Dense_0/kernel": (F, None),
        "Dense_0/bias": (F, None),
        **bn,
    }
    router = optx.router_for(ResNet(), x, train=False)
    _check(router, params, table, {"Dense_0/kernel": (M, (1, 16, 10))})
    assert (
        router.assign("ResBlock_1/proj/kernel", params["ResBlock_1"]["proj"]["kernel"]).rule
        == "conv"
    )
    # describe lists parameters only: no batch statistics.
    paths = [r.path for r in optx.describe(router, params)]
    assert not [p for p in paths if "mean" in p or "var" in p] and len(paths) == len(table)


# -- 3. NNX Sequential MLP -------------------------------------------------------------


def _mlp() -> nnx.Sequential:
    def make(r: nnx.Rngs) -> nnx.Sequential:
        return nnx.Sequential(
            nnx.Linear(12, 32, rngs=r),
            nnx.relu,
            nnx.Linear(32, 32, rngs=r),
            nnx.relu,
            nnx.Linear(32, 4, rngs=r),
        )

    return _abstract(make)


MLP_TABLE = {
    "layers/0/kernel": (M, (1, 12, 32)),
    "layers/0/bias": (F, None),
    "layers/2/kernel": (M, (1, 32, 32)),
    "layers/2/bias": (F, None),
    "layers/4/kernel": (F, None),
    "layers/4/bias": (F, None),
}


def test_nnx_sequential_mlp_with_and_without_inputs() -> None:
    model = _mlp()
    params = nnx.state(model, nnx.Param)
    names = {"layers/4/kernel": (M, (1, 32, 4))}
    _check(optx.router_for(model, SDS((2, 12), jnp.float32)), params, MLP_TABLE, names)
    # Without inputs, the last layer of an nnx.Sequential is the output layer.
    _check(optx.router_for(model), params, MLP_TABLE, names)
    # output_group=None routes the output layer like any other layer.
    assert _views(optx.router_for(model, output_group=None), params)["layers/4/kernel"] == (
        M,
        (1, 32, 4),
    )


# -- 4. NNX CNN with arbitrary layer names -------------------------------------------------


class NamedCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(4, 8, (3, 3), strides=2, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.f1 = nnx.Linear(8 * 4 * 4, 16, rngs=rngs)
        self.f2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.c1(x))
        x = nnx.relu(self.bn(self.c2(x)))
        x = self.drop(nnx.relu(self.f1(x.reshape(x.shape[0], -1))))
        return self.f2(x)


def test_nnx_cnn_with_arbitrary_names() -> None:
    model = _abstract(NamedCNN)
    before = nnx.state(model)  # incl. BatchNorm statistics and the dropout RNG count
    router = optx.router_for(model, SDS((2, 8, 8, 1), jnp.float32))
    after = nnx.state(model)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):  # the trace left no trace
        assert a is b
    params = nnx.state(model, nnx.Param)
    table = {
        "c1/kernel": (M, (1, 9, 4)),
        "c1/bias": (F, None),
        "c2/kernel": (M, (1, 36, 8)),
        "c2/bias": (F, None),
        "bn/scale": (F, None),
        "bn/bias": (F, None),
        "f1/kernel": (M, (1, 128, 16)),
        "f1/bias": (F, None),
        "f2/kernel": (F, None),
        "f2/bias": (F, None),
    }
    skip = NAMES_CANNOT_KNOW
    _check(router, params, table, {"c1/kernel": skip, "c2/kernel": skip, "f2/kernel": skip})
    # The name rules read c1 as 9 stacked (1×4) matrices, and say that it is a guess.
    guess = optx.default_router().assign("c1/kernel", params["c1"]["kernel"])
    assert guess.guessed and guess.group == M
    # describe(model) lists only nnx.Params: no BatchNorm statistics, RNG keys or counts.
    assert sorted(r.path for r in optx.describe(model)) == sorted(table)


# -- 5. NNX transformer with MultiHeadAttention -------------------------------------------


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(16, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=2, in_features=16, decode=False, deterministic=True, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(16, rngs=rngs)
        self.up = nnx.Linear(16, 32, rngs=rngs)
        self.down = nnx.Linear(32, 16, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(11, 16, rngs=rngs)
        self.blocks = nnx.List([Block(rngs) for _ in range(2)])
        self.ln_f = nnx.LayerNorm(16, rngs=rngs)
        self.lm_head = nnx.Linear(16, 11, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _transformer_table() -> dict[str, Any]:
    table: dict[str, Any] = {"embed/embedding": (F, None), "lm_head/kernel": (F, None)}
    table |= {f"ln_f/{k}": (F, None) for k in ("scale", "bias")}
    for i in range(2):
        b = f"blocks/{i}"
        for name in ("query", "key", "value"):
            table[f"{b}/attn/{name}/kernel"] = (M, (1, 16, 16))
            table[f"{b}/attn/{name}/bias"] = (F, None)
        table[f"{b}/attn/out/kernel"] = (M, (1, 16, 16))
        table[f"{b}/attn/out/bias"] = (F, None)
        table |= {f"{b}/{ln}/{k}": (F, None) for ln in ("ln1", "ln2") for k in ("scale", "bias")}
        table |= {f"{b}/up/kernel": (M, (1, 16, 32)), f"{b}/up/bias": (F, None)}
        table |= {f"{b}/down/kernel": (M, (1, 32, 16)), f"{b}/down/bias": (F, None)}
    return table


def test_nnx_transformer_with_multihead_attention() -> None:
    model = _abstract(Transformer)
    params = nnx.state(model, nnx.Param)
    router = optx.router_for(model, SDS((2, 5), jnp.int32))
    _check(router, params, _transformer_table(), {})
    rules = {a.path: a.rule for a in router.assignments(params)}
    assert rules["blocks/0/attn/query/kernel"] == "attention-in"
    assert rules["blocks/1/attn/out/kernel"] == "attention-out"
    assert rules["embed/embedding"] == "embedding" and rules["lm_head/kernel"] == "head"
    assert router.assign(
        "blocks/0/attn/out/kernel", params["blocks"][0]["attn"]["out"]["kernel"]
    ).layout == (optx.ATTENTION_OUT)


# -- 6. scanned/vmapped block stack with a layer named `out` ----------------------------------


class MLPBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.query = nnx.Linear(16, 16, rngs=rngs)  # a user's dense layer called "query"
        self.up = nnx.Linear(16, 32, rngs=rngs)
        self.out = nnx.Linear(32, 16, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.out(nnx.relu(self.up(self.query(self.norm(x)))))


class ScannedMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.inp = nnx.Linear(8, 16, rngs=rngs)

        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs: nnx.Rngs) -> MLPBlock:
            return MLPBlock(rngs)

        self.blocks = make(rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x: jax.Array, block: MLPBlock) -> jax.Array:
            return block(x)

        return self.head(body(self.inp(x), self.blocks))


SCANNED_TABLE = {
    "inp/kernel": (M, (1, 8, 16)),
    "inp/bias": (F, None),
    "blocks/norm/scale": (F, None),  # stacked (3, 16): not a matrix
    "blocks/norm/bias": (F, None),
    "blocks/query/kernel": (M, (3, 16, 16)),  # stacked dense, not attention
    "blocks/query/bias": (F, None),
    "blocks/up/kernel": (M, (3, 16, 32)),
    "blocks/up/bias": (F, None),
    "blocks/out/kernel": (M, (3, 32, 16)),  # 3 × (32×16), never one 96×16 matrix
    "blocks/out/bias": (F, None),
    "head/kernel": (F, None),
    "head/bias": (F, None),
}


def test_scanned_stack_with_a_layer_named_out() -> None:
    model = _abstract(ScannedMLP)
    params = nnx.state(model, nnx.Param)
    router = optx.router_for(model, SDS((2, 8), jnp.float32))
    _check(router, params, SCANNED_TABLE, {})
    out = router.assign("blocks/out/kernel", params["blocks"]["out"]["kernel"])
    assert out.layout == optx.DENSE and out.module_type == "nnx.Linear"


def test_stacked_axes_not_in_front() -> None:
    """A stack axis that nnx.vmap put elsewhere (out_axes=1) is still a batch axis."""

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=1)
    def make(rngs: nnx.Rngs) -> nnx.Linear:
        return nnx.Linear(5, 7, rngs=rngs)

    model = _abstract(make)
    params = nnx.state(model, nnx.Param)
    assert params["kernel"].shape == (5, 3, 7)
    a = optx.router_for(model).assign("kernel", params["kernel"])
    assert a.layout == optx.MatrixLayout((0,), (2,))
    assert optx.MatrixLayout.resolve(a.layout, (5, 3, 7)).matrix_shape == (3, 5, 7)


# -- 7. Einsum attention ---------------------------------------------------------------------


class EinsumAttention(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.q = nnx.Einsum("BTD,DNH->BTNH", (16, 2, 8), rngs=rngs)
        self.k = nnx.Einsum("BTD,DNH->BTNH", (16, 2, 8), rngs=rngs)
        self.v = nnx.Einsum("BTD,DNH->BTNH", (16, 2, 8), rngs=rngs)
        self.mix = nnx.Einsum("BTNH,NHK->BTNK", (2, 8, 8), rngs=rngs)  # per head: N is a batch axis
        self.o = nnx.Einsum("BTNH,NHD->BTD", (2, 8, 16), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = self.q(x), self.k(x), self.v(x)
        w = jax.nn.softmax(jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(8.0), axis=-1)
        return self.o(self.mix(jnp.einsum("bnts,bsnh->btnh", w, v)))


class EinsumModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.attn = EinsumAttention(rngs)
        self.readout = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.readout(self.attn(x).mean(axis=1))


def test_einsum_attention() -> None:
    model = _abstract(EinsumModel)
    params = nnx.state(model, nnx.Param)
    table = {
        "attn/q/kernel": (M, (1, 16, 16)),
        "attn/k/kernel": (M, (1, 16, 16)),
        "attn/v/kernel": (M, (1, 16, 16)),
        "attn/mix/kernel": (M, (2, 8, 8)),
        "attn/o/kernel": (M, (1, 16, 16)),
        "readout/kernel": (F, None),
        "readout/bias": (F, None),
    }
    router = optx.router_for(model, SDS((2, 4, 16), jnp.float32))
    _check(router, params, table, {})
    assert router.assign("attn/mix/kernel", params["attn"]["mix"]["kernel"]).rule == "einsum"
    # The name rules route attn/mix like the model, but only by a guess.
    assert optx.default_router().assign("attn/mix/kernel", params["attn"]["mix"]["kernel"]).guessed


# -- 8. LoRA-wrapped model ---------------------------------------------------------------------


class LoraModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.fc1 = nnx.LoRALinear(8, 16, lora_rank=2, rngs=rngs)
        self.fc2 = nnx.LoRA(16, 3, 16, base_module=nnx.Linear(16, 16, rngs=rngs), rngs=rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


LORA_TABLE = {
    "fc1/kernel": (M, (1, 8, 16)),
    "fc1/bias": (F, None),
    "fc1/lora/lora_a": (F, None),
    "fc1/lora/lora_b": (F, None),
    "fc2/base_module/kernel": (M, (1, 16, 16)),
    "fc2/base_module/bias": (F, None),
    "fc2/lora_a": (F, None),
    "fc2/lora_b": (F, None),
    "head/kernel": (F, None),
    "head/bias": (F, None),
}

LORA_PAIRS = (  # (a, b, base, rank)
    ("fc1/lora/lora_a", "fc1/lora/lora_b", "fc1/kernel", 2),
    ("fc2/lora_a", "fc2/lora_b", "fc2/base_module/kernel", 3),
)


def _pairs(found: tuple[optx.lora.LoRAPair, ...]) -> tuple[tuple[Any, ...], ...]:
    return tuple((p.a, p.b, p.base, p.rank) for p in found)


def test_lora_wrapped_model() -> None:
    model = _abstract(LoraModel)
    params = nnx.state(model, nnx.Param)
    router = optx.router_for(model, SDS((2, 8), jnp.float32))
    _check(router, params, LORA_TABLE, {})
    roles = {a.path: (a.role, a.pair) for a in router.assignments(params) if a.role}
    assert roles == {
        "fc1/kernel": ("lora_base", "fc1/lora"),
        "fc1/lora/lora_a": ("lora_a", "fc1/lora"),
        "fc1/lora/lora_b": ("lora_b", "fc1/lora"),
        "fc2/base_module/kernel": ("lora_base", "fc2"),
        "fc2/lora_a": ("lora_a", "fc2"),
        "fc2/lora_b": ("lora_b", "fc2"),
    }
    # The pairs agree with the router's roles: by module type (the model) and by names alone.
    by_module = optx.lora.lora_pairs(model)
    assert _pairs(by_module) == LORA_PAIRS
    assert all(p.source == "module" for p in by_module)
    for p in by_module:
        assert roles[p.a][1] == roles[p.b][1] == roles[p.base][1]
    assert _pairs(optx.lora.lora_pairs(params)) == LORA_PAIRS
    assert _pairs(optx.lora.lora_pairs(nnx.to_pure_dict(params))) == LORA_PAIRS
    # lora_group routes the factors as dense matrices instead.
    views = _views(optx.router_for(model, lora_group="matrix"), params)
    assert views["fc2/lora_a"] == (M, (1, 16, 3)) and views["fc2/lora_b"] == (M, (1, 3, 16))


def test_lora_pairs_errors() -> None:
    a, b = jnp.zeros((8, 2)), jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="no sibling 'lora_b'"):
        optx.lora.lora_pairs({"x": {"lora_a": a}})
    with pytest.raises(ValueError, match="no sibling 'lora_a'"):
        optx.lora.lora_pairs({"x": {"lora_b": b}})
    with pytest.raises(ValueError, match="rank mismatch"):
        optx.lora.lora_pairs({"x": {"lora_a": a, "lora_b": jnp.zeros((3, 4))}})
    with pytest.raises(ValueError, match="two 'lora_a'"):
        optx.lora.lora_pairs({"x": {"lora_a": a, "lora_A": {"kernel": a}, "lora_b": b}})
    # linen / PEFT names, with the base kernel next to the adapter.
    pairs = optx.lora.lora_pairs(
        {"x": {"kernel": jnp.zeros((8, 4)), "lora_A": {"kernel": a}, "lora_B": {"kernel": b}}}
    )
    assert _pairs(pairs) == (("x/lora_A/kernel", "x/lora_B/kernel", "x/kernel", 2),)


# -- 9. linen transformer: nn.scan'd blocks, attention, tied embedding ---------------------------


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, deterministic=True)(nn.LayerNorm()(x))
        h = nn.gelu(nn.Dense(32)(nn.LayerNorm()(x)))
        return x + nn.Dense(16, name="out")(h), None


class LinenLM(nn.Module):
    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        embed = nn.Embed(11, 16)
        scan = nn.scan(
            LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=2
        )
        x, _ = scan(name="blocks")(embed(tokens), None)
        return embed.attend(nn.LayerNorm()(x))  # tied output: no dense output layer


def test_linen_scanned_transformer_with_tied_embedding() -> None:
    x = SDS((2, 5), jnp.int32)
    params = jax.eval_shape(LinenLM().init, jax.random.key(0), x)["params"]
    att = "blocks/MultiHeadDotProductAttention_0"
    table: dict[str, Any] = {"Embed_0/embedding": (F, None)}
    table |= {f"LayerNorm_0/{k}": (F, None) for k in ("scale", "bias")}
    table |= {f"blocks/LayerNorm_{i}/{k}": (F, None) for i in (0, 1) for k in ("scale", "bias")}
    for name in ("query", "key", "value"):
        table |= {f"{att}/{name}/kernel": (M, (2, 16, 16)), f"{att}/{name}/bias": (F, None)}
    table |= {f"{att}/out/kernel": (M, (2, 16, 16)), f"{att}/out/bias": (F, None)}
    table |= {"blocks/Dense_0/kernel": (M, (2, 16, 32)), "blocks/Dense_0/bias": (F, None)}
    table |= {"blocks/out/kernel": (M, (2, 32, 16)), "blocks/out/bias": (F, None)}
    _check(optx.router_for(LinenLM(), x), params, table, {})


# -- the router in use ---------------------------------------------------------------------


def _ns5_direction(g: np.ndarray) -> np.ndarray:
    """Keller's quintic Newton–Schulz (5 steps) in float64, normalized: Muon's direction."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / np.linalg.norm(g)
    for _ in range(5):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x / np.linalg.norm(x)


def test_router_for_drives_an_optimizer_step() -> None:
    """muon with the model's router: each stacked layer orthogonalized on its own."""
    abstract = _abstract(ScannedMLP)
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), state)
    model = nnx.merge(graphdef, state)
    router = optx.router_for(model, SDS((2, 8), jnp.float32))
    optimizer = nnx.Optimizer(
        model, optx.muon(0.02, weight_decay=0.0, router=router), wrt=nnx.Param
    )
    x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)  # full-rank gradients

    @nnx.jit
    def step(model: ScannedMLP, optimizer: nnx.Optimizer) -> Any:
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return grads

    old = np.asarray(model.blocks.out.kernel[...], np.float64)
    grads = step(model, optimizer)
    g = np.asarray(grads["blocks"]["out"]["kernel"][...], np.float64)
    d = np.asarray(model.blocks.out.kernel[...], np.float64) - old
    for layer in range(3):  # 3 separate (32×16) matrices, not one (96×16)
        want = -_ns5_direction(g[layer].T).T
        np.testing.assert_allclose(d[layer] / np.linalg.norm(d[layer]), want, atol=2e-3)
    table = optx.describe(optimizer, model)
    assert table.row("blocks/out/kernel").matrices == (3, 32, 16)
    assert table.row("head/kernel").group == F


def test_router_for_is_static_and_hashable() -> None:
    model = _mlp()
    r1, r2 = optx.router_for(model), optx.router_for(model)
    assert r1 == r2 and hash(r1) == hash(r2) and not callable(r1)
    assert r1 != optx.default_router()
    assert "model table of 6 leaves" in repr(r1)
    tx = optax.inject_hyperparams(
        lambda learning_rate, router: optx.muon(learning_rate, router=router)
    )(learning_rate=0.02, router=r1)
    params = nnx.state(model, nnx.Param)
    state = jax.eval_shape(tx.init, params)
    assert state.hyperparams["learning_rate"].shape == ()


def test_with_rules_overrides_the_model_table() -> None:
    model = _mlp()
    params = nnx.state(model, nnx.Param)
    router = optx.router_for(model).with_rules(
        optx.Rule(r"^layers/0/kernel$", "fallback", name="mine")
    )
    a = router.assign("layers/0/kernel", params["layers"][0]["kernel"])
    assert (a.group, a.rule) == ("fallback", "mine")
    assert router.assign("layers/2/kernel", params["layers"][2]["kernel"]).rule == "dense"
    # Appended rules come after the table.
    late = optx.router_for(model).with_rules(optx.Rule(".*", "fallback"), prepend=False)
    assert late.assign("layers/0/kernel", params["layers"][0]["kernel"]).group == M


def test_unknown_module_types_fall_back_to_names_and_are_guessed() -> None:
    class Custom(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.w = nnx.Param(jax.random.normal(rngs.params(), (3, 4, 5)))
            self.b = nnx.Param(jnp.zeros((5,)))

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.custom = Custom(rngs)
            self.embed = nnx.Embed(4, 4, rngs=rngs)

    model = _abstract(Net)
    router = optx.router_for(model, embedding_group="matrix")
    params = nnx.state(model, nnx.Param)
    w = router.assign("custom/w", params["custom"]["w"])
    assert (w.group, w.rule, w.guessed, w.module_type) == (M, "dense", True, "Custom")
    b = router.assign("custom/b", params["custom"]["b"])
    assert (b.group, b.guessed) == (F, False)
    assert _views(router, params)["embed/embedding"] == (M, (1, 4, 4))
    with pytest.warns(optx.RoutingWarning, match="custom/w"):
        jax.eval_shape(optx.muon(0.02, router=router).init, params)
    quiet = optx.router_for(model, warn_guessed=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.eval_shape(optx.muon(0.02, router=quiet).init, params)


def test_router_for_bad_inputs() -> None:
    with pytest.raises(TypeError, match=r"flax\.nnx\.Module or a flax\.linen\.Module"):
        optx.router_for({"w": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="needs example inputs"):
        optx.router_for(LinenCNN())
    with pytest.raises(TypeError, match="output_group"):
        optx.router_for(_mlp(), output_group="")
    with pytest.raises(TypeError, match="lora_group"):
        optx.router_for(_mlp(), lora_group=None)
    # A failing call names router_for and leaves the Flax classes as they were.
    call, attend = nnx.Linear.__call__, nnx.Embed.attend
    with pytest.raises(Exception) as info:  # whatever jax raises for the shapes
        optx.router_for(_mlp(), SDS((2, 5), jnp.float32))  # the model wants 12 features
    assert any("optx.router_for" in note for note in info.value.__notes__)
    assert nnx.Linear.__call__ is call and nnx.Embed.attend is attend


class _RematNet(nnx.Module):
    """The forward pass inside ``nnx.remat`` (gradient checkpointing): NNX
    rebuilds the modules it applies, so they are not the model's objects."""

    def __init__(self, rngs: nnx.Rngs, width: int = 16) -> None:
        self.l1 = nnx.Linear(6, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.proj = nnx.Linear(width, 3 if width == 16 else width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        @nnx.remat
        def forward(m: _RematNet, x: jax.Array) -> jax.Array:
            return m.proj(nnx.relu(m.l2(nnx.relu(m.l1(x)))))

        return forward(self, x)


def test_output_layer_applied_inside_an_nnx_transform() -> None:
    """A module rebuilt by ``nnx.remat`` is still known by its path (a static
    attribute NNX copies into the rebuilt module), so the output layer is the
    head even when another layer has its type and kernel shape (before, that
    case warned and left the output layer to the name rules)."""
    for width in (16, 8):  # width 8: l2 and proj both (8, 8)
        model = _RematNet(nnx.Rngs(0), width=width)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            table = optx.describe(optx.router_for(model, jnp.ones((2, 6))), model)
        rows = {r.path: (r.group, r.rule) for r in table.rows}
        assert rows["proj/kernel"] == ("fallback", "head")
        assert rows["l1/kernel"][0] == rows["l2/kernel"][0] == "matrix"
    assert not hasattr(model.proj, "_optx_router_for_path")  # the model is left as it was


class _LayerBuiltInTheCall(nnx.Module):
    """Its last layer call applies a module built during the call (not the model's)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(6, 8, rngs=rngs)
        self.head = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.Linear(8, 3, rngs=nnx.Rngs(0))(self.head(nnx.relu(self.hidden(x))))


def test_unknown_last_layer_call_warns_and_leaves_the_output_to_names() -> None:
    model = _LayerBuiltInTheCall(nnx.Rngs(0))
    with pytest.warns(UserWarning, match="not part of the model"):
        router = optx.router_for(model, jnp.ones((2, 6)))
    rows = {r.path: (r.group, r.rule) for r in optx.describe(router, model).rows}
    assert rows["head/kernel"] == ("fallback", "head")  # by its name
    assert rows["hidden/kernel"] == ("matrix", "dense")


# -- the call order, not the names, decides the output layer ----------------------------------


class _HiddenHeadNames(nnx.Module):
    """Hidden layers named like output layers (``fc``, ``out_proj``); the head is ``classifier``."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(4, 32, rngs=rngs)
        self.out_proj = nnx.Linear(32, 32, rngs=rngs)
        self.classifier = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.conv(x)).mean((1, 2))
        return self.classifier(nnx.relu(self.out_proj(nnx.relu(self.fc(h)))))


class _TiedWithProjOut(nnx.Module):
    """A tied output (``Embed.attend``) after a hidden ``LinearGeneral`` named ``proj_out``."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.proj_in = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
        self.proj_out = nnx.LinearGeneral((2, 4), 8, axis=(-2, -1), rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.embed.attend(self.proj_out(nnx.relu(self.proj_in(self.embed(tokens)))))


class _LinenHiddenHeadNames(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(32, name="fc")(x))
        x = nn.relu(nn.Dense(32, name="out_proj")(x))
        return nn.Dense(10, name="classifier")(x)


def _rows(router: optx.Router, params: Any) -> dict[str, tuple[str, str]]:
    return {a.path: (a.group, a.rule) for a in router.assignments(params)}


def test_call_order_not_names_decides_the_output_layer() -> None:
    """With example inputs the last layer applied is the only output layer: a
    hidden ``fc``/``out_proj``/``proj_out`` is a hidden layer; without them
    (no call order) the name rules still name output layers."""
    model = _abstract(_HiddenHeadNames)
    params = nnx.state(model, nnx.Param)
    rows = _rows(optx.router_for(model, SDS((1, 8, 8, 1), jnp.float32)), params)
    assert rows["fc/kernel"] == rows["out_proj/kernel"] == (M, "dense")
    assert rows["classifier/kernel"] == (F, "head")
    no_inputs = _rows(optx.router_for(model), params)
    assert no_inputs["fc/kernel"] == no_inputs["out_proj/kernel"] == (F, "head")
    # A tied output: no dense layer is the output layer.
    tied = _abstract(_TiedWithProjOut)
    tied_params = nnx.state(tied, nnx.Param)
    rows = _rows(optx.router_for(tied, SDS((2, 5), jnp.int32)), tied_params)
    assert rows["proj_out/kernel"] == rows["proj_in/kernel"] == (M, "dense")
    assert rows["embed/embedding"] == (F, "embedding")
    # linen (always with a call order)
    x = SDS((2, 6), jnp.float32)
    linen_params = jax.eval_shape(_LinenHiddenHeadNames().init, jax.random.key(0), x)["params"]
    rows = _rows(optx.router_for(_LinenHiddenHeadNames(), x), linen_params)
    assert rows["fc/kernel"] == rows["out_proj/kernel"] == (M, "dense")
    assert rows["classifier/kernel"] == (F, "head")


# -- ensembles: nnx.vmap / nn.vmap members -----------------------------------------------------


class _Member(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.l1 = nnx.Linear(6, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(nnx.relu(self.l1(x)))


class _Ensemble(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs: nnx.Rngs) -> _Member:
            return _Member(rngs)

        self.members = make(rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.vmap(lambda m, x: m(x), in_axes=(0, None))(self.members, x).mean(0)


class _LinenMember(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(3, name="l2")(nn.relu(nn.Dense(16, name="l1")(x)))


class _LinenEnsemble(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            _LinenMember,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=3,
        )
        return ensemble(name="members")(x).mean(0)


def test_ensemble_head_goes_to_the_output_group() -> None:
    """Each member's output layer (stacked by vmap) is the head, like a single
    model's; the members' hidden layers stay stacked dense matrices; no warning."""
    table = {
        "members/l1/kernel": (M, (3, 6, 16)),
        "members/l1/bias": (F, None),
        "members/l2/kernel": (F, None),
        "members/l2/bias": (F, None),
    }
    model = _abstract(_Ensemble)
    x = SDS((2, 6), jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        router = optx.router_for(model, x)
        linen_router = optx.router_for(_LinenEnsemble(), x)
    params = nnx.state(model, nnx.Param)
    assert _views(router, params) == table
    assert _rows(router, params)["members/l2/kernel"] == (F, "head")
    linen_params = jax.eval_shape(_LinenEnsemble().init, jax.random.key(0), x)["params"]
    assert _views(linen_router, linen_params) == table
    # A scanned stack is not the head: the layer applied after it is (SCANNED_TABLE).
    scanned = _abstract(ScannedMLP)
    assert (
        _views(optx.router_for(scanned, SDS((2, 8), jnp.float32)), nnx.state(scanned, nnx.Param))
        == SCANNED_TABLE
    )


def test_linen_vmap_with_the_member_axis_inside_the_kernel() -> None:
    """``nn.vmap(variable_axes={'params': 1})`` puts the member axis between fan-in
    and fan-out: the fan-in size comes from the call's input, as NNX's ``in_features``."""

    class Member(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            return nn.Dense(16)(x)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            ensemble = nn.vmap(
                Member,
                variable_axes={"params": 1},
                split_rngs={"params": True},
                in_axes=None,
                out_axes=0,
                axis_size=3,
            )
            return nn.Dense(2, name="head")(ensemble(name="ens")(x).mean(0))

    x = SDS((2, 6), jnp.float32)
    params = jax.eval_shape(Net().init, jax.random.key(0), x)["params"]
    assert params["ens"]["Dense_0"]["kernel"].shape == (6, 3, 16)
    a = optx.router_for(Net(), x).assign("ens/Dense_0/kernel", params["ens"]["Dense_0"]["kernel"])
    assert (a.group, a.layout) == (M, optx.MatrixLayout((0,), (2,)))
    assert optx.MatrixLayout.resolve(a.layout, (6, 3, 16)).matrix_shape == (3, 6, 16)
