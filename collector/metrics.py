"""Self-telemetry metrics (Prometheus), named as the OpenTelemetry Collector names them where
it has a name (``otelcol_*``), else under ``lipservice_*``. Counters get the ``_total``
suffix on exposition, as the Collector's own Prometheus endpoint shows them.

Processors do not touch these objects per record: they keep plain counters and expose them
through ``collect_metrics()``, read at scrape time (see processors/base.py).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

RECEIVER_ACCEPTED = Counter(
    "otelcol_receiver_accepted_log_records",
    "Log records the receiver accepted (answered with success).",
    ["receiver", "transport"], registry=REGISTRY)
RECEIVER_REFUSED = Counter(
    "otelcol_receiver_refused_log_records",
    "Log records the receiver refused (bad input, or backpressure).",
    ["receiver", "transport", "reason"], registry=REGISTRY)
RECEIVER_REQUESTS_FAILED = Counter(
    "lipservice_receiver_bad_requests",
    "Requests answered with a 4xx (or gRPC INVALID_ARGUMENT), by reason.",
    ["receiver", "transport", "reason"], registry=REGISTRY)

PROCESSOR_IN = Counter(
    "otelcol_processor_incoming_items", "Log records entering a processor.",
    ["processor", "otel_signal"], registry=REGISTRY)
PROCESSOR_OUT = Counter(
    "otelcol_processor_outgoing_items", "Log records leaving a processor.",
    ["processor", "otel_signal"], registry=REGISTRY)
PROCESSOR_ERRORS = Counter(
    "lipservice_processor_errors",
    "Batches on which a processor raised; the batch passed on unprocessed (fail open).",
    ["processor"], registry=REGISTRY)
PROCESSOR_FAILED_OPEN_RECORDS = Counter(
    "lipservice_processor_failed_open_log_records",
    "Log records that passed a processor unprocessed because it raised.",
    ["processor"], registry=REGISTRY)
BATCH_DURATION = Histogram(
    "lipservice_pipeline_batch_duration_seconds",
    "Time to run one batch through all processors.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY)

EXPORTER_SENT = Counter(
    "otelcol_exporter_sent_log_records", "Log records the backend accepted.",
    ["exporter"], registry=REGISTRY)
EXPORTER_SEND_FAILED = Counter(
    "otelcol_exporter_send_failed_log_records",
    "Log records that could not be delivered (permanent error, or retries exhausted).",
    ["exporter"], registry=REGISTRY)
EXPORTER_ENQUEUE_FAILED = Counter(
    "otelcol_exporter_enqueue_failed_log_records",
    "Log records refused because the sending queue was full.",
    ["exporter"], registry=REGISTRY)
EXPORTER_REJECTED = Counter(
    "lipservice_exporter_partial_success_rejected_log_records",
    "Log records the backend rejected in a partial-success answer.",
    ["exporter"], registry=REGISTRY)
EXPORTER_RETRIES = Counter(
    "lipservice_exporter_retries", "Export attempts that were retried.",
    ["exporter"], registry=REGISTRY)
EXPORTER_QUEUE_SIZE = Gauge(
    "otelcol_exporter_queue_size", "Log records waiting in the sending queue.",
    ["exporter"], registry=REGISTRY)
EXPORTER_QUEUE_CAPACITY = Gauge(
    "otelcol_exporter_queue_capacity", "Capacity of the sending queue, in log records.",
    ["exporter"], registry=REGISTRY)

# Control loop (collector/control/). "Failures" are the calls whose outcome is not "ok".
LLM_CALLS = Counter(
    "lipservice_llm_calls",
    "LLM calls by outcome: ok, invalid_json, invalid_schema, refused, truncated, timeout, "
    "rate_limited, server_error, client_error, connection_error, error.",
    ["outcome"], registry=REGISTRY)
LLM_SKIPPED = Counter(
    "lipservice_llm_skipped_runs",
    "Loop runs that did not call the LLM, by reason (no_api_key, disabled, budget, "
    "prompt_too_large); the heuristic ran instead.",
    ["reason"], registry=REGISTRY)
LLM_DURATION = Histogram(
    "lipservice_llm_request_duration_seconds",
    "Time of one LLM call, retries included, whatever its outcome.",
    buckets=(0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0), registry=REGISTRY)
LLM_TOKENS = Counter(
    "lipservice_llm_tokens",
    "Tokens used by LLM calls as the server reports them, by type (prompt, completion).",
    ["type"], registry=REGISTRY)
POLICY_VERSION = Gauge(
    "lipservice_policy_version",
    "Version of the policy in force, per service (_default = the default policy).",
    ["service"], registry=REGISTRY)
POLICY_APPLIED = Counter(
    "lipservice_policy_applied",
    "Policies applied, by source (yaml, heuristic, llm, operator).",
    ["source"], registry=REGISTRY)
POLICY_REJECTED = Counter(
    "lipservice_policy_rejected",
    "Policies rejected (the policy in force stayed), by source and reason.",
    ["source", "reason"], registry=REGISTRY)
POLICY_ADJUSTED = Counter(
    "lipservice_policy_guardrail_adjustments",
    "Rates a guardrail changed in policies that were then applied, by guardrail.",
    ["guardrail"], registry=REGISTRY)
CONTROL_RUNS = Counter(
    "lipservice_control_runs",
    "Control loop runs per service, by trigger (interval, anomaly, api) and outcome "
    "(applied, unchanged, rejected, llm_failed, held, no_data, error).",
    ["trigger", "outcome"], registry=REGISTRY)

EXPORTER_QUEUE_SIZE_BYTES = Gauge(
    "lipservice_exporter_queue_size_bytes",
    "Bytes (serialized OTLP) waiting in the sending queue or being sent.",
    ["exporter"], registry=REGISTRY)
EXPORTER_QUEUE_CAPACITY_BYTES = Gauge(
    "lipservice_exporter_queue_capacity_bytes",
    "Capacity of the sending queue in bytes of serialized OTLP (0 = no byte limit).",
    ["exporter"], registry=REGISTRY)
EXPORTER_DROPPED = Counter(
    "lipservice_exporter_dropped_log_records",
    "Log records given up on, by reason (permanent: the backend refused them; "
    "retries_exhausted: max_elapsed_time passed; shutdown: unsent at the shutdown "
    "deadline without a persistent queue; unreadable: a stored request could not be read; "
    "exporter_error: the exporter raised unexpectedly). Sums to "
    "otelcol_exporter_send_failed_log_records.",
    ["exporter", "reason"], registry=REGISTRY)
EXPORTER_BATCH_SEND_SIZE = Histogram(
    "otelcol_exporter_queue_batch_send_size",
    "Log records per export request after batching.",
    ["exporter"],
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
    registry=REGISTRY)
PERSISTENT_QUEUE_REDELIVERED = Counter(
    "lipservice_exporter_persistent_queue_redelivered_log_records",
    "Log records sent again after a restart that had already been handed to the exporter "
    "before it (possible duplicates: at-least-once delivery).",
    ["exporter"], registry=REGISTRY)
PERSISTENT_QUEUE_RECOVERED = Counter(
    "lipservice_exporter_persistent_queue_recovered_log_records",
    "Log records found in the persistent queue at start-up (left by the previous run).",
    ["exporter"], registry=REGISTRY)
MEMORY_LIMITER_REFUSING = Gauge(
    "lipservice_memory_limiter_refusing",
    "1 while the memory limiter refuses data (memory over its soft limit), else 0.",
    ["processor"], registry=REGISTRY)
MEMORY_LIMITER_USAGE = Gauge(
    "lipservice_memory_limiter_usage_bytes",
    "Resident memory (RSS) at the memory limiter's last check.",
    ["processor"], registry=REGISTRY)

# Shared state (storage.backend: redis; collector/shared/). Labelled by the Redis key
# namespace (storage.redis.namespace; not `namespace`, which Kubernetes service discovery
# sets), so a sidecar with local state exposes none of them.
REDIS_UP = Gauge(
    "lipservice_redis_up",
    "1 while the shared state's Redis answers, else 0 (the replica then serves with the "
    "policies in force and local statistics).",
    ["redis_namespace"], registry=REGISTRY)
REDIS_RECONNECTS = Counter(
    "lipservice_redis_reconnects",
    "Times Redis answered again after being unreachable.",
    ["redis_namespace"], registry=REGISTRY)
CONTROL_IS_LEADER = Gauge(
    "lipservice_control_is_leader",
    "1 while this replica holds the lease and runs the control loop for the namespace.",
    ["redis_namespace"], registry=REGISTRY)
POLICY_SYNCED = Counter(
    "lipservice_policy_synced",
    "Shared policy versions put in force on this replica, by trigger (notice: pub/sub "
    "message, poll: periodic version check).",
    ["redis_namespace", "trigger"], registry=REGISTRY)
POLICY_SYNC_LAG = Gauge(
    "lipservice_policy_sync_lag_seconds",
    "Seconds from the store of the last shared policy version (by the storing replica's "
    "clock) to its application on this replica.",
    ["redis_namespace"], registry=REGISTRY)
TEMPLATES_ADOPTED = Counter(
    "lipservice_templates_adopted",
    "Local pattern ids replaced by the id another replica registered for the same "
    "template (the local id became an alias).",
    ["redis_namespace"], registry=REGISTRY)
