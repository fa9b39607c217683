"""What every processor shares: the batch in flight and the processor contract.

A processor (DESIGN.md §Layout) is one module holding a pydantic ``Config`` and one class
with one batch method::

    class Config(StrictModel): ...

    class MyProcessor:
        Config = Config
        def __init__(self, config: Config) -> None: ...
        def process(self, batch: LogBatch) -> None: ...   # in place

Optional methods the collector calls when present:

- ``snapshot() -> dict`` / ``restore(state: dict) -> None``: state as plain data
  (JSON-serialisable); the collector persists it. Processors do no I/O.
- ``collect_metrics() -> Iterable[prometheus_client.core.Metric]``: read at scrape time,
  so counters cost nothing per record.
- ``close() -> None``.

Fail-open rule: a processor must finish deciding before it mutates the batch (for example,
compute the keep mask first and call :meth:`LogBatch.retain` last), so that when it raises,
the pipeline can pass the batch on as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from itertools import compress
from operator import not_
from typing import Any, ClassVar, Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from pydantic import BaseModel

# The field numbers processors/_logscan.c reads, as (message, field name, number); the
# reader is used only when the installed opentelemetry-proto agrees (and none of the
# LogRecord fields sits in a oneof), so a schema change can never make it read wrongly.
NATIVE_FIELDS = [
    (ExportLogsServiceRequest, "resource_logs", 1), (ResourceLogs, "scope_logs", 2),
    (ScopeLogs, "log_records", 2), (LogRecord, "severity_number", 2),
    (LogRecord, "severity_text", 3), (LogRecord, "body", 5), (LogRecord, "trace_id", 9),
    (AnyValue, "string_value", 1), (AnyValue, "bool_value", 2), (AnyValue, "int_value", 3),
    (AnyValue, "double_value", 4), (AnyValue, "array_value", 5),
    (AnyValue, "kvlist_value", 6), (AnyValue, "bytes_value", 7),
]


def _native_schema_problem() -> str | None:
    """Why the installed OTLP schema is not the one the C reader follows, or None."""
    for message, name, number in NATIVE_FIELDS:
        f = message.DESCRIPTOR.fields_by_name.get(name)
        if f is None or f.number != number:
            return f"{message.DESCRIPTOR.name}.{name} is not field {number}"
        in_oneof = f.containing_oneof is not None
        if in_oneof != (message is AnyValue):
            return f"{message.DESCRIPTOR.name}.{name} {'is' if in_oneof else 'is not'} in a oneof"
    return None


_scan_columns: Callable[[bytes], tuple[list[str], list[int], list[str], list[bytes]] | None] \
    | None = None
native_skeletons: Callable[[list[str]], list[bytes] | None] | None = None
"""processors/_logscan.c's ``skeletons`` (signature.py), or None: not in use."""
NATIVE_PROBLEM: str | None = None
"""Why the C reader is not in use (None when it is): not built, disabled, or a schema it
does not follow; ``lipservice run`` logs it."""
if os.environ.get("LIPSERVICE_NATIVE", "1").strip().lower() in ("0", "false", "off", "no"):
    NATIVE_PROBLEM = "turned off by LIPSERVICE_NATIVE"
else:
    try:  # the optional C extension (setup.py); without it the columns are read from upb
        from processors import _logscan
    except ImportError as err:  # pragma: no cover - exercised by installs without a compiler
        NATIVE_PROBLEM = (f"not built (no C compiler when lipservice was installed?): {err}; "
                          f"with gcc installed, reinstall lipservice to build it")
    else:
        NATIVE_PROBLEM = _native_schema_problem()
        if NATIVE_PROBLEM is None:
            _scan_columns, native_skeletons = _logscan.columns, _logscan.skeletons
        else:  # pragma: no cover - only with an opentelemetry-proto that renumbered fields
            NATIVE_PROBLEM = f"the installed opentelemetry-proto differs: {NATIVE_PROBLEM}"

NATIVE_SCAN = _scan_columns is not None
"""True when the C reader of OTLP bytes (processors/_logscan.c) is built and in use (see
NATIVE_PROBLEM; ``LIPSERVICE_NATIVE=0`` turns it off)."""

