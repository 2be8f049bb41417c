"""Shutdown without cutting a stream short: ``Lifecycle`` and its middleware ``Drain``.

    lifecycle = Lifecycle(grace_s=5)        # app.state.lifecycle; bound to the loop in lifespan
    app.add_middleware(Drain, lifecycle=lifecycle)
    lifecycle.request_shutdown(then=stop)   # from a signal handler, any thread

On ``request_shutdown`` the server drains: every new request gets 503 (``server_shutdown``),
the requests already open may finish within ``grace_s``. Then each one still open is closed
by ``Drain``: a stream gets one last SSE event, an OpenAI error body with code
``server_shutdown`` (a named ``error`` event on ``/api/stream``, where ``EventSource`` reads
event names), and a clean end of its body; a request that has not answered yet gets the
503. Only then is ``then()`` called (``tokenflow serve`` tells uvicorn to exit), so uvicorn
finds no connection to cut and logs no cancelled task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from fastapi.responses import JSONResponse

from .errors import error_body

log = logging.getLogger("tokenflow.server")

_SHUTDOWN = "the server is shutting down"


def shutdown_body() -> dict:
    return error_body(_SHUTDOWN, "service_unavailable", None, "server_shutdown")


class Lifecycle:
    """Whether the server is draining, the requests still open, and the moment they are closed."""

    def __init__(self, grace_s: float = 5.0):
        self.grace_s = grace_s
        self.draining = False
        self.open: set[asyncio.Task] = set()  # one task per request in flight (Drain)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closing: asyncio.Event | None = None  # set when the grace is over

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called in the app's lifespan, on the event loop that serves it."""
        self.loop = loop
        self.closing = asyncio.Event()

    def request_shutdown(self, then=None) -> bool:
        """Start draining (thread-safe); ``then()`` runs on the loop when every request has
        ended. False when the app never started (the caller just stops)."""
        if self.loop is None or self.loop.is_closed():
            return False
        asyncio.run_coroutine_threadsafe(self.shutdown(then), self.loop)
        return True

    async def shutdown(self, then=None) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: %d request(s) open, grace %.3g s", len(self.open), self.grace_s)
        deadline = time.monotonic() + self.grace_s
        while self.open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.closing.set()
        if self.open:
            log.info("closing %d request(s) still open after the grace", len(self.open))
        # Each open request sends its last event and ends now (Drain); bounded all the same.
        deadline = time.monotonic() + 1.0
        while self.open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if then is not None:
            then()


class Drain:
    """Pure ASGI middleware: 503 for new requests while draining; closes the open ones,
    each with its last word, when the grace is over (``Lifecycle``)."""

    def __init__(self, app, lifecycle: Lifecycle):
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope, receive, send):
        lifecycle = self.lifecycle
        if scope["type"] != "http" or lifecycle.closing is None:
            return await self.app(scope, receive, send)
        if lifecycle.draining:
            response = JSONResponse(shutdown_body(), status_code=503, headers={"Connection": "close"})
            return await response(scope, receive, send)
        started: dict = {}

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                started["headers"] = dict(message.get("headers") or [])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                started["ended"] = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, tracked_send))
        lifecycle.open.add(task)
        closing = asyncio.ensure_future(lifecycle.closing.wait())
        try:
            await asyncio.wait({task, closing}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()  # the route's own cleanup runs (a stream cancels its generation)
            try:
                await task
            except asyncio.CancelledError:
                pass
            if started.get("ended"):
                return
            if "headers" not in started:
                response = JSONResponse(shutdown_body(), status_code=503, headers={"Connection": "close"})
                return await response(scope, receive, send)
            if started["headers"].get(b"content-type", b"").startswith(b"text/event-stream"):
                named = scope["path"].startswith("/api/stream")
                data = json.dumps(shutdown_body(), separators=(",", ":"))
                frame = (b"event: error\n" if named else b"") + f"data: {data}\n\n".encode()
                await send({"type": "http.response.body", "body": frame, "more_body": False})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            closing.cancel()
            if not task.done():  # we were cancelled ourselves: so is the route
                task.cancel()
            lifecycle.open.discard(task)
