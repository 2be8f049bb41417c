"""The web page's routes: ``GET /`` and its static assets, ``GET /api/stream``
(server-sent events for ``EventSource``, resumable) and an explicit cancel for
the page's Stop button.

Everything the page uses lives in ``server/web/static/`` (no build step, no CDN).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import APIError
from ..intake import Intake
from ..sse import event_stream
from .query import flag, length_key, params_from_query

STATIC_DIR = Path(__file__).parent / "static"

web = APIRouter()


@web.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The page itself; it loads ``/static/app.js`` and ``/static/app.css``."""
    # no-cache: a restarted server with a new page is picked up on reload.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@web.get("/api/stream")
async def api_stream(request: Request):
    """Server-sent events for ``EventSource``: ``token``, then ``done`` (or ``error``).

    A reconnect with ``Last-Event-ID`` (header, or ``last_event_id`` in the
    query) resumes after that event from the stored events, without generating
    again, for ``resume_grace_s`` seconds after the last reader left.
    """
    intake = Intake.ready(request)
    store = request.app.state.streams
    query = request.query_params
    last_id = request.headers.get("last-event-id") or query.get("last_event_id")
    if last_id:
        stream, after = store.lookup(last_id)
        if stream is None:
            raise APIError(404, "stream not found: it finished or expired (the resume grace period is "
                                f"{store.grace_s:g} s)", param="Last-Event-ID", code="stream_not_found")
        if after >= len(stream.events):  # never sent: a forged id, not a reconnect
            raise APIError(400, f"Last-Event-ID: event {after} of this stream has not been sent",
                           param="Last-Event-ID", code="invalid_value")
        if stream.finished and after >= len(stream.events) - 1:
            return Response(status_code=204)  # tells EventSource there is nothing more: stop reconnecting
    else:
        prompt = query.get("prompt")
        if not prompt:
            raise APIError(400, "prompt: required", param="prompt", code="missing_field")
        params = params_from_query(query, intake.default_max_tokens())
        ids = await intake.encode(prompt, chat=flag(query, "chat"), field="prompt")
        intake.check_room(ids, params.max_new_tokens, length_key(query))
        stream = store.create(intake.submit(ids, [params]), params.strategy)
        after = -1
    stream.attach()
    return event_stream(stream.follow(after), intake.settings.keepalive_s, on_close=stream.detach,
                        metrics=request.app.state.metrics)


@web.post("/api/stream/{stream_id}/cancel")
async def cancel_stream(stream_id: str, request: Request) -> Response:
    """Stop a ``/api/stream`` generation now.

    Closing an ``EventSource`` looks to the server exactly like a dropped
    connection, which keeps the stream resumable for the grace period; a person
    pressing Stop means "no more", so the page says so here.
    """
    stream = request.app.state.streams.streams.get(stream_id)
    if stream is None:
        raise APIError(404, "stream not found: it finished or expired", param="stream_id",
                       code="stream_not_found")
    stream.expire()
    return Response(status_code=204)


def install_web(app: FastAPI) -> None:
    """Add the page, ``/api/stream`` and its cancel route, and the assets under ``/static``."""
    app.include_router(web)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
