"""Index manifest: the ``manifest.json`` describing how a retrieval index folder was built.

Contract: the manifest records the format version, the embedder (name and vector dimension), the index settings
(requested kind and tuning knobs, plus the kind actually built) and the chunking settings. It is plain JSON,
written atomically (temporary file, then rename). Reading a missing, malformed or newer-format manifest raises
:class:`IndexNotFoundError` / :class:`IndexFormatError` with the fix in the message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError
from block_attention.core.errors import IndexFormatError, IndexNotFoundError
from .chunking import ChunkingConfig
from .index import IndexConfig

FORMAT_NAME = "block_attention.retrieval"
MANIFEST_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKEN_COUNTERS: tuple[str, ...] = ("words", "custom")


@dataclass(frozen=True)
class Manifest:
    """What an index folder was built with. ``token_counter`` is ``"words"`` (default) or ``"custom"``."""

    embedder_name: str
    dimension: int
    index: IndexConfig = field(default_factory=IndexConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    token_counter: str = "words"
    effective_index_kind: str | None = None
    passages: int = 0
    format_version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.embedder_name, str) or not self.embedder_name:
            raise ConfigError(f"Manifest embedder_name must be a non-empty str, got {self.embedder_name!r}.")
        if not is_int(self.dimension) or self.dimension < 1:
            raise ConfigError(f"Manifest dimension must be a positive int, got {self.dimension!r}.")
        if self.token_counter not in TOKEN_COUNTERS:
            raise ConfigError(f"Manifest token_counter must be one of {TOKEN_COUNTERS}, got {self.token_counter!r}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "embedder": {"name": self.embedder_name, "dimension": self.dimension},
            "index": {**self.index.to_dict(), "effective_kind": self.effective_index_kind or self.index.kind},
            "chunking": {
                "chunk_tokens": self.chunking.chunk_tokens,
                "overlap_tokens": self.chunking.overlap_tokens,
                "token_counter": self.token_counter,
            },
            "passages": self.passages,
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = "manifest.json") -> Manifest:
        fix = "rebuild the index with Retriever.create(..., overwrite=True) and ingest the corpus again"
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"{where} is not a block_attention retrieval manifest; {fix}.")
        version = data.get("format_version")
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise IndexFormatError(
                f"{where} has format version {version!r} but this library reads versions up to {MANIFEST_VERSION}; "
                f"upgrade block_attention or {fix}."
            )
        try:
            embedder = data["embedder"]
            index = dict(data["index"])
            chunking = data["chunking"]
            return cls(
                embedder_name=embedder["name"],
                dimension=embedder["dimension"],
                index=IndexConfig.from_dict(index),
                chunking=ChunkingConfig(chunking["chunk_tokens"], chunking["overlap_tokens"]),
                token_counter=chunking.get("token_counter", "words"),
                effective_index_kind=index.get("effective_kind"),
                passages=int(data.get("passages", 0)),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{where} is damaged ({type(exc).__name__}: {exc}); {fix}.") from None


def manifest_path(folder: str | Path) -> Path:
    return Path(folder) / MANIFEST_FILE


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` into ``folder`` atomically."""
    path = manifest_path(folder)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``manifest.json`` from ``folder`` (raises :class:`IndexNotFoundError` when there is none)."""
    path = manifest_path(folder)
    if not path.is_file():
        raise IndexNotFoundError(
            f"No retrieval index at {str(Path(folder))!r} (missing {MANIFEST_FILE}); create one with "
            "Retriever.create(path) and ingest a corpus, or check the path."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(
            f"{str(path)!r} cannot be read ({exc}); rebuild the index with Retriever.create(..., overwrite=True)."
        ) from None
    return Manifest.from_json(data, where=str(path))


__all__ = ["MANIFEST_VERSION", "MANIFEST_FILE", "Manifest", "manifest_path", "read_manifest", "write_manifest"]
