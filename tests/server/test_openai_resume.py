"""Resumable OpenAI streams: chunks carry SSE ids, and a stream that asked for it
(``stream_options.resumable``) goes on after its reader drops, so a reconnect with
``Last-Event-ID`` gets exactly the rest, generated once."""

from __future__ import annotations

import httpx

from server_harness import CHAT, StepEngine, data_json, iter_sse, serve, wait_until  # noqa: F401

RESUMABLE = {"include_usage": True, "resumable": True}


def read(method, url, limit=None, **kw):
    """The SSE events of one request (the first ``limit`` of them, then hang up)."""
    with httpx.stream(method, url, timeout=30, **kw) as res:
        assert res.status_code == 200, res.read()
        events = []
        for e in iter_sse(res):
            if "data" in e:
                events.append(e)
            if limit is not None and len(events) == limit:
                break
    return events


def seqs(events):
    return [int(e["id"].rsplit(".", 1)[1]) for e in events]


def test_every_chunk_has_an_id_and_a_plain_stream_is_not_kept(serve, tiny_engine):
    server = serve(tiny_engine)
    body = {**CHAT, "max_tokens": 4, "temperature": 0, "stream": True, "ignore_eos": True}
    events = read("POST", server.url + "/v1/chat/completions", json=body)
    stream_id = events[0]["id"].rsplit(".", 1)[0]
    assert seqs(events) == list(range(len(events))) and all(e["id"].startswith(stream_id + ".") for e in events)
    assert events[-1]["data"] == "[DONE]"
    # Not asked to be resumable: the generation ends with its reader and nothing is kept.
    res = httpx.get(f"{server.url}/v1/streams/{stream_id}", headers={"Last-Event-ID": events[1]["id"]})
    assert res.status_code == 404 and res.json()["error"]["code"] == "stream_not_found"


def test_a_resumable_chat_stream_continues_after_a_drop(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.03)
    server = serve(slow)
    body = {**CHAT, "max_tokens": 16, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": RESUMABLE}
    first = read("POST", server.url + "/v1/chat/completions", json=body, limit=4)
    steps_at_drop = slow.steps
    assert wait_until(lambda: slow.steps > steps_at_drop + 3)  # it goes on without a reader
    stream_id = first[0]["id"].rsplit(".", 1)[0]
    rest = read("GET", f"{server.url}/v1/streams/{stream_id}", headers={"Last-Event-ID": first[-1]["id"]})
    events = first + rest
    assert seqs(events) == list(range(len(events))) and events[-1]["data"] == "[DONE]"
    assert slow.steps == 16  # generated once, not again for the reconnect
    chunks = [data_json(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    whole = httpx.post(server.url + "/v1/chat/completions",
                       json={**CHAT, "max_tokens": 16, "temperature": 0, "ignore_eos": True}).json()
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"]["completion_tokens"] == 16
    # The same route with the header resumes too, from any event sent; after the last: 204.
    again = read("POST", server.url + "/v1/chat/completions", json=body, headers={"Last-Event-ID": events[5]["id"]})
    assert again == events[6:]
    done = httpx.get(f"{server.url}/v1/streams/{stream_id}", params={"last_event_id": events[-1]["id"]})
    assert done.status_code == 204
    # Without an id: the whole stream from the start.
    assert read("GET", f"{server.url}/v1/streams/{stream_id}") == events


def test_a_resumable_completion_and_bad_resumes(serve, tiny_engine):
    server = serve(tiny_engine)
    body = {"prompt": "Once upon", "max_tokens": 6, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": RESUMABLE}
    events = read("POST", server.url + "/v1/completions", json=body)
    stream_id = events[0]["id"].rsplit(".", 1)[0]
    rest = read("POST", server.url + "/v1/completions", json=body, headers={"Last-Event-ID": events[2]["id"]})
    assert rest == events[3:]
    gone = "0123456789abcdef"
    for sid, last_id, status in [(stream_id, f"{stream_id}.999", 400), (stream_id, "nonsense", 400),
                                 (stream_id, f"{gone}.1", 400), (gone, f"{gone}.1", 404)]:
        res = httpx.get(f"{server.url}/v1/streams/{sid}", headers={"Last-Event-ID": last_id})
        assert res.status_code == status and res.json()["error"]["param"] == "Last-Event-ID", last_id
    # /api/stream's streams and the OpenAI ones share the store, not their routes.
    with httpx.stream("GET", server.url + "/api/stream", params={"prompt": "Once", "max_tokens": "3"}) as res:
        web_id = next(e for e in iter_sse(res) if "id" in e)["id"]
    assert httpx.get(f"{server.url}/v1/streams/{web_id.split('.')[0]}").status_code == 404
    assert httpx.post(server.url + "/v1/completions", json=body, headers={"Last-Event-ID": web_id}).status_code == 404
    assert httpx.get(server.url + "/api/stream", headers={"Last-Event-ID": events[1]["id"]}).status_code == 404
