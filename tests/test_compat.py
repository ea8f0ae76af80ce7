"""transformers compatibility (issue #15, class 9): the cache is passed under the name the installed release's
forward accepts, read back from either output field, and no forward call warns about a deprecated argument."""

from __future__ import annotations

import inspect
import warnings

from block_attention import BlockAttentionEngine, EngineConfig, PromptConfig
from block_attention.compat import cache_argument, output_cache
from block_attention.oracle import reference_greedy


def test_cache_argument_is_accepted_by_the_installed_forward(llama):
    name = cache_argument(llama)
    assert name in inspect.signature(type(llama).forward).parameters
    assert name in inspect.signature(type(llama.model).forward).parameters


def test_output_cache_reads_either_field():
    assert output_cache({"cache": "new"}) == "new"
    assert output_cache({"past_key_values": "old"}) == "old"


def test_requests_emit_no_deprecation_warning_and_match_the_oracle(tok, docs, llama):
    engine = BlockAttentionEngine(llama, tok, EngineConfig(prompt=PromptConfig()), store=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        warnings.filterwarnings("error", category=FutureWarning)
        out = engine.generate(docs, "Where did the lighthouse stand?", max_new_tokens=6)
    layout = engine.layout(docs, "Where did the lighthouse stand?")
    assert list(out.token_ids) == reference_greedy(llama, layout, 6, eos_ids=engine.eos_ids)[: len(out.token_ids)]
