"""Admin API: GET /api/v1/patterns on a real telemetry server on 127.0.0.1."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp

from collector.admin import pattern_routes
from collector.telemetry import TelemetryServer
from processors.clustering import ClusteringProcessor, Config
from tests.processors.test_clustering import WORKER_A, WORKER_B, make_batch, pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stats:
    """A processor exposing pattern_stats() only (as sampling / signature may)."""

    def pattern_stats(self) -> dict[str, Any]:
        return {"patterns": [{"pattern_id": "p1", "count": 3}]}


class Broken:
    def pattern_stats(self) -> dict[str, Any]:
        raise RuntimeError("secret-token-123 leaked?")


async def test_patterns_endpoint_serves_families_and_stats_as_json() -> None:
    proc = ClusteringProcessor(Config(executor="inline", min_new_templates=10**6))
    proc.process(make_batch([WORKER_A] * 2 + [WORKER_B] + ["Disk <*> is full"]))
    proc.run_now(1.0)
    processors = [("signature", object()), ("clustering", proc), ("sampling", Stats()),
                  ("broken", Broken())]
    server = TelemetryServer(f"127.0.0.1:{free_port()}", processors)
    server.add_routes(pattern_routes(processors))
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{base}/api/v1/patterns") as resp:
                assert resp.status == 200
                assert resp.content_type == "application/json"
                body = await resp.json()
            async with http.get(f"{base}/api/v1/patterns?limit=1&members=1") as resp:
                small = await resp.json()
            async with http.get(f"{base}/api/v1/patterns?limit=abc") as resp:
                assert resp.status == 400
                assert "limit" in (await resp.json())["error"]
    finally:
        await server.stop()

    got = body["processors"]
    assert set(got) == {"clustering", "sampling", "broken"}  # signature has neither method
    families = got["clustering"]["families"]
    assert [f["family"] for f in families] == [min(pid(WORKER_A), pid(WORKER_B)),
                                               pid("Disk <*> is full")]
    assert families[0]["volume"] == 3 and families[0]["templates"] == 2
    assert families[0]["representative"] == WORKER_A
    assert got["sampling"] == {"pattern_stats": {"patterns": [{"pattern_id": "p1", "count": 3}]}}
    assert "error" in got["broken"] and "secret" not in got["broken"]["error"]

    small_fams = small["processors"]["clustering"]["families"]
    assert len(small_fams) == 1 and len(small_fams[0]["members"]) == 1
    assert small_fams[0]["templates"] == 2
