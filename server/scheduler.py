"""The worker that owns the model: one thread, a bounded waiting queue, and one
batched step that advances every active generation together (continuous batching).

The event loop never runs the blocking loop. It calls ``Scheduler.submit()``
and reads the returned ``JobGroup`` asynchronously; the worker thread puts each
step's ``TokenEvent``s onto their groups' ``asyncio.Queue``s as the step ends, all
of them in one ``loop.call_soon_threadsafe`` (``Scheduler._send`` / ``_flush``).

Between two steps the worker admits waiting requests into the batch (as long
as the runner has free KV-cache slots and fewer than ``max_active`` jobs run),
drops cancelled ones and clients that stopped reading, and frees their slots;
so a new request joins a running batch without waiting for it to drain.
Routes, streaming and metrics only see ``submit()``, ``JobGroup`` and ``Job``
(server/jobs.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import queue
import threading
import time

from decoding import SamplingParams

from .jobs import Job, JobGroup

log = logging.getLogger("tokenflow.server")


class SchedulerFull(Exception):
    """The waiting queue has no room for this request (the route answers 429)."""


class Scheduler:
    """Owns the engine in one worker thread; feeds many streams from one batch.

    ``submit()`` queues a request's jobs (``SchedulerFull`` when more than
    ``max_waiting`` would wait); the worker admits whole requests into the
    engine's ``BatchGenerator`` while fewer than ``max_active`` jobs run and the
    KV cache has slots for them, and calls ``step()`` until they finish, are
    cancelled, or their client stops reading for ``stall_timeout_s`` (or owes
    more than ``max_outbox`` unread events). ``observer`` (optional) is called
    from the worker as ``observer(job, event_or_None)``: per token, and once
    with ``None`` when a job ends (metrics hook).
    """

    def __init__(self, engine, max_waiting: int = 64, max_active: int = 8, observer=None,
                 stall_timeout_s: float = 30.0, max_outbox: int = 4096):
        self.engine = engine
        self.max_waiting = max_waiting
        self.max_active = max_active
        self.observer = observer
        self.stall_timeout_s = stall_timeout_s
        self.max_outbox = max_outbox
        self.waiting: collections.deque[Job] = collections.deque()
        # Work for the model that is not a generation (scoring), run between two steps.
        self.calls: collections.deque = collections.deque()
        self.active: list[Job] = []
        self.batch = None  # the engine's BatchGenerator, made in the worker
        self._jobs: dict[int, Job] = {}  # batch handle -> job
        self.batch_size = 0  # KV-cache rows in the last step (metrics)
        self.steps = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._started = False
        self._finished = threading.Event()
        self.worker_thread: str | None = None  # the thread the worker loop runs on (/health shows it)
        # What the worker produced since its last hand-over: (group, item) pairs, given to the
        # event loop in ONE call per step (_flush), not one wake-up per token and stream.
        self._outbox: list = []

    # -- event-loop side ----------------------------------------------------
    def start(self, host: "WorkerHost | None" = None) -> None:
        """Run the worker loop on a new thread, or on ``host``'s thread (``tokenflow serve``
        gives the process's main thread: see ``WorkerHost``)."""
        self._started = True
        if host is not None:
            host.submit(self._run)
        else:
            threading.Thread(target=self._run, name="tokenflow-worker", daemon=True).start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything and join the worker."""
        with self._wake:
            self._stopping = True
            for job in itertools.chain(self.waiting, self.active):
                job.cancelled.set()
            self._wake.notify_all()
        if self._started:
            self._finished.wait(timeout)

    def submit(self, requests: list[tuple[list[int], SamplingParams]],
               loop: asyncio.AbstractEventLoop | None = None, generated: list[int] = ()) -> JobGroup:
        """Queue one request's jobs, all or none. Call from the event loop. ``generated``:
        a fork's tokens, which its rows continue after (``BatchGenerator.add_group``)."""
        group = JobGroup(loop or asyncio.get_running_loop())
        for index, (ids, params) in enumerate(requests):
            group.jobs.append(Job(list(ids), params, index, group, generated=list(generated)))
        with self._wake:
            if self._stopping:
                raise SchedulerFull("the server is shutting down")
            if len(self.waiting) + len(group.jobs) > self.max_waiting:
                raise SchedulerFull(f"{len(self.waiting)} requests are waiting (limit {self.max_waiting})")
            self.waiting.extend(group.jobs)
            self._wake.notify()
        return group

    def call(self, fn) -> asyncio.Future:
        """Run ``fn(engine)`` on the worker between two steps (a forward that generates
        nothing: scoring); await its result. Call from the event loop. It waits while every
        KV-cache slot is taken, and counts against ``max_waiting`` like a job."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            if self._stopping:
                raise SchedulerFull("the server is shutting down")
            if len(self.waiting) + len(self.calls) >= self.max_waiting:
                raise SchedulerFull(f"{len(self.waiting) + len(self.calls)} requests are waiting "
                                    f"(limit {self.max_waiting})")
            self.calls.append((fn, future))
            self._wake.notify()
        return asyncio.wrap_future(future)

    def _run_calls(self) -> None:
        """The queued ``call``s, while a KV-cache slot is free (the rest wait for a step
        that frees one)."""
        while self.calls and self.engine.free_slots > 0:
            with self._wake:
                fn, future = self.calls.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(self.engine))
            except Exception as exc:  # noqa: BLE001 - the caller's error, never the worker's
                future.set_exception(exc)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active_count(self) -> int:
        return len(self.active)

    # -- worker side --------------------------------------------------------
    def _run(self) -> None:
        self.worker_thread = threading.current_thread().name
        try:
            self._loop()
        finally:
            self._flush()
            self._finished.set()

    def _send(self, group: JobGroup, item) -> None:
        """Queue ``item`` for ``group``'s reader; it leaves with the step's others (``_flush``)."""
        group.sent += 1
        self._outbox.append((group, item))

    def _flush(self) -> None:
        """Hand everything the worker produced since the last call to the event loop(s) in
        one ``call_soon_threadsafe`` each: at 16 streams, one wake-up a step instead of 16."""
        if not self._outbox:
            return
        items, self._outbox = self._outbox, []
        now = time.monotonic()
        by_loop: dict = {}
        for group, item in items:
            by_loop.setdefault(group.loop, []).append((group.queue, (now, item)))
        for loop, puts in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, puts)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass

    def _loop(self) -> None:
        self.batch = self.engine.batch()
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and not self.active and not self.calls:
                    # Never block without a timeout: on the main thread, a signal that the
                    # kernel delivers to another thread only runs its Python handler when
                    # this thread wakes (SIGINT could otherwise wait for a request forever).
                    self._wake.wait(0.25)
                if self._stopping:
                    jobs = list(self.waiting) + self.active
                    self.waiting.clear()
                    for job in jobs:
                        self._end(job, "cancelled")
                    self.active = []
                    while self.calls:
                        future = self.calls.popleft()[1]
                        if future.set_running_or_notify_cancel():
                            future.set_exception(SchedulerFull("the server is shutting down"))
                    return
                admitted = self._admit()
            for group_jobs in admitted:
                self._join(group_jobs)
            self._run_calls()
            self._drop_gone()
            if not self.active:
                self._flush()
                continue
            try:
                results = self.step(self.active)
            except Exception as exc:  # noqa: BLE001 - never the server
                # The batch fails only the row at fault (its step hands back (handle, exception)
                # and finds the row by retrying without it); what still raises here is outside
                # every row, so the step's jobs end with it rather than the worker.
                results = [(job, exc) for job in self.active]
            for job, result in results:
                self._deliver(job, result)
            self._flush()  # this step's tokens, every stream's, in one hand-over
            self.active = [j for j in self.active if not j.done]

    def _admit(self) -> list[list[Job]]:
        """Whole requests from the head of the queue that fit now (lock held)."""
        admitted = []
        free = self.engine.free_slots
        while self.waiting:
            group = self.waiting[0].group
            jobs = [j for j in group.jobs if not j.done]
            need = self.batch.slots_needed(jobs[0].params, len(jobs)) if jobs else 0
            if self.active and (len(self.active) + len(jobs) > self.max_active
                                or need > free):
                break  # first come, first served: the head waits for room
            for _ in group.jobs:
                if self.waiting and self.waiting[0].group is group:
                    self.waiting.popleft()
            free -= need
            self.active.extend(jobs)
            admitted.append(jobs)
        return admitted

    def _join(self, jobs: list[Job]) -> None:
        """Put one request's jobs into the batch (prefilled by the next steps)."""
        if not jobs:
            return
        now = time.perf_counter()
        for job in jobs:
            job.started_at = now
        try:
            handles = self.batch.add_group(jobs[0].prompt_ids, [j.params for j in jobs], jobs[0].generated)
        except Exception as exc:  # noqa: BLE001 - e.g. no free slot after all: an error event, not a crash
            for job in jobs:
                self._deliver(job, exc)
            return
        prefix = getattr(self.batch, "prefix", None)  # the batch's prefix-cache hooks
        for job, handle in zip(jobs, handles):
            job.handle = handle
            job.cached_tokens = prefix.cached(handle) if prefix is not None else 0
            self._jobs[handle] = job

    def _drop_gone(self) -> None:
        """End cancelled jobs and those whose client stopped reading; their rows leave now."""
        now = time.monotonic()
        for job in self.active:
            if job.done:
                continue
            group = job.group
            if job.cancelled.is_set():
                self._end(job, "cancelled")
            elif group.pending > self.max_outbox or group.stalled_for(now) > self.stall_timeout_s:
                log.warning("generation %s dropped: its client stopped reading (%d events unread)",
                            job.id, group.pending)
                group.cancel()
                self._end(job, "cancelled")
        self.active = [j for j in self.active if not j.done]

    def step(self, jobs: list[Job]) -> list[tuple[Job, object]]:
        """One batched step over every active job: ``(job, TokenEvent | Exception)`` pairs."""
        pairs = self.batch.step()
        self.steps += 1
        self.batch_size = self.batch.last_batch_size
        return [(self._jobs[h], ev) for h, ev in pairs if h in self._jobs]

    def _deliver(self, job: Job, result: object) -> None:
        if job.done:
            return
        if isinstance(result, Exception):
            log.error("generation %s failed: %s: %s", job.id, type(result).__name__, result)
            self._send(job.group, (job.index, result))
            self._end(job, "error")
            return
        now = time.perf_counter()
        if job.first_token_at is None:
            job.first_token_at = now
        job.prev_token_at, job.last_token_at = job.last_token_at, now
        job.tokens += 1
        self._send(job.group, (job.index, result))
        if self.observer is not None:
            self.observer(job, result)
        if result.finish_reason:
            self._end(job, result.finish_reason)

    def _end(self, job: Job, reason: str) -> None:
        if job.done:
            return
        job.finish_reason = reason
        if job.handle is not None:
            self._jobs.pop(job.handle, None)
            if self.batch is not None:
                self.batch.cancel(job.handle)  # frees its KV-cache slots now (no-op once finished)
            job.handle = None
        self._send(job.group, JobGroup.END)
        if self.observer is not None:
            self.observer(job, None)


