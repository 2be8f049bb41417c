"""Continuous batching in the server: requests join a running batch and leave it at
once, limits, slow and stalled readers, and what /metrics says about the batch."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from decoding import SamplingParams
from generator import TokenEvent
from server.jobs import JobGroup
from server.scheduler import Scheduler
from server_harness import CHAT, StepEngine, data_json, iter_sse, serve, wait_until  # noqa: F401 (serve: a fixture)


def test_a_request_joins_a_running_batch_and_gets_tokens_before_it_finishes(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.02)
    server = serve(slow)
    long_body = {**CHAT, "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=long_body, timeout=30) as long_res:
        long_events = iter_sse(long_res)
        next(long_events), next(long_events)  # role chunk + a first token: the long one runs
        short = httpx.post(server.url + "/v1/completions", timeout=30,
                           json={"prompt": "The capital", "max_tokens": 5, "temperature": 0, "ignore_eos": True})
        assert short.status_code == 200
        # The short request was served whole while the long one was still mid-way.
        assert wait_until(lambda: server.app.state.scheduler.active_count == 1)
        rest = [data_json(e) for e in long_events if "data" in e and e["data"] != "[DONE]"]
    assert rest[-1]["choices"][0]["finish_reason"] == "length"
    assert len(rest) > 20  # most of the long generation came after the short one had finished
    # Alone or in a batch, greedy gives the same answer here.
    again = httpx.post(server.url + "/v1/completions", timeout=30,
                       json={"prompt": "The capital", "max_tokens": 5, "temperature": 0, "ignore_eos": True})
    assert again.json()["choices"][0]["text"] == short.json()["choices"][0]["text"]


def test_rows_leave_at_once_and_the_batch_shrinks(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.03)
    server = serve(slow)
    scheduler = server.app.state.scheduler
    body = {**CHAT, "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as a:
        a_events = iter_sse(a)
        next(a_events)
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as b:
            b_events = iter_sse(b)
            next(b_events), next(b_events)
            assert wait_until(lambda: scheduler.batch_size == 2)
            metrics = httpx.get(server.url + "/metrics").text
            assert "tokenflow_batch_size 2.0" in metrics and "tokenflow_running_generations 2.0" in metrics
        # b hung up: its row leaves and its slot is free, a goes on alone.
        assert wait_until(lambda: scheduler.batch_size == 1 and scheduler.active_count == 1, timeout=5)
        assert tiny_engine.runner.free_count == tiny_engine.runner.num_slots - 1
        assert tiny_engine.free_slots == tiny_engine.runner.free_count  # what the scheduler reads
        next(a_events)
    assert wait_until(lambda: tiny_engine.runner.free_count == tiny_engine.runner.num_slots, timeout=5)


def test_metrics_show_queue_depth_when_the_batch_is_full(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.03)
    server = serve(slow, max_active=2, max_waiting=2, retry_after_s=2)
    body = {**CHAT, "max_tokens": 100, "temperature": 0, "stream": True}
    url = server.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=30) as r1, \
            httpx.stream("POST", url, json=body, timeout=30) as r2:
        e1, e2 = iter_sse(r1), iter_sse(r2)
        next(e1), next(e2)
        with httpx.stream("POST", url, json=body, timeout=30) as r3, \
                httpx.stream("POST", url, json=body, timeout=30) as r4:
            e3, e4 = iter_sse(r3), iter_sse(r4)
            next(e3), next(e4)  # the role chunks: accepted, waiting for a row
            assert wait_until(lambda: server.app.state.scheduler.queue_depth == 2)
            metrics = httpx.get(server.url + "/metrics").text
            assert "tokenflow_queue_depth 2.0" in metrics and "tokenflow_batch_size 2.0" in metrics
            refused = httpx.post(url, json=body)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "2"


def test_prompt_and_total_length_limits(serve, tiny_engine):
    server = serve(tiny_engine, max_prompt_tokens=4, max_total_tokens=40)
    res = httpx.post(server.url + "/v1/completions", json={"prompt": "Once upon a time there was", "max_tokens": 2})
    assert res.status_code == 400 and res.json()["error"]["code"] == "prompt_too_long"
    assert res.json()["error"]["param"] == "prompt"
    res = httpx.post(server.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 100})
    assert res.status_code == 400 and res.json()["error"]["param"] == "max_tokens"
    # With no max_tokens, the default is capped by what the total limit leaves.
    res = httpx.post(server.url + "/v1/completions", json={"prompt": "Once", "ignore_eos": True})
    assert res.status_code == 200
    assert res.json()["usage"]["prompt_tokens"] + res.json()["usage"]["completion_tokens"] == 40


def test_serve_flags_and_env_set_the_limits(monkeypatch):
    import argparse

    from server.cli import add_commands

    monkeypatch.setenv("TOKENFLOW_MAX_BATCH", "5")
    monkeypatch.setenv("TOKENFLOW_STALL_TIMEOUT", "7")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-prompt-tokens", "100", "--max-total-tokens", "200"])
    assert args.max_active == 5 and args.stall_timeout == 7.0
    assert args.max_prompt_tokens == 100 and args.max_total_tokens == 200
    assert parser.parse_args(["serve", "--max-batch", "3"]).max_active == 3


# -- slow and stalled readers, at the scheduler --------------------------------------------
def _run_loop_in_thread():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


def test_a_reader_that_stops_is_dropped_and_does_not_stall_the_others(tiny_engine):
    loop, thread = _run_loop_in_thread()
    slow = StepEngine(tiny_engine, delay_s=0.01)
    scheduler = Scheduler(slow, max_waiting=8, max_active=4, stall_timeout_s=0.3)
    scheduler.start()
    params = SamplingParams(max_new_tokens=150, ignore_eos=True)
    ids = tiny_engine.encode("Once upon a time")
    try:
        stalled = scheduler.submit([(ids, params)], loop=loop)  # nobody ever reads it
        reader = scheduler.submit([(ids, params)], loop=loop)

        async def read_all():
            stamps = []
            async for _, ev in reader:
                stamps.append(time.monotonic())
            return stamps

        stamps = asyncio.run_coroutine_threadsafe(read_all(), loop).result(timeout=60)
        assert len(stamps) == 150
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        # The stalled stream neither blocked the worker nor the reader (steps are ~10 ms).
        assert max(gaps) < 0.5, max(gaps)
        job = stalled.jobs[0]
        assert job.finish_reason == "cancelled" and job.tokens < 150
        assert tiny_engine.runner.free_count == tiny_engine.runner.num_slots
    finally:
        scheduler.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_a_reader_that_falls_behind_gets_merged_events():
    async def scenario():
        group = JobGroup(asyncio.get_running_loop())
        group.jobs.append(object())  # one choice
        worker = Scheduler(engine=None)  # only its hand-over to the loop is used here
        events = [TokenEvent(i, f"t{i} ", -0.1, i) for i in range(6)]
        for ev in events[:2]:
            worker._send(group, (0, ev))
            worker._flush()  # two steps, a token each
        await asyncio.sleep(0)  # delivered to the queue
        reads = group.batches(behind_s=0.05)
        first = await reads.__anext__()
        assert first == (0, [events[0]])  # keeping up: one event at a time
        second = await reads.__anext__()
        assert second == (0, [events[1]])
        for ev in events[2:]:
            worker._send(group, (0, ev))
            worker._flush()
        worker._send(group, JobGroup.END)
        worker._flush()
        await asyncio.sleep(0.1)  # the reader was slow: the backlog aged
        rest = [pair async for pair in reads]
        assert rest == [(0, events[2:])]  # one merged read, nothing lost
        assert group.pending == 0

    asyncio.run(scenario())


# -- the worker loop on a thread its owner gives (tokenflow serve: the main thread) -------
def test_worker_host_runs_the_scheduler_on_the_callers_thread(tiny_engine):
    """``WorkerHost`` runs submitted calls (results and errors to their futures) on the
    thread that calls ``run_until``; the scheduler's loop runs there until ``stop()``."""
    from server.scheduler import WorkerHost

    host = WorkerHost()
    name = host.submit(lambda: threading.current_thread().name)  # queued, not run yet
    assert not name.done()
    failing = host.submit(lambda: 1 / 0)
    loop, loop_thread = _run_loop_in_thread()
    scheduler = Scheduler(tiny_engine, max_waiting=4, max_active=2)
    scheduler.start(host)
    ids = tiny_engine.encode("Once upon a time")
    results = {}

    def client():  # another thread submits, reads, then stops the scheduler
        group = scheduler.submit([(ids, SamplingParams(max_new_tokens=5, ignore_eos=True))], loop=loop)

        async def read_all():
            return [ev async for _, ev in group]

        results["events"] = asyncio.run_coroutine_threadsafe(read_all(), loop).result(timeout=60)
        scheduler.stop()

    t = threading.Thread(target=client, daemon=True)
    t.start()
    host.run_until(lambda: scheduler._finished.is_set(), poll_s=0.05)
    t.join(10)
    loop.call_soon_threadsafe(loop.stop)
    loop_thread.join(5)
    assert scheduler.worker_thread == name.result(timeout=1) == threading.current_thread().name
    assert [ev.index for ev in results["events"]] == [0, 1, 2, 3, 4]
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=1)
