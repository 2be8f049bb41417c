"""The worker that owns the model: one thread, a bounded waiting queue, and
generations advanced one token at a time, in turn.

The event loop never runs the blocking loop. It calls ``Scheduler.submit()``
and reads the returned ``JobGroup`` asynchronously; the worker thread pushes
each ``TokenEvent`` onto the group's ``asyncio.Queue`` (through
``loop.call_soon_threadsafe``) the moment the engine yields it. A cancel flag
is checked between steps, so a cancelled job does no further forward pass.

Continuous batching (issue 7) replaces ``Scheduler.step()``: today it advances
each active job's own ``engine.stream()`` generator by one token; a batched
version runs one forward over all active rows and returns the same
``(job, event)`` pairs. Routes, streaming and metrics only see ``submit()``,
``JobGroup`` and ``Job``, so they do not change.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from decoding import SamplingParams

log = logging.getLogger("tokenflow.server")


class SchedulerFull(Exception):
    """The waiting queue has no room for this request (the route answers 429)."""


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
    stream: Iterator | None = None  # the engine generator, owned by the worker

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class JobGroup:
    """The jobs of one request (``n`` choices), read as one async stream.

    ``async for index, event in group`` yields ``(choice index, TokenEvent)``
    in the order the worker produced them, and ends when every job has
    finished; a failed job raises ``GenerationError`` there.
    """

    _END = object()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()  # unbounded: the worker must never block on a client
        self.jobs: list[Job] = []
        self._open = 0

    def cancel(self) -> None:
        """Stop every job of the group; the worker drops them before its next step."""
        for job in self.jobs:
            job.cancelled.set()

    @property
    def finished(self) -> bool:
        return all(job.done for job in self.jobs)

    # Called from the worker thread only.
    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        remaining = len(self.jobs)
        while remaining:
            item = await self.queue.get()
            if item is self._END:
                remaining -= 1
                continue
            index, payload = item
            if isinstance(payload, BaseException):
                raise GenerationError(payload)
            yield index, payload


class Scheduler:
    """Owns the engine in one worker thread; feeds many streams.

    ``submit()`` queues a request's jobs (``SchedulerFull`` when more than
    ``max_waiting`` would wait); the worker admits up to ``max_active`` jobs
    and calls ``step()`` over them until they finish or are cancelled.
    ``observer`` (optional) is called from the worker as
    ``observer(job, event_or_None)``: per token, and once with ``None`` when a
    job ends (metrics hook).
    """

    def __init__(self, engine, max_waiting: int = 64, max_active: int = 8, observer=None):
        self.engine = engine
        self.max_waiting = max_waiting
        self.max_active = max_active
        self.observer = observer
        self.waiting: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- event-loop side ----------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tokenflow-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything and join the worker."""
        with self._wake:
            self._stopping = True
            for job in itertools.chain(self.waiting, self.active):
                job.cancelled.set()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, requests: list[tuple[list[int], SamplingParams]],
               loop: asyncio.AbstractEventLoop | None = None) -> JobGroup:
        """Queue one request's jobs, all or none. Call from the event loop."""
        group = JobGroup(loop or asyncio.get_running_loop())
        for index, (ids, params) in enumerate(requests):
            group.jobs.append(Job(list(ids), params, index, group))
        with self._wake:
            if self._stopping:
                raise SchedulerFull("the server is shutting down")
            if len(self.waiting) + len(group.jobs) > self.max_waiting:
                raise SchedulerFull(f"{len(self.waiting)} requests are waiting (limit {self.max_waiting})")
            self.waiting.extend(group.jobs)
            self._wake.notify()
        return group

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active_count(self) -> int:
        return len(self.active)

    # -- worker side --------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and not self.active:
                    self._wake.wait()
                if self._stopping:
                    jobs = list(self.waiting) + self.active
                    self.waiting.clear()
                    self.active = []
                    for job in jobs:
                        self._end(job, "cancelled")
                    return
                while self.waiting and len(self.active) < self.max_active:
                    self.active.append(self.waiting.popleft())
            # Drop cancelled jobs before spending a forward pass on them.
            for job in [j for j in self.active if j.cancelled.is_set()]:
                self._end(job, "cancelled")
            self.active = [j for j in self.active if not j.done]
            if not self.active:
                continue
            for job, result in self.step(self.active):
                self._deliver(job, result)
            self.active = [j for j in self.active if not j.done]

    def step(self, jobs: list[Job]) -> list[tuple[Job, object]]:
        """Advance every job by one token: ``(job, TokenEvent | Exception)`` pairs.

        This is the one method a batched engine step replaces. Each job here
        drives its own ``engine.stream()`` generator; the first ``next()`` runs
        the prefill, each later one a single decode step.
        """
        out = []
        for job in jobs:
            if job.cancelled.is_set():
                continue  # checked again here: a cancel can land between two jobs' steps
            if job.stream is None:
                job.started_at = time.perf_counter()
                job.stream = self.engine.stream(job.prompt_ids, job.params)
            try:
                out.append((job, next(job.stream)))
            except StopIteration:
                out.append((job, RuntimeError("the engine stream ended without a finish reason")))
            except Exception as exc:  # noqa: BLE001 - reported to the client as an SSE error event
                out.append((job, exc))
        return out

    def _deliver(self, job: Job, result: object) -> None:
        if isinstance(result, Exception):
            log.error("generation %s failed: %s: %s", job.id, type(result).__name__, result)
            job.group._put((job.index, result))
            self._end(job, "error")
            return
        now = time.perf_counter()
        if job.first_token_at is None:
            job.first_token_at = now
        job.prev_token_at, job.last_token_at = job.last_token_at, now
        job.tokens += 1
        job.group._put((job.index, result))
        if self.observer is not None:
            self.observer(job, result)
        if result.finish_reason:
            self._end(job, result.finish_reason)

    def _end(self, job: Job, reason: str) -> None:
        if job.done:
            return
        job.finish_reason = reason
        if job.stream is not None:
            job.stream.close()  # releases the generator (and its KV cache) now
            job.stream = None
        job.group._put(JobGroup._END)
        if self.observer is not None:
            self.observer(job, None)
