"""LangChain chatbot over the packaged lighthouse corpus, served with Block-Attention (runs offline).

Steps: ingest the demo corpus into a local Faiss index, wrap it as a LangChain retriever, build an LCEL RAG chain
around ``ChatBlockAttention``, hold a multi-turn chat, compare block and full attention, and show the KV-cache
speedup (time to first token of a first and a repeated ask).

The default model ``tiny-random`` is a tiny Llama with random weights built offline: every step is real but the
answers are gibberish. Pass a real model to get real answers (downloads it; a GPU helps)::

    python examples/langchain_chatbot.py --model Qwen/Qwen2.5-1.5B-Instruct
    python examples/langchain_chatbot.py --model ldsjmdy/Tulu3-Block-FT   # the paper's block-fine-tuned Llama-3.1-8B

Needs ``pip install -e integrations/langchain-block-attention``.
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
    with tempfile.TemporaryDirectory(prefix="lc-chatbot-") as tmp:
        run(args.model, args.max_tokens, Path(args.workdir or tmp))
    return 0


def run(model: str, max_tokens: int, workdir: Path) -> None:
    from block_attention.models import load_engine
    from block_attention.retrieval import Retriever, demo_corpus_dir

    from langchain_block_attention import BlockAttentionRetriever, ChatBlockAttention, create_block_attention_rag_chain

    # 1. Ingest the packaged corpus (incremental: re-running skips unchanged passages).
    index = Retriever.open(workdir / "index")
    report = index.ingest(demo_corpus_dir(), show_progress=False)
    print(f"Ingested {report.documents} documents into {len(index)} passages ({len(report.added)} new).")

    # 2. One engine (one KV cache) behind every LangChain object.
    engine = load_engine(model)
    chat = ChatBlockAttention(engine=engine, model=model, max_tokens=max_tokens)
    retriever = BlockAttentionRetriever(retriever=index, top_k=3)
    chain = create_block_attention_rag_chain(retriever, chat)

    # 3. A multi-turn chat: the history goes into the final block, every passage is its own cached block.
    history: list[tuple[str, str]] = []
    for question in ["Who designed the third Eddystone lighthouse?", "What was its shape modelled on?"]:
        out = chain.invoke({"question": question, "chat_history": history})
        print(f"\nYou: {question}\nBot: {out['answer'].strip()!r}")
        sources = ", ".join(f"{d.metadata['source']} ({d.metadata['score']:.2f})" for d in out["context"])
        print(f"     sources: {sources}")
        history += [("human", question), ("ai", out["answer"])]

    # 4. Block vs full attention over the same passages.
    question = "When was Boston Light first lit?"
    docs = retriever.invoke(question)
    for mode in ("block", "full"):
        reply = chat.invoke(question, documents=docs, mode=mode)
        print(f"\n[{mode:5}] {reply.content.strip()!r}")

    # 5. The cache speedup: the first ask encodes every passage, the second reuses their KV.
    engine.store.clear()
    question = "How far inland was the Cape Hatteras lighthouse moved?"
    docs = retriever.invoke(question)
    for label in ("first ask ", "second ask"):
        stats = chat.invoke(question, documents=docs).response_metadata["block_attention"]
        print(f"{label}: TTFT {stats['ttft_s'] * 1e3:7.1f} ms, cache hits {stats['hits']}/{stats['blocks']}, "
              f"encoded tokens {stats['encoded_tokens']}")
    index.close()


if __name__ == "__main__":
    raise SystemExit(main())
