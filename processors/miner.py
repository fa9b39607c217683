"""The template miner: a Drain-family parse tree over masked token lists.

Input is the token list from processors/masking.py (variables already ``<*>``). Patterns
live in a tree as in Drain (He et al., ICWS 2017): a first level by token count, then
``depth`` levels keyed by the leading tokens (a token holding ``<*>`` goes to the ``<*>``
child, and so does any new token once a node has ``max_children``), then a leaf list.

Matching a message in its leaf (the change from Drain that lets one default config work
on every source):

1. A pattern that the message fits exactly (every position equal, or ``<*>`` in the
   pattern) takes it; among several, the most specific, then the oldest.
2. Otherwise the most similar pattern (share of equal positions >= ``sim_threshold``)
   names the positions ``D`` where its constant tokens differ from the message.

   - If the message holds ``<*>`` at every position of ``D`` (the masker saw a variable
     where the pattern has a word), the pattern generalises at once, as in Drain.
   - Otherwise Drain would also generalise at once, which merges messages that differ in
     one constant word (``... HTTPS`` and ``... SOCKS5``, ``Starting``/``Ending``) into
     one pattern. Here the message becomes a pattern of its own, a *sibling*, until
     ``min_variable_values`` x ``len(D)`` patterns of the leaf (the message included)
     agree everywhere outside ``D``: then those positions have shown enough distinct
     values to be variables, and the siblings merge into the oldest one, whose template
     generalises.
3. No pattern reaches the threshold: the message creates a new pattern.

Pattern ids and aliases (the rules users rely on; also in docs/signature.md):

- A pattern's id is ``xxh3_64`` of its template text (UTF-8), as 16 lowercase hex
  characters, taken when the pattern is created. Two processes or replicas that create the
  same template derive the same id, also after a restart.
- The id never changes while the pattern lives, also when its template generalises.
- A message whose masked text equals the creation template of a live pattern (or of one
  merged into it) joins that pattern without a tree search.
- When siblings merge (rule 2), the oldest keeps its id and the others' ids become
  *aliases* of it: ``resolve(id)`` gives the surviving id; statistics and policies kept
  under an alias belong to the survivor. Aliases of aliases are flattened.
- In the rare case that a template is created again while a pattern created from the same
  text still lives elsewhere (or its id is an alias), the new id is ``xxh3_64`` of
  ``"<template id>#<n>"`` with the smallest free ``n``, so ids stay unique.
- ``adopt_id`` (shared state, docs/scale.md): a pattern may take the id another replica
  registered for the same template; its own id becomes an alias of it.
- ``max_patterns`` bounds live patterns: the least recently used is evicted (counted), its
  aliases are dropped, and a later message of that shape creates a pattern again (with the
  id of its then template). Aliases are bounded by ``max_patterns`` too (oldest dropped).

Speed: a leaf with more than ``INDEX_FROM`` (32) patterns keeps an index (position, token)
-> patterns, and matching scores only the patterns that can qualify (see
``Miner._candidates``), so a source with 100k templates (thousands of them in the ``<*>``
leaves that ``max_children`` overflows into) costs tens of microseconds per new message,
not a scan of the leaf.

Errors: none for any token list; ``restore`` raises ValueError on malformed state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import Any

import xxhash

VAR = "<*>"
_LEAF = ""  # key of the leaf list in a tree node (no token is the empty string)
SNAPSHOT_VERSION = 1


def pattern_id(template: str) -> str:
    """16 hex characters: xxh3_64 of the UTF-8 template text (stable across processes)."""
    return xxhash.xxh3_64_hexdigest(template.encode("utf-8", "surrogatepass"))


class Pattern:
    """One mined pattern. ``tokens`` and ``template`` change as it generalises; ``id``
    never does. ``alive`` is False once merged (``merged_into`` is then set) or evicted."""

    __slots__ = ("id", "tokens", "template", "count", "alive", "merged_into", "leaf",
                 "path", "seq", "keys", "attr_bytes")

    def __init__(self, pid: str, tokens: list[str], seq: int, path: tuple[str, ...]) -> None:
        self.id = pid
        self.tokens = tokens
        self.template = " ".join(tokens)
        self.count = 0
        self.alive = True
        self.merged_into: Pattern | None = None
        self.leaf: Leaf | None = None
        self.path = path
        self.seq = seq
        self.keys: list[str] = []  # creation-template ids that lead to this pattern
        self.attr_bytes: bytes | None = None  # serialized attributes, set by the processor

    def live(self) -> Pattern | None:
        """This pattern, or the live pattern it was merged into; None if evicted."""
        p: Pattern | None = self
        while p is not None and not p.alive:
            p = p.merged_into
        return p


INDEX_FROM = 32
"""Leaves with more patterns than this keep a (position, token) index (see Leaf)."""


class Leaf(dict):  # Pattern -> None: an ordered set, O(1) removal
    """The patterns of one tree leaf, in insertion order, and once the leaf holds more than
    INDEX_FROM of them, an index per position ``token -> patterns with that token there``
    (``<*>`` included), so that matching looks at the few patterns that share a token with
    the message instead of all of them (a source with 100k templates puts thousands in the
    ``<*>`` leaves). A posting of one pattern is the pattern itself (most are: a dict each
    would cost ~100 MB at 50k patterns). With the index, ``by_vars`` holds the patterns
    by their number of ``<*>`` tokens (what _candidates needs for exact fits). Updated by
    Miner._leaf_add/_leaf_remove only."""

    __slots__ = ("index", "by_vars")

    def __init__(self, patterns: Iterable[Pattern] = ()) -> None:
        super().__init__((p, None) for p in patterns)
        self.index: list[dict[str, Pattern | dict[Pattern, None]]] | None = None
        self.by_vars: dict[int, dict[Pattern, None]] = {}

    def append(self, p: Pattern) -> None:
        self[p] = None

    def remove(self, p: Pattern) -> None:
        del self[p]

    def posting(self, i: int, token: str) -> Collection[Pattern]:
        """The patterns with ``token`` at position ``i`` (needs the index)."""
        assert self.index is not None
        got = self.index[i].get(token)
        if got is None:
            return ()
        return (got,) if type(got) is Pattern else got  # type: ignore[return-value]


class Miner:
    """Online template miner (see module docstring).

    sim_threshold: float in (0, 1], share of equal positions for a message to count as a
        variant of a pattern (rule 2).
    depth: int >= 0, leading tokens used as tree levels below the token-count level.
    max_children: int >= 1, children per tree node before new tokens share the ``<*>`` child.
    min_variable_values: int >= 2, sibling patterns per differing position that make the
        differing positions variables (rule 2).
    max_patterns: int >= 1, live patterns kept (least recently used evicted beyond).
    """

    def __init__(self, sim_threshold: float = 0.5, depth: int = 2, max_children: int = 100,
                 min_variable_values: int = 3, max_patterns: int = 50_000) -> None:
        if not 0 < sim_threshold <= 1:
            raise ValueError("sim_threshold must be in (0, 1]")
        if depth < 0 or max_children < 1 or min_variable_values < 2 or max_patterns < 1:
            raise ValueError("depth >= 0, max_children >= 1, min_variable_values >= 2 and "
                             "max_patterns >= 1 are required")
        self.sim_threshold = sim_threshold
        self.depth = depth
        self.max_children = max_children
        self.min_variable_values = min_variable_values
        self.max_patterns = max_patterns
        self._root: dict[int, dict[str, Any]] = {}
        self._least: dict[int, int] = {}  # see _least_same
        self.patterns: OrderedDict[str, Pattern] = OrderedDict()  # id -> live, LRU first
        self.aliases: dict[str, str] = {}  # merged id -> surviving id (insertion ordered)
        self._alias_of: dict[str, set[str]] = {}  # surviving id -> its aliases
        self._created: dict[str, Pattern] = {}  # creation-template id -> pattern
        self._seq = 0
        self.created_total = 0
        self.evicted_total = 0
        self.merged_total = 0

    # ------------------------------------------------------------------ matching

    def add(self, tokens: list[str], key: str | None = None) -> Pattern:
        """The live pattern for a masked token list (``key``: ``" ".join(tokens)`` if the
        caller has it), creating, or merging siblings, as needed."""
        if key is None:
            key = " ".join(tokens)
        key_id = pattern_id(key)
        known = self._created.get(key_id)
        if known is not None:
            p = known.live()
            if p is not None:
                return p
        leaf = self._find_leaf(tokens)
        if leaf:
            best, diff = self._best(leaf, tokens)
            if best is not None:
                if not diff:
                    return best
                siblings = [q for q in _fitting(leaf, tokens, diff)
                            if _fits_outside(q.tokens, tokens, diff)]
                if len(siblings) + 1 >= self.min_variable_values * len(diff) or \
                        all(tokens[i] == VAR for i in diff):
                    keep = self._merge(siblings, tokens)
                    self._remember(key_id, keep)
                    return keep
        return self._create(tokens, key_id)

    def _find_leaf(self, tokens: list[str]) -> Leaf | None:
        node = self._root.get(len(tokens))
        if node is None:
            return None
        for tok in tokens[: self.depth]:
            child = node.get(VAR if VAR in tok else tok)
            if child is None:
                child = node.get(VAR)
                if child is None:
                    return None
            node = child
        return node.get(_LEAF)

    def _make_leaf(self, tokens: list[str], path: tuple[str, ...] | None = None,
                   ) -> tuple[Leaf, tuple[str, ...]]:
        node = self._root.get(len(tokens))
        if node is None:
            node = self._root[len(tokens)] = {}
        keys = []
        for i, tok in enumerate(tokens[: self.depth]):
            if path is not None and i < len(path):
                key = path[i]
            else:
                key = VAR if VAR in tok else tok
                if key not in node and len(node) >= self.max_children:
                    key = VAR
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            keys.append(key)
            node = child
        leaf = node.get(_LEAF)
        if leaf is None:
            leaf = node[_LEAF] = Leaf()
        return leaf, tuple(keys)

    def _best(self, leaf: Leaf, tokens: list[str]) -> tuple[Pattern | None, list[int]]:
        """The closest pattern of the leaf and the positions where its constant tokens
        differ from ``tokens`` ([] for an exact fit); (None, []) below the threshold."""
        best = None
        best_key = (-1.0, 0, 0)
        n = len(tokens)
        for p in self._candidates(leaf, tokens):
            same = wild = 0
            for a, b in zip(p.tokens, tokens, strict=True):
                if a == b:
                    same += 1
                elif a == VAR:
                    wild += 1
            key = (2.0 if same + wild == n else same / n, -wild, -p.seq)
            if key > best_key:
                best, best_key = p, key
        if best is None or best_key[0] < self.sim_threshold:
            return None, []
        diff = [i for i, (a, b) in enumerate(zip(best.tokens, tokens, strict=True))
                if a != b and a != VAR]
        return best, diff

    def _candidates(self, leaf: Leaf, tokens: list[str]) -> Iterable[Pattern]:
        """The patterns of the leaf that can pass _best's threshold: all of them, or with an
        index, those sharing a token with the message at one of the positions chosen so
        that every qualifying pattern must share one there.

        A pattern qualifies by fitting exactly (each position equal or ``<*>``: it is in
        the posting lists of (i, token) or (i, ``<*>``) for every i, so the position with
        the shortest pair is enough) or by sharing at least ``s`` of the ``n`` positions,
        ``s`` the least count with ``s / n >= sim_threshold``: then it shares one of any
        ``n - s + 1`` positions (pigeonhole), so the shortest such lists are enough."""
        if leaf.index is None:
            return leaf
        n = len(tokens)
        if n == 0:
            return leaf
        s = self._least_same(n)
        posting = leaf.posting
        own = [posting(i, t) for i, t in enumerate(tokens)]
        out: dict[Pattern, None] = {}
        for i in sorted(range(n), key=lambda i: len(own[i]))[: n - s + 1]:
            out.update(dict.fromkeys(own[i]))
        # An exact fit sharing fewer than s positions has more than n - s <*> tokens: few
        # patterns are that general, and by_vars has them apart (looking them up through
        # the <*> postings would visit every pattern with a <*> at some position).
        for k, group in leaf.by_vars.items():
            if k > n - s:
                out.update(group)
        return out

    def _least_same(self, n: int) -> int:
        """The least number of equal positions s with s / n >= sim_threshold (the same
        float comparison as _best's), at least 1."""
        s = self._least.get(n)
        if s is None:
            s = next((k for k in range(1, n + 1) if k / n >= self.sim_threshold), n)
            self._least[n] = s
        return s

    # ------------------------------------------------------------------ changes

    def _create(self, tokens: list[str], key_id: str) -> Pattern:
        pid = key_id
        n = 0
        while pid in self.patterns or pid in self.aliases:
            n += 1
            pid = pattern_id(f"{key_id}#{n}")
        leaf, path = self._make_leaf(tokens)
        self._seq += 1
        p = Pattern(pid, list(tokens), self._seq, path)
        self._insert(p, leaf)
        self._remember(key_id, p)
        self.created_total += 1
        self._evict()
        return p

    def _insert(self, p: Pattern, leaf: Leaf) -> None:
        p.leaf = leaf
        self._leaf_add(leaf, p)
        self.patterns[p.id] = p

    @staticmethod
    def _leaf_add(leaf: Leaf, p: Pattern) -> None:
        leaf.append(p)
        if leaf.index is not None:
            _index_add(leaf, p)
        elif len(leaf) > INDEX_FROM:
            leaf.index = [{} for _ in p.tokens]  # one leaf: one token count
            for q in leaf:
                _index_add(leaf, q)

    @staticmethod
    def _leaf_remove(leaf: Leaf, p: Pattern) -> None:
        leaf.remove(p)
        if leaf.index is not None:
            _index_remove(leaf, p)

    def _remember(self, key_id: str, p: Pattern) -> None:
        old = self._created.get(key_id)
        if old is not None and old is not p:
            old.keys.remove(key_id)
        if old is not p:
            self._created[key_id] = p
            p.keys.append(key_id)

    def _merge(self, group: list[Pattern], tokens: list[str]) -> Pattern:
        """Generalise the oldest pattern of ``group`` over the group and ``tokens``; the
        others become aliases of it."""
        group.sort(key=lambda q: q.seq)
        keep = group[0]
        new = list(keep.tokens)
        for toks in [*(q.tokens for q in group[1:]), tokens]:
            for i, (a, b) in enumerate(zip(new, toks, strict=True)):
                if a != b:
                    new[i] = VAR
        indexed = keep.leaf is not None and keep.leaf.index is not None
        if indexed:
            _index_remove(keep.leaf, keep)  # type: ignore[arg-type]
        keep.tokens = new
        if indexed:
            _index_add(keep.leaf, keep)  # type: ignore[arg-type]
        keep.template = " ".join(new)
        keep.attr_bytes = None
        for q in group[1:]:
            self._fold(q, keep)
            self._add_alias(q.id, keep.id)
            self.merged_total += 1
        return keep

    def _add_alias(self, old: str, new: str) -> None:
        moved = self._alias_of.pop(old, set())
        for k in moved:  # flatten: aliases of old now name new
            self.aliases[k] = new
        group = self._alias_of.setdefault(new, set())
        group |= moved
        group.add(old)
        self.aliases[old] = new
        while len(self.aliases) > self.max_patterns:
            k = next(iter(self.aliases))
            self._drop_alias(k)

    def _drop_alias(self, k: str) -> None:
        v = self.aliases.pop(k)
        group = self._alias_of.get(v)
        if group is not None:
            group.discard(k)
            if not group:
                del self._alias_of[v]

    def _fold(self, p: Pattern, into: Pattern) -> None:
        """Merge ``p`` into ``into``: its count and creation keys move over, ``p`` leaves the
        tree and follows ``into`` from now on (the caller records the alias)."""
        into.count += p.count
        self._unlink(p)
        p.merged_into = into
        for k in p.keys:
            self._created[k] = into
        into.keys.extend(p.keys)
        p.keys = []

    def _unlink(self, p: Pattern) -> None:
        p.alive = False
        if p.leaf is not None:
            self._leaf_remove(p.leaf, p)
            if not p.leaf:
                self._prune(len(p.tokens), p.path)
            p.leaf = None
        self.patterns.pop(p.id, None)

    def _prune(self, length: int, path: tuple[str, ...]) -> None:
        """Remove an emptied leaf and the tree nodes left without children, so the tree
        stays as small as the live patterns."""
        nodes = [self._root.get(length)]
        for key in path:
            if nodes[-1] is None:
                return
            nodes.append(nodes[-1].get(key))
        if nodes[-1] is None or nodes[-1].get(_LEAF):
            return
        nodes[-1].pop(_LEAF, None)
        for depth in range(len(path), 0, -1):
            if nodes[depth]:
                return
            del nodes[depth - 1][path[depth - 1]]
        if not nodes[0]:
            del self._root[length]

    def _evict(self) -> None:
        while len(self.patterns) > self.max_patterns:
            _, old = self.patterns.popitem(last=False)
            self._unlink(old)
            for k in old.keys:
                if self._created.get(k) is old:
                    del self._created[k]
            old.keys = []
            for k in self._alias_of.pop(old.id, ()):
                del self.aliases[k]
            # an evicted pattern is never matched again (caches may still hold it and find
            # it dead): let go of what only matching used
            old.tokens = []
            old.attr_bytes = None
            self.evicted_total += 1

    def touch(self, patterns: Any) -> None:
        """Mark live patterns as recently used (LRU order); ``patterns``: iterable."""
        move = self.patterns.move_to_end
        for p in patterns:
            if p.alive:
                move(p.id)

    def adopt_id(self, pid: str, shared_id: str) -> bool:
        """Give the live pattern ``pid`` the id ``shared_id`` that another replica uses for
        the same template (docs/scale.md §Templates); ``pid`` becomes an alias of it.

        If ``shared_id`` is free here, the pattern is renamed; if it is a live pattern with
        the same template, ``pid`` merges into it. Returns False (nothing changed) when
        ``pid`` is not live, the ids are equal, or ``shared_id`` is an alias here or a live
        pattern with another template."""
        p = self.patterns.get(pid)
        if p is None or pid == shared_id or shared_id in self.aliases:
            return False
        target = self.patterns.get(shared_id)
        if target is None:
            self.patterns[shared_id] = self.patterns.pop(pid)
            p.id = shared_id
            p.attr_bytes = None
        elif target.template == p.template:
            self._fold(p, target)
        else:
            return False
        self._add_alias(pid, shared_id)
        return True

    def resolve(self, pid: str) -> str:
        """The live id an id stands for: itself, or the id it was merged into."""
        return self.aliases.get(pid, pid)

    def seed(self, tokens: list[str]) -> Pattern:
        """Create a pattern for a masked template unless one fits it exactly already."""
        leaf = self._find_leaf(tokens)
        if leaf:
            best, diff = self._best(leaf, tokens)
            if best is not None and not diff and best.tokens == tokens:
                return best
        return self._create(tokens, pattern_id(" ".join(tokens)))

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """The miner's state as plain JSON-serialisable data (patterns in LRU order)."""
        return {
            "version": SNAPSHOT_VERSION,
            "patterns": [
                {"id": p.id, "template": p.template, "count": p.count, "seq": p.seq,
                 "path": list(p.path), "keys": list(p.keys)}
                for p in self.patterns.values()
            ],
            "aliases": dict(self.aliases),
            "seq": self._seq,
            "created_total": self.created_total,
            "evicted_total": self.evicted_total,
            "merged_total": self.merged_total,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace the miner's state with a snapshot. Raises ValueError when ``state`` is
        not a snapshot of this version (the miner is then left unchanged)."""
        try:
            if state.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"unsupported snapshot version {state.get('version')!r}")
            rows = [(str(r["id"]), str(r["template"]), int(r.get("count", 0)),
                     int(r.get("seq", 0)), tuple(str(k) for k in r.get("path", ())),
                     [str(k) for k in r.get("keys", ())]) for r in state["patterns"]]
            aliases = {str(k): str(v) for k, v in dict(state.get("aliases", {})).items()}
            counters = [int(state.get(k, 0)) for k in
                        ("seq", "created_total", "evicted_total", "merged_total")]
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed miner snapshot: {err}") from None
        self._root = {}
        self.patterns = OrderedDict()
        self._created = {}
        for pid, template, count, seq, path, keys in rows:
            tokens = template.split(" ") if template else []
            leaf, real_path = self._make_leaf(tokens, path or None)
            p = Pattern(pid, tokens, seq, real_path)
            p.count = count
            self._insert(p, leaf)
            for k in keys or [pid]:
                self._remember(k, p)
        self.aliases = {k: v for k, v in aliases.items() if v in self.patterns}
        self._alias_of = {}
        for k, v in self.aliases.items():
            self._alias_of.setdefault(v, set()).add(k)
        self._seq = max([counters[0], *(r[3] for r in rows)])
        self.created_total, self.evicted_total, self.merged_total = counters[1:]
        self._evict()


def _index_add(leaf: Leaf, p: Pattern) -> None:
    assert leaf.index is not None
    leaf.by_vars.setdefault(p.tokens.count(VAR), {})[p] = None
    for by_token, tok in zip(leaf.index, p.tokens, strict=True):
        got = by_token.get(tok)
        if got is None:
            by_token[tok] = p
        elif type(got) is Pattern:
            by_token[tok] = {got: None, p: None}
        else:
            got[p] = None  # type: ignore[index]


def _index_remove(leaf: Leaf, p: Pattern) -> None:
    assert leaf.index is not None
    k = p.tokens.count(VAR)
    group = leaf.by_vars.get(k)
    if group is not None:
        group.pop(p, None)
        if not group:
            del leaf.by_vars[k]
    for by_token, tok in zip(leaf.index, p.tokens, strict=True):
        got = by_token.get(tok)
        if got is p:
            del by_token[tok]
        elif got is not None and type(got) is not Pattern:
            got.pop(p, None)  # type: ignore[union-attr]
            if len(got) == 1:  # type: ignore[arg-type]
                by_token[tok] = next(iter(got))  # type: ignore[call-overload]


def _fitting(leaf: Leaf, tokens: list[str], diff: list[int]) -> Iterable[Pattern]:
    """The patterns of the leaf that can fit ``tokens`` outside ``diff`` (see
    _fits_outside): with an index, those with the message's token or ``<*>`` at the
    position outside ``diff`` whose two posting lists are shortest."""
    skip = set(diff)
    rest = [i for i in range(len(tokens)) if i not in skip]
    if leaf.index is None or not rest:
        return leaf
    i = min(rest, key=lambda i: len(leaf.posting(i, tokens[i]))
            + (len(leaf.posting(i, VAR)) if tokens[i] != VAR else 0))
    out = dict.fromkeys(leaf.posting(i, tokens[i]))
    if tokens[i] != VAR:
        out.update(dict.fromkeys(leaf.posting(i, VAR)))
    return out


def _fits_outside(pat: list[str], tokens: list[str], diff: list[int]) -> bool:
    """True when ``pat`` equals ``tokens`` (or has ``<*>``) at every position not in
    ``diff``."""
    skip = set(diff)
    return all(i in skip or a in (VAR, b)
               for i, (a, b) in enumerate(zip(pat, tokens, strict=True)))