def _put_all(puts: list) -> None:
    """On the event loop: queue each item for its reader (``Scheduler._flush``)."""
    for queue_, item in puts:
        queue_.put_nowait(item)


class WorkerHost:
    """Runs the model's work (loading it, then the scheduler's worker loop) on a thread
    its owner gives: ``tokenflow serve`` gives the process's main thread and runs
    uvicorn on another.

    Why: PyTorch on Linux uses GNU OpenMP, which spin-waits for the next parallel op
    only while it manages no more threads than there are CPUs. Every live thread that
    has run a parallel op keeps its own team, so a second such thread (a worker, or the
    pool thread that loaded the model) pushes the count past 2 cores here, and from then
    on every small op of every thread ends in a futex sleep and wake-up. Measured here
    (2 cores, int4, 64 tokens): the same decode loop runs at 50 tok/s when one thread
    does all torch work and 24-28 when a second one has.
    """

    def __init__(self) -> None:
        self._calls: queue.Queue = queue.Queue()

    def submit(self, fn) -> concurrent.futures.Future:
        """Run ``fn()`` on the host's thread (call from any thread); its result or error
        arrives in the returned future (``asyncio.wrap_future`` awaits it)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        return future

    def run_until(self, done, poll_s: float = 0.2) -> None:
        """Run submitted calls, one after another, until ``done()`` is true between calls."""
        while not done():
            try:
                fn, future = self._calls.get(timeout=poll_s)
            except queue.Empty:
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
