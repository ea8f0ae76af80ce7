"""Vector index: a Faiss inner-product index over normalised vectors, keyed by int64 ids.

Contract:

* Vectors are ``float32`` ``[n, dim]`` with unit norm, so inner product = cosine similarity; scores are
  similarities (higher is better).
* ``kind="flat"`` (default, exact): ``IndexIDMap2(IndexFlatIP)``. ``kind="hnsw"`` (approximate graph):
  ``IndexIDMap2(IndexHNSWFlat)``; Faiss cannot delete from an HNSW graph, so :meth:`VectorIndex.remove`
  rebuilds the graph from the remaining vectors. ``kind="ivf"`` (approximate, inverted lists):
  ``IndexIVFFlat`` with native int64 ids and deletion. IVF needs training data: until the index holds
  ``nlist * ivf_min_points_per_list`` vectors it stays an exact flat index (with a :class:`UserWarning`) and is
  trained and converted automatically once enough vectors have been added.
* Ids are caller-chosen int64 (the passage store's row ids); :meth:`VectorIndex.remove` deletes by id and
  :meth:`VectorIndex.add` can be called any number of times (incremental indexing).
* Persistence is ``faiss.write_index`` / ``faiss.read_index`` (written to a temporary file, then renamed).
  ``faiss`` and ``numpy`` are imported lazily.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError
from block_attention.core.errors import IndexFormatError
from block_attention.core.extras import require

if TYPE_CHECKING:
    import numpy as np

IndexKind = Literal["flat", "hnsw", "ivf"]
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexConfig:
    """Index type and its tuning knobs (HNSW graph degree and beam widths; IVF list count and probes).

    ``ivf_nlist=None`` picks ``min(4 * sqrt(n), n / ivf_min_points_per_list)`` lists when training.
    """

    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    ivf_nlist: int | None = None
    ivf_nprobe: int = 8
    ivf_min_points_per_list: int = 39

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"Index kind must be one of {', '.join(INDEX_KINDS)}, got {self.kind!r}; use 'flat'.")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe", "ivf_min_points_per_list"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"IndexConfig.{name} must be a positive int, got {value!r}.")
        if self.ivf_nlist is not None and (not is_int(self.ivf_nlist) or self.ivf_nlist < 1):
            raise ConfigError(
                f"IndexConfig.ivf_nlist must be a positive int or None (automatic), got {self.ivf_nlist!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def ivf_lists_for(self, n: int) -> int | None:
        """Number of IVF lists to train on ``n`` vectors, or ``None`` when ``n`` is too small to train."""
        if self.ivf_nlist is not None:
            nlist = self.ivf_nlist
            return nlist if n >= nlist * self.ivf_min_points_per_list else None
        nlist = min(int(4 * math.sqrt(n)), n // self.ivf_min_points_per_list)
        return nlist if nlist >= 2 else None


class VectorIndex:
    """A Faiss index of normalised vectors under int64 ids (see the module docstring for the contract)."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        if not is_int(dim) or dim < 1:
            raise ConfigError(f"Index dimension must be a positive int, got {dim!r}.")
        require("retrieval", "faiss")
        self.dim = dim
        self.config = config or IndexConfig()
        self._index: Any = self._new_idmap_index("hnsw" if self.config.kind == "hnsw" else "flat")
        self._warned_untrained = False

    # -- properties -------------------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The requested index kind."""
        return self.config.kind

    @property
    def effective_kind(self) -> str:
        """The kind actually built (``"flat"`` while an IVF index waits for enough training vectors)."""
        import faiss

        if isinstance(self._index, faiss.IndexIVF):
            return "ivf"
        inner = faiss.downcast_index(self._index.index)
        return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"

    def __len__(self) -> int:
        return int(self._index.ntotal)

    # -- mutation ---------------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (``[n, dim]`` float32) under ``ids`` (``[n]`` int64, not already present)."""
        ids, vectors = self._check(ids, vectors)
        if len(ids) == 0:
            return
        self._index.add_with_ids(vectors, ids)
        if self.kind == "ivf" and self.effective_kind != "ivf":
            self._maybe_train_ivf()

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors stored under ``ids`` (unknown ids are ignored); returns how many were removed."""
        import numpy as np

        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) == 0 or len(self) == 0:
            return 0
        if self.effective_kind == "hnsw":
            all_ids, all_vectors = self._export()
            keep = ~np.isin(all_ids, ids)
            self._index = self._new_idmap_index("hnsw")
            if keep.any():
                self._index.add_with_ids(np.ascontiguousarray(all_vectors[keep]), np.ascontiguousarray(all_ids[keep]))
            return int((~keep).sum())
        return int(self._index.remove_ids(ids))

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole index by one built from ``ids``/``vectors`` (IVF is retrained when possible)."""
        self._index = self._new_idmap_index("hnsw" if self.kind == "hnsw" else "flat")
        self.add(ids, vectors)

    # -- queries ----------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query row, best first; missing slots have id ``-1``."""
        import numpy as np

        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError(f"Queries must have shape [n, {self.dim}], got {queries.shape}; embed them first.")
        k = min(int(k), len(self))
        if k <= 0:
            n = queries.shape[0]
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def ids(self) -> np.ndarray:
        """All stored ids (unordered)."""
        import faiss
        import numpy as np

        if isinstance(self._index, faiss.IndexIVF):
            invlists = self._index.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(self._index.nlist)
                if invlists.list_size(i)
            ]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    # -- persistence ------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index with ``faiss.write_index`` (atomically: temporary file, then rename)."""
        import faiss

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, dim: int, config: IndexConfig | None = None) -> VectorIndex:
        """Read an index written by :meth:`save`; raises :class:`IndexFormatError` when it cannot be used."""
        faiss = require("retrieval", "faiss")

        path = Path(path)
        try:
            raw = faiss.read_index(str(path))
        except Exception as exc:  # noqa: BLE001 - Faiss raises RuntimeError with a C++ message
            raise IndexFormatError(
                f"Cannot read the Faiss index {str(path)!r} ({exc}); rebuild it with Retriever.rebuild_index()."
            ) from exc
        if raw.d != dim:
            raise IndexFormatError(
                f"The Faiss index {str(path)!r} has dimension {raw.d} but the manifest says {dim}; "
                "rebuild it with Retriever.rebuild_index()."
            )
        if not isinstance(raw, (faiss.IndexIDMap2, faiss.IndexIVFFlat)):
            raise IndexFormatError(
                f"The Faiss index {str(path)!r} is a {type(raw).__name__}, which this library did not write; "
                "rebuild it with Retriever.rebuild_index()."
            )
        index = cls(dim, config)
        index._index = raw
        index._apply_runtime_params()
        return index

    # -- internals --------------------------------------------------------------------------------------------

    def _check(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or vectors.shape[0] != len(ids):
            raise ConfigError(
                f"Expected {len(ids)} vectors of dimension {self.dim}, got an array of shape {vectors.shape}; "
                "embed with the model the index was built with."
            )
        return ids, vectors

    def _new_idmap_index(self, kind: str) -> Any:
        import faiss

        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.config.hnsw_ef_construction
            inner.hnsw.efSearch = self.config.hnsw_ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)  # the faiss wrapper keeps a reference to ``inner``

    def _apply_runtime_params(self) -> None:
        import faiss

        if isinstance(self._index, faiss.IndexIVF):
            self._index.nprobe = self.config.ivf_nprobe
            return
        inner = faiss.downcast_index(self._index.index)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = self.config.hnsw_ef_search

    def _export(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of an ``IndexIDMap2``-based index."""
        import faiss
        import numpy as np

        n = len(self)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        if n == 0:
            return ids, np.zeros((0, self.dim), dtype=np.float32)
        vectors = faiss.downcast_index(self._index.index).reconstruct_n(0, n)
        return ids, np.asarray(vectors, dtype=np.float32)

    def _maybe_train_ivf(self) -> None:
        import faiss

        n = len(self)
        nlist = self.config.ivf_lists_for(n)
        if nlist is None:
            if not self._warned_untrained:
                need = (self.config.ivf_nlist or 2) * self.config.ivf_min_points_per_list
                warnings.warn(
                    f"An IVF index needs at least {need} vectors to train but has {n}; using an exact flat index "
                    "until enough passages are added (or choose index_kind='flat').",
                    UserWarning,
                    stacklevel=4,
                )
                self._warned_untrained = True
            return
        ids, vectors = self._export()
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = min(self.config.ivf_min_points_per_list, 39)
        ivf.train(vectors)
        ivf.add_with_ids(vectors, ids)
        self._index = ivf
        self._apply_runtime_params()



__all__ = ["INDEX_KINDS", "IndexConfig", "IndexKind", "VectorIndex"]
