"""Shared helpers of the server tests (imported by basename): documents, the served app handle, metric parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from block_attention.core.blocks import Block

DOCS = [
    {"doc_id": "pharos", "title": "Pharos", "text": "The lighthouse of Alexandria stood on the island of Pharos."},
    {"doc_id": "blocks", "text": "Block attention caches each retrieved passage separately and reuses it."},
    {"text": "The quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004."},
]
QUESTION = "Where did the lighthouse stand?"


def as_blocks(docs: list[dict[str, str]]) -> list[Block]:
    return [Block(d["text"], doc_id=d.get("doc_id"), title=d.get("title")) for d in docs]


@dataclass
class Served:
    base_url: str
    engine: Any
    app: Any

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60, **kwargs)


def metric(text: str, name: str, labels: str = "") -> float:
    """Value of one sample in a Prometheus text exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
