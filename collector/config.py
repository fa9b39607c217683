"""The sidecar's YAML configuration, in the OpenTelemetry Collector's shape.

Shape (DESIGN.md §Config)::

    receivers:  {otlp: {protocols: {grpc: {endpoint}, http: {endpoint}}}}
    processors: {signature: {...}, sampling: {...}}          # keys are type[/name]
    exporters:  {otlphttp/posthog: {endpoint, headers, ...}, file: {path}, debug: {}}
    extensions: {control: {interval, llm: {...}, ...}}       # enabled by service.extensions
    service:
      extensions: [control]
      pipelines: {logs: {receivers: [...], processors: [...], exporters: [...]}}
      telemetry: {metrics: {address}, logs: {level, encoding}}
    storage:    {directory: ./data}

Loading rules:

- ``${env:NAME}`` and ``${env:NAME:-default}`` are expanded in every string value (after
  YAML parsing, as the Collector does); ``$$`` is a literal ``$``. An unset variable without
  a default expands to the empty string.
- ``--set key.path=value`` overrides are applied after expansion; ``value`` is parsed as a
  YAML scalar. The path separator is ``.``, or ``::`` when the path contains it (for keys
  that themselves contain dots).
- Component keys are ``type`` or ``type/name``; the type picks the config model.
- Unknown keys and wrong types raise :class:`ConfigError` naming each key's full path.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

DEFAULT_CONFIG_NAME = "default.yaml"
SECRET_VALUE_ERROR = "secret_value"
"""pydantic error type of a check on a value that may hold a secret: the error message
does not repeat the value."""


class ConfigError(Exception):
    """The configuration cannot be used. ``str(err)`` is one line per problem, each naming
    the key's full dotted path and what was expected."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds (float) from a Collector-style duration: ``"5s"``, ``"250ms"``, ``"1m"``,
    ``"1h"``, or a bare number of seconds. Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '5s', '250ms' or '1m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2) or "s"]
        if _DURATION.match(value.strip().removeprefix("-")):
            raise ValueError(f"a duration cannot be negative, got {value!r}")
    raise ValueError(f"expected a duration such as '5s', '250ms' or '1m', got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds (float); accepts '5s', '250ms', '1m', '1h' or a number."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
               "gb": 1000**3, "gib": 1024**3}


