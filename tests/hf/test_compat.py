"""transformers compatibility (issue #15, class 9): the cache is passed under the name the installed release's
forward accepts, read back from either output field, and no forward call warns about a deprecated argument."""

from __future__ import annotations

import inspect
import warnings

from block_attention import BlockAttentionEngine, EngineConfig, PromptConfig
from block_attention.hf.compat import cache_argument, cache_kwargs, output_cache
from block_attention.testing.oracle import reference_greedy


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


def test_cache_over_adopts_full_layers_and_matches_the_public_constructor():
    import torch
    from transformers import DynamicCache

    from block_attention.hf.cache import GrowingLayer
    from block_attention.hf.compat import cache_over
    from block_attention.testing import tiny_model

    model = tiny_model("llama", seed=0)
    torch.manual_seed(0)
    layers = [(torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16), None if i % 2 == 0 else 4)
              for i in range(model.config.num_hidden_layers)]
    adopted = cache_over(layers)
    copied = DynamicCache(ddp_cache_data=[(k, v) if w is None else (k, v, torch.tensor(w)) for k, v, w in layers])
    for layer, twin, (k, v, w) in zip(adopted.layers, copied.layers, layers):
        assert type(layer) is (GrowingLayer if w is None else type(twin))  # full layers append in place
        assert isinstance(layer, type(twin)) and layer.get_seq_length() == twin.get_seq_length()
        assert torch.equal(layer.keys, twin.keys) and torch.equal(layer.values, twin.values)
        assert (layer.keys.data_ptr() == k.data_ptr()) == (w is None)  # full layers: no copy
    assert adopted.get_seq_length() == 9
    ids = torch.tensor([[5, 7, 11]])
    out = model(input_ids=ids, position_ids=torch.arange(9, 12)[None], **cache_kwargs(model, cache_over(
        [(k, v, None) for k, v, _ in layers])), use_cache=True).logits
    ref = model(input_ids=ids, position_ids=torch.arange(9, 12)[None], **cache_kwargs(model, DynamicCache(
        ddp_cache_data=[(k, v) for k, v, _ in layers])), use_cache=True).logits
    assert torch.equal(out, ref)
    assert all(torch.equal(k, layers[i][0]) for i, (k, _, _) in enumerate(layers))  # the forward wrote nothing back
