"""Flax NNX adapter modules and adapter surgery (LoRA, SoRA, LoRA-XS / LoRA-SB).

All modules subclass ``nnx.LoRA`` (so :func:`optx.lora.lora_pairs` and any
module-type router recognise them) and keep its parameter names
(``lora_a`` ``(fan_in, r)``, ``lora_b`` ``(r, fan_out)``):

* :class:`ScaledLoRA` — ``y = base(x) + s·(x A) B`` with a forward scale
  ``s`` (``nnx.LoRA`` has none; use ``optx.lora.lora_scale(α, r)`` for α/r or
  rsLoRA's α/√r) and multi-axis features, so it also wraps
  ``nnx.LinearGeneral`` (attention projections ``(d, heads, head_dim)``).
* :class:`GatedLoRA` — SoRA's ``y = base(x) + s·((x A) ⊙ g) B`` with a gate
  ``lora_gate`` ``(r,)`` (initialised ``N(0, 1)`` as the official code).
* :class:`LoRAXS` — LoRA-XS / LoRA-SB's ``y = base(x) + s·((x A) R) B`` with
  ``A``, ``B`` frozen (:class:`LoRAFrozen`, not an ``nnx.Param``) and only
  the ``r × r`` core ``lora_core`` trained.

Surgery: :func:`add_lora` wraps a model's ``nnx.Linear``/``nnx.LinearGeneral``
layers in place; :func:`lora_sb_init` initialises :class:`LoRAXS` adapters
from the estimated first full fine-tuning step; :func:`prune_sora` replaces
:class:`GatedLoRA` adapters by plain :class:`ScaledLoRA` of their active rank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optx._src import base, lora

KINDS = ("lora", "gated", "xs")
_GATE_INIT = nnx.initializers.normal(1.0)
_XS_B_INIT = nnx.initializers.lecun_normal()


class LoRAFrozen(nnx.Variable):
    """A frozen adapter factor: a ``Variable`` that is not an ``nnx.Param``
    (no gradient under ``nnx.grad``, no optimizer state under
    ``nnx.Optimizer(..., wrt=nnx.Param)``)."""


def _features(x: int | Sequence[int]) -> tuple[int, ...]:
    return (int(x),) if isinstance(x, (int, np.integer)) else tuple(int(d) for d in x)


class ScaledLoRA(nnx.LoRA):
    """``nnx.LoRA`` with a forward scale and multi-axis in/out features.

    ``y = base(x) + s·(x A) B`` where ``x``'s trailing ``len(in_features)``
    axes are flattened to ``fan_in`` and the output is reshaped to
    ``out_features``. Parameters keep ``nnx.LoRA``'s names and types.

    Args:
      in_features: an int or the trailing input shape (``(heads, head_dim)``).
      lora_rank: ``r``.
      out_features: an int or the output feature shape.
      scale: ``s`` (static; e.g. ``optx.lora.lora_scale(16, 8)``).
      base_module: the wrapped layer (called on the same input).
      rngs, dtype, param_dtype, a_initializer, b_initializer,
        lora_param_type, promote_dtype: as ``nnx.LoRA``.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> from flax import nnx
      >>> base = nnx.LinearGeneral(4, (2, 3), rngs=nnx.Rngs(0))
      >>> layer = optx.lora.ScaledLoRA(4, 2, (2, 3), scale=2.0, base_module=base, rngs=nnx.Rngs(1))
      >>> layer(jnp.ones((5, 4))).shape, layer.lora_b.shape
      ((5, 2, 3), (2, 6))
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        lora_rank: int,
        out_features: int | Sequence[int],
        *,
        scale: float = 1.0,
        base_module: nnx.Module | None = None,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ) -> None:
        self.in_shape = _features(in_features)
        self.out_shape = _features(out_features)
        rank = base.check_positive_int("lora_rank", lora_rank, allow_zero=True)
        s = base._concrete_float(scale)
        if s is None or not math.isfinite(s):
            raise ValueError(f"`scale` must be a finite Python number, got {scale!r}.")
        super().__init__(
            math.prod(self.in_shape),
            rank,
            math.prod(self.out_shape),
            base_module=base_module,
            rngs=rngs,
            **kwargs,
        )
        self.lora_rank = rank
        self.scale = s

    def _mix(self, z: jax.Array, extras: tuple[jax.Array, ...]) -> jax.Array:
        """The rank-space map between ``x A`` and ``B`` (identity here)."""
        del extras
        return z

    def _extras(self) -> tuple[jax.Array, ...]:
        return ()

    def __call__(self, x: jax.Array, **kwargs: Any) -> jax.Array:
        n = len(self.in_shape)
        lead = x.shape[: x.ndim - n]
        h = x.reshape(*lead, math.prod(self.in_shape))
        h, a, b, *extras = self.promote_dtype(
            (h, self.lora_a[...], self.lora_b[...], *self._extras()), dtype=self.dtype
        )
        z = self._mix(h @ a, tuple(extras))
        out = (self.scale * (z @ b)).reshape(*lead, *self.out_shape)
        if self.base_module is not None:
            if not callable(self.base_module):
                raise ValueError("`base_module` must be callable.")
            out = out + self.base_module(x, **kwargs)
        return out


