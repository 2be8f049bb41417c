"""Every error with a field at fault names it in ``param``, as the client spelled it; flags
that do not read and options without their switch are 400s; ``/openapi.json`` documents
what the server answers (400, not 422; 404, 413; ``/api/stream``'s query)."""

from __future__ import annotations

import httpx
import pytest

from server_harness import CHAT, serve  # noqa: F401  (serve: a fixture)


@pytest.fixture(scope="module")
def url(tiny_engine):
    from server import Settings, create_app
    from server_harness import LiveServer

    server = LiveServer(create_app(Settings(), engine=tiny_engine))
    yield server.url
    server.stop()


def _param(res, status=400):
    assert res.status_code == status, res.text
    return res.json()["error"]["param"]


@pytest.mark.parametrize("key", ["max_tokens", "max_new_tokens"])
def test_api_stream_names_the_length_key_the_client_sent(url, key):
    assert _param(httpx.get(url + "/api/stream", params={"prompt": "Once", key: -1})) == key
    too_long = httpx.get(url + "/api/stream", params={"prompt": "Once", key: 10**6})
    assert _param(too_long) == key and too_long.json()["error"]["code"] == "context_length_exceeded"


def test_a_flag_that_does_not_read_is_400(url):
    res = httpx.get(url + "/api/stream", params={"prompt": "Once", "chat": "maybe", "max_tokens": 1})
    assert _param(res) == "chat"
    with httpx.stream("GET", url + "/api/stream", params={"prompt": "Once", "chat": "off", "max_tokens": 1}) as r:
        assert r.status_code == 200


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "Once"})])
def test_stream_options_without_stream_is_400(url, path, body):
    res = httpx.post(url + path, json={**body, "max_tokens": 1, "stream_options": {"include_usage": True}})
    assert _param(res) == "stream_options"
    ok = httpx.post(url + path, json={**body, "max_tokens": 1, "stream": True,
                                      "stream_options": {"include_usage": True}})
    assert ok.status_code == 200


@pytest.mark.parametrize("path,field", [("/v1/chat/completions", "messages"), ("/v1/completions", "prompt")])
def test_an_empty_body_names_the_missing_field(url, path, field):
    assert _param(httpx.post(url + path)) == field  # no body at all
    assert _param(httpx.post(url + path, json={})) == field


def test_openapi_documents_what_the_server_answers(url):
    schema = httpx.get(url + "/openapi.json").json()
    assert "422" not in str(schema) and "HTTPValidationError" not in str(schema)
    for path in ("/v1/chat/completions", "/v1/completions"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "400", "404", "413"} <= set(responses)
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        assert "text/event-stream" in responses["200"]["content"]
    stream = schema["paths"]["/api/stream"]["get"]
    names = {p["name"]: p["schema"]["type"] for p in stream["parameters"]}
    assert (names["prompt"], names["chat"], names["max_tokens"], names["temperature"], names["top_k"]) == \
        ("string", "boolean", "integer", "number", "integer")
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["required"] == ["message", "type", "param", "code"]
