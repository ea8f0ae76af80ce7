"""Talk to a `block-attention serve` server with stock OpenAI-compatible clients (runs offline).

By default this starts a server in-process on a free loopback port over the offline ``tiny-random`` model (random
weights: gibberish answers, real caching). Pass ``--base-url`` to use a running server instead, e.g. one started
with ``block-attention serve --model Qwen/Qwen2.5-1.5B-Instruct --kv-remote redis://127.0.0.1:6379/0``.

Each client sends the retrieved passages in the ``documents`` field through its extra-body hook; the second ask
of the same documents is answered from the KV cache (``block_attention.hits``).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

DOCS = [
    {"doc_id": "bell-rock", "title": "Bell Rock", "text": "The Bell Rock lighthouse was built by Robert Stevenson "
                                                          "between 1807 and 1810 on a reef off Arbroath."},
    {"doc_id": "pharos", "title": "Pharos", "text": "The lighthouse of Alexandria stood on the island of Pharos."},
]
QUESTION = "Who built the Bell Rock lighthouse?"


@contextlib.contextmanager
def local_server(model: str) -> Iterator[str]:
    from block_attention.models import load_engine
    from block_attention.serving import ServerSettings, ServerThread, create_app

    engine = load_engine(model)
    with ServerThread(create_app(engine, ServerSettings(model_name=model))) as server:
        yield server.base_url + "/v1"
    engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=None, help="a running server's /v1 URL (default: start one here)")
    parser.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        url = args.base_url or stack.enter_context(local_server(args.model))
        run(url, args.api_key, args.model, args.max_tokens)
    return 0


def run(url: str, key: str, model: str, max_tokens: int) -> None:
    # 1. The official openai client: documents through extra_body.
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key=key)
    for attempt in ("first", "again"):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=max_tokens, temperature=0,
            extra_body={"documents": DOCS})
        info = reply.model_extra["block_attention"]
        print(f"openai ({attempt}): {reply.choices[0].message.content!r}  cache hits {info['hits']}/"
              f"{info['hits'] + info['misses']} {info['hits_by_tier']}  ttft {info['ttft_ms']:.1f} ms")

    # 2. LangChain's ChatOpenAI, streaming.
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=model, base_url=url, api_key=key, temperature=0, max_tokens=max_tokens,
                      extra_body={"documents": DOCS})
    print("langchain: " + "".join(chunk.content for chunk in chat.stream(QUESTION)))

    # 3. LlamaIndex's OpenAILike (if installed).
    try:
        from llama_index.llms.openai_like import OpenAILike
    except ImportError:
        print("llama-index: llama-index-llms-openai-like is not installed; skipped")
        return
    llm = OpenAILike(model=model, api_base=url, api_key=key, is_chat_model=True, temperature=0,
                     max_tokens=max_tokens, additional_kwargs={"extra_body": {"documents": DOCS}})
    print(f"llama-index: {llm.complete(QUESTION).text}")


if __name__ == "__main__":
    raise SystemExit(main())
