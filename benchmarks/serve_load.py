"""Serving load over HTTP: N concurrent streaming clients per concurrency level.

    .venv/bin/python benchmarks/serve_load.py [--levels 1,2,4,8,16,32,64] [--max-tokens 64]
        [--requests-per-client 2] [--min-requests 16] [--url http://127.0.0.1:8000]
        [--peer llama-server [--peer-tier avx2]] [-- serve flags...]

Without ``--url`` it starts ``tokenflow serve`` on a free port (default model,
``--max-batch`` = the largest level unless given after ``--``) and stops it at
the end. Every client streams ``/v1/completions`` (greedy, ``ignore_eos``, a
fixed prompt set) and timestamps each network read; each client sends
``--requests-per-client`` requests one after another, more at low levels so that
every level runs at least ``--min-requests`` (a one-stream level of two requests
lasts a second, too short on a noisy host), and the levels run ``--repeats`` rounds
(default 3), each level reporting its median round. Per level it reports aggregate
tokens/s (all tokens of the level over its wall time), time to first token
p50/p95, inter-token latency p50/p95 and errors, and writes JSON, CSV and a PNG
under ``benchmarks/results/``. Numbers on a shared machine are noisy: compare
levels of one run, not runs.

``--peer llama-server`` then runs the same levels, prompts and settings against
``llama-server`` on the same GGUF in the same run (``-np`` = the largest level, continuous
batching, the same threads), built for the kernel tier ours ran (``--peer-tier``;
``benchmarks/llamacpp.py``), and reports both side by side. Every request opens its own
connection: no keep-alive reuse, which llama-server does not promise between requests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from generator.kernels.build import cpu

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a short poem about a river.",
    "List three uses of a paperclip.",
    "What is the capital of France, and why is it famous?",
    "Describe how a bicycle works.",
    "Give me a recipe for pancakes.",
    "Why do cats purr?",
    "Summarize the plot of a detective story in two sentences.",
]
RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


async def one_request(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int) -> dict:
    """Stream one completion, keeping each network read with its arrival time; the SSE
    events are parsed later (``parse``), after the level's clock stops. On a 2-core
    machine the load generator shares the CPU with the server it measures: with httpx
    (pure-Python HTTP parsing) and JSON per token it took about 12% of a core at 16
    streams, with aiohttp's C parser and raw reads about 3%."""
    body = {"model": "tokenflow", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    reads = []
    try:
        async with session.post(url + "/v1/completions", json=body) as res:
            if res.status != 200:
                await res.read()
                return {"error": f"HTTP {res.status}"}
            async for data in res.content.iter_any():
                reads.append((time.perf_counter(), data))
    except aiohttp.ClientError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"start": start, "end": time.perf_counter(), "reads": reads}


def parse(result: dict) -> dict:
    """One streamed request's reads -> its time to first token, inter-token gaps and token
    count. An event's arrival is the read that completed it; events that carry text count."""
    if "error" in result:
        return result
    arrivals, tokens, pending = [], 0, b""
    for at, data in result["reads"]:
        pending += data
        *events, pending = pending.split(b"\n\n")
        for event in events:
            for line in event.decode().splitlines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    return {"error": payload["error"].get("message", "error")}
                if payload.get("usage"):
                    tokens = payload["usage"]["completion_tokens"]
                if payload.get("choices") and payload["choices"][0].get("text"):
                    arrivals.append(at)
    if not arrivals:
        return {"error": "no tokens"}
    tokens = tokens or len(arrivals)  # a server without usage in its stream: one event a token
    start = result["start"]
    return {"ttft": arrivals[0] - start, "itl": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "tokens": tokens, "start": start, "end": result["end"]}


