"""The one sampling rule (frameworks.options.sampling_from), and that the server builds its settings with it."""

from __future__ import annotations

import pytest

from block_attention.core.config import GenerationConfig
from block_attention.core.errors import ConfigError
from block_attention.frameworks.options import sampling_from
from block_attention.serving.openai_format import chat_request, completion_request
from block_attention.serving.schema import ChatCompletionRequest, CompletionRequest
from block_attention.serving.settings import ServerSettings


def test_greedy_ignores_sampling_knobs_and_sampling_keeps_them() -> None:
    greedy = sampling_from(max_new_tokens=5, temperature=0, top_p=0.5, top_k=3, stop="END")
    assert greedy == GenerationConfig(max_new_tokens=5, stop=("END",))
    sampled = sampling_from(max_new_tokens=5, temperature=0.7, top_p=0.5, top_k=3, seed=1, stop=["a", "b"])
    assert sampled == GenerationConfig(max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.5, top_k=3,
                                       seed=1, stop=("a", "b"))
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        sampling_from(max_new_tokens=5, temperature=-1)


@pytest.mark.parametrize("fields", [{}, {"temperature": 0, "top_p": 0.3, "seed": 4},
                                    {"temperature": 0.8, "top_p": 0.3, "seed": 4, "stop": ["x", "y"]},
                                    {"temperature": 1.2, "max_tokens": 7, "stop": "z"}])
def test_server_settings_are_the_frameworks_rule(fields: dict) -> None:
    settings = ServerSettings()
    want = sampling_from(max_new_tokens=fields.get("max_tokens", settings.default_max_tokens),
                         temperature=fields.get("temperature"), top_p=fields.get("top_p"), seed=fields.get("seed"),
                         stop=fields.get("stop"))
    chat = chat_request(ChatCompletionRequest(messages=[{"role": "user", "content": "Q"}], **fields), settings)
    text = completion_request(CompletionRequest(prompt="Q", **fields), settings)
    assert chat.generation == text.generation == want
    assert want.do_sample == bool(fields.get("temperature"))
