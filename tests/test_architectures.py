"""Every architecture of the registry serves block mode exactly; models without RoPE are refused for block mode only.

Per architecture x attention implementation: the block path (cold, then warm with the blocks permuted so every
block is a cache hit) against the independent masked-forward oracle (block mask AND the model's own per-layer
window): float32 max error <= 1e-4 and identical greedy tokens. Windowed models get prompts and blocks longer
than their window, and their assembled cache keeps only the window on sliding layers.
"""

import pytest
import torch

from block_attention import Block, BlockAttentionEngine
from block_attention.errors import UnsupportedModelError
from block_attention.oracle import attention_modules, model_masks, reference_greedy, reference_logits
from block_attention.rope import inspect_model
from block_attention.testing import ARCHITECTURES, REFUSED, WINDOW, architecture_model, refused_model

QUESTION = "Where did the lighthouse stand?"
TOL = 1e-4
CASES = [(name, attn) for name, arch in ARCHITECTURES.items() for attn in arch.attn_implementations]


@pytest.fixture(scope="module")
def long_docs(docs):
    # Blocks of ~20-60 tokens, each longer than the window; the prompt is several windows long. The last one is
    # short so that even on all-sliding models the final block's receptive field crosses a block boundary.
    order = [(docs[1], 2), (docs[2], 2), (docs[0], 1)]
    return [Block(" ".join([d.text] * k), d.doc_id, title=d.title, score=d.score) for d, k in order]


def _max_error(engine, model, blocks):
    out = engine.prefill(blocks, QUESTION, all_logits=True)
    ref = reference_logits(model, out.layout)
    assert out.logits.shape == ref.shape
    return (out.logits - ref).abs().max().item(), out


@pytest.mark.parametrize("name,attn", CASES)
def test_block_path_matches_oracle_cold_and_warm(name, attn, tok, long_docs):
    model = architecture_model(name, seed=1, attn_implementation=attn)
    engine = BlockAttentionEngine(model, tok)
    cold_err, out = _max_error(engine, model, long_docs)
    assert out.stats.misses == len(out.layout.blocks) and out.stats.hits == 0  # docs + the prompt prefix
    assert cold_err <= TOL, f"{name}/{attn}: cold max error {cold_err:.2e}"
    gen = engine.generate(long_docs, QUESTION, max_new_tokens=8, stop_on_eos=False)
    assert list(gen.token_ids) == reference_greedy(model, out.layout, 8)
    # The oracle is not trivially full attention: the block mask changes the logits.
    full = engine.prefill(long_docs, QUESTION, mode="full", all_logits=True)
    assert (full.logits - reference_logits(model, out.layout)).abs().max().item() > 1e-3

    permuted = [long_docs[i] for i in (2, 0, 1)]
    warm_err, warm = _max_error(engine, model, permuted)
    assert warm.stats.hits == len(warm.layout.blocks) and warm.stats.misses == 0
    assert warm_err <= TOL, f"{name}/{attn}: warm max error {warm_err:.2e}"
    gen = engine.generate(permuted, QUESTION, max_new_tokens=8, stop_on_eos=False)
    assert list(gen.token_ids) == reference_greedy(model, warm.layout, 8)

    windows = engine.rotary.windows
    if any(windows):
        assert out.layout.total_len > 4 * WINDOW and max(out.layout.block_lengths) > WINDOW
        held = [layer.keys.shape[-2] for layer in warm.cache.layers]  # tokens each cache layer keeps
        for w, n in zip(windows, held):
            assert n == (w - 1 if w else out.layout.total_len), (windows, held)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_detected_windows_are_the_models_own_masks(name, tok, long_docs):
    """inspect_model's per-layer windows equal the masks the model itself applies on a long plain forward."""
    model = architecture_model(name, attn_implementation=ARCHITECTURES[name].attn_implementations[-1])
    info = inspect_model(model)
    ids = torch.tensor([tok("x " * (3 * WINDOW))["input_ids"]])  # [1, T]
    total = ids.shape[1]
    masks = model_masks(model, ids)
    q = torch.arange(total)[:, None]
    k = torch.arange(total)[None, :]
    for module, window in zip(attention_modules(model), info.windows):
        expected = (k <= q) & ((q - k < window) if window else True)
        assert torch.equal(masks[module].cpu(), expected), (name, module.layer_idx, window)


@pytest.mark.parametrize("name", list(REFUSED))
def test_models_without_rope_are_refused_for_block_mode_only(name, tok, docs):
    model = refused_model(name)
    reason = REFUSED[name].reason_keyword
    with pytest.raises(UnsupportedModelError, match=reason):
        inspect_model(model)
    engine = BlockAttentionEngine(model, tok)
    with pytest.raises(UnsupportedModelError, match=reason):
        engine.generate(docs, QUESTION, max_new_tokens=2)
    with pytest.raises(UnsupportedModelError, match="mode='full'"):
        engine.warm(docs)
    gen = engine.generate(docs, QUESTION, mode="full", max_new_tokens=4, stop_on_eos=False)
    assert gen.stats.mode == "full" and len(gen.token_ids) == 4
