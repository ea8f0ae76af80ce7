"""LangChain's standard unit tests for ChatBlockAttention (tiny offline model injected as the engine)."""

from __future__ import annotations

import functools
from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_block_attention import ChatBlockAttention


@functools.lru_cache(maxsize=1)
def _engine() -> Any:
    from block_attention import BlockAttentionEngine
    from block_attention.testing import tiny_model, tiny_tokenizer

    return BlockAttentionEngine(tiny_model("llama", seed=0), tiny_tokenizer())


class TestChatBlockAttentionStandard(ChatModelUnitTests):
    """Tool calling, structured output and multimodal inputs are unsupported (the suite's default flags)."""

    @property
    def chat_model_class(self) -> type[ChatBlockAttention]:
        return ChatBlockAttention

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": _engine(), "model": "tiny-random-llama"}
