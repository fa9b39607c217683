"""Config loading: the Collector's shape, env expansion, --set, errors naming key paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import (
    ConfigError,
    OtlpHttpExporterConfig,
    expand_env,
    load_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[2]

ISSUE_EXAMPLE = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:4317}
      http: {endpoint: 127.0.0.1:4318}
processors:
  signature: {}
  sampling: {dry_run: true}
exporters:
  otlphttp: {endpoint: http://127.0.0.1:9999, headers: {Authorization: "Bearer ${env:POSTHOG_API_KEY}"}}
  file: {path: ./out/logs.jsonl}
service:
  pipelines:
    logs: {receivers: [otlp], processors: [signature, sampling], exporters: [file]}
  telemetry:
    metrics: {address: 127.0.0.1:8888}
"""


@pytest.fixture
def example(tmp_path: Path) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(ISSUE_EXAMPLE)
    return p


def test_issue_example_loads_with_env(example: Path) -> None:
    cfg = load_config(example, environ={"POSTHOG_API_KEY": "phc_test"})
    exp = cfg.exporters["otlphttp"]
    assert isinstance(exp, OtlpHttpExporterConfig)
    assert exp.headers["Authorization"] == "Bearer phc_test"
    assert exp.url() == "http://127.0.0.1:9999/v1/logs"
    assert cfg.service.pipelines.logs.processors == ["signature", "sampling"]
    assert cfg.processors["sampling"].dry_run is True


def test_named_instances_and_set_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(ISSUE_EXAMPLE.replace("  otlphttp:", "  otlphttp/posthog:"))
    cfg = load_config(p, ["exporters.otlphttp/posthog.timeout=250ms",
                          "service.pipelines.logs.exporters=[otlphttp/posthog, file]",
                          "processors::sampling::dry_run=false"], environ={})
    assert cfg.exporters["otlphttp/posthog"].timeout == pytest.approx(0.25)
    assert cfg.service.pipelines.logs.exporters == ["otlphttp/posthog", "file"]
    assert cfg.processors["sampling"].dry_run is False


def test_env_default_and_escape() -> None:
    tree = {"a": "${env:NOPE:-fallback}", "b": "x${env:HERE}y", "c": "$${env:HERE}",
            "d": ["${env:MISSING}"]}
    out = expand_env(tree, {"HERE": "1"})
    assert out == {"a": "fallback", "b": "x1y", "c": "${env:HERE}", "d": [""]}


