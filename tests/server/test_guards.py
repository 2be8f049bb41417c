"""What the server answers before a route runs: the body cap (413), the Host check
(421), the API key (401), CORS; and that a large prompt is tokenized off the event loop."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from server_harness import CHAT, serve  # noqa: F401  (serve: a fixture)


def _is_error(res, status, code, param=None):
    body = res.json()
    assert res.status_code == status, (res.status_code, body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["param"] == param, body


def test_a_body_over_the_cap_is_413_before_it_is_parsed(serve, tiny_engine):
    server = serve(tiny_engine, max_body_mb=0.01)  # 10 kB
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 20_000}], "max_tokens": 1}
    _is_error(httpx.post(server.url + "/v1/chat/completions", json=big), 413, "body_too_large")
    # Not even JSON: the cap answers first, from Content-Length.
    _is_error(httpx.post(server.url + "/v1/completions", content=b"{" * 20_000,
                         headers={"content-type": "application/json"}), 413, "body_too_large")

    # A chunked body has no Content-Length: the bytes are counted as they arrive.
    def chunks():
        for _ in range(20):
            yield b" " * 1000
    res = httpx.post(server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    _is_error(res, 413, "body_too_large")
    # Under the cap, streamed or not, a body is read as usual.
    small = b'{"prompt": "Once", "max_tokens": 2}'
    assert httpx.post(server.url + "/v1/completions", content=iter([small[:10], small[10:]]),
                      headers={"content-type": "application/json"}).status_code == 200
    assert httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}).status_code == 200


def test_health_answers_while_a_large_prompt_is_tokenized(serve, tiny_engine):
    server = serve(tiny_engine)
    prompt = "Once upon a time there was a small model. " * 12_000  # 0.5 MB: seconds of tokenizing here
    done = {}

    def send():
        start = time.perf_counter()
        done["res"] = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1},
                                 timeout=120)
        done["took"] = time.perf_counter() - start

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.2)
    waits = []
    while sender.is_alive():
        start = time.perf_counter()
        assert httpx.get(server.url + "/health").status_code == 200
        waits.append(time.perf_counter() - start)
        time.sleep(0.05)
    sender.join()
    _is_error(done["res"], 400, "context_length_exceeded", "prompt")  # it was tokenized to the end
    assert len(waits) >= 3, done["took"]
    # On the event loop, /health would wait for the whole tokenization (seconds).
    assert max(waits) < max(0.5, done["took"] / 3), (max(waits), done["took"])
