"""OTLP/HTTP logs receiver (aiohttp): ``POST /v1/logs`` on ``receivers.otlp.protocols.http``.

| request                                              | answer                                    |
|------------------------------------------------------|-------------------------------------------|
| ``application/x-protobuf`` (or ``application/protobuf``) / ``application/json`` | 200 ``ExportLogsServiceResponse`` in the same encoding; ``partial_success`` when records were rejected |
| ``Content-Encoding: gzip`` / ``deflate`` / identity  | decoded while reading                     |
| other Content-Encoding                               | 415                                       |
| body over ``max_request_body_size`` after decompression | 413, ``google.rpc.Status``             |
| undecodable body (malformed, truncated, invalid UTF-8, nested too deep) | 400, ``google.rpc.Status`` with the reason |
| sending queue full (``Refused``)                     | 429 + ``Retry-After`` (seconds), ``Status`` with ``RetryInfo`` |
| memory limit, storage failure, shutting down (``Refused(unavailable)``) | 503 + ``Retry-After``, ``Status`` (UNAVAILABLE) with ``RetryInfo`` |
| other Content-Type                                   | 415, text/plain                           |
| other method                                         | 405 + ``Allow: POST``, text/plain         |

Status bodies use the request's encoding (protobuf or JSON), as the OTLP specification
asks. Settings (``HttpServerConfig``): ``endpoint`` (default ``127.0.0.1:4318``),
``max_request_body_size`` (default 20 MiB, applied after decompression; the compressed
body is capped at the same size plus 64 KiB).

Metrics: ``otelcol_receiver_accepted_log_records``, ``otelcol_receiver_refused_log_records``
(by reason), ``lipservice_receiver_bad_requests`` (by reason), transport ``http``.
"""

from __future__ import annotations

import logging
import math
import os
import socket

from aiohttp import web

from collector import metrics
from collector.config import HttpServerConfig, split_host_port
from collector.pipeline import Refused
from collector.receivers import Consumer, ThrottledLog, codec
from processors.base import count_records

log = logging.getLogger("lipservice.receiver.http")

LOGS_PATH = "/v1/logs"
_CHUNK = 64 * 1024
_COMPRESSED_SLACK = 64 * 1024


async def _logs_only(request: web.Request) -> web.Response:
    """Apps that set OTEL_EXPORTER_OTLP_ENDPOINT send traces and metrics here too: say why
    they are not taken and what to do, instead of a bare 404."""
    return web.Response(status=404, text=(
        f"{request.path}: this sidecar receives OTLP logs only (POST {LOGS_PATH}). Point only "
        "the logs exporter here (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT), or turn the others off "
        "(OTEL_TRACES_EXPORTER=none, OTEL_METRICS_EXPORTER=none).\n"))


