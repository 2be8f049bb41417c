"""The serving benchmarks start as scripts: ``serve_inprocess.py`` end to end on the
tiny model (in process, then over HTTP through the served app), ``serve_load.py``'s help,
and its load generator against a peer that closes idle connections (as llama-server may)."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_serve_inprocess_runs_both_paths_on_the_tiny_model(tiny_model_dir):
    res = subprocess.run([sys.executable, str(BENCHMARKS / "serve_inprocess.py"), "--model", str(tiny_model_dir),
                          "--device", "cpu", "--dtype", "float32", "--runs", "1", "--max-tokens", "4"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tokens=4 runs=1" in res.stdout
    for path in ("in process", "HTTP (openai client)"):
        assert re.search(re.escape(path) + r"\s+ttft\s+[\d.]+ ms\s+decode\s+[\d.]+ tok/s", res.stdout), res.stdout


def test_serve_load_help():
    res = subprocess.run([sys.executable, str(BENCHMARKS / "serve_load.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--levels" in res.stdout, res.stderr[-3000:]


def _peer_that_drops_idle_connections():
    """A stand-in for a server such as llama-server: it streams one completion per
    connection (chunked, keep-alive by HTTP/1.1's default, no usage in the stream), then
    closes the connection a moment later, so a client that reuses it loses its request."""
    import asyncio
    import json
    import threading

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(5):
            event = f"data: {json.dumps({'choices': [{'text': f' t{i}', 'index': 0}]})}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.002)
        done = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        await writer.drain()
        await asyncio.sleep(0.05)  # long enough for the client to pool the connection
        writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    return server, loop, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def test_serve_load_works_against_a_peer_that_closes_idle_connections():
    """The load generator must not depend on keep-alive reuse: a fresh connection a request."""
    sys.path.insert(0, str(BENCHMARKS))
    import serve_load

    server, loop, url = _peer_that_drops_idle_connections()
    try:
        row = serve_load._run(serve_load.run_level(url, concurrency=4, per_client=4, max_tokens=5))
    finally:
        import time

        time.sleep(0.2)  # the last handlers close their connections
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
    assert row["errors"] == 0, row["error_samples"]
    assert row["requests"] == 16 and row["tokens"] == 16 * 5  # counted by events: no usage in this stream
