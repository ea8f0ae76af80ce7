"""The ``block-attention`` command line: ingest, ask, chat, cache, demo.

User mistakes (missing index, unknown model, empty corpus, bad options) end with one ``error: ...`` line and exit
status 2, never a traceback. The KV cache of an index lives in ``<index>/kv_cache`` unless ``--cache-dir`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cache_dir(args: argparse.Namespace) -> Path | None:
    if getattr(args, "no_disk_cache", False):
        return None
    if getattr(args, "cache_dir", None):
        return Path(args.cache_dir)
    index = getattr(args, "index", None)
    return Path(index) / "kv_cache" if index else None


def _engine(args: argparse.Namespace):
    from .config import EngineConfig
    from .models import load_engine

    config = EngineConfig(mode=args.mode)
    return load_engine(args.model, cache_dir=_cache_dir(args), config=config, device=args.device)


def _pipeline(args: argparse.Namespace):
    from .pipeline import PipelineConfig, RAGPipeline
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


def _report_line(report: Any) -> str:
    return (f"{report.documents} documents -> {report.passages} passages ({len(report.added)} added, "
            f"{len(report.removed)} removed, {report.unchanged} unchanged)")


def cmd_ingest(args: argparse.Namespace) -> int:
    from .retrieval import Retriever

    index = Path(args.index)
    if (index / "manifest.json").exists():
        retriever = Retriever.load(index)
    else:
        retriever = Retriever.create(index, index_kind=args.index_kind, chunk_tokens=args.chunk_tokens,
                                     overlap_tokens=args.overlap, embedder=args.embedder)
    report = retriever.ingest(args.dir, show_progress=not args.quiet)
    print(f"ingested {args.dir} into {index}: {_report_line(report)}")
    if args.warm:
        from .pipeline import RAGPipeline

        engine = _engine(args)
        passages = list(retriever.passages())
        tokens = sum(len(engine.builder.tokenize(engine.builder.render_doc(p.to_block()))) for p in passages)
        print(f"warming KV for {len(passages)} passages ({tokens} tokens, about "
              f"{engine.estimate_kv_bytes(tokens) / 2**20:.1f} MiB) with {args.model} ...")
        warm = RAGPipeline(retriever, engine).warm(show_progress=not args.quiet)
        print(f"warm: {warm.encoded} encoded, {warm.already_cached} already cached, {warm.kv_bytes / 2**20:.1f} MiB")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
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
    from .errors import ConfigError
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


def build_parser() -> argparse.ArgumentParser:
    from .models import default_model

    p = argparse.ArgumentParser(prog="block-attention", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def model_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=default_model(),
                        help="tiny-random (offline default), tiny-block-ft, a local dir or a Hugging Face id")
        sp.add_argument("--mode", choices=["block", "full"], default="block")
        sp.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model loads)")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import BlockAttentionError

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
