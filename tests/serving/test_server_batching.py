"""Batched decoding behind the HTTP server: concurrent clients (streaming and not) over real uvicorn get exactly
the in-process engine's answers, their decode steps really ran batched (``/metrics``, ``/health``), and
``max_batch=1`` serves them one at a time. The model thread is held while the requests arrive (a function run on
it through the worker), so that they are all waiting when it resumes: batching is certain, not a matter of timing.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from block_attention.core.errors import ConfigError
from block_attention.serving import ServerSettings, ServerThread, create_app
from server_helpers import DOCS, as_blocks, metric

N = 6


def _bodies() -> list[dict[str, Any]]:
    bodies = []
    for i in range(N):
        docs = [DOCS[i % 3], {"doc_id": f"batch-{i}", "text": f"Passage {i} says lighthouse {i} has {i} lamps."}]
        bodies.append({"messages": [{"role": "user", "content": f"Question {i}: how many lamps?"}],
                       "documents": docs[: 1 + i % 2], "max_tokens": 6 + i, "mode": "full" if i % 3 == 0 else "block",
                       "stream": i % 2 == 0})
    return bodies


def _answer(client: httpx.Client, body: dict[str, Any]) -> str:
    if not body["stream"]:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    text = ""
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        for choice in json.loads(line[6:])["choices"]:
            text += choice.get("delta", {}).get("content") or ""
    return text


def _expected(engine: Any, body: dict[str, Any]) -> str:
    question = body["messages"][-1]["content"]
    return engine.generate(as_blocks(body["documents"]), question, mode=body["mode"],
                           max_new_tokens=body["max_tokens"]).text


def _concurrently(app: Any, base_url: str, bodies: list[dict[str, Any]]) -> list[str | None]:
    """Send every body at once while the model thread is held; release it once all are queued."""
    gate, entered = threading.Event(), threading.Event()
    app.state.worker.scheduler.call(lambda _: (entered.set(), gate.wait(60)))
    assert entered.wait(60)
    results: list[str | None] = [None] * len(bodies)

    def run(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            results[i] = _answer(client, bodies[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while client.get("/health").json()["queue_depth"] < len(bodies) + 1:  # the requests and the hold
            assert time.monotonic() < deadline, "the requests never reached the model thread's queue"
            time.sleep(0.02)
    gate.set()
    for t in threads:
        t.join(120)
    return results


@pytest.mark.parametrize("max_batch", [8, 1])
def test_concurrent_clients_get_sequential_answers_batched(reference: Any, max_batch: int) -> None:
    bodies = _bodies()
    want = [_expected(reference, body) for body in bodies]
    reference.store.clear()  # the server's engine shares nothing with the reference run
    app = create_app(reference, ServerSettings(model_name="tiny-random", max_batch=max_batch))
    with ServerThread(app) as thread:
        got = _concurrently(app, thread.base_url, bodies)
        with httpx.Client(base_url=thread.base_url, timeout=60) as client:
            text = client.get("/metrics").text
            health = client.get("/health").json()
    assert got == want
    rows_max = metric(text, "block_attention_decode_batch_rows_max")
    steps = metric(text, "block_attention_decode_batch_rows_count")
    assert health["max_batch"] == max_batch and health["max_batch_rows_seen"] == rows_max and health["batched"]
    assert steps > 0 and health["queue_depth"] == 0
    if max_batch == 1:
        assert rows_max == 1
    else:  # all six were waiting together: the first decode step ran them in one forward
        assert rows_max == N
        assert metric(text, "block_attention_decode_batch_rows_sum") > steps  # rows per forward above 1 on average


def test_max_batch_setting_is_validated() -> None:
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ConfigError, match="max_batch must be a positive integer"):
            ServerSettings(max_batch=bad)


def test_health_reports_a_dead_model_thread(reference: Any) -> None:
    app = create_app(reference, ServerSettings(model_name="tiny-random"))
    with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=60) as client:
        assert client.get("/health").status_code == 200
        app.state.worker.scheduler.close()  # what a failed model thread leaves behind
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        answer = client.post("/v1/chat/completions", json={"model": "m", "max_tokens": 3,
                                                           "messages": [{"role": "user", "content": "Hi?"}]})
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "model_unavailable"
