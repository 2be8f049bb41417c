"""Pure ASGI middlewares that answer before any route runs or any body is parsed,
each with an OpenAI error body:

- ``HostCheck``: 421 unless the ``Host`` header names this server (loopback names, plus
  ``Settings.allowed_hosts``), so a web page cannot reach a local server through DNS
  rebinding; 400 when a request has no ``Host``.
- ``ApiKey``: with ``Settings.api_key``, 401 without the key on every path but
  ``/health``, the page and its static files (and ``/metrics`` with ``public_metrics``).
- ``BodyLimit``: 413 for a body over ``Settings.max_body_mb``: from ``Content-Length``
  before a byte is read, or while a chunked body streams in.

``RedactKeys`` is the logging filter that keeps ``api_key=`` values out of access logs.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from urllib.parse import parse_qsl

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from .errors import APIError

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    """Whether a bind address or a Host name is this machine only."""
    if host.lower() in _LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """``Host`` without its port: ``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


async def _reject(scope, receive, send, error: APIError) -> None:
    await JSONResponse(error.body(), status_code=error.status, headers=error.headers)(scope, receive, send)


class HostCheck:
    """421 for a ``Host`` this server does not answer to: when bound to loopback, only
    loopback names and ``allowed_hosts``; bound elsewhere, any name unless ``allowed_hosts``
    lists some (``*`` in it: any name)."""

    def __init__(self, app, bind_host: str, allowed_hosts: tuple[str, ...]):
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts}
        self.any = "*" in self.allowed or (not self.allowed and not is_loopback(bind_host))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1").strip()
        if not header:
            return await _reject(scope, receive, send, APIError(400, "the request has no Host header",
                                                                param="Host", code="missing_host"))
        name = _host_name(header).lower().rstrip(".")
        if not (is_loopback(name) or name in self.allowed):
            return await _reject(scope, receive, send, APIError(
                421, f"Host {header[:100]!r} is not a name of this server (see --allowed-hosts)",
                param="Host", code="host_not_allowed", type="invalid_request_error"))
        return await self.app(scope, receive, send)


class ApiKey:
    """401 without the API key, on every path but the open ones (``/health``, the page,
    ``/static/``, and ``/metrics`` when it is public). CORS preflights pass: they never
    carry credentials."""

    def __init__(self, app, key: str | None, public_metrics: bool):
        self.app = app
        self.key = key
        self.open = {"/health", "/"} | ({"/metrics"} if public_metrics else set())

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] != "http" or not self.key or path in self.open or path.startswith("/static/")
                or scope["method"] == "OPTIONS"):
            return await self.app(scope, receive, send)
        if not self.given_key_matches(scope):
            return await _reject(scope, receive, send, APIError(
                401, "missing or wrong API key (send Authorization: Bearer <key>)", code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"}))
        return await self.app(scope, receive, send)

    def given_key_matches(self, scope) -> bool:
        """``Authorization: Bearer <key>``; on ``/api/stream`` also ``?api_key=`` (``EventSource``
        cannot send headers)."""
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" and scope["path"] == "/api/stream":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = query.get("api_key", "")
        elif scheme.lower() != "bearer":
            given = ""
        return bool(given) and secrets.compare_digest(given.strip().encode(), self.key.encode())


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the cap (FastAPI's body reader
    lets an ``HTTPException`` through; our handler gives it the OpenAI body)."""

    code = "body_too_large"
    param = None

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server takes ({_mb(limit)})")


def _mb(n: int) -> str:
    return f"{n / 1e6:g} MB"


class BodyLimit:
    """413 for bodies over ``max_bytes``: at once from ``Content-Length``, else counted as
    the chunks of a streamed body arrive (the route's body read fails with ``BodyTooLarge``)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > limit):
            return await _reject(scope, receive, send, APIError(
                413, f"the request body is larger than this server takes ({_mb(limit)})",
                code="body_too_large", headers={"Connection": "close"}))
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return await self.app(scope, counted, send)


class RedactKeys(logging.Filter):
    """Replaces the value of ``api_key=`` in a log record's arguments (uvicorn's access
    log prints the full path with its query)."""

    _KEY = re.compile(r"(api_key=)[^&\s\"]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._KEY.sub(r"\1<redacted>", a) if isinstance(a, str) else a
                                for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self._KEY.sub(r"\1<redacted>", record.msg)
        return True


def redact_access_log() -> None:
    """Install ``RedactKeys`` on uvicorn's access logger (once per process)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeys) for f in logger.filters):
        logger.addFilter(RedactKeys())
