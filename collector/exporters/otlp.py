"""``otlp`` exporter: OTLP/gRPC (grpc.aio) to any OTLP endpoint.

| setting          | default  | meaning                                                     |
|------------------|----------|-------------------------------------------------------------|
| endpoint         | —        | ``host:port``, ``http://host:port`` (plaintext) or ``https://host:port`` (TLS) |
| tls.insecure     | false    | plaintext for a ``host:port`` endpoint (as in the Collector) |
| tls.ca_file      | —        | PEM roots for TLS; default the system roots                 |
| headers          | {}       | sent as gRPC metadata (names lowercased); never logged      |
| compression      | gzip     | ``gzip`` or ``none``                                        |
| timeout          | 10s      | deadline per call                                           |

Outcome of one call, by status code (OTLP specification, "OTLP/gRPC Throttling/Failures"):
retryable: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and
RESOURCE_EXHAUSTED only when the server sent a ``google.rpc.RetryInfo`` (its delay is
honoured); RESOURCE_EXHAUSTED for a message over the size limit becomes
``ExportError(too_large=True)`` so the queue splits the batch; every other code is permanent.
gRPC's own retries are disabled: retrying is the queue's job.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from google.rpc import status_pb2
from grpc import aio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.config import OtlpGrpcExporterConfig
from collector.exporters.base import ExportError
from collector.exporters.redact import Redactor
from collector.receivers import codec

log = logging.getLogger("lipservice.exporter.otlp")

EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

RETRYABLE_CODES = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})


def parse_target(endpoint: str, insecure: bool) -> tuple[str, bool]:
    """(gRPC target ``host:port``, use TLS) from the ``endpoint`` setting."""
    if endpoint.startswith("http://"):
        return endpoint.removeprefix("http://").rstrip("/"), False
    if endpoint.startswith("https://"):
        return endpoint.removeprefix("https://").rstrip("/"), True
    return endpoint, not insecure


def retry_info_delay(metadata: aio.Metadata | None) -> float | None:
    """Seconds from a RetryInfo in the ``grpc-status-details-bin`` trailer, or None."""
    if not metadata:
        return None
    for key, value in metadata:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return codec.retry_delay(status_pb2.Status.FromString(value))
            except Exception:  # noqa: BLE001 - a garbled trailer means no hint
                return None
    return None


class OtlpGrpcExporter:
    """Sends each ExportLogsServiceRequest as one gRPC ``Export`` call.

    name: the YAML key; config: OtlpGrpcExporterConfig. ``start()`` raises OSError when
    ``tls.ca_file`` cannot be read.
    """

    def __init__(self, name: str, config: OtlpGrpcExporterConfig) -> None:
        self.name = name
        self.config = config
        self.target, self.tls = parse_target(config.endpoint, config.tls.insecure)
        self.redactor = Redactor(config.headers)
        self.metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self.compression = (grpc.Compression.Gzip if config.compression == "gzip"
                            else grpc.Compression.NoCompression)
        self._channel: aio.Channel | None = None
        self._call: aio.UnaryUnaryMultiCallable | None = None

    async def start(self) -> None:
        options = [("grpc.enable_retries", 0), ("grpc.max_send_message_length", -1),
                   ("grpc.max_receive_message_length", 4 * 1024**2)]
        if self.tls:
            roots = None
            if self.config.tls.ca_file:
                try:
                    roots = Path(self.config.tls.ca_file).read_bytes()
                except OSError as err:
                    raise OSError(err.errno, f"exporter {self.name}: cannot read tls.ca_file "
                                             f"{self.config.tls.ca_file}: {err.strerror}") from None
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
            channel = aio.secure_channel(self.target, creds, options=options,
                                         compression=self.compression)
        else:
            channel = aio.insecure_channel(self.target, options=options,
                                           compression=self.compression)
        self._channel = channel
        # Requests go out as bytes: a batch of several requests is their serializations
        # concatenated, which protobuf reads as one merged message (no copy of records).
        self._call = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None,
            response_deserializer=ExportLogsServiceResponse.FromString)

    async def shutdown(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def export(self, request: ExportLogsServiceRequest) -> int:
        """One Export call; returns the number of records the backend rejected.
        Raises ExportError classified as in the module docstring."""
        return await self.export_parts([request])

    async def export_parts(self, parts: list[ExportLogsServiceRequest]) -> int:
        """One Export call carrying the records of several requests (the queue's
        batches); returns and raises as export()."""
        if self._call is None:
            raise ExportError(f"exporter {self.name}: not started", retryable=False)
        body = b"".join(p.SerializeToString() for p in parts)
        try:
            resp = await self._call(body, metadata=self.metadata,
                                    timeout=self.config.timeout)
        except aio.AioRpcError as err:
            raise self._error(err) from None
        except grpc.RpcError as err:  # not an AioRpcError: no code; treat as transient
            raise ExportError(f"exporter {self.name}: gRPC call to {self.target} failed: "
                              f"{self.redactor.clean(str(err))}", retryable=True) from None
        ps = resp.partial_success
        if ps.rejected_log_records or ps.error_message:
            log.warning("exporter %s: backend rejected %d log records: %s", self.name,
                        ps.rejected_log_records,
                        self.redactor.clean(ps.error_message) or "(no message)")
        return max(0, ps.rejected_log_records)

    def _error(self, err: aio.AioRpcError) -> ExportError:
        code = err.code()
        details = self.redactor.clean(err.details() or "") or "(no message)"
        message = f"exporter {self.name}: {self.target} answered gRPC {code.name}: {details}"
        delay = retry_info_delay(err.trailing_metadata())
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if delay is not None:
                return ExportError(message, retryable=True, retry_after=delay)
            if "larger than max" in details:
                return ExportError(message, retryable=False, too_large=True)
            return ExportError(message, retryable=False)
        return ExportError(message, retryable=code in RETRYABLE_CODES, retry_after=delay)
