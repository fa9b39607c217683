"""OTLP/gRPC logs receiver (grpc.aio): ``opentelemetry.proto.collector.logs.v1.LogsService/
Export`` on ``receivers.otlp.protocols.grpc``.

| request                                  | answer                                            |
|------------------------------------------|---------------------------------------------------|
| valid ExportLogsServiceRequest           | OK, ``ExportLogsServiceResponse`` (``partial_success`` when records were rejected) |
| undecodable (malformed, invalid UTF-8, nested too deep) | INVALID_ARGUMENT with the reason   |
| over ``max_recv_msg_size_mib`` (after gRPC decompression) | RESOURCE_EXHAUSTED (from gRPC itself) |
| sending queue full (``Refused``)         | RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` in ``grpc-status-details-bin``, so SDKs retry |
| memory limit, storage failure, shutting down (``Refused(unavailable)``) | UNAVAILABLE with a ``RetryInfo`` |

The request is taken as raw bytes and decoded here (not by the generated servicer), so a
malformed message gets INVALID_ARGUMENT with a reason instead of gRPC's generic INTERNAL.
gRPC's own message compression (gzip) is handled by gRPC. Settings (``GrpcServerConfig``):
``endpoint`` (default ``127.0.0.1:4317``), ``max_recv_msg_size_mib`` (default 16).

Metrics as for the HTTP receiver, with transport ``grpc``.
"""

from __future__ import annotations

import errno
import logging
import socket

import grpc
from grpc import aio

from collector import metrics
from collector.config import GrpcServerConfig, split_host_port
from collector.pipeline import Refused
from collector.receivers import Consumer, ThrottledLog, codec
from processors.base import count_records

log = logging.getLogger("lipservice.receiver.grpc")

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
GRPC_HINT = ("check that the client sends an ExportLogsServiceRequest to LogsService/Export, "
             "and names its compression in grpc-encoding")


class _LogsOnly(grpc.GenericRpcHandler):
    """Every method but LogsService/Export: UNIMPLEMENTED with what to do (apps that set
    OTEL_EXPORTER_OTLP_ENDPOINT send traces and metrics here too), not grpc's bare
    'Method not found!'."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method

        if method.startswith(f"/{SERVICE}/"):  # a typo of Export
            why = f"{method}: {SERVICE} has one method, Export"
        else:
            why = (f"{method}: this sidecar receives OTLP logs only ({SERVICE}/Export). Point "
                   "only the logs exporter here (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT), or turn "
                   "the others off (OTEL_TRACES_EXPORTER=none, OTEL_METRICS_EXPORTER=none).")

        async def unimplemented(_request: bytes, context: aio.ServicerContext) -> bytes:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, why)
            return b""  # not reached: abort raises

        return grpc.unary_unary_rpc_method_handler(unimplemented)


class OtlpGrpcReceiver:
    """OTLP/gRPC receiver feeding ``pipeline.consume``.

    name: the receiver's YAML key (metric label); config: GrpcServerConfig; pipeline: a
    Consumer. After ``start()``, ``port`` is the bound port (useful with port 0).
    """

    transport = "grpc"

    def __init__(self, name: str, config: GrpcServerConfig, pipeline: Consumer) -> None:
        self.name = name
        self.config = config
        self.pipeline = pipeline
        self.port: int | None = None
        self._server: aio.Server | None = None
        self._throttled = ThrottledLog(log)
        self._accepted = metrics.RECEIVER_ACCEPTED.labels(name, self.transport)

    async def start(self) -> None:
        """Bind and serve. Raises OSError naming the endpoint if it cannot bind."""
        where = f"receiver {self.name} (OTLP/gRPC) cannot listen on {self.config.endpoint}"
        try:
            host, port = split_host_port(self.config.endpoint)
        except ValueError as err:
            raise OSError(f"{where}: {err}") from None
        _check_free(host, port, where)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        server = aio.server(options=[
            ("grpc.max_receive_message_length", self.config.max_recv_msg_size_mib * 1024**2),
            # Without this, a second process could bind the same port and share traffic.
            ("grpc.so_reuseport", 0),
        ])
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._export)})
        server.add_generic_rpc_handlers((handler, _LogsOnly()))
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as err:
            raise OSError(errno.EADDRINUSE, f"{where}: {err}") from None
        if not bound:
            raise OSError(errno.EADDRINUSE, f"{where}: address in use or not available")
        await server.start()
        self._server = server
        self.port = bound
        log.info("receiver %s: OTLP/gRPC listening on %s", self.name,
                 address.rsplit(":", 1)[0] + f":{bound}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; RPCs in progress get ``grace`` seconds to finish."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)

    async def _export(self, body: bytes, context: aio.ServicerContext) -> bytes:
        try:
            request = codec.decode_protobuf(body, GRPC_HINT)
        except codec.DecodeError as err:
            metrics.RECEIVER_REQUESTS_FAILED.labels(self.name, self.transport,
                                                    "malformed").inc()
            self._throttled.warning("malformed", "receiver %s: INVALID_ARGUMENT: %s",
                                    self.name, err)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))  # raises
        n = count_records(request)
        refused: Refused | None = None
        try:
            accepted = self.pipeline.consume(request, len(body), body) if n else 0
        except Refused as err:
            refused = err
        except Exception:  # noqa: BLE001 - a pipeline bug answers INTERNAL, server lives on
            log.exception("receiver %s: pipeline failed on a request of %d log records",
                          self.name, n)
            metrics.RECEIVER_REFUSED.labels(self.name, self.transport, "internal_error").inc(n)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error while accepting "
                                                          "the request; see the sidecar's log")
        if refused is not None:
            metrics.RECEIVER_REFUSED.labels(self.name, self.transport, refused.reason).inc(n)
            self._throttled.warning(refused.reason, "receiver %s: refused %d log records: %s",
                                    self.name, n, refused)
            code, grpc_code = ((codec.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
                               if refused.unavailable else
                               (codec.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED))
            status = codec.make_status(code, str(refused), refused.retry_after)
            await context.abort(grpc_code, str(refused),
                                trailing_metadata=((STATUS_DETAILS_KEY,
                                                    status.SerializeToString()),))
        self._accepted.inc(accepted)
        rejected = n - accepted
        if rejected:
            metrics.RECEIVER_REFUSED.labels(self.name, self.transport, "rejected").inc(rejected)
        return codec.encode_response(
            rejected, f"{rejected} log records rejected" if rejected else "", as_json=False)


def _check_free(host: str, port: int, where: str) -> None:
    """Raise OSError if ``host:port`` cannot be bound. gRPC reports a failed bind only as a
    RuntimeError after logging from its C core; this names the cause first."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise OSError(err.errno, f"{where}: {err.strerror or err}") from None
