"""``memory_limiter``: refuse new data while the process uses too much memory.

Configured as the OpenTelemetry Collector's ``memory_limiter`` processor, with its names,
and listed in the pipeline's processors (conventionally first)::

    processors:
      memory_limiter: {check_interval: 1s, limit_mib: 400, spike_limit_mib: 100}
    service:
      pipelines:
        logs: {receivers: [otlp], processors: [memory_limiter, signature, sampling], ...}

| setting                  | default | meaning                                                |
|--------------------------|---------|--------------------------------------------------------|
| check_interval           | 1s      | how often resident memory (RSS) is read                |
| limit_mib                | 0       | hard limit, MiB of RSS                                 |
| spike_limit_mib          | 20% of the limit | headroom: soft limit = limit − spike          |
| limit_percentage         | 0       | hard limit as % of the memory available (cgroup limit, else RAM); used when limit_mib is 0 |
| spike_limit_percentage   | 0       | spike as % of the memory available                     |

One of ``limit_mib`` / ``limit_percentage`` is required.

Behaviour: RSS is read from ``/proc/self/statm`` at most once per ``check_interval``, when
a request arrives (no background task). At or above the **soft** limit every request is
refused with a retryable answer (HTTP 503 + ``Retry-After``, gRPC ``UNAVAILABLE`` with
``RetryInfo``; refusal reason ``memory_soft_limit``), so the applications' SDKs retry
later; at or above the **hard** limit the same, with reason ``memory_hard_limit``, an error
log line (at most one per 10 s) and a garbage collection. Whenever memory is over the soft
limit the allocator is asked to return free memory to the OS (glibc ``malloc_trim``) before
the decision, since CPython keeps freed memory otherwise and RSS would stay high after a
spike. Nothing already accepted is touched: the limiter only stops new data from coming in,
so the exporter queues can drain.

Unlike the Collector's processor this is an admission check, run before the request is
accepted (a processor that raised would fail open, and a refusal must happen before the
receiver answers); ``process()`` does nothing, so its place in the list does not matter.
It lives in ``collector/`` because it reads the process's state (processors do no I/O).
Without ``/proc`` (not Linux) it logs a warning once and never refuses.

Metrics: ``otelcol_receiver_refused_log_records{reason="memory_soft_limit"|"memory_hard_limit"}``,
``lipservice_memory_limiter_refusing``, ``lipservice_memory_limiter_usage_bytes``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import Field, model_validator

from collector import metrics
from collector.config import Duration, StrictModel
from collector.pipeline import Refused
from collector.receivers import ThrottledLog
from processors.base import LogBatch

log = logging.getLogger("lipservice.memory_limiter")

MIB = 1024 * 1024


class Config(StrictModel):
    check_interval: Duration = Field(1.0, gt=0)
    limit_mib: int = Field(0, ge=0)
    spike_limit_mib: int = Field(0, ge=0)
    limit_percentage: int = Field(0, ge=0, le=100)
    spike_limit_percentage: int = Field(0, ge=0, le=100)

    @model_validator(mode="after")
    def _limits(self) -> Config:
        if not self.limit_mib and not self.limit_percentage:
            raise ValueError("set limit_mib or limit_percentage (the hard limit)")
        if self.limit_mib and self.spike_limit_mib >= self.limit_mib:
            raise ValueError(f"spike_limit_mib ({self.spike_limit_mib}) must be below "
                             f"limit_mib ({self.limit_mib})")
        if (not self.limit_mib and self.spike_limit_percentage
                and self.spike_limit_percentage >= self.limit_percentage):
            raise ValueError("spike_limit_percentage must be below limit_percentage")
        return self


def read_rss() -> int | None:
    """Resident set size of this process in bytes (``/proc/self/statm``), None if unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cgroup_limit_files() -> list[Path]:
    """memory.max (cgroup v2) / memory.limit_in_bytes (v1) of this process's cgroup, then
    of the cgroup root as mounted (inside a container, that root is the container's)."""
    files = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and path.startswith("/"):
            files.append(Path(f"/sys/fs/cgroup{path.rstrip('/')}/memory.max"))
        elif "memory" in controllers.split(",") and path.startswith("/"):
            files.append(Path(f"/sys/fs/cgroup/memory{path.rstrip('/')}/memory.limit_in_bytes"))
    files += [Path("/sys/fs/cgroup/memory.max"),
              Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")]
    return files


def available_memory() -> int | None:
    """Bytes this process may use: the cgroup memory limit when lower than physical RAM,
    else RAM; None if unknown."""
    sizes: list[int] = []
    for path in _cgroup_limit_files():
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            sizes.append(int(text))
    with contextlib.suppress(OSError, ValueError):
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return min(sizes) if sizes else None


def _malloc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        fn = None
    if fn is None:
        return lambda: None
    return lambda: fn(0) and None


class MemoryLimiter:
    """Admission check on resident memory; see the module docstring.

    config: Config; usage: callable returning RSS bytes or None (default: read_rss);
    total: bytes available for the percentage limits (default: available_memory()).
    Raises ValueError when percentages are set and the available memory is unknown.
    """

    Config = Config

    def __init__(self, config: Config, usage: Callable[[], int | None] = read_rss,
                 total: int | None = None, name: str = "memory_limiter") -> None:
        self.config = config
        self.name = name
        self.usage = usage
        if config.limit_mib:
            self.hard_limit = config.limit_mib * MIB
            spike = (config.spike_limit_mib * MIB if config.spike_limit_mib
                     else self.hard_limit // 5)
        else:
            total = total if total is not None else available_memory()
            if not total:
                raise ValueError("memory_limiter: limit_percentage needs the machine's memory "
                                 "size, which cannot be read here; use limit_mib")
            self.hard_limit = total * config.limit_percentage // 100
            spike = (total * config.spike_limit_percentage // 100
                     if config.spike_limit_percentage else self.hard_limit // 5)
        self.soft_limit = self.hard_limit - spike
        self.level = 0  # 0 below soft, 1 soft, 2 hard
        self.last_usage: int | None = None
        self._next_check = 0.0
        self._trim = _malloc_trim()
        self._log = ThrottledLog(log)
        self._warned_unknown = False
        self._m_refusing = metrics.MEMORY_LIMITER_REFUSING.labels(name)
        self._m_usage = metrics.MEMORY_LIMITER_USAGE.labels(name)

    def process(self, batch: LogBatch) -> None:
        """Nothing: the limiter works in :meth:`check_admission`."""

    def check_admission(self) -> Refused | None:
        """A Refused (retryable, HTTP 503 / gRPC UNAVAILABLE) while memory is at or over
        the soft limit, else None. Reads RSS at most once per check_interval."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.config.check_interval
            self._measure()
        if not self.level:
            return None
        reason = "memory_hard_limit" if self.level == 2 else "memory_soft_limit"
        limit = self.hard_limit if self.level == 2 else self.soft_limit
        return Refused(f"memory usage {(self.last_usage or 0) / MIB:.0f} MiB is over the "
                       f"{'hard' if self.level == 2 else 'soft'} limit of {limit / MIB:.0f} "
                       f"MiB; retry later", reason,
                       retry_after=max(1.0, math.ceil(self.config.check_interval)),
                       unavailable=True)

    def _measure(self) -> None:
        used = self.usage()
        if used is None:
            if not self._warned_unknown:
                log.warning("memory_limiter: cannot read this process's memory usage; "
                            "the limiter will not refuse data")
                self._warned_unknown = True
            self.level = 0
            return
        if used >= self.soft_limit:
            if used >= self.hard_limit:
                gc.collect()
            self._trim()
            used = self.usage() or used
        level = 2 if used >= self.hard_limit else 1 if used >= self.soft_limit else 0
        if level == 2:
            self._log.error("hard", "memory_limiter: memory usage %d MiB is over the hard "
                            "limit %d MiB; refusing data", used // MIB, self.hard_limit // MIB)
        elif level == 1 and self.level == 0:
            log.warning("memory_limiter: memory usage %d MiB is over the soft limit %d MiB; "
                        "refusing data until it drops", used // MIB, self.soft_limit // MIB)
        elif level == 0 and self.level:
            log.info("memory_limiter: memory usage %d MiB is below the soft limit again; "
                     "accepting data", used // MIB)
        self.level = level
        self.last_usage = used
        self._m_usage.set(used)
        self._m_refusing.set(1 if level else 0)
