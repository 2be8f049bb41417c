"""The resumable streams behind ``GET /api/stream``: each generation's SSE events
are kept, numbered, so a reader that reconnects with ``Last-Event-ID`` continues
after the last event it saw instead of generating again.

A stream lives while someone reads it and ``grace_s`` seconds after its last
reader left; then its generation is cancelled (a no-op once finished) and its
events are forgotten.
"""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from collections.abc import AsyncIterator

from fastapi.encoders import jsonable_encoder
from fastapi.sse import ServerSentEvent

from generator.eval.timing import decode_rate

from ..errors import APIError
from ..jobs import GenerationError, JobGroup
from ..sse import error_event

# The only shape of an event id we hand out: "<stream id>.<seq>", seq in ASCII decimal digits.
# int() alone would also take "-3" (a negative seq replays from the end), "1_0" (10) and
# other digits ("١"): a resume must name an event we sent, exactly.
_EVENT_ID = re.compile(r"([0-9a-f]{16})\.([0-9]{1,18})")


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
                if ev.top_logprobs:
                    data["top_logprobs"] = jsonable_encoder(ev.top_logprobs)
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
        """The stream a ``Last-Event-ID`` belongs to (``None`` when it is gone) and the seq
        it names; 400 for an id of any other shape than ``<stream id>.<decimal digits>``."""
        match = _EVENT_ID.fullmatch(last_event_id.strip())
        if match is None:
            raise APIError(400, f"Last-Event-ID: {last_event_id[:80]!r} is not an event id of this server "
                                "(<stream id>.<decimal sequence number>)", param="Last-Event-ID",
                           code="invalid_value")
        return self.streams.get(match.group(1)), int(match.group(2))

    def close_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.expire()
