"""Small Flax NNX models for the optx examples and benchmarks.

Three models, each small enough to train on a laptop CPU and written so that
every routing case of :func:`optx.default_router` appears in a real network:

* :class:`TransformerLM` — a decoder-only, pre-norm transformer language model
  (RMSNorm, RoPE or learned positions, tied or untied head, GELU MLP) with an
  optional ``nnx.scan`` over layers, so hidden kernels are either per-layer
  ``(in, out)`` matrices or scanned ``(L, in, out)`` stacks. Attention
  projections are ``(d, heads, head_dim)`` / ``(heads, head_dim, d)`` kernels
  (named ``query``/``key``/``value``/``out``), which the default router views as
  one ``d × d`` matrix each.
* :class:`CNN` — two 3×3 convolutions, average pooling, a hidden Dense layer and
  a classifier head (conv kernels ``(kh, kw, in, out)`` take the conv layout).
* :class:`MLP` — Dense layers and a classifier head.

Parameter paths are chosen for the default router: ``embed``/``pos_embed``
embeddings, ``lm_head``/``head`` output layers and ``*_norm`` scales go to the
fallback (AdamW); ``blocks/attn/{query,key,value,out}``, ``blocks/mlp/{up,down}``,
``conv*``, ``dense`` and ``layers/*`` kernels go to the matrix path.

Example:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from examples import models
  >>> cfg = models.TransformerConfig(vocab_size=16, d_model=16, n_layers=2, n_heads=2,
  ...                                max_len=8, scan_layers=True)
  >>> model = models.TransformerLM(cfg, rngs=nnx.Rngs(0))
  >>> model(jnp.zeros((2, 8), jnp.int32)).shape
  (2, 8, 16)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

POSITIONS = ("rope", "learned")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of :class:`TransformerLM`.

    Attributes:
      vocab_size: number of tokens (characters for the Shakespeare LM).
      d_model: residual width; must be divisible by ``n_heads``.
      n_layers: number of transformer blocks.
      n_heads: attention heads.
      mlp_ratio: hidden width of the MLP as a multiple of ``d_model``.
      max_len: longest sequence (size of the learned position table; RoPE
        tables are computed on the fly).
      positions: ``'rope'`` (rotary, arXiv 2104.09864) or ``'learned'``.
      tie_embeddings: use the token embedding as the output head (no
        ``lm_head`` parameter) instead of a separate ``lm_head``.
      scan_layers: build the blocks with ``nnx.vmap`` and run them with
        ``nnx.scan``, so hidden kernels are stacked ``(L, in, out)`` arrays.
      rope_base: RoPE frequency base.
      dtype: computation dtype (``None``: the parameter dtype).
      param_dtype: parameter dtype.
    """

    vocab_size: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    max_len: int = 128
    positions: str = "rope"
    tie_embeddings: bool = False
    scan_layers: bool = False
    rope_base: float = 10_000.0
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_ratio", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})."
            )
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}.")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError("RoPE needs an even head dimension (d_model / n_heads).")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def rope_tables(length: int, head_dim: int, base: float = 10_000.0) -> tuple[jax.Array, jax.Array]:
    """Cosine and sine tables ``(length, head_dim // 2)`` of rotary embeddings.

    Rotary position embedding (Su et al., "RoFormer", arXiv 2104.09864, Eq. 34):
    pairs of features ``(x_i, x_{i+d/2})`` are rotated by ``t·θ_i`` with
    ``θ_i = base^{-2i/d}``.
    """
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x`` of shape ``(batch, length, heads, head_dim)`` ("rotate half" form)."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    return out.astype(x.dtype)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention with ``(d, heads, head_dim)`` projections."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        kw = dict(use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        heads = (cfg.n_heads, cfg.head_dim)
        self.query = nnx.LinearGeneral(cfg.d_model, heads, **kw)
        self.key = nnx.LinearGeneral(cfg.d_model, heads, **kw)
        self.value = nnx.LinearGeneral(cfg.d_model, heads, **kw)
        self.out = nnx.LinearGeneral(heads, cfg.d_model, axis=(-2, -1), **kw)
        self.use_rope = cfg.positions == "rope"

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.use_rope and rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.out(y)


class MLPBlock(nnx.Module):
    """The transformer's feed-forward block: ``down(gelu(up(x)))``."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        kw = dict(use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.up = nnx.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, **kw)
        self.down = nnx.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
    """A pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.attn_norm = nnx.RMSNorm(cfg.d_model, **kw)
        self.attn = CausalSelfAttention(cfg, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(cfg.d_model, **kw)
        self.mlp = MLPBlock(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class TransformerLM(nnx.Module):
    """A decoder-only transformer language model (GPT-2 layout with modern parts).

    ``tokens (batch, length) -> logits (batch, length, vocab_size)``. Pre-norm
    blocks (Xiong et al., arXiv 2002.04745) with RMSNorm (arXiv 1910.07467),
    RoPE (arXiv 2104.09864) or learned positions, and a tied or untied head.
    With ``cfg.scan_layers`` the blocks are created by ``nnx.vmap`` (stacked
    parameters with a leading layer axis) and applied with ``nnx.scan``.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> from examples.models import TransformerConfig, TransformerLM
      >>> m = TransformerLM(TransformerConfig(vocab_size=8, d_model=8, n_heads=2, max_len=4),
      ...                   rngs=nnx.Rngs(0))
      >>> m(jnp.zeros((1, 4), jnp.int32)).shape
      (1, 4, 8)
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        emb_init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=emb_init,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            rngs=rngs,
        )
        if cfg.positions == "learned":
            self.pos_embed = nnx.Embed(
                cfg.max_len,
                cfg.d_model,
                embedding_init=emb_init,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )
        if cfg.scan_layers:

            @nnx.split_rngs(splits=cfg.n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_blocks(rngs: nnx.Rngs) -> Block:
                return Block(cfg, rngs=rngs)

            self.blocks = make_blocks(rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = nnx.RMSNorm(
            cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs
        )
        if not cfg.tie_embeddings:
            self.lm_head = nnx.Linear(
                cfg.d_model,
                cfg.vocab_size,
                use_bias=False,
                kernel_init=nnx.initializers.normal(0.02),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.cfg
        length = tokens.shape[-1]
        if length > cfg.max_len:
            raise ValueError(f"Sequence length {length} exceeds max_len {cfg.max_len}.")
        x = self.embed(tokens)
        rope = None
        if cfg.positions == "learned":
            x = x + self.pos_embed(jnp.arange(length))[None]
        else:
            rope = rope_tables(length, cfg.head_dim, cfg.rope_base)
        if cfg.scan_layers:

            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def run_blocks(h: jax.Array, block: Block) -> jax.Array:
                return block(h, rope)

            x = run_blocks(x, self.blocks)
        else:
            for block in self.blocks:
                x = block(x, rope)
        x = self.final_norm(x)
        if cfg.tie_embeddings:
            logits = self.embed.attend(x)
        else:
            logits = self.lm_head(x)
        return logits.astype(jnp.float32)


class CNN(nnx.Module):
    """A small CNN classifier: conv–relu ×2, 2×2 average pool, Dense, head.

    ``images (batch, H, W, C) -> logits (batch, num_classes)``. Conv kernels are
    ``(3, 3, in, out)`` (``conv1``, ``conv2``), the hidden layer is ``dense``
    and the classifier is ``head`` (routed to the fallback).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (8, 8, 1),
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {tuple(image_shape)!r}.")
        if len(channels) != 2:
            raise ValueError(f"channels must have two entries, got {tuple(channels)!r}.")
        h, w, c = (int(s) for s in image_shape)
        self.conv1 = nnx.Conv(c, channels[0], (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(channels[0], channels[1], (3, 3), padding="SAME", rngs=rngs)
        flat = (h // 2) * (w // 2) * channels[1]
        self.dense = nnx.Linear(flat, hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.dense(x))
        return self.head(x)


class MLP(nnx.Module):
    """A ReLU MLP classifier: ``layers/0 .. layers/k-1`` hidden layers and ``head``."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128, 128),
        num_classes: int = 10,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer.")
        sizes = (int(in_features), *(int(h) for h in hidden))
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


# ----------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------


def lm_loss(model: TransformerLM, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Mean next-token cross-entropy (nats per token) of ``batch = (inputs, targets)``."""
    inputs, targets = batch
    logits = model(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def classification_loss(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Mean softmax cross-entropy of ``batch = (images, labels)``."""
    images, labels = batch
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(model: nnx.Module, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Classification accuracy of ``batch = (images, labels)``."""
    images, labels = batch
    return jnp.mean(jnp.argmax(model(images), axis=-1) == labels)
