"""``tokenflow generate`` (stream a completion to stdout, token by token) and
``tokenflow strategies`` (the decoding catalogue)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from decoding import SamplingParams

from .common import (CLIError, add_model_flags, add_sampling_flags, engine_options, load_engine,
                     sampling_params_from_args)
from .research import trace_line


def add_commands(sub) -> None:
    """Add ``tokenflow generate`` and ``tokenflow strategies`` to the CLI."""
    gen = sub.add_parser("generate", help="stream a completion to stdout",
                         description="Stream a completion to stdout, token by token.")
    gen.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    gen.add_argument("--stats", action="store_true",
                     help="print what runs (model, device, weights, kernels), then time to first token, "
                     "inter-token latency and tokens/s, to stderr")
    gen.add_argument("-v", "--verbose", action="store_true",
                     help="say each stage of loading the model and what runs, on stderr")
    gen.add_argument("--record", metavar="FILE.jsonl",
                     help="also write every event with its wall-clock offset here (see `tokenflow replay`)")
    add_model_flags(gen)
    add_sampling_flags(gen)
    gen.set_defaults(func=cmd_generate)
    strat = sub.add_parser("strategies", help="list the decoding strategies, their chains and parameters",
                           description="List the decoding strategies (name, aliases, chain, parameters, "
                           "reference) and the processors every strategy can switch on.")
    strat.add_argument("--json", action="store_true",
                       help="print the machine-readable catalogue (what GET /strategies serves)")
    strat.set_defaults(func=cmd_strategies)


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream one completion to stdout, each text delta flushed as it comes. With ``--n K``
    the K choices run as rows of one batch: choice 0 streams, the others are printed after
    it, each under a ``--- choice i ---`` line (``--stats`` times choice 0)."""
    params = sampling_params_from_args(args)
    options = engine_options(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.prompt == "-":
        prompt = prompt.rstrip("\n")
    if not prompt:
        raise CLIError("the prompt is empty" + (" (nothing on stdin)" if args.prompt == "-" else ""))
    engine = load_engine(options, verbose=args.verbose, stats=args.stats)  # heavy imports only now
    from ..speculate import describe as speculation_note

    note = speculation_note(engine)
    if "off here" in note and not (args.stats or args.verbose):  # --stats/-v print it on the [engine] line
        why = note.split("(", 1)[1].rstrip(")")
        print(f"[speculate] --speculate {engine.config.speculate}: {why}", file=sys.stderr, flush=True)
    if engine.runner.compiled:
        engine.runner.compile_notice = lambda text: print(f"[compile] {text}", file=sys.stderr, flush=True)
    if args.record and params.seed is None and not params.is_greedy:
        # A recording stores the seed it ran with, so `tokenflow replay --verify` can re-run it.
        import secrets

        params = dataclasses.replace(params, seed=secrets.randbelow(2 ** 31))
    recorder = _open_recorder(args, engine, prompt, params)
    start = time.perf_counter()
    stamps: list[float] = []
    out = sys.stdout
    last = None
    reader_gone = False
    later: dict[int, list[str]] = {}  # --n > 1: choice 0 streams live, the others follow it
    try:
        for choice, ev in engine.stream_n(prompt, params, chat=args.chat):
            if recorder is not None:
                recorder.event(ev, stream=str(choice), at=time.perf_counter())
            if choice:
                later.setdefault(choice, []).append(ev.text)
                continue
            stamps.append(time.perf_counter())
            last = ev
            if ev.trace is not None:  # --trace: one line per token on stderr, the text stays on stdout
                print(trace_line(ev.index, ev.text, ev.trace), file=sys.stderr, flush=True)
            if ev.text:
                out.write(ev.text)
                out.flush()
        out.write("\n")
        for choice in sorted(later):
            seed = "" if params.seed is None else f", seed {params.seed + choice}"
            out.write(f"--- choice {choice}{seed} ---\n{''.join(later[choice])}\n")
        out.flush()
    except BrokenPipeError:  # stdout's reader left (`| head -c 40`): stop generating, still say --stats
        reader_gone = True
        _silence_stdout()
    finally:
        if recorder is not None:
            recorder.close()
    if args.stats and stamps:
        finish = "stdout closed" if reader_gone else (last.finish_reason if last else None)
        print(format_stats(start, stamps, finish) + speculation_stats(engine), file=sys.stderr, flush=True)
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of a closed pipe is quiet."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _open_recorder(args: argparse.Namespace, engine, prompt: str, params: SamplingParams):
    """A ``StreamRecorder`` for ``--record``, or None."""
    if not args.record:
        return None
    from .replay import StreamRecorder, engine_header

    try:
        return StreamRecorder(args.record, {"command": "generate", "prompt": prompt, "chat": args.chat,
                                            "prompt_ids": engine.encode(prompt, args.chat),
                                            "chain": params.resolved_strategy.chain, "seed": params.seed,
                                            **engine_header(engine), "params": dataclasses.asdict(params)})
    except OSError as exc:
        raise CLIError(f"--record: cannot write {args.record}: {exc.strerror}") from None


def format_stats(start: float, stamps: list[float], finish: str | None) -> str:
    """One line: tokens, time to first token, inter-token latency, decode tokens/s."""
    from ..eval.timing import stream_timing

    t = stream_timing(start, stamps)
    if t["tokens"] > 1:
        rest = (f"itl mean {t['itl_mean_ms']:.1f} ms p50 {t['itl_p50_ms']:.1f} ms, "
                f"decode {t['decode_tps']:.1f} tok/s")
    else:
        rest = "itl n/a"
    return (f"[stats] {t['tokens']} tokens in {t['total_s']:.2f} s ({t['tokens_per_s']:.1f} tok/s overall), "
            f"ttft {t['ttft_ms']:.0f} ms, {rest}, finish={finish}")


def speculation_stats(engine) -> str:
    """``, speculation: 41 of 96 drafted tokens accepted (43%)`` when drafts were verified, else ``""``."""
    counts = engine.__dict__.get("spec_counts")
    if counts is None or not counts.drafted:
        return ""
    return (f", speculation: {counts.accepted} of {counts.drafted} drafted tokens accepted "
            f"({100 * counts.accepted / counts.drafted:.0f}%) in {counts.verify_steps} verify steps")


def cmd_strategies(args: argparse.Namespace) -> int:
    """Print the decoding catalogue: as text, or as the JSON ``GET /strategies`` serves."""
    from decoding import describe

    catalogue = describe()
    if args.json:
        import json

        print(json.dumps(catalogue, indent=2))
        return 0
    params = catalogue["params"]

    def show(name: str, defaults: dict) -> str:
        value = defaults.get(name, params[name]["default"])
        if value is None and params[name]["off"] is not None:
            value = params[name]["off"]  # unset and no strategy default: off
        return f"{name}={value}"

    print("strategies (tokenflow generate --strategy NAME):")
    for s in catalogue["strategies"]:
        aliases = f" (aliases: {', '.join(s['aliases'])})" if s["aliases"] else ""
        print(f"\n  {s['name']}{aliases}\n    {s['description']}")
        print(f"    chain: {s['chain']}")
        if s["params"]:
            print(f"    params: {', '.join(show(p, s['defaults']) for p in s['params'])}")
        print(f"    reference: {s['reference']}")
    print("\nprocessors (any strategy but beam; on when their parameter is set, applied first, in this order):")
    for p in catalogue["processors"]:
        print(f"\n  {p['name']}: {p['description']}")
        print(f"    params: {', '.join(show(n, {}) for n in p['params'])}")
        print(f"    reference: {p['reference']}")
    return 0