@pytest.mark.parametrize(("override", "path", "expected"), [
    ("exporters.file.pathh=x", "exporters.file.pathh", "unknown key"),
    ("processors.sampling.dry_run=maybe", "processors.sampling.dry_run", "boolean"),
    ("exporters.otlphttp.timeout=soon", "exporters.otlphttp.timeout", "duration"),
    ("receivers.otlp.protocols.http.max_request_body_size=lots",
     "receivers.otlp.protocols.http.max_request_body_size", "size"),
    ("service.pipelines.logs.exporters=[nope]", "service.pipelines.logs.exporters.0",
     "not defined"),
    ("exporters.kafka={}", "exporters.kafka", "unknown exporter type"),
    ("service.telemetry.metrics.adress=x", "service.telemetry.metrics.adress", "unknown key"),
    # what `run` would refuse is caught by `validate` too
    ("service.telemetry.metrics.address=127.0.0.1:99999", "service.telemetry.metrics.address",
     "out of range"),
    ("receivers.otlp.protocols.http.endpoint=localhost", "receivers.otlp.protocols.http.endpoint",
     "expected host:port"),
    ("receivers.otlp.protocols.grpc.endpoint=", "receivers.otlp.protocols.grpc.endpoint",
     "expected host:port"),
])
def test_errors_name_the_full_key_path(example: Path, override: str, path: str,
                                       expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(example, [override], environ={})
    problems = [p for p in info.value.problems if p.startswith(path + ":")]
    assert problems, info.value.problems
    assert expected in problems[0]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML: line"):
        load_config(bad)


def test_units() -> None:
    assert parse_duration("1m") == 60 and parse_duration(2) == 2.0
    assert parse_size("20MiB") == 20 * 1024 * 1024 and parse_size("1KB") == 1000
    for negative in ("-1s", "-5ms", " -2 "):
        with pytest.raises(ValueError, match="cannot be negative"):
            parse_duration(negative)
    with pytest.raises(ValueError, match="expected a duration such as"):
        parse_duration("abc")


def test_default_config_is_valid_and_validate_cli(example: Path) -> None:
    load_config(None, environ={})
    ok = subprocess.run([sys.executable, "-m", "collector", "validate", "-c", str(example)],
                        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "collector", "validate", "-c", str(example),
                          "--set", "exporters.file.flush_interval=never"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2
    assert "exporters.file.flush_interval" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_unset_env_without_default_is_a_warning(example: Path) -> None:
    cfg = load_config(example, environ={})
    assert cfg.exporters["otlphttp"].headers["Authorization"] == "Bearer"  # value trimmed
    assert any("POSTHOG_API_KEY is not set" in w for w in cfg.warnings)
    assert load_config(example, environ={"POSTHOG_API_KEY": "k"}).warnings == []
    # the embedded default marks its optional keys with `:-`, so it warns about nothing
    assert load_config(None, environ={}).warnings == []


# --------------------------------------------------------------------------- storage


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("**/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    load_config(path, environ={"LIPSERVICE_REDIS_URL": "redis://127.0.0.1:6379/0"})


def test_redis_backend_settings_and_its_need_for_the_control_extension(tmp_path: Path) -> None:
    cfg = load_config(REPO / "config" / "examples" / "gateway-redis.yaml",
                      environ={"LIPSERVICE_REDIS_URL": "redis://:pw@redis:6379/0"})
    assert cfg.storage.backend == "redis" and cfg.storage.redis_url == "redis://:pw@redis:6379/0"
    assert (cfg.storage.redis.lease_ttl, cfg.storage.redis.stats_window) == (15.0, 60.0)
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "config" / "examples" / "gateway-redis.yaml",
                    sets=["service.extensions=[]"],
                    environ={"LIPSERVICE_REDIS_URL": "redis://redis:6379/0"})
    assert "storage.backend: `redis` shares the control extension's policies" in str(err.value)
    # validate fails where run would: no URL for the redis backend (fresh-user trial)
    with pytest.raises(ConfigError, match="backend redis needs storage.redis_url"):
        load_config(REPO / "config" / "examples" / "gateway-redis.yaml", environ={})


def test_redis_urls_with_encoded_passwords_and_unix_sockets_load() -> None:
    for url in ["redis://:p%23ss%2Fw%3Frd@127.0.0.1:6379/0", "unix://:pw@/run/redis.sock?db=1",
                "rediss://user:pw@[::1]:6380/2"]:
        cfg = load_config(REPO / "config" / "examples" / "gateway-redis.yaml",
                          environ={"LIPSERVICE_REDIS_URL": url})
        assert cfg.storage.redis_url == url


@pytest.mark.parametrize("url, message", [
    ("http://:hunter2-secret@redis:6379", "must start with redis://, rediss:// or unix://"),
    ("hunter2-secret", "got scheme none"),
    ("redis://:hunter2-secret@127.0.0.1:notaport/0", "port that is not a number"),
    ("redis://:hunter2-secret@127.0.0.1:99999/0", "port that is not a number"),
    ("rediss://:hunter2-secret@[::1", "a malformed address"),
    ("redis://:hunter2-secret#x/:?@127.0.0.1:16379/0", "must be percent-encoded"),
])
def test_a_bad_redis_url_is_named_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "config" / "examples" / "gateway-redis.yaml",
                    environ={"LIPSERVICE_REDIS_URL": url})
    assert "storage.redis_url: " in str(err.value) and message in str(err.value)
    assert "hunter2-secret" not in str(err.value)


@pytest.mark.parametrize("key, value", [
    ("processors.signature.cache_size", "true"),
    ("processors.signature.sim_threshold", "false"),
    ("exporters.otlphttp.timeout", "true"),
    ("exporters.otlphttp.sending_queue.queue_size", "yes"),  # YAML 1.1: a boolean
])
def test_a_boolean_where_a_number_belongs_is_an_error(example: Path, key: str,
                                                      value: str) -> None:
    # pydantic alone takes true as 1: a typo'd "cache_size: true" would silently mean 1.
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")
                       + r": expected a number, not a boolean \(got (True|False)\) \(from --set\)"):
        load_config(example, sets=[f"{key}={value}"], environ={"POSTHOG_API_KEY": "k"})


