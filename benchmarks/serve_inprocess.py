"""Time to first token and decode tokens/s: in process vs over HTTP, same prompt.

    .venv/bin/python benchmarks/serve_inprocess.py [--runs 3] [--max-tokens 64] [--device cpu]

What the server's path costs on top of the engine's: the model is loaded once;
first ``--runs`` in-process runs (``engine.stream``), then the same runs over
HTTP (the ``openai`` client, streaming chat) against the app served the way
``tokenflow serve`` serves it (the model's loop on this process's main thread,
uvicorn on a free port of 127.0.0.1 in another). Greedy, EOS ignored: every run
generates exactly ``--max-tokens`` tokens. Prints the medians; writes no file.
"""

from __future__ import annotations

import argparse
import threading
import time

from generator.eval.timing import median, stream_timing


def _stats(start: float, stamps: list[float]) -> tuple[float, float]:
    """Time to first token (ms) and decode tokens/s of one run."""
    t = stream_timing(start, stamps)
    return t["ttft_ms"], t["decode_tps"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/serve_inprocess.py", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each kind, after one warm-up (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens every run generates (default 64)")
    parser.add_argument("--prompt", default="Explain streaming in one paragraph.", help="the user message")
    parser.add_argument("--model", default=None,
                        help="a local HF folder, a .gguf or a hub id (default: the default model)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--dtype", default="auto", help="auto (int4 on CPU for the default model), float32, ...")
    args = parser.parse_args(argv)

    import openai
    import uvicorn

    from decoding import SamplingParams
    from generator import Engine

    from server.app import create_app
    from server.cli import serve_with_worker_here
    from server.settings import Settings

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    messages = [{"role": "user", "content": args.prompt}]
    params = SamplingParams(strategy="greedy", max_new_tokens=args.max_tokens, ignore_eos=True)

    def in_process():
        start, stamps = time.perf_counter(), []
        for _ in engine.stream(messages, params, chat=True):
            stamps.append(time.perf_counter())
        return _stats(start, stamps)

    results: dict[str, list[tuple[float, float]]] = {"in process": [], "HTTP (openai client)": []}
    in_process()  # warm-up: first-call allocations
    results["in process"] = [in_process() for _ in range(args.runs)]

    # Then as `tokenflow serve` runs it: the model's loop on this (main) thread, uvicorn
    # and the client on others.
    server = uvicorn.Server(uvicorn.Config(None, host="127.0.0.1", port=0, log_level="warning"))
    failures: list[BaseException] = []

    def over_http(client):
        start, stamps = time.perf_counter(), []
        for chunk in client.chat.completions.create(model="tokenflow", messages=messages, max_tokens=args.max_tokens,
                                                    temperature=0, stream=True, extra_body={"ignore_eos": True}):
            if chunk.choices and chunk.choices[0].delta.content is not None and not chunk.choices[0].delta.role:
                stamps.append(time.perf_counter())
        return _stats(start, stamps)

    def client_side():
        try:
            while not server.started:
                time.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            over_http(client)  # warm-up: connection setup
            results["HTTP (openai client)"] = [over_http(client) for _ in range(args.runs)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            server.should_exit = True

    threading.Thread(target=client_side, daemon=True).start()
    failures += serve_with_worker_here(server, lambda host: create_app(Settings(), engine=engine, host=host))
    if failures:
        raise failures[0]
    print(f"device={engine.device} dtype={str(engine.dtype).replace('torch.', '')} tokens={args.max_tokens} "
          f"runs={args.runs} (medians)")
    for name, rows in results.items():
        ttft = median([r[0] for r in rows])
        tps = median([r[1] for r in rows])
        print(f"  {name:22s} ttft {ttft:7.1f} ms   decode {tps:6.1f} tok/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
