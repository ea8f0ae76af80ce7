"""The ``block-attention`` command line: ingest, ask, chat, cache, demo, eval, serve.

User mistakes (missing index, unknown model, empty corpus, bad options) end with one ``error: ...`` line and exit
status 2, never a traceback. The KV cache of an index lives in ``<index>/kv_cache`` unless ``--cache-dir`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cache_dir(args: argparse.Namespace) -> Path | None:
    if getattr(args, "no_disk_cache", False):
        return None
    if getattr(args, "cache_dir", None):
        return Path(args.cache_dir)
    index = getattr(args, "index", None)
    return Path(index) / "kv_cache" if index else None


def _engine(args: argparse.Namespace):
    from block_attention.core.config import EngineConfig
    from .models import load_engine

    config = EngineConfig(mode=args.mode)
    return load_engine(args.model, cache_dir=_cache_dir(args), config=config, device=args.device, dtype=args.dtype)


def _pipeline(args: argparse.Namespace):
    from block_attention.retrieval.pipeline import PipelineConfig, RAGPipeline
    from .retrieval import Retriever

    retriever = Retriever.load(args.index)
    return RAGPipeline(retriever, _engine(args), PipelineConfig(top_k=args.top_k, order=args.order))


def _print_answer(answer: Any, as_json: bool, streamed: bool) -> None:
    if as_json:
        print(json.dumps(answer.as_dict()))
        return
    if not streamed:
        print(answer.text)
    s = answer.stats
    print()
    for i, src in enumerate(answer.sources, 1):
        title = getattr(src.passage, "title", "") or ""
        print(f"  [{i}] {src.score:.3f}  {src.passage.passage_id}  {title}")
    print(f"  mode={s.mode}  ttft={answer.ttft_s * 1000:.1f} ms (retrieval {answer.retrieval_s * 1000:.1f} ms)  "
          f"cache: {s.hits} hits ({s.memory_hits} memory, {s.disk_hits} disk), {s.misses} misses of {s.blocks} blocks")


def _ask_once(pipe: Any, question: str, args: argparse.Namespace, history: Sequence[dict[str, str]] = ()) -> Any:
    kwargs = dict(mode=args.mode, history=history, max_new_tokens=args.max_new_tokens)
    if args.stream and not args.json:
        stream = pipe.stream(question, **kwargs)
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        answer = stream.result
    else:
        answer = pipe.answer(question, **kwargs)
    _print_answer(answer, args.json, streamed=args.stream and not args.json)
    return answer


def cmd_ingest(args: argparse.Namespace) -> int:
    from .retrieval import Retriever

    index = Path(args.index)
    if (index / "manifest.json").exists():
        retriever = Retriever.load(index)
    else:
        from .retrieval.corpus import load_corpus

        load_corpus(args.dir)  # a bad corpus is refused before the index folder is created
        retriever = Retriever.create(index, index_kind=args.index_kind, chunk_tokens=args.chunk_tokens,
                                     overlap_tokens=args.overlap, embedder=args.embedder)
    report = retriever.ingest(args.dir, show_progress=not args.quiet)
    print(f"ingested {args.dir} into {index}: {report.summary()}")
    if args.warm:
        from block_attention.retrieval.pipeline import RAGPipeline

        engine = _engine(args)
        passages = list(retriever.passages())
        tokens = sum(len(engine.builder.tokenize(engine.builder.render_doc(p.to_block()))) for p in passages)
        print(f"warming KV for {len(passages)} passages ({tokens} tokens, about "
              f"{engine.estimate_kv_bytes(tokens) / 2**20:.1f} MiB) with {args.model} ...")
        warm = RAGPipeline(retriever, engine).warm(show_progress=not args.quiet)
        print(f"warm: {warm.encoded} encoded, {warm.already_cached} already cached, {warm.kv_bytes / 2**20:.1f} MiB")
    return 0


def _utf8_text(value: str, what: str) -> str:
    """``value`` when it is valid UTF-8 text; else an InvalidRequestError naming the byte (argv bytes that are not
    UTF-8 arrive as lone surrogates, ``\udcff`` for byte 0xff)."""
    from block_attention.core.errors import InvalidRequestError

    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise InvalidRequestError(
            f"{what} is not valid UTF-8 ({bad} at character {exc.start}); pass UTF-8 text (convert it with e.g. "
            "iconv -t UTF-8)."
        ) from None
    return value


def cmd_ask(args: argparse.Namespace) -> int:
    _utf8_text(args.question, "The question")  # before any index or model work: nothing is opened or written
    _ask_once(_pipeline(args), args.question, args)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    pipe = _pipeline(args)
    history: list[dict[str, str]] = []
    print("block-attention chat: type a question; /mode block|full switches attention, /quit exits.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line.startswith("/mode"):
            mode = line.split()[-1]
            if mode in ("block", "full"):
                args.mode = mode
                print(f"mode = {mode}")
            else:
                print("usage: /mode block|full")
            continue
        print("bot> ", end="", flush=True)
        answer = _ask_once(pipe, line, args, history)
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer.text}]


def cmd_cache(args: argparse.Namespace) -> int:
    from block_attention.core.errors import ConfigError
    from .store import KVStore, StoreConfig

    directory = _cache_dir(args)
    if directory is None:
        raise ConfigError("Give --index PATH or --cache-dir DIR to say which KV cache to inspect.")
    if not directory.exists():
        print(f"no KV cache at {directory} (nothing cached yet)")
        return 0
    with KVStore(StoreConfig(memory_bytes=0, disk_dir=str(directory))) as store:
        if args.action == "clear":
            store.clear()
            print(f"cleared KV cache at {directory}")
        else:
            st = store.stats()
            print(json.dumps({"directory": str(directory), "entries": st.disk_entries, "bytes": st.disk_bytes}))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, workdir=args.workdir, questions=args.questions, device=args.device)


def cmd_eval(args: argparse.Namespace) -> int:
    from block_attention.core.config import EngineConfig
    from block_attention.core.errors import ContextTooLongError
    from block_attention.core.prompt import PromptConfig
    from .evaluation.data import load_examples
    from .evaluation.harness import EvalConfig, evaluate
    from .evaluation.report import format_table, plot, write_json
    from .models import load_engine

    config = EvalConfig(modes=tuple(args.modes.split(",")), max_new_tokens=args.max_new_tokens,
                        max_blocks=args.max_blocks)
    examples = load_examples(args.data, limit=args.limit)
    prompt = None
    if args.block_marker or args.docs_in:  # e.g. ldsjmdy/Tulu3-Block-FT: --block-marker "[Block-Attention]" --docs-in user
        prompt = PromptConfig(block_marker=args.block_marker or None, docs_in=args.docs_in or "system")
    if args.prompt_config:
        fields = json.loads(Path(args.prompt_config).read_text(encoding="utf-8"))
        prompt = PromptConfig(**{**(dataclasses.asdict(prompt) if prompt else {}), **fields})
    engine = load_engine(args.model, device=args.device, config=EngineConfig(prompt=prompt))
    try:
        result = evaluate(engine, examples, config, model_name=args.model, data_name=Path(args.data).name
                          if not args.data.startswith("facts:") else args.data,
                          progress=not args.quiet)
    except ContextTooLongError as exc:
        raise ContextTooLongError(f"{exc} With `block-attention eval`, pass --max-blocks N to keep the first N "
                                  "passages of every question.") from None
    print(format_table(result))
    out = Path(args.out)
    json_path = write_json(result, out / "eval.json")
    written = [str(json_path)]
    if not args.no_plot:
        written.append(str(plot(result, out / "eval.png")))
    print("wrote " + ", ".join(written))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from block_attention.core.config import EngineConfig
    from block_attention.serving import ServerSettings, create_app, run_server
    from .models import load_engine
    from .store import StoreConfig

    cache_dir = _cache_dir(args)
    store = StoreConfig(memory_bytes=args.memory_mib << 20, disk_dir=str(cache_dir) if cache_dir else None,
                        remote_url=args.kv_remote, remote_ttl_s=args.kv_ttl)
    api_key = args.api_key or os.environ.get("BLOCK_ATTENTION_API_KEY") or None
    settings = ServerSettings(model_name=args.model, api_key=api_key, max_body_bytes=args.max_body_mib << 20,
                              default_max_tokens=args.max_tokens, top_k=args.top_k, max_batch=args.max_batch)
    retriever = None
    if args.index:
        from .retrieval import Retriever

        retriever = Retriever.load(args.index)
    engine = load_engine(args.model, config=EngineConfig(mode=args.mode), device=args.device, dtype=args.dtype,
                         store=store)
    try:
        print(f"serving {args.model} on http://{args.host}:{args.port} (KV tiers: "
              f"{', '.join(t.name for t in engine.store.tiers) if engine.store else 'none'}; "
              f"API key {'required' if api_key else 'off'})", flush=True)
        run_server(create_app(engine, settings, retriever=retriever), host=args.host, port=args.port,
                   log_level=args.log_level)
    finally:
        engine.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .models import default_model

    p = argparse.ArgumentParser(prog="block-attention", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def model_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=default_model(),
                        help="tiny-random (offline default), a packaged checkpoint, a local dir or a Hugging Face id")
        sp.add_argument("--mode", choices=["block", "full"], default="block")
        sp.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model loads)")
        sp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights dtype (auto: the checkpoint's; built-in models: float32). bfloat16 is the fast "
                             "choice on CPUs with native bf16 (AVX512-BF16/AMX) and on GPUs")
        sp.add_argument("--cache-dir", default=None, help="KV cache directory (default: <index>/kv_cache)")
        sp.add_argument("--no-disk-cache", action="store_true", help="keep KV in memory only")

    def ask_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--index", required=True)
        model_opts(sp)
        sp.add_argument("--top-k", type=int, default=4)
        sp.add_argument("--order", choices=["ranked", "reversed"], default="ranked")
        sp.add_argument("--max-new-tokens", type=int, default=64)
        sp.add_argument("--stream", action="store_true")
        sp.add_argument("--json", action="store_true", help="print one JSON object per answer")

    sp = sub.add_parser("ingest", help="load a folder (.txt/.md/.jsonl) into an index")
    sp.add_argument("dir")
    sp.add_argument("--index", required=True)
    sp.add_argument("--chunk-tokens", type=int, default=200)
    sp.add_argument("--overlap", type=int, default=0)
    sp.add_argument("--index-kind", choices=["flat", "hnsw", "ivf"], default="flat")
    sp.add_argument("--embedder", default=None, help="sentence-transformers name or path (default: offline MiniLM)")
    sp.add_argument("--warm", action="store_true", help="precompute every passage's KV for --model")
    sp.add_argument("--quiet", action="store_true")
    model_opts(sp)
    sp.set_defaults(func=cmd_ingest)

    sp = sub.add_parser("ask", help="answer one question")
    sp.add_argument("question")
    ask_opts(sp)
    sp.set_defaults(func=cmd_ask)

    sp = sub.add_parser("chat", help="interactive multi-turn chat")
    ask_opts(sp)
    sp.set_defaults(func=cmd_chat)

    sp = sub.add_parser("cache", help="inspect or clear a KV cache")
    sp.add_argument("action", choices=["stats", "clear"])
    sp.add_argument("--index", default=None)
    sp.add_argument("--cache-dir", default=None)
    sp.set_defaults(func=cmd_cache)

    sp = sub.add_parser("demo", help="offline end-to-end demo on the packaged corpus")
    sp.add_argument("--model", default=None, help="default: the best offline model available")
    sp.add_argument("--workdir", default=None, help="keep the index and cache here (default: a temp dir)")
    sp.add_argument("--questions", type=int, default=3)
    sp.add_argument("--device", default=None)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("eval", help="answer quality of block vs full attention on a RAG data file")
    sp.add_argument("--data", required=True, help="JSONL {question, answers, blocks} or JSON [{question, answers, ctxs}]")
    sp.add_argument("--model", default=default_model(), help="tiny-random (offline default), a local dir or a HF id")
    sp.add_argument("--modes", default="full,block",
                    help="comma list of full, block, block-k<K> (recompute K tokens per block), block-sink, block-sink-k<K>")
    sp.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    sp.add_argument("--out", default="eval-results", help="directory for eval.json and eval.png")
    sp.add_argument("--max-new-tokens", type=int, default=32)
    sp.add_argument("--max-blocks", type=int, default=None, help="keep the first N passages of each question")
    sp.add_argument("--block-marker", default=None, help='prompt marker of the checkpoint, e.g. "[Block-Attention]"')
    sp.add_argument("--docs-in", choices=["system", "user"], default=None, help="chat turn that holds the passages")
    sp.add_argument("--prompt-config", default=None, help="JSON file of PromptConfig fields (e.g. the instruction)")
    sp.add_argument("--device", default=None)
    sp.add_argument("--no-plot", action="store_true")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("serve", help="OpenAI-compatible HTTP server (documents in, KV reused across replicas)")
    model_opts(sp)
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--kv-remote", default=None, metavar="URL",
                    help="shared Redis KV tier, e.g. redis://:PASSWORD@10.0.0.5:6379/0")
    sp.add_argument("--kv-ttl", type=int, default=None, metavar="SECONDS", help="expiry of remote KV entries")
    sp.add_argument("--memory-mib", type=int, default=1024, help="memory KV tier budget (MiB)")
    sp.add_argument("--index", default=None, help="retrieve from this index when a request sends no documents")
    sp.add_argument("--top-k", type=int, default=4, help="passages retrieved per request with --index")
    sp.add_argument("--api-key", default=None,
                    help="require `Authorization: Bearer KEY` (or set BLOCK_ATTENTION_API_KEY)")
    sp.add_argument("--max-tokens", type=int, default=256, help="completion length when a request sets none")
    sp.add_argument("--max-body-mib", type=int, default=8, help="larger request bodies get 413")
    sp.add_argument("--max-batch", type=int, default=8, metavar="N",
                    help="decode up to N concurrent requests in one batched forward (1: one at a time)")
    sp.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sp.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from block_attention.core.errors import BlockAttentionError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the CLI forks no tokenizer workers
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:  # fail before any index or model work
            from .models import check_device

            check_device(args.device)
        return int(args.func(args) or 0)
    except BlockAttentionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