def test_numbers_from_environment_variables_still_load(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(ISSUE_EXAMPLE.replace("signature: {}",
                                       "signature: {cache_size: '${env:CACHE}'}"))
    cfg = load_config(p, environ={"CACHE": "1234", "POSTHOG_API_KEY": "k"})
    assert cfg.processors["signature"].cache_size == 1234


def test_errors_from_set_say_so_and_secret_values_are_never_echoed(example: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(example, sets=["processors.signature.depth=deep",
                                   "exporters.otlphttp.headers=[Bearer s3cret]"],
                    environ={"POSTHOG_API_KEY": "k"})
    problems = err.value.problems
    assert any(p.startswith("processors.signature.depth:") and p.endswith("(from --set)")
               for p in problems), problems
    assert any(p.startswith("exporters.otlphttp.headers:") for p in problems), problems
    assert "s3cret" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(example, sets=["a..b=hunter2"])
    assert "a..b" in str(err.value) and "hunter2" not in str(err.value)


def test_header_values_are_trimmed_and_control_characters_refused(example: Path) -> None:
    # A Kubernetes secret often ends in a newline, which no HTTP client can send: every
    # export failed while `validate` said ok (fresh-user trial).
    env = {"POSTHOG_API_KEY": "phc_abc\n"}
    cfg = load_config(example, environ=env)
    assert cfg.exporters["otlphttp"].headers["Authorization"] == "Bearer phc_abc"
    for bad in ("phc_a\r\nX-Injected: 1", "phc\x00"):
        with pytest.raises(ConfigError, match="header 'Authorization' holds a control "
                                              "character") as err:
            load_config(example, environ={"POSTHOG_API_KEY": bad})
        assert "phc" not in str(err.value)
    for inner in ("abc\ndef-sekrit", "Bearer abc\rdef"):  # via --set: YAML folded the break
        with pytest.raises(ConfigError, match="holds a control character") as err:
            load_config(example, sets=[f"exporters.otlphttp.headers.Authorization={inner}"],
                        environ={"POSTHOG_API_KEY": "k"})
        assert "sekrit" not in str(err.value) and "abc" not in str(err.value)
    cfg = load_config(example, sets=["exporters.otlphttp.headers.Authorization=sekrit\n"],
                      environ={"POSTHOG_API_KEY": "k"})
    assert cfg.exporters["otlphttp"].headers["Authorization"] == "sekrit"
    with pytest.raises(ConfigError, match="not a valid HTTP header name"):
        load_config(example, sets=["exporters::otlphttp::headers::X Bad=v"],
                    environ={"POSTHOG_API_KEY": "k"})


@pytest.mark.parametrize("url", ["eu.i.posthog.com/i/v1/logs", "ftp://host/x", "https://",
                                 "user:pw@eu.i.posthog.com/i/v1/logs"])
def test_otlphttp_endpoints_must_be_http_urls(example: Path, url: str) -> None:
    # POSTHOG_HOST=eu.i.posthog.com passed `validate`, then every export was retried as
    # a transient error for 5 minutes (fresh-user trial).
    with pytest.raises(ConfigError, match=r"logs_endpoint: expected an http:// or https:// "
                                          r"URL") as err:
        load_config(example, sets=[f"exporters.otlphttp.logs_endpoint={url}"],
                    environ={"POSTHOG_API_KEY": "k"})
    assert "pw" not in str(err.value)


@pytest.mark.parametrize("key, value, message", [
    ("receivers.otlp.protocols.grpc.max_recv_msg_size_mib", "100000", "less than or equal"),
    ("receivers.otlp.protocols.http.max_request_body_size", "0", "greater than or equal"),
])
def test_receiver_limits_that_cannot_work_are_refused(example: Path, key: str, value: str,
                                                      message: str) -> None:
    # 100000 MiB passed `validate` and crashed `run` in grpc (OverflowError); a body limit
    # of 0 refused every request.
    with pytest.raises(ConfigError, match=message):
        load_config(example, sets=[f"{key}={value}"], environ={"POSTHOG_API_KEY": "k"})


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1/logs", "http://h:abc/v1/logs",
                                 "http://[::1/v1/logs", "http://h//i/v1/logs"])
