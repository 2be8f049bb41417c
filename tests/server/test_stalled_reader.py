"""A client that never reads is dropped after the stall timeout whatever the socket
buffers could absorb (server/transport.py bounds them), its rows freed, while a normal
client beside it keeps its pace."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from server_harness import CHAT, StepEngine, iter_sse, serve, wait_until  # noqa: F401  (serve: a fixture)

STALL = 1.0


def _never_reading_client(port: int, body: dict) -> socket.socket:
    """Send a streaming request on a raw socket and never read a byte of the answer."""
    sock = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_never_reading_client_is_dropped_and_its_rows_freed(serve, tiny_engine):
    # 50 ms a step, 200 tokens: the generation alone would hold its rows for 10 s or more.
    engine = StepEngine(tiny_engine, delay_s=0.05)
    server = serve(engine, stall_timeout_s=STALL, max_active=12)
    scheduler = server.app.state.scheduler
    free_before = engine.free_slots
    # n=7: the tiny engine has 8 KV-cache slots, one is left for the normal client.
    greedy = {**CHAT, "max_tokens": 200, "stream": True, "n": 7, "logprobs": True, "top_logprobs": 20}
    gaps: list[float] = []
    normal: dict = {}

    def read_normally():
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                          json={**CHAT, "max_tokens": 60, "stream": True}) as r:
            last = time.monotonic()
            for ev in iter_sse(r):
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                normal["last"] = ev

    stalled = _never_reading_client(server.port, greedy)
    try:
        assert wait_until(lambda: scheduler.active_count == 7, timeout=10)
        started = time.monotonic()
        reader = threading.Thread(target=read_normally)
        reader.start()
        # Its rows leave within the stall timeout plus the time to fill the bounded buffers.
        assert wait_until(lambda: scheduler.active_count <= 1, timeout=STALL + 4, interval=0.05), \
            scheduler.active_count
        dropped_after = time.monotonic() - started
        reader.join(30)
    finally:
        stalled.close()
    assert dropped_after < STALL + 4
    assert normal["last"]["data"] == "[DONE]"
    # The normal reader never waited on its neighbour (steps are 50 ms).
    assert max(gaps[1:]) < STALL, max(gaps)
    assert wait_until(lambda: scheduler.active_count == 0 and engine.free_slots == free_before, timeout=5)