UNKNOWN_SERVICE = "unknown_service"

# Attribute names this product writes on records (DESIGN.md §Sampling semantics).
ATTR_PATTERN_ID = "log.pattern.id"
ATTR_TEMPLATE = "log.record.template"
ATTR_FAMILY = "log.pattern.family"
ATTR_ADJUSTED_COUNT = "sampling.adjusted_count"
ATTR_DECISION = "lipservice.sampling.decision"
OWN_ATTRS = frozenset({ATTR_PATTERN_ID, ATTR_TEMPLATE, ATTR_FAMILY, ATTR_ADJUSTED_COUNT,
                       ATTR_DECISION})
"""Every attribute this product writes on records."""


def strip_own_attrs(request: ExportLogsServiceRequest) -> int:
    """Remove the attributes this product wrote (``OWN_ATTRS``) from every record, so a
    request that already went through a pipeline (``lipservice replay`` of the file
    exporter's output) can run through one again without duplicate keys. Returns the
    number of attributes removed."""
    removed = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                attrs = rec.attributes
                for i in range(len(attrs) - 1, -1, -1):
                    if attrs[i].key in OWN_ATTRS:
                        del attrs[i]
                        removed += 1
    return removed


def service_name(resource: Resource) -> str:
    """The resource's ``service.name`` string, or ``unknown_service`` when absent."""
    for kv in resource.attributes:
        if kv.key == "service.name":
            return kv.value.string_value or UNKNOWN_SERVICE
    return UNKNOWN_SERVICE


def add_str_attr(record: LogRecord, key: str, value: str) -> None:
    """Append a string attribute to a record (no check for an existing key: callers add
    each of their keys once per record)."""
    record.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))


def add_double_attr(record: LogRecord, key: str, value: float) -> None:
    record.attributes.append(KeyValue(key=key, value=AnyValue(double_value=value)))


