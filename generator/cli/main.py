"""``tokenflow``: generate (stream to stdout) and the other subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from decoding import ParamError, SamplingParams



class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + traceback
        raise CLIError(f"{message} (see '{self.prog} --help')")


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``SamplingParams`` field, help text from the field itself."""
    group = parser.add_argument_group("decoding (see `tokenflow strategies`)")
    for f in dataclasses.fields(SamplingParams):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = f.metadata.get("help", "")
        kind = str(f.type)
        if kind == "bool":
            group.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
        elif kind.startswith("dict[int"):
            group.add_argument(flag, dest=f.name, action="append", type=_id_equals_bias, metavar="ID=BIAS",
                               help=help_text)
        elif kind.startswith("tuple[tuple[int"):
            group.add_argument(flag, dest=f.name, action="append", type=_id_list, metavar="ID[,ID...]",
                               help=help_text)
        elif kind.startswith("tuple[str"):
            group.add_argument(flag, dest=f.name, action="append", metavar="TEXT", help=help_text)
        elif kind.startswith("tuple[int"):
            group.add_argument(flag, dest=f.name, action="append", type=int, metavar="ID", help=help_text)
        elif kind == "bool | str":
            group.add_argument(flag, dest=f.name, type=_bool_or_never, default=None, metavar="{true,false,never}",
                               help=help_text)
        else:
            cast = int if kind.startswith("int") else float if kind.startswith("float") else str
            shown = "the strategy's, else off" if default is None and "off" in f.metadata else default
            group.add_argument(flag, dest=f.name, type=cast, default=None,
                               help=f"{help_text} (default: {shown})")


def _id_equals_bias(text: str) -> tuple[int, float]:
    """``--logit-bias 42=-5.5`` -> ``(42, -5.5)``."""
    key, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(key), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ID=BIAS (e.g. 42=-5.5), got {text!r}") from None


def _id_list(text: str) -> tuple[int, ...]:
    """``--bad-words-ids 12,34`` -> ``(12, 34)``."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {text!r}") from None


def _bool_or_never(text: str):
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    if low == "never":
        return "never"
    raise argparse.ArgumentTypeError(f"expected true, false or never, got {text!r}")


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    """Build the validated settings from parsed flags (only the ones given)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingParams)
             if getattr(args, f.name, None) is not None}
    if "logit_bias" in given:  # repeated ID=BIAS pairs; a later pair for the same id wins
        given["logit_bias"] = dict(given["logit_bias"])
    return SamplingParams(**given)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help="default SmolLM2-135M-Instruct (from PyPI), a local HF folder, a .gguf file, or a hub id")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    group.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    group.add_argument("--quant", default="auto", choices=["auto", "none", "int8", "int4"],
                       help="weight-only quantization; auto: int4 from the GGUF's Q4_1 blocks on CPU "
                            "when --dtype is auto and the source is such a GGUF, else none. int4/int8 run on "
                            "tokenflow's own AVX512_BF16 kernels where the CPU has them (built on first use, "
                            "~7 s); TOKENFLOW_INT4_KERNEL=aten uses PyTorch's")
    group.add_argument("--head", default="auto", choices=["auto", "none", "int8", "int4"],
                       help="the output head's weights (28M of the model's 135M); auto: int8 with --quant int8/int4 "
                            "(the GGUF stores it in 8 bits), else dense. int4 reads a third fewer bytes per "
                            "token at a small quality cost (see the README's quality table)")
    group.add_argument("--activations", default="auto", choices=["auto", "bf16", "int8"],
                       help="what the int4 layers and an int8/int4 head multiply their codes by: int8 (the inputs "
                            "rounded per row and group of 32, as llama.cpp does for this GGUF; AVX512_VNNI, 64 "
                            "products an instruction, 1.5x faster at 16 rows) or bf16 (the inputs as they are). "
                            "auto: int8 where the CPU has AVX512_VNNI, else bf16; TOKENFLOW_ACTIVATIONS sets what "
                            "auto means")
    group.add_argument("--dense-prefill", action="store_true",
                       help="quantized layers keep a bf16 copy of their weights for prompt chunks of 32+ tokens: "
                            "about 2x faster prefill with PyTorch's int kernels, about the same with tokenflow's own "
                            "(+214 MB), at the cost of rounding the weights a second time")
    group.add_argument("--compile", dest="compile", action="store_const", const=True, default=None,
                       help="compile the one-token decode step with torch.compile (also: TOKENFLOW_COMPILE=1); "
                            "faster steps after a compile of several seconds per batch shape")
    group.add_argument("--no-compile", dest="compile", action="store_const", const=False,
                       help="run the decode step eagerly (the default)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tokenflow", description="Token-by-token generation with decoding strategies you can "
                     "see, swap and compare.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    gen = sub.add_parser("generate", help="stream a completion to stdout",
                         description="Stream a completion to stdout, token by token.")
    gen.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    gen.add_argument("--stats", action="store_true",
                     help="print time to first token, inter-token latency and tokens/s to stderr")
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
    _add_measure_commands(sub)
    _add_optional_commands(sub)
    return parser


