"""Routing parameters to transforms by key path (DESIGN §2).

A :class:`Router` is an ordered list of :class:`Rule`\\ s. Each rule matches a
leaf by a regular expression (or glob) on its '/'-joined key path — NNX's
trailing ``.value`` is ignored — and optionally by rank, and assigns it a
*group* (a label such as ``"matrix"`` or ``"fallback"``) and, for matrix
groups, a :class:`~optx.MatrixLayout`. The first matching rule wins; leaves no
rule matches go to ``default_group``.

Routing is by path, not by ``ndim == 2``: optax's rule sends a scanned kernel
``(L, in, out)`` to Adam and a scanned bias ``(L, d)`` to Muon, exactly
backwards. The default rules (:func:`default_rules`) send

* embeddings, LM heads/classifiers, norms, biases, scalars and vectors to
  ``"fallback"`` (AdamW in the aliases), and
* hidden kernels — Dense ``(.., in, out)`` with any leading stack axes,
  attention projections ``(d, heads, head_dim)``/``(heads, head_dim, d)``, and
  Conv kernels ``(*window, in, out)`` — to ``"matrix"`` with their layout.

:func:`describe` prints which leaf goes where, with which layout.

Example:
  >>> import jax.numpy as jnp, optx
  >>> params = {'embed': {'embedding': jnp.zeros((100, 16))},
  ...           'mlp': {'kernel': jnp.zeros((16, 64)), 'bias': jnp.zeros((64,))}}
  >>> router = optx.default_router()
  >>> router.labels(params)['mlp']
  {'bias': 'fallback', 'kernel': 'matrix'}
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts
from optx._src.layouts import MatrixLayout

MATRIX = "matrix"
FALLBACK = "fallback"

LayoutRule = MatrixLayout | Callable[[tuple[int, ...]], MatrixLayout | None] | None


@dataclasses.dataclass(frozen=True)
class Rule:
    """One routing rule.

    Attributes:
      pattern: a regular expression searched (``re.search``) in the leaf's
        '/'-joined path, e.g. ``r'(^|/)lm_head(/|$)'``; or a glob matched against
        the whole path when ``syntax='glob'`` (e.g. ``'*/attn/*/kernel'``).
      group: the group name assigned to matching leaves.
      layout: for matrix groups, a :class:`MatrixLayout` or a function
        ``shape -> MatrixLayout | None``; ``None`` for non-matrix groups.
      min_ndim, max_ndim: optional rank bounds (inclusive) a leaf must satisfy.
      syntax: ``'regex'`` (default) or ``'glob'``.
      name: a short description shown by :func:`describe`.
    """

    pattern: str
    group: str
    layout: LayoutRule = None
    min_ndim: int | None = None
    max_ndim: int | None = None
    syntax: str = "regex"
    name: str = ""

    def __post_init__(self) -> None:
        base.check_choice("syntax", self.syntax, ("regex", "glob"))
        if not isinstance(self.group, str) or not self.group:
            raise ValueError(f"Rule group must be a non-empty string, got {self.group!r}.")
        regex = fnmatch.translate(self.pattern) if self.syntax == "glob" else self.pattern
        try:
            object.__setattr__(self, "_compiled", re.compile(regex))
        except re.error as e:
            raise ValueError(f"Invalid rule pattern {self.pattern!r}: {e}") from None
        if self.layout is not None and not (
            isinstance(self.layout, MatrixLayout) or callable(self.layout)
        ):
            raise TypeError(f"Rule layout must be a MatrixLayout or callable, got {self.layout!r}.")

    def matches(self, path: str, ndim: int) -> bool:
        if self.min_ndim is not None and ndim < self.min_ndim:
            return False
        if self.max_ndim is not None and ndim > self.max_ndim:
            return False
        compiled = self._compiled  # type: ignore[attr-defined]
        if self.syntax == "glob":
            return compiled.match(path) is not None
        return compiled.search(path) is not None

    def layout_for(self, shape: tuple[int, ...]) -> MatrixLayout | None:
        if self.layout is None or isinstance(self.layout, MatrixLayout):
            return self.layout
        return self.layout(shape)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Where one leaf is routed: its group, its layout and the rule that decided."""

    path: str
    shape: tuple[int, ...]
    group: str
    layout: MatrixLayout | None
    rule: str


def _component(names: str) -> str:
    """Regex matching one whole path component among ``names`` (a regex alternation)."""
    return rf"(^|/)({names})(/|$)"


def _conv_kernel_layout(shape: tuple[int, ...]) -> MatrixLayout | None:
    if len(shape) < 3:
        return None
    return layouts.conv_layout(len(shape) - 2)


