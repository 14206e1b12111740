"""Fetching chunks through caching gateways (see gateway/). Placeholder until the gateway lands."""

from __future__ import annotations

from .config import Config
from .fetch import ChunkSource


def gateway_sources(config: Config) -> list[ChunkSource]:
    return []
