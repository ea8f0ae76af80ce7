"""Local retrieval for Block-Attention RAG: every retrieved passage becomes one cacheable block.

Pipeline: :func:`load_corpus` (folder of ``.txt``/``.md``/``.jsonl``) -> :func:`chunk_document` (passages with
stable ids ``"<doc_id>#<chunk>:<hash12>"``) -> :class:`Embedder` (sentence-transformers, bundled offline
all-MiniLM-L6-v2 by default) -> :class:`VectorIndex` (Faiss flat/HNSW/IVF) + :class:`PassageStore` (SQLite),
all driven by :class:`Retriever`::

    from block_attention.retrieval import Retriever, demo_corpus_dir

    retriever = Retriever.open("my-index")
    retriever.ingest(demo_corpus_dir())
    blocks = [hit.to_block() for hit in retriever.search("Who built the Bell Rock lighthouse?", top_k=3)]

Importing this package does no heavy work: torch, sentence-transformers and faiss load on first use.
"""

from block_attention.core.errors import (
    CorpusFormatError,
    CorpusNotFoundError,
    EmbedderLoadError,
    EmbedderMismatchError,
    EmptyCorpusError,
    IndexExistsError,
    IndexFormatError,
    IndexNotFoundError,
    RetrievalError,
)
from block_attention.core.packaged import DemoQuestion, demo_corpus_dir, demo_questions
from .chunking import (
    ChunkingConfig,
    Passage,
    TokenCounter,
    chunk_document,
    chunk_text,
    passage_digest,
    count_words,
    make_passage_id,
    token_counter_from_tokenizer,
)
from .corpus import SUPPORTED_EXTENSIONS, Document, list_sources, load_corpus, load_file
from .embedder import (
    DEFAULT_MODEL,
    Embedder,
    EmbedderConfig,
    TextEmbedder,
    default_model_path,
    is_text_embedder,
)
from .index import INDEX_KINDS, IndexConfig, VectorIndex
from .manifest import MANIFEST_VERSION, Manifest, read_manifest
from .passages import PassageStore
from .retriever import IngestReport, Retriever, ScoredPassage

__all__ = [
    "DEFAULT_MODEL",
    "MANIFEST_VERSION",
    "INDEX_KINDS",
    "SUPPORTED_EXTENSIONS",
    "ChunkingConfig",
    "CorpusFormatError",
    "CorpusNotFoundError",
    "DemoQuestion",
    "Document",
    "Embedder",
    "EmbedderConfig",
    "EmbedderLoadError",
    "EmbedderMismatchError",
    "EmptyCorpusError",
    "IndexConfig",
    "IndexExistsError",
    "IndexFormatError",
    "IndexNotFoundError",
    "IngestReport",
    "Manifest",
    "Passage",
    "PassageStore",
    "RetrievalError",
    "Retriever",
    "ScoredPassage",
    "TextEmbedder",
    "TokenCounter",
    "VectorIndex",
    "chunk_document",
    "chunk_text",
    "passage_digest",
    "count_words",
    "default_model_path",
    "demo_corpus_dir",
    "demo_questions",
    "is_text_embedder",
    "list_sources",
    "load_corpus",
    "load_file",
    "make_passage_id",
    "read_manifest",
    "token_counter_from_tokenizer",
]