class GatedLoRA(ScaledLoRA):
    """SoRA's gated adapter: ``y = base(x) + s·((x A) ⊙ g) B`` (arXiv 2311.11696, Eq. 4).

    The gate ``lora_gate`` ``(r,)`` is initialised ``N(0, 1)`` (the official
    ``torch.randn(1, r)``); train it with :func:`optx.sora`, which thresholds
    it after each step. :func:`prune_sora` turns a trained module into a
    :class:`ScaledLoRA` of the active rank.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> from flax import nnx
      >>> layer = optx.lora.GatedLoRA(4, 3, 5, rngs=nnx.Rngs(0))
      >>> layer.lora_gate.shape, layer(jnp.ones((2, 4))).shape
      ((3,), (2, 5))
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        lora_rank: int,
        out_features: int | Sequence[int],
        *,
        gate_initializer: Callable[..., jax.Array] = _GATE_INIT,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_features, lora_rank, out_features, rngs=rngs, **kwargs)
        self.lora_gate = self.lora_param_type(
            gate_initializer(rngs.params(), (self.lora_rank,), self.param_dtype)
        )

    def _extras(self) -> tuple[jax.Array, ...]:
        return (self.lora_gate[...],)

    def _mix(self, z: jax.Array, extras: tuple[jax.Array, ...]) -> jax.Array:
        return z * extras[0]


class LoRAXS(ScaledLoRA):
    """LoRA-XS / LoRA-SB adapter: ``y = base(x) + s·((x A) R) B``, only ``R`` trained.

    ``A`` ``(fan_in, r)`` and ``B`` ``(r, fan_out)`` are :class:`LoRAFrozen`
    variables; the core ``lora_core`` ``(r, r)`` is an ``nnx.LoRAParam``
    (zero-initialised). :func:`lora_sb_init` sets ``A``, ``R``, ``B`` from the
    truncated SVD of the estimated first full fine-tuning update. Train with
    ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` (or ``optx.lora.lora_filter``)
    and any optax/optx optimizer. The official code's latent ``nn.Linear``
    weight is ``Rᵀ`` (PyTorch applies ``z Wᵀ``).

    Example:
      >>> import jax.numpy as jnp, optx
      >>> from flax import nnx
      >>> layer = optx.lora.LoRAXS(4, 2, 5, rngs=nnx.Rngs(0))
      >>> type(layer.lora_a).__name__, layer.lora_core.shape
      ('LoRAFrozen', (2, 2))
    """

    def __init__(
        self,
        in_features: int | Sequence[int],
        lora_rank: int,
        out_features: int | Sequence[int],
        *,
        b_initializer: Callable[..., jax.Array] = _XS_B_INIT,
        core_initializer: Callable[..., jax.Array] = nnx.initializers.zeros,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("lora_param_type", LoRAFrozen)
        super().__init__(
            in_features, lora_rank, out_features, b_initializer=b_initializer, rngs=rngs, **kwargs
        )
        r = self.lora_rank
        self.lora_core = nnx.LoRAParam(core_initializer(rngs.params(), (r, r), self.param_dtype))

    def _extras(self) -> tuple[jax.Array, ...]:
        return (self.lora_core[...],)

    def _mix(self, z: jax.Array, extras: tuple[jax.Array, ...]) -> jax.Array:
        return z @ extras[0]


_KIND_CLASSES: dict[str, type[ScaledLoRA]] = {
    "lora": ScaledLoRA,
    "gated": GatedLoRA,
    "xs": LoRAXS,
}


# ----------------------------------------------------------------------------
# Surgery
# ----------------------------------------------------------------------------


def _nodes(model: nnx.Module) -> dict[tuple[Any, ...], Any]:
    return dict(nnx.iter_graph(model))


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path)


def _replace(model: nnx.Module, nodes: dict[tuple[Any, ...], Any], path: tuple[Any, ...], new: Any):
    parent = model if len(path) == 1 else nodes[path[:-1]]
    key = path[-1]
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def _linear_shapes(path: str, node: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    kernel_ndim = node.kernel.ndim
    if isinstance(node, nnx.LinearGeneral):
        in_shape, out_shape = tuple(node.in_features), tuple(node.out_features)
        trailing = tuple(range(-len(in_shape), 0))
        axes = tuple(a - kernel_ndim if a >= 0 else a for a in node.axis)
        if node.batch_axis or tuple(sorted(axes)) != trailing:
            raise ValueError(
                f"add_lora: '{path}' is an nnx.LinearGeneral over non-trailing axes "
                f"{node.axis} (or with batch axes); only trailing input axes are supported."
            )
    else:
        in_shape, out_shape = (int(node.in_features),), (int(node.out_features),)
    if kernel_ndim != len(in_shape) + len(out_shape):
        raise ValueError(
            f"add_lora: '{path}' has a stacked kernel {node.kernel.shape} (nnx.vmap/scan layers); "
            "create the adapters inside the vmapped constructor instead."
        )
    return in_shape, out_shape


def add_lora(
    model: nnx.Module,
    rank: int,
    *,
    rngs: nnx.Rngs,
    kind: str = "lora",
    alpha: float | None = None,
    scaling: str = "lora",
    targets: str | Callable[[str, nnx.Module], bool] | None = None,
    **module_kwargs: Any,
) -> list[str]:
    """Wraps ``nnx.Linear``/``nnx.LinearGeneral`` layers of ``model`` in adapters, in place.

    Each matched layer ``m`` at path ``p`` is replaced by
    ``Adapter(..., base_module=m)`` (kind ``'lora'`` → :class:`ScaledLoRA`,
    ``'gated'`` → :class:`GatedLoRA` (SoRA), ``'xs'`` → :class:`LoRAXS`
    (LoRA-XS / LoRA-SB)); the base kernel moves to ``p/base_module/kernel``.
    The forward scale is ``α/r`` (``scaling='lora'``) or ``α/√r``
    (``'rslora'``), or 1 when ``alpha`` is None.

    Args:
      model: the model (modified in place).
      rank: adapter rank ``r``.
      rngs: for the adapter initialisation.
      kind: ``'lora'``, ``'gated'`` or ``'xs'``.
      alpha, scaling: the scale (see :func:`optx.lora.lora_scale`).
      targets: a regular expression searched in the '/'-joined module path,
        or ``(path, module) -> bool``; default every Linear/LinearGeneral.
      **module_kwargs: passed to the adapter class (initialisers, dtypes).

    Returns:
      The paths of the wrapped layers.

    Raises:
      ValueError: nothing matched, a stacked (scanned) layer, or a
        LinearGeneral over non-trailing axes.

    Example:
      >>> import optx
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.up = nnx.Linear(4, 8, rngs=rngs)
      ...         self.head = nnx.Linear(8, 3, rngs=rngs)
      >>> net = Net(nnx.Rngs(0))
      >>> optx.lora.add_lora(net, 2, rngs=nnx.Rngs(1), targets=r"^up$")
      ['up']
      >>> [p.base for p in optx.lora.lora_pairs(net)]
      ['up/base_module/kernel']
    """
    base.check_choice("kind", kind, KINDS)
    rank = base.check_positive_int("rank", rank)
    scale = 1.0 if alpha is None else float(lora.lora_scale(alpha, rank, scaling))
    cls = _KIND_CLASSES[kind]
    nodes = _nodes(model)
    swaps = []
    for path, node in nodes.items():
        if not path or type(node) not in (nnx.Linear, nnx.LinearGeneral):
            continue
        if isinstance(nodes.get(path[:-1]), nnx.LoRA):
            continue  # already the base of an adapter
        p = _path_str(path)
        if targets is not None:
            ok = re.search(targets, p) if isinstance(targets, str) else targets(p, node)
            if not ok:
                continue
        in_shape, out_shape = _linear_shapes(p, node)
        kwargs = {"param_dtype": node.param_dtype, "dtype": node.dtype, **module_kwargs}
        adapter = cls(in_shape, rank, out_shape, scale=scale, base_module=node, rngs=rngs, **kwargs)
        swaps.append((path, adapter))
    if not swaps:
        raise ValueError(f"add_lora: no nnx.Linear/LinearGeneral layer matched {targets!r}.")
    for path, adapter in swaps:
        _replace(model, nodes, path, adapter)
    return [_path_str(p) for p, _ in swaps]


# ----------------------------------------------------------------------------
# LoRA-SB initialisation
# ----------------------------------------------------------------------------


def _slice_batch(batch: Any, k: int) -> Any:
    return jax.tree.map(lambda x: x[:k], batch)


def _batch_size(batch: Any) -> int:
    return int(np.shape(jax.tree.leaves(batch)[0])[0])


def estimate_first_update(
    grad_fn: Callable[[Any], Any],
    batches: Iterable[Any],
    *,
    num_samples: int,
    learning_rate: float,
) -> Any:
    """LoRA-SB's estimate of the first full fine-tuning step: ``ΔW ≈ −η·sign(Σ_b g_b/k_b)``.

    Adam's first step is a sign step; the official
    ``estimate_and_process_grads_torch`` sums, over the first
    ``num_samples`` examples, the gradients of each batch's (mean) loss
    divided by its number of examples ``k_b`` (batches are cut at
    ``num_samples``), then returns ``−η·sign``. ``grad_fn(batch)`` returns
    the gradient tree of the mean loss on ``batch`` (a pytree with a leading
    example axis).

    Example:
      >>> import jax, jax.numpy as jnp, optx
      >>> x = jnp.arange(6.0).reshape(3, 2)
      >>> g = lambda b: jax.grad(lambda w: jnp.mean((b @ w - 1.0) ** 2))(jnp.zeros(2))
      >>> optx.lora.estimate_first_update(g, [x], num_samples=3, learning_rate=0.5).tolist()
      [0.5, 0.5]
    """
    num_samples = base.check_positive_int("num_samples", num_samples)
    total, seen = None, 0
    for batch in batches:
        k = min(_batch_size(batch), num_samples - seen)
        if k <= 0:
            break
        g = grad_fn(_slice_batch(batch, k))
        g = jax.tree.map(lambda x, k=k: x / k, g)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
        seen += k
    if total is None:
        raise ValueError("estimate_first_update: `batches` yielded no examples.")
    return jax.tree.map(lambda x: -learning_rate * jnp.sign(x), total)


def lora_sb_factors(delta: jax.Array, rank: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(A, R, B)`` with ``A = U_r``, ``R = diag(S_r)``, ``B = V_rᵀ`` of ``ΔW ≈ U S Vᵀ``.

    ``delta`` is ``(…, fan_in, fan_out)`` (Flax orientation; the official code
    takes the SVD of ``weight.T``, the same matrix). Exact SVD (the official
    code uses ``torch.svd_lowrank(q=r, niter=10)`` and rounds the factors to
    bfloat16). Singular-vector signs are LAPACK's.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> a, r, b = optx.lora.lora_sb_factors(jnp.diag(jnp.array([3.0, 2.0, 1.0])), 2)
      >>> r.tolist()
      [[3.0, 0.0], [0.0, 2.0]]
    """
    rank = base.check_positive_int("rank", rank)
    if rank > min(delta.shape[-2:]):
        raise ValueError(f"rank {rank} exceeds min(fan_in, fan_out) of a {delta.shape} update.")
    cdt = base.compute_dtype(delta.dtype)
    u, s, vt = jnp.linalg.svd(delta.astype(cdt), full_matrices=False)
    core = s[..., :rank, None] * jnp.eye(rank, dtype=cdt)
    return u[..., :rank], core, vt[..., :rank, :]


def lora_sb_init(
    model: nnx.Module,
    loss_fn: Callable[[nnx.Module, Any], jax.Array],
    batches: Iterable[Any],
    *,
    learning_rate: float,
    num_samples: int,
) -> dict[str, jax.Array]:
    """LoRA-SB initialisation of every :class:`LoRAXS` adapter of ``model``, in place.

    1. ``ΔW ≈ −η·sign(Σ g)`` of each adapted base kernel from ``num_samples``
       examples (:func:`estimate_first_update`; gradients of ``loss_fn(model,
       batch)``, the batch's mean loss);
    2. truncated SVD ``ΔW ≈ U_r S_r V_rᵀ``;
    3. ``A ← U_r``, ``R ← diag(S_r)``, ``B ← V_rᵀ`` (:func:`lora_sb_factors`).

    The adapted model then computes ``W₀ + s·U_r S_r V_rᵀ``: the first
    (approximate) full fine-tuning step is applied. ``learning_rate`` is the
    learning rate of that first step (the official GLUE script passes
    ``lr / warmup_steps``, the first warmup step's rate; ``S_r ∝ η``).

    References:
      Ponkshe, Singhal, Gorbunov, Tumanov, Horvath, Vepakomma, "Initialization
      using Update Approximation is a Silver Bullet for Extremely Efficient
      Low-Rank Fine-Tuning", arXiv 2411.19557 (code:
      github.com/RaghavSinghal10/lora-sb); LoRA-XS: Bałazy, Banaei, Aberer,
      Tabor, arXiv 2405.17604.

    Returns:
      The estimated ``ΔW`` per base-kernel path.

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> from flax import nnx
      >>> layer = optx.lora.LoRAXS(3, 1, 2, base_module=nnx.Linear(3, 2, rngs=nnx.Rngs(0)),
      ...                     rngs=nnx.Rngs(1))
      >>> class Net(nnx.Module):
      ...     def __init__(self): self.layer = layer
      >>> net = Net()
      >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
      >>> loss = lambda m, b: jnp.mean((m.layer(b[0]) - b[1]) ** 2)
      >>> _ = optx.lora.lora_sb_init(net, loss, [(x, y)], learning_rate=1e-3, num_samples=4)
      >>> net.layer.lora_core.shape
      (1, 1)
    """
    pairs = [p for p in lora.lora_pairs(model) if p.core is not None]
    if not pairs:
        raise ValueError("lora_sb_init: the model has no LoRA-XS adapters (optx.lora.LoRAXS).")
    missing = [p.a for p in pairs if p.base is None]
    if missing:
        raise ValueError(f"lora_sb_init: adapters without a base kernel: {missing}.")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grad_fn(batch: Any) -> dict[str, jax.Array]:
        def f(p: Any) -> jax.Array:
            return loss_fn(nnx.merge(graphdef, p, rest), batch)

        leaves = lora._leaves_by_path(jax.grad(f)(params))
        return {p.base: leaves[p.base] for p in pairs}

    deltas = estimate_first_update(
        grad_fn, batches, num_samples=num_samples, learning_rate=learning_rate
    )
    nodes = {_path_str(k): v for k, v in _nodes(model).items()}
    for p in pairs:
        module = nodes[p.a.rpartition("/")[0]]
        a_shape, b_shape = module.lora_a.shape, module.lora_b.shape
        batch = a_shape[:-2]
        delta = deltas[p.base].reshape(*batch, a_shape[-2], b_shape[-1])
        a, core, b = lora_sb_factors(delta, p.rank)
        module.lora_a.set_value(a.astype(module.lora_a.dtype))
        module.lora_core.set_value(core.astype(module.lora_core.dtype))
        module.lora_b.set_value(b.astype(module.lora_b.dtype))
    return deltas


# ----------------------------------------------------------------------------
# SoRA pruning
# ----------------------------------------------------------------------------


def prune_sora(model: nnx.Module) -> dict[str, int]:
    """Replaces every :class:`GatedLoRA` by a :class:`ScaledLoRA` of its active rank, in place.

    The active ranks are the non-zero gate entries (for stacked adapters,
    those non-zero in any slice); the gate is folded into ``A``:
    ``A' = (A ⊙ g)[:, active]``, ``B' = B[active, :]``, so the model computes
    the same function with ``r' = #active`` ranks (the rank the SoRA paper
    reports). A fully pruned adapter becomes rank 0.

    Returns:
      The new rank per adapter path.

    Example:
      >>> import jax.numpy as jnp, optx
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self):
      ...         self.g = optx.lora.GatedLoRA(4, 3, 2, rngs=nnx.Rngs(0))
      >>> net = Net()
      >>> net.g.lora_gate.set_value(jnp.array([0.0, 1.5, 0.0]))
      >>> x = jnp.ones((1, 4)); before = net.g(x)
      >>> optx.lora.prune_sora(net)
      {'g': 1}
      >>> bool(jnp.allclose(net.g(x), before)), type(net.g).__name__
      (True, 'ScaledLoRA')
    """
    nodes = _nodes(model)
    ranks = {}
    swaps = []
    for path, node in nodes.items():
        if not isinstance(node, GatedLoRA):
            continue
        gate = np.asarray(node.lora_gate[...])
        batch_axes = tuple(range(gate.ndim - 1))
        active = np.flatnonzero(np.any(gate != 0, axis=batch_axes) if batch_axes else gate != 0)
        a = jnp.asarray(node.lora_a[...]) * jnp.asarray(gate)[..., None, :]
        new = ScaledLoRA(
            node.in_shape,
            int(active.size),
            node.out_shape,
            scale=node.scale,
            base_module=node.base_module,
            dtype=node.dtype,
            param_dtype=node.param_dtype,
            a_initializer=nnx.initializers.zeros,
            b_initializer=nnx.initializers.zeros,
            rngs=nnx.Rngs(0),
        )
        new.lora_a.set_value(a[..., active].astype(node.lora_a.dtype))
        new.lora_b.set_value(jnp.asarray(node.lora_b[...])[..., active, :])
        swaps.append((path, new))
        ranks[_path_str(path)] = int(active.size)
    for path, new in swaps:
        _replace(model, nodes, path, new)
    return ranks
