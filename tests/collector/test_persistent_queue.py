"""The persistent sending queue (collector/persistent_queue.py + ExportQueue with storage):
a request is on disk when put() returns, is deleted once sent or dropped, and what is
left at shutdown or by a crash is sent by the next queue on the same file."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector import metrics
from collector.config import (
    BatchConfig,
    ConfigError,
    RetryConfig,
    SendingQueueConfig,
    load_config_tree,
)
from collector.exporters.base import ExportError
from collector.persistent_queue import PersistentStore, StorageError, resolve_storage_path
from collector.queue import ExportQueue
from processors.base import count_records
from tests.collector.test_pipeline import bodies, make_request
from tests.collector.test_queue import Scripted
from tests.collector.wire_support import RecordingExporter, wait_for

ONE_BY_ONE = SendingQueueConfig(num_consumers=1, batch=BatchConfig(enabled=False))


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def crash_copy(path: Path, into: Path) -> Path:
    """The queue file as a crash at this instant would leave it: the main file and its
    WAL, copied byte for byte (a process crash keeps everything write() handed to the
    kernel; nothing is checkpointed or closed)."""
    into.mkdir()
    for suffix in ("", "-wal"):
        src = Path(str(path) + suffix)
        if src.exists():
            shutil.copyfile(src, into / (path.name + suffix))
    return into / path.name


def test_storage_setting_resolves_under_the_directory_or_as_a_path(tmp_path) -> None:
    assert resolve_storage_path(None, "otlphttp/posthog", tmp_path) is None
    assert resolve_storage_path(False, "otlphttp/posthog", tmp_path) is None
    assert resolve_storage_path(True, "otlphttp/posthog", tmp_path) == \
        tmp_path / "queue-otlphttp_posthog.db"
    assert resolve_storage_path("posthog.db", "otlphttp", tmp_path) == tmp_path / "posthog.db"
    assert resolve_storage_path("/var/q/x.db", "otlphttp", tmp_path) == Path("/var/q/x.db")


def test_two_exporters_on_one_queue_file_is_a_config_error(tmp_path) -> None:
    tree = {
        "receivers": {"otlp": {"protocols": {"http": {}}}},
        "exporters": {"otlphttp/a": {"endpoint": "http://127.0.0.1:1",
                                     "sending_queue": {"storage": "q.db"}},
                      "otlphttp/b": {"endpoint": "http://127.0.0.1:2",
                                     "sending_queue": {"storage": str(tmp_path / "q.db")}}},
        "service": {"pipelines": {"logs": {"receivers": ["otlp"],
                                           "exporters": ["otlphttp/a", "otlphttp/b"]}}},
        "storage": {"directory": str(tmp_path)},
    }
    with pytest.raises(ConfigError) as info:
        load_config_tree(tree)
    assert "exporters.otlphttp/b.sending_queue.storage" in str(info.value)


async def test_put_is_on_disk_before_it_returns(tmp_path) -> None:
    path = tmp_path / "q.db"
    exp = RecordingExporter("p-durable")
    exp.gate.clear()
    q = ExportQueue(exp, ONE_BY_ONE, storage=path)
    await q.start()
    req = make_request([[3], [2]])
    q.put(req, 5)
    # no await since put(): nothing else has run; a crash now leaves the row on disk
    copy = crash_copy(path, tmp_path / "crash")
    store = PersistentStore(copy)
    rows = store.pending()
    assert [(r.records, r.dispatched) for r in rows] == [(5, False)]
    assert ExportLogsServiceRequest.FromString(store.read([rows[0].id])[rows[0].id]) == req
    store.close()
    exp.gate.set()
    assert await q.drain(5)


async def test_sent_rows_are_deleted_and_the_file_is_empty_after_a_clean_drain(tmp_path):
    path = tmp_path / "q.db"
    exp = RecordingExporter("p-clean")
    q = ExportQueue(exp, ONE_BY_ONE, storage=path)
    await q.start()
    for i in range(3):
        q.put(make_request([[i + 1]]), i + 1)
    assert await q.drain(5)
    assert exp.record_count == 6
    store = PersistentStore(path)
    assert store.pending() == []
    store.close()


async def test_what_was_not_sent_is_sent_by_the_next_queue_and_counted(tmp_path) -> None:
    path = tmp_path / "q.db"
    first = RecordingExporter("p-restart")
    first.gate.clear()  # the backend hangs: one request is in flight, the rest wait
    q1 = ExportQueue(first, ONE_BY_ONE, storage=path)
    await q1.start()
    sent = [make_request([[2]], service=f"s{i}") for i in range(4)]
    for req in sent:
        q1.put(req, 2)
    await wait_for(lambda: q1._busy == 1)
    assert not await q1.drain(0.2)  # deadline: the rows stay on disk
    assert first.requests == []

    recovered = sample("lipservice_exporter_persistent_queue_recovered_log_records_total",
                       {"exporter": "p-restart"})
    redelivered = sample("lipservice_exporter_persistent_queue_redelivered_log_records_total",
                         {"exporter": "p-restart"})
    second = RecordingExporter("p-restart")
    q2 = ExportQueue(second, ONE_BY_ONE, storage=path)
    await q2.start()
    assert q2.size == 8
    assert await q2.drain(5)
    assert [bodies(r) for r in second.requests] == [bodies(r) for r in sent]
    assert second.requests[0].resource_logs[0].resource == sent[0].resource_logs[0].resource
    assert sample("lipservice_exporter_persistent_queue_recovered_log_records_total",
                  {"exporter": "p-restart"}) == recovered + 8
    # only the request that was in flight when q1 stopped may have reached the backend
    assert sample("lipservice_exporter_persistent_queue_redelivered_log_records_total",
                  {"exporter": "p-restart"}) == redelivered + 2


async def test_a_crash_copy_is_recovered_and_sent(tmp_path) -> None:
    path = tmp_path / "q.db"
    hung = RecordingExporter("p-crash")
    hung.gate.clear()
    q1 = ExportQueue(hung, SendingQueueConfig(num_consumers=2), storage=path)
    await q1.start()
    reqs = [make_request([[5]], service=f"c{i}") for i in range(10)]
    for req in reqs:
        q1.put(req, 5)
    copy = crash_copy(path, tmp_path / "crash")
    hung.gate.set()
    await q1.drain(5)

    after = RecordingExporter("p-crash")
    q2 = ExportQueue(after, SendingQueueConfig(num_consumers=2), storage=copy)
    await q2.start()
    assert await q2.drain(5)
    got = sorted(b for r in after.requests for b in bodies(r))
    assert got == sorted(b for r in reqs for b in bodies(r))


async def test_permanent_failure_deletes_the_row(tmp_path) -> None:
    path = tmp_path / "q.db"
    exp = Scripted("p-perm", [ExportError("400", retryable=False)])
    q = ExportQueue(exp, ONE_BY_ONE, RetryConfig(initial_interval=0.01), storage=path)
    await q.start()
    q.put(make_request([[2]]), 2)
    q.put(make_request([[3]]), 3)
    assert await q.drain(5)
    assert [count_records(r) for r in exp.delivered] == [3]
    store = PersistentStore(path)
    assert store.pending() == []
    store.close()


async def test_retryable_failure_at_the_shutdown_deadline_keeps_the_rows(tmp_path) -> None:
    path = tmp_path / "q.db"
    exp = Scripted("p-defer", [ExportError("503", retryable=True)] * 1000)
    retry = RetryConfig(initial_interval=0.05, max_interval=0.05, randomization_factor=0,
                        max_elapsed_time=0)
    q = ExportQueue(exp, ONE_BY_ONE, retry, storage=path)
    await q.start()
    q.put(make_request([[4]]), 4)
    assert not await q.drain(0.3)
    assert sample("otelcol_exporter_send_failed_log_records_total", {"exporter": "p-defer"}) == 0
    store = PersistentStore(path)
    assert [(r.records, r.dispatched) for r in store.pending()] == [(4, True)]
    store.close()


async def test_second_queue_on_the_same_file_is_refused(tmp_path) -> None:
    path = tmp_path / "q.db"
    q1 = ExportQueue(RecordingExporter("p-lock"), ONE_BY_ONE, storage=path)
    await q1.start()
    q2 = ExportQueue(RecordingExporter("p-lock2"), ONE_BY_ONE, storage=path)
    with pytest.raises(StorageError, match="locked"):
        await q2.start()
    assert await q1.drain(5)


async def test_corrupt_file_is_moved_aside_and_the_queue_starts_empty(tmp_path, caplog) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    exp = RecordingExporter("p-corrupt")
    q = ExportQueue(exp, ONE_BY_ONE, storage=path)
    await q.start()
    assert q.size == 0
    assert list(tmp_path.glob("q.db.corrupt-*"))
    assert any("moved it to" in r.getMessage() for r in caplog.records)
    q.put(make_request([[1]]), 1)
    assert await q.drain(5)
    assert exp.record_count == 1


async def test_unreadable_stored_request_is_dropped_and_counted(tmp_path) -> None:
    path = tmp_path / "q.db"
    store = PersistentStore(path)
    store.append(make_request([[2]]).SerializeToString(), 2)
    store.append(b"\xff\xff\xff not protobuf", 7)
    store.close()
    exp = RecordingExporter("p-unreadable")
    q = ExportQueue(exp, ONE_BY_ONE, storage=path)
    await q.start()
    assert await q.drain(5)
    assert exp.record_count == 2
    assert sample("lipservice_exporter_dropped_log_records_total",
                  {"exporter": "p-unreadable", "reason": "unreadable"}) == 7


async def test_batches_from_disk_are_merged_like_fresh_ones(tmp_path) -> None:
    path = tmp_path / "q.db"
    store = PersistentStore(path)
    reqs = [make_request([[3]], service=f"m{i}") for i in range(4)]
    for req in reqs:
        store.append(req.SerializeToString(), 3)
    store.close()
    exp = RecordingExporter("p-merge")
    q = ExportQueue(exp, SendingQueueConfig(num_consumers=1, batch=BatchConfig(
        min_size=6, max_size=6, flush_timeout=3600)), storage=path)
    await q.start()
    assert await q.drain(5)
    assert [count_records(r) for r in exp.requests] == [6, 6]
    assert [b for r in exp.requests for b in bodies(r)] == [b for r in reqs for b in bodies(r)]


def test_store_uses_wal_and_the_chosen_synchronous_level(tmp_path) -> None:
    for fsync, level in ((False, 1), (True, 2)):  # NORMAL = 1, FULL = 2
        store = PersistentStore(tmp_path / f"s{fsync}.db", fsync=fsync)
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == level
        store.close()


def test_unusable_directory_is_a_storage_error_naming_the_file(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match=str(blocker)):
        PersistentStore(blocker / "q.db")


def test_rows_survive_reopen_in_order(tmp_path) -> None:
    path = tmp_path / "q.db"
    store = PersistentStore(path)
    ids = [store.append(bytes([i]) * (i + 1), i + 1) for i in range(5)]
    store.mark_dispatched(ids[:2])
    store.delete(ids[1:3])
    store.close()
    again = PersistentStore(path)
    assert [(r.id, r.records, r.nbytes, r.dispatched) for r in again.pending()] == [
        (ids[0], 1, 1, True), (ids[3], 4, 4, False), (ids[4], 5, 5, False)]
    again.close()
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_storage_words_from_env_expansion_mean_booleans() -> None:
    assert SendingQueueConfig(storage="true").storage is True
    assert SendingQueueConfig(storage=" False ").storage is False
    assert SendingQueueConfig(storage="q.db").storage == "q.db"
    with pytest.raises(ValueError, match="expected true, false"):
        SendingQueueConfig(storage=" ")


async def test_a_storage_failure_refuses_the_request_as_unavailable(tmp_path) -> None:
    from collector.pipeline import Pipeline, Refused

    exp = RecordingExporter("p-storefail")
    q = ExportQueue(exp, ONE_BY_ONE, storage=tmp_path / "q.db")
    pipe = Pipeline([], [q])
    await pipe.start()
    assert pipe.consume(make_request([[2]])) == 2
    q.store.db.close()  # the file becomes unusable, as on an I/O error
    with pytest.raises(Refused) as info:
        pipe.consume(make_request([[3]]))
    assert info.value.reason == "storage_error" and info.value.unavailable
    assert "cannot store" in str(info.value)
    assert q.size in (0, 2)  # the refused request was not queued (the first may be sent)
    await pipe.shutdown(5)
    assert exp.record_count == 2