def parse_size(value: Any) -> int:
    """Bytes (int) from ``"20MiB"``, ``"512KB"``, ``"1GiB"`` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '20MiB' or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _UNIT_BYTES[(m.group(2) or "b").lower()])
    raise ValueError(f"expected a size such as '20MiB' or a number of bytes, got {value!r}")


ByteSize = Annotated[int, BeforeValidator(parse_size)]
"""A size in bytes (int); accepts '20MiB', '512KB', '1GiB' or a number."""

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _clean_headers(headers: dict[str, str]) -> dict[str, str]:
    """Header values without surrounding whitespace: a Kubernetes secret or a file read
    into ``${env:…}`` often ends in a newline, which no HTTP or gRPC client can send (every
    export would fail). Raises for an invalid name, or a control character left inside a
    value (the message names the header, never the value: it may be a secret)."""
    out = {}
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise PydanticCustomError(SECRET_VALUE_ERROR, "header name {name} is not a valid "
                                      "HTTP header name", {"name": repr(name)[:80]})
        value = value.strip()
        if _CONTROL.search(value):
            raise PydanticCustomError(SECRET_VALUE_ERROR, "the value of header {name} holds a "
                                      "control character (a line break?); it cannot be sent",
                                      {"name": repr(name)})
        out[name] = value
    return out


_HTTP_OWN = frozenset({"content-length", "content-type", "content-encoding", "user-agent",
                       "transfer-encoding", "connection"})


def _http_headers(headers: dict[str, str]) -> dict[str, str]:
    for name in headers:
        if name.lower() in _HTTP_OWN:
            raise PydanticCustomError(SECRET_VALUE_ERROR, "header {name} is set by the "
                                      "exporter itself", {"name": repr(name)})
    return headers


_GRPC_KEY = re.compile(r"^[0-9a-z_.\-]+$")


def _grpc_metadata(headers: dict[str, str]) -> dict[str, str]:
    """gRPC metadata: keys of ``0-9 a-z - _ .`` (any case: they are sent lowercased),
    printable ASCII values; no ``-bin`` (binary) or reserved keys."""
    for name, value in headers.items():
        key = name.lower()
        if not _GRPC_KEY.match(key):
            raise PydanticCustomError(SECRET_VALUE_ERROR, "header {name}: gRPC metadata keys "
                                      "hold only letters, digits, '-', '_' and '.'",
                                      {"name": repr(name)})
        if key.endswith("-bin") or key.startswith("grpc-") or key in ("te", "content-type",
                                                                      "user-agent"):
            raise PydanticCustomError(SECRET_VALUE_ERROR, "header {name} cannot be set as "
                                      "gRPC metadata here (binary -bin keys and keys gRPC "
                                      "sets itself)", {"name": repr(name)})
        if not (value.isascii() and value.isprintable()):
            raise PydanticCustomError(SECRET_VALUE_ERROR, "the value of header {name} must "
                                      "be printable ASCII to go in gRPC metadata",
                                      {"name": repr(name)})
    return headers


Headers = Annotated[dict[str, str], AfterValidator(_clean_headers),
                    AfterValidator(_http_headers)]
"""HTTP headers (name → value), values stripped and checked (_clean_headers)."""

GrpcHeaders = Annotated[dict[str, str], AfterValidator(_clean_headers),
                        AfterValidator(_grpc_metadata)]
"""gRPC metadata (name → value), checked as headers and as gRPC requires."""


_GRPC_NAME_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


def _check_grpc_target(endpoint: str) -> str:
    """The otlp exporter's target: ``host:port``, ``http://host[:port]`` (plaintext),
    ``https://host[:port]`` (TLS; no port = gRPC's default), or a gRPC name
    (``dns:///host:port``, ``unix:///path``) passed on as given. No path and no
    user:password@ (gRPC has no place for them)."""
    endpoint = endpoint.strip()
    if endpoint.startswith(_GRPC_NAME_SCHEMES):
        return endpoint
    rest, with_scheme = endpoint, False
    for scheme in ("http://", "https://"):  # as collector/exporters/otlp.py parse_target
        if endpoint.startswith(scheme):
            rest, with_scheme = endpoint[len(scheme):].rstrip("/"), True
    problem = None
    if "://" in rest or "/" in rest or "@" in rest or not rest:
        problem = ("expected host:port, http(s)://host[:port] or a gRPC name such as "
                   "dns:///host:port (no path, no user:password@; schemes in lower case)")
    else:
        if with_scheme and ":" not in rest.rpartition("]")[2]:
            rest += ":1"  # no port after a scheme: gRPC's default; check the host alone
        try:
            _, port = split_host_port(rest)
            if not rest.rpartition(":")[0].strip("[]"):
                problem = "expected a host before the port"
            elif port == 0:
                problem = "expected a port from 1 to 65535 after the host"
        except ValueError as err:
            problem = str(err).split(": ", 1)[1]  # without the value: it is not echoed
    if problem is not None:
        raise PydanticCustomError(SECRET_VALUE_ERROR, problem)
    return endpoint


def _check_http_url(url: str | None) -> str | None:
    """An http(s) URL with a host and a valid port, as the exporters need; surrounding
    whitespace is removed (a secret file's final newline) and ``""`` means unset (an
    ``${env:X:-}`` left empty). Messages show the URL without credentials (safe_url)."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            problem = "expected an http:// or https:// URL with a host"
        elif "//" in parts.path:
            problem = "the path holds '//' (a base URL that ends in '/', such as POSTHOG_HOST?)"
        elif not url.isprintable() or " " in url:
            problem = "the URL holds a space or a control character"
    except ValueError as err:
        problem = f"not a valid URL ({err})"
    if problem is not None:
        from collector.exporters.redact import safe_url  # here: exporters import this module
        raise PydanticCustomError(SECRET_VALUE_ERROR, "{problem}, such as "
                                  "https://host:port/path (got {shown})",
                                  {"problem": problem, "shown": repr(safe_url(url))[:200]})
    return url


HttpUrl = Annotated[str | None, AfterValidator(_check_http_url)]
"""An ``http://`` or ``https://`` URL with a host (_check_http_url); ``""`` is None."""


def split_host_port(endpoint: str) -> tuple[str, int]:
    """``"127.0.0.1:4318"`` → ("127.0.0.1", 4318); ``":4318"`` → ("0.0.0.0", 4318), as the
    Collector reads an empty host; ``"[::1]:4318"`` → ("::1", 4318). Port 0 asks the OS
    for a free port. Raises ValueError naming the endpoint when the port is missing, not a
    number or out of range, or an IPv6 host is not in brackets."""
    host, sep, port = endpoint.strip().rpartition(":")
    if not sep:
        raise ValueError(f"endpoint {endpoint!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"endpoint {endpoint!r}: an IPv6 address goes in brackets "
                         f"([::]:4317, [::1]:4317)")
    try:
        port_no = int(port)
    except ValueError:
        raise ValueError(f"endpoint {endpoint!r}: port {port!r} is not a number") from None
    if not 0 <= port_no <= 65535:
        raise ValueError(f"endpoint {endpoint!r}: port {port_no} is out of range")
    return (host or "0.0.0.0"), port_no


def _check_endpoint(value: str) -> str:
    if "://" in value:
        raise ValueError(f"endpoint {value!r}: expected host:port to listen on, without a "
                         f"scheme (such as 127.0.0.1:4318)")
    split_host_port(value)
    return value


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]
"""``host:port`` to listen on; checked when the config loads, so ``validate`` catches what
``run`` would refuse."""


