"""``otlphttp`` exporter: OTLP/HTTP to PostHog or any OTLP endpoint (aiohttp client).

| setting          | default  | meaning                                                     |
|------------------|----------|-------------------------------------------------------------|
| endpoint         | —        | base URL; ``/v1/logs`` is appended                          |
| logs_endpoint    | —        | full URL used as given (PostHog: ``https://us.i.posthog.com/i/v1/logs``) |
| headers          | {}       | sent with every request (e.g. ``Authorization: Bearer …``); never logged |
| compression      | gzip     | ``gzip`` or ``none``                                        |
| compression_params.level | 1 | gzip level 1 (fastest) .. 9 (smallest); see docs/BENCHMARKS.md |
| encoding         | proto    | ``proto`` (application/x-protobuf) or ``json``              |
| timeout          | 10s      | per request, connect to last byte                           |
| retry_on_failure, sending_queue | | handled by ``collector/queue.py``                   |

Outcome of one request (the queue retries; see collector/exporters/base.py):

- 2xx: success. The body is an ``ExportLogsServiceResponse`` in protobuf or JSON; PostHog
  answers ``{}`` in JSON even to protobuf requests, so JSON is accepted whatever was sent.
  Returns ``partial_success.rejected_log_records`` (0 when absent or unparseable).
- 429, 502, 503, 504: retryable, with ``Retry-After`` (seconds or an HTTP date) honoured.
- 413: ``ExportError(too_large=True)``: the queue splits the batch.
- other statuses: permanent, with the backend's message (from a ``google.rpc.Status`` body
  when there is one), truncated, header values redacted.
- connection errors and timeouts: retryable.

The request is serialised and compressed once: a retry of the same request (the queue calls
``export`` again with the same object) sends the bytes kept from the first attempt. Bodies
over 64 KiB are gzipped on a worker thread (zlib releases the GIL), so the event loop keeps
serving receivers meanwhile and the compression can use another core.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
import zlib
from collections import OrderedDict
from datetime import UTC
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import aiohttp
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.config import OtlpHttpExporterConfig
from collector.exporters.base import ExportError, merge_requests
from collector.exporters.redact import Redactor, safe_url
from collector.receivers import codec

log = logging.getLogger("lipservice.exporter.otlphttp")

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_GZIP_IN_THREAD = 64 * 1024
_KEPT_FOR_RETRY = 64  # most request bodies kept for retries
_MAX_RESPONSE = 1024 * 1024


def user_agent() -> str:
    try:
        return f"lipservice/{version('lipservice')}"
    except PackageNotFoundError:
        return "lipservice"


def gzip_bytes(data: bytes, level: int = 1) -> bytes:
    """gzip (RFC 1952) of ``data`` at zlib ``level``."""
    z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds (``"120"``) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, epoch seconds).
    None when absent or unparseable; never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OtlpHttpExporter:
    """Sends each ExportLogsServiceRequest as one HTTP POST.

    name: the YAML key (``otlphttp/posthog``); config: OtlpHttpExporterConfig. Raises
    ValueError at construction when neither ``endpoint`` nor ``logs_endpoint`` is set.
    """

    def __init__(self, name: str, config: OtlpHttpExporterConfig) -> None:
        self.name = name
        self.config = config
        try:
            self.url = config.url()
        except ValueError as err:
            raise ValueError(f"exporter {name}: {err}") from None
        self.display_url = safe_url(self.url)
        self.redactor = Redactor(config.headers)
        self.as_json = config.encoding == "json"
        self.gzip = config.compression == "gzip"
        self.level = config.compression_params.level
        # id(request) -> (request, body) for requests whose last attempt failed retryably;
        # the request is held so its id cannot be reused meanwhile.
        self._retry_bodies: OrderedDict[tuple[int, ...], tuple[list[ExportLogsServiceRequest], bytes]] = \
            OrderedDict()
        headers = dict(config.headers)
        headers["Content-Type"] = codec.JSON_TYPE if self.as_json else "application/x-protobuf"
        headers["User-Agent"] = user_agent()
        if self.gzip:
            headers["Content-Encoding"] = "gzip"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers=self._headers)

    async def shutdown(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def export(self, request: ExportLogsServiceRequest) -> int:
        """POST one request; returns the number of records the backend rejected.
        Raises ExportError (see the module docstring for the classification)."""
        return await self.export_parts([request])

    async def export_parts(self, parts: list[ExportLogsServiceRequest]) -> int:
        """POST the records of several requests as one request (the queue's batches).
        Protobuf: the parts' serializations are concatenated, which protobuf reads as
        one merged message, so batching costs no copy. Returns and raises as export()."""
        if self._session is None:
            raise ExportError(f"exporter {self.name}: not started", retryable=False)
        key = tuple(id(p) for p in parts)
        kept = self._retry_bodies.pop(key, None)
        if kept is not None and all(a is b for a, b in zip(kept[0], parts, strict=True)):
            body = kept[1]
        else:
            body = await self._encode(parts)
        try:
            return await self._post(body)
        except ExportError as err:
            if err.retryable:  # the queue retries the same parts: reuse the encoded body
                self._retry_bodies[key] = (list(parts), body)
                while len(self._retry_bodies) > _KEPT_FOR_RETRY:
                    self._retry_bodies.popitem(last=False)
            raise

    async def _encode(self, parts: list[ExportLogsServiceRequest]) -> bytes:
        if self.as_json:
            body = codec.encode_json(merge_requests(parts)).encode()
        else:
            body = b"".join(p.SerializeToString() for p in parts)
        if self.gzip:
            if len(body) > _GZIP_IN_THREAD:
                body = await asyncio.to_thread(gzip_bytes, body, self.level)
            else:
                body = gzip_bytes(body, self.level)
        return body

    async def _post(self, body: bytes) -> int:
        try:
            async with self._session.post(self.url, data=body) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                ctype = resp.content_type
                payload = await resp.content.read(_MAX_RESPONSE)
        except TimeoutError:
            raise ExportError(f"exporter {self.name}: no answer from {self.display_url} "
                              f"within {self.config.timeout:g}s", retryable=True) from None
        except aiohttp.ClientError as err:
            raise ExportError(f"exporter {self.name}: cannot send to {self.display_url}: "
                              f"{self.redactor.clean(_describe(err))}", retryable=True) from None

        if 200 <= status < 300:
            return self._partial_success(payload, ctype)
        message = (f"exporter {self.name}: {self.display_url} answered HTTP {status}: "
                   f"{self._backend_message(payload, ctype) or '(no message)'}")
        if status == 413:
            raise ExportError(message, retryable=False, too_large=True)
        if status in RETRYABLE_STATUSES:
            raise ExportError(message, retryable=True,
                              retry_after=parse_retry_after(retry_after))
        raise ExportError(message, retryable=False)

    def _partial_success(self, payload: bytes, ctype: str) -> int:
        if not payload.strip():
            return 0
        rejected, message = 0, ""
        try:
            if ctype == codec.JSON_TYPE or payload.lstrip()[:1] == b"{":
                doc = json.loads(payload)
                ps: Any = {}
                if isinstance(doc, dict):
                    ps = doc.get("partialSuccess") or doc.get("partial_success") or {}
                rejected = int(ps.get("rejectedLogRecords") or ps.get("rejected_log_records")
                               or 0)
                message = str(ps.get("errorMessage") or ps.get("error_message") or "")
            else:
                resp = ExportLogsServiceResponse.FromString(payload)
                rejected = resp.partial_success.rejected_log_records
                message = resp.partial_success.error_message
        except (ValueError, TypeError, AttributeError, DecodeError, RecursionError) as err:
            log.debug("exporter %s: success answer not understood (%s); counting all "
                      "records as accepted", self.name, type(err).__name__)
            return 0
        if rejected or message:
            log.warning("exporter %s: backend rejected %d log records: %s", self.name,
                        rejected, self.redactor.clean(message) or "(no message)")
        return max(0, rejected)

    def _backend_message(self, payload: bytes, ctype: str) -> str:
        """The message of a google.rpc.Status body (protobuf or JSON), else the body text;
        redacted and truncated."""
        text = ""
        try:
            if ctype == codec.JSON_TYPE or payload.lstrip()[:1] in (b"{", b"["):
                doc = json.loads(payload)
                if isinstance(doc, dict):
                    text = str(doc.get("message") or doc.get("error") or doc.get("detail")
                               or json.dumps(doc))
                else:
                    text = json.dumps(doc)
            elif ctype in codec.PROTOBUF_TYPES:
                text = status_pb2.Status.FromString(payload).message
        except (ValueError, TypeError, DecodeError, RecursionError):
            text = ""
        if not text:
            text = payload.decode("utf-8", errors="replace")
        return self.redactor.clean(text)


def _describe(err: BaseException) -> str:
    """A short text for a client error, without the request URL's query (aiohttp puts the
    URL in some messages)."""
    text = str(err) or type(err).__name__
    url = getattr(err, "url", None) or getattr(getattr(err, "request_info", None), "url", None)
    if url is not None:
        text = text.replace(str(url), safe_url(str(url)))
    return f"{type(err).__name__}: {text}"