def default_rules() -> tuple[Rule, ...]:
    """The default routing rules for common Flax (NNX and linen) models.

    In order (first match wins):

    1. leaves with ``ndim < 2`` → fallback (scalars, biases, norm scales);
    2. a path component named like an embedding (``embed*``, ``*embedding*``,
       ``wte``, ``wpe``, ``tok_emb*``, ``pos_emb*``) → fallback;
    3. a component named ``lm_head``, ``head``, ``unembed*``, ``classifier`` or
       ``logits`` → fallback (output layers stay on AdamW, as in every
       Muon-family paper);
    4. a leaf named ``bias``, ``scale``, ``embedding`` or a component named like
       a norm (``*norm*``, ``ln*``, ``bn*``) → fallback — this catches *stacked*
       biases and norm scales ``(L, d)`` that ``ndim == 2`` rules misroute;
    5. a ``kernel`` under a component named ``conv*`` → matrix, conv layout
       (window and input channels are the fan-in);
    6. a ``kernel`` of rank >= 3 under ``query``/``key``/``value`` → matrix,
       :data:`~optx.ATTENTION_IN` (``(d, heads, head_dim)`` as one ``d × heads·hd``
       matrix; extra leading axes are stack axes);
    7. a ``kernel`` of rank >= 3 under ``out`` → matrix, :data:`~optx.ATTENTION_OUT`;
    8. any other leaf with ``ndim >= 2`` → matrix, :data:`~optx.DENSE`
       (``(..., in, out)``; leading axes are scanned/stacked layers).
    """
    return (
        Rule(r".*", FALLBACK, max_ndim=1, name="scalar/vector"),
        Rule(
            _component(r"embed\w*|\w*embedding\w*|wte|wpe|tok_emb\w*|pos_emb\w*|token_emb\w*"),
            FALLBACK,
            name="embedding",
        ),
        Rule(_component(r"lm_head|head|unembed\w*|classifier|logits"), FALLBACK, name="head"),
        Rule(r"(^|/)(bias|scale|embedding)$", FALLBACK, name="bias/scale"),
        Rule(_component(r"\w*norm\w*|ln\w*|bn\w*"), FALLBACK, name="norm"),
        Rule(
            r"(^|/)conv\w*(/(.*/)?kernel)?$",
            MATRIX,
            layout=_conv_kernel_layout,
            min_ndim=3,
            name="conv",
        ),
        Rule(
            r"(^|/)(query|key|value)/kernel$",
            MATRIX,
            layouts.ATTENTION_IN,
            min_ndim=3,
            name="attention-in",
        ),
        Rule(r"(^|/)out/kernel$", MATRIX, layouts.ATTENTION_OUT, min_ndim=3, name="attention-out"),
        Rule(r".*", MATRIX, layouts.DENSE, min_ndim=2, name="dense"),
    )


class Router:
    """Assigns every leaf of a parameter tree to a group and a layout.

    Args:
      rules: ordered :class:`Rule`\\ s; the first match wins. Defaults to
        :func:`default_rules`.
      default_group: group for leaves no rule matches.
      matrix_groups: the groups whose leaves must have a layout. A rule that
        sends a leaf to one of these groups without a valid layout raises a
        ``ValueError`` naming the leaf.

    A Router is deliberately not callable, so it can be passed through
    ``optax.inject_hyperparams`` as a static argument.

    Example:
      >>> import optx
      >>> router = optx.default_router().with_rules(
      ...     optx.Rule(r'(^|/)readout/', 'fallback', name='my readout'))
    """

    def __init__(
        self,
        rules: Sequence[Rule] | None = None,
        *,
        default_group: str = FALLBACK,
        matrix_groups: Iterable[str] = (MATRIX,),
    ) -> None:
        rules = tuple(default_rules() if rules is None else rules)
        for r in rules:
            if not isinstance(r, Rule):
                raise TypeError(f"Router rules must be optx.Rule objects, got {r!r}.")
        self.rules = rules
        self.default_group = default_group
        self.matrix_groups = frozenset(matrix_groups)

    def __repr__(self) -> str:
        return f"Router({len(self.rules)} rules, default_group={self.default_group!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Router)
            and self.rules == other.rules
            and self.default_group == other.default_group
            and self.matrix_groups == other.matrix_groups
        )

    def __hash__(self) -> int:
        return hash((self.rules, self.default_group, self.matrix_groups))

    def with_rules(self, *rules: Rule, prepend: bool = True) -> Router:
        """A new router with extra rules (checked first unless ``prepend=False``)."""
        new = (*rules, *self.rules) if prepend else (*self.rules, *rules)
        return Router(new, default_group=self.default_group, matrix_groups=self.matrix_groups)

    def assign(self, path: str, leaf: Any) -> Assignment:
        """The :class:`Assignment` of one leaf (``path`` is the '/'-joined path)."""
        shape = tuple(jnp.shape(leaf))
        for i, rule in enumerate(self.rules):
            if rule.matches(path, len(shape)):
                layout = rule.layout_for(shape) if rule.group in self.matrix_groups else None
                name = rule.name or f"rule {i}"
                if rule.group in self.matrix_groups:
                    if layout is None:
                        raise ValueError(
                            f"Rule '{name}' routes leaf '{path}' (shape {shape}) to matrix group "
                            f"'{rule.group}' but gives it no layout."
                        )
                    layouts.resolve_layout(layout, shape, path)  # raises with the path
                return Assignment(path, shape, rule.group, layout, name)
        return Assignment(path, shape, self.default_group, None, "default")

    def group(self, path: str, leaf: Any) -> str:
        return self.assign(path, leaf).group

    def layout(self, path: str, leaf: Any) -> MatrixLayout | None:
        """Layout of a leaf, or None if it is not routed to a matrix group."""
        return self.assign(path, leaf).layout

    def labels(self, tree: Any) -> Any:
        """A tree of group names with the structure of ``tree`` (for ``optax.partition``)."""
        return base.tree_map_with_path_str(lambda p, x: self.group(p, x), tree)

    def assignments(self, tree: Any) -> list[Assignment]:
        flat, _ = base.flatten_with_paths(tree)
        return [self.assign(p, x) for p, x in flat]

    def describe(self, tree: Any) -> str:
        return describe(self, tree)


