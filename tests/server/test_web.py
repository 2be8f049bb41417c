"""The web page's server side, without a browser: ``GET /`` and its assets are
served by the app, and the page's Stop (``POST /api/stream/{id}/cancel``)
stops the generation at once instead of leaving it to the resume grace period."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from server import Settings, create_app
from server_harness import LiveServer, StepEngine, iter_sse


@pytest.fixture
def slow_server(tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.05)
    server = LiveServer(create_app(Settings(resume_grace_s=30.0), engine=slow))
    yield server, slow
    server.stop()


def test_page_and_its_assets_are_served(slow_server):
    server, _ = slow_server
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Everything the page loads comes from this server: no CDN, no other origin.
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in refs and "/static/app.css" in refs
    assert all(r.startswith("/") or r.startswith("data:") for r in refs), refs
    js = httpx.get(server.url + "/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "new EventSource(" in js.text and "es.close()" in js.text
    assert "http://" not in js.text and "https://" not in js.text
    assert httpx.get(server.url + "/static/app.css").status_code == 200
    assert httpx.get(server.url + "/static/missing.js").status_code == 404


def test_cancel_stops_generation_now(slow_server):
    server, slow = slow_server
    query = {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": "true"}
    with httpx.stream("GET", server.url + "/api/stream", params=query, timeout=30) as res:
        events = iter_sse(res)
        first = next(e for e in events if e.get("event") == "token")
        stream_id = first["id"].rpartition(".")[0]
        cancel = httpx.post(f"{server.url}/api/stream/{stream_id}/cancel")
        assert cancel.status_code == 204
        rest = [e for e in events if "event" in e]
    # The open reader is told the stream ended, and the worker stopped well short of 200.
    assert rest[-1]["event"] == "done" and '"finish_reason":"cancelled"' in rest[-1]["data"]
    steps = slow.steps
    time.sleep(0.3)
    assert slow.steps == steps < 200
    assert httpx.get(server.url + "/health").json()["running"] == 0
    # The stream is gone: a second cancel, or a resume, finds nothing.
    again = httpx.post(f"{server.url}/api/stream/{stream_id}/cancel")
    assert again.status_code == 404 and again.json()["error"]["code"] == "stream_not_found"


def test_cancel_needs_the_api_key_when_one_is_set(tiny_engine):
    server = LiveServer(create_app(Settings(api_key="k"), engine=tiny_engine))
    try:
        assert httpx.post(server.url + "/api/stream/abc/cancel").status_code == 401
        ok_key = httpx.post(server.url + "/api/stream/abc/cancel", headers={"Authorization": "Bearer k"})
        assert ok_key.status_code == 404
        assert httpx.get(server.url + "/").status_code == 200  # the page itself is public
    finally:
        server.stop()
