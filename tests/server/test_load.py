"""Load, against a real server process over a slowed tiny model (it is about the server,
not the model): a 200-client disconnect storm leaves no stream, row, slot or queued job
behind and threads, file descriptors and memory where they were; 1,000 SSE connections
held at once while ``/health`` keeps answering fast. Minutes long: ``make test-reliability``.
Each test prints its figures (``-s`` shows them)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import threading
import time

import httpx
import pytest

from server_harness import start_step_server, wait_until

pytestmark = pytest.mark.reliability

STORM = 200
CONNECTIONS = 1000


def _proc_status(pid: int) -> dict:
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    return {"rss_kb": int(status["VmRSS"].split()[0]), "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _idle(url: str) -> bool:
    health = httpx.get(url + "/health").json()
    metrics = httpx.get(url + "/metrics").text
    streams = float(re.search(r"^tokenflow_active_streams (\S+)", metrics, re.M).group(1))
    return (health["running"], health["queue_depth"], streams, health["free_slots"]) == (0, 0, 0.0,
                                                                                       health["slots"])


def _request(method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


CHAT = {"messages": [{"role": "user", "content": "Once upon a time"}], "ignore_eos": True, "max_tokens": 40,
        "stream": True}
TEXT = {"prompt": "Once upon a time", "ignore_eos": True, "max_tokens": 40, "stream": True, "n": 2}


async def _one_dropper(port: int, kind: int, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == 0:  # before the headers are complete
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        elif kind == 1:  # in the middle of the body
            full = _request("POST", "/v1/completions", TEXT)
            writer.write(full[: len(full) - 20])
        else:  # after k chunks of a stream: chat, completions (n=2), /api/stream, or non-streaming
            choice = rng.randrange(4)
            writer.write([_request("POST", "/v1/chat/completions", CHAT),
                          _request("POST", "/v1/completions", TEXT),
                          _request("GET", "/api/stream?prompt=Once&max_tokens=40&ignore_eos=true"),
                          _request("POST", "/v1/completions", {**TEXT, "stream": False})][choice])
            await writer.drain()
            if choice == 3:  # no chunks to count: leave while it generates
                await asyncio.sleep(rng.random() * 0.3)
            for _ in range(rng.randrange(1, 6) if choice < 3 else 0):
                await asyncio.wait_for(reader.readuntil(b"\n\n"), timeout=30)
        await writer.drain()
        await asyncio.sleep(rng.random() * 0.05)
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.transport.abort()  # a drop, not a polite close


async def _storm(port: int, clients: int, seed: int) -> None:
    rng = random.Random(seed)
    await asyncio.gather(*(_one_dropper(port, i % 3, rng) for i in range(clients)))


def _prune_idle_threads(url: str) -> None:
    """Prompts are tokenized on anyio's worker threads, a pool as large as the busiest moment
    needed; a worker idle for 10 s leaves when the next call comes. So: wait, then one call."""
    time.sleep(10.5)
    assert httpx.post(url + "/v1/completions", json={"prompt": "Once", "max_tokens": 1}).status_code == 200
    time.sleep(0.5)


def test_disconnect_storm_leaves_nothing_behind(tiny_model_dir):
    proc, url = start_step_server(tiny_model_dir, delay_s=0.01, max_waiting=1000, resume_grace_s=0.5)
    port = int(url.rsplit(":", 1)[1])
    try:
        asyncio.run(_storm(port, STORM, seed=1))  # warm-up: pools, caches, lazily made threads
        assert wait_until(lambda: _idle(url), timeout=60, interval=0.2)
        _prune_idle_threads(url)
        before = _proc_status(proc.pid)
        started = time.monotonic()
        asyncio.run(_storm(port, STORM, seed=2))
        assert wait_until(lambda: _idle(url), timeout=60, interval=0.2)
        idle_after = time.monotonic() - started

        _prune_idle_threads(url)
        after = _proc_status(proc.pid)
        settled_ok = after["threads"] <= before["threads"] + 2 and after["fds"] <= before["fds"]
        print(f"\ndisconnect storm: {STORM} clients, idle again {idle_after:.1f} s after it began; "
              f"before {before}, after {after}")
        assert settled_ok, (before, after)
        assert after["rss_kb"] <= before["rss_kb"] * 1.05, (before, after)
        # Still serving.
        ok = httpx.post(url + "/v1/completions", json={"prompt": "Once", "max_tokens": 3}, timeout=30)
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        proc.terminate()
        proc.wait(30)


async def _hold(port: int, done: list, statuses: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request("GET", "/api/stream?prompt=Once&max_tokens=4&ignore_eos=true"))
    await writer.drain()
    head = await reader.readuntil(b"\r\n")
    statuses.append(int(head.split()[1]))
    body = b""
    while b"event: done" not in body:
        chunk = await reader.read(65536)
        if not chunk:
            break
        body += chunk
    done.append(b"event: done" in body)
    writer.transport.abort()


def test_a_thousand_sse_connections_while_health_stays_fast(tiny_model_dir):
    proc, url = start_step_server(tiny_model_dir, delay_s=0.02, max_waiting=CONNECTIONS + 50)
    port = int(url.rsplit(":", 1)[1])
    waits: list[float] = []
    peak = {"streams": 0.0}
    stop = threading.Event()

    def probe():
        with httpx.Client() as client:
            while not stop.is_set():
                start = time.perf_counter()
                assert client.get(url + "/health").status_code == 200
                waits.append(time.perf_counter() - start)
                metrics = client.get(url + "/metrics").text
                streams = float(re.search(r"^tokenflow_active_streams (\S+)", metrics, re.M).group(1))
                peak["streams"] = max(peak["streams"], streams)
                time.sleep(0.05)

    async def clients():
        done: list = []
        statuses: list = []
        await asyncio.gather(*(_hold(port, done, statuses) for _ in range(CONNECTIONS)))
        return done, statuses

    prober = threading.Thread(target=probe)
    try:
        prober.start()
        started = time.monotonic()
        done, statuses = asyncio.run(clients())
        took = time.monotonic() - started
    finally:
        stop.set()
        prober.join(10)
        proc.terminate()
        proc.wait(30)
    waits.sort()
    p95 = waits[int(len(waits) * 0.95)]
    print(f"\n{CONNECTIONS} SSE connections: peak open {peak['streams']:.0f}, all done in {took:.1f} s; "
          f"/health p50 {waits[len(waits) // 2] * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms over {len(waits)} probes")
    assert statuses.count(200) == CONNECTIONS and all(done)
    assert peak["streams"] >= CONNECTIONS * 0.9  # they were open together
    assert p95 < 0.1, p95
