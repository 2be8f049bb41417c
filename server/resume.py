"""Resumable streams: a generation's SSE events kept, numbered, so that a reader who
reconnects with ``Last-Event-ID`` continues after the last event it saw instead of
generating again. ``GET /api/stream`` (server/web/) and the OpenAI streams that ask
for it (``stream_options.resumable``, server/openai/) both keep theirs here.

Event ``seq`` of stream ``sid`` has the SSE id ``"{sid}.{seq}"`` (``numbered`` gives
the same ids to a stream that is not kept). A kept stream lives while someone reads
it and ``grace_s`` seconds after its last reader left; then its generation is
cancelled (a no-op once finished) and its events are forgotten.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

from fastapi.sse import ServerSentEvent

from .errors import APIError
from .jobs import JobGroup

# The only shape of an event id we hand out: "<stream id>.<seq>", seq in ASCII decimal digits.
# int() alone would also take "-3" (a negative seq replays from the end), "1_0" (10) and
# other digits ("\u0661"): a resume must name an event we sent, exactly.
_EVENT_ID = re.compile(r"([0-9a-f]{16})\.([0-9]{1,18})")


def new_stream_id() -> str:
    return uuid.uuid4().hex[:16]


def with_id(event: ServerSentEvent, stream_id: str, seq: int, retry: int | None = None) -> ServerSentEvent:
    """``event`` as event ``seq`` of stream ``stream_id``."""
    return ServerSentEvent(event=event.event, data=event.data, raw_data=event.raw_data,
                           id=f"{stream_id}.{seq}", retry=retry, comment=event.comment)


async def numbered(events: AsyncIterator[ServerSentEvent], stream_id: str) -> AsyncIterator[ServerSentEvent]:
    """The events of a stream that is not kept, with the ids a kept one would have."""
    seq = 0
    async for event in events:
        yield with_id(event, stream_id, seq)
        seq += 1


class ResumableStream:
    """The events of one generation (``events``, made from ``group``), kept so that a
    reconnect can resume. Ids increase by one; the first event carries ``retry``."""

    def __init__(self, store: "StreamStore", group: JobGroup, events: AsyncIterator[ServerSentEvent],
                 kind: str):
        self.store = store
        self.kind = kind  # who made it ("web", "openai"): a reconnect continues on the same kind of route
        self.id = new_stream_id()
        self.group = group
        self.events: list[ServerSentEvent] = []
        self.finished = False
        self.subscribers = 0
        self._changed = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None
        self._pump = asyncio.ensure_future(self._run(events))

    async def _run(self, events: AsyncIterator[ServerSentEvent]) -> None:
        try:
            async for event in events:  # a failure is the source's own last event
                seq = len(self.events)
                # The first event tells the browser how soon to reconnect after a drop.
                self.events.append(with_id(event, self.id, seq, self.store.retry_ms if seq == 0 else None))
                self._changed.set()
        finally:
            self.finished = True
            self._changed.set()
            if self.subscribers == 0:
                self._schedule_expiry()

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

    def create(self, group: JobGroup, events: AsyncIterator[ServerSentEvent], kind: str) -> ResumableStream:
        """Keep the ``events`` made from ``group``'s generation, from now on."""
        stream = ResumableStream(self, group, events, kind)
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

    def reopen(self, last_event_id: str, kind: str) -> tuple[ResumableStream, int] | None:
        """The stream of ``kind`` and the seq a reconnect with ``Last-Event-ID`` continues
        after; ``None`` when that stream ended with that event (nothing more: a 204 tells
        EventSource to stop). 404 when the stream is gone (or another kind's), 400 for an
        id we never sent."""
        stream, after = self.lookup(last_event_id)
        if stream is not None and stream.kind != kind:
            stream = None
        if stream is None:
            raise APIError(404, "stream not found: it finished or expired (the resume grace period is "
                                f"{self.grace_s:g} s)", param="Last-Event-ID", code="stream_not_found")
        if after >= len(stream.events):  # never sent: a forged id, not a reconnect
            raise APIError(400, f"Last-Event-ID: event {after} of this stream has not been sent",
                           param="Last-Event-ID", code="invalid_value")
        if stream.finished and after >= len(stream.events) - 1:
            return None
        return stream, after

    def close_all(self) -> None:
        for stream in list(self.streams.values()):
            stream.expire()
