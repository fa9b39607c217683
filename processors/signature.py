"""Signature processor (stand-in until issue #3 lands): passes records through."""

from __future__ import annotations

from collector.config import StrictModel
from processors.base import LogBatch


class Config(StrictModel):
    pass


class SignatureProcessor:
    Config = Config

    def __init__(self, config: Config) -> None:
        self.config = config

    def process(self, batch: LogBatch) -> None:
        return None
