"""LlamaIndex chatbot over the packaged lighthouse corpus, served with Block-Attention (runs offline).

Steps: ingest the demo corpus into a local Faiss index, wrap it as a LlamaIndex retriever, answer with a
``RetrieverQueryEngine`` whose ``BlockAttentionSynthesizer`` gives every retrieved node its own cached block, chat
over several turns with a ``CondenseQuestionChatEngine``, compare block and full attention, and show the KV-cache
speedup (time to first token of a first and a repeated ask).

The default model ``tiny-random`` is a tiny Llama with random weights built offline: every step is real but the
answers are gibberish. Pass a real model to get real answers (downloads it; a GPU helps)::

    python examples/llamaindex_chatbot.py --model Qwen/Qwen2.5-1.5B-Instruct
    python examples/llamaindex_chatbot.py --model ldsjmdy/Tulu3-Block-FT   # the paper's block-fine-tuned Llama-3.1-8B

Needs ``pip install -e integrations/llama-index-llms-block-attention``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random", help="tiny-random (offline), a hub id or a local path")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per answer")
    parser.add_argument("--workdir", default=None, help="folder for the index (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="li-chatbot-") as tmp:
        run(args.model, args.max_tokens, Path(args.workdir or tmp))
    return 0


def run(model: str, max_tokens: int, workdir: Path) -> None:
    from block_attention.models import load_engine
    from block_attention.retrieval import Retriever, demo_corpus_dir
    from llama_index.core.chat_engine import CondenseQuestionChatEngine
    from llama_index.core.query_engine import RetrieverQueryEngine

    from llama_index.llms.block_attention import (
        BlockAttentionIndexRetriever,
        BlockAttentionLLM,
        BlockAttentionSynthesizer,
    )

    # 1. Ingest the packaged corpus (incremental: re-running skips unchanged passages).
    index = Retriever.open(workdir / "index")
    report = index.ingest(demo_corpus_dir(), show_progress=False)
    print(f"Ingested {report.documents} documents into {len(index)} passages ({len(report.added)} new).")

    # 2. One engine (one KV cache) behind the LLM; the synthesizer passes each node as its own block.
    engine = load_engine(model)
    llm = BlockAttentionLLM(engine=engine, model_name=model, max_new_tokens=max_tokens)
    print(f"LLM metadata: context_window={llm.metadata.context_window}, num_output={llm.metadata.num_output}")
    retriever = BlockAttentionIndexRetriever(retriever=index, similarity_top_k=3)
    query_engine = RetrieverQueryEngine(retriever, response_synthesizer=BlockAttentionSynthesizer(llm))

    # 3. A multi-turn chat: follow-ups are condensed into standalone questions, then answered over fresh nodes.
    chat = CondenseQuestionChatEngine.from_defaults(query_engine=query_engine, llm=llm)
    for question in ["Who designed the third Eddystone lighthouse?", "What was its shape modelled on?"]:
        reply = chat.chat(question)
        print(f"\nYou: {question}\nBot: {reply.response.strip()!r}")
        print("     sources: " + ", ".join(f"{n.node.metadata['source']} ({n.score:.2f})" for n in reply.source_nodes))

    # 4. Block vs full attention over the same nodes.
    question = "When was Boston Light first lit?"
    nodes = retriever.retrieve(question)
    for mode in ("block", "full"):
        print(f"\n[{mode:5}] {llm.complete(question, nodes=nodes, mode=mode).text.strip()!r}")

    # 5. The cache speedup: the first ask encodes every node, the second reuses their KV.
    engine.store.clear()
    question = "How far inland was the Cape Hatteras lighthouse moved?"
    nodes = retriever.retrieve(question)
    for label in ("first ask ", "second ask"):
        stats = llm.complete(question, nodes=nodes).additional_kwargs["stats"]
        print(f"{label}: TTFT {stats['ttft_s'] * 1e3:7.1f} ms, cache hits {stats['hits']}/{stats['blocks']}, "
              f"encoded tokens {stats['encoded_tokens']}")
    index.close()


if __name__ == "__main__":
    raise SystemExit(main())
