"""``/openapi.json`` as the server answers: FastAPI's schema of the routes, with the
errors every route can give (400, never 422; 401, 404, 413, 421, 429, 503) as OpenAI
error bodies, SSE answers as ``text/event-stream``, and ``/api/stream``'s query parameters,
one per ``SamplingParams`` field (the route reads its query itself, so FastAPI cannot see
them).

    install_openapi(app)
"""

from __future__ import annotations

import dataclasses

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from decoding import SamplingParams

from .web.query import REQUEST_KEYS

_ERRORS = {
    "400": "invalid request: the error names the field (param)",
    "401": "missing or wrong API key (when the server has one)",
    "404": "no such route, model or stream",
    "413": "the body is larger than the server takes",
    "421": "the Host header does not name this server",
    "429": "the waiting queue is full; retry after Retry-After seconds",
    "503": "the model is loading or failed to load, or the server is shutting down",
}
_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
_STREAMING = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/streams/{stream_id}", "/api/stream"}
# One server-sent event (a stream is a sequence of them): its data is JSON text, or [DONE].
_SSE_EVENT = {"type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                                               "id": {"type": "string"}, "retry": {"type": "integer"}}}
_REQUEST_KEY_SCHEMAS = {
    "prompt": ({"type": "string"}, "the prompt (required unless resuming)"),
    "chat": ({"type": "boolean"}, "apply the chat template to the prompt as a user message"),
    "last_event_id": ({"type": "string"}, "resume after this event (as the Last-Event-ID header)"),
    "api_key": ({"type": "string"}, "the API key, for EventSource, which cannot send headers"),
    "prefix_ids": ({"type": "string"}, "comma-separated token ids the stream continues after (a fork)"),
}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (what ``/openapi.json`` and ``/docs`` show) return ``describe(app)``."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = describe(app)
        return app.openapi_schema

    app.openapi = openapi


def describe(app: FastAPI) -> dict:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    components["ErrorResponse"] = _ERROR_SCHEMA
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, what in _ERRORS.items():
                responses[status] = {"description": what, **error}
            if path in _STREAMING:
                ok = responses.setdefault("200", {"description": "OK"}).setdefault("content", {})
                ok["text/event-stream"] = {"schema": _SSE_EVENT}
    paths = schema.get("paths", {})
    if "/metrics" in paths:
        paths["/metrics"]["get"]["responses"]["200"] = {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    cancel = paths.get("/api/stream/{stream_id}/cancel", {}).get("post")
    if cancel is not None:
        cancel["responses"].pop("200", None)
        cancel["responses"]["204"] = {"description": "cancelled"}
    stream = paths.get("/api/stream", {}).get("get")
    if stream is not None:
        stream["parameters"] = _stream_parameters()
        stream["responses"]["204"] = {"description": "resumed after the last event of a finished stream"}
        stream["responses"]["200"]["content"] = {"text/event-stream": {"schema": _SSE_EVENT}}
    return schema


def _stream_parameters() -> list[dict]:
    """``/api/stream``'s query: the request keys, then every ``SamplingParams`` field."""
    params = [{"name": key, "in": "query", "required": False, "schema": s, "description": d}
              for key, (s, d) in _REQUEST_KEY_SCHEMAS.items() if key in REQUEST_KEYS]
    params.append({"name": "max_tokens", "in": "query", "required": False, "schema": {"type": "integer"},
                   "description": "the same as max_new_tokens"})
    for f in dataclasses.fields(SamplingParams):
        params.append({"name": f.name, "in": "query", "required": False, "schema": _query_schema(str(f.type)),
                       "description": f.metadata.get("help", "") if f.metadata else ""})
    return params


def _query_schema(kind: str) -> dict:
    """A field's type as the query string carries it (``server/web/query.py`` reads it)."""
    base = kind.split(" | ")[0]
    if base == "bool":
        return {"type": "boolean"}
    if base == "int":
        return {"type": "integer"}
    if base == "float":
        return {"type": "number"}
    return {"type": "string"}  # text, a comma-separated list, or JSON
