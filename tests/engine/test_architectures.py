"""Every architecture of the registry serves block mode exactly; models without RoPE are refused for block mode only.

Per architecture x attention implementation: the block path (cold, then warm with the blocks permuted so every
block is a cache hit) against the independent masked-forward oracle (block mask AND the model's own per-layer
window): float32 max error <= 1e-4 and identical greedy tokens. Windowed models get prompts and blocks longer
than their window, and their assembled cache keeps only the window on sliding layers.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from block_attention import Block, BlockAttentionEngine
from block_attention.core.errors import UnsupportedModelError
from block_attention.hf.rope import inspect_model
from block_attention.testing import ARCHITECTURES, REFUSED, WINDOW, architecture_model, refused_model
from block_attention.testing.oracle import attention_modules, model_masks, reference_greedy, reference_logits

QUESTION = "Where did the lighthouse stand?"
TOL = 1e-4
MEASURED: dict[tuple[str, str], float] = {}  # (architecture, attn) -> max error
ROWS: dict[str, str] = {}  # README table rows built from what the tests measured


def _table_script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "architectures_table.py"
    spec = importlib.util.spec_from_file_location("architectures_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLE = _table_script()
CASES = [(name, attn) for name, arch in ARCHITECTURES.items() for attn in arch.attn_implementations()]


@pytest.fixture(scope="module")
def long_docs(docs):
    # Two blocks longer than the window, the prompt several windows long; the last block is short so that even on
    # two-layer all-sliding models the final block's receptive field (2 x 15 tokens) crosses a block boundary.
    short = Block("Pharos, 280 BC.", docs[0].doc_id, title=docs[0].title, score=docs[0].score)
    return [Block(d.text + " " + d.text, d.doc_id, title=d.title, score=d.score) for d in docs[1:]] + [short]


def _check(engine, model, blocks, greedy_tokens):
    """Block path vs oracle: logits max error and greedy tokens. Returns (max error, prefill output, oracle)."""
    out = engine.prefill(blocks, QUESTION, all_logits=True)
    ref = reference_logits(model, out.layout)
    assert out.logits.shape == ref.shape
    gen = engine.generate(blocks, QUESTION, max_new_tokens=greedy_tokens, stop_on_eos=False)
    assert list(gen.token_ids) == reference_greedy(model, out.layout, greedy_tokens)
    again = engine.generate(blocks, QUESTION, max_new_tokens=greedy_tokens, stop_on_eos=False)  # an exact repeat
    final = len(out.layout.final_ids)
    keeps = all(w is None or w - 1 >= final for w in engine.rotary.windows)  # the window holds the final block
    assert again.stats.final_reused == keeps and again.token_ids == gen.token_ids
    return (out.logits - ref).abs().max().item(), out, ref


@pytest.mark.parametrize("name,attn", CASES)
def test_block_path_matches_oracle_cold_and_warm(name, attn, tok, long_docs):
    model = architecture_model(name, seed=1, attn_implementation=attn)
    engine = BlockAttentionEngine(model, tok)
    tokens = 2 if ARCHITECTURES[name].discovered else 6  # fewer decode steps for the long tail: suite time
    cold_err, out, ref = _check(engine, model, long_docs, tokens)
    assert out.stats.misses == len(out.layout.blocks) and out.stats.hits == 0  # docs + the prompt prefix
    assert cold_err <= TOL, f"{name}/{attn}: cold max error {cold_err:.2e}"
    # The oracle is not trivially full attention: the block mask changes the logits.
    full = engine.prefill(long_docs, QUESTION, mode="full", all_logits=True)
    assert (full.logits - ref).abs().max().item() > 1e-3

    permuted = [long_docs[i] for i in (2, 0, 1)]
    warm_err, warm, _ = _check(engine, model, permuted, tokens // 2)
    assert warm.stats.hits == len(warm.layout.blocks) and warm.stats.misses == 0
    assert warm_err <= TOL, f"{name}/{attn}: warm max error {warm_err:.2e}"
    MEASURED[(name, attn)] = max(cold_err, warm_err)
    ROWS[name] = TABLE.row(ARCHITECTURES[name], engine.rotary)

    windows = engine.rotary.windows
    if any(windows):
        assert out.layout.total_len > 4 * WINDOW and max(out.layout.block_lengths) > WINDOW
        held = [layer.keys.shape[-2] for layer in warm.cache.layers]  # tokens each cache layer keeps
        for w, n in zip(windows, held):
            assert n == (w - 1 if w else warm.layout.total_len), (windows, held)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_detected_windows_are_the_models_own_masks(name, tok, long_docs):
    """inspect_model's per-layer windows equal the masks the model itself applies on a long plain forward."""
    model = architecture_model(name, attn_implementation="eager")
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
    ROWS[name] = TABLE.refused_row(REFUSED[name], model.config.model_type)


def test_readme_table_is_generated_from_these_tests():
    """Every README row equals the row built from this session's measurements (all rows after a full run)."""
    readme = TABLE.readme_section(TABLE.README.read_text()).splitlines()
    assert readme[:2] == TABLE.HEADER.splitlines(), "README architecture table missing; run the script with --write"
    keys = TABLE.order()
    assert len(readme) == 2 + len(keys), "README table rows differ from the registry; run the script with --write"
    if not ROWS:  # run alone: measure every model now
        ROWS.update(dict(zip(keys, TABLE.render().splitlines()[2:])))
    for key, line in zip(keys, readme[2:]):
        if key in ROWS:
            assert line == ROWS[key], f"README row for {key!r} is stale; run scripts/architectures_table.py --write"
