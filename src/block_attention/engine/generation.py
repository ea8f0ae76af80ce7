"""Token selection, stop handling and incremental detokenization for the decode loop.

:class:`TokenSelector` does greedy or seeded sampling (temperature, top-k, top-p). :class:`TextTracker` turns the
growing token list into text, finds stop strings, and says which prefix of the text is safe to stream (it holds
back partial UTF-8 and any tail that could still become a stop string).
"""

from __future__ import annotations

from typing import Any

import torch

from block_attention.core.config import GenerationConfig


class TokenSelector:
    def __init__(self, config: GenerationConfig, device: torch.device | str) -> None:
        self.config = config
        self.generator: torch.Generator | None = None
        if config.do_sample:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(config.seed if config.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick the next token from ``logits [V]``."""
        cfg = self.config
        if not cfg.do_sample:
            return int(torch.argmax(logits).item())
        scores = logits.to(torch.float32) / cfg.temperature  # [V]
        if cfg.top_k:
            kth = torch.topk(scores, min(cfg.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if cfg.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cum = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            drop = cum - torch.softmax(sorted_scores, dim=-1) > cfg.top_p  # keep the smallest set reaching top_p
            scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


class TextTracker:
    """Decoded text of the generated tokens, stop-string detection and stream-safe boundaries."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if self.stop:
            cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text = self.text[:cut]
                self.stopped = True

    def _safe_end(self, final: bool) -> int:
        if final or self.stopped:
            return len(self.text)
        end = len(self.text)
        while end > 0 and self.text[end - 1] == "\ufffd":  # incomplete multi-byte character
            end -= 1
        for s in self.stop:  # hold back a tail that may grow into a stop string
            for k in range(min(len(s) - 1, end), 0, -1):
                if self.text[end - k:end] == s[:k]:
                    end -= k
                    break
        return max(end, self.emitted)

    def delta(self, final: bool = False) -> str:
        """New text that is safe to show (all remaining text when ``final``)."""
        end = self._safe_end(final)
        piece = self.text[self.emitted:end]
        self.emitted = end
        return piece
