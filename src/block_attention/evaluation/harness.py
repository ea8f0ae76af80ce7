"""Run an engine over evaluation examples in several attention modes and score every answer.

Modes are named ``full``, ``block``, ``block-k<K>`` (block mode recovering the first ``K`` tokens of every
block, see :mod:`block_attention.engine.recovery`), ``block-sink`` (every block encoded behind the prompt prefix, see
:mod:`block_attention.engine.sink`) or ``block-sink-k<K>`` (both). Per example and mode the harness records the greedy answer, exact
match, token F1, answer-contained, the TTFT of that request (with the example's blocks already cached, i.e. the
warm path a RAG service serves), the mean negative log-likelihood of the first gold answer's tokens under teacher
forcing, and, when ``full`` is among the modes, the mean ``KL(mode || full)`` of the next-token distributions at
the positions that predict those gold tokens. Everything but the timings is deterministic (greedy decoding).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import fmean, median
from typing import Any

import torch

from block_attention.core.config import Mode
from block_attention.core.errors import ConfigError
from block_attention.hf.compat import cache_kwargs
from .data import EvalExample
from .metrics import agreement, answer_contained, exact_match, kl_divergence, token_f1, token_nll

_MODE = re.compile(r"^(full|block)(-sink)?(?:-k(\d+))?$")


@dataclass(frozen=True)
class ModeSpec:
    """One evaluated configuration: attention mode plus recovery (recompute the first ``recompute_tokens``)."""

    name: str
    mode: Mode
    recompute_tokens: int = 0
    sink: str = "none"


def parse_modes(spec: str | Sequence[str]) -> tuple[ModeSpec, ...]:
    """``"full,block,block-k16"`` (or a list of names) -> mode specs, in order, without duplicates."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[ModeSpec] = []
    for name in names:
        match = _MODE.match(name)
        if not match or (match.group(1) == "full" and (match.group(2) or match.group(3))):
            raise ConfigError(
                f"Unknown evaluation mode {name!r}; use 'full', 'block', 'block-k<K>' (block mode recomputing the "
                "first K tokens of every block), 'block-sink' (blocks encoded behind the prompt prefix) or "
                "'block-sink-k<K>', e.g. --modes full,block,block-k16,block-sink."
            )
        if name in {m.name for m in out}:
            raise ConfigError(f"Evaluation mode {name!r} is listed twice; list each mode once.")
        out.append(ModeSpec(name, match.group(1), int(match.group(3) or 0),  # type: ignore[arg-type]
                            "prefix" if match.group(2) else "none"))
    if not out:
        raise ConfigError("Give at least one evaluation mode, e.g. --modes full,block.")
    return tuple(out)


@dataclass(frozen=True)
class EvalConfig:
    """``max_new_tokens``/``stop``: greedy decoding budget and stop strings of every answer. ``max_gold_tokens``:
    gold-answer tokens scored by teacher forcing (NLL, KL). ``system``: instruction override (None: the engine's).
    ``max_blocks``: keep only the first N passages of every example (None: all; for models with a short window)."""

    modes: tuple[str, ...] = ("full", "block")
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)
    max_gold_tokens: int = 32
    system: str | None = None
    max_blocks: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(m.name for m in parse_modes(self.modes)))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1 or self.max_gold_tokens < 1:
            raise ConfigError("max_new_tokens and max_gold_tokens must be >= 1.")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise ConfigError(f"max_blocks must be >= 1 (or None for all passages), got {self.max_blocks}.")

    @property
    def specs(self) -> tuple[ModeSpec, ...]:
        return parse_modes(self.modes)


@dataclass(frozen=True)
class ModeScore:
    """One example answered in one mode."""

    prediction: str
    em: float
    f1: float
    contains: float
    ttft_s: float
    gold_nll: float  # mean NLL (nats/token) of the first gold answer's tokens
    kl_to_full: float | None  # mean KL(mode || full) over the gold positions; None without a full mode
    recomputed_tokens: int


@dataclass(frozen=True)
class ExampleResult:
    id: str
    question: str
    answers: tuple[str, ...]
    scores: dict[str, ModeScore]


