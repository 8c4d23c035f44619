"""Routing parameters to transforms: by the model, then by key path (DESIGN §2).

A :class:`Router` assigns every leaf of a parameter tree a *group* (a label such
as ``"matrix"`` or ``"fallback"``) and, for matrix groups, a
:class:`~optx.MatrixLayout`. It decides in this order:

1. *override rules* added with :meth:`Router.with_rules` to a model router;
2. the *model table* built by :func:`optx.router_for` from the model's structure
   (the owning module's type decides: ``nnx.Linear``, ``nnx.Conv``,
   ``nnx.Einsum``, ``nnx.MultiHeadAttention``, linen ``Dense``, ...);
3. the ordered :class:`Rule`\\ s — regular expressions (or globs) on the leaf's
   '/'-joined key path (NNX's trailing ``.value`` is ignored), optionally bounded
   by rank; the first match wins;
4. ``default_group`` for leaves nothing matched.

Routing is by the model or by path, never by ``ndim == 2``: optax's rule sends a
scanned kernel ``(L, in, out)`` to Adam and a scanned bias ``(L, d)`` to Muon,
exactly backwards. Names alone cannot know everything — the last layer of a
model called ``Dense_1`` or ``fc2`` is only known from the model, and a 3-D
``(L, in, out)`` kernel named ``w`` might be a stack of dense layers or a
per-head projection — so a leaf of rank >= 3 that only the catch-all rule
matched is reported as **guessed**: :func:`describe` marks it and ``init`` of a
routed transform warns once, naming those leaves (``Router(...,
warn_guessed=False)`` silences it). Prefer ``router=optx.router_for(model, x)``.

A low-rank method (GaLore, APOLLO, DCT-AdamW, COSMOS) calls
:meth:`Router.with_rank_limit`: a matrix whose smaller side is at most the rank
goes to the fallback (a "low-rank" projection of it would be full rank), and
:func:`describe` shows the rule ``rank>=min side``.

:func:`describe` returns a :class:`RoutingTable` (which leaf goes where, with
which layout and why). It sees through wrappers: it runs the transform's
``init`` abstractly (``jax.eval_shape``) and records what every
:func:`routed` transform inside sees — so ``optax.chain``,
``optax.inject_hyperparams``, ``optax.MultiSteps``, ``optx.accumulate_gradients``,
``optax.masked``, ``optax.partition`` and ``nnx.Optimizer`` all work. Transforms
keep their router on ``init.router`` (:func:`attach_router`);
:func:`router_of` finds it through closures of wrappers without params.

Example:
  >>> import jax.numpy as jnp, optx
  >>> params = {'embed': {'embedding': jnp.zeros((100, 16))},
  ...           'mlp': {'kernel': jnp.zeros((16, 64)), 'bias': jnp.zeros((64,))}}
  >>> router = optx.default_router()
  >>> router.labels(params)['mlp']
  {'bias': 'fallback', 'kernel': 'matrix'}
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import html
import operator
import re
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optx._src import base, hyperparams, layouts
from optx._src.layouts import MatrixLayout

MATRIX = "matrix"
FALLBACK = "fallback"

RANK_LIMIT_RULE = "rank>=min side"
"""Rule name of leaves that :meth:`Router.with_rank_limit` sent to the fallback."""

LayoutRule = MatrixLayout | Callable[[tuple[int, ...]], MatrixLayout | None] | None

LORA_A = "lora_a"
LORA_B = "lora_b"
LORA_BASE = "lora_base"


class RoutingWarning(UserWarning):
    """Warned once by ``init`` of a routed transform whose router guessed layouts."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One routing rule.

    Attributes:
      pattern: a regular expression searched (``re.search``) in the leaf's
        '/'-joined path, e.g. ``r'(^|/)lm_head(/|$)'`` (prefix ``(?i)`` for a
        case-insensitive match, as the default rules do); or a glob matched
        against the whole path when ``syntax='glob'`` (e.g. ``'*/attn/*/kernel'``).
      group: the group name assigned to matching leaves.
      layout: for matrix groups, a :class:`MatrixLayout` or a function
        ``shape -> MatrixLayout | None``; ``None`` for non-matrix groups.
      min_ndim, max_ndim: optional rank bounds (inclusive) a leaf must satisfy.
      syntax: ``'regex'`` (default) or ``'glob'``.
      name: a short description shown by :func:`describe`.
      guessed: assignments made by this rule are guesses (reported by
        :func:`describe` and warned about at ``init``).
      role: what the matched leaf is to its module, for other code:
        ``'lora_a'``/``'lora_b'`` for LoRA factors (see :func:`optx.lora.lora_pairs`),
        else ``''``.
    """

    pattern: str
    group: str
    layout: LayoutRule = None
    min_ndim: int | None = None
    max_ndim: int | None = None
    syntax: str = "regex"
    name: str = ""
    guessed: bool = False
    role: str = ""

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
    """Where one leaf is routed: its group, its layout and what decided.

    Attributes:
      path: the leaf's '/'-joined key path.
      shape: the leaf's shape.
      group: the group it goes to (``'matrix'``, ``'fallback'``, ...).
      layout: its :class:`MatrixLayout` when ``group`` is a matrix group, else None.
      rule: the name of the rule that decided (``'dense'``, ``'conv'``,
        ``'head'``, ``'embedding'``, ``'rank>=min side'``, ...). Model routers
        (:func:`optx.router_for`) use the same names as the default rules.
      guessed: the decision was a guess from names alone (see the module doc).
      module: path of the owning module (model routers; ``''`` from name rules).
      module_type: the owning module's type, e.g. ``'nnx.Linear'`` (model routers).
      role: ``'lora_a'``, ``'lora_b'`` (LoRA factors), ``'lora_base'`` (the
        frozen kernel a LoRA adapter wraps, model routers only) or ``''``.
      pair: for LoRA roles, the path of the LoRA module that pairs A and B.
    """

    path: str
    shape: tuple[int, ...]
    group: str
    layout: MatrixLayout | None
    rule: str
    guessed: bool = False
    module: str = ""
    module_type: str = ""
    role: str = ""
    pair: str = ""


def _component(names: str) -> str:
    """Case-insensitive regex matching one whole path component among ``names``."""
    return rf"(?i)(^|/)({names})(/|$)"


def _conv_kernel_layout(shape: tuple[int, ...]) -> MatrixLayout | None:
    if len(shape) < 3:
        return None
    return layouts.conv_layout(len(shape) - 2)


EMBEDDING_NAMES = r"embed\w*|\w*embedding\w*|wte|wpe|tok_emb\w*|pos_emb\w*|token_emb\w*"
"""Path components (case-insensitive regex alternation) naming embeddings."""

HEAD_NAMES = r"lm_head|head|\w+_head|unembed\w*|classifier|logits?|readout"
"""Path components naming an output layer anywhere in the path."""

TOP_LEVEL_HEAD_NAMES = (
    r"out|outs|output|outputs|fc_out|proj_out|out_proj|output_proj|fc|score|qa_outputs"
    r"|final|final_layer|output_layer|to_logits"
)
"""Names of an output layer only as the first path component (after an optional
``params/``): deeper in a model they name hidden layers (HF BERT's
``layer/0/output/dense``, GPT-J's ``mlp/fc_out``, a block's ``out``)."""

ATTENTION_NAMES = r"\w*attention\w*|\w*attn\w*|mha|\w*_mha"
"""Path components naming an attention module (``attn``, ``self_attn``,
``MultiHeadDotProductAttention_0``, ``mha``, ...)."""

STACK_NAMES = r"layers?|blocks?|stack\w*|scan\w*|repeat\w*|h"
"""Path components naming a container of scanned/stacked layers."""

DENSE_NAMES = (
    r"dense|dense_?\d+|dense_\w+|linear\w*|fc\w*|mlp\w*|ffn?\w*|ff_\w+|\w*_proj|proj\w*"
    r"|wi|wo|wi_\d+|w\d|c_fc|c_proj|up|down|gate"
)
"""Path components naming a dense layer (linen's ``Dense_0``, ``fc1``, ``mlp``,
``up_proj``, ...): their kernels are ``(..., in, out)`` whatever the rank."""


def default_rules() -> tuple[Rule, ...]:
    """The default routing rules for bare parameter trees of Flax models.

    All names are matched case-insensitively on whole path components. In
    order (first match wins):

    1. ``ndim < 2`` → fallback (scalars, biases, norm scales);
    2. ``lora_a``/``lora_b`` (optionally ``/kernel``) → fallback, with roles
       ``'lora_a'``/``'lora_b'`` (see :func:`optx.lora.lora_pairs`);
    3. an embedding component (``embed*``, ``*embedding*``, linen's ``Embed_0``,
       ``wte``, ``wpe``, ``tok_emb*``, ``pos_emb*``) → fallback;
    4. ``head``: an output layer → fallback (as in every Muon-family paper):
       ``lm_head``, ``head``, ``*_head``, ``unembed*``, ``classifier``,
       ``logit(s)``, ``readout`` anywhere, and — as the *first* component only —
       ``out``, ``output(s)``, ``fc_out``, ``proj_out``, ``out_proj``, ``fc``,
       ``score``, ``qa_outputs``, ``final``, ``final_layer``, ``output_layer``,
       ``to_logits``;
    5. a leaf named ``bias``, ``scale`` or ``embedding`` or a norm component
       (``*norm*`` incl. ``LayerNorm_0``/``BatchNorm_0``, ``ln*``, ``bn*``) →
       fallback — this catches *stacked* biases and norm scales ``(L, d)`` that
       ``ndim == 2`` rules misroute;
    6. ``conv``: a kernel of rank >= 3 under ``conv*`` (``Conv_0``,
       ``ConvTranspose_0``, ``conv1``) → matrix, conv layout (window and input
       channels are the fan-in);
    7. ``attention-in``: a kernel of rank >= 3 named ``query``/``key``/``value``
       (``q``, ``k``, ``v``, ``q_proj``, ...) **under an attention component**
       (``*attention*``, ``*attn*``, ``mha``) → :data:`~optx.ATTENTION_IN`
       (Flax's ``(d, heads, head_dim)`` as one ``d × heads·hd`` matrix; leading
       axes are stack axes);
    8. ``attention-out``: a kernel of rank >= 3 named ``out``/``o``/``o_proj``/
       ``out_proj``/``wo`` under an attention component →
       :data:`~optx.ATTENTION_OUT`;
    9. ``dense``: a kernel under a dense-like component (``Dense_0``, ``dense``,
       ``linear*``, ``fc*``, ``mlp*``, ``ffn*``, ``*_proj``, ``wi``/``wo``, ...),
       any rank → :data:`~optx.DENSE` (leading axes are stacked layers);
    10. ``stacked dense``: a rank-3 leaf under a stack container (``layers``,
        ``blocks``, ``stack*``, ``scan*``, ``h``) → :data:`~optx.DENSE`
        ``(L, in, out)`` — so a scanned block's ``out`` or ``query`` is a stack
        of dense layers, never an attention layout;
    11. ``dense``: any other 2-D leaf → :data:`~optx.DENSE`;
    12. ``dense`` (**guessed**): any other leaf of rank >= 3 → :data:`~optx.DENSE`.

    What names cannot decide: the *last* layer of a model whose layers are
    named ``Dense_0, Dense_1`` or ``fc1, fc2`` (it goes to the matrix method:
    only the model knows it is the output — use :func:`optx.router_for`), an
    NNX conv named ``c1`` (rule 12 treats ``(3, 3, in, out)`` as 9 stacked
    ``in × out`` matrices and reports it as guessed), a stacked attention
    projection ``(L, d, d)`` under an attention component (read as per-head).
    """
    attn = rf"(?i)(^|/)({ATTENTION_NAMES})/(.*/)?"
    return (
        Rule(r".*", FALLBACK, max_ndim=1, name="scalar/vector"),
        Rule(r"(?i)(^|/)lora_a(/kernel)?$", FALLBACK, min_ndim=2, name="lora-a", role=LORA_A),
        Rule(r"(?i)(^|/)lora_b(/kernel)?$", FALLBACK, min_ndim=2, name="lora-b", role=LORA_B),
        Rule(_component(EMBEDDING_NAMES), FALLBACK, name="embedding"),
        Rule(_component(HEAD_NAMES), FALLBACK, name="head"),
        Rule(rf"(?i)^(params/)?({TOP_LEVEL_HEAD_NAMES})(/|$)", FALLBACK, name="head"),
        Rule(r"(?i)(^|/)(bias|scale|embedding)$", FALLBACK, name="bias/scale"),
        Rule(_component(r"\w*norm\w*|ln\w*|bn\w*"), FALLBACK, name="norm"),
        Rule(
            r"(?i)(^|/)conv\w*(/(.*/)?kernel)?$",
            MATRIX,
            layout=_conv_kernel_layout,
            min_ndim=3,
            name="conv",
        ),
        Rule(
            attn + r"(query|key|value|q|k|v|q_proj|k_proj|v_proj|wq|wk|wv)/kernel$",
            MATRIX,
            layouts.ATTENTION_IN,
            min_ndim=3,
            name="attention-in",
        ),
        Rule(
            attn + r"(out|o|o_proj|out_proj|wo)/kernel$",
            MATRIX,
            layouts.ATTENTION_OUT,
            min_ndim=3,
            name="attention-out",
        ),
        Rule(rf"(?i)(^|/)({DENSE_NAMES})/kernel$", MATRIX, layouts.DENSE, min_ndim=2, name="dense"),
        Rule(
            rf"(?i)(^|/)({STACK_NAMES})/(.*/)?kernel$",
            MATRIX,
            layouts.DENSE,
            min_ndim=3,
            max_ndim=3,
            name="stacked dense",
        ),
        Rule(r".*", MATRIX, layouts.DENSE, min_ndim=2, max_ndim=2, name="dense"),
        Rule(r".*", MATRIX, layouts.DENSE, min_ndim=3, name="dense", guessed=True),
    )


def _lora_pair_from_path(path: str) -> str:
    """``'a/lora/lora_a/kernel'`` -> ``'a/lora'``: the path before the last ``lora_a|b``."""
    parts = path.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower() in (LORA_A, LORA_B):
            return "/".join(parts[:i])
    return "/".join(parts[:-1])


class Router:
    """Assigns every leaf of a parameter tree to a group and a layout.

    Args:
      rules: ordered :class:`Rule`\\ s; the first match wins. Defaults to
        :func:`default_rules`.
      default_group: group for leaves nothing matches.
      matrix_groups: the groups whose leaves must have a layout. A rule that
        sends a leaf to one of these groups without a valid layout raises a
        ``ValueError`` naming the leaf.
      warn_guessed: ``init`` of a routed transform warns once
        (:class:`RoutingWarning`) when this router guessed a leaf's layout.
      rank_limit: matrices whose smaller side is ``<= rank_limit`` go to the
        ``'fallback'`` group (see :meth:`with_rank_limit`).
      table: a model table, normally built by :func:`optx.router_for`:
        :class:`Assignment`\\ s looked up by path (and shape) before the rules.
        A path matches an entry when it equals the entry's path or ends with
        ``'/' + entry.path`` (so ``params/Dense_0/kernel`` finds ``Dense_0/kernel``).
      overrides: rules checked before the table (:meth:`with_rules` on a model
        router adds here).

    A Router is hashable and deliberately not callable, so it can be passed
    through ``optax.inject_hyperparams`` as a static argument.

    Example:
      >>> import optx
      >>> router = optx.default_router().with_rules(
      ...     optx.Rule(r'(^|/)readout/', 'fallback', name='my readout'))
      >>> quiet = optx.Router(warn_guessed=False)  # default rules, no guess warning
    """

    def __init__(
        self,
        rules: Sequence[Rule] | None = None,
        *,
        default_group: str = FALLBACK,
        matrix_groups: Iterable[str] = (MATRIX,),
        warn_guessed: bool = True,
        rank_limit: int | None = None,
        table: Iterable[Assignment] | None = None,
        overrides: Sequence[Rule] = (),
    ) -> None:
        rules = tuple(default_rules() if rules is None else rules)
        overrides = tuple(overrides)
        for r in (*rules, *overrides):
            if not isinstance(r, Rule):
                raise TypeError(f"Router rules must be optx.Rule objects, got {r!r}.")
        if not isinstance(warn_guessed, bool):
            raise TypeError(f"warn_guessed must be a bool, got {warn_guessed!r}.")
        if rank_limit is not None:
            rank_limit = _check_rank(rank_limit)
        entries = tuple(sorted(table or (), key=lambda a: a.path))
        for a in entries:
            if not isinstance(a, Assignment):
                raise TypeError(f"Router table entries must be optx.Assignment, got {a!r}.")
        self.rules = rules
        self.default_group = default_group
        self.matrix_groups = frozenset(matrix_groups)
        self.warn_guessed = warn_guessed
        self.rank_limit = rank_limit
        self.table = entries
        self.overrides = overrides
        self._by_path = {a.path: a for a in entries}
        self._hash: int | None = None

    # -- identity -------------------------------------------------------------

    def _key(self) -> tuple[Any, ...]:
        return (
            self.rules,
            self.default_group,
            self.matrix_groups,
            self.warn_guessed,
            self.rank_limit,
            self.table,
            self.overrides,
        )

    def __repr__(self) -> str:
        extra = ""
        if self.table:
            extra += f", model table of {len(self.table)} leaves"
        if self.overrides:
            extra += f", {len(self.overrides)} overrides"
        if self.rank_limit is not None:
            extra += f", rank_limit={self.rank_limit}"
        return f"Router({len(self.rules)} rules, default_group={self.default_group!r}{extra})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Router) and self._key() == other._key()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._key())
        return self._hash

    def replace(self, **changes: Any) -> Router:
        """A copy with some constructor arguments changed (``warn_guessed=False``, ...)."""
        kwargs = dict(
            rules=self.rules,
            default_group=self.default_group,
            matrix_groups=self.matrix_groups,
            warn_guessed=self.warn_guessed,
            rank_limit=self.rank_limit,
            table=self.table,
            overrides=self.overrides,
        )
        unknown = set(changes) - set(kwargs)
        if unknown:
            raise TypeError(f"Router.replace got unknown arguments {sorted(unknown)}.")
        kwargs.update(changes)
        return Router(**kwargs)

    def with_rules(self, *rules: Rule, prepend: bool = True) -> Router:
        """A new router with extra rules, checked first unless ``prepend=False``.

        On a model router (:func:`optx.router_for`) prepended rules are checked
        before the model table too, so they override it.
        """
        if prepend and self.table:
            return self.replace(overrides=(*rules, *self.overrides))
        new = (*rules, *self.rules) if prepend else (*self.rules, *rules)
        return self.replace(rules=new)

    def with_rank_limit(self, rank: int | None) -> Router:
        """A router sending matrices with ``min(fan_in, fan_out) <= rank`` to ``'fallback'``.

        Low-rank methods call it with their ``rank``: a rank-``r`` projection of
        a matrix whose smaller side is at most ``r`` is not low-rank (GaLore
        would keep full-size moments in a rotated basis and use more memory
        than AdamW). :func:`describe` shows those leaves with the rule
        ``'rank>=min side'``. ``rank=None`` returns the router unchanged (the
        method resolves its rank later); a rank that is not a concrete integer
        (a tracer under ``inject_hyperparams``) is left to the method's own
        validation and also returns the router unchanged.

        Example:
          >>> import jax.numpy as jnp, optx
          >>> r = optx.default_router().with_rank_limit(8)
          >>> r.assign('mlp/kernel', jnp.zeros((64, 8))).rule
          'rank>=min side'
          >>> r.assign('mlp/kernel', jnp.zeros((64, 32))).group
          'matrix'
        """
        if rank is None:
            return self
        if not isinstance(rank, bool):
            try:
                rank = operator.index(rank)
            except TypeError:
                return self
        rank = _check_rank(rank)
        if self.rank_limit is not None:
            rank = max(rank, self.rank_limit)
        return self.replace(rank_limit=rank)

    # -- assignment -------------------------------------------------------------

    def _from_rule(self, index: int, rule: Rule, path: str, shape: tuple[int, ...]) -> Assignment:
        name = rule.name or f"rule {index}"
        layout = None
        if rule.group in self.matrix_groups:
            layout = rule.layout_for(shape)
            if layout is None:
                raise ValueError(
                    f"Rule '{name}' routes leaf '{path}' (shape {shape}) to matrix group "
                    f"'{rule.group}' but gives it no layout."
                )
            layouts.resolve_layout(layout, shape, path)  # raises with the path
        pair = _lora_pair_from_path(path) if rule.role in (LORA_A, LORA_B) else ""
        return Assignment(
            path, shape, rule.group, layout, name, rule.guessed, role=rule.role, pair=pair
        )

    def _lookup(self, path: str, shape: tuple[int, ...]) -> Assignment | None:
        if not self._by_path:
            return None
        parts = path.split("/")
        for i in range(len(parts)):
            entry = self._by_path.get("/".join(parts[i:]))
            if entry is not None:
                if entry.shape != shape:
                    return None
                return entry if i == 0 else dataclasses.replace(entry, path=path)
        return None

    def _assign_unlimited(self, path: str, shape: tuple[int, ...]) -> Assignment:
        for i, rule in enumerate(self.overrides):
            if rule.matches(path, len(shape)):
                return self._from_rule(i, rule, path, shape)
        entry = self._lookup(path, shape)
        if entry is not None:
            return entry
        for i, rule in enumerate(self.rules):
            if rule.matches(path, len(shape)):
                return self._from_rule(i, rule, path, shape)
        return Assignment(path, shape, self.default_group, None, "default")

    def assign(self, path: str, leaf: Any) -> Assignment:
        """The :class:`Assignment` of one leaf (``path`` is the '/'-joined path)."""
        shape = tuple(int(d) for d in jnp.shape(leaf))
        a = self._assign_unlimited(path, shape)
        if self.rank_limit is not None and a.group in self.matrix_groups and a.layout is not None:
            r = layouts.resolve_layout(a.layout, shape, path)
            if min(r.fan_in, r.fan_out) <= self.rank_limit:
                a = dataclasses.replace(
                    a, group=FALLBACK, layout=None, rule=RANK_LIMIT_RULE, guessed=False
                )
        return a

    def group(self, path: str, leaf: Any) -> str:
        return self.assign(path, leaf).group

    def layout(self, path: str, leaf: Any) -> MatrixLayout | None:
        """Layout of a leaf, or None if it is not routed to a matrix group."""
        return self.assign(path, leaf).layout

    def labels(self, tree: Any) -> Any:
        """A tree of group names with the structure of ``tree`` (for ``optax.partition``)."""
        return base.tree_map_with_path_str(lambda p, x: self.group(p, x), tree)

    def assignments(self, tree: Any) -> list[Assignment]:
        """The :class:`Assignment` of every leaf of ``tree``, in flattening order."""
        flat, _ = base.flatten_with_paths(tree)
        return [self.assign(p, x) for p, x in flat]

    def describe(self, tree: Any) -> RoutingTable:
        """:func:`describe` of this router on ``tree``."""
        return describe(self, tree)


def _check_rank(rank: Any) -> int:
    return base.check_positive_int("rank", rank)


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
# Routed transforms, and finding their routers again
# ----------------------------------------------------------------------------

_RECORDING = threading.local()


@contextlib.contextmanager
def _recording() -> Iterator[list[tuple[Router, list[Assignment]]]]:
    """Collects ``(router, assignments)`` of every routed ``init`` run inside."""
    stack = getattr(_RECORDING, "stack", None)
    if stack is None:
        stack = _RECORDING.stack = []
    record: list[tuple[Router, list[Assignment]]] = []
    stack.append(record)
    try:
        yield record
    finally:
        stack.pop()


def _describing() -> bool:
    """Whether :func:`describe` is tracing an ``init`` (which then warns nothing)."""
    return bool(getattr(_RECORDING, "stack", None))


def _record(router: Router, assignments: list[Assignment]) -> bool:
    """Records for :func:`describe`; True when a recording is active."""
    if not _describing():
        return False
    _RECORDING.stack[-1].append((router, assignments))
    return True


def _warns_guessed(router: Router, assignments: list[Assignment], describing: bool) -> bool:
    """Warns (:func:`_warn_guessed`) when ``router`` guessed a leaf's view, unless it
    opted out or :func:`describe` is tracing; returns whether it warned."""
    if not router.warn_guessed or describing or not any(a.guessed for a in assignments):
        return False
    _warn_guessed(assignments)
    return True


def _warn_guessed(assignments: list[Assignment]) -> None:
    guessed = [a for a in assignments if a.guessed]
    listing = ", ".join(f"'{a.path}' {a.shape} -> {a.group} ({a.rule})" for a in guessed[:8])
    more = f" and {len(guessed) - 8} more" if len(guessed) > 8 else ""
    warnings.warn(
        f"optx routing guessed the matrix view of {len(guessed)} leaves from their names "
        f"alone: {listing}{more}. Route by the model instead "
        "(router=optx.router_for(model, example_input)), add an optx.Rule, or silence this "
        "with optx.Router(..., warn_guessed=False). optx.describe shows the routing.",
        RoutingWarning,
        stacklevel=3,
    )


@hyperparams.validated()
def routed(
    transforms: Mapping[str, optax.GradientTransformation],
    router: Router | Sequence[Rule] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``optax.partition`` driven by a :class:`Router`.

    Labels are computed from key paths on every call (robust to NNX Variable
    boxes, which ``init`` sees and ``update`` does not). Every group the router
    produces for the given params must have a transform, otherwise ``init``
    raises a ValueError listing the leaves. ``init`` warns once
    (:class:`RoutingWarning`) when the router guessed a layout (see
    :func:`default_rules`; ``Router(..., warn_guessed=False)`` opts out). The
    router is kept on the returned transform (:func:`attach_router`) so
    :func:`describe` and :func:`router_of` find it, also inside wrappers.

    Example:
      >>> import optax, optx
      >>> tx = optx.routed({'matrix': optx.scale_by_newton_schulz(),
      ...                   'fallback': optax.scale_by_adam()})
    """
    router = as_router(router)
    transforms = dict(transforms)
    partition = optax.partition(transforms, router.labels)
    warned = False

    def init_fn(params: base.Params) -> optax.OptState:
        nonlocal warned
        assignments = router.assignments(params)
        describing = _record(router, assignments)
        missing = [a for a in assignments if a.group not in transforms]
        if missing:
            listing = ", ".join(f"'{a.path}' -> '{a.group}'" for a in missing[:6])
            raise ValueError(
                f"The router sends leaves to groups with no transform: {listing}. "
                f"Transforms are given for groups {sorted(transforms)}."
            )
        if not warned:
            warned = _warns_guessed(router, assignments, describing)
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


