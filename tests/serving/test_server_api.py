"""The HTTP server against the in-process engine: equal answers (block/full, chat/text, streamed/not), errors,
API key, metrics, cancellation on disconnect, and concurrent streaming clients."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from block_attention.serving import ServerSettings, ServerThread, create_app
from server_helpers import DOCS, QUESTION, Served, as_blocks, metric


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": QUESTION}])
    return client.post("/v1/chat/completions", json=body)


def stream_text(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Concatenated streamed text and every chunk of an SSE response (checks the [DONE] terminator)."""
    chunks: list[dict[str, Any]] = []
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        chunks.append(json.loads(line[6:]))
    text = ""
    for chunk in chunks:
        for choice in chunk["choices"]:
            text += choice.get("text") or choice.get("delta", {}).get("content") or ""
    return text, chunks


@pytest.mark.parametrize("mode", ["block", "full"])
def test_chat_answers_equal_the_engine_streamed_and_not(served: Served, reference: Any, mode: str) -> None:
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": QUESTION}]
    want = reference.generate(as_blocks(DOCS), QUESTION, system="Answer briefly.",
                              history=[{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}],
                              mode=mode, max_new_tokens=12)
    with served.client() as client:
        body = {"messages": messages, "documents": DOCS, "max_tokens": 12, "mode": mode}
        got = chat(client, **body).json()
        streamed, chunks = stream_text(client, "/v1/chat/completions",
                                       {**body, "stream_options": {"include_usage": True}})
    assert got["object"] == "chat.completion" and got["model"] == "tiny-random"
    assert got["choices"][0]["message"] == {"role": "assistant", "content": want.text}
    assert got["choices"][0]["finish_reason"] == {"eos": "stop", "stop": "stop", "length": "length"}[want.finish_reason]
    assert got["usage"] == {"prompt_tokens": want.stats.prompt_tokens, "completion_tokens": len(want.token_ids),
                            "total_tokens": want.stats.prompt_tokens + len(want.token_ids)}
    info = got["block_attention"]
    assert info["mode"] == mode and info["documents"] == [b.key for b in as_blocks(DOCS)]
    assert streamed == want.text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == got["usage"]
    assert chunks[-2]["block_attention"]["mode"] == mode
    if mode == "block":  # the streamed request found every document in memory
        assert chunks[-2]["block_attention"]["hits_by_tier"] == {"memory": len(DOCS) + 1}
        assert chunks[-2]["block_attention"]["misses"] == 0


def test_text_completions_equal_the_engine(served: Served, reference: Any) -> None:
    want = reference.generate(as_blocks(DOCS[:2]), "What is cached?", max_new_tokens=10)
    with served.client() as client:
        body = {"model": "anything", "prompt": "What is cached?", "documents": DOCS[:2], "max_tokens": 10}
        got = client.post("/v1/completions", json=body).json()
        streamed, chunks = stream_text(client, "/v1/completions", body)
    assert got["object"] == "text_completion" and got["choices"][0]["text"] == want.text
    assert streamed == want.text and chunks[0]["object"] == "text_completion"


def test_stop_strings_and_seeded_sampling(served: Served, reference: Any) -> None:
    plain = reference.generate(as_blocks(DOCS), QUESTION, max_new_tokens=16)
    stop = plain.text[3:5]
    want = reference.generate(as_blocks(DOCS), QUESTION, max_new_tokens=16, stop=(stop,))
    sampled = reference.generate(as_blocks(DOCS), QUESTION, max_new_tokens=8, do_sample=True, temperature=0.7,
                                 top_p=0.9, seed=7)
    with served.client() as client:
        got = chat(client, documents=DOCS, max_tokens=16, stop=[stop]).json()["choices"][0]
        sample = chat(client, documents=DOCS, max_tokens=8, temperature=0.7, top_p=0.9, seed=7).json()
    assert stop and got["message"]["content"] == want.text and got["finish_reason"] == "stop"
    assert sample["choices"][0]["message"]["content"] == sampled.text


def test_no_documents_answers_the_question_alone(served: Served, reference: Any) -> None:
    want = reference.generate([], QUESTION, max_new_tokens=6)
    with served.client() as client:
        got = chat(client, max_tokens=6).json()
    assert got["choices"][0]["message"]["content"] == want.text and got["block_attention"]["documents"] == []


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (json.dumps({"messages": []}).encode(), 400, "messages"),
        (json.dumps({"prompt": "x"}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), 400,
         "temperature"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "mode": "fast"}).encode(), 400, "mode"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "documents": [{"title": "t"}]}).encode(), 400,
         "documents.0.text"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "documents": "text"}).encode(), 400,
         "documents"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}).encode(),
         400, "last message"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), 400, "'n'"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}).encode(), 400,
         "context window"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}],
                     "documents": [{"doc_id": "a", "text": "one"}, {"doc_id": "a", "text": "two"}]}).encode(), 400,
         "share doc_id"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "documents": [{"text": "y" * 70000}]}).encode(),
         413, "larger than"),
    ],
)
def test_bad_requests_get_openai_errors_and_cache_nothing(served: Served, body: bytes, status: int,
                                                          fragment: str) -> None:
    puts = served.engine.store.stats().puts
    with served.client() as client:
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        streamed = client.post("/v1/chat/completions", content=body.replace(b'"messages"', b'"stream": true, '
                                                                                          b'"messages"', 1))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] + str(error["param"]) and error["type"] == "invalid_request_error"
    assert streamed.status_code == status and streamed.json()["error"]["type"] == "invalid_request_error"
    assert served.engine.store.stats().puts == puts  # a refused request writes nothing to the KV cache