def test_otlphttp_urls_that_cannot_be_sent_to_are_refused(example: Path, url: str) -> None:
    # validate said ok, then every export was retried as a transient error (second trial)
    with pytest.raises(ConfigError, match=r"logs_endpoint: "):
        load_config(example, sets=[f"exporters.otlphttp.logs_endpoint={url}"],
                    environ={"POSTHOG_API_KEY": "k"})


def grpc_exporter(example: Path, *sets: str):
    return load_config(example, sets=["exporters.otlp.endpoint=127.0.0.1:4317", *sets],
                       environ={"POSTHOG_API_KEY": "k"}).exporters["otlp"]


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4317", "http://collector:4317",
                                      "https://collector.example:443/", "[::1]:4317"])
def test_otlp_endpoints_that_grpc_can_dial_load(example: Path, endpoint: str) -> None:
    assert grpc_exporter(example, f"exporters.otlp.endpoint={endpoint}").endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["ftp://127.0.0.1:9998", "127.0.0.1", "127.0.0.1:99999",
                                      "http://127.0.0.1:9998/path", "127.0.0.1:0", ":4317",
                                      "http://user:pw-SECRET@127.0.0.1:9998"])
def test_otlp_endpoints_grpc_cannot_dial_are_refused(example: Path, endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"exporters\.otlp\.endpoint: ") as err:
        grpc_exporter(example, f"exporters.otlp.endpoint={endpoint}")
    assert "pw-SECRET" not in str(err.value)


@pytest.mark.parametrize("header", ["x-key-bin=v", "grpc-timeout=1S", "authorization=a\tb",
                                    "authorization=secretÉ"])
def test_grpc_metadata_grpc_would_refuse_at_export_is_refused(example: Path,
                                                              header: str) -> None:
    name, value = header.split("=", 1)
    with pytest.raises(ConfigError, match=r"exporters\.otlp\.headers: ") as err:
        grpc_exporter(example, f"exporters::otlp::headers::{name}={value}")
    assert value not in str(err.value)


def test_headers_the_http_exporter_sets_itself_are_refused(example: Path) -> None:
    # Content-Length: 5 truncated every request body (second trial).
    with pytest.raises(ConfigError, match="header 'Content-Length' is set by the exporter"):
        load_config(example, sets=["exporters::otlphttp::headers::Content-Length=five"],
                    environ={"POSTHOG_API_KEY": "k"})


@pytest.mark.parametrize("key", ["receivers.otlp.protocols.http.endpoint",
                                 "receivers.otlp.protocols.grpc.endpoint",
                                 "service.telemetry.metrics.address"])