def default_router() -> Router:
    """A :class:`Router` with :func:`default_rules`."""
    return _DEFAULT_ROUTER


_DEFAULT_ROUTER = Router()


def as_router(router: Router | Sequence[Rule] | None) -> Router:
    """Accepts a Router, a sequence of Rules, or None (the default router)."""
    if router is None:
        return default_router()
    if isinstance(router, Router):
        return router
    if isinstance(router, Sequence) and all(isinstance(r, Rule) for r in router):
        return Router(router)
    raise TypeError(f"Expected an optx.Router, a sequence of optx.Rule or None, got {router!r}.")


# ----------------------------------------------------------------------------
# Routed transforms
# ----------------------------------------------------------------------------


@hyperparams.validated()
def routed(
    transforms: Mapping[str, optax.GradientTransformation],
    router: Router | Sequence[Rule] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``optax.partition`` driven by a :class:`Router`.

    Labels are computed from key paths on every call (robust to NNX Variable
    boxes, which ``init`` sees and ``update`` does not). Every group the router
    produces for the given params must have a transform, otherwise ``init``
    raises a ValueError listing the leaves. The router is kept on the returned
    transform's ``init`` function so :func:`describe` can show it.

    Example:
      >>> import optax, optx
      >>> tx = optx.routed({'matrix': optx.scale_by_newton_schulz(),
      ...                   'fallback': optax.scale_by_adam()})
    """
    router = as_router(router)
    transforms = dict(transforms)
    partition = optax.partition(transforms, router.labels)

    def init_fn(params: base.Params) -> optax.OptState:
        missing = [a for a in router.assignments(params) if a.group not in transforms]
        if missing:
            listing = ", ".join(f"'{a.path}' -> '{a.group}'" for a in missing[:6])
            raise ValueError(
                f"The router sends leaves to groups with no transform: {listing}. "
                f"Transforms are given for groups {sorted(transforms)}."
            )
        return partition.init(params)

    def update_fn(
        updates: base.Updates,
        state: optax.OptState,
        params: base.Params | None = None,
        **extra: Any,
    ) -> tuple[base.Updates, optax.OptState]:
        if params is not None:
            base.check_same_structure("updates", updates, "params", params)
        return partition.update(updates, state, params, **extra)

    init_fn.router = router  # type: ignore[attr-defined]
    init_fn.groups = tuple(transforms)  # type: ignore[attr-defined]
    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def router_of(tx: Any) -> Router | None:
    """The router attached to a transform built by :func:`routed`, if any."""
    return getattr(getattr(tx, "init", None), "router", None)


def describe(tx_or_router: Any, params: Any, *, print_table: bool = True) -> str:
    """Prints (and returns) a table: leaf → group → layout → matrix view.

    Args:
      tx_or_router: an optx optimizer built with routing (``optx.muon(...)``),
        a :class:`Router`, a sequence of :class:`Rule`, or None for the default.
      params: the parameter tree (arrays, ``ShapeDtypeStruct`` or an NNX State).
      print_table: print the table as well as returning it.
    """
    router: Router | None
    if isinstance(tx_or_router, Router) or tx_or_router is None:
        router = as_router(tx_or_router)
    elif isinstance(tx_or_router, optax.GradientTransformation):
        router = router_of(tx_or_router)
        if router is None:
            raise ValueError(
                "This transform carries no routing information; pass the Router instead "
                "(e.g. optx.describe(optx.default_router(), params))."
            )
    else:
        router = as_router(tx_or_router)
    rows = [("path", "shape", "group", "layout (red | out | batch)", "matrices", "rule")]
    for a in router.assignments(params):
        if a.layout is None:
            lay, mats = "-", "-"
        else:
            r = layouts.resolve_layout(a.layout, a.shape, a.path)
            lay = f"{r.reduction_axes} | {r.output_axes} | {r.batch_axes or '()'}"
            b, m, n = r.matrix_shape
            mats = f"{b} x ({m}x{n})"
        rows.append((a.path, str(a.shape), a.group, lay, mats, a.rule))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    table = "\n".join(lines)
    if print_table:
        print(table)
    return table


def masked_by_group(router: Router, group: str) -> Callable[[Any], Any]:
    """A mask function (for ``optax.masked``) selecting the leaves of ``group``."""

    def mask(tree: Any) -> Any:
        return jax.tree.map(lambda label: label == group, router.labels(tree))

    return mask
