"""Faiss vector index: flat/HNSW/IVF add, search, remove, IVF training fallback and persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from block_attention.core.errors import ConfigError
from block_attention.retrieval import IndexConfig, IndexFormatError, VectorIndex

DIM = 32

pytestmark = pytest.mark.usefixtures("single_threaded")


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.arange(1000, 1000 + n, dtype=np.int64), vectors


def _ivf_config() -> IndexConfig:
    return IndexConfig(kind="ivf", ivf_nlist=4, ivf_nprobe=4, ivf_min_points_per_list=10)


KINDS = pytest.mark.parametrize(
    "config", [IndexConfig(), IndexConfig(kind="hnsw"), _ivf_config()], ids=["flat", "hnsw", "ivf"]
)


@KINDS
def test_add_search_remove(config: IndexConfig) -> None:
    ids, vectors = _data(200)
    index = VectorIndex(DIM, config)
    index.add(ids[:100], vectors[:100])
    index.add(ids[100:], vectors[100:])  # incremental
    assert len(index) == 200
    assert index.effective_kind == config.kind
    scores, found = index.search(vectors[:5], 3)
    assert found[:, 0].tolist() == ids[:5].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    assert index.remove(np.array([1000, 1001, 99999])) == 2
    assert len(index) == 198
    _, found = index.search(vectors[:2], 5)
    assert 1000 not in found and 1001 not in found
    assert sorted(index.ids().tolist()) == ids[2:].tolist()


def test_search_on_empty_or_small_index() -> None:
    index = VectorIndex(DIM)
    scores, found = index.search(np.zeros((1, DIM), dtype=np.float32), 5)
    assert scores.shape == (1, 0) and found.shape == (1, 0)
    ids, vectors = _data(2)
    index.add(ids, vectors)
    assert index.search(vectors[:1], 10)[1].shape == (1, 2)


def test_ivf_falls_back_to_flat_then_trains() -> None:
    ids, vectors = _data(60)
    index = VectorIndex(DIM, _ivf_config())
    with pytest.warns(UserWarning, match="IVF index needs at least 40 vectors"):
        index.add(ids[:20], vectors[:20])
    assert index.effective_kind == "flat" and index.kind == "ivf"
    assert index.search(vectors[:1], 1)[1][0, 0] == ids[0]
    index.add(ids[20:], vectors[20:])
    assert index.effective_kind == "ivf" and len(index) == 60
    assert index.search(vectors[30:31], 1)[1][0, 0] == ids[30]


def test_automatic_ivf_list_count() -> None:
    config = IndexConfig(kind="ivf")
    assert config.ivf_lists_for(50) is None
    assert config.ivf_lists_for(78) == 2
    assert config.ivf_lists_for(10_000) == 256


@KINDS
def test_save_load_roundtrip(tmp_path: Path, config: IndexConfig) -> None:
    ids, vectors = _data(80)
    index = VectorIndex(DIM, config)
    index.add(ids, vectors)
    index.remove(ids[:3])
    index.save(tmp_path / "index.faiss")
    loaded = VectorIndex.load(tmp_path / "index.faiss", DIM, config)
    assert loaded.effective_kind == config.kind and len(loaded) == 77
    for a, b in zip(index.search(vectors[:10], 5), loaded.search(vectors[:10], 5)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexFormatError, match="dimension"):
        VectorIndex.load(tmp_path / "index.faiss", DIM + 1, config)


def test_load_garbage_raises(tmp_path: Path) -> None:
    (tmp_path / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(IndexFormatError, match="rebuild_index"):
        VectorIndex.load(tmp_path / "index.faiss", DIM)


def test_validation() -> None:
    with pytest.raises(ConfigError, match="kind"):
        IndexConfig(kind="annoy")
    with pytest.raises(ConfigError, match="hnsw_m"):
        IndexConfig(hnsw_m=0)
    with pytest.raises(ConfigError, match="ivf_nlist"):
        IndexConfig(ivf_nlist=0)
    index = VectorIndex(DIM)
    with pytest.raises(ConfigError, match="dimension"):
        index.add(np.arange(2), np.zeros((2, DIM + 1), dtype=np.float32))
    assert IndexConfig.from_dict({**IndexConfig(kind="hnsw").to_dict(), "unknown": 1}) == IndexConfig(kind="hnsw")
