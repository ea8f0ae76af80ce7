"""Client request bodies: the engine's own token layout, its block structure, and the encode requests."""

from __future__ import annotations

from block_attention.vllm_connector import client
from block_attention.vllm_connector.protocol import PARAM, cache_salt, parse


def test_serve_body_is_the_engines_layout(make_engine, docs):
    engine = make_engine()
    question = "Where did the lighthouse stand?"
    plan = client.plan(engine.builder, docs, question)
    layout = engine.layout(docs, question)
    assert plan.layout == layout
    body = plan.serve_body(max_tokens=4, temperature=0.0)
    assert body["prompt"] == layout.input_ids() and body["max_tokens"] == 4
    req = parse(body["kv_transfer_params"], len(body["prompt"]))
    assert [(b.doc_id, b.n_tokens) for b in req.blocks] == [(s.doc_id, len(s.token_ids)) for s in layout.blocks]
    assert req.context_len == layout.context_len and body["cache_salt"] == cache_salt(req)
    assert "prompt" not in client.extra_body({**body, "model": "m"}) and "model" not in client.extra_body(body)


def test_encode_bodies_hold_each_block_alone(make_engine, docs):
    engine = make_engine()
    plan = client.plan(engine.builder, docs, "q?")
    bodies = plan.encode_bodies()
    assert [b["prompt"] for b in bodies] == [list(s.token_ids) for s in plan.layout.blocks]
    for body in bodies:
        req = parse(body["kv_transfer_params"], len(body["prompt"]))
        assert req.role == "encode" and body["max_tokens"] == 1
    only = plan.encode_bodies([docs[1].doc_id])
    assert len(only) == 1 and only[0]["kv_transfer_params"][PARAM]["blocks"][0]["id"] == docs[1].doc_id


def test_sampling_fields_ask_vllm_for_the_engines_decoding():
    from block_attention import GenerationConfig

    greedy = client.sampling_fields(GenerationConfig(max_new_tokens=7, stop=("\n",)))
    assert greedy == {"max_tokens": 7, "stop": ["\n"], "ignore_eos": False, "temperature": 0.0}
    sampled = client.sampling_fields(GenerationConfig(max_new_tokens=3, do_sample=True, temperature=0.7, top_p=0.9,
                                                      top_k=5, seed=11, stop_on_eos=False))
    assert sampled == {"max_tokens": 3, "stop": None, "ignore_eos": True, "temperature": 0.7, "top_p": 0.9,
                       "seed": 11, "top_k": 5}


def test_block_client_refuses_an_unknown_encode_policy():
    import pytest

    with pytest.raises(ValueError, match="encode must be 'missing', 'first' or 'never'"):
        client.VLLMBlockClient("http://127.0.0.1:1", "m", "/nonexistent", encode="sometimes")  # type: ignore[arg-type]
