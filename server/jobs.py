"""What the scheduler hands the event loop: a ``Job`` per generation and a
``JobGroup`` per request, read as one async stream.

The worker thread writes a job's times and counters and queues its events; the
event loop reads them through ``async for index, event in group`` (or
``group.batches()``). A failed job raises ``GenerationError`` in the reader.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field

from decoding import SamplingParams


class GenerationError(Exception):
    """A generation failed inside the worker; ``cause`` is the original exception."""

    def __init__(self, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass
class Job:
    """One generation: a prompt (token ids), its settings, and what happened so far.

    Times are ``time.perf_counter()`` values, written by the worker thread.
    """

    prompt_ids: list[int]
    params: SamplingParams
    index: int  # position in its group (the choice index for n > 1)
    group: "JobGroup"
    id: int = field(default_factory=itertools.count().__next__)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    prev_token_at: float | None = None  # the token before the last (inter-token latency)
    tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    cancelled: threading.Event = field(default_factory=threading.Event)
    handle: int | None = None  # its row in the worker's BatchGenerator
    generated: list[int] = field(default_factory=list)  # a fork: tokens it continues after (add_group)
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied (usage.prompt_tokens_details)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class JobGroup:
    """The jobs of one request (``n`` choices), read as one async stream.

    ``async for index, event in group`` yields ``(choice index, TokenEvent)``
    in the order the worker produced them, and ends when every job has
    finished; a failed job raises ``GenerationError`` there.
    """

    END = object()  # the item that marks the end of one job's events

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()  # unbounded: the worker must never block on a client
        self.jobs: list[Job] = []
        self._open = 0
        # Outbox bookkeeping, for telling a slow reader from a stalled one (worker reads it).
        self.sent = 0  # items the worker queued
        self.taken = 0  # items the reader took
        self.reader_waiting = False  # the reader is parked on an empty queue: not stalled
        self.last_read = time.monotonic()

    def cancel(self) -> None:
        """Stop every job of the group; the worker drops them before its next step."""
        for job in self.jobs:
            job.cancelled.set()

    @property
    def finished(self) -> bool:
        return all(job.done for job in self.jobs)

    @property
    def pending(self) -> int:
        """Items queued for the reader and not taken yet."""
        return self.sent - self.taken

    def stalled_for(self, now: float) -> float:
        """Seconds the reader has owed items without coming back for them (0: it is keeping up)."""
        if self.reader_waiting or self.pending <= 0:
            return 0.0
        return now - self.last_read

    async def _get(self):
        if self.queue.empty():
            self.reader_waiting = True
            try:
                item = await self.queue.get()
            finally:
                self.reader_waiting = False
        else:
            item = self.queue.get_nowait()
        self.taken += 1
        self.last_read = time.monotonic()
        return item

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        remaining = len(self.jobs)
        while remaining:
            _, item = await self._get()
            if item is self.END:
                remaining -= 1
                continue
            index, payload = item
            if isinstance(payload, BaseException):
                raise GenerationError(payload)
            yield index, payload

    async def batches(self, behind_s: float = 0.05, limit: int = 256):
        """Like iterating the group, but yields ``(choice index, [TokenEvent, ...])``.

        A reader that keeps up gets one event per list. One that has fallen behind (the
        item it takes waited more than ``behind_s``: a slow connection) gets everything
        already waiting for a choice as one list (at most ``limit``), so it sends one
        larger SSE event instead of many small ones piling up."""
        remaining = len(self.jobs)
        while remaining:
            queued_at, item = await self._get()
            behind = time.monotonic() - queued_at > behind_s
            merged: list[tuple[int, list]] = []
            while True:
                if item is self.END:
                    remaining -= 1
                else:
                    index, payload = item
                    if isinstance(payload, BaseException):
                        for pair in merged:
                            yield pair
                        raise GenerationError(payload)
                    last = next((pair for pair in reversed(merged) if pair[0] == index), None)
                    if last is not None and len(last[1]) < limit:
                        last[1].append(payload)
                    else:
                        merged.append((index, [payload]))
                if not behind or self.queue.empty() or not remaining:
                    break
                _, item = self.queue.get_nowait()
                self.taken += 1
            for pair in merged:
                yield pair


