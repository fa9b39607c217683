"""Batch processors, by the type name used in YAML (``processors: {signature: ...}``).

Each entry is ``"module:Class"``, imported only when a config names it, so a processor's
heavy dependencies (scikit-learn for clustering) cost nothing when it is not used.
"""

from __future__ import annotations

import importlib
from typing import Any

PROCESSORS: dict[str, str] = {
    "signature": "processors.signature:SignatureProcessor",
    "clustering": "processors.clustering:ClusteringProcessor",
    "sampling": "processors.sampling:SamplingProcessor",
    # An admission check rather than a batch processor (it reads the process's memory), so
    # it lives in collector/; named here so YAML lists it among processors, as the Collector.
    "memory_limiter": "collector.memory_limiter:MemoryLimiter",
}


def load_processor_class(type_name: str) -> Any:
    """The processor class for a YAML type name. Raises KeyError for unknown names."""
    module, _, cls = PROCESSORS[type_name].partition(":")
    return getattr(importlib.import_module(module), cls)
