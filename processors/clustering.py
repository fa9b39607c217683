"""Clustering processor: groups templates into pattern families (DESIGN.md §What it is, step 3).

A *family* is a group of templates that are one event written in ways the signature miner
cannot unify; sampling policies, the control loop and the admin API can work on families
instead of thousands of raw templates, and over-split templates share one budget. What
counts as one family (docs/clustering.md §What a family is; measured in docs/BENCHMARKS.md):

- templates that differ only in **digits** (``slot U01``/``slot U11``, ``bglio91``/
  ``bglio716``: what a miner left unmasked inside a token);
- a template and its **instances**: same token count, and at every position the tokens are
  equal or the general template's token, read as a pattern in which ``<*>`` stands for one
  or more characters, matches (``chdir(<*>)`` / ``chdir(pwd)``, ``<*>|<*>|<*>`` /
  ``<*>|com.x|<*>``); the miner compares whole tokens, so it keeps these apart;
- templates whose TF-IDF vectors are within cosine distance ``eps`` (different token
  counts of one event, such as a repeated group; a larger ``eps`` also takes optional
  suffixes such as ``Connection from <*> closed`` / ``... closed after <*> ms``);
- a pattern id the signature processor later merged into another (an *alias*) follows the
  id it was merged into, when the pipeline runs the signature processor before this one.

Never one family by similarity alone: **siblings**, templates with the same token count
whose literal tokens conflict at some position (``... via HTTPS established`` / ``... via
SOCKS5 established``; neither token matches the other): the miner keeps such messages
apart on purpose until it has seen enough values to call the position a variable, and then
merges them itself (their ids become aliases, which families follow). Letter case and
punctuation also separate families (``ICONS``/``icons``, ``on:<*>``/``on: <*>``).

How: in the background, the current templates (the top ``max_templates`` by volume) are
vectorised with scikit-learn's ``TfidfVectorizer`` (whitespace tokens, ``<*>`` a token of
its own, runs of digits read as ``0``, case kept; or character n-grams of that text). Pairs
within ``eps`` (cosine distance) form a sparse graph; edges between siblings are dropped
(``separate_siblings``) and instance links are added (``link_instances``); ``DBSCAN``
(``min_samples``, metric precomputed) clusters the graph. A template in no cluster is a
family of its own. Between runs, a template seen for the first time joins the family of its
nearest clustered template when that one is within ``eps`` and not a sibling of it (computed
once per new template and cached), else it is a family of its own.

Family id rule (stable across runs and restarts): a family's id is the pattern id of its
**oldest member**, the member first seen by this processor (first-seen order is kept in
the snapshot). Re-clustering the same templates gives the same ids; a template joining a
family never changes its id (it is younger); when two families merge, the merged family
keeps the older id and the other id is recorded as an *alias* of it (listed in
:meth:`ClusteringProcessor.families`), so a policy written for either id can follow.
Templates outside the ``max_templates`` cap keep the family they had.

Per record (hot path), :meth:`ClusteringProcessor.process` does one dict lookup and appends
the attribute ``log.pattern.family`` (one ``MergeFrom`` of a prepared record per family);
per batch, two C-level dict updates count volumes and keep the latest template text. Nothing
waits for a clustering run; a template never seen before costs one nearest-family lookup,
once. User guide: docs/clustering.md.

Settings (``processors: clustering:`` in YAML):

=====================  ===========  ==========================================================
setting                default      meaning
=====================  ===========  ==========================================================
interval               ``5m``       re-cluster this often (when a new template was seen since)
min_new_templates      ``100``      ... or as soon as this many new templates were seen
eps                    ``0.02``     DBSCAN radius, cosine distance in (0, 1]
min_samples            ``2``        DBSCAN core-point size (a template counts itself)
analyzer               ``word``     ``word`` (whitespace tokens) or ``char_wb`` (n-grams)
ngram_range            ``null``     n-gram sizes [min, max]; null = [1, 2] words, [3, 5] chars
separate_siblings      ``true``     never link siblings by similarity (see above)
link_instances         ``true``     link a template to its instances whatever ``eps``
max_templates          ``20000``    cap on templates per run (the top ones by volume)
max_tracked_templates  ``50000``    cap on templates remembered (least volume forgotten)
max_run_duration       ``5m``       a run taking longer is abandoned (previous families stay)
executor               ``process``  ``process`` (a child process: no GIL contention with the
                                    hot path), ``thread``, or ``inline`` (runs inside
                                    ``process()``: deterministic, for replay and benchmarks)
=====================  ===========  ==========================================================
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from pydantic import Field, model_validator

from collector.config import Duration, StrictModel
from processors.base import ATTR_FAMILY, LogBatch

log = logging.getLogger("lipservice.clustering")

VAR = "<*>"  # the wildcard of the signature processor's templates
WORD_TOKEN_PATTERN = r"\S+"  # tokens as the miner splits them; <*> and punctuation kept
_DIGIT_RUN = re.compile(r"\d+")
MAX_NEIGHBORS = 32  # per template in the eps-graph handed to DBSCAN (bounds memory at n*32)
MAX_INSTANCE_CANDIDATES = 256  # templates checked per general template (bounds the links)
CHUNK_BYTES = 16 * 1024 * 1024  # similarity block per step of the graph computation
MAX_TEMPLATE_CHARS = 2000  # of each template, vectorised (bounds the TF-IDF matrix)
SNAPSHOT_VERSION = 1

Tokens = tuple[str, ...]


class Config(StrictModel):
    """``processors: clustering:`` settings (table in the module docstring)."""

    interval: Duration = Field(300.0, gt=0, description="seconds between runs")
    min_new_templates: int = Field(100, ge=1)
    eps: float = Field(0.02, gt=0, le=1, description="DBSCAN radius (cosine distance)")
    min_samples: int = Field(2, ge=1)
    analyzer: Literal["word", "char_wb"] = "word"
    ngram_range: tuple[int, int] | None = None
    separate_siblings: bool = True
    link_instances: bool = True
    max_templates: int = Field(20_000, ge=1)
    max_tracked_templates: int = Field(50_000, ge=1)
    max_run_duration: Duration = Field(300.0, gt=0)
    executor: Literal["process", "thread", "inline"] = "process"

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.ngram_range is not None and not 1 <= self.ngram_range[0] <= self.ngram_range[1]:
            raise ValueError("ngram_range: expected [min, max] with 1 <= min <= max")
        if self.max_tracked_templates < self.max_templates:
            raise ValueError("max_tracked_templates must be >= max_templates")
        return self

    def ngrams(self) -> tuple[int, int]:
        if self.ngram_range is not None:
            return self.ngram_range
        return (1, 2) if self.analyzer == "word" else (3, 5)


class RunTimeout(Exception):
    """A clustering run went past ``max_run_duration``."""


# --------------------------------------------------------------------------- tokens


def normalise(template: str) -> str:
    """The text families compare: ``template`` with every run of digits read as ``0``
    (case, punctuation and ``<*>`` kept)."""
    return _DIGIT_RUN.sub("0", template)


def tokens_of(template: str) -> Tokens:
    """Whitespace tokens of the normalised template (the miner's token positions)."""
    return tuple(normalise(template).split())


def token_matches(pattern: str, token: str) -> bool:
    """True when ``pattern`` (a token holding ``<*>``, each standing for one or more
    characters) matches the whole ``token``; a token without ``<*>`` matches only itself.
    Greedy leftmost search of the literal parts: linear in the token, no regex."""
    parts = pattern.split(VAR)
    if len(parts) == 1:
        return pattern == token
    head, tail = parts[0], parts[-1]
    if not token.startswith(head) or not token.endswith(tail):
        return False
    pos, end = len(head), len(token) - len(tail)
    for part in parts[1:-1]:
        at = token.find(part, pos + 1, end)  # the <*> before it takes >= 1 character
        if at < 0:
            return False
        pos = at + len(part)
    return end - pos >= 1  # the last <*> takes >= 1 character


def siblings(a: Tokens, b: Tokens) -> bool:
    """True when ``a`` and ``b`` have the same token count and conflict at some position:
    the tokens differ and neither matches the other (``HTTPS``/``SOCKS5``; not
    ``<*>``/``pwd`` nor ``chdir(<*>)``/``chdir(pwd)``)."""
    if len(a) != len(b):
        return False
    return any(x != y and not token_matches(x, y) and not token_matches(y, x)
               for x, y in zip(a, b, strict=True))


def is_instance(general: Tokens, specific: Tokens) -> bool:
    """True when ``specific`` is an instance of ``general``: same token count, ``general``
    has a literal token (one without ``<*>``), and at every position the tokens are equal
    or ``general``'s token matches ``specific``'s."""
    if len(general) != len(specific) or all(VAR in t for t in general):
        return False
    return all(g == s or token_matches(g, s) for g, s in zip(general, specific, strict=True))


# --------------------------------------------------------------------------- the run
# Pure functions of plain data, so a run can go to a child process.


@dataclass
class RunInput:
    """What one clustering run sees. Lists are aligned; ``first_seen`` orders age (smaller is
    older); ``previous`` is each template's family before the run; ``follows`` maps a pattern
    id the signature processor merged (an alias) to the id it was merged into, both in
    ``pattern_ids``: such a row is not vectorised and takes the other's family."""

    pattern_ids: list[str]
    templates: list[str]
    first_seen: list[int]
    previous: list[str]
    config: Config
    follows: dict[str, str] = field(default_factory=dict)
    hook: Callable[[], None] | None = None  # test hook, called after vectorising


@dataclass
class RunOutput:
    """A completed run: family per clustered pattern id, aliases of families merged away
    (old id → id that absorbed it), and the model new templates join against (one row per
    vectorised template: its family and tokens)."""

    assign: dict[str, str]
    aliases: dict[str, str]
    vectorizer: Any  # fitted TfidfVectorizer (None when no template had a token)
    matrix: Any  # scipy CSR, one L2-normalised row per vectorised template (or None)
    row_families: list[str]
    n_families: int
    row_tokens: list[Tokens] = field(default_factory=list)
    duration: float = 0.0
    transposed: Any = None  # matrix.T as CSR, made once by the parent before use


def make_vectorizer(config: Config) -> Any:
    """An unfitted TfidfVectorizer for ``config``'s analyzer over :func:`normalise`-d text
    (L2-normalised rows, so the dot product of two rows is their cosine similarity)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    if config.analyzer == "word":
        return TfidfVectorizer(token_pattern=WORD_TOKEN_PATTERN, preprocessor=normalise,
                               lowercase=False, ngram_range=config.ngrams(), sublinear_tf=True,
                               dtype=np.float32)
    return TfidfVectorizer(analyzer="char_wb", preprocessor=normalise, lowercase=False,
                           ngram_range=config.ngrams(), sublinear_tf=True, dtype=np.float32)


def neighbour_graph(matrix: Any, eps: float, deadline: float | None = None,
                    max_neighbors: int = MAX_NEIGHBORS, chunk_bytes: int = CHUNK_BYTES) -> Any:
    """Sparse symmetric CSR graph of cosine distances ≤ ``eps`` between the rows of an
    L2-normalised ``matrix`` (n × features), keeping each row's ``max_neighbors`` nearest.
    Similarities are computed a block of rows at a time (a block's product is at most
    about ``chunk_bytes``), so memory is O(chunk_bytes + n·max_neighbors).
    Raises RunTimeout past ``deadline`` (a time.monotonic() value)."""
    import numpy as np
    from scipy import sparse

    n = matrix.shape[0]
    step = max(1, chunk_bytes // (8 * max(n, 1)))  # 8 bytes per stored product entry
    transposed = matrix.T.tocsr()
    min_sim = 1.0 - eps
    rows, cols, dists = [], [], []
    for start in range(0, n, step):
        if deadline is not None and time.monotonic() > deadline:
            raise RunTimeout(f"stopped after {start} of {n} templates")
        block = (matrix[start:start + step] @ transposed).tocsr()
        at = np.flatnonzero(block.data >= min_sim)
        r = np.searchsorted(block.indptr, at, side="right") - 1 + start
        c, sim = block.indices[at], block.data[at]
        keep = c != r  # not its own neighbour
        r, c, sim = r[keep], c[keep], sim[keep]
        if len(r) and np.bincount(r - start).max() > max_neighbors:
            order = np.lexsort((-sim, r))  # by row, most similar first
            r, c, sim = r[order], c[order], sim[order]
            rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
            keep = rank < max_neighbors
            r, c, sim = r[keep], c[keep], sim[keep]
        rows.append(r)
        cols.append(c)
        dists.append(np.clip(1.0 - sim, 0.0, None))
    r = np.concatenate([np.zeros(0, np.int64), *rows, *cols])
    c = np.concatenate([np.zeros(0, np.int64), *cols, *rows])
    d = np.concatenate([np.zeros(0), *dists, *dists])
    _, first = np.unique(r.astype(np.int64) * n + c, return_index=True)  # union, no doubles
    return sparse.csr_matrix((d[first], (r[first], c[first])), shape=(n, n))


def drop_siblings(graph: Any, tokens: Sequence[Tokens], deadline: float | None = None) -> Any:
    """``graph`` (symmetric CSR, n × n) without the edges between :func:`siblings`.
    Raises RunTimeout past ``deadline``."""
    import numpy as np

    coo = graph.tocoo()
    keep = np.ones(coo.nnz, dtype=bool)
    for k, (i, j) in enumerate(zip(coo.row.tolist(), coo.col.tolist(), strict=True)):
        if k % 65536 == 0 and deadline is not None and time.monotonic() > deadline:
            raise RunTimeout(f"stopped after checking {k} of {coo.nnz} links for siblings")
        if len(tokens[i]) == len(tokens[j]) and siblings(tokens[i], tokens[j]):
            keep[k] = False
    if keep.all():
        return graph
    from scipy import sparse

    return sparse.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=coo.shape)


def instance_links(tokens: Sequence[Tokens], deadline: float | None = None,
                   max_candidates: int = MAX_INSTANCE_CANDIDATES) -> list[tuple[int, int]]:
    """(general, instance) row pairs (:func:`is_instance`). Candidates for a general
    template come from an index of (token count, position, literal token): those sharing
    its rarest literal token, at most ``max_candidates`` of them. Raises RunTimeout past
    ``deadline``."""
    index: dict[tuple[int, int, str], list[int]] = {}
    for i, toks in enumerate(tokens):
        n = len(toks)
        for k, tok in enumerate(toks):
            if VAR not in tok:
                index.setdefault((n, k, tok), []).append(i)
    links = []
    for g, toks in enumerate(tokens):
        if g % 256 == 0 and deadline is not None and time.monotonic() > deadline:
            raise RunTimeout(f"stopped after looking for instances of {g} of {len(tokens)}")
        wild = [k for k, tok in enumerate(toks) if VAR in tok]
        if not wild or len(wild) == len(toks):
            continue
        n = len(toks)
        candidates = min((index[(n, k, tok)] for k, tok in enumerate(toks) if VAR not in tok),
                         key=len)
        for s in candidates[:max_candidates]:
            if s != g and is_instance(toks, tokens[s]):
                links.append((g, s))
    return links


def cluster_run(job: RunInput) -> RunOutput:
    """Vectorise and cluster ``job``'s templates (module docstring); name each family after
    its oldest member. Raises RunTimeout past ``config.max_run_duration``. Pure: no state
    outside ``job``."""
    import numpy as np
    from scipy import sparse
    from sklearn.cluster import DBSCAN

    started = time.monotonic()
    cfg = job.config
    deadline = started + cfg.max_run_duration
    pids = job.pattern_ids
    rows = [i for i, p in enumerate(pids) if p not in job.follows]  # rows vectorised
    texts = [job.templates[i] for i in rows]
    vectorizer: Any = make_vectorizer(cfg)
    try:
        matrix: Any = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # empty vocabulary: no template has a token (e.g. all empty)
        vectorizer = matrix = None
    if job.hook is not None:
        job.hook()
    tokens = [tokens_of(t) for t in texts]
    m = len(rows)
    if matrix is None:
        graph = sparse.csr_matrix((m, m))
    else:
        graph = neighbour_graph(matrix, cfg.eps, deadline)
    if cfg.separate_siblings and graph.nnz:
        graph = drop_siblings(graph, tokens, deadline)
    if cfg.link_instances:
        links = instance_links(tokens, deadline)
        if links:
            r, c = np.array(links).T
            g = graph.tocoo()
            # Links are stored zeros (distance 0: DBSCAN counts them as neighbours); a link
            # that is also a similarity edge sums to that edge's distance, still <= eps.
            graph = sparse.csr_matrix(
                (np.r_[g.data, np.zeros(2 * len(links))],
                 (np.r_[g.row, r, c], np.r_[g.col, c, r])), shape=(m, m))
    if graph.nnz:
        labels = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples,
                        metric="precomputed").fit(graph).labels_.tolist()
    else:
        labels = [-1] * m

    # Group of every job row: its cluster, else itself; a follower takes its target's.
    group: dict[str, int] = {}
    for k, (i, label) in enumerate(zip(rows, labels, strict=True)):
        group[pids[i]] = label if label >= 0 else -2 - k
    for p, target in job.follows.items():
        group[p] = group[target]
    # Family id of each group: the pattern id of its oldest member.
    oldest: dict[int, int] = {}
    for i, p in enumerate(pids):
        g = group[p]
        j = oldest.get(g)
        if j is None or (job.first_seen[i], p) < (job.first_seen[j], pids[j]):
            oldest[g] = i
    assign = {p: pids[oldest[group[p]]] for p in pids}
    return RunOutput(assign=assign, aliases=merged_aliases(job, assign), vectorizer=vectorizer,
                     matrix=matrix, row_families=[assign[pids[i]] for i in rows],
                     row_tokens=tokens, n_families=len(set(assign.values())),
                     duration=time.monotonic() - started)


def merged_aliases(job: RunInput, assign: dict[str, str]) -> dict[str, str]:
    """Old family id → new family id, for every family of ``job.previous`` that no longer
    exists: it goes where its own template went, else where most of its members went."""
    current = set(assign.values())
    moved: dict[str, Counter[str]] = {}
    for pid, old in zip(job.pattern_ids, job.previous, strict=True):
        if old and old not in current:
            moved.setdefault(old, Counter())[assign[pid]] += 1
    return {old: assign[old] if old in assign else votes.most_common(1)[0][0]
            for old, votes in moved.items()}


def nearest_families(out: RunOutput, templates: list[str], eps: float,
                     separate_siblings: bool = True) -> list[str | None]:
    """For each template, the family of its nearest clustered template within cosine
    distance ``eps`` in ``out``'s model, or None (also when that template is a sibling of
    it and ``separate_siblings``)."""
    import numpy as np

    if not templates or out.matrix is None or out.matrix.shape[0] == 0:
        return [None] * len(templates)
    query = out.vectorizer.transform([t[:MAX_TEMPLATE_CHARS] for t in templates])
    result: list[str | None] = []
    step = max(1, CHUNK_BYTES // (8 * out.matrix.shape[0]))
    if out.transposed is None:
        out.transposed = out.matrix.T.tocsr()
    transposed = out.transposed
    for start in range(0, len(templates), step):
        sims = (query[start:start + step] @ transposed).toarray()
        best = sims.argmax(axis=1)
        top = sims[np.arange(len(best)), best]
        for k, (b, s) in enumerate(zip(best.tolist(), top.tolist(), strict=True)):
            near = s >= 1.0 - eps and not (
                separate_siblings and out.row_tokens
                and siblings(tokens_of(templates[start + k][:MAX_TEMPLATE_CHARS]),
                             out.row_tokens[b]))
            result.append(out.row_families[b] if near else None)
    return result


# --------------------------------------------------------------------------- runners


class _ProcessRunner:
    """One long-lived child process (``spawn``: safe beside gRPC threads) that runs
    :func:`cluster_run`; restarted if it dies, killed if a run overstays."""

    def __init__(self) -> None:
        self._proc: Any = None
        self._conn: Any = None

    def run(self, job: RunInput) -> RunOutput:
        if self._proc is None or not self._proc.is_alive():
            ctx = multiprocessing.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_serve, args=(child,), daemon=True,
                                     name="lipservice-clustering")
            self._proc.start()
            child.close()
        self._conn.send(job)
        # Startup (imports) is not part of a run's budget, hence the margin.
        if not self._conn.poll(job.config.max_run_duration + 30.0):
            self.close()
            raise RunTimeout("clustering child process did not answer in time; killed")
        try:
            ok, value = self._conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError("clustering child process died") from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.pid is not None:
                self._proc.terminate()
            self._proc.join(5.0)
            self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _serve(conn: Any) -> None:
    """Child process loop: receive RunInput, send (True, RunOutput) or (False, exception).
    Runs at a lower CPU priority than the sidecar, whose hot path must come first."""
    import contextlib
    import os

    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send((True, cluster_run(job)))
        except Exception as err:  # noqa: BLE001 - reported to the parent, which logs it
            conn.send((False, err if isinstance(err, RunTimeout) else RuntimeError(repr(err))))


# --------------------------------------------------------------------------- processor

Entry = tuple[str, bytes]  # (family id, its attribute serialized as a LogRecord)


def build_job(entries: dict[str, Entry], templates: dict[str, str], volumes: dict[str, int],
              first_seen: dict[str, int], config: Config,
              hook: Callable[[], None] | None = None,
              pattern_aliases: dict[str, str] | None = None) -> RunInput:
    """A run's input from copies of the processor's maps: the top ``max_templates``
    templates by volume (ties: older first), each cut to ``MAX_TEMPLATE_CHARS``.

    pattern_aliases: merged pattern id → surviving id (the signature processor's map). A
    tracked id merged into a tracked one is not vectorised: it *follows* the survivor when
    the survivor is in the run (else it keeps its family)."""
    aliases = pattern_aliases or {}
    followers = {}
    for p, s in aliases.items():
        for _ in range(8):  # the miner flattens chains; a copy taken mid-merge may not be
            if s not in aliases or aliases[s] == s:
                break
            s = aliases[s]
        if p != s and p in entries and s in entries and p in templates and s in templates:
            followers[p] = s
    pids = [p for p in templates if p in entries and p not in followers]
    if len(pids) > config.max_templates:
        pids.sort(key=lambda p: (-volumes.get(p, 0), first_seen.get(p, 0), p))
        del pids[config.max_templates:]
    chosen = set(pids)
    follows = {p: s for p, s in followers.items() if s in chosen}
    pids.extend(follows)
    return RunInput(pattern_ids=pids, templates=[templates[p][:MAX_TEMPLATE_CHARS] for p in pids],
                    first_seen=[first_seen.get(p, 0) for p in pids],
                    previous=[entries[p][0] for p in pids], config=config, follows=follows,
                    hook=hook)


def resolve_aliases(aliases: dict[str, str], live: set[str], cap: int) -> dict[str, str]:
    """Follow alias chains (a → b → c becomes a → c), drop ids that are families again, and
    keep the ``cap`` most recent entries."""
    out: dict[str, str] = {}
    for old, new in aliases.items():
        seen = {old}
        while new in aliases and new not in seen:
            seen.add(new)
            new = aliases[new]
        if old != new and old not in live:
            out[old] = new
    if len(out) > cap:
        out = dict(list(out.items())[-cap:])
    return out


@dataclass
class _Stats:
    runs: Counter[str] = field(default_factory=Counter)  # by outcome
    last_duration: float = 0.0  # seconds, latest completed run
    last_time: float = 0.0  # batch clock (seconds since the epoch) when that run started
    templates_clustered: int = 0
    families: int = 0
    overflow: int = 0  # new templates not remembered (2 × max_tracked_templates reached)


class ClusteringProcessor:
    """Sets ``batch.families[i]`` and the attribute ``log.pattern.family`` from the latest
    completed clustering, and starts background runs (module docstring).

    Reads ``batch.pattern_ids`` / ``batch.templates`` (filled by the signature processor);
    records with no pattern id ("") get no family. Thread-safe: ``process()`` may be called
    from several threads; the background run touches the shared maps only under a lock, for
    a few dict copies when it starts and the changed entries when it ends.
    """

    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config
        # Test hook: called inside each run after vectorising (with executor: process it
        # must be a picklable module-level function).
        self.hook: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}  # pattern id → (family, attribute): hot path
        self._attrs: dict[str, bytes] = {}  # family id → attribute carrier, shared
        self._templates: dict[str, str] = {}  # pattern id → latest template text
        self._volumes: Counter[str] = Counter()  # pattern id → records seen
        self._first_seen: dict[str, int] = {}  # pattern id → age (batch number first seen)
        self._aliases: dict[str, str] = {}  # merged family id → family id
        self._seq = 0
        self._new_since_run = 0
        self._joined_during_run: list[str] = []
        self._model: RunOutput | None = None
        self._last_start: float | None = None  # batch clock
        self._needs_run = False
        self._worker: threading.Thread | None = None
        self._runner: _ProcessRunner | None = None
        self._stats = _Stats()
        self._closed = False
        self._alias_source: Any = None  # upstream processor with pattern ``aliases``

    def bind_upstream(self, processors: Sequence[Any]) -> None:
        """Called once by the pipeline with the processors that run before this one: the
        nearest with ``resolve`` and ``aliases`` (the signature processor) becomes the
        source of pattern aliases, so a merged pattern id follows the id it was merged into
        (module docstring). Without one, ids are clustered as they come."""
        for proc in reversed(processors):
            if callable(getattr(proc, "resolve", None)) and hasattr(proc, "aliases"):
                self._alias_source = proc
                return

    def _pattern_aliases(self) -> dict[str, str]:
        """A copy of the upstream pattern alias map (merged id → surviving id), or {}.
        One C-level dict copy, taken by the run's worker, never on the hot path."""
        source = self._alias_source
        if source is None:
            return {}
        try:
            return dict(source.aliases)
        except Exception:  # noqa: BLE001 - families without aliases are still valid
            log.exception("reading pattern aliases from %s failed", type(source).__name__)
            return {}

    # ------------------------------------------------------------------ hot path

    def process(self, batch: LogBatch) -> None:
        """Annotate every record that has a pattern id with its family (in place)."""
        pids = batch.pattern_ids
        with self._lock:
            entries = self._entries
            self._templates.update(zip(pids, batch.templates, strict=True))
            self._volumes.update(pids)
            found = [entries.get(p) for p in pids]
            if None in found:
                new = set(pids).difference(entries)
                new.discard("")
                if new:
                    self._add_new(sorted(new))
                    found = [entries.get(p) for p in pids]
                    if None in found:  # past the memory bound: a family of its own, unsaved
                        found = [e if e is not None or not p else (p, _make_attr(p))
                                 for p, e in zip(pids, found, strict=True)]
                if "" in self._volumes:
                    del self._volumes[""], self._templates[""]
            start = self._due(batch.now)
        # Decided; now mutate the batch.
        batch.families[:] = [e[0] if e is not None else f
                             for e, f in zip(found, batch.families, strict=True)]
        batch.add_attributes([e[1] if e is not None else b"" for e in found])
        if start:
            self._start_run(batch.now)

    def _add_new(self, new: list[str]) -> None:
        """Give each pattern id seen for the first time a family, once (called under the
        lock). All of one batch share an age; ``new`` is sorted, so the order is stable."""
        room = 2 * self.config.max_tracked_templates - len(self._entries)
        if room < len(new):
            for p in new[max(room, 0):]:
                self._templates.pop(p, None)
                self._volumes.pop(p, None)
            self._stats.overflow += len(new) - max(room, 0)
            new = new[:max(room, 0)]
        joined: list[str | None] = [None] * len(new)
        if self._model is not None and new:
            try:
                joined = nearest_families(self._model, [self._templates[p] for p in new],
                                          self.config.eps, self.config.separate_siblings)
            except Exception:  # noqa: BLE001 - a family of its own is always valid
                log.exception("joining %d new templates to families failed", len(new))
        seq = self._seq
        self._seq += 1
        for p, fam in zip(new, joined, strict=True):
            fam = fam or p
            self._entries[p] = (fam, self._attr(fam))
            self._first_seen[p] = seq
        self._new_since_run += len(new)
        if self._worker is not None:
            self._joined_during_run.extend(new)

    def _attr(self, family: str) -> bytes:
        kv = self._attrs.get(family)
        if kv is None:
            kv = self._attrs[family] = _make_attr(family)
        return kv

    # ------------------------------------------------------------------ runs

    def _due(self, now: float) -> bool:
        """True when a run should start now (called under the lock)."""
        if self._worker is not None or self._closed or not self._entries:
            return False
        if self._last_start is None:
            self._last_start = now
        if self._needs_run or self._new_since_run >= self.config.min_new_templates:
            return True
        return self._new_since_run > 0 and now - self._last_start >= self.config.interval

    def run_now(self, now: float | None = None) -> None:
        """Start a run now unless one is in progress, whatever the triggers say; with
        ``executor: inline`` it has completed when this returns. ``now``: batch-clock
        seconds recorded as the run's time (default: wall clock)."""
        self._start_run(time.time() if now is None else now)

    @property
    def running(self) -> bool:
        """True while a clustering run is in progress."""
        return self._worker is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no run is in progress, at most ``timeout`` seconds (for tests, replay
        and benchmarks). Returns True when idle."""
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        return self._worker is None

    def _start_run(self, now: float) -> None:
        with self._lock:
            if self._worker is not None or self._closed or not self._entries:
                return
            self._last_start = now
            self._new_since_run = 0
            self._needs_run = False
            self._joined_during_run = []
            self._stats.last_time = now
            # C-level copies; the job is built from them outside the lock. Entries are
            # replaced, never mutated, so a shallow copy is a consistent view.
            state = (dict(self._entries), dict(self._templates), dict(self._volumes),
                     dict(self._first_seen))
            worker = threading.Thread(target=self._run, args=state, daemon=True,
                                      name="lipservice-clustering")
            self._worker = worker
        if self.config.executor == "inline":
            self._run(*state)
        else:
            worker.start()

    def _run(self, entries: dict[str, Entry], templates: dict[str, str],
             volumes: dict[str, int], first_seen: dict[str, int]) -> None:
        """Worker: build the job, run it (here, or in the child process), swap it in."""
        outcome = "error"
        n = 0
        try:
            job = build_job(entries, templates, volumes, first_seen, self.config, self.hook,
                            self._pattern_aliases())
            n = len(job.pattern_ids)
            if self.config.executor == "process":
                if self._runner is None:
                    self._runner = _ProcessRunner()
                out = self._runner.run(job)
            else:
                out = cluster_run(job)
            if not self._closed:
                self._apply(out, entries, volumes, first_seen)
                outcome = "ok"
        except RunTimeout as err:
            outcome = "timeout"
            log.warning("clustering run over %d templates abandoned: %s", n, err)
        except Exception:  # noqa: BLE001 - the previous families stay in force
            if not self._closed:
                log.exception("clustering run over %d templates failed", n)
        finally:
            with self._lock:
                self._stats.runs[outcome] += 1
                self._worker = None

    def _apply(self, out: RunOutput, entries: dict[str, Entry], volumes: dict[str, int],
               first_seen: dict[str, int]) -> None:
        """Swap a completed run in. The work is done on the copies taken when the run
        started; under the lock only the changed entries are written."""
        if out.matrix is not None:  # for joins on the hot path, made here once
            out.transposed = out.matrix.T.tocsr()
        raw_aliases = {**self._aliases, **out.aliases}
        changes = {p: f for p, f in out.assign.items() if entries[p][0] != f}
        for p, (f, _) in entries.items():  # outside the cap: follow merges
            if p not in out.assign and f in raw_aliases:
                changes[p] = raw_aliases[f]
        excess = len(entries) - self.config.max_tracked_templates
        victims = sorted(entries, key=lambda p: (volumes.get(p, 0), -first_seen.get(p, 0), p))[
            :max(excess, 0)]
        gone = set(victims)
        families = {changes.get(p, e[0]) for p, e in entries.items() if p not in gone}
        aliases = resolve_aliases(raw_aliases, families, self.config.max_tracked_templates)
        with self._lock:
            live = self._entries
            for p, f in changes.items():
                if p in live:
                    live[p] = (f, self._attr(f))
            for p in self._joined_during_run:  # joined a family the run may have merged
                e = live.get(p)
                if e is not None and e[0] in aliases:
                    live[p] = (aliases[e[0]], self._attr(aliases[e[0]]))
            for p in victims:
                live.pop(p, None)
                self._templates.pop(p, None)
                self._volumes.pop(p, None)
                self._first_seen.pop(p, None)
            if len(self._attrs) > 2 * len(families) + 100:
                keep = families.union(live[p][0] for p in self._joined_during_run if p in live)
                self._attrs = {f: kv for f, kv in self._attrs.items() if f in keep}
            self._joined_during_run = []
            self._aliases = aliases
            self._model = out
            self._stats.last_duration = out.duration
            self._stats.templates_clustered = len(out.assign)
            self._stats.families = len(families)

    # ------------------------------------------------------------------ plain data

    def families(self, limit: int | None = None,
                 max_members: int | None = None) -> list[dict[str, Any]]:
        """The families, largest volume first (plain data, for the control loop and
        ``GET /api/v1/patterns``)::

            [{"family": id, "representative": template of the member with most volume,
              "volume": records seen, "templates": number of members,
              "members": [{"pattern_id", "template", "volume"}, …] (largest first),
              "aliases": [ids of families merged into this one]}, …]

        limit: at most this many families; max_members: at most this many members listed
        per family ("templates" still counts all); None: no cap."""
        with self._lock:
            entries = dict(self._entries)
            templates = dict(self._templates)
            volumes = dict(self._volumes)
            aliases = dict(self._aliases)
        groups: dict[str, list[dict[str, Any]]] = {}
        for p, (f, _) in entries.items():
            groups.setdefault(f, []).append(
                {"pattern_id": p, "template": templates.get(p, ""), "volume": volumes.get(p, 0)})
        merged: dict[str, list[str]] = {}
        for old, new in aliases.items():
            merged.setdefault(new, []).append(old)
        out = []
        for f, members in groups.items():
            members.sort(key=lambda m: (-m["volume"], m["pattern_id"]))
            out.append({"family": f, "representative": members[0]["template"],
                        "volume": sum(m["volume"] for m in members),
                        "templates": len(members), "members": members,
                        "aliases": sorted(merged.get(f, []))})
        out.sort(key=lambda d: (-d["volume"], d["family"]))
        if limit is not None:
            del out[limit:]
        if max_members is not None:
            for d in out:
                del d["members"][max_members:]
        return out

    def family_of(self, pattern_id: str) -> str | None:
        """The current family id of a pattern id, or None if unknown."""
        e = self._entries.get(pattern_id)
        return None if e is None else e[0]

    def snapshot(self) -> dict[str, Any]:
        """State as JSON data: ``{"version": 1, "templates": [[pattern_id, template, family,
        first_seen, volume], …], "aliases": {old: new}}``. The first-seen ages travel with
        it, so family ids survive a restart."""
        with self._lock:  # copies only; the rows are built outside the lock
            entries = dict(self._entries)
            templates = dict(self._templates)
            first_seen = dict(self._first_seen)
            volumes = dict(self._volumes)
            aliases = dict(self._aliases)
        rows = [[p, templates.get(p, ""), e[0], first_seen.get(p, 0), volumes.get(p, 0)]
                for p, e in entries.items()]
        return {"version": SNAPSHOT_VERSION, "templates": rows, "aliases": aliases}

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`snapshot`; a run starts with the next batch, to rebuild the model
        that new templates join against. Raises ValueError on a malformed snapshot and then
        leaves the current state as it was."""
        if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"clustering snapshot: expected an object with version "
                             f"{SNAPSHOT_VERSION}")
        rows = state.get("templates")
        aliases = state.get("aliases", {})
        if not isinstance(rows, list) or not isinstance(aliases, dict):
            raise ValueError("clustering snapshot: 'templates' must be a list and "
                             "'aliases' an object")
        for n, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 5 and row[0]
                    and all(isinstance(v, str) for v in row[:3])
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in row[3:])):
                raise ValueError(f"clustering snapshot: templates[{n}] is not "
                                 "[pattern_id, template, family, first_seen, volume]")
        with self._lock:
            self._entries.clear()
            self._attrs.clear()
            self._templates.clear()
            self._volumes.clear()
            self._first_seen.clear()
            for p, t, f, seen, vol in rows:
                self._entries[p] = (f, self._attr(f))
                self._templates[p] = t
                self._volumes[p] = vol
                self._first_seen[p] = seen
            self._seq = max(self._first_seen.values(), default=-1) + 1
            self._aliases = {str(k): str(v) for k, v in aliases.items()}
            self._model = None
            self._needs_run = bool(rows)
            self._stats.families = len(set(self._attrs))

    # ------------------------------------------------------------------ metrics, close

    def collect_metrics(self) -> Iterable[Any]:
        """``lipservice_clustering_*`` gauges and counters, read at scrape time."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            s = self._stats
            tracked = len(self._entries)
            runs = dict(s.runs)
            values = (s.families, s.templates_clustered, s.last_duration, s.last_time,
                      s.overflow)
        families, clustered, duration, last, overflow = values
        yield GaugeMetricFamily("lipservice_clustering_families",
                                "Pattern families after the latest clustering run.", families)
        yield GaugeMetricFamily("lipservice_clustering_templates_clustered",
                                "Templates considered by the latest clustering run.", clustered)
        yield GaugeMetricFamily("lipservice_clustering_templates_tracked",
                                "Templates the clustering processor remembers.", tracked)
        yield GaugeMetricFamily("lipservice_clustering_last_run_duration_seconds",
                                "Duration of the latest completed clustering run.", duration)
        yield GaugeMetricFamily("lipservice_clustering_last_run_timestamp_seconds",
                                "Start of the latest clustering run, seconds since the epoch.",
                                last)
        runs_metric = CounterMetricFamily("lipservice_clustering_runs",
                                          "Clustering runs by outcome.", labels=["outcome"])
        for outcome in ("ok", "timeout", "error"):
            runs_metric.add_metric([outcome], runs.get(outcome, 0))
        yield runs_metric
        yield CounterMetricFamily("lipservice_clustering_untracked_templates",
                                  "New templates not remembered (memory bound reached); "
                                  "each was its own family.", overflow)

    def close(self) -> None:
        """Stop background work; a run in progress is abandoned (its child is killed)."""
        self._closed = True
        runner = self._runner
        if runner is not None:
            runner.close()


def _make_attr(family: str) -> bytes:
    """A serialized LogRecord holding only the family attribute: merging it into a record
    appends that attribute (``LogBatch.add_attributes``)."""
    return LogRecord(attributes=[KeyValue(key=ATTR_FAMILY, value=AnyValue(string_value=family))]
                     ).SerializeToString()