def not_boolean(value: Any) -> Any:
    """Before-validator for a number inside a container (a dict of rates): rejects a
    boolean, which pydantic would take as 1."""
    if type(value) is bool:
        raise PydanticCustomError("number_not_boolean", "expected a number, not a boolean")
    return value


class NumbersNotBooleans(BaseModel):
    """Mixin for models read from people: a boolean where a number is expected is an error
    (pydantic's lax mode would take ``cache_size: true`` as 1 and ``global_rate: true`` as
    1.0); numbers given as strings (``${env:…}``) still load."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name in _numeric_fields(cls):
            return not_boolean(value)
        return value


class StrictModel(NumbersNotBooleans):
    """Base for every config model: unknown keys are errors, and so is a boolean where a
    number is expected."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


_NUMERIC_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the fields of ``model`` typed int or float (alone or in a union without
    bool), cached per model."""
    names = _NUMERIC_FIELDS.get(model)
    if names is None:
        names = _NUMERIC_FIELDS[model] = frozenset(
            name for name, f in model.model_fields.items()
            if bool not in (types := set(get_args(f.annotation)) or {f.annotation})
            and types & {int, float})
    return names


# --------------------------------------------------------------------------- receivers


class GrpcServerConfig(StrictModel):
    endpoint: Endpoint = "127.0.0.1:4317"
    max_recv_msg_size_mib: int = Field(16, gt=0, le=2047, description="largest accepted "
                                       "request, MiB (gRPC's limit is under 2 GiB)")


class HttpServerConfig(StrictModel):
    endpoint: Endpoint = "127.0.0.1:4318"
    max_request_body_size: ByteSize = Field(
        20 * 1024**2, ge=1, description="largest request body after decompression (bytes); "
                                        "413 above")


class OtlpProtocols(StrictModel):
    """A protocol is enabled when its key is present; ``grpc:`` with no value (YAML null)
    enables it with defaults, as in the Collector."""

    grpc: GrpcServerConfig | None = None
    http: HttpServerConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _present_means_enabled(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: ({} if v is None and k in ("grpc", "http") else v)
                    for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _at_least_one(self) -> OtlpProtocols:
        if self.grpc is None and self.http is None:
            raise ValueError("enable at least one protocol: `grpc:` and/or `http:`")
        return self


class OtlpReceiverConfig(StrictModel):
    """``receivers: otlp:``; a protocol key present with an empty value uses its defaults."""

    protocols: OtlpProtocols


RECEIVER_TYPES: dict[str, type[StrictModel]] = {"otlp": OtlpReceiverConfig}


# --------------------------------------------------------------------------- exporters


class RetryConfig(StrictModel):
    """``retry_on_failure``: exponential backoff with jitter (names from the Collector's
    exporterhelper). Delays in seconds."""

    enabled: bool = True
    initial_interval: Duration = 5.0
    randomization_factor: float = Field(0.5, ge=0, le=1)
    multiplier: float = Field(1.5, ge=1)
    max_interval: Duration = 30.0
    max_elapsed_time: Duration = Field(300.0, description="give up after this long; 0 = never")


class BatchConfig(StrictModel):
    """``sending_queue.batch``: coalesce small requests before export (names from the
    Collector's exporterhelper; ``min_size``/``max_size`` play the batch processor's
    ``send_batch_size``/``send_batch_max_size``). Sizes in log records.

    flush_timeout defaults to 10ms, not the Collector's 200ms: after sampling a request
    leaves ~10% of its records, so min_size is rarely reached and every record would wait
    the whole timeout (p99 added latency 232 ms at half load with 200ms, 37 ms with 10ms;
    docs/BENCHMARKS.md §End-to-end performance). Raise it for fewer, larger requests."""

    enabled: bool = True
    flush_timeout: Duration = Field(
        0.01, gt=0, description="longest wait for min_size (10ms: docs/performance.md)")
    min_size: int = Field(8192, ge=0, description="send as soon as this many are queued")
    max_size: int = Field(16384, ge=0, description="largest export request; 0 = no limit")

    @model_validator(mode="after")
    def _max_not_below_min(self) -> BatchConfig:
        if self.max_size and self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be 0 or >= min_size "
                             f"({self.min_size})")
        return self


class SendingQueueConfig(StrictModel):
    """``sending_queue``: the bounded queue between the pipeline and one exporter
    (collector/queue.py; user docs in docs/delivery.md).

    storage: None/false = in memory; true = SQLite file ``<storage.directory>/queue-
    <exporter>.db``; a bare file name = that file under ``storage.directory``; a path
    (containing ``/``) = that file as given.
    """

    enabled: bool = True
    num_consumers: int = Field(4, ge=1)
    queue_size: int = Field(100_000, ge=1, description="capacity in log records")
    queue_size_bytes: ByteSize = Field(
        64 * 1024**2, description="capacity in bytes of serialized OTLP; 0 = no byte limit")
    batch: BatchConfig = Field(default_factory=BatchConfig)
    storage: bool | str | None = Field(
        None, description="persistent queue (SQLite); None/false = memory only")

    @model_validator(mode="after")
    def _storage_name(self) -> SendingQueueConfig:
        if isinstance(self.storage, str):
            word = self.storage.strip().lower()
            if word in ("true", "false"):  # e.g. from ${env:QUEUE_STORAGE:-true}
                self.storage = word == "true"
            elif not word:
                raise ValueError("storage: expected true, false, a file name or a path")
        return self


class _ExporterCommon(StrictModel):
    timeout: Duration = 10.0
    retry_on_failure: RetryConfig = Field(default_factory=RetryConfig)
    sending_queue: SendingQueueConfig = Field(default_factory=SendingQueueConfig)


class CompressionParams(StrictModel):
    """``compression_params`` (the Collector's confighttp name): the gzip level, 1 (fastest)
    to 9 (smallest). Measured on Loghub batches (docs/BENCHMARKS.md, End-to-end
    performance): level 6 costs ~2.6x the CPU of level 1 for ~13% fewer bytes."""

    level: int = Field(1, ge=1, le=9, description="gzip level (1 fastest .. 9 smallest)")


class OtlpHttpExporterConfig(_ExporterCommon):
    """``exporters: otlphttp``: OTLP/HTTP protobuf. ``endpoint`` is a base URL to which
    ``/v1/logs`` is appended; ``logs_endpoint`` is used as given (PostHog:
    ``https://us.i.posthog.com/i/v1/logs``)."""

    endpoint: HttpUrl | None = None
    logs_endpoint: HttpUrl | None = None
    headers: Headers = Field(default_factory=dict)
    compression: Literal["gzip", "none", ""] = "gzip"
    compression_params: CompressionParams = Field(default_factory=CompressionParams)
    encoding: Literal["proto", "json"] = "proto"

    def url(self) -> str:
        if self.logs_endpoint:
            return self.logs_endpoint
        if not self.endpoint:
            raise ValueError("otlphttp needs `endpoint` or `logs_endpoint`")
        parts = urlsplit(self.endpoint)  # /v1/logs goes on the path, before any ?query
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/v1/logs"))


class TlsClientConfig(StrictModel):
    insecure: bool = False
    ca_file: str | None = None


class OtlpGrpcExporterConfig(_ExporterCommon):
    """``exporters: otlp``: OTLP/gRPC to ``host:port`` (or ``http(s)://host:port``)."""

    endpoint: Annotated[str, AfterValidator(_check_grpc_target)]
    headers: GrpcHeaders = Field(default_factory=dict)
    compression: Literal["gzip", "none", ""] = "gzip"
    tls: TlsClientConfig = Field(default_factory=TlsClientConfig)


class FileExporterConfig(StrictModel):
    """``exporters: file``: one OTLP JSON ExportLogsServiceRequest per line."""

    path: str
    flush_interval: Duration = 1.0
    retry_on_failure: RetryConfig = Field(default_factory=RetryConfig)
    sending_queue: SendingQueueConfig = Field(default_factory=SendingQueueConfig)


class DebugExporterConfig(StrictModel):
    """``exporters: debug``: one summary line per batch on stderr."""

    verbosity: Literal["basic", "normal", "detailed"] = "basic"
    sending_queue: SendingQueueConfig = Field(default_factory=SendingQueueConfig)


EXPORTER_TYPES: dict[str, type[StrictModel]] = {
    "otlphttp": OtlpHttpExporterConfig,
    "otlp": OtlpGrpcExporterConfig,
    "file": FileExporterConfig,
    "debug": DebugExporterConfig,
}


# --------------------------------------------------------------------------- service


class LogsPipelineConfig(StrictModel):
    receivers: list[str]
    processors: list[str] = Field(default_factory=list)
    exporters: list[str]


class PipelinesConfig(StrictModel):
    logs: LogsPipelineConfig


class MetricsTelemetryConfig(StrictModel):
    address: Endpoint = "127.0.0.1:8888"


class LogsTelemetryConfig(StrictModel):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    encoding: Literal["console", "json"] = "console"


class TelemetryConfig(StrictModel):
    metrics: MetricsTelemetryConfig = Field(default_factory=MetricsTelemetryConfig)
    logs: LogsTelemetryConfig = Field(default_factory=LogsTelemetryConfig)


class ServiceConfig(StrictModel):
    extensions: list[str] = Field(default_factory=list)
    pipelines: PipelinesConfig
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    shutdown_timeout: Duration = Field(10.0, description="seconds to flush on SIGTERM")


class RedisStorageConfig(StrictModel):
    """``storage.redis:``: tuning of the shared state (collector/shared/, docs/scale.md)."""

    namespace: str = Field("lipservice", min_length=1, max_length=100, pattern=r"^[\w.:-]+$",
                           description="key prefix; replicas sharing it share policies, "
                           "statistics, templates and one lease")
    lease_ttl: Duration = Field(15.0, ge=1.0, description="leader lease; renewed every third")
    sync_interval: Duration = Field(5.0, gt=0, description="stats push, template share, "
                                    "policy version check")
    stats_window: Duration = Field(60.0, ge=1.0, description="bucket of shared statistics")
    timeout: Duration = Field(2.0, gt=0, description="connect and command timeout")
    max_templates: int = Field(100_000, ge=1, description="entries of the shared template "
                               "registry")


class StorageConfig(StrictModel):
    """``storage:``: local state (SQLite file: miner snapshot, policies, persistent queue)
    and, with ``backend: redis``, the state shared by replicas (docs/scale.md).

    redis_url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
    ``unix://path``; usually ``${env:LIPSERVICE_REDIS_URL}`` from a secret. Required (non
    empty) when the backend is ``redis``: an empty or unparsable one is a config error that
    never shows the value.
    """

    directory: str = "./data"
    fsync: bool = Field(False, description="persistent queues fsync every commit "
                                           "(survive power loss, not only a process crash)")
    backend: Literal["local", "redis"] = "local"
    redis_url: str | None = None
    redis: RedisStorageConfig = Field(default_factory=RedisStorageConfig)

    @field_validator("redis_url")
    @classmethod
    def _url_scheme(cls, url: str | None) -> str | None:
        if not url:
            return url
        # the value may hold a password: the messages never show it
        if not url.startswith(("redis://", "rediss://", "unix://")):
            scheme = repr(url.split("://", 1)[0][:20]) if "://" in url else "none"
            raise PydanticCustomError(
                SECRET_VALUE_ERROR, "must start with redis://, rediss:// or unix:// (got "
                "scheme {scheme})", {"scheme": scheme})
        rest = url.split("://", 1)[1]
        end = min([rest.find(c) for c in "/?#" if c in rest], default=len(rest))
        if "@" in rest[end:]:  # redis-py would take part of the password as the host
            raise PydanticCustomError(
                SECRET_VALUE_ERROR, "cannot be used: a '/', '?' or '#' in the user or "
                "password must be percent-encoded (%2F, %3F, %23)")
        from redis.connection import parse_url
        try:
            parse_url(url)
        except ValueError as err:
            reason = "a port that is not a number from 0 to 65535" if "port" in str(
                err).lower() else "a malformed address"
            raise PydanticCustomError(SECRET_VALUE_ERROR, "cannot be used: {reason}",
                                      {"reason": reason}) from None
        return url

    @model_validator(mode="after")
    def _redis_needs_url(self) -> StorageConfig:
        if self.backend == "redis" and not self.redis_url:
            raise PydanticCustomError(
                SECRET_VALUE_ERROR, "backend redis needs storage.redis_url (e.g. redis_url: "
                "{example}, which is empty or not set)",
                {"example": "${env:LIPSERVICE_REDIS_URL}"})
        return self


class _RawConfig(StrictModel):
    """Top-level shape before components are typed by their keys."""

    receivers: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    processors: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    exporters: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    extensions: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    service: ServiceConfig
    storage: StorageConfig = Field(default_factory=StorageConfig)


class Config(BaseModel):
    """The validated configuration: every component typed by its model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    receivers: dict[str, StrictModel]
    processors: dict[str, StrictModel]
    exporters: dict[str, StrictModel]
    service: ServiceConfig
    storage: StorageConfig
    extensions: dict[str, StrictModel] = Field(default_factory=dict)
    source: str = ""
    warnings: list[str] = Field(default_factory=list)


def component_type(key: str) -> str:
    """``"otlphttp/posthog"`` → ``"otlphttp"``."""
    return key.split("/", 1)[0]


def processor_types() -> dict[str, type[StrictModel]]:
    from processors import PROCESSORS, load_processor_class

    return {name: load_processor_class(name).Config for name in PROCESSORS}


EXTENSIONS: dict[str, str] = {"control": "collector.control.config:ControlConfig"}
"""Extension type name → its config model (``module:Class``, imported when named)."""


def extension_types() -> dict[str, type[StrictModel]]:
    return {name: import_object(spec) for name, spec in EXTENSIONS.items()}


# --------------------------------------------------------------------------- loading

_ENV = re.compile(r"\$\$|\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, environ: dict[str, str] | None = None,
               unset: set[str] | None = None) -> Any:
    """Expand ``${env:NAME}`` / ``${env:NAME:-default}`` in every string of a parsed YAML
    tree; ``$$`` becomes ``$``. Returns a new tree. ``unset`` (optional) collects the names
    of variables that were unset and had no default (they expand to "")."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            got = env.get(m.group(1))
            if got is None or (got == "" and m.group(2) is not None):
                if got is None and m.group(2) is None and unset is not None:
                    unset.add(m.group(1))
                return m.group(2) or ""
            return got

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env, unset) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, unset) for v in value]
    return value