@hyperparams.validated(warn_guessed=hyperparams.FLAG)
def attach_router(
    tx: optax.GradientTransformation, router: Router, *, warn_guessed: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Keeps ``router`` on ``tx`` so :func:`router_of` and :func:`describe` find it.

    The router is stored as the attribute ``router`` of ``tx.init`` (a function
    attribute survives ``optax.chain``, ``optax.MultiSteps``, ``optax.masked``,
    ... because they close over ``tx``; :func:`router_of` searches closures).
    Returns a new transform (``tx`` is not modified) with extra-args support.

    ``warn_guessed``: ``init`` warns once (:class:`RoutingWarning`, as
    :func:`routed` does) when the router guessed the matrix view of a leaf. Set it
    for a transform that takes the router's layouts directly (``layout=router``)
    rather than through :func:`routed`, so a guessed view that shapes its math is
    reported too (``Router(..., warn_guessed=False)`` still opts out).
    """
    if not isinstance(router, Router):
        raise TypeError(f"attach_router needs an optx.Router, got {router!r}.")
    tx = optax.with_extra_args_support(tx)
    inner_init = tx.init
    warned = False

    def init(params: base.Params) -> optax.OptState:
        nonlocal warned
        if warn_guessed and not warned:
            warned = _warns_guessed(router, router.assignments(params), _describing())
        return inner_init(params)

    init.router = router  # type: ignore[attr-defined]
    return optax.GradientTransformationExtraArgs(init, tx.update)


def _closure_vars(fn: types.FunctionType) -> dict[str, Any]:
    out = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    return out


def _rebuild_injected(cells: Mapping[str, Any]) -> Any:
    """The inner transform of ``optax.inject_hyperparams``, rebuilt from its closure."""
    factory = cells.get("inner_factory")
    if factory is None or "other_hps" not in cells:
        return None
    kwargs = {**cells.get("other_hps", {}), **cells.get("numeric_hps", {})}
    kwargs.update(cells.get("sched_hps", {}))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return factory(**kwargs)
    except Exception:  # best effort: describe() traces init instead
        return None


def _search(obj: Any, found: list[Router], seen: set[int], depth: int) -> None:
    if depth > 24 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Router):
        if obj not in found:
            found.append(obj)
        return
    nxt = functools.partial(_search, found=found, seen=seen, depth=depth + 1)
    if isinstance(obj, types.FunctionType):
        router = getattr(obj, "router", None)
        if isinstance(router, Router):
            nxt(router)
        cells = _closure_vars(obj)
        for value in cells.values():
            nxt(value)
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            nxt(wrapped)
        if not found:
            inner = _rebuild_injected(cells)
            if inner is not None:
                nxt(inner)
    elif isinstance(obj, types.MethodType):
        nxt(obj.__func__)
        nxt(obj.__self__)
    elif isinstance(obj, functools.partial):
        nxt(obj.func)
        for value in (*obj.args, *obj.keywords.values()):
            nxt(value)
    elif isinstance(obj, (tuple, list)):  # incl. GradientTransformation NamedTuples
        for value in obj:
            nxt(value)
    elif isinstance(obj, Mapping):
        for value in obj.values():
            nxt(value)
    elif _is_nnx_optimizer(obj):
        nxt(obj.tx)
    elif _is_transform_object(obj):  # optax.MultiSteps and similar classes
        for value in vars(obj).values():
            nxt(value)
    elif callable(obj) and not isinstance(obj, type):
        wrapped = getattr(obj, "__wrapped__", None)  # jax.jit, functools.wraps, ...
        if wrapped is not None:
            nxt(wrapped)


def _is_transform_object(obj: Any) -> bool:
    """An object with ``init``/``update`` methods (``optax.MultiSteps``), not a NamedTuple."""
    return (
        not isinstance(obj, (tuple, type))
        and callable(getattr(obj, "init", None))
        and callable(getattr(obj, "update", None))
        and hasattr(obj, "__dict__")
    )


def routers_in(tx: Any) -> list[Router]:
    """Every distinct :class:`Router` reachable from ``tx`` (through wrappers' closures)."""
    found: list[Router] = []
    _search(tx, found, set(), 0)
    return found


def router_of(tx: Any) -> Router | None:
    """The router of a transform built by :func:`routed`/:func:`attach_router`, if any.

    Looks through wrappers without running anything: ``optax.chain``,
    ``optax.MultiSteps``, ``optax.masked``, ``optax.partition``,
    ``optx.accumulate_gradients`` and ``nnx.Optimizer`` (their closures keep the
    inner transform), and ``optax.inject_hyperparams`` (the inner transform is
    built from the closure's factory and arguments). Returns the first router
    found; :func:`describe` shows all of them.

    Example:
      >>> import optax, optx
      >>> tx = optax.chain(optax.clip_by_global_norm(1.0), optx.muon(0.02))
      >>> optx.router_of(tx) == optx.default_router()
      True
    """
    found = routers_in(tx)
    return found[0] if found else None


# ----------------------------------------------------------------------------
# describe
# ----------------------------------------------------------------------------


class RoutingRow(NamedTuple):
    """One row of a :class:`RoutingTable`."""

    path: str
    shape: tuple[int, ...]
    group: str
    layout: layouts.ResolvedLayout | None
    rule: str
    guessed: bool = False
    module_type: str = ""
    role: str = ""

    @property
    def matrices(self) -> tuple[int, int, int] | None:
        """``(batch, fan_in, fan_out)`` of the matrix view, or None."""
        return None if self.layout is None else self.layout.matrix_shape

    def cells(self) -> tuple[str, str, str, str, str, str]:
        if self.layout is None:
            lay, mats = "-", "-"
        else:
            r = self.layout
            lay = f"{r.reduction_axes} | {r.output_axes} | {r.batch_axes or '()'}"
            b, m, n = r.matrix_shape
            mats = f"{b} x ({m}x{n})"
        rule = self.rule
        if self.module_type:
            rule += f" ({self.module_type})"
        if self.guessed:
            rule += " [guessed]"
        return (self.path, str(self.shape), self.group, lay, mats, rule)


_HEADER = ("path", "shape", "group", "layout (red | out | batch)", "matrices", "rule")


class RoutingTable:
    """Which leaf goes where, with which layout and why (returned by :func:`describe`).

    ``str(table)`` (and ``repr``) is the aligned text table; Jupyter renders
    ``_repr_html_`` once. ``rows`` holds :class:`RoutingRow`\\ s; ``guessed``
    the rows decided by a guess.
    """

    def __init__(self, rows: Iterable[RoutingRow]) -> None:
        self.rows = tuple(rows)

    @property
    def guessed(self) -> tuple[RoutingRow, ...]:
        return tuple(r for r in self.rows if r.guessed)

    def row(self, path: str) -> RoutingRow:
        """The (first) row of ``path``."""
        for r in self.rows:
            if r.path == path:
                return r
        raise KeyError(path)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[RoutingRow]:
        return iter(self.rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutingTable) and self.rows == other.rows

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        rows = [_HEADER, *(r.cells() for r in self.rows)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
        body = "".join(
            "<tr>" + "".join(f"<td><code>{html.escape(c)}</code></td>" for c in r.cells()) + "</tr>"
            for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _repr_markdown_(self) -> str:
        def esc(c: str) -> str:
            return c.replace("|", "\\|")

        lines = ["| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
        lines += ["| " + " | ".join(f"`{esc(c)}`" for c in r.cells()) + " |" for r in self.rows]
        return "\n".join(lines)


def _row(a: Assignment) -> RoutingRow:
    lay = None if a.layout is None else layouts.resolve_layout(a.layout, a.shape, a.path)
    return RoutingRow(a.path, a.shape, a.group, lay, a.rule, a.guessed, a.module_type, a.role)


def _nnx() -> Any:
    """``flax.nnx`` if it is already imported (no model can exist otherwise), else None."""
    return sys.modules.get("flax.nnx")


def _is_nnx_module(obj: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(obj, nnx.Module) and not _is_nnx_optimizer(obj)


def _is_nnx_optimizer(obj: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(obj, nnx.Optimizer)


def _is_linen_module(obj: Any) -> bool:
    linen = sys.modules.get("flax.linen")
    return linen is not None and isinstance(obj, linen.Module)


def model_params(model: Any, wrt: Any = None) -> Any:
    """``nnx.state(model, wrt)`` for an NNX model (``wrt``: an NNX filter, default
    ``nnx.Param``); anything else unchanged."""
    if _is_nnx_module(model):
        return _nnx().state(model, _nnx().Param if wrt is None else wrt)
    return model


def _abstract(params: Any) -> Any:
    def leaf(x: Any) -> Any:
        if x is None or isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))

    return jax.tree.map(leaf, params, is_leaf=base.is_leaf_or_none)


def _traced_assignments(
    tx: Any, params: Any
) -> tuple[list[tuple[Router, list[Assignment]]], Exception | None]:
    """Runs ``tx.init`` abstractly: what every routed init inside saw, and any error."""
    error = None
    with _recording() as record, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            jax.eval_shape(tx.init, _abstract(params))
        except Exception as e:  # described as far as it got (e.g. a group without a transform)
            error = e
    return record, error


def _transform_table(tx: Any, params: Any) -> RoutingTable:
    record, error = _traced_assignments(tx, params)
    if not record:
        found = routers_in(tx)
        if not found and error is not None:
            raise ValueError(
                f"describe runs the transform's init abstractly to find its routing, and init "
                f"failed: {type(error).__name__}: {error}"
            ) from error
        record = [(r, r.assignments(params)) for r in found]
    seen: dict[str, list[Assignment]] = {}
    for _, assignments in record:
        for a in assignments:
            known = seen.setdefault(a.path, [])
            if a not in known:
                known.append(a)
    rows = []
    flat, _ = base.flatten_with_paths(params)
    for path, leaf in flat:
        if leaf is None:
            continue
        found_here = seen.get(path)
        if not found_here:
            shape = tuple(jnp.shape(leaf))
            rows.append(RoutingRow(path, shape, "-", None, "not routed"))
        else:
            rows.extend(_row(a) for a in found_here)
    return RoutingTable(rows)


def describe(obj: Any, params: Any = None) -> RoutingTable:
    """A table of which leaf goes where, with which layout and why.

    Args:
      obj: what to describe —

        * an NNX model: routed by :func:`optx.router_for` (its structure, no
          call order); only ``nnx.Param`` leaves are listed (no BatchNorm
          statistics, RNG keys or caches). For the call-order output layer, pass
          ``optx.router_for(model, x)`` and the model instead;
        * any transform built from optx, also wrapped (``optax.chain``,
          ``optax.inject_hyperparams``, ``optax.MultiSteps``,
          ``optx.accumulate_gradients``, ``optax.masked``, ``optax.partition``),
          or an ``nnx.Optimizer`` (with the model as ``params``; the leaves of its
          ``wrt`` filter are listed): its ``init`` is traced abstractly and every
          routed transform inside reports what it sees; leaves outside every
          router (masked out, or a transform without routing) show group ``-``;
        * a :class:`Router`, a sequence of :class:`Rule` or None (the default
          router).
      params: the parameter tree (arrays, ``jax.ShapeDtypeStruct``, an NNX
        State) or an NNX model (its ``nnx.Param`` state). Optional for a model.

    Returns:
      a :class:`RoutingTable`: prints as text (``print(optx.describe(...))``),
      renders once in Jupyter, and gives the rows as data (``.rows``).

    Example:
      >>> import jax.numpy as jnp, optax, optx
      >>> params = {'mlp': {'kernel': jnp.zeros((3, 16, 32))}, 'head': {'kernel': jnp.zeros((32, 4))}}
      >>> tx = optax.MultiSteps(optax.chain(optax.clip(1.0), optx.muon(0.02)), 2)
      >>> print(optx.describe(tx, params))
      path         shape        group     layout (red | out | batch)  matrices     rule
      -----------  -----------  --------  --------------------------  -----------  -----
      head/kernel  (32, 4)      fallback  -                           -            head
      mlp/kernel   (3, 16, 32)  matrix    (1,) | (2,) | (0,)          3 x (16x32)  dense
    """
    if _is_linen_module(obj):
        raise TypeError(
            "describe(linen_module) needs the module's example inputs: use "
            "optx.describe(optx.router_for(module, *example_inputs), variables['params'])."
        )
    if _is_nnx_module(obj):
        from optx._src import model_routing  # local import: model_routing builds on routing

        router = model_routing.router_for(obj)
        tree = model_params(obj if params is None else params)
        return RoutingTable(_row(a) for a in router.assignments(tree))
    if params is None:
        if _is_nnx_optimizer(obj) and _is_nnx_module(getattr(obj, "model", None)):
            params = obj.model
        else:
            raise TypeError(
                f"describe({type(obj).__name__}) needs the parameter tree (or the NNX model): "
                "optx.describe(tx, params)."
            )
    if _is_nnx_optimizer(obj):
        # The leaves the optimizer updates: its ``wrt`` filter (e.g. nnx.LoRAParam).
        return _transform_table(obj.tx, model_params(params, getattr(obj, "wrt", None)))
    tree = model_params(params)
    if isinstance(obj, optax.GradientTransformation) or _is_transform_object(obj):
        return _transform_table(obj, tree)
    if obj is None or isinstance(obj, (Router, Sequence)):
        router = as_router(obj)
        return RoutingTable(_row(a) for a in router.assignments(tree))
    raise TypeError(
        "describe takes an optax/optx transform, an nnx.Optimizer, an NNX model, an "
        f"optx.Router or rules; got {type(obj).__name__}. (An optimizer *state* holds arrays "
        "only: pass the transform that made it.)"
    )


def masked_by_group(router: Router, group: str) -> Callable[[Any], Any]:
    """A mask function (for ``optax.masked``) selecting the leaves of ``group``."""

    def mask(tree: Any) -> Any:
        return jax.tree.map(lambda label: label == group, router.labels(tree))

    return mask