def _add_measure_commands(sub) -> None:
    """``compare`` (strategies side by side) and ``replay`` (recorded streams)."""
    from . import compare, replay as record

    compare.add_commands(sub)
    record.add_commands(sub)


def _add_optional_commands(sub) -> None:
    """Subcommands from other packages (e.g. ``serve`` from ``server``), found through
    the ``tokenflow.commands`` entry point group so ``generator`` never imports them."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="tokenflow.commands"), key=lambda e: e.name):
        try:
            add_commands = ep.load()
        except ImportError:
            continue
        add_commands(sub)


def cmd_generate(args: argparse.Namespace) -> int:
    from ..engine import Engine  # heavy imports only once the flags are good

    params = sampling_params_from_args(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.prompt == "-":
        prompt = prompt.rstrip("\n")
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, quant=args.quant, compile=args.compile,
                         head=args.head, dense_prefill=args.dense_prefill, activations=args.activations)
    if getattr(engine.runner, "compiled", False):
        engine.runner.compile_notice = lambda text: print(f"[compile] {text}", file=sys.stderr, flush=True)
    recorder = _open_recorder(args, engine, prompt, params)
    start = time.perf_counter()
    stamps: list[float] = []
    out = sys.stdout
    last = None
    try:
        for ev in engine.stream(prompt, params, chat=args.chat):
            stamps.append(time.perf_counter())
            if recorder is not None:
                recorder.event(ev, at=stamps[-1])
            if ev.text:
                out.write(ev.text)
                out.flush()
            last = ev
    finally:
        if recorder is not None:
            recorder.close()
    out.write("\n")
    out.flush()
    if args.stats and stamps:
        print(format_stats(start, stamps, last.finish_reason if last else None), file=sys.stderr)
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
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


def _open_recorder(args: argparse.Namespace, engine, prompt: str, params: SamplingParams):
    """A ``StreamRecorder`` for ``--record``, or None."""
    if not getattr(args, "record", None):
        return None
    from .replay import StreamRecorder

    try:
        return StreamRecorder(args.record, {"command": "generate", "prompt": prompt, "chat": args.chat,
                                            "model": engine.name, "params": dataclasses.asdict(params)})
    except OSError as exc:
        raise CLIError(f"--record: cannot write {args.record}: {exc.strerror}") from None


def format_stats(start: float, stamps: list[float], finish: str | None) -> str:
    """One line: tokens, time to first token, inter-token latency, decode tokens/s."""
    n = len(stamps)
    ttft = (stamps[0] - start) * 1000
    gaps = sorted((b - a) * 1000 for a, b in zip(stamps, stamps[1:]))
    if gaps:
        itl_mean = sum(gaps) / len(gaps)
        itl_p50 = gaps[len(gaps) // 2]
        tps = (n - 1) / (stamps[-1] - stamps[0]) if stamps[-1] > stamps[0] else float("inf")
        rest = f"itl mean {itl_mean:.1f} ms p50 {itl_p50:.1f} ms, decode {tps:.1f} tok/s"
    else:
        rest = "itl n/a"
    total = stamps[-1] - start
    return (f"[stats] {n} tokens in {total:.2f} s ({n / total:.1f} tok/s overall), ttft {ttft:.0f} ms, "
            f"{rest}, finish={finish}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except CLIError as exc:
        print(f"tokenflow: error: {exc}", file=sys.stderr)
        return 2
    except ParamError as exc:
        print(f"tokenflow: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error. Silence the final flush.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback
        from ..loading import ModelLoadError

        if isinstance(exc, ModelLoadError):
            print(f"tokenflow: error: {exc}", file=sys.stderr)
            return 1
        if os.environ.get("TOKENFLOW_DEBUG"):
            raise
        print(f"tokenflow: error: {type(exc).__name__}: {exc} (set TOKENFLOW_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
