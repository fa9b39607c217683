"""Signature processor: the pattern (template and stable id) of every log record.

Reads each record's message, masks its variable parts (processors/masking.py), mines it
into a pattern with a Drain-family parse tree (processors/miner.py), and annotates the
record. DESIGN.md §Hot path; issue #3. User guide: docs/signature.md.

Settings (``processors: signature:`` in the YAML)

==========================  ===============================  ================================
setting                     default                          meaning
==========================  ===============================  ================================
``sim_threshold``           ``0.5``                          share of equal tokens for a
                                                             message to count as a variant
                                                             of a pattern, in (0, 1]
``min_variable_values``     ``3``                            variants per differing position
                                                             that make those positions
                                                             ``<*>`` (>= 2; miner.py rule 2)
``depth``                   ``2``                            leading tokens used as tree
                                                             levels (>= 0)
``max_children``            ``100``                          children per tree node (>= 1)
``max_patterns``            ``50000``                        patterns kept in memory; the
                                                             least recently used is evicted
``max_tokens``              ``256``                          tokens of a message that are
                                                             mined; the rest is ignored
``message_keys``            ``[message, msg, log, event]``   fields that hold the message in
                                                             kvlist, JSON and logfmt bodies
``parse_json``              ``true``                         read the message field of JSON
                                                             object string bodies
``parse_logfmt``            ``true``                         read the message field of logfmt
                                                             string bodies
``emit_template``           ``false``                        also add ``log.record.template``
``seed_templates``          ``[]``                           templates to start with (their
                                                             ids are known before traffic)
``cache_size``              ``50000``                        entries in each lookup cache
                                                             (bodies, skeletons, shapes,
                                                             tokens); cleared when full
==========================  ===============================  ================================

What it reads (the record itself is never changed except for the attributes it adds):

- a string body, as is; if it is a JSON object (``parse_json``) or logfmt
  (``parse_logfmt``: every token ``key=value``, values optionally double-quoted) with one
  of ``message_keys``, that field (the first present, in list order); a JSON object
  without one is mined as its ``key=value`` pairs (so its keys shape the pattern);
- a kvlist body: the first of ``message_keys`` present (as text), else its ``k=v`` pairs;
- any other body (int, double, bool, bytes, array) as text; an empty body as ``""``.

A message is mined on its first 64 KiB and its first ``max_tokens`` tokens.

What it writes: attribute ``log.pattern.id`` (16 hex characters, see processors/miner.py
and docs/signature.md for the id and alias rules) on every record, and
``log.record.template`` (the Collector drainprocessor's name) when ``emit_template`` is
true; ``batch.pattern_ids[i]``, ``batch.templates[i]`` and ``batch.bodies`` (the string
bodies it read) for the processors after it.
Patterns are shared by all services in the batch (the id depends on the template only).

Hot path (per batch, lookups from cheapest to dearest; DESIGN.md §Hot path):

1. body cache: a string body seen before is found by one C-level ``map`` over the batch.
   When bodies do not repeat (lines carrying timestamps) the cache stops being filled for a
   while (it answered < 1/4 of the lookups since it last filled): inserting bodies that
   never come back costs more than it saves;
2. skeleton cache: the message with its digits replaced by ``5`` (no masking rule depends
   on digit values, so ``took 35ms`` and ``took 12ms`` share a skeleton). The skeletons of
   all the batch's plain bodies are made at once (:func:`skeletons`: one pass per body in
   the C extension processors/_logscan.c, else C-level passes over the joined bodies) and
   looked up with one C-level ``map``; skeletons with tokens whose
   masked form keeps digits (``ssh2``, ``R02-M1-N0``) map those tokens' bytes to the
   pattern (one slice and one lookup per record);
3. shape cache: the message's classified tokens (masking.py steps 1-3, each token through
   a dict cache);
4. only a shape never seen before runs the context rules and the miner.

Every cache holds at most ``cache_size`` entries (cleared when full) and keys longer than
2048 characters are not cached, so memory stays flat. Cached entries may point at a pattern
merged or evicted since: the batch lookups check liveness with one C-level map and follow
merges. The attributes are appended as bytes serialized once per pattern
(``LogBatch.add_attributes``: one ``MergeFromString``, several times cheaper than building
``KeyValue`` messages per record; in the pipeline the write waits until sampling has
dropped what it drops). The string bodies are read from ``batch.bodies`` when the batch
already holds them (LogBatch reads them from the request's bytes), else from upb, and handed
on there (reading a body from upb costs ~0.5-0.7 us).

State: ``snapshot()`` / ``restore()`` (plain JSON data; the collector keeps it in its
SQLite state store under ``storage.directory``); metrics from ``collect_metrics()`` at
scrape time.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import compress, repeat
from operator import attrgetter, not_
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Field

from collector.config import StrictModel
from processors import base
from processors.base import ATTR_PATTERN_ID, ATTR_TEMPLATE, LogBatch
from processors.masking import Masker
from processors.miner import Miner, Pattern

# Bounds that keep memory and time per record flat whatever the input:
MAX_CACHED_CHARS = 2048         # longer bodies, skeletons and shapes are not cached
MAX_PARSED_BODY_CHARS = 65536   # longer string bodies are not parsed as JSON or logfmt
MAX_MESSAGE_CHARS = 65536       # a message is mined on its first 64 KiB
MAX_VALUE_DEPTH = 8

_TO_5 = bytes.maketrans(b"0123456789", b"5555555555")
_MISSING = Pattern("", [], 0, ())  # what a batch lookup finds for a key not cached
_MISSING.alive = False
_ALIVE = attrgetter("alive")
_ATTR_BYTES = attrgetter("attr_bytes")
_ID = attrgetter("id")
_TEMPLATE = attrgetter("template")
_DIGITS = b"0123456789"
_LOGFMT = re.compile(r'\s*([A-Za-z_][\w.\-/]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?=\s|\Z)')


class Config(StrictModel):
    """``processors: signature:`` settings (table in the module docstring)."""

    sim_threshold: float = Field(0.5, gt=0, le=1, description="share of equal tokens for a "
                                 "message to count as a variant of a pattern")
    min_variable_values: int = Field(3, ge=2, description="variants per differing position "
                                     "that make the position a variable")
    depth: int = Field(2, ge=0, le=16, description="leading tokens used as tree levels")
    max_children: int = Field(100, ge=1, description="children per tree node")
    max_patterns: int = Field(50_000, ge=1, description="patterns in memory (LRU eviction)")
    max_tokens: int = Field(256, ge=1, description="tokens of a message that are mined")
    message_keys: list[str] = Field(
        default_factory=lambda: ["message", "msg", "log", "event"],
        description="fields holding the message in kvlist, JSON and logfmt bodies")
    parse_json: bool = Field(True, description="read the message field of JSON string bodies")
    parse_logfmt: bool = Field(True, description="read the message field of logfmt bodies")
    emit_template: bool = Field(False, description="also add log.record.template")
    seed_templates: list[str] = Field(default_factory=list,
                                      description="templates created at start")
    cache_size: int = Field(50_000, ge=0, description="entries per lookup cache; 0 = no caching")


class SignatureProcessor:
    """Annotates every record with its pattern (see module docstring)."""

    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config
        self.masker = Masker(max_tokens=config.max_tokens, cache_size=config.cache_size)
        self.miner = self._new_miner()
        self._keys = list(config.message_keys)
        self._key_set = frozenset(self._keys)
        self._bodies: dict[str, Pattern] = {}
        self._shapes: dict[str, Pattern] = {}
        # skeleton -> (spans of the tokens whose masked form keeps digits, {their bytes
        # joined: pattern} (the pattern itself when there are no such tokens), whether the
        # skeleton's texts are plain (_is_plain)); see pattern_for. _skeleton_entries
        # counts the patterns held.
        self._skeletons: dict[bytes, tuple[tuple[tuple[int, int], ...],
                                           dict[bytes, Pattern] | Pattern, bool]] = {}
        self._skeleton_entries = 0
        # skeleton -> pattern, for skeletons of plain messages (see _is_plain) without
        # digit-keeping tokens: looked up for a whole batch at once (process).
        self._plain: dict[bytes, Pattern] = {}
        # Body cache use (see _body_cache_full): lookups and misses since it last filled.
        self._body_caching = True
        self._body_lookups = self._body_misses = self._body_resume = 0
        self._body_pause = 4  # x cache_size lookups without filling; doubles up to 64
        self.records_total = 0
        self.cache_misses_total = 0
        self._seed()

    def _new_miner(self) -> Miner:
        c = self.config
        return Miner(sim_threshold=c.sim_threshold, depth=c.depth, max_children=c.max_children,
                     min_variable_values=c.min_variable_values, max_patterns=c.max_patterns)

    def _seed(self) -> None:
        for template in self.config.seed_templates:
            self.miner.seed(self.masker.mask(template))

    # ------------------------------------------------------------------ hot path

    def process(self, batch: LogBatch) -> None:
        """Annotate every record of the batch in place (fail-open: all patterns are found
        before any record is touched)."""
        n = len(batch)
        if not n:
            return
        record_at = batch.record  # a record is wrapped only when its body is not a string
        if not self._body_caching and self._body_lookups >= self._body_resume:
            self._resume_body_cache()
        self._body_lookups += n
        texts = batch.bodies  # read from the request's bytes (LogBatch), else from upb
        if texts is None:
            texts = [rec.body.string_value for rec in batch.records]
        if self._bodies:
            found = list(map(self._bodies.get, texts, repeat(_MISSING)))
            alive = list(map(_ALIVE, found))
            if not all(alive):
                self._find(record_at, texts, found,
                           list(compress(range(n), map(not_, alive))))
        else:
            found = [_MISSING] * n
            self._find(record_at, texts, found, None)
        pats = found  # every entry is a live pattern now
        # decided; now mutate
        self.records_total += n
        counts = Counter(pats)
        for p, c in counts.items():
            p.count += c
        self.miner.touch(counts)
        data = list(map(_ATTR_BYTES, pats))
        if None in data:
            data = [d if d is not None else self._attr_bytes(p)
                    for d, p in zip(data, pats, strict=True)]
        batch.add_attributes(data)
        batch.pattern_ids[:] = map(_ID, pats)
        batch.templates[:] = map(_TEMPLATE, pats)
        batch.bodies = texts

    def _find(self, record_at: Callable[[int], LogRecord], texts: list[str],
              found: list[Pattern], todo: list[int] | None) -> None:
        """Set ``found[i]`` to the live pattern for every i in ``todo`` (None: all): body-cache
        misses (``_MISSING``) and hits on a pattern merged or evicted since.

        All their skeletons are made at once (:func:`skeletons`) and looked up in ``_plain``
        with one C-level map; only records whose skeleton is not there (new shapes,
        digit-keeping tokens, JSON/logfmt/kvlist bodies) take the per-record path."""
        if todo is not None and [found[i] for i in todo].count(_MISSING) != len(todo):
            rest = []
            for i in todo:  # a cached pattern merged since: follow it
                p = found[i]
                live = p.live() if p is not _MISSING else None
                if live is not None:
                    found[i] = self._bodies[texts[i]] = live
                else:
                    rest.append(i)
            if not rest:
                return
            todo = rest
        idx = range(len(texts)) if todo is None else todo
        sub = texts if todo is None else [texts[i] for i in todo]
        self._body_misses += len(sub)
        skels = skeletons(sub)
        if skels is not None:
            hits = list(map(self._plain.get, skels, repeat(_MISSING)))
        else:  # a body holds a NUL: one at a time
            skels = []
            hits = [_MISSING] * len(sub)
        if todo is None:
            found[:] = hits
        else:
            for i, p in zip(todo, hits, strict=True):
                found[i] = p
        alive = list(map(_ALIVE, hits))
        if not all(alive):
            self._find_rest(record_at, sub, idx, skels, alive, found)
        if self._body_caching:
            bodies = self._bodies
            if len(bodies) + len(sub) > self.config.cache_size:
                self._body_cache_full()
            if self._body_caching:
                if "" not in sub and max(map(len, sub)) <= MAX_CACHED_CHARS:
                    bodies.update(zip(sub, [found[i] for i in idx], strict=True))
                else:
                    for i, text in zip(idx, sub, strict=True):
                        if text and len(text) <= MAX_CACHED_CHARS:
                            bodies[text] = found[i]

    def _find_rest(self, record_at: Callable[[int], LogRecord], sub: list[str],
                   idx: Sequence[int],
                   skels: list[bytes], alive: list[bool], found: list[Pattern]) -> None:
        """_find for the records without a live pattern in ``_plain``: plain bodies whose
        skeleton has digit-keeping tokens are looked up by those tokens' bytes (skeleton
        already made), everything else takes the per-record path."""
        parse_logfmt = self.config.parse_logfmt
        miss = list(compress(range(len(alive)), map(not_, alive)))
        if not skels:
            for k in miss:
                found[idx[k]] = self._pattern_of_text(record_at, idx[k], sub[k])
            return
        entries = list(map(self._skeletons.get, [skels[k] for k in miss]))
        for k, entry in zip(miss, entries, strict=True):
            # entry[2]: the skeleton's texts are plain (the same for all of them)
            if entry is not None and entry[2]:
                spans = entry[0]
                b = sub[k].encode("utf-8", "surrogatepass")
                if len(spans) == 1:  # the common case inline: a live pattern under the bytes
                    p = entry[1].get(b[spans[0][0]:spans[0][1]])  # type: ignore[union-attr]
                    if p is not None and p.alive:
                        found[idx[k]] = p
                        continue
                p = self._from_entry(entry, b, skels[k])
                found[idx[k]] = p if p is not None else self._mine(sub[k], b, skels[k])
            elif entry is None and _is_plain(sub[k], parse_logfmt):
                b = sub[k].encode("utf-8", "surrogatepass")
                found[idx[k]] = self._mine(sub[k], b, skels[k])
            else:
                found[idx[k]] = self._pattern_of_text(record_at, idx[k], sub[k])

    def _pattern_of_text(self, record_at: Callable[[int], LogRecord], i: int,
                         text: str) -> Pattern:
        """The pattern of record ``record_at(i)``, whose string body ``text`` missed the
        batch lookups (the record is read only when the body is not a string)."""
        if not text:
            return self.pattern_for(self.message_of_value(record_at(i).body))
        if _is_plain(text, self.config.parse_logfmt):
            return self.pattern_for(text)
        return self.pattern_for(self.message_of_string(text))

    def _attr_bytes(self, p: Pattern) -> bytes:
        attrs = [KeyValue(key=ATTR_PATTERN_ID, value=AnyValue(string_value=p.id))]
        if self.config.emit_template:
            attrs.append(KeyValue(key=ATTR_TEMPLATE, value=AnyValue(string_value=p.template)))
        p.attr_bytes = LogRecord(attributes=attrs).SerializeToString()
        return p.attr_bytes

    def pattern_of_body(self, text: str) -> Pattern:
        """The live pattern of a string body (body cache, message extraction, mining): what
        ``process`` does for one record, without the protobuf work."""
        self._body_lookups += 1
        cached = self._bodies.get(text)
        if cached is not None:
            if cached.alive:
                return cached
            live = cached.live()
            if live is not None:
                self._bodies[text] = live
                return live
        self._body_misses += 1
        p = self.pattern_for(text) if _is_plain(text, self.config.parse_logfmt) \
            else self.pattern_for(self.message_of_string(text))
        if self._body_caching and len(text) <= MAX_CACHED_CHARS:
            if len(self._bodies) >= self.config.cache_size:
                self._body_cache_full()
            if self._body_caching:
                self._bodies[text] = p
        return p

    def _body_cache_full(self) -> None:
        """Clear the full body cache; if it answered fewer than a quarter of the lookups
        since it was last cleared (every body new, as when lines carry timestamps), stop
        filling it for the next 4 x cache_size bodies, twice as long each time it proves
        useless again (up to 64 x): inserting bodies that never repeat costs more than the
        skeleton cache it would spare."""
        hits = self._body_lookups - self._body_misses
        if hits * 4 < self._body_lookups:
            self._body_caching = False
            self._body_resume = self._body_lookups + self._body_pause * self.config.cache_size
            self._body_pause = min(2 * self._body_pause, 64)  # useless again: wait longer
        else:
            self._body_lookups = self._body_misses = 0
            self._body_pause = 4
        self._bodies.clear()

    def _resume_body_cache(self) -> None:
        self._body_caching = True
        self._body_lookups = self._body_misses = 0

    def pattern_for(self, message: str) -> Pattern:
        """The live pattern of a message text: skeleton cache, else masking, shape cache,
        then the tree.

        The skeleton of a message is its UTF-8 with every digit replaced by ``5`` (and
        ``0x``/``0X`` kept apart). No masking rule depends on digit values, so two
        messages with one skeleton mask alike, except in tokens whose masked form still
        holds digits (``ssh2``, ``R02-M1-N0``): the skeleton entry lists those tokens'
        byte spans (the same for every message of the skeleton) and maps their bytes,
        joined, to the pattern; so each set of such values is masked once, then found by
        one slice and one lookup."""
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS]
        b = message.encode("utf-8", "surrogatepass")
        skeleton = _skeleton(b)
        entry = self._skeletons.get(skeleton)
        live = self._from_entry(entry, b, skeleton) if entry is not None else None
        return live if live is not None else self._mine(message, b, skeleton)

    def _from_entry(self, entry: tuple[tuple[tuple[int, int], ...],
                                       dict[bytes, Pattern] | Pattern, bool],
                    b: bytes, skeleton: bytes) -> Pattern | None:
        """The live pattern a skeleton entry holds for a message's UTF-8 ``b`` (the bytes
        of its digit-keeping tokens select it), or None: mine the message."""
        spans, target, plain = entry
        if not spans:
            p: Pattern | None = target  # type: ignore[assignment]
        elif len(spans) == 1:
            p = target.get(b[spans[0][0]:spans[0][1]])  # type: ignore[union-attr]
        else:
            p = target.get(b"".join([b[s:e] for s, e in spans]))  # type: ignore[union-attr]
        if p is None:
            return None
        live = p if p.alive else p.live()
        if live is not None and plain and not spans:
            self._plain[skeleton] = live  # (again): cleared, or it held a dead one
        return live

    def _mine(self, message: str, b: bytes, skeleton: bytes) -> Pattern:
        """pattern_for after a skeleton-cache miss: masking, shape cache, the tree; then
        the skeleton entry (``b``: the message's UTF-8) is filled."""
        toks, masked = self.masker.classify(message)
        pre = " ".join(masked)
        p = self._shapes.get(pre)
        live = p.live() if p is not None else None
        if live is None:
            self.cache_misses_total += 1
            tokens = self.masker.finish(toks, masked)
            live = self.miner.add(tokens, " ".join(tokens))
            if len(pre) <= MAX_CACHED_CHARS:
                if len(self._shapes) >= self.config.cache_size:
                    self._shapes.clear()
                self._shapes[pre] = live
        elif live is not p:
            self._shapes[pre] = live
        if len(b) > MAX_CACHED_CHARS:
            return live
        if self._skeleton_entries >= self.config.cache_size:
            self._skeletons.clear()
            self._plain.clear()
            self._skeleton_entries = 0
        entry = self._skeletons.get(skeleton)
        if entry is None:
            kb = pre.encode("utf-8", "surrogatepass")
            checks = () if kb.translate(None, _DIGITS) == kb else self._digit_checks(message, b)
            plain = _is_plain(message, self.config.parse_logfmt)
            if checks:
                self._skeletons[skeleton] = (tuple((s, e) for s, e, _ in checks),
                                             {b"".join([v for _, _, v in checks]): live}, plain)
            else:
                self._skeletons[skeleton] = ((), live, plain)
        elif entry[0]:
            entry[1][b"".join([b[s:e] for s, e in entry[0]])] = live  # type: ignore[index]
        else:
            plain = entry[2]
            self._skeletons[skeleton] = ((), live, plain)
        self._skeleton_entries += 1
        if not self._skeletons[skeleton][0] and self._skeletons[skeleton][2]:
            self._plain[skeleton] = live
        return live

    def _digit_checks(self, message: str, b: bytes) -> tuple[tuple[int, int, bytes], ...]:
        """(start, end, bytes) of every token of ``message`` whose masked form keeps a
        digit (or is not known), so a skeleton hit can check that those tokens are equal."""
        checks = []
        pos = 0
        masked = self.masker.cached
        for tok in message.split(None, self.config.max_tokens):
            tb = tok.encode("utf-8", "surrogatepass")
            start = b.find(tb, pos)
            pos = start + len(tb)
            if tb.translate(None, _DIGITS) == tb:
                continue
            m = masked(tok)
            if m is None or m.encode("utf-8", "surrogatepass").translate(None, _DIGITS) != \
                    m.encode("utf-8", "surrogatepass"):
                checks.append((start, pos, tb))
        return tuple(checks)

    # ------------------------------------------------------------------ message extraction

    def message_of_string(self, text: str) -> str:
        """The message of a string body: the message field of a JSON object or logfmt
        body when enabled and present, else the text itself."""
        if len(text) > MAX_PARSED_BODY_CHARS:
            return text
        head = text.lstrip()[:1]
        if head == "{" and self.config.parse_json:
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError):
                return text
            if isinstance(obj, dict):
                for k in self._keys:
                    if k in obj:
                        return _json_text(obj[k])
                # no message field: the pairs, so that other keys make other patterns
                return _json_text(" ".join(f"{k}={_json_text(v)}" for k, v in obj.items()))
            return text
        eq = text.find("=")
        if self.config.parse_logfmt and eq > 0 and not text[:eq].strip().count(" "):
            pairs = _logfmt(text)
            if pairs:
                for k in self._keys:
                    if k in pairs:
                        return pairs[k]
        return text

    def message_of_value(self, body: AnyValue) -> str:
        """The message of a non-string (or empty) body: the message field of a kvlist,
        else the value as text."""
        if body.WhichOneof("value") == "kvlist_value":
            values = {kv.key: kv.value for kv in body.kvlist_value.values
                      if kv.key in self._key_set}
            for k in self._keys:
                if k in values:
                    return anyvalue_text(values[k])
        return anyvalue_text(body)

    # ------------------------------------------------------------------ state, metrics

    def snapshot(self) -> dict[str, Any]:
        """The miner's patterns, ids and aliases as plain JSON data (see Miner.snapshot)."""
        return self.miner.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        """Load a snapshot (raises ValueError on a malformed one and then keeps the current
        state); seed templates missing from it are added again."""
        miner = self._new_miner()
        miner.restore(state)
        self.miner = miner
        self._bodies.clear()
        self._shapes.clear()
        self._skeletons.clear()
        self._plain.clear()
        self._skeleton_entries = 0
        self._seed()

    def adopt_ids(self, shared: dict[str, str]) -> int:
        """Replace local pattern ids by the ids other replicas registered for the same
        templates (``{local id: shared id}``, see Miner.adopt_id); the local ids become
        aliases. Call between batches, on the thread that runs :meth:`process` (the event
        loop). Returns how many patterns took a shared id."""
        return sum(self.miner.adopt_id(pid, sid) for pid, sid in shared.items())

    def live_templates(self) -> list[tuple[str, str]]:
        """(id, template) of every live pattern (a copy; same thread rule as adopt_ids)."""
        return [(p.id, p.template) for p in list(self.miner.patterns.values())]

    def resolve(self, pattern_id: str) -> str:
        """The live id for a pattern id that may have been merged (alias)."""
        return self.miner.resolve(pattern_id)

    @property
    def aliases(self) -> dict[str, str]:
        """Merged id → surviving id, for every alias (read only: the miner's own map)."""
        return self.miner.aliases

    def collect_metrics(self) -> Iterator[Metric]:
        """lipservice_signature_* metric families, read at scrape time."""
        m = self.miner
        yield GaugeMetricFamily("lipservice_signature_patterns",
                                "Patterns held in memory by the signature processor.",
                                value=len(m.patterns))
        yield CounterMetricFamily("lipservice_signature_patterns_created",
                                  "Patterns created.", value=m.created_total)
        yield CounterMetricFamily("lipservice_signature_patterns_evicted",
                                  "Patterns evicted (least recently used, max_patterns).",
                                  value=m.evicted_total)
        yield CounterMetricFamily("lipservice_signature_patterns_merged",
                                  "Patterns merged into another one (their ids became aliases).",
                                  value=m.merged_total)
        yield CounterMetricFamily("lipservice_signature_log_records",
                                  "Log records annotated with a pattern.",
                                  value=self.records_total)
        yield CounterMetricFamily("lipservice_signature_cache_misses",
                                  "Records whose masked shape was not in the caches (masked "
                                  "in full and looked up in the miner).",
                                  value=self.cache_misses_total)
        ratio = (max(0.0, 1.0 - self.cache_misses_total / self.records_total)
                 if self.records_total else 0.0)
        yield GaugeMetricFamily("lipservice_signature_cache_hit_ratio",
                                "Share of records resolved from the body or shape cache.",
                                value=ratio)