def apply_set(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set key.path=value`` in place. Raises ConfigError if malformed."""
    if "=" not in assignment:
        raise ConfigError(["--set: expected key.path=value, got an argument without '=' "
                           "(not shown: it may hold a secret)"])
    path, raw = assignment.split("=", 1)
    keys = path.split("::") if "::" in path else path.split(".")
    if not all(keys):  # the path only: the value may be a secret
        raise ConfigError([f"--set {path}=…: empty key in path {path!r}"])
    try:
        # a value with a line break stays text: YAML would fold it into a space, changing
        # a secret silently instead of letting its validator refuse it
        value = yaml.safe_load(raw) if raw != "" and not any(c in raw.strip() for c in
                                                            "\r\n") else raw
    except yaml.YAMLError:
        value = raw
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def default_config_path() -> Path:
    """The embedded default config: ``config/default.yaml`` in a checkout, else the copy
    installed as package data (``lipservice_config``)."""
    here = Path(__file__).resolve().parent.parent / "config" / DEFAULT_CONFIG_NAME
    if here.is_file():
        return here
    from importlib.resources import files

    return Path(str(files("lipservice_config") / DEFAULT_CONFIG_NAME))


def _fmt_loc(prefix: Iterable[str], loc: Iterable[Any]) -> str:
    return ".".join([*prefix, *(str(p) for p in loc)])


# Settings whose values may be secrets: their errors never echo the value given.
SECRET_KEYS = frozenset({"headers", "redis_url", "api_key", "endpoint", "logs_endpoint",
                         "base_url"})


def _problems(err: ValidationError, prefix: list[str]) -> list[str]:
    out = []
    for e in err.errors():
        path = _fmt_loc(prefix, e["loc"])
        if e["type"] == "extra_forbidden":
            out.append(f"{path}: unknown key")
        elif e["type"] == "missing":
            out.append(f"{path}: required key is missing")
        elif e["type"] == SECRET_VALUE_ERROR or SECRET_KEYS.intersection(map(str, e["loc"])):
            # never echo the value
            out.append(f"{path}: {e['msg']}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = repr(e.get("input"))
            out.append(f"{path}: {msg}" if got in msg else f"{path}: {msg} (got {got})")
    return out


def load_config_tree(tree: Any, source: str = "") -> Config:
    """Validate an already expanded YAML tree. Raises ConfigError listing every problem."""
    if not isinstance(tree, dict):
        raise ConfigError(["top level: expected a mapping of receivers/processors/exporters/"
                           "service"], source)
    try:
        raw = _RawConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_problems(err, []), source) from None

    problems: list[str] = []
    kinds = {
        "receivers": RECEIVER_TYPES,
        "processors": processor_types(),
        "exporters": EXPORTER_TYPES,
        "extensions": extension_types(),
    }
    typed: dict[str, dict[str, StrictModel]] = {}
    for section, types in kinds.items():
        typed[section] = {}
        for key, body in getattr(raw, section).items():
            ctype = component_type(key)
            model = types.get(ctype)
            if model is None:
                problems.append(f"{section}.{key}: unknown {section[:-1]} type {ctype!r} "
                                f"(known: {', '.join(sorted(types))})")
                continue
            try:
                typed[section][key] = model.model_validate(body or {})
            except ValidationError as err:
                problems.extend(_problems(err, [section, key]))

    logs = raw.service.pipelines.logs
    for section, names in (("receivers", logs.receivers), ("processors", logs.processors),
                           ("exporters", logs.exporters)):
        for i, name in enumerate(names):
            if name not in getattr(raw, section):
                problems.append(f"service.pipelines.logs.{section}.{i}: {name!r} is not "
                                f"defined under top-level `{section}:`")
    for i, name in enumerate(raw.service.extensions):
        if name not in raw.extensions:
            problems.append(f"service.extensions.{i}: {name!r} is not defined under "
                            "top-level `extensions:`")
        elif (check := getattr(typed["extensions"].get(name), "pipeline_problems", None)):
            problems.extend(check(f"extensions.{name}", typed["processors"], logs.processors))
    if raw.storage.backend == "redis" and not any(
            component_type(n) == "control" for n in raw.service.extensions):
        problems.append("storage.backend: `redis` shares the control extension's policies; "
                        "define `extensions: {control: {}}` and list it in "
                        "`service.extensions`")
    if not logs.receivers:
        problems.append("service.pipelines.logs.receivers: at least one receiver is needed")
    if not logs.exporters:
        problems.append("service.pipelines.logs.exporters: at least one exporter is needed")
    for key, cfg in typed["exporters"].items():
        if isinstance(cfg, OtlpHttpExporterConfig) and not (cfg.endpoint or cfg.logs_endpoint):
            problems.append(f"exporters.{key}: needs `endpoint` or `logs_endpoint`")
    problems.extend(_shared_queue_files(typed["exporters"], raw.storage.directory))
    problems.extend(_shared_ports(raw.service, logs.receivers, typed["receivers"]))
    if problems:
        raise ConfigError(problems, source)
    return Config(
        receivers=typed["receivers"],
        processors=typed["processors"],
        exporters=typed["exporters"],
        service=raw.service,
        storage=raw.storage,
        extensions=typed["extensions"],
        source=source,
    )


def _shared_ports(service: ServiceConfig, names: list[str],
                  receivers: dict[str, StrictModel]) -> list[str]:
    """Problems for two listeners (receivers of the pipeline, telemetry) on one port of one
    address (``0.0.0.0`` and ``::`` overlap every address): ``run`` would fail to bind."""
    listeners = [("service.telemetry.metrics.address", service.telemetry.metrics.address,
                  "http")]
    for name in names:
        cfg = receivers.get(name)
        if isinstance(cfg, OtlpReceiverConfig):
            for proto in ("grpc", "http"):
                server = getattr(cfg.protocols, proto)
                if server is not None:
                    listeners.append((f"receivers.{name}.protocols.{proto}.endpoint",
                                      server.endpoint, proto))
    problems: list[str] = []
    seen: list[tuple[str, set[str], int]] = []
    for key, endpoint, kind in listeners:
        host, port = split_host_port(endpoint)
        bound = _bound_addresses(host, kind)
        for other_key, other, other_port in seen:
            if port and port == other_port and _overlap(bound, other):
                problems.append(f"{key}: {endpoint} is also {other_key}; one port, one "
                                f"listener")
        seen.append((key, bound, port))
    return problems


def _bound_addresses(host: str, kind: str) -> set[str]:
    """The addresses a server binds for ``host``: gRPC binds both families for a wildcard
    or ``localhost``; the HTTP servers bind one socket per address (IPv6 ones V6ONLY)."""
    host = host.lower()
    if kind == "grpc" and host in ("0.0.0.0", "::"):
        return {"0.0.0.0", "::"}
    if host == "localhost":
        return {"127.0.0.1", "::1"} if kind == "grpc" else {"127.0.0.1"}
    return {host}


def _overlap(a: set[str], b: set[str]) -> bool:
    """Do two sets of bound addresses (same port) collide? 0.0.0.0 takes every IPv4
    address, :: every IPv6 one."""
    for x in a:
        for y in b:
            if x == y or (("0.0.0.0" in (x, y)) and ":" not in x + y) or (
                    "::" in (x, y) and ":" in x and ":" in y):
                return True
    return False


def _shared_queue_files(exporters: dict[str, StrictModel], directory: str) -> list[str]:
    """Problems for exporters whose persistent queues resolve to the same file."""
    from collector.persistent_queue import resolve_storage_path

    owners: dict[Path, str] = {}
    problems = []
    for key, cfg in exporters.items():
        queue = getattr(cfg, "sending_queue", None)
        path = resolve_storage_path(queue.storage, key, directory) if queue else None
        if path is None:
            continue
        real = Path(os.path.abspath(path))
        if real in owners:
            problems.append(f"exporters.{key}.sending_queue.storage: {str(path)!r} is already "
                            f"the persistent queue of exporters.{owners[real]}; each exporter "
                            f"needs its own file")
        owners[real] = key
    return problems


def load_config(path: str | Path | None = None, sets: Iterable[str] = (),
                environ: dict[str, str] | None = None) -> Config:
    """Read, expand, override and validate a config file.

    path: YAML file, or None for the embedded default; sets: ``key.path=value`` strings.
    Raises ConfigError (file missing or unreadable, YAML syntax, unknown keys, wrong types).
    """
    p = Path(path) if path is not None else default_config_path()
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"cannot read config file: {err.strerror or err}"], source) from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"invalid YAML: {where}{problem}"], source) from None
    unset: set[str] = set()
    tree = expand_env(tree, environ, unset)
    if not isinstance(tree, dict):
        raise ConfigError(["top level: expected a mapping"], source)
    sets = list(sets)
    for assignment in sets:
        apply_set(tree, assignment)
    try:
        config = load_config_tree(tree, source)
    except ConfigError as err:
        if not sets:
            raise
        # say which problems come from a --set (the file does not hold that value)
        keys = [a.split("=", 1)[0].replace("::", ".") for a in sets]
        raise ConfigError([p + " (from --set)" if _under(p.split(": ", 1)[0], keys) else p
                           for p in err.problems], source) from None
    config.warnings = [f"environment variable {name} is not set; ${{env:{name}}} expanded to "
                       f"an empty string" for name in sorted(unset)]
    return config


def _under(path: str, keys: list[str]) -> bool:
    return any(path == k or path.startswith(k + ".") for k in keys)


def import_object(spec: str) -> Any:
    """``"package.module:Name"`` → the object."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
