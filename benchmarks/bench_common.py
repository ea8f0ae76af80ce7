"""Shared pieces of the benchmarks: model + synthetic corpus, timing, memory sampling, the prefix-cache baseline,
analytic FLOPs and environment capture (CPU model and flags: :func:`cpu_model`, :func:`cpu_flags`,
:func:`native_bf16`). Importing it changes nothing; each benchmark's ``main()`` calls :func:`setup` first.

Nothing here downloads anything unless ``--model`` names a hub id. The default model is built from a config with
random weights: timings are real, generated text is meaningless.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from block_attention import Block
from block_attention.hf.compat import cache_kwargs, output_cache

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OFFLINE_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def setup() -> None:
    """The first call of every benchmark's ``main()``: hub access off by default (``HF_HUB_OFFLINE`` and
    ``TRANSFORMERS_OFFLINE`` set to 1 unless the caller set them) in the environment the processes it starts
    inherit. Importing this module changes nothing; the benchmarks import the installed package (``bash
    scripts/run.sh`` installs it, and exports the same defaults for the benchmark process itself, whose hub
    library reads them when it is imported)."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)

# Qwen2-0.5B's shape (hidden 896, 24 layers, 14 query heads, 2 KV heads, head_dim 64, MLP 4864, tied embeddings).
# The vocabulary is the offline tiny tokenizer's (600 ids) instead of 151,936: every method computes logits for the
# last position only (logits_to_keep=1), so the LM head costs 2*896*V FLOPs once per request for all of them
# (0.27 GFLOP at V=151,936, <1% of even the final-block forward) and only the embedding table's size changes.
QWEN2_05B_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, tie_word_embeddings=True)
QUICK_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True)

_WORDS = (
    "the of and to in is was for on that by with as at from his her its an are were which this be or has had "
    "not but also first one their after new two been other who all into more most only over such time city "
    "river king war year years state world century national between during school family since under group "
    "known later music album team series film name born used part area system government party north south "
    "east west island lighthouse passage block attention cache document question answer model retrieval "
    "stood built tower harbour ancient empire trade port library scholars map coast ships stone fire light "
    "record season league club players won final cup village population census county district railway "
    "station bridge church temple museum university college research science theory energy water"
).split()


# -- model and corpus -----------------------------------------------------------------------------------------------

def parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise SystemExit(f"--dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


def build_model(model: str | None, *, quick: bool, dtype: torch.dtype, device: str, max_positions: int,
                attn_implementation: str = "sdpa", seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, description). ``model=None``: a random-weight Qwen2 of the 0.5B shape (tiny in --quick)."""
    from transformers import AutoModelForCausalLM

    if model:
        from block_attention.models import load_pretrained

        lm, tok = load_pretrained(model, dtype=dtype, model_kwargs={"attn_implementation": attn_implementation})
        desc = {"name": model, "weights": "pretrained"}
    else:
        from block_attention.testing import tiny_config, tiny_tokenizer

        tok = tiny_tokenizer()
        shape = QUICK_SHAPE if quick else QWEN2_05B_SHAPE
        config = tiny_config("qwen2", max_position_embeddings=max_positions, **shape)
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
        desc = {"name": "qwen2-tiny (quick)" if quick else "qwen2-0.5b-shape",
                "weights": f"random (config-built, seed {seed}); timings only, outputs are meaningless"}
    lm = lm.to(device).eval()
    cfg = lm.config.get_text_config(decoder=True)
    params = sum(p.numel() for p in lm.parameters())
    desc.update(
        parameters=params, dtype=str(dtype).removeprefix("torch."), attn_implementation=attn_implementation,
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_position_embeddings,
    )
    return lm, tok, desc


def _n_tokens(builder: Any, block: Block) -> int:
    return len(builder.tokenize(builder.render_doc(block)))


def make_passages(builder: Any, count: int, tokens: int, *, seed: int = 0, prefix: str = "doc") -> list[Block]:
    """``count`` synthetic passages whose rendered block is the shortest word sequence of >= ``tokens`` tokens."""
    out = []
    for i in range(count):
        rng = random.Random(f"{seed}-{prefix}-{i}")
        words = [rng.choice(_WORDS) for _ in range(tokens * 2)]
        lo, hi = 1, len(words)
        while lo < hi:  # smallest word count reaching the token target (token count is monotone enough here)
            mid = (lo + hi) // 2
            if _n_tokens(builder, Block(" ".join(words[:mid]), f"{prefix}-{i}")) >= tokens:
                hi = mid
            else:
                lo = mid + 1
        out.append(Block(" ".join(words[:lo]).capitalize() + ".", f"{prefix}-{i}", score=1.0 / (i + 1)))
    return out


def make_question(engine: Any, final_tokens: int, *, seed: int = 0) -> str:
    """A question whose final block (chat-template tail included) is about ``final_tokens`` tokens."""
    rng = random.Random(f"question-{seed}")
    probe = [Block("probe passage.", "probe")]
    words: list[str] = []
    while True:
        text = "What does the " + " ".join(words) + " say?"
        if len(engine.layout(probe, text).final_ids) >= final_tokens or len(words) > 4 * final_tokens:
            return text
        words.append(rng.choice(_WORDS))


# -- timing and memory ----------------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc) so an RSS delta reflects the next request, not allocator slack."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak RSS (sampled every ``interval`` s on a thread; /proc on Linux) or peak CUDA allocation during a block."""

    def __init__(self, device: str, interval: float = 0.002) -> None:
        self.device = device
        self.interval = interval
        self.peak_delta = 0
        self.peak = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        _malloc_trim()
        self._base = _rss_bytes()
        self._max = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            self._stop.wait(self.interval)

    def __exit__(self, *exc: Any) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes())
        self.peak_delta = self.peak - self._base


