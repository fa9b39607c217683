"""Sampling processor (stand-in until issue #4 lands): keeps every record."""

from __future__ import annotations

from collector.config import StrictModel
from processors.base import LogBatch


class Config(StrictModel):
    dry_run: bool = False


class SamplingProcessor:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config

    def process(self, batch: LogBatch) -> None:
        return None