def test_listen_endpoints_with_a_scheme_are_refused(example: Path, key: str) -> None:
    with pytest.raises(ConfigError, match="without a scheme"):
        load_config(example, sets=[f"{key}=http://127.0.0.1:14318"],
                    environ={"POSTHOG_API_KEY": "k"})


@pytest.mark.parametrize("url", ["127.0.0.1:9995/v1", "ftp://127.0.0.1:9995/v1"])
def test_llm_base_url_must_be_an_http_url(example: Path, url: str) -> None:
    with pytest.raises(ConfigError, match=r"base_url: expected an http:// or https:// URL"):
        load_config(example, sets=["service.extensions=[control]",
                                   f"extensions.control.llm.base_url={url}"],
                    environ={"POSTHOG_API_KEY": "k"})


@pytest.mark.parametrize("sets", [
    ["receivers.otlp.protocols.grpc.endpoint=127.0.0.1:4318"],
    ["service.telemetry.metrics.address=0.0.0.0:4317"],
])
def test_two_listeners_on_one_port_are_refused(example: Path, sets: list[str]) -> None:
    # validate said ok; run failed with 'Address already in use' (second trial)
    with pytest.raises(ConfigError, match="one port, one listener"):
        load_config(example, sets=sets, environ={"POSTHOG_API_KEY": "k"})


def test_listeners_on_other_ports_or_port_zero_load(example: Path) -> None:
    load_config(example, sets=["receivers.otlp.protocols.grpc.endpoint=127.0.0.1:0",
                               "receivers.otlp.protocols.http.endpoint=127.0.0.1:0",
                               "service.telemetry.metrics.address=127.0.0.2:4318"],
                environ={"POSTHOG_API_KEY": "k"})


# ---- from the third fresh-user trial: valid settings must still load (no false refusals)

@pytest.mark.parametrize("endpoint", ["https://api.honeycomb.io", "http://127.0.0.1",
                                      "dns:///127.0.0.1:24317", "unix:///tmp/otlp.sock",
                                      "https://[::1]", "collector-0.otel.svc:4317"])
def test_grpc_targets_grpc_accepts_load(example: Path, endpoint: str) -> None:
    assert grpc_exporter(example, f"exporters.otlp.endpoint={endpoint}").endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["HTTP://127.0.0.1:24317", "::1:24317"])
def test_grpc_targets_the_exporter_would_misread_are_refused(example: Path,
                                                            endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"exporters\.otlp\.endpoint: "):
        grpc_exporter(example, f"exporters.otlp.endpoint={endpoint}")


