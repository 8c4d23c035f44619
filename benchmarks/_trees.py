"""GPT-style parameter trees for benchmarks (shared by every ``benchmarks/`` script).

The trees have the key paths and shapes of :class:`examples.models.TransformerLM`
(so :func:`optx.default_router` routes them the same way) without building a
Flax model: ``embed/embedding``, optional ``pos_embed/embedding``, per block
``attn/{query,key,value}/kernel`` ``(d, heads, head_dim)``, ``attn/out/kernel``
``(heads, head_dim, d)``, ``mlp/{up,down}/kernel``, ``attn_norm/scale``,
``mlp_norm/scale``, then ``final_norm/scale`` and ``lm_head/kernel`` (unless
tied). With ``scanned=True`` the blocks are one stack under ``blocks/...`` with a
leading layer axis; otherwise they are ``blocks/0/...``, ``blocks/1/...``.

Example:
  >>> from benchmarks import _trees
  >>> shape = _trees.PRESETS['tiny']
  >>> tree = _trees.gpt_param_shapes(shape)
  >>> tree['blocks']['0']['attn']['query']['kernel'].shape
  (64, 4, 16)
  >>> _trees.gpt_param_count(shape) == sum(x.size for x in __import__('jax').tree.leaves(tree))
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GPTShape:
    """Sizes of a GPT-style decoder (see :data:`PRESETS`)."""

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    max_len: int = 0  # > 0 adds a learned position table pos_embed/embedding
    tie_embeddings: bool = False
    scanned: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_ratio"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"GPTShape.{name} must be a positive int, got {v!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


PRESETS: dict[str, GPTShape] = {
    # ~0.1 M params: unit tests and CPU smoke runs.
    "tiny": GPTShape(vocab_size=256, d_model=64, n_layers=2, n_heads=4),
    # ~5.2 M params: the CPU step-cost default.
    "small": GPTShape(vocab_size=4096, d_model=256, n_layers=4, n_heads=4),
    # GPT-2 small / medium (124 M / 355 M with a 50304 vocabulary): GPU runs.
    "gpt2-small": GPTShape(vocab_size=50304, d_model=768, n_layers=12, n_heads=12, max_len=1024),
    "gpt2-medium": GPTShape(vocab_size=50304, d_model=1024, n_layers=24, n_heads=16, max_len=1024),
}


def _block_shapes(s: GPTShape) -> dict[str, Any]:
    d, h, hd, f = s.d_model, s.n_heads, s.head_dim, s.mlp_ratio * s.d_model
    return {
        "attn_norm": {"scale": (d,)},
        "attn": {
            "query": {"kernel": (d, h, hd)},
            "key": {"kernel": (d, h, hd)},
            "value": {"kernel": (d, h, hd)},
            "out": {"kernel": (h, hd, d)},
        },
        "mlp_norm": {"scale": (d,)},
        "mlp": {"up": {"kernel": (d, f)}, "down": {"kernel": (f, d)}},
    }


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def gpt_shapes(s: GPTShape) -> dict[str, Any]:
    """The tree of shape tuples."""
    tree: dict[str, Any] = {"embed": {"embedding": (s.vocab_size, s.d_model)}}
    if s.max_len:
        tree["pos_embed"] = {"embedding": (s.max_len, s.d_model)}
    block = _block_shapes(s)
    if s.scanned:
        tree["blocks"] = jax.tree.map(lambda t: (s.n_layers, *t), block, is_leaf=_is_shape)
    else:
        tree["blocks"] = {str(i): block for i in range(s.n_layers)}
    tree["final_norm"] = {"scale": (s.d_model,)}
    if not s.tie_embeddings:
        tree["lm_head"] = {"kernel": (s.d_model, s.vocab_size)}
    return tree


def gpt_param_shapes(s: GPTShape, dtype: Any = jnp.float32) -> dict[str, Any]:
    """The tree as ``jax.ShapeDtypeStruct`` leaves (for abstract init and byte counts)."""
    return jax.tree.map(lambda t: jax.ShapeDtypeStruct(t, dtype), gpt_shapes(s), is_leaf=_is_shape)


def gpt_param_count(s: GPTShape) -> int:
    leaves = jax.tree.leaves(gpt_shapes(s), is_leaf=_is_shape)
    return int(sum(int(np.prod(t)) for t in leaves))


def gpt_params(s: GPTShape, key: jax.Array, dtype: Any = jnp.float32, std: float = 0.02) -> Any:
    """Random parameters (normal, ``std``; norm scales are ones)."""
    shapes = gpt_shapes(s)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    keys = jax.random.split(key, len(flat))
    leaves = []
    for (path, shape), k in zip(flat, keys):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            leaves.append(jnp.ones(shape, dtype))
        else:
            leaves.append((std * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def quadratic_loss(params: Any) -> jax.Array:
    """A smooth surrogate loss over any tree (``Σ ½‖p‖² + ¼Σp⁴``), for
    benchmarks that need a ``loss_fn`` (e.g. extra args of curvature methods)."""
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(params)]
    return sum(0.5 * jnp.sum(x**2) + 0.25 * jnp.sum(x**4) for x in leaves)