def _skeleton(b: bytes) -> bytes:
    """The skeleton of UTF-8 bytes (see pattern_for): ``0x``/``0X`` made ``\\xff\\xfe`` /
    ``\\xff\\xfd``, then every digit ``5``. processors/_logscan.c makes the same bytes."""
    return b.replace(b"0x", b"\xff\xfe").replace(b"0X", b"\xff\xfd").translate(_TO_5)


def _skeletons_py(texts: list[str]) -> list[bytes] | None:
    """The skeletons of ``texts`` in five C-level passes over them joined (join, encode,
    two replaces, translate, split); None when a text holds a NUL."""
    if not texts:
        return []
    skels = _skeleton("\0".join(texts).encode("utf-8", "surrogatepass")).split(b"\0")
    return skels if len(skels) == len(texts) else None


def skeletons(texts: list[str]) -> list[bytes] | None:
    """The skeleton of every text (see pattern_for), or None when a text holds a NUL: one
    pass per text in the C extension (processors/_logscan.c, ~8x faster), else
    :func:`_skeletons_py`; the extension leaves texts with lone surrogates to it."""
    if base.native_skeletons is not None:
        skels = base.native_skeletons(texts)
        if skels is not None or "\0" in "".join(texts):
            return skels
    return _skeletons_py(texts)


