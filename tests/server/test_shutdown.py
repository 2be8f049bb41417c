"""SIGTERM/SIGINT with streams open: new requests get 503, open ones may finish within the
shutdown grace, then each stream ends with a final ``server_shutdown`` error event and a
clean close; the process exits 0 within grace + 2 s, with no traceback in its log."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from server_harness import CHAT, data_json, iter_sse, read_log, start_step_server, wait_until

GRACE = 2.0


def _read_stream(url, path, out, key, **kw):
    """Read one SSE stream to its end into ``out[key]``: its events, and how it ended."""
    events, ended = [], "ok"
    try:
        with httpx.stream(kw.pop("method", "POST"), url + path, timeout=30, **kw) as r:
            out[key + ".status"] = r.status_code
            for ev in iter_sse(r):
                events.append(ev)
    except httpx.HTTPError as exc:  # a stream cut without its chunked terminator lands here
        ended = f"{type(exc).__name__}: {exc}"
    out[key] = events
    out[key + ".ended"] = ended


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.reliability)])
def test_shutdown_drains_then_closes_every_stream_with_a_final_event(tiny_model_dir, sig):
    # 30 ms a step and 2,000 tokens: these streams would run for a minute; the short one ends at once.
    proc, url = start_step_server(tiny_model_dir, delay_s=0.03, shutdown_grace_s=GRACE, max_total_tokens=250)
    out: dict = {}
    long = {"max_tokens": 200, "stream": True}
    readers = [
        threading.Thread(target=_read_stream, args=(url, "/v1/chat/completions", out, "chat"),
                         kwargs={"json": {**CHAT, **long}}),
        threading.Thread(target=_read_stream, args=(url, "/v1/completions", out, "text"),
                         kwargs={"json": {"prompt": "Once", "ignore_eos": True, **long}}),
        threading.Thread(target=_read_stream, args=(url, "/api/stream", out, "web"),
                         kwargs={"method": "GET", "params": {"prompt": "Once", "max_tokens": 200,
                                                             "ignore_eos": "true"}}),
        # finishes within the grace: it must end normally, with [DONE]
        threading.Thread(target=_read_stream, args=(url, "/v1/completions", out, "short"),
                         kwargs={"json": {"prompt": "Once", "ignore_eos": True, "max_tokens": 5,
                                          "stream": True}}),
    ]
    for t in readers:
        t.start()
    # every stream is running (the short one may be done already) and has sent some tokens
    assert wait_until(lambda: httpx.get(url + "/health").json()["running"] >= 3, timeout=20)
    time.sleep(0.3)
    proc.send_signal(sig)
    sent = time.monotonic()
    time.sleep(0.2)
    try:
        refused = httpx.post(url + "/v1/completions", json={"prompt": "Once", "max_tokens": 2})
    except httpx.HTTPError:
        proc.kill()
        raise AssertionError(read_log(proc)[-3000:])
    for t in readers:
        t.join(15)
    code = proc.wait(GRACE + 10)
    took = time.monotonic() - sent
    stderr = read_log(proc)

    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_shutdown"
    for key in ("chat", "text", "web"):
        assert out[key + ".ended"] == "ok", (key, out[key + ".ended"])  # a clean end, not a cut
        last = out[key][-1]
        body = json.loads(last["data"])
        assert body["error"]["code"] == "server_shutdown", (key, last)
        assert body["error"]["type"] == "service_unavailable"
        assert last.get("event") == ("error" if key == "web" else None)
        tokens = [e for e in out[key][:-1] if "data" in e and e["data"] != "[DONE]"]
        assert len(tokens) >= 2  # it was streaming when the signal came
    assert out["short"][-1]["data"] == "[DONE]"  # finished within the grace: a normal end
    assert data_json(out["short"][-2])["choices"][0]["finish_reason"] == "length"
    assert code == 0
    assert took < GRACE + 2, took
    assert "Traceback" not in stderr and "CancelledError" not in stderr, stderr[-3000:]
