"""The web page's routes: ``GET /`` and its static assets, ``GET /api/stream``
(server-sent events for ``EventSource``, resumable) and an explicit cancel for
the page's Stop button.

Everything the page uses lives in ``server/web/static/`` (no build step, no CDN).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, Response
from fastapi.sse import ServerSentEvent
from fastapi.staticfiles import StaticFiles

from generator.eval.timing import decode_rate

from ..errors import APIError
from ..intake import Intake
from ..jobs import GenerationError, JobGroup
from ..sse import error_event, event_stream
from .query import flag, length_key, params_from_query, prefix_ids

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
        resumed = store.reopen(last_id, "web")
        if resumed is None:
            return Response(status_code=204)  # tells EventSource there is nothing more: stop reconnecting
        stream, after = resumed
    else:
        prompt = query.get("prompt")
        if not prompt:
            raise APIError(400, "prompt: required", param="prompt", code="missing_field")
        params = params_from_query(query, intake.default_max_tokens())
        ids = await intake.encode(prompt, chat=flag(query, "chat"), field="prompt")
        # a fork continues after these, as the stream it forks had drawn them (same history, same noise)
        forked = prefix_ids(query, intake.engine.model.config.vocab_size)
        intake.check_room(ids + forked, params.max_new_tokens, length_key(query))
        group = intake.submit(ids, [params], generated=forked)
        stream = store.create(group, token_events(group, params.strategy), "web")
        after = -1
    stream.attach()
    return event_stream(stream.follow(after), intake.settings.keepalive_s, on_close=stream.detach,
                        metrics=request.app.state.metrics)


async def token_events(group: JobGroup, strategy: str) -> AsyncIterator[ServerSentEvent]:
    """``/api/stream``'s events: a ``token`` per token, then ``done`` with the stream's
    timing (or ``error``)."""
    try:
        async for _, ev in group:
            data = {"index": ev.index, "text": ev.text, "token_id": ev.token_id, "logprob": ev.logprob}
            if ev.top_logprobs:
                data["top_logprobs"] = jsonable_encoder(ev.top_logprobs)
            if ev.trace is not None:
                data["trace"] = ev.trace
            yield ServerSentEvent(event="token", data=data)
        yield ServerSentEvent(event="done", data=_stats(group.jobs[0], strategy))
    except GenerationError as exc:
        yield error_event(exc, named=True)


def _stats(job, strategy: str) -> dict:
    stats = {"finish_reason": job.finish_reason, "tokens": job.tokens, "strategy": strategy,
             "cached_tokens": job.cached_tokens}
    if job.first_token_at is not None:
        stats["ttft_ms"] = round((job.first_token_at - job.submitted_at) * 1000, 2)
        stats["duration_ms"] = round((job.last_token_at - job.submitted_at) * 1000, 2)
        rate = decode_rate(job.tokens, job.first_token_at, job.last_token_at)
        stats["tokens_per_s"] = round(rate, 2) if math.isfinite(rate) else None
    if job.started_at is not None:
        stats["queue_ms"] = round((job.started_at - job.submitted_at) * 1000, 2)
    return stats


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
