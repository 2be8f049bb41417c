"""SSE on the wire with FastAPI's own ``fastapi.sse`` pieces, and the resumable
streams behind ``GET /api/stream``.

``event_stream()`` turns an async iterator of ``ServerSentEvent`` into an
``EventSourceResponse``: each event is framed by ``fastapi.sse.format_sse_event``
the moment it exists, an idle stream gets a ``: ping`` keep-alive comment, and
the headers stop proxies from buffering. When the client goes away, Starlette
cancels the body; ``on_close`` then runs (cancel the generation, or start the
resume grace period).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi.encoders import jsonable_encoder
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, ServerSentEvent, format_sse_event
from starlette.background import BackgroundTask

from generator.eval.timing import decode_rate

from .errors import error_body
from .scheduler import GenerationError, JobGroup

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def encode_event(event: ServerSentEvent) -> bytes:
    """One event in SSE wire format, data JSON-encoded unless ``raw_data`` is given."""
    if event.raw_data is not None:
        data = event.raw_data
    elif event.data is not None:
        try:  # our chunks are plain dicts: json straight away (jsonable_encoder: ~20 us more an event)
            data = json.dumps(event.data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            data = json.dumps(jsonable_encoder(event.data), ensure_ascii=False, separators=(",", ":"))
    else:
        data = None
    return format_sse_event(data_str=data, event=event.event, id=event.id, retry=event.retry,
                            comment=event.comment)


def event_stream(events: AsyncIterator[ServerSentEvent], keepalive_s: float,
                 on_close: Callable[[], None] | None = None, metrics=None) -> EventSourceResponse:
    """An ``EventSourceResponse`` that sends each event as soon as it is produced.

    ``on_close`` runs exactly once: when the body ends or is cancelled, or, if
    the client left before the body started, as the response's background task.
    """
    done = False

    def close_once() -> None:
        nonlocal done
        if not done:
            done = True
            if on_close is not None:
                on_close()

    return EventSourceResponse(_frames(events, keepalive_s, close_once, metrics), headers=SSE_HEADERS,
                               background=BackgroundTask(close_once))


async def _frames(events, keepalive_s, on_close: Callable[[], None], metrics) -> AsyncIterator[bytes]:
    iterator = events.__aiter__()
    pending: asyncio.Future | None = None
    if metrics is not None:
        metrics.active_streams.inc()
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            # Wait for the next event without cancelling it on timeout: a ping in between.
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE_COMMENT
                continue
            future, pending = pending, None
            try:
                event = future.result()
            except StopAsyncIteration:
                return
            yield encode_event(event)
    finally:
        # Runs on a normal end and when Starlette cancels us on a client disconnect.
        if pending is not None:
            pending.cancel()
        if metrics is not None:
            metrics.active_streams.dec()
        on_close()


def error_event(exc: BaseException, event_id: str | None = None, named: bool = False) -> ServerSentEvent:
    """A failure in the middle of a stream, as an OpenAI-style error body."""
    cause = exc.cause if isinstance(exc, GenerationError) else exc
    body = error_body(f"generation failed: {type(cause).__name__}: {cause}", "server_error", None,
                      "generation_failed")
    return ServerSentEvent(data=body, event="error" if named else None, id=event_id)


class ResumableStream:
    """The events of one ``/api/stream`` generation, kept so a reconnect can resume.

    Event ``seq`` has SSE id ``"{stream id}.{seq}"``; ids increase by one.
    """

    def __init__(self, store: "StreamStore", group: JobGroup, strategy: str):
        self.store = store
        self.id = uuid.uuid4().hex[:16]
        self.group = group
        self.strategy = strategy
        self.events: list[ServerSentEvent] = []
        self.finished = False
        self.subscribers = 0
        self._changed = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None
        self._pump = asyncio.ensure_future(self._run())

    def _append(self, name: str, data: dict) -> None:
        seq = len(self.events)
        # The first event tells the browser how soon to reconnect after a drop.
        retry = self.store.retry_ms if seq == 0 else None
        self.events.append(ServerSentEvent(event=name, data=data, id=f"{self.id}.{seq}", retry=retry))
        self._changed.set()

    async def _run(self) -> None:
        try:
            async for _, ev in self.group:
                data = {"index": ev.index, "text": ev.text, "token_id": ev.token_id, "logprob": ev.logprob}
                top = getattr(ev, "top_logprobs", None)
                if top:
                    data["top_logprobs"] = jsonable_encoder(top)
                self._append("token", data)
            self._append("done", self._stats())
        except GenerationError as exc:
            event = error_event(exc, named=True)
            self._append("error", event.data)
        finally:
            self.finished = True
            self._changed.set()
            if self.subscribers == 0:
                self._schedule_expiry()

    def _stats(self) -> dict:
        job = self.group.jobs[0]
        stats = {"finish_reason": job.finish_reason, "tokens": job.tokens, "strategy": self.strategy}
        if job.first_token_at is not None:
            stats["ttft_ms"] = round((job.first_token_at - job.submitted_at) * 1000, 2)
            stats["duration_ms"] = round((job.last_token_at - job.submitted_at) * 1000, 2)
            rate = decode_rate(job.tokens, job.first_token_at, job.last_token_at)
            stats["tokens_per_s"] = round(rate, 2) if math.isfinite(rate) else None
        if job.started_at is not None:
            stats["queue_ms"] = round((job.started_at - job.submitted_at) * 1000, 2)
        return stats

    async def follow(self, after: int = -1) -> AsyncIterator[ServerSentEvent]:
        """Events with ``seq > after``, the stored ones first, then live ones as they come."""
        nxt = after + 1
        while True:
            while nxt < len(self.events):
                yield self.events[nxt]
                nxt += 1
            if self.finished:
                return
            self._changed.clear()
            await self._changed.wait()

    def attach(self) -> None:
        self.subscribers += 1
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def detach(self) -> None:
        """A reader left; with nobody left, the stream lives ``grace_s`` more seconds."""
        self.subscribers -= 1
        if self.subscribers == 0:
            self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(self.store.grace_s, self.expire)

    def expire(self) -> None:
        """Cancel the generation (a no-op when finished) and forget the events."""
        self.group.cancel()
        self.store.streams.pop(self.id, None)


class StreamStore:
    """Resumable streams by id, each kept ``grace_s`` seconds after its last reader left."""

    def __init__(self, grace_s: float = 30.0, retry_ms: int = 1000):
        self.grace_s = grace_s
        self.retry_ms = retry_ms
        self.streams: dict[str, ResumableStream] = {}

    def create(self, group: JobGroup, strategy: str) -> ResumableStream:
        stream = ResumableStream(self, group, strategy)
        self.streams[stream.id] = stream
        return stream

    def lookup(self, last_event_id: str) -> tuple[ResumableStream | None, int]:
        """The stream a ``Last-Event-ID`` belongs to and the seq it names."""
        stream_id, _, seq = last_event_id.strip().rpartition(".")
        try:
            after = int(seq)
        except ValueError:
            return None, -1
        return self.streams.get(stream_id), after

    def close_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.expire()