def test_an_empty_optional_url_means_unset(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(ISSUE_EXAMPLE.replace(
        "otlphttp: {endpoint: http://127.0.0.1:9999,",
        "otlphttp: {endpoint: '${env:OTLP_BASE:-}', logs_endpoint: http://127.0.0.1:9/v1/logs,"))
    cfg = load_config(p, environ={"POSTHOG_API_KEY": "k"})
    assert cfg.exporters["otlphttp"].endpoint is None


def test_urls_lose_a_final_newline_and_messages_lose_credentials(example: Path) -> None:
    tree_set = ["exporters.otlphttp.logs_endpoint=http://127.0.0.1:9/v1/logs\n"]
    cfg = load_config(example, sets=tree_set, environ={"POSTHOG_API_KEY": "k"})
    assert cfg.exporters["otlphttp"].logs_endpoint == "http://127.0.0.1:9/v1/logs"
    for url in ["https://us.i.posthog.com:99999/i/v1/logs?api_key=phc_SECRETQUERY",
                "http://user:sec@ret@host:99999/"]:
        with pytest.raises(ConfigError) as err:
            load_config(example, sets=[f"exporters.otlphttp.logs_endpoint={url}"],
                        environ={"POSTHOG_API_KEY": "k"})
        assert "SECRETQUERY" not in str(err.value) and "sec@" not in str(err.value)
    with pytest.raises(ConfigError) as err:  # a --set value YAML reads as a mapping
        load_config(example, sets=["exporters.otlp.endpoint=https://user:hunter22@host: 443"],
                    environ={"POSTHOG_API_KEY": "k"})
    assert "hunter22" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(example, sets=["exporters.otlphttp.headers.Authorization:Bearer SECRET"])
    assert "SECRET" not in str(err.value)


def test_header_rules_follow_what_each_transport_can_send(example: Path) -> None:
    cfg = load_config(example, sets=["exporters::otlphttp::headers::Host=otlp.example.com",
                                     "exporters::otlphttp::headers::X-Scope-OrgID='0755'"],
                      environ={"POSTHOG_API_KEY": "k"})
    assert cfg.exporters["otlphttp"].headers["X-Scope-OrgID"] == "0755"
    assert cfg.exporters["otlphttp"].headers["Host"] == "otlp.example.com"
    # unquoted, YAML 1.1 reads 0755 as 493: refused rather than sent changed (fourth trial)
    with pytest.raises(ConfigError, match="X-Scope-OrgID: Input should be a valid string"):
        load_config(example, sets=["exporters::otlphttp::headers::X-Scope-OrgID=0755"],
                    environ={"POSTHOG_API_KEY": "k"})
    with pytest.raises(ConfigError, match="set by the exporter itself"):
        load_config(example, sets=["exporters::otlphttp::headers::user-agent=me"],
                    environ={"POSTHOG_API_KEY": "k"})
    with pytest.raises(ConfigError, match="gRPC metadata keys hold only"):
        grpc_exporter(example, "exporters::otlp::headers::x~y=v")
    assert grpc_exporter(example, "exporters::otlp::headers::X-Scope-OrgID=a7").headers == {
        "X-Scope-OrgID": "a7"}


def test_port_clashes_follow_addresses(example: Path) -> None:
    with pytest.raises(ConfigError, match="one port, one listener"):
        load_config(example, sets=["receivers.otlp.protocols.grpc.endpoint=localhost:4318"],
                    environ={"POSTHOG_API_KEY": "k"})
    load_config(example, sets=["receivers.otlp.protocols.grpc.endpoint=127.0.0.1:4320",
                               "receivers.otlp.protocols.http.endpoint=[::]:4320"],
                environ={"POSTHOG_API_KEY": "k"})  # IPv4 and IPv6 sockets do not clash
    load_config(example, sets=["receivers.otlp.protocols.http.endpoint=[::]:4321",
                               "service.telemetry.metrics.address=0.0.0.0:4321"],
                environ={"POSTHOG_API_KEY": "k"})  # the HTTP servers' IPv6 sockets: V6ONLY
    for grpc_at, http_at in [("[::]:4322", "127.0.0.1:4322"), ("localhost:4323", "[::1]:4323"),
                             ("0.0.0.0:4324", "[::1]:4324")]:  # gRPC binds both families
        with pytest.raises(ConfigError, match="one port, one listener"):
            load_config(example, sets=[f"receivers.otlp.protocols.grpc.endpoint={grpc_at}",
                                       f"receivers.otlp.protocols.http.endpoint={http_at}"],
                        environ={"POSTHOG_API_KEY": "k"})
    with pytest.raises(ConfigError, match="an IPv6 address goes in brackets"):
        load_config(example, sets=["receivers.otlp.protocols.grpc.endpoint=::4317"],
                    environ={"POSTHOG_API_KEY": "k"})


def test_otlphttp_endpoint_query_stays_after_the_logs_path(example: Path) -> None:
    cfg = load_config(example, sets=["exporters.otlphttp.endpoint=http://h:9/otlp/?tenant=a"],
                      environ={"POSTHOG_API_KEY": "k"})
    assert cfg.exporters["otlphttp"].url() == "http://h:9/otlp/v1/logs?tenant=a"
