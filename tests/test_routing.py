"""Tests for optx._src.routing: rules, default routing, describe, routed()."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optx

SDS = jax.ShapeDtypeStruct


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

    return nnx.state(nnx.eval_shape(lambda: Model(nnx.Rngs(0))), nnx.Param)


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


def test_describe_returns_a_table_and_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    state = _nnx_transformer_params()
    table = optx.describe(optx.muon(), state)
    assert capsys.readouterr().out == ""  # returned, not printed (Jupyter shows it once)
    assert isinstance(table, optx.RoutingTable)
    text = str(table)
    assert repr(table) == text
    assert "blocks/mlp/kernel" in text and "3 x (16x32)" in text and "attention-in" in text
    assert table == optx.describe(optx.default_router(), state)
    row = table.row("blocks/mlp/kernel")
    assert (row.group, row.matrices, row.rule) == ("matrix", (3, 16, 32), "dense")
    assert row.layout == optx.DENSE.resolve((3, 16, 32))
    html = table._repr_html_()
    assert html.startswith("<table>") and html.count("<tr>") == len(table) + 1
    md = table._repr_markdown_()
    assert md.count("\n") == len(table) + 1 and "`blocks/mlp/kernel`" in md
    assert len(list(table)) == len(jax.tree.leaves(state))
    with pytest.raises(KeyError):
        table.row("nope")


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


# -- name rules (issue 13 §1, issue 20 §7) ---------------------------------------------


def _route(path: str, shape: tuple[int, ...]) -> optx.Assignment:
    return optx.default_router().assign(path, SDS(shape, jnp.float32))


def _view(a: optx.Assignment) -> tuple[int, int, int] | None:
    return None if a.layout is None else a.layout.resolve(a.shape).matrix_shape


HEAD_NAMES = [
    "head",
    "lm_head",
    "LM_Head",
    "classifier",
    "Classifier",
    "logits",
    "logit",
    "unembed",
    "unembed_out",
    "readout",
    "cls_head",
    "value_head",
]
TOP_LEVEL_HEAD_NAMES = [
    "out",
    "outs",
    "output",
    "outputs",
    "fc_out",
    "proj_out",
    "out_proj",
    "output_proj",
    "fc",
    "score",
    "qa_outputs",
    "final",
    "final_layer",
    "output_layer",
    "to_logits",
    "Output",
]


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_head_like_names_go_to_the_fallback_anywhere(name: str) -> None:
    for path in (f"{name}/kernel", f"params/{name}/kernel", f"model/decoder/{name}/kernel"):
        for shape in ((16, 8), (3, 16, 8)):
            a = _route(path, shape)
            assert (a.group, a.rule, a.guessed) == ("fallback", "head", False), (path, shape)


@pytest.mark.parametrize("name", TOP_LEVEL_HEAD_NAMES)
def test_output_names_go_to_the_fallback_only_at_the_top(name: str) -> None:
    for path in (f"{name}/kernel", f"params/{name}/kernel"):
        assert (_route(path, (16, 8)).group, _route(path, (16, 8)).rule) == ("fallback", "head")
    # Deeper in a model these names are hidden layers (BERT's layer/0/output/dense,
    # GPT-J's mlp/fc_out, a scanned block's out): they stay on the matrix path.
    for path in (f"encoder/{name}/kernel", f"blocks/0/{name}/kernel"):
        assert _route(path, (16, 8)).group == "matrix", path
    assert _view(_route(f"blocks/{name}/kernel", (3, 32, 16))) == (3, 32, 16)


def test_embeddings_are_fallback_whatever_the_case() -> None:
    for path in ("Embed_0/embedding", "tok_embeddings/weight", "wte/kernel", "unembedding/kernel"):
        a = _route(path, (10, 16))
        assert (a.group, a.rule) == ("fallback", "embedding"), path


def test_issue_13_reproductions() -> None:
    # A scanned MLP's down-projection named `out`: 3 × (32×16), never one 96×16 matrix.
    out = _route("blocks/out/kernel", (3, 32, 16))
    assert (out.layout, _view(out), out.rule, out.guessed) == (
        optx.DENSE,
        (3, 32, 16),
        "stacked dense",
        False,
    )
    # A user's stacked dense named `query`: the layer axis is a batch axis.
    for path in ("query/kernel", "layers/query/kernel", "mlp/query/kernel"):
        a = _route(path, (4, 16, 24))
        assert (a.layout, _view(a)) == (optx.DENSE, (4, 16, 24)), path
    assert _route("layers/query/kernel", (4, 16, 24)).guessed is False
    assert _route("query/kernel", (4, 16, 24)).guessed is True  # only the catch-all matched
    # linen's auto-named conv: one 9×8 conv view, not 9 per-tap 1×8 matrices.
    conv = _route("Conv_0/kernel", (3, 3, 1, 8))
    assert (conv.rule, _view(conv)) == ("conv", (1, 9, 8))
    assert _view(_route("ConvTranspose_0/kernel", (3, 3, 8, 4))) == (1, 72, 4)
    # An NNX conv named `c1` cannot be known by name: routed as stacked dense, and guessed.
    c1 = _route("c1/kernel", (3, 3, 1, 8))
    assert c1.guessed and _view(c1) == (9, 1, 8)
    # Output layers the names know; `Dense_1`/`fc2` only the model knows (router_for).
    for path in ("readout/kernel", "proj_out/kernel"):
        assert _route(path, (16, 10)).group == "fallback"
    for path in ("Dense_1/kernel", "fc2/kernel"):
        assert _route(path, (16, 10)).group == "matrix"


def test_linen_auto_names() -> None:
    assert _route("Dense_0/kernel", (16, 8)).rule == "dense"
    stacked = _route("Dense_0/kernel", (3, 16, 8))
    assert (stacked.rule, stacked.guessed, _view(stacked)) == ("dense", False, (3, 16, 8))
    assert _route("DenseGeneral_0/kernel", (16, 2, 8)).guessed
    for norm in ("LayerNorm_0", "BatchNorm_0", "RMSNorm_0", "GroupNorm_0", "ln_f", "bn1"):
        a = _route(f"blocks/{norm}/scale", (3, 16))
        assert a.group == "fallback", norm
        assert _route(f"{norm}/weird", (3, 16)).rule == "norm"


def test_attention_layouts_only_under_an_attention_module() -> None:
    cases = {
        "blocks/attn/query/kernel": ((3, 16, 2, 8), optx.ATTENTION_IN, (3, 16, 16)),
        "MultiHeadDotProductAttention_0/key/kernel": ((16, 2, 8), optx.ATTENTION_IN, (1, 16, 16)),
        "encoder/self_attn/k_proj/kernel": ((16, 2, 8), optx.ATTENTION_IN, (1, 16, 16)),
        "mha/value/kernel": ((16, 2, 8), optx.ATTENTION_IN, (1, 16, 16)),
        "MultiHeadDotProductAttention_0/out/kernel": ((2, 8, 16), optx.ATTENTION_OUT, (1, 16, 16)),
        "blocks/attention/o/kernel": ((3, 2, 8, 16), optx.ATTENTION_OUT, (3, 16, 16)),
        "attn/out/kernel": ((16, 16), optx.DENSE, (1, 16, 16)),  # 2-D: a plain dense
        "out/kernel": ((2, 8, 16), None, None),  # a lone top-level `out` is the output layer
        "stack/out/kernel": ((2, 8, 16), optx.DENSE, (2, 8, 16)),
    }
    for path, (shape, layout, view) in cases.items():
        a = _route(path, shape)
        assert (a.layout, _view(a)) == (layout, view), path


def test_lora_factors_by_name() -> None:
    a = _route("x/lora_A/kernel", (8, 2))
    assert (a.group, a.role, a.pair, a.rule) == ("fallback", "lora_a", "x", "lora-a")
    b = _route("y/lora/lora_b", (2, 8))
    assert (b.role, b.pair) == ("lora_b", "y/lora")


# -- guessed leaves ------------------------------------------------------------------------


def test_guessed_leaves_warn_once_at_init_and_show_in_describe() -> None:
    params = {"w": SDS((3, 4, 5), jnp.float32), "layers": {"kernel": SDS((3, 4, 5), jnp.float32)}}
    tx = optx.muon(0.02)
    with pytest.warns(optx.RoutingWarning) as record:
        jax.eval_shape(tx.init, params)
    (message,) = [str(w.message) for w in record if w.category is optx.RoutingWarning]
    assert "'w' (3, 4, 5)" in message and "layers/kernel" not in message
    assert "warn_guessed=False" in message and "router_for" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.eval_shape(tx.init, params)  # once per transform
        table = optx.describe(optx.muon(0.02), params)  # describing does not warn
        quiet = optx.muon(0.02, router=optx.Router(warn_guessed=False))
        jax.eval_shape(quiet.init, params)
        jax.eval_shape(
            optx.muon(0.02, router=optx.default_router().replace(warn_guessed=False)).init, params
        )
    assert [r.path for r in table.guessed] == ["w"]
    assert "dense [guessed]" in str(table)
    with pytest.raises(TypeError, match="warn_guessed"):
        optx.Router(warn_guessed=1)
    with pytest.raises(TypeError, match="unknown"):
        optx.default_router().replace(colour="red")


#: Registered optimizers whose math uses a leaf's matrix view at their registry defaults,
#: without their own routed groups (a guessed conv view changes their numbers too).
VIEW_USERS = {
    "adahessian",  # conv windows averaged (spatial_axes='conv')
    "adamp",  # channels of the radial test
    "sgdp",
    "sgd_sai",  # blocks of the g-SNR
    "soap",  # the rotated modes
    "conda",  # the projected matrix
    "eggroll",  # low-rank noise per matrix
    "lion_kappa",  # the nuclear κ (registry default) per matrix
    "mkor",  # the layer's Kronecker factors
    "mkor_h",
    "wgsef",  # the groups (output units)
}
#: Optimizers that route matrices through optx.routed (which warns itself) at their
#: registry defaults, on :data:`GUESSED_CONV`'s 64 x 128 kernel (a low-rank method
#: whose default rank is >= 64 sends it to its fallback instead).
ROUTED_MATRIX_USERS = {
    "apollo_mini",
    "auon",
    "frugal",
    "hybrid_auon",
    "lipschitz_muon",
    "muon",
    "normuon",
    "root",
}
GUESSED_CONV = {
    "stem": {"kernel": SDS((3, 3, 64, 128), jnp.float32), "bias": SDS((128,), jnp.float32)},
    "fc": {"kernel": SDS((128, 10), jnp.float32)},
}


@pytest.mark.parametrize("name", optx.list_optimizers())
def test_every_optimizer_that_uses_a_guessed_view_warns_once(name: str) -> None:
    """A conv kernel whose name does not say so ('stem') is guessed a stack of nine
    64 x 128 matrices: every optimizer whose numbers depend on that view says so at
    ``init``, once, whether it routes through ``optx.routed`` or takes the router's
    layouts directly (AdamP's channels, SGD-SaI's blocks, SOAP's modes, ...)."""
    tx = optx.get_optimizer(name).build()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        jax.eval_shape(tx.init, GUESSED_CONV)
        jax.eval_shape(tx.init, GUESSED_CONV)
    messages = [str(w.message) for w in record if w.category is optx.RoutingWarning]
    expected = 1 if name in VIEW_USERS | ROUTED_MATRIX_USERS else 0
    assert len(messages) == expected, messages
    assert all("'stem/kernel' (3, 3, 64, 128)" in m for m in messages)
    if name in VIEW_USERS:
        quiet = optx.get_optimizer(name).build(router=optx.Router(warn_guessed=False))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            jax.eval_shape(quiet.init, GUESSED_CONV)
            optx.describe(optx.get_optimizer(name).build(), GUESSED_CONV)


# -- describe through wrappers ------------------------------------------------------------------

WRAPPED_PARAMS = {
    "blocks": {
        "mlp": {"kernel": SDS((3, 16, 32), jnp.float32)},
        "ln": {"scale": SDS((3, 16), jnp.float32)},
    },
    "conv1": {"kernel": SDS((3, 3, 4, 8), jnp.float32)},
    "head": {"kernel": SDS((32, 10), jnp.float32), "bias": SDS((10,), jnp.float32)},
}


def _wrapped() -> dict[str, object]:
    tx = optx.muon(0.02)
    labels = {"blocks": {"mlp": {"kernel": "m"}, "ln": {"scale": "m"}}, "conv1": {"kernel": "m"}}
    labels |= {"head": {"kernel": "o", "bias": "o"}}
    mask = jax.tree.map(lambda _: True, WRAPPED_PARAMS)
    mask["head"] = {"kernel": False, "bias": False}
    return {
        "chain": optax.chain(optax.clip_by_global_norm(1.0), tx),
        "inject_hyperparams": optax.inject_hyperparams(optx.muon, static_args=("ns_steps",))(
            learning_rate=0.02
        ),
        "MultiSteps": optax.MultiSteps(tx, 2),
        "accumulate_gradients": optx.accumulate_gradients(tx, 2),
        "masked": optax.masked(tx, mask),
        "partition": optax.partition({"m": tx, "o": optax.sgd(0.1)}, labels),
        "nested": optax.MultiSteps(optax.chain(optax.masked(tx, mask), optax.scale(1.0)), 2),
    }


@pytest.mark.parametrize("name", list(_wrapped()))
def test_describe_and_router_of_see_through_wrappers(name: str) -> None:
    wrapped = _wrapped()[name]
    want = optx.describe(optx.default_router(), WRAPPED_PARAMS)
    table = optx.describe(wrapped, WRAPPED_PARAMS)
    assert optx.router_of(wrapped) == optx.default_router()
    if name in ("masked", "partition", "nested"):  # the head is outside the routed transform
        for path in ("head/kernel", "head/bias"):
            assert (table.row(path).group, table.row(path).rule) == ("-", "not routed")
        kept = [r for r in table if not r.path.startswith("head/")]
        assert kept == [r for r in want if not r.path.startswith("head/")]
    else:
        assert table == want


def test_describe_an_nnx_optimizer_and_a_model() -> None:
    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.mlp = nnx.Linear(4, 8, rngs=rngs)
            self.head = nnx.Linear(8, 2, rngs=rngs)

    model = nnx.eval_shape(lambda: Net(nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    opt = nnx.eval_shape(lambda: nnx.Optimizer(model, optx.muon(0.02), wrt=nnx.Param))
    table = optx.describe(opt, model)
    assert table == optx.describe(optx.default_router(), params)
    assert optx.router_of(opt) == optx.default_router()
    # describe(model): the model's router, only nnx.Param leaves (no BatchNorm
    # statistics, no RNG keys or counts).
    by_model = optx.describe(model)
    assert sorted(r.path for r in by_model) == sorted(p for p, _ in _flat(params))
    assert by_model.row("conv/kernel").module_type == "nnx.Conv"
    assert by_model.row("head/kernel").rule == "head"
    with pytest.raises(TypeError, match="parameter tree"):
        optx.describe(opt)


def _flat(tree: object) -> list[tuple[str, object]]:
    from optx._src import base

    return base.flatten_with_paths(tree)[0]


def test_describe_without_routing_and_bad_inputs() -> None:
    params = {"w": SDS((4, 4), jnp.float32)}
    table = optx.describe(optax.adam(1e-3), params)  # nothing routed: said, not raised
    assert [(r.path, r.group, r.rule) for r in table] == [("w", "-", "not routed")]
    state = optx.muon(0.02).init({"w": jnp.zeros((4, 4))})
    with pytest.raises(TypeError, match="state"):
        optx.describe(state, params)
    with pytest.raises(TypeError, match="parameter tree"):
        optx.describe(optx.muon(0.02))
    import flax.linen as nn

    with pytest.raises(TypeError, match="example inputs"):
        optx.describe(nn.Dense(3))

    def failing_init(params: object) -> object:
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="init failed: RuntimeError: boom"):
        optx.describe(optax.GradientTransformation(failing_init, optax.identity().update), params)
    # A transform whose init fails (a group without a transform) is described as far as it got.
    broken = optx.routed({"fallback": optax.sgd(0.1)})
    assert optx.describe(broken, params).row("w").group == "matrix"


# -- the rank guard of low-rank methods ---------------------------------------------------------


RANK_PARAMS = {
    "a": {"kernel": SDS((64, 8), jnp.float32)},  # min side 8 <= rank 8: fallback
    "b": {"kernel": SDS((64, 32), jnp.float32)},
    "blocks": {"mlp": {"kernel": SDS((2, 6, 32), jnp.float32)}},  # per-layer min side 6
}


@pytest.mark.parametrize("name", ["galore", "galore_8bit", "apollo", "dct_adamw", "cosmos"])
def test_low_rank_methods_send_small_matrices_to_the_fallback(name: str) -> None:
    tx = getattr(optx, name)(rank=8)
    assert optx.router_of(tx).rank_limit == 8
    table = optx.describe(tx, RANK_PARAMS)
    for path in ("a/kernel", "blocks/mlp/kernel"):
        assert (table.row(path).group, table.row(path).rule) == ("fallback", "rank>=min side")
    assert (table.row("b/kernel").group, table.row("b/kernel").matrices) == ("matrix", (1, 64, 32))
    jax.eval_shape(tx.init, RANK_PARAMS)


@pytest.mark.parametrize(
    "name,rank",
    [("galore", 128), ("galore_8bit", 128), ("apollo", 256), ("dct_adamw", 128), ("cosmos", 64)],
)
def test_default_rank_is_the_rank_limit(name: str, rank: int) -> None:
    """``rank=None`` means the documented default rank, for the router's
    rank guard too (COSMOS' default had left its router without the limit,
    sending matrices of min side <= 64 to the matrix path)."""
    assert optx.router_of(getattr(optx, name)()).rank_limit == rank
    assert optx.router_of(getattr(optx, name)(rank=rank)).rank_limit == rank


def test_with_rank_limit() -> None:
    router = optx.default_router()
    assert router.with_rank_limit(None) is router
    assert optx.router_of(optx.apollo_mini()).rank_limit == 1
    limited = router.with_rank_limit(4)
    assert limited.rank_limit == 4 and limited != router and hash(limited) != hash(router)
    assert limited.with_rank_limit(2).rank_limit == 4  # the stricter limit stays
    assert router.with_rank_limit(np.int64(4)) == limited
    assert limited.assign("m", SDS((5, 4), jnp.float32)).rule == "rank>=min side"
    assert limited.assign("m", SDS((5, 5), jnp.float32)).group == "matrix"
    assert limited.assign("embed", SDS((5, 4), jnp.float32)).rule == "embedding"
    with pytest.raises(TypeError, match="rank"):
        router.with_rank_limit(True)
    with pytest.raises(ValueError, match="rank"):
        router.with_rank_limit(0)
    seen = []

    @jax.jit
    def traced(rank: jax.Array) -> jax.Array:
        seen.append(router.with_rank_limit(rank))  # a tracer is left to the method's validation
        return rank

    traced(3)
    assert seen == [router]


def test_describe_an_nnx_optimizer_lists_the_leaves_of_its_wrt_filter() -> None:
    """``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` updates the adapters only: the
    table lists them, not the frozen base kernels."""
    model = nnx.LoRALinear(6, 16, lora_rank=2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optx.muon(0.02), wrt=nnx.LoRAParam)
    paths = [r.path for r in optx.describe(opt, model).rows]
    assert paths and all("lora" in p for p in paths), paths
    full = [r.path for r in optx.describe(optx.muon(0.02), model).rows]
    assert "kernel" in full
