"""Exporters by YAML type name (``exporters: {otlphttp/posthog: ...}``)."""

from __future__ import annotations

from typing import Any

from collector.config import component_type, import_object

EXPORTERS: dict[str, str] = {
    "otlphttp": "collector.exporters.otlphttp:OtlpHttpExporter",
    "otlp": "collector.exporters.otlp:OtlpGrpcExporter",
    "file": "collector.exporters.file:FileExporter",
    "debug": "collector.exporters.debug:DebugExporter",
}


def build_exporter(key: str, config: Any) -> Any:
    """An exporter instance for the YAML key ``type[/name]`` and its validated config."""
    return import_object(EXPORTERS[component_type(key)])(key, config)