async def run_level(url: str, concurrency: int, per_client: int, max_tokens: int) -> dict:
    """``concurrency`` clients, each sending ``per_client`` requests one after another."""
    # A fresh connection a request (force_close): a peer may close an idle keep-alive
    # connection between requests, and a reused one then fails ("Server disconnected").
    connector = aiohttp.TCPConnector(limit=concurrency + 4, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client_loop(c: int) -> list[dict]:
            out = []
            for r in range(per_client):
                prompt = PROMPTS[(c * per_client + r) % len(PROMPTS)]
                out.append(await one_request(session, url, prompt, max_tokens))
            return out

        t0 = time.perf_counter()
        raw = [r for rs in await asyncio.gather(*(client_loop(c) for c in range(concurrency))) for r in rs]
        wall = time.perf_counter() - t0
    results = [parse(r) for r in raw]  # after the clock: parsing is not part of the load
    ok = [r for r in results if "error" not in r]
    itl = [g for r in ok for g in r["itl"]]
    ttft = [r["ttft"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {"concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
            "tokens": tokens, "wall_s": round(wall, 3), "tok_per_s": round(tokens / wall, 2),
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p95_ms": ms(percentile(ttft, 95)),
            "itl_p50_ms": ms(percentile(itl, 50)), "itl_p95_ms": ms(percentile(itl, 95)),
            "error_samples": sorted({r["error"] for r in results if "error" in r})[:3]}


def start_server(serve_args: list[str], max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if not any(a.startswith(("--max-batch", "--max-active")) for a in serve_args):
        serve_args = [*serve_args, "--max-batch", str(max_batch)]
    cmd = [sys.executable, "-m", "generator.cli", "serve", "--port", str(port), "--log-level", "warning",
           *serve_args]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the server did not become ready in 600 s")


def plot(rows: list[dict], path: Path, title: str, peer_rows: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["concurrency"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(xs, [r["tok_per_s"] for r in rows], "o-", label="tokenflow")
    if peer_rows:
        axes[0].plot(xs, [r["tok_per_s"] for r in peer_rows], "s--", label="llama-server")
        axes[0].legend()
        for key, label in (("ttft_p95_ms", "llama-server p95"),):
            axes[1].plot(xs, [r[key] for r in peer_rows], "s--", label=label)
    axes[0].set(title="aggregate tokens/s", xlabel="concurrent streams", xscale="log", xticks=xs, xticklabels=xs)
    for key, label in (("ttft_p50_ms", "p50"), ("ttft_p95_ms", "p95")):
        axes[1].plot(xs, [r[key] for r in rows], "o-", label=label)
    axes[1].set(title="time to first token (ms)", xlabel="concurrent streams", xscale="log", xticks=xs,
                xticklabels=xs)
    for key, label in (("itl_p50_ms", "p50"), ("itl_p95_ms", "p95")):
        axes[2].plot(xs, [r[key] for r in rows], "o-", label=label)
    axes[2].set(title="inter-token latency (ms)", xlabel="concurrent streams", xscale="log", xticks=xs,
                xticklabels=xs)
    for ax in axes[1:]:
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _run(coro):
    """Run the clients on uvloop where it is installed (uvicorn's own loop: less CPU per
    event than asyncio's, which the load generator takes from the server it measures)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(url: str, levels: list[int], args, label: str) -> list[dict]:
    """Every level ``args.repeats`` times, in rounds over all the levels (a slow spell of a
    shared host lands on one round's levels, not on every repeat of one level); each level
    reports its median round."""
    # Warm-up: the compiled decode step builds its batch-size-1 graph, then the dynamic one.
    _run(run_level(url, 1, 1, 4))
    _run(run_level(url, 3, 1, 4))
    runs: dict[int, list[dict]] = {level: [] for level in levels}
    print(f"{label}\n{'round':>5} {'streams':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p95':>9} {'itl p50':>8} "
          f"{'itl p95':>8} {'errors':>6}", flush=True)
    for rnd in range(1, args.repeats + 1):
        for level in levels:
            per_client = max(args.requests_per_client, -(-args.min_requests // level))
            row = _run(run_level(url, level, per_client, args.max_tokens))
            runs[level].append(row)
            print(f"{rnd:>5} {level:>7} {row['tok_per_s']:>8} {row['ttft_p50_ms']!s:>9} "
                  f"{row['ttft_p95_ms']!s:>9} {row['itl_p50_ms']!s:>8} {row['itl_p95_ms']!s:>8} "
                  f"{row['errors']:>6}", flush=True)
    rows = []
    for level in levels:  # the round with the median throughput stands for the level
        ranked = sorted(runs[level], key=lambda r: r["tok_per_s"])
        row = dict(ranked[(len(ranked) - 1) // 2])
        row["tok_per_s_runs"] = [r["tok_per_s"] for r in runs[level]]
        row["speedup"] = round(row["tok_per_s"] / rows[0]["tok_per_s"], 2) if rows and rows[0]["tok_per_s"] \
            else 1.0
        rows.append(row)
    return rows


# Our kernel tier -> the llama.cpp build it is compared with (benchmarks/llamacpp.py).
PEER_TIER = {"avx512": "native", "avx2": "avx2", "portable": "portable", "aten": "native"}


def run_peer(health: dict, levels: list[int], args) -> tuple[list[dict], dict]:
    """The same levels against llama-server on the GGUF ours serves, built for the tier."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import llamacpp

    from generator.loading import resolve_model

    tier = args.peer_tier or PEER_TIER.get(((health.get("engine") or {}).get("kernels")) or "aten", "native")
    bin_dir = llamacpp.build(tier, log=lambda m: print(m, file=sys.stderr))
    _, gguf = resolve_model(None, None)
    with llamacpp.LlamaServer(bin_dir, Path(gguf), slots=max(levels), threads=args.threads) as peer:
        rows = measure(peer.url, levels, args, f"llama-server {llamacpp.VERSION} ({tier} build), -np {max(levels)}")
    return rows, {"name": "llama-server", "llama_cpp_python": llamacpp.VERSION, "tier": tier,
                  "slots": max(levels), "threads": args.threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--levels", default="1,2,4,8,16,32,64", help="concurrency levels, comma separated")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds over all levels; each level reports its median round")
    ap.add_argument("--min-requests", type=int, default=16,
                    help="at least this many requests a level (low levels: more per client)")
    ap.add_argument("--peer", choices=["llama-server"], help="then the same load against this peer, same run")
    ap.add_argument("--peer-tier", choices=list(dict.fromkeys(PEER_TIER.values())) + ["avx512"],
                    help="the llama.cpp build to compare with (default: the one matching our kernel tier)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="the peer's CPU threads")
    ap.add_argument("--out", default="serve_load", help="file name stem under benchmarks/results/")
    ap.add_argument("serve_args", nargs="*", help="after --: flags for tokenflow serve (e.g. --model)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.serve_args, max(levels))
    try:
        health = httpx.get(url + "/health", timeout=10).json()
        rows = measure(url, levels, args, f"tokenflow serve ({((health.get('engine') or {}).get('kernels'))} tier)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    peer_rows, peer_meta = run_peer(health, levels, args) if args.peer else (None, None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"url": args.url or "started by the benchmark", "server": health, "max_tokens": args.max_tokens,
            "kernels": ((health or {}).get("engine") or {}).get("kernels"),  # ours: the kernel tier it ran
            "requests_per_client": args.requests_per_client, "min_requests": args.min_requests,
            "repeats": args.repeats, "peer": peer_meta, "cpu": cpu(),
            "machine": platform.platform(),
            "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    stem = RESULTS / args.out
    doc = {"meta": meta, "levels": rows}
    if peer_rows:
        doc["peer_levels"] = peer_rows
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["server", *(k for k in rows[0] if k not in ("error_samples",
                                                                                          "tok_per_s_runs"))],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows({"server": "tokenflow", **r} for r in rows)
        writer.writerows({"server": "llama-server", **r} for r in peer_rows or [])
    print(f"medians of {args.repeats} round(s), throughput vs the first level:")
    for i, r in enumerate(rows):
        line = (f"{r['concurrency']:>7} {r['tok_per_s']:>8} ({r['speedup']}x) ttft p95 {r['ttft_p95_ms']} ms, "
                f"itl p50 {r['itl_p50_ms']} ms; rounds: {r['tok_per_s_runs']}")
        if peer_rows:
            p = peer_rows[i]
            ratio = r["tok_per_s"] / p["tok_per_s"] if p["tok_per_s"] else float("nan")
            line += (f" | llama-server {p['tok_per_s']} tok/s, ttft p95 {p['ttft_p95_ms']} ms, "
                     f"errors {p['errors']}: ours {ratio:.2f}x")
        print(line)
    plot(rows, stem.with_suffix(".png"), f"tokenflow serve load ({health.get('device')}, {health.get('dtype')}, "
                                         f"max_tokens={args.max_tokens})", peer_rows)
    print(f"wrote {stem}.json, .csv, .png")


if __name__ == "__main__":
    main()
