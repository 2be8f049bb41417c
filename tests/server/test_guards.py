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


def test_a_prompt_too_long_by_its_bytes_is_refused_before_it_is_tokenized(serve, tiny_engine, monkeypatch):
    server = serve(tiny_engine)
    calls = []
    encode = tiny_engine.encode
    monkeypatch.setattr(tiny_engine, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
    big = "Once upon a time. " * 200_000  # 3.6 MB
    floor = len(big) // tiny_engine.max_token_bytes
    res = httpx.post(server.url + "/v1/completions", json={"prompt": big, "max_tokens": 1}, timeout=60)
    _is_error(res, 400, "context_length_exceeded", "prompt")
    assert f"at least {floor} tokens" in res.json()["error"]["message"]
    res = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                     json={**CHAT, "messages": [{"role": "user", "content": big}], "max_tokens": 1})
    _is_error(res, 400, "context_length_exceeded", "messages")
    assert calls == []  # neither was tokenized
    # Within the context by its bytes but over the server's own prompt limit: also at once.
    server = serve(tiny_engine, max_prompt_tokens=100)
    res = httpx.post(server.url + "/v1/completions", json={"prompt": "x" * (tiny_engine.max_token_bytes * 101),
                                                          "max_tokens": 1})
    _is_error(res, 400, "prompt_too_long", "prompt")
    assert calls == []
    # A prompt the floor cannot refuse is tokenized and then measured, as before.
    res = httpx.post(server.url + "/v1/completions", json={"prompt": "🙂" * 100, "max_tokens": 1})  # 400 bytes, 300 tokens
    _is_error(res, 400, "prompt_too_long", "prompt")
    assert calls == [1]


def test_health_answers_while_a_large_prompt_is_tokenized(serve, tiny_engine, monkeypatch):
    # A tokenizer whose longest token could hold the whole prompt: the byte floor cannot
    # refuse it, so it is tokenized to the end (in a thread) before its length is known.
    monkeypatch.setattr(tiny_engine, "max_token_bytes", 10**9)
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


# -- security defaults ---------------------------------------------------------------------
def test_with_a_key_everything_but_health_and_the_page_needs_it(serve, tiny_engine):
    server = serve(tiny_engine, api_key="s3cret")
    url = server.url
    for path in ("/health", "/", "/static/app.js"):
        assert httpx.get(url + path).status_code == 200, path
    bearer = {"Authorization": "Bearer s3cret"}
    for path in ("/metrics", "/strategies", "/docs", "/openapi.json", "/v1/models", "/api/stream?prompt=x"):
        res = httpx.get(url + path)
        _is_error(res, 401, "invalid_api_key")
        assert res.headers["www-authenticate"] == "Bearer"
        assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for path in ("/metrics", "/strategies", "/openapi.json", "/v1/models"):
        assert httpx.get(url + path, headers=bearer).status_code == 200, path
    # EventSource cannot send headers: /api/stream (only) takes ?api_key=.
    with httpx.stream("GET", url + "/api/stream", params={"prompt": "Once", "max_tokens": 2,
                                                          "api_key": "s3cret"}) as r:
        assert r.status_code == 200
    assert httpx.get(url + "/strategies", params={"api_key": "s3cret"}).status_code == 401
    _is_error(httpx.post(url + "/v1/completions", json={"prompt": "x"}), 401, "invalid_api_key")


def test_public_metrics_opens_metrics_only(serve, tiny_engine):
    server = serve(tiny_engine, api_key="s3cret", public_metrics=True)
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert httpx.get(server.url + "/strategies").status_code == 401


def test_the_api_key_is_redacted_from_the_access_log(serve, tiny_engine, caplog):
    from server.guards import RedactKeys

    serve(tiny_engine)  # create_app installs the filter on uvicorn's access logger
    access = logging.getLogger("uvicorn.access")
    assert any(isinstance(f, RedactKeys) for f in access.filters)
    # The record exactly as uvicorn's access log makes it: (client, method, path+query, version, status).
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/api/stream?prompt=hi&api_key=s3cret&x=1", "1.1", 200),
                               None)
    assert access.filters[-1].filter(record)
    line = record.getMessage()
    assert "s3cret" not in line and "api_key=<redacted>&x=1" in line and "prompt=hi" in line


def _get_with_host(server, host: str):
    return httpx.get(server.url + "/health", headers={"Host": host})


def test_host_header_must_name_this_server(serve, tiny_engine):
    server = serve(tiny_engine)  # bound to 127.0.0.1
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost", "[::1]:8000"):
        assert _get_with_host(server, host).status_code == 200, host
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
        res = _get_with_host(server, host)
        _is_error(res, 421, "host_not_allowed", "Host")
    # --allowed-hosts adds names; "*" takes any.
    listed = serve(tiny_engine, allowed_hosts=("my.box",))
    assert _get_with_host(listed, "my.box:8000").status_code == 200
    assert _get_with_host(listed, "other.box").status_code == 421
    assert _get_with_host(serve(tiny_engine, allowed_hosts=("*",)), "other.box").status_code == 200


def test_cors_is_off_unless_origins_are_listed(serve, tiny_engine):
    origin = {"Origin": "http://page.example"}
    plain = serve(tiny_engine)
    assert "access-control-allow-origin" not in httpx.get(plain.url + "/v1/models", headers=origin).headers
    preflight = httpx.options(plain.url + "/v1/completions", headers={**origin,
                                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    cors = serve(tiny_engine, cors_origins=("http://page.example",), api_key="k")
    res = httpx.get(cors.url + "/v1/models", headers={**origin, "Authorization": "Bearer k"})
    assert res.headers["access-control-allow-origin"] == "http://page.example"
    preflight = httpx.options(cors.url + "/v1/completions", headers={**origin, "Access-Control-Request-Method": "POST",
                                                                     "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://page.example"
    other = httpx.get(cors.url + "/v1/models", headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
    assert "access-control-allow-origin" not in other.headers
