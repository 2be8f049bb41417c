"""A client that never reads, or reads a byte a second, is dropped after the stall timeout
whatever the socket buffers could absorb (server/transport.py bounds them), its rows freed,
while normal clients beside it keep their pace."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from server_harness import CHAT, StepEngine, iter_sse, serve, wait_until  # noqa: F401  (serve: a fixture)

STALL = 1.0


def _never_reading_client(port: int, body: dict) -> socket.socket:
    """Send a streaming request on a raw socket and never read a byte of the answer."""
    sock = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _closed_by_the_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Read what the server sent until it closes (a reset, or the end of the stream)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


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
        # Dropped, but the client neither reads nor leaves: the server closes the connection
        # itself once its socket has taken no byte for the write timeout (the stall timeout).
        connections = server.server.server_state.connections
        assert wait_until(lambda: not connections, timeout=STALL + 5, interval=0.05), len(connections)
        closed_after = time.monotonic() - started
        assert _closed_by_the_server(stalled)
    finally:
        stalled.close()
    assert dropped_after < STALL + 4
    assert closed_after < 2 * STALL + 5
    assert normal["last"]["data"] == "[DONE]"
    # The normal reader never waited on its neighbour (steps are 50 ms).
    assert max(gaps[1:]) < STALL, max(gaps)
    assert wait_until(lambda: scheduler.active_count == 0 and engine.free_slots == free_before, timeout=5)


@pytest.mark.reliability
def test_a_one_byte_a_second_reader_is_dropped_beside_normal_clients(serve, tiny_engine):
    """A reader that drains a byte a second never catches up, and draining does not keep it
    alive: once the bounded buffers are full, TCP reopens a closed window only when the
    receiver has freed a segment's worth (silly-window avoidance: ~64 kB on loopback, hours at
    1 B/s), so the server's send blocks, the stream stops taking events from its group, and
    the stall timeout drops it as it drops a reader that never reads."""
    from server.transport import SEND_BUFFER_BYTES, WRITE_HIGH_WATER_BYTES

    rows, max_tokens, delay_s = 4, 220, 0.05  # 220 tokens: the generation alone would run 11 s or more
    engine = StepEngine(tiny_engine, delay_s=delay_s)
    server = serve(engine, stall_timeout_s=STALL)
    scheduler = server.app.state.scheduler
    registry = server.app.state.metrics.registry

    def open_streams() -> float:
        return registry.get_sample_value("tokenflow_active_streams")

    free_before = engine.free_slots
    assert free_before >= rows + 2  # the two normal clients get rows of their own
    # 20 top logprobs make every token's chunk ~1.5 kB: the buffers fill in seconds.
    body = {**CHAT, "max_tokens": max_tokens, "stream": True, "n": rows, "logprobs": True, "top_logprobs": 20}
    sock = socket.socket()
    # A fixed receive buffer: no autotuning, so what the slow client's side can absorb is known.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # as Linux books it (doubled)
    sock.settimeout(2)
    sock.connect(("127.0.0.1", server.port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    started = time.monotonic()
    steps_before = scheduler.steps
    stop = threading.Event()
    trickle: list[bytes] = []

    def read_a_byte_a_second():
        while not stop.is_set():
            try:
                byte = sock.recv(1)
            except OSError:  # a timeout: look at stop, read again
                continue
            if not byte:
                return
            trickle.append(byte)
            stop.wait(1.0)

    gaps: dict[int, list[float]] = {0: [], 1: []}
    last_event: dict[int, dict] = {}
    smallest_chunk: list[int] = []

    def read_normally(i: int):
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                          json={**CHAT, "max_tokens": 120, "stream": True, "logprobs": True,
                                "top_logprobs": 20}) as r:
            last = time.monotonic()
            for ev in iter_sse(r):
                now = time.monotonic()
                gaps[i].append(now - last)
                last = now
                last_event[i] = ev
                if '"top_logprobs"' in ev.get("data", "") and '"content":[' in ev["data"]:
                    smallest_chunk.append(len(ev["data"]))

    slow = threading.Thread(target=read_a_byte_a_second)
    slow.start()
    normal = [threading.Thread(target=read_normally, args=(i,)) for i in (0, 1)]
    try:
        assert wait_until(lambda: any(len(j.group.jobs) == rows for j in scheduler.active), timeout=10)
        slow_jobs = next(j.group.jobs for j in scheduler.active if len(j.group.jobs) == rows)
        for t in normal:
            t.start()
        assert wait_until(lambda: all(j.done for j in slow_jobs), timeout=60, interval=0.02)
        dropped_after = time.monotonic() - started
        step_s = dropped_after / max(1, scheduler.steps - steps_before)  # the pace the steps kept
        for t in normal:
            t.join(60)
        # Dropped, not finished: a byte a second never caught up.
        assert all(j.finish_reason == "cancelled" and j.tokens < max_tokens for j in slow_jobs), \
            [(j.finish_reason, j.tokens) for j in slow_jobs]
        # The bound: the stall timeout plus the time the slow rows take to fill what may be in
        # flight (transport high-water mark + the kernel's send buffer, which Linux doubles +
        # the client's receive buffer), at no less than 3/4 of a normal chunk's bytes per token
        # and row (a reader that fell behind gets merged chunks: one envelope for several
        # tokens), at the pace the steps actually kept here; then twice that fill time and two
        # seconds of slack. Here (2 busy cores): freed after ~3.8 s against a bound of ~10 s.
        in_flight = WRITE_HIGH_WATER_BYTES + 2 * SEND_BUFFER_BYTES + receive_buffer
        fill_steps = in_flight / (rows * min(smallest_chunk) * 3 / 4)
        bound = STALL + 2 * fill_steps * step_s + 2.0
        print(f"\none-byte-a-second reader: rows freed after {dropped_after:.2f} s (bound {bound:.1f} s: "
              f"{in_flight} B in flight, chunk >= {min(smallest_chunk)} B, {step_s * 1000:.0f} ms a step), "
              f"tokens per row {[j.tokens for j in slow_jobs]}, normal max gap "
              f"{max(max(g[1:]) for g in gaps.values()):.2f} s, open streams {open_streams():.0f}")
        assert dropped_after < bound, (dropped_after, bound)
        # The normal clients kept their pace and finished.
        for i in (0, 1):
            assert last_event[i]["data"] == "[DONE]", last_event.get(i)
            assert max(gaps[i][1:]) < STALL + 0.5, max(gaps[i])
        assert wait_until(lambda: scheduler.active_count == 0 and engine.free_slots == free_before, timeout=5), \
            (scheduler.active_count, engine.free_slots, free_before)
    finally:
        stop.set()
        slow.join(5)
        sock.close()
    # Its connection was closed by the server (the write timeout) or by the client: the stream is gone.
    assert wait_until(lambda: open_streams() == 0, timeout=5), open_streams()
    assert trickle and trickle[0] == b"H"  # it did get its answer, a byte at a time