class OtlpHttpReceiver:
    """OTLP/HTTP receiver feeding ``pipeline.consume``.

    name: the receiver's YAML key (metric label); config: HttpServerConfig; pipeline: a
    Consumer. After ``start()``, ``port`` is the bound port (useful with port 0).
    """

    transport = "http"

    def __init__(self, name: str, config: HttpServerConfig, pipeline: Consumer) -> None:
        self.name = name
        self.config = config
        self.pipeline = pipeline
        self.limit = config.max_request_body_size
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._throttled = ThrottledLog(log)
        self._accepted = metrics.RECEIVER_ACCEPTED.labels(name, self.transport)

    async def start(self) -> None:
        """Bind and serve. Raises OSError naming the endpoint if it cannot bind."""
        try:
            host, port = split_host_port(self.config.endpoint)
        except ValueError as err:
            raise OSError(f"receiver {self.name} (OTLP/HTTP): {err}") from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.create_server((host, port), family=family, backlog=1024)
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise OSError(err.errno, f"receiver {self.name} (OTLP/HTTP) cannot listen on "
                                     f"{self.config.endpoint}: {reason}") from None
        app = web.Application()
        app.router.add_route("*", LOGS_PATH, self._handle)
        for other in ("/v1/traces", "/v1/metrics", "/v1development/profiles"):
            app.router.add_route("*", other, _logs_only)
        # auto_decompress=False: the body is decompressed here, under the size limit.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               auto_decompress=False, shutdown_timeout=5.0)
        await runner.setup()
        site = web.SockSite(runner, sock)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        self.port = sock.getsockname()[1]
        log.info("receiver %s: OTLP/HTTP listening on %s:%d%s", self.name, host, self.port,
                 LOGS_PATH)

    async def stop(self) -> None:
        """Stop accepting; requests in progress finish (up to 5 s)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------ request handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return self._plain(405, "method_not_allowed",
                               f"method {request.method} not allowed; "
                               f"send OTLP logs with POST {LOGS_PATH}", {"Allow": "POST"})
        ctype = request.content_type
        if ctype in codec.PROTOBUF_TYPES:
            as_json = False
        elif ctype == codec.JSON_TYPE:
            as_json = True
        else:
            return self._plain(415, "unsupported_media_type",
                               f"unsupported Content-Type {ctype!r}; use "
                               f"application/x-protobuf or application/json")
        try:
            decoder = codec.Decompressor(request.headers.get("Content-Encoding", ""),
                                         self.limit)
        except codec.UnsupportedEncoding as err:
            return self._status(415, "unsupported_encoding", str(err), ctype, as_json)
        try:
            body = await self._read(request, decoder)
            otlp = codec.decode_json(body) if as_json else codec.decode_protobuf(body)
        except codec.BodyTooLarge as err:
            return self._status(413, "too_large", str(err), ctype, as_json)
        except codec.DecodeError as err:
            return self._status(400, "malformed", str(err), ctype, as_json)
        except ConnectionError:  # the client went away mid-body; nothing was accepted
            return self._plain(400, "incomplete", "connection lost before the request "
                                                  "body was complete")

        n = count_records(otlp)
        try:
            raw = None if as_json else body
            accepted = self.pipeline.consume(otlp, len(body), raw) if n else 0
        except Refused as err:
            metrics.RECEIVER_REFUSED.labels(self.name, self.transport, err.reason).inc(n)
            self._throttled.warning(err.reason, "receiver %s: refused %d log records: %s",
                                    self.name, n, err)
            delay = max(1, math.ceil(err.retry_after))
            code, http = ((codec.UNAVAILABLE, 503) if err.unavailable
                          else (codec.RESOURCE_EXHAUSTED, 429))
            status = codec.make_status(code, f"{err}; retry after {delay}s", float(delay))
            return web.Response(status=http, body=codec.encode_status(status, as_json=as_json),
                                content_type=ctype, headers={"Retry-After": str(delay)})
        except Exception:  # noqa: BLE001 - a pipeline bug answers 500, the server lives on
            log.exception("receiver %s: pipeline failed on a request of %d log records",
                          self.name, n)
            metrics.RECEIVER_REFUSED.labels(self.name, self.transport, "internal_error").inc(n)
            status = codec.make_status(codec.INTERNAL, "internal error while accepting the "
                                                       "request; see the sidecar's log")
            return web.Response(status=500, body=codec.encode_status(status, as_json=as_json),
                                content_type=ctype)
        self._accepted.inc(accepted)
        rejected = n - accepted
        if rejected:
            metrics.RECEIVER_REFUSED.labels(self.name, self.transport, "rejected").inc(rejected)
        body_out = codec.encode_response(
            rejected, f"{rejected} log records rejected" if rejected else "", as_json=as_json)
        return web.Response(status=200, body=body_out, content_type=ctype)

    async def _read(self, request: web.Request, decoder: codec.Decompressor) -> bytes:
        """The request body through ``decoder``; the raw (compressed) bytes are capped too."""
        raw_limit = self.limit if decoder.encoding == "identity" else (
            self.limit + _COMPRESSED_SLACK)
        length = request.content_length
        if length is not None and length > raw_limit:
            raise codec.BodyTooLarge(self.limit, "request body (Content-Length)")
        raw = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            raw += len(chunk)
            if raw > raw_limit:
                raise codec.BodyTooLarge(self.limit, "request body" if decoder.encoding
                                         == "identity" else "compressed request body")
            decoder.feed(chunk)
        return decoder.finish()

    def _bad(self, reason: str, status: int, message: str) -> None:
        metrics.RECEIVER_REQUESTS_FAILED.labels(self.name, self.transport, reason).inc()
        self._throttled.warning(reason, "receiver %s: answered %d: %s", self.name, status,
                                message)

    def _plain(self, status: int, reason: str, message: str,
               headers: dict[str, str] | None = None) -> web.Response:
        self._bad(reason, status, message)
        return web.Response(status=status, text=message + "\n", headers=headers)

    def _status(self, status: int, reason: str, message: str, ctype: str,
                as_json: bool) -> web.Response:
        self._bad(reason, status, message)
        body = codec.encode_status(codec.make_status(codec.INVALID_ARGUMENT, message),
                                   as_json=as_json)
        return web.Response(status=status, body=body, content_type=ctype)

