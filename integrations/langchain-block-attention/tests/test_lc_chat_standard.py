"""LangChain's standard unit tests for ChatBlockAttention (tiny offline model injected as the engine)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest

from langchain_tests.integration_tests import ChatModelIntegrationTests
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


class TestChatBlockAttentionIntegration(ChatModelIntegrationTests):
    """LangChain's standard integration suite (invoke, stream, batch, async, usage metadata, stop, ...) offline.

    Its async tests need pytest-asyncio (a dependency of langchain-tests); they are marked here, not by a global
    ``asyncio_mode``, so the rest of the repository's tests are unaffected.
    """

    @property
    def chat_model_class(self) -> type[ChatBlockAttention]:
        return ChatBlockAttention

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": _engine(), "model": "tiny-random-llama", "max_tokens": 8}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


for _name, _test in list(vars(ChatModelIntegrationTests).items()):
    if _name.startswith("test_") and inspect.iscoroutinefunction(_test):
        setattr(TestChatBlockAttentionIntegration, _name, pytest.mark.asyncio(_test))
