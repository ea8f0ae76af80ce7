"""DecodeState, the decode loop's rules: driven by hand with decode_step it reproduces an independent oracle
(one masked forward per step, :func:`reference_greedy`), and its stop, EOS and max-token rules hold."""

from types import SimpleNamespace

from block_attention import BlockAttentionEngine, GenerationConfig
from block_attention.engine.decoding import DecodeState, decode_step
from block_attention.testing.oracle import reference_greedy

QUESTION = "Where did the lighthouse stand?"


def _drive(engine, state, logits):
    """The decode loop written out: push, step, until finished; the pieces as streamed."""
    pieces = []
    while not state.finished:
        pieces.append(state.push(logits))
        if state.next_input is not None:
            logits = decode_step(engine.model, state, engine.device)
    pieces.append(state.flush())
    return [p for p in pieces if p]


def _start(engine, docs, generation, mode="block", eos_ids=None):
    plan, generation = engine.plan_request(docs, QUESTION, mode=mode, generation=generation)
    prefilled, lookup, kvs, assembled = engine.run_prefill(plan)
    owner = engine if eos_ids is None else SimpleNamespace(eos_ids=frozenset(eos_ids), device=engine.device,
                                                           tokenizer=engine.tokenizer)
    state = DecodeState(owner, plan, prefilled, generation, {"lookup": lookup, "encoded": kvs, "assembled": assembled})
    return plan, prefilled, state


def test_driven_by_hand_matches_the_masked_oracle(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    plan, prefilled, state = _start(engine, docs, GenerationConfig(max_new_tokens=12, stop_on_eos=False))
    pieces = _drive(engine, state, prefilled.logits[-1])
    result = state.result()
    assert list(result.token_ids) == reference_greedy(llama, plan.layout, 12, frozenset())
    assert "".join(pieces) == result.text == tok.decode(list(result.token_ids), skip_special_tokens=True)
    assert result.finish_reason == "length" and result.stats.new_tokens == 12 and state.steps == 12
    assert state.position == prefilled.position + 11  # the last token is never fed back
    assert 0 < result.stats.ttft_s <= result.stats.total_s


def test_engine_decode_is_the_same_loop(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    for mode in ("block", "full"):
        gen = GenerationConfig(max_new_tokens=10)
        _, prefilled, state = _start(engine, docs, gen, mode=mode)
        pieces = _drive(engine, state, prefilled.logits[-1])
        stream = engine.stream(docs, QUESTION, mode=mode, generation=gen)
        assert list(stream) == pieces
        assert (stream.result.text, stream.result.token_ids, stream.result.finish_reason) == \
            (state.result().text, state.result().token_ids, state.result().finish_reason)


def test_stop_string_cuts_the_text_and_keeps_the_token(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    free = engine.generate(docs, QUESTION, max_new_tokens=12, stop_on_eos=False)
    stop = free.text[3:5]
    assert stop and free.text.find(stop) == 3  # the oracle: the free text contains the stop string at 3
    _, prefilled, state = _start(engine, docs, GenerationConfig(max_new_tokens=12, stop=(stop,), stop_on_eos=False))
    pieces = _drive(engine, state, prefilled.logits[-1])
    result = state.result()
    assert result.finish_reason == "stop" and result.text == free.text[:3] == "".join(pieces)
    assert result.token_ids == free.token_ids[:len(result.token_ids)] and len(result.token_ids) < 12
    assert state.next_input is None


def test_eos_ends_without_the_token(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    free = engine.generate(docs, QUESTION, max_new_tokens=6, stop_on_eos=False)
    eos = free.token_ids[3]
    first = free.token_ids.index(eos)  # the first occurrence ends the request
    _, prefilled, state = _start(engine, docs, GenerationConfig(max_new_tokens=6), eos_ids={eos})
    _drive(engine, state, prefilled.logits[-1])
    result = state.result()
    assert result.finish_reason == "eos" and result.token_ids == free.token_ids[:first]
    assert state.steps == first + 1
    _, prefilled, state = _start(engine, docs, GenerationConfig(max_new_tokens=6, stop_on_eos=False), eos_ids={eos})
    _drive(engine, state, prefilled.logits[-1])
    assert state.result().token_ids == free.token_ids  # stop_on_eos=False: EOS is an ordinary token


def test_one_new_token_runs_no_decode_forward(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    _, prefilled, state = _start(engine, docs, GenerationConfig(max_new_tokens=1, stop_on_eos=False))
    cache_len = prefilled.cache.get_seq_length()
    state.push(prefilled.logits[-1])
    assert state.finished and state.finish_reason == "length" and state.next_input is None
    assert state.cache.get_seq_length() == cache_len  # nothing was fed back
    assert state.result().token_ids == (int(prefilled.logits[-1].argmax()),)


def test_seeded_sampling_is_reproducible_per_state(tok, llama, docs):
    engine = BlockAttentionEngine(llama, tok, store=False)
    gen = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, seed=7, stop_on_eos=False)
    runs = []
    for _ in range(2):
        _, prefilled, state = _start(engine, docs, gen)
        _drive(engine, state, prefilled.logits[-1])
        runs.append(state.result().token_ids)
    greedy = engine.generate(docs, QUESTION, max_new_tokens=10, stop_on_eos=False).token_ids
    assert runs[0] == runs[1] == engine.generate(docs, QUESTION, generation=gen).token_ids
    assert runs[0] != greedy  # the oracle: temperature 1.5 on a random model leaves the greedy path
