"""Retriever: ingest a corpus into a persistent local index and search it for blocks.

Contract:

* An index is a folder holding ``manifest.json`` (see :mod:`.manifest`), ``passages.sqlite3`` (see :mod:`.store`)
  and ``index.faiss`` (see :mod:`.index`). :meth:`Retriever.create` makes one, :meth:`Retriever.load` opens one
  (raising :class:`IndexNotFoundError` when there is none), :meth:`Retriever.open` does whichever applies.
* :meth:`Retriever.ingest` / :meth:`Retriever.add_documents` are incremental and idempotent. Documents are
  chunked into passages with stable ids (see :mod:`.chunking`); passages already stored are skipped, new ones
  are embedded and added, and stored passages of an ingested document that are no longer produced are deleted.
  When ingesting a folder or file, each file found is authoritative for its source: records that disappeared
  from a re-ingested ``.jsonl`` file, and the passages of a file that became empty, are deleted too. Files no
  longer in the folder are left alone (delete them with :meth:`Retriever.delete` and their relative path).
  The returned :class:`IngestReport` lists added and removed passage ids so a caller can drop their KV.
* :meth:`Retriever.delete` accepts passage ids, doc ids or sources and returns the removed passage ids.
* :meth:`Retriever.search` embeds the query and returns up to ``top_k`` :class:`ScoredPassage` (cosine
  similarity, best first; :meth:`Retriever.search_many` embeds a batch of queries at once);
  ``ScoredPassage.to_block()`` gives the cacheable :class:`~block_attention.core.blocks.Block`.
* Every change is saved before the call returns (store transaction committed, Faiss index and manifest written
  atomically). On load, an index file that disagrees with the store is rebuilt from the stored vectors.
* The embedder recorded in the manifest is used on load; passing a different one raises
  :class:`EmbedderMismatchError`. Heavy libraries (torch, sentence-transformers, faiss) load on first use.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from block_attention.core.blocks import Block, check_text
from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError, InvalidRequestError
from block_attention.core.errors import EmbedderMismatchError, EmptyCorpusError, IndexExistsError, IndexFormatError
from .chunking import ChunkingConfig, Passage, TokenCounter, chunk_document
from .corpus import Document, check_unique_doc_ids, list_sources, load_corpus
from .embedder import Embedder, TextEmbedder, is_text_embedder
from .index import IndexConfig, VectorIndex
from .manifest import MANIFEST_FILE, Manifest, read_manifest, write_manifest
from .passages import STORE_FILE, PassageStore

if TYPE_CHECKING:
    import numpy as np

INDEX_FILE = "index.faiss"
_EMBED_CHUNK = 256


@dataclass(frozen=True)
class ScoredPassage:
    """A search hit: the passage and its similarity to the query (higher is better)."""

    passage: Passage
    score: float

    @property
    def passage_id(self) -> str:
        return self.passage.passage_id

    def to_block(self) -> Block:
        """The hit as a :class:`~block_attention.core.blocks.Block` keyed by its passage id, carrying the score."""
        return self.passage.to_block(score=self.score)


@dataclass(frozen=True)
class IngestReport:
    """Outcome of an ingest: passage ids added and removed (drop their KV), and how many were unchanged."""

    documents: int
    passages: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def summary(self) -> str:
        """One line for people: ``N documents -> M passages (a added, r removed, u unchanged)``."""
        return (f"{self.documents} documents -> {self.passages} passages ({len(self.added)} added, "
                f"{len(self.removed)} removed, {self.unchanged} unchanged)")


class Retriever:
    """A persistent local passage index (see the module docstring). Build with ``create``/``load``/``open``."""

    def __init__(
        self,
        path: Path,
        *,
        manifest: Manifest,
        embedder: TextEmbedder,
        store: PassageStore,
        index: VectorIndex,
        count_tokens: TokenCounter | None = None,
    ) -> None:
        self.path = path
        self._manifest = manifest
        self._embedder = embedder
        self._store = store
        self._index = index
        self._count_tokens = count_tokens
        self._lock = threading.RLock()

    # -- construction -----------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        embedder: TextEmbedder | str | None = None,
        index_kind: str = "flat",
        chunk_tokens: int = 200,
        overlap_tokens: int = 0,
        *,
        index_config: IndexConfig | None = None,
        count_tokens: TokenCounter | None = None,
        overwrite: bool = False,
    ) -> Retriever:
        """Create an empty index in folder ``path`` (made if needed).

        ``embedder`` is an :class:`Embedder`, a sentence-transformers model name/path, or ``None`` for the bundled
        offline all-MiniLM-L6-v2. ``index_config`` gives full control over the Faiss index (its ``kind`` wins over
        ``index_kind``). ``count_tokens`` replaces the whitespace-word count used for chunking; it is not saved,
        so pass it again to :meth:`load` before ingesting more. ``overwrite=True`` replaces an existing index.
        """
        folder = Path(path).expanduser()
        if index_config is None:
            index_config = IndexConfig(kind=index_kind)
        elif index_kind not in ("flat", index_config.kind):
            raise ConfigError(
                f"index_kind={index_kind!r} contradicts index_config.kind={index_config.kind!r}; pass only one."
            )
        chunking = ChunkingConfig(chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
        if count_tokens is not None and not callable(count_tokens):
            raise ConfigError("count_tokens must be a callable str -> int, or None for whitespace words.")
        if (folder / MANIFEST_FILE).exists():
            if not overwrite:
                raise IndexExistsError(
                    f"An index already exists at {str(folder)!r}; open it with Retriever.load(path) or pass "
                    "overwrite=True to replace it."
                )
            for name in (MANIFEST_FILE, STORE_FILE, INDEX_FILE, STORE_FILE + "-journal"):
                (folder / name).unlink(missing_ok=True)
        elif folder.exists() and not folder.is_dir():
            raise IndexExistsError(f"{str(folder)!r} is a file; pass a folder path for the index.")
        emb = _resolve_embedder(embedder)
        dim = emb.dimension
        folder.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(
            embedder_name=emb.name,
            dimension=dim,
            index=index_config,
            chunking=chunking,
            token_counter="custom" if count_tokens is not None else "words",
        )
        retriever = cls(
            folder,
            manifest=manifest,
            embedder=emb,
            store=PassageStore(folder / STORE_FILE),
            index=VectorIndex(dim, index_config),
            count_tokens=count_tokens,
        )
        retriever.save()
        return retriever

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        embedder: TextEmbedder | str | None = None,
        *,
        count_tokens: TokenCounter | None = None,
    ) -> Retriever:
        """Open the index in folder ``path``; raises :class:`IndexNotFoundError` when there is none.

        ``embedder=None`` builds the embedder recorded in the manifest (loaded lazily on first search/ingest).
        """
        folder = Path(path).expanduser()
        manifest = read_manifest(folder)
        if not (folder / STORE_FILE).is_file():
            raise IndexFormatError(
                f"The index at {str(folder)!r} has no {STORE_FILE}; rebuild it with "
                "Retriever.create(path, overwrite=True) and ingest the corpus again."
            )
        if embedder is None:
            emb: TextEmbedder = Embedder(manifest.embedder_name)
        else:
            emb = _resolve_embedder(embedder)
            if emb.name != manifest.embedder_name:
                raise EmbedderMismatchError(
                    f"The index at {str(folder)!r} was built with embedder {manifest.embedder_name!r}, not "
                    f"{emb.name!r}; load it with that embedder (or embedder=None), or rebuild the index."
                )
        store = PassageStore(folder / STORE_FILE)
        index_path = folder / INDEX_FILE
        index: VectorIndex | None = None
        problem = f"{INDEX_FILE} is missing"
        if index_path.is_file():
            try:
                index = VectorIndex.load(index_path, manifest.dimension, manifest.index)
            except IndexFormatError as exc:
                problem = str(exc)
        retriever = cls(
            folder,
            manifest=manifest,
            embedder=emb,
            store=store,
            index=index if index is not None else VectorIndex(manifest.dimension, manifest.index),
            count_tokens=count_tokens,
        )
        if index is not None and not retriever._index_matches_store():
            index, problem = None, f"{INDEX_FILE} is out of sync with the passage store"
        if index is None:
            warnings.warn(
                f"Rebuilding the Faiss index at {str(folder)!r} from the stored vectors ({problem}).",
                UserWarning,
                stacklevel=2,
            )
            retriever.rebuild_index()
        return retriever

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], embedder: TextEmbedder | str | None = None, **create_kwargs: Any
    ) -> Retriever:
        """:meth:`load` the index at ``path`` if there is one, else :meth:`create` it with ``create_kwargs``.

        When an index exists, only ``count_tokens`` is taken from ``create_kwargs``; the other settings are the
        ones recorded in its manifest.
        """
        if (Path(path).expanduser() / MANIFEST_FILE).exists():
            return cls.load(path, embedder, count_tokens=create_kwargs.get("count_tokens"))
        return cls.create(path, embedder, **create_kwargs)

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def embedder(self) -> TextEmbedder:
        return self._embedder

    @property
    def index_kind(self) -> str:
        """The Faiss index kind actually in use (``"flat"`` while an IVF index waits for training data)."""
        return self._index.effective_kind

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, passage_id: object) -> bool:
        return isinstance(passage_id, str) and self._store.get(passage_id) is not None

    def __repr__(self) -> str:
        return (
            f"Retriever(path={str(self.path)!r}, passages={len(self)}, index={self.index_kind!r}, "
            f"embedder={self._manifest.embedder_name!r})"
        )

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the SQLite connection (everything is already saved)."""
        self._store.close()

    # -- ingest / delete --------------------------------------------------------------------------------------

    def ingest(
        self,
        source: str | os.PathLike[str] | Iterable[Document],
        show_progress: bool = True,
        *,
        root: str | os.PathLike[str] | None = None,
    ) -> IngestReport:
        """Ingest a corpus folder, a single corpus file (``root``: see :func:`load_corpus`) or documents."""
        if isinstance(source, (str, os.PathLike)):
            documents = load_corpus(source, root=root)
            sources = list_sources(source, root=root)  # includes emptied files, whose old passages must go
            return self._sync(documents, sources=sources, show_progress=show_progress)
        return self.add_documents(source, show_progress=show_progress)

    def add_documents(self, documents: Document | Iterable[Document], show_progress: bool = True) -> IngestReport:
        """Add or update documents; a document whose id is already stored replaces its old passages."""
        docs = [documents] if isinstance(documents, Document) else list(documents)
        for doc in docs:
            if not isinstance(doc, Document):
                raise InvalidRequestError(
                    f"add_documents expects Document items, got {type(doc).__name__}; "
                    "build Document(doc_id=..., title=..., text=...)."
                )
        return self._sync(docs, sources=(), show_progress=show_progress)

    def delete(self, ids: str | Iterable[str]) -> list[str]:
        """Delete passages by passage id, doc id or source; returns the removed passage ids (unknown ids: none)."""
        import numpy as np

        wanted = [ids] if isinstance(ids, str) else list(ids)
        for value in wanted:
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"delete expects str ids, got {type(value).__name__}; pass passage ids or doc ids."
                )
        with self._lock:
            found = self._store.find(passage_ids=wanted, doc_ids=wanted, sources=wanted)
            if not found:
                return []
            rows = sorted(found)
            with self._store.transaction():
                self._store.delete_rows(rows)
            self._index.remove(np.asarray(rows, dtype=np.int64))
            self.save()
        return [found[r] for r in rows]

    # -- queries ----------------------------------------------------------------------------------------------

    def search(self, query: str, top_k: int = 5) -> list[ScoredPassage]:
        """The ``top_k`` passages most similar to ``query``, best first (fewer when the index is smaller)."""
        return self.search_many([query], top_k)[0]

    def search_many(self, queries: Sequence[str], top_k: int = 5) -> list[list[ScoredPassage]]:
        """:meth:`search` for several queries at once (one embedding batch); one result list per query."""
        if isinstance(queries, str):
            raise InvalidRequestError("search_many expects a list of queries; use search() for a single one.")
        queries = list(queries)
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise InvalidRequestError(f"A search query must be a non-empty str, got {query!r}.")
            check_text(query, "A search query")
        if not is_int(top_k) or top_k < 1:
            raise InvalidRequestError(f"top_k must be a positive int, got {top_k!r}.")
        if not queries:
            return []
        if len(self._index) == 0:
            return [[] for _ in queries]
        vectors = self._checked(self._embedder.embed_queries(queries))
        with self._lock:
            scores, ids = self._index.search(vectors, top_k)
            hits = [
                [(int(i), float(score)) for i, score in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)
            ]
            rows = self._store.get_rows({i for row in hits for i, _ in row})
        return [[ScoredPassage(rows[i], score) for i, score in row if i in rows] for row in hits]

    def get(self, passage_id: str) -> Passage | None:
        """The stored passage with this id, or ``None``."""
        return self._store.get(passage_id)

    def passages(self) -> Iterator[Passage]:
        """Every stored passage, in insertion order."""
        return self._store.iter_passages()

    # -- persistence ------------------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the Faiss index and the manifest (the store is committed by every change already)."""
        with self._lock:
            self._index.save(self.path / INDEX_FILE)
            self._manifest = replace(
                self._manifest, effective_index_kind=self._index.effective_kind, passages=len(self._store)
            )
            write_manifest(self.path, self._manifest)

    def rebuild_index(self, index_config: IndexConfig | str | None = None) -> None:
        """Rebuild the Faiss index from the stored vectors (no re-embedding), optionally with another kind/config."""
        if isinstance(index_config, str):
            index_config = IndexConfig(kind=index_config)
        with self._lock:
            if index_config is not None:
                self._manifest = replace(self._manifest, index=index_config)
                self._index = VectorIndex(self._manifest.dimension, index_config)
            ids, vectors = self._store.vectors(self._manifest.dimension)
            self._index.rebuild(ids, vectors)
            self.save()

    # -- internals --------------------------------------------------------------------------------------------

    def _sync(self, docs: list[Document], *, sources: Sequence[str], show_progress: bool) -> IngestReport:
        from tqdm.auto import tqdm

        if not docs:
            raise EmptyCorpusError("No documents were given to ingest; pass a corpus folder or a non-empty list.")
        check_unique_doc_ids(docs)
        counter = self._counter()
        passages: list[Passage] = []
        for doc in tqdm(docs, desc="Chunking", unit="doc", disable=not show_progress or len(docs) < 2):
            passages.extend(chunk_document(doc, self._manifest.chunking, counter))
        if not passages:
            raise EmptyCorpusError("The documents given contain no text; add text before ingesting them.")
        with self._lock:
            existing = self._store.find(doc_ids=[d.doc_id for d in docs], sources=sources)
            existing_ids = set(existing.values())
            new_ids = {p.passage_id for p in passages}
            remove_rows = sorted(r for r, pid in existing.items() if pid not in new_ids)
            to_add = [p for p in passages if p.passage_id not in existing_ids]
            vectors = self._embed_passages(to_add, show_progress)
            with self._store.transaction():
                self._store.delete_rows(remove_rows)
                row_ids = self._store.insert(to_add, vectors)
            self._index.remove(remove_rows)
            self._index.add(row_ids, vectors)
            self.save()
        return IngestReport(
            documents=len(docs),
            passages=len(passages),
            added=tuple(p.passage_id for p in to_add),
            removed=tuple(existing[r] for r in remove_rows),
            unchanged=len(passages) - len(to_add),
        )

    def _embed_passages(self, passages: Sequence[Passage], show_progress: bool) -> np.ndarray:
        import numpy as np
        from tqdm.auto import tqdm

        dim = self._manifest.dimension
        if not passages:
            return np.zeros((0, dim), dtype=np.float32)
        texts = [p.embedding_text for p in passages]
        parts = []
        with tqdm(total=len(texts), desc="Embedding", unit="passage", disable=not show_progress) as bar:
            for start in range(0, len(texts), _EMBED_CHUNK):
                batch = texts[start : start + _EMBED_CHUNK]
                parts.append(self._checked(self._embedder.embed_passages(batch)))
                bar.update(len(batch))
        return np.concatenate(parts)

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        import numpy as np

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self._manifest.dimension:
            raise EmbedderMismatchError(
                f"Embedder {self._embedder.name!r} produced vectors of shape {vectors.shape}, but the index at "
                f"{str(self.path)!r} holds {self._manifest.dimension}-dimensional vectors; use the embedder it "
                "was built with or rebuild the index."
            )
        return vectors

    def _counter(self) -> TokenCounter | None:
        if self._count_tokens is None and self._manifest.token_counter == "custom":
            raise ConfigError(
                f"The index at {str(self.path)!r} was chunked with a custom token counter; pass the same "
                "count_tokens=... to Retriever.load before ingesting."
            )
        return self._count_tokens

    def _index_matches_store(self) -> bool:
        import numpy as np

        if len(self._index) != len(self._store):
            return False
        return bool(np.array_equal(np.sort(self._index.ids()), self._store.row_ids()))


def _resolve_embedder(embedder: TextEmbedder | str | None) -> TextEmbedder:
    if embedder is None:
        return Embedder()
    if isinstance(embedder, str):
        return Embedder(embedder)
    if is_text_embedder(embedder):
        return embedder  # type: ignore[return-value]
    raise ConfigError(
        f"embedder must be an Embedder, a sentence-transformers model name/path or None, got {type(embedder).__name__}."
    )


__all__ = ["INDEX_FILE", "IngestReport", "Retriever", "ScoredPassage"]