def test_context_too_long_has_its_code(served: Served) -> None:
    with served.client() as client:
        error = chat(client, documents=DOCS, max_tokens=5000).json()["error"]
    assert error["code"] == "context_length_exceeded"


def test_unknown_route_models_health(served: Served) -> None:
    with served.client() as client:
        missing = client.get("/v1/nothing")
        models = client.get("/v1/models").json()
        health = client.get("/health").json()
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert models["data"][0]["id"] == "tiny-random" and health["status"] == "ok"


def test_api_key_guards_every_route_but_health(reference: Any) -> None:
    app = create_app(reference, ServerSettings(model_name="tiny-random", api_key="s3cret"))
    with ServerThread(app) as thread, httpx.Client(base_url=thread.base_url, timeout=60) as client:
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"),
                             ("POST", "/v1/completions")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["type"] == "authentication_error"
        assert client.get("/health").status_code == 200
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=good).status_code == 200
        assert client.post("/v1/chat/completions", json=body, headers=good).status_code == 200


def test_metrics_count_requests_errors_ttft_and_tiers(served: Served) -> None:
    with served.client() as client:
        before = client.get("/metrics").text
        chat(client, documents=DOCS, max_tokens=2)
        chat(client, messages=[])
        after = client.get("/metrics")
    text = after.text
    assert after.headers["content-type"].startswith("text/plain")
    route = 'route="/v1/chat/completions",status="200"'
    assert metric(text, "block_attention_http_requests_total", route) == \
        metric(before, "block_attention_http_requests_total", route) + 1
    assert metric(text, "block_attention_request_errors_total", 'type="invalid_request_error"') >= 1
    assert metric(text, "block_attention_ttft_seconds_count") == metric(before, "block_attention_ttft_seconds_count") + 1
    assert metric(text, "block_attention_kv_hits_total", 'tier="memory"') >= 3
    assert metric(text, "block_attention_kv_tier_bytes", 'tier="memory"') > 0


def test_repeated_request_reuses_the_final_block_and_answers_the_same(served: Served, reference: Any) -> None:
    question = "Which passage is about repeats?"  # a question no other test asks: its first time here
    want = reference.generate(as_blocks(DOCS), question, max_new_tokens=10)
    body = {"messages": [{"role": "user", "content": question}], "documents": DOCS, "max_tokens": 10}
    with served.client() as client:
        before = metric(client.get("/metrics").text, "block_attention_final_reused_total")
        first, again = chat(client, **body).json(), chat(client, **body).json()
        after = metric(client.get("/metrics").text, "block_attention_final_reused_total")
    assert not first["block_attention"]["final_reused"] and again["block_attention"]["final_reused"]
    assert first["choices"][0]["message"]["content"] == again["choices"][0]["message"]["content"] == want.text
    assert after == before + 1


def test_disconnecting_client_stops_generation(served: Served) -> None:
    body = {"messages": [{"role": "user", "content": QUESTION}], "documents": DOCS}
    with served.client() as client:
        def pieces() -> float:
            return metric(client.get("/metrics").text, "block_attention_streamed_pieces_total")

        start = pieces()
        full, _ = stream_text(client, "/v1/chat/completions", {**body, "max_tokens": 64})
        per_64 = pieces() - start
        assert per_64 >= 32 and len(full) > 0  # the oracle: this prompt does not stop early by itself
        cancelled = metric(client.get("/metrics").text, "block_attention_requests_cancelled_total")
        start = pieces()
        with client.stream("POST", "/v1/chat/completions", json={**body, "max_tokens": 3000, "stream": True}) as r:
            for line in r.iter_lines():
                if '"content":"' in line and '"role"' not in line:
                    break  # the first text piece arrived: hang up
        deadline = time.monotonic() + 30
        while metric(client.get("/metrics").text, "block_attention_requests_cancelled_total") == cancelled:
            assert time.monotonic() < deadline, "the server never noticed the disconnect"
            time.sleep(0.05)
        assert chat(client, max_tokens=1).status_code == 200  # queued behind the cancelled one: it has ended
        assert pieces() - start < per_64  # far fewer than the 3000 requested


def test_eight_concurrent_streams_equal_sequential_answers(served: Served) -> None:
    requests = []
    for i in range(8):
        docs = [DOCS[i % 3], {"doc_id": f"own-{i}", "text": f"Passage number {i} talks about lighthouse {i}."}]
        requests.append({"messages": [{"role": "user", "content": f"Question {i}: where?"}], "documents": docs,
                         "max_tokens": 8, "mode": "block" if i % 4 else "full"})
    with served.client() as client:
        sequential = [chat(client, **body).json()["choices"][0]["message"]["content"] for body in requests]
    served.engine.store.clear()  # the concurrent round encodes everything again
    results: list[str | None] = [None] * 8
    barrier = threading.Barrier(8)

    def run(i: int) -> None:
        with served.client() as client:
            barrier.wait()
            results[i] = stream_text(client, "/v1/chat/completions", requests[i])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == sequential