@dataclass
class EvalResult:
    model: str
    data: str
    config: EvalConfig
    examples: list[ExampleResult] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per mode: means of every metric over the examples, TTFT mean and median in ms."""
        out: dict[str, dict[str, Any]] = {}
        has_full = "full" in self.config.modes
        for mode in self.config.modes:
            rows = [ex.scores[mode] for ex in self.examples]
            kls = [r.kl_to_full for r in rows if r.kl_to_full is not None]
            ttft = [r.ttft_s * 1000 for r in rows]
            out[mode] = {
                "n": len(rows),
                "em": fmean(r.em for r in rows) if rows else float("nan"),
                "f1": fmean(r.f1 for r in rows) if rows else float("nan"),
                "contains": fmean(r.contains for r in rows) if rows else float("nan"),
                "gold_nll": fmean(r.gold_nll for r in rows) if rows else float("nan"),
                "kl_to_full": fmean(kls) if kls else None,
                "agree_with_full": self.agreement(mode, "full") if has_full else None,
                "ttft_ms_mean": fmean(ttft) if ttft else float("nan"),
                "ttft_ms_median": median(ttft) if ttft else float("nan"),
                "recomputed_tokens_mean": fmean(r.recomputed_tokens for r in rows) if rows else 0.0,
            }
        return out

    def agreement(self, a: str, b: str) -> float:
        """Share of examples on which modes ``a`` and ``b`` gave the same normalised answer."""
        return agreement([ex.scores[a].prediction for ex in self.examples],
                         [ex.scores[b].prediction for ex in self.examples])

    def agreement_matrix(self) -> dict[str, dict[str, float]]:
        return {a: {b: self.agreement(a, b) for b in self.config.modes} for a in self.config.modes}

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "n_examples": len(self.examples),
            "config": asdict(self.config),
            "summary": self.summary(),
            "agreement": self.agreement_matrix(),
            "examples": [{"id": ex.id, "question": ex.question, "answers": list(ex.answers),
                          "scores": {m: asdict(s) for m, s in ex.scores.items()}} for ex in self.examples],
        }


@torch.inference_mode()
def teacher_forced_logits(engine: Any, example: EvalExample, spec: ModeSpec, continuation: Sequence[int],
                          system: str | None = None) -> torch.Tensor:
    """Logits ``[len(continuation), V]`` predicting each token of ``continuation`` after the prompt: the last
    final-block row, then one forward of ``continuation[:-1]`` on the request's own cache."""
    out = engine.prefill(list(example.blocks), example.question, system=system, mode=spec.mode,
                         recompute_tokens=spec.recompute_tokens, sink=spec.sink)
    first = out.logits[-1:]  # [1, V]
    if len(continuation) < 2:
        return first
    device = first.device
    start = out.layout.total_len
    ids = torch.tensor([list(continuation[:-1])], dtype=torch.long, device=device)  # [1, g-1]
    positions = torch.arange(start, start + ids.shape[1], device=device)[None]  # [1, g-1]
    more = engine.model(input_ids=ids, position_ids=positions, **cache_kwargs(engine.model, out.cache),
                        use_cache=True).logits[0]
    return torch.cat([first, more], dim=0)  # [g, V]


def gold_token_ids(engine: Any, answer: str, limit: int) -> list[int]:
    """Tokens of a gold answer as the model would write it after the prompt (a leading space after a plain
    ``Answer:``; none after a chat template's assistant header)."""
    ids = engine.builder.tokenize(answer if engine.builder.chat else " " + answer)
    return ids[:limit] or engine.builder.tokenize(" ")[:1]


def evaluate(engine: Any, examples: Sequence[EvalExample], config: EvalConfig | None = None, *,
             model_name: str = "", data_name: str = "", progress: bool = False,
             on_example: Callable[[ExampleResult], None] | None = None) -> EvalResult:
    """Answer and score every example in every mode of ``config`` (see the module docstring)."""
    config = config or EvalConfig()
    specs = config.specs
    result = EvalResult(model_name, data_name, config)
    if not examples:
        return result
    if config.max_blocks is not None:
        examples = [replace(ex, blocks=ex.blocks[:config.max_blocks]) for ex in examples]
    _run_example(engine, examples[0], specs, config)  # untimed warm-up: kernels, allocator, caches
    items: Any = examples
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(examples, desc="evaluating", unit="question")
    for example in items:
        scored = _run_example(engine, example, specs, config)
        result.examples.append(scored)
        if on_example is not None:
            on_example(scored)
    return result


def _run_example(engine: Any, example: EvalExample, specs: Sequence[ModeSpec], config: EvalConfig) -> ExampleResult:
    blocks = list(example.blocks)
    if engine.store is not None:  # TTFT is measured on the warm (cached-blocks) path
        engine.warm(blocks, system=config.system)
        for sink in sorted({s.sink for s in specs if s.mode == "block" and s.sink != "none"}):
            engine.prefill(blocks, example.question, system=config.system, mode="block", sink=sink)
    gold = gold_token_ids(engine, example.answers[0], config.max_gold_tokens)
    full_logits = None
    if any(s.mode == "full" for s in specs):
        full_logits = teacher_forced_logits(engine, example, ModeSpec("full", "full"), gold, config.system)
    scores: dict[str, ModeScore] = {}
    for spec in specs:
        gen = engine.generate(blocks, example.question, system=config.system, mode=spec.mode,
                              recompute_tokens=spec.recompute_tokens, sink=spec.sink,
                              max_new_tokens=config.max_new_tokens,
                              stop=config.stop)
        logits = full_logits if spec.mode == "full" and full_logits is not None else \
            teacher_forced_logits(engine, example, spec, gold, config.system)
        kl = None
        if full_logits is not None:
            kl = 0.0 if spec.mode == "full" else float(kl_divergence(logits, full_logits).mean())
        answer = gen.text.strip()
        scores[spec.name] = ModeScore(
            prediction=answer,
            em=exact_match(answer, example.answers),
            f1=token_f1(answer, example.answers),
            contains=answer_contained(answer, example.answers),
            ttft_s=gen.stats.ttft_s,
            gold_nll=float(token_nll(logits, gold).mean()),
            kl_to_full=kl,
            recomputed_tokens=gen.stats.recomputed_tokens,
        )
    return ExampleResult(example.id, example.question, example.answers, scores)
