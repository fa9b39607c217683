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
}


def load_processor_class(type_name: str) -> Any:
    """The processor class for a YAML type name. Raises KeyError for unknown names."""
    module, _, cls = PROCESSORS[type_name].partition(":")
    return getattr(importlib.import_module(module), cls)