class LogBatch:
    """One OTLP ``ExportLogsServiceRequest`` in flight, with a flat view of its records and
    per-record side data that processors fill in for the processors after them.

    Attributes (all lists are aligned with ``records``):
        request: the decoded protobuf message, mutated in place.
        now: seconds since the epoch for this batch (wall clock, or the replay's virtual
            clock); processors read time only from here.
        records: the LogRecord messages, in request order. Their Python wrappers are made
            on first use (~0.2 us per record in upb): the pipeline's processors read the
            columns below and :meth:`record`, so most batches only ever wrap the records
            that survive sampling.
        services: ``service.name`` of each record's resource.
        pattern_ids: 16-hex pattern id per record ("" until the signature processor runs).
        templates: template text per record ("" until the signature processor runs).
        families: family id per record ("" until the clustering processor runs).
        bodies: None, or the string body of each record, "" where the body is not a
            string: read from ``raw`` when the batch is made with it, else by the first
            processor that needs them (the signature processor); later processors read it
            instead of the protobuf field (much cheaper than upb's ~0.5-0.7 us per read).
        severity_numbers, severity_texts, trace_ids: None, or, when the batch was made
            from ``raw`` bytes, each record's ``severity_number`` (int), ``severity_text``
            (str) and ``trace_id`` (bytes), read from the bytes by the C extension
            (processors/_logscan.c, ~0.2 us per record for all four columns against
            ~1.2 us through upb); processors read the records when None. A processor
            that changes a record's body, severity or trace_id must update these columns
            (or set them to None) for the processors after it.
        dropped_pattern_ids: pattern id of every record removed by :meth:`retain`, so
            reports can count drops per pattern without another pass.
        received: number of records the request held when the batch was made.
        pending: None (attributes are written at once), or, for a batch made with
            ``defer_attributes=True``, the serialized attributes added per record and not
            yet written (see :meth:`add_attributes`).
    """

    __slots__ = ("request", "now", "_records", "_n", "services", "pattern_ids",
                 "templates", "families", "bodies", "severity_numbers", "severity_texts",
                 "trace_ids", "dropped_pattern_ids", "received", "pending", "_scope_counts")

    def __init__(self, request: ExportLogsServiceRequest, now: float,
                 defer_attributes: bool = False, raw: bytes | None = None) -> None:
        """request: the decoded message; raw: optionally, the protobuf bytes it was decoded
        from (unchanged since), for the columns above; now, defer_attributes: see above."""
        self.request = request
        self.now = now
        services: list[str] = []
        scope_counts: list[int] = []
        for rl in request.resource_logs:
            svc = service_name(rl.resource)
            for sl in rl.scope_logs:
                c = len(sl.log_records)
                services.extend([svc] * c)
                scope_counts.append(c)
        self._records: list[LogRecord] | None = None
        self.services = services
        self._scope_counts = scope_counts
        n = self._n = len(services)
        self.received = n
        self.pattern_ids: list[str] = [""] * n
        self.templates: list[str] = [""] * n
        self.families: list[str] = [""] * n
        self.bodies: list[str] | None = None
        self.severity_numbers: list[int] | None = None
        self.severity_texts: list[str] | None = None
        self.trace_ids: list[bytes] | None = None
        if raw is not None and _scan_columns is not None and n:
            cols = _scan_columns(raw)  # None: bytes the scan does not follow; read upb
            if cols is not None and len(cols[0]) == n:
                self.bodies, self.severity_numbers, self.severity_texts, self.trace_ids = cols
        self.dropped_pattern_ids: list[str] = []
        self.pending: list[bytes] | None = [b""] * n if defer_attributes else None

    def __len__(self) -> int:
        return self._n

    @property
    def records(self) -> list[LogRecord]:
        """The LogRecord messages, in request order (wrapped on first use)."""
        if self._records is None:
            self._records = [rec for rl in self.request.resource_logs
                             for sl in rl.scope_logs for rec in sl.log_records]
        return self._records

    def record(self, i: int) -> LogRecord:
        """``records[i]``, without wrapping every record when they are not wrapped yet.
        Raises IndexError outside 0 <= i < len(self)."""
        if self._records is not None:
            return self._records[i]
        if not 0 <= i < self._n:
            raise IndexError(f"record {i} of a batch of {self._n}")
        for rl in self.request.resource_logs:
            for sl in rl.scope_logs:
                recs = sl.log_records
                if i < len(recs):
                    return recs[i]
                i -= len(recs)
        raise AssertionError("len(batch) out of step with the request")  # pragma: no cover

    def retain(self, keep: list[bool]) -> None:
        """Remove every record whose ``keep`` entry is False, from the request and from the
        side lists; empty scope and resource entries are removed too.

        keep: list[bool] aligned with ``records``. Raises ValueError on a length mismatch.
        """
        n = self._n
        if len(keep) != n:
            raise ValueError(f"keep mask has {len(keep)} entries for {n} records")
        if all(keep):
            return
        i = 0
        new_counts: list[int] = []
        counts = iter(self._scope_counts)
        for rl in self.request.resource_logs:
            for sl in rl.scope_logs:
                c = next(counts)
                kept = list(compress(range(c), keep[i:i + c]))
                if len(kept) < c:
                    # delete the runs between kept records, from the end (indices stay
                    # valid): one slice per run instead of one call per record
                    recs = sl.log_records
                    end = c
                    for k in reversed(kept):
                        if k + 1 < end:
                            del recs[k + 1:end]
                        end = k
                    if end > 0:
                        del recs[:end]
                new_counts.append(len(kept))
                i += c
        # Drop emptied containers (walk backwards for stable indices).
        rls = self.request.resource_logs
        for r in range(len(rls) - 1, -1, -1):
            sls = rls[r].scope_logs
            for s in range(len(sls) - 1, -1, -1):
                if len(sls[s].log_records) == 0:
                    del sls[s]
            if len(sls) == 0:
                del rls[r]
        self._scope_counts = [c for c in new_counts if c]
        self.dropped_pattern_ids.extend(compress(self.pattern_ids, map(not_, keep)))
        if self._records is not None:
            self._records = list(compress(self._records, keep))
        self._n = sum(new_counts)
        self.services = list(compress(self.services, keep))
        self.pattern_ids = list(compress(self.pattern_ids, keep))
        self.templates = list(compress(self.templates, keep))
        self.families = list(compress(self.families, keep))
        for col in ("bodies", "severity_numbers", "severity_texts", "trace_ids", "pending"):
            values = getattr(self, col)
            if values is not None:
                setattr(self, col, list(compress(values, keep)))

    def add_attributes(self, data: list[bytes]) -> None:
        """Append attributes to the records: ``data[i]`` is a serialized ``LogRecord`` that
        holds only the attributes for record i (b"" for none), so appending is one
        ``MergeFromString``. Written at once, or, on a batch made with
        ``defer_attributes=True`` (the pipeline's), kept in ``pending`` until
        :meth:`write_attributes`: records a later processor drops then never cost the
        write (~0.4 us per record in upb; most records are dropped by sampling).

        data: list[bytes] aligned with ``records``. Raises ValueError on a length mismatch.
        """
        n = self._n
        if len(data) != n:
            raise ValueError(f"{len(data)} attribute entries for {n} records")
        pending = self.pending
        if pending is None:
            for rec, d in zip(self.records, data, strict=True):
                if d:
                    rec.MergeFromString(d)
        elif any(pending):
            self.pending = list(map(bytes.__add__, pending, data))
        else:
            self.pending = list(data)

    def write_attributes(self) -> None:
        """Write the pending attributes (:meth:`add_attributes`) into the records; the
        pipeline calls it once the processors are done. No-op on a batch that does not
        defer."""
        pending = self.pending
        if pending is None or not any(pending):
            return
        for rec, d in zip(self.records, pending, strict=True):
            if d:
                rec.MergeFromString(d)
        self.pending = [b""] * self._n

    def compacted(self) -> ExportLogsServiceRequest:
        """The request to hand on once the processors are done: ``request`` itself, or,
        when at most three quarters of the records received are left, a copy of it. upb
        frees a message's memory only with the whole message, so a request that sits in an
        export queue would otherwise hold every record it was received with (~8x the memory
        after sampling). The copy costs ~0.6 us per record left."""
        if 4 * self._n > 3 * self.received:
            return self.request
        out = ExportLogsServiceRequest()
        out.CopyFrom(self.request)
        return out

    def append_resource_logs(self, resource_logs: ResourceLogs, pattern_ids: list[str],
                             templates: list[str]) -> None:
        """Add records a processor creates (for example the sampling processor's per-window
        summary records) at the end of the request, keeping the side lists aligned.

        resource_logs: copied into the request; pattern_ids/templates: one per record of
        ``resource_logs`` in order. Raises ValueError on a length mismatch.
        """
        added = self.request.resource_logs.add()
        added.CopyFrom(resource_logs)
        svc = service_name(added.resource)
        recs = [r for sl in added.scope_logs for r in sl.log_records]
        if len(pattern_ids) != len(recs) or len(templates) != len(recs):
            del self.request.resource_logs[-1]
            raise ValueError("pattern_ids/templates must have one entry per added record")
        self._scope_counts.extend(len(sl.log_records) for sl in added.scope_logs)
        if self._records is not None:
            self._records.extend(recs)
        self._n += len(recs)
        self.services.extend([svc] * len(recs))
        self.pattern_ids.extend(pattern_ids)
        self.templates.extend(templates)
        self.families.extend([""] * len(recs))
        if self.bodies is not None:
            self.bodies.extend(r.body.string_value for r in recs)
        if self.severity_numbers is not None:
            self.severity_numbers.extend(r.severity_number for r in recs)
        if self.severity_texts is not None:
            self.severity_texts.extend(r.severity_text for r in recs)
        if self.trace_ids is not None:
            self.trace_ids.extend(r.trace_id for r in recs)
        if self.pending is not None:
            self.pending.extend([b""] * len(recs))


class Processor(Protocol):
    """The processor contract (see module docstring)."""

    Config: ClassVar[type[BaseModel]]

    def process(self, batch: LogBatch) -> None: ...


def count_records(request: ExportLogsServiceRequest) -> int:
    """Number of log records in a request."""
    return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)


def iter_records(request: ExportLogsServiceRequest) -> Iterable[tuple[Resource, Any, LogRecord]]:
    """(resource, scope_logs, record) for every record, in order."""
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                yield rl.resource, sl, rec