@dataclass
class Samples:
    """Timings (s) and side data of one method at one length."""

    times: list[float] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    peak_delta: list[int] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        t = sorted(self.times)
        out: dict[str, Any] = {
            "median_s": statistics.median(t), "min_s": t[0], "max_s": t[-1], "n": len(t), "samples_s": self.times,
            "peak_mem_delta_bytes": max(self.peak_delta) if self.peak_delta else None,
            "peak_mem_bytes": max(self.peak) if self.peak else None,
        }
        if self.stats:
            numeric = [k for k, v in self.stats[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            out["stats_median"] = {k: statistics.median(s[k] for s in self.stats) for k in numeric}
        return out


def timed(fn: Callable[[], Any], device: str, measure_memory: bool = True) -> tuple[float, Any, PeakMemory | None]:
    """Run ``fn`` once; return (wall seconds incl. device sync, result, memory probe). The cyclic garbage collector
    is paused while timing (as ``timeit`` does); callers run :func:`collect` between rounds."""
    sync(device)
    probe = PeakMemory(device) if measure_memory else None
    if probe is not None:
        probe.__enter__()
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        elapsed = time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()
    if probe is not None:
        probe.__exit__(None, None, None)
    return elapsed, result, probe


def collect() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the prefix-cache baseline --------------------------------------------------------------------------------------

def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of ``cache`` (negative ``crop`` works on transformers 4.4x and 5.x)."""
    current = cache.get_seq_length()
    if current > length:
        cache.crop(length - current)
    assert cache.get_seq_length() == length, (cache.get_seq_length(), length)


class PrefixCache:
    """What a transformers user gets today: keep the DynamicCache of the previous prompt, reuse the longest common
    token prefix (crop the rest) and prefill the remainder. One slot, like a chat server's per-session cache.
    Prompts are tokenized exactly as the engine's full mode does, so all methods see the same tokens."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.ids: list[int] = []
        self.cache: DynamicCache | None = None

    def reset(self) -> None:
        self.ids, self.cache = [], None

    @torch.inference_mode()
    def prefill(self, blocks: Sequence[Block], question: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        layout = self.engine.layout(blocks, question)
        ids = layout.input_ids()
        reuse = 0
        if self.cache is not None:
            limit = min(len(ids), len(self.ids))
            while reuse < limit and ids[reuse] == self.ids[reuse]:
                reuse += 1
            reuse = min(reuse, len(ids) - 1)  # at least one token must run to produce logits
        cache = self.cache if reuse > 0 else DynamicCache()
        if reuse > 0:
            crop_cache(cache, reuse)
        device = self.engine.device
        t1 = time.perf_counter()
        out = self.engine.model(input_ids=torch.tensor([ids[reuse:]], device=device),
                                position_ids=torch.arange(reuse, len(ids), device=device)[None],
                                **cache_kwargs(self.engine.model, cache), use_cache=True, logits_to_keep=1)
        self.ids, self.cache = ids, output_cache(out)
        return {"prompt_tokens": len(ids), "reused_tokens": reuse, "prefilled_tokens": len(ids) - reuse,
                "prefix_block_tokens": len(layout.blocks[0].token_ids) if layout.blocks else 0,
                # reuse reaching this position covers at least one whole passage (the block after the system prefix)
                "first_passage_end": layout.blocks[min(1, len(layout.blocks) - 1)].end if layout.blocks else 0,
                "lookup_s": t1 - t0, "prefill_s": time.perf_counter() - t1, "logits": out.logits}


# -- analytic FLOPs -------------------------------------------------------------------------------------------------

def _shape(desc: dict[str, Any]) -> tuple[int, int, int, int, int, int, int]:
    return (desc["hidden_size"], desc["num_hidden_layers"], desc["num_attention_heads"],
            desc["num_key_value_heads"], desc["head_dim"], desc["intermediate_size"], desc["vocab_size"])


def _linear_flops_per_token(desc: dict[str, Any]) -> int:
    h, L, H, Hkv, d, inter, _ = _shape(desc)
    return 2 * L * (h * H * d + 2 * h * Hkv * d + H * d * h + 3 * h * inter)  # q, k, v, o + gate/up/down


def _attention_flops(desc: dict[str, Any], queries: int, past: int) -> int:
    """QK^T and AV for ``queries`` causal query rows placed after ``past`` cached keys."""
    _, L, H, _, d, _, _ = _shape(desc)
    keys_seen = queries * past + queries * (queries + 1) // 2
    return 4 * L * H * d * keys_seen


def prefill_flops(desc: dict[str, Any], block_lengths: Sequence[int], final_len: int) -> dict[str, Any]:
    """FLOPs of one request (matmuls only; norms/activations/RoPE are O(T*h) and omitted; LM head on 1 row)."""
    h, L, _, Hkv, d, _, V = _shape(desc)
    context = sum(block_lengths)
    total = context + final_len
    per_tok = _linear_flops_per_token(desc)
    head = 2 * h * V
    full = total * per_tok + _attention_flops(desc, total, 0) + head
    rerotate = 3 * L * Hkv * d * context  # k*cos + rotate_half(k)*sin over every cached key
    warm = final_len * per_tok + _attention_flops(desc, final_len, context) + head + rerotate
    encode = sum(n * per_tok + _attention_flops(desc, n, 0) for n in block_lengths)
    cold = warm + encode
    return {
        "context_tokens": context, "final_tokens": final_len, "prompt_tokens": total,
        "full_gflop": full / 1e9, "block_warm_gflop": warm / 1e9, "block_cold_gflop": cold / 1e9,
        "block_warm_reduction_pct": 100.0 * (1 - warm / full), "block_cold_reduction_pct": 100.0 * (1 - cold / full),
        "attention_share_full_pct": 100.0 * _attention_flops(desc, total, 0) / full,
    }


# -- disk page cache ------------------------------------------------------------------------------------------------

def drop_page_cache(directory: str | os.PathLike[str]) -> int:
    """Ask the kernel to drop this directory's file pages (fsync + POSIX_FADV_DONTNEED; no root, no other files).
    Returns the bytes advised. A no-op where posix_fadvise does not exist."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            except OSError:
                pass
            finally:
                os.close(fd)
    return total


# -- environment ----------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor name elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU flags the benchmarks report (AVX2, AVX-512, bf16/fp16 and AMX ones this CPU has), sorted."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})
    except OSError:
        pass
    return []


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def environment(device: str) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "platform": platform.platform(), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
        "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                           timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    try:
        import block_attention
        env["block_attention"] = block_attention.__version__
    except Exception:  # pragma: no cover
        pass
    return env


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"