def _is_plain(text: str, parse_logfmt: bool) -> bool:
    """True when a string body is its own message (what message_of_string returns
    unparsed): not empty, not over MAX_CACHED_CHARS, not a JSON object and not (with
    ``parse_logfmt``) a logfmt candidate (its first ``=`` inside the first token). Digits
    do not change the answer, so it holds for every text of one skeleton."""
    if not text or len(text) > MAX_CACHED_CHARS:
        return False
    head = text[0]
    if head == "{" or head.isspace():
        return False
    if parse_logfmt:  # a logfmt candidate as message_of_string sees one
        eq = text.find("=")
        return eq <= 0 or bool(text[:eq].strip().count(" "))
    return True


def anyvalue_text(value: AnyValue, depth: int = 0) -> str:
    """An AnyValue as text: strings as is, scalars as their literal, bytes as hex, arrays
    as ``[a, b]``, kvlists as ``k=v`` pairs; nesting deeper than MAX_VALUE_DEPTH as ``…``."""
    kind = value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if depth >= MAX_VALUE_DEPTH:
        return "…"
    if kind == "array_value":
        return "[" + ", ".join(anyvalue_text(v, depth + 1)
                               for v in value.array_value.values) + "]"
    return " ".join(f"{kv.key}={anyvalue_text(kv.value, depth + 1)}"
                    for kv in value.kvlist_value.values)


def _json_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"),
                                                             ensure_ascii=False)
    if not text.isascii():  # JSON escapes can make lone surrogates, which OTLP cannot carry
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _logfmt(text: str) -> dict[str, str] | None:
    """The pairs of a logfmt line (every token ``key=value``, values optionally quoted),
    or None when the text is not logfmt."""
    pairs: dict[str, str] = {}
    pos = 0
    end = len(text.rstrip())
    while pos < end:
        m = _LOGFMT.match(text, pos)
        if m is None:
            return None
        v = m.group(2)
        if v.startswith('"'):
            try:
                v = json.loads(v)
            except ValueError:
                v = v[1:-1]
        pairs.setdefault(m.group(1), v)
        pos = m.end()
    return pairs or None
