"""``tokenflow compare``: several strategies on the same prompt(s), streamed side by
side, then what each produced and what it cost.

Strategies are given as ``name:key=value,...`` (``sample:temperature=0.8,top_k=50``);
every key is a ``SamplingParams`` field, checked by ``SamplingParams`` itself.
By default the streams advance round-robin, one token each in turn, so they grow
side by side; each stream's timings count only the time spent producing *its*
tokens (``--sequential`` runs them one after another instead, in wall time).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding import ParamError, SamplingParams

from ..eval import text as metrics

# -- parsing "name:key=value,..." -------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(SamplingParams)}


def _coerce(name: str, kind: str, text: str) -> Any:
    """One ``key=value`` value as the type of its ``SamplingParams`` field."""
    low = text.strip().lower()
    try:
        if "None" in kind and low in ("none", "null"):
            return None
        if kind.startswith("tuple[int"):
            return int(text)
        if kind.startswith("tuple[str"):
            return text
        if kind.startswith("bool"):
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            if "str" in kind:
                return text
            raise ValueError
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("str"):
            return text
    except ValueError:
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}
        want = next((v for k, v in expected.items() if kind.startswith(k) or kind.startswith(f"tuple[{k}")),
                    f"a value of type {kind}")
        raise ParamError(name, f"expected {want}, got {text!r}") from None
    # A field type this parser does not know (e.g. a dict): JSON if it parses, else text.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_strategy_spec(spec: str, **defaults: Any) -> SamplingParams:
    """``"sample:temperature=0.8,top_k=50"`` -> validated ``SamplingParams``.

    ``name`` alone, ``name:k=v,...`` or just ``k=v,...`` (default strategy).
    Repeat a key for list fields (``stop=a,stop=b``). ``defaults`` fill fields the
    spec leaves out. Errors are ``ParamError`` naming the field.
    """
    text = spec.strip()
    if ":" in text:
        name, _, rest = text.partition(":")
    elif "=" in text:
        name, rest = "", text
    else:
        name, rest = text, ""
    name = name.strip()
    given: dict[str, Any] = {}
    if name:
        given["strategy"] = name
    elif ":" in text:
        raise ParamError("strategy", f"no strategy name before ':' in {spec!r}")
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise ParamError(key or "strategy", f"expected key=value, got {item!r} in {spec!r}")
        if key not in _FIELDS:
            known = ", ".join(n for n in _FIELDS if n != "strategy")
            raise ParamError(key, f"unknown setting in {spec!r}; known: {known}")
        kind = str(_FIELDS[key].type)
        val = _coerce(key, kind, value.strip())
        if kind.startswith("tuple["):
            given[key] = (*given.get(key, ()), val)
        else:
            given[key] = val
    merged = {**{k: v for k, v in defaults.items() if v is not None}, **given}
    return SamplingParams(**merged)


def is_sampling(params: SamplingParams) -> bool:
    """True when the strategy draws at random (so different seeds give different texts)."""
    return not params.is_greedy and params.resolved_strategy.selector.samples


# -- engine options shared with the benchmark --------------------------------

def parse_engine_args(items: list[str] | None) -> dict[str, Any]:
    """``["quant=int4", "compile=false"]`` -> ``{"quant": "int4", "compile": False}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ParamError("engine_arg", f"expected key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = _guess_value(value.strip())
    return out


def _guess_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_engine(model: str | None, device: str, dtype: str, options: dict[str, Any] | None = None):
    """``Engine.load`` with extra keyword options passed through only if this
    version of ``Engine.load`` takes them (else a ``ParamError`` naming the option)."""
    from ..engine import Engine

    options = dict(options or {})
    accepted = inspect.signature(Engine.load).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    for key in options:
        if key not in accepted and not takes_any:
            known = ", ".join(k for k in accepted if k not in ("cls", "model", "device", "dtype"))
            raise ParamError("engine_arg", f"Engine.load has no option {key!r} (it takes: {known or 'none'})")
    return Engine.load(model, device=device, dtype=dtype, **options)


# -- running -----------------------------------------------------------------

@dataclass
class Run:
    """One stream: a strategy on a prompt with one seed."""

    spec_index: int
    prompt_index: int
    sample: int
    params: SamplingParams
    events: list[dict[str, Any]] = field(default_factory=list)
    own_time: float = 0.0  # seconds spent inside this stream's own steps
    ttft: float | None = None
    prompt_tokens: int = 0

    @property
    def stream_id(self) -> str:
        return f"p{self.prompt_index}.s{self.spec_index}.k{self.sample}"


class LiveColumns:
    """Streams shown side by side in the terminal, one rich panel per column."""

    def __init__(self, titles: list[str], console=None, title: str = ""):
        from rich.console import Console

        self.titles = list(titles)
        self.texts = ["" for _ in titles]
        self.title = title
        self.console = console or Console()
        self._live = None

    def reset(self, index: int, title: str | None = None) -> None:
        self.texts[index] = ""
        if title is not None:
            self.titles[index] = title

    def append(self, index: int, text: str) -> None:
        self.texts[index] += text

    def __rich__(self):
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in self.titles:
            grid.add_column(ratio=1)
        grid.add_row(*(Panel(Text(t), title=title, title_align="left")
                       for t, title in zip(self.texts, self.titles)))
        if self.title:
            outer = Table.grid(expand=True)
            outer.add_row(Text(self.title, style="bold"))
            outer.add_row(grid)
            return outer
        return grid

    def __enter__(self) -> "LiveColumns":
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=12)
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)
        self._live = None


def plan_runs(specs: list[SamplingParams], n_prompts: int, samples: int, seed: int) -> list[Run]:
    """Every stream to run: ``samples`` seeds for sampling strategies, one otherwise."""
    runs = []
    for pi in range(n_prompts):
        for si, params in enumerate(specs):
            k_max = samples if is_sampling(params) else 1
            for k in range(k_max):
                p = params
                if is_sampling(params):
                    base = params.seed if params.seed is not None else seed
                    p = params.replace(seed=base + k)
                runs.append(Run(si, pi, k, p))
    return runs


def _timed(run: Run, stream: Iterator, clock) -> Iterator[tuple[Any, float]]:
    """Advance one engine stream, counting only the time spent inside it."""
    while True:
        t0 = clock()
        try:
            ev = next(stream)
        except StopIteration:
            run.own_time += clock() - t0
            return
        now = clock()
        run.own_time += now - t0
        if run.ttft is None:
            run.ttft = run.own_time
        yield ev, now


def run_compare(engine, prompts: list[str], specs: list[SamplingParams], labels: list[str], *,
                samples: int = 3, seed: int = 0, chat: bool = False, sequential: bool = False,
                view: LiveColumns | None = None, recorder=None, clock=time.perf_counter) -> list[Run]:
    """Run every strategy on every prompt (``samples`` seeds for sampling ones),
    one round of streams at a time: prompt by prompt, sample by sample."""
    runs = plan_runs(specs, len(prompts), samples, seed)
    start = recorder.start if recorder is not None else clock()
    rounds: dict[tuple[int, int], list[Run]] = {}
    for run in runs:
        rounds.setdefault((run.prompt_index, run.sample), []).append(run)
    for (pi, k), group in rounds.items():
        if view is not None:
            n_prompts = len(prompts)
            view.title = (f"prompt {pi + 1}/{n_prompts}: " if n_prompts > 1 else "") + prompts[pi][:200]
            for run in group:
                view.reset(run.spec_index, f"{labels[run.spec_index]}"
                           + (f"  (seed {run.params.seed})" if is_sampling(run.params) else ""))
        streams = []
        for run in group:
            ids = engine.encode(prompts[pi], chat=chat)
            run.prompt_tokens = len(ids)
            streams.append((run, _timed(run, engine.stream(ids, run.params), clock)))
        # Round-robin: one token from each live stream in turn (or each stream to its end).
        while streams:
            for item in list(streams):
                run, it = item
                for ev, now in it:
                    run.events.append({**dataclasses.asdict(ev), "t": now - start, "t_own": run.own_time})
                    if view is not None and ev.text:
                        view.append(run.spec_index, ev.text)
                    if recorder is not None:
                        recorder.event(ev, stream=run.stream_id, at=now)
                    if not sequential:
                        break
                else:
                    streams.remove(item)
    return runs


# -- summarising --------------------------------------------------------------

def run_summary(run: Run) -> dict[str, Any]:
    """Text, timing and quality numbers of one stream."""
    ids = [e["token_id"] for e in run.events]
    lps = [e["logprob"] for e in run.events]
    n = len(ids)
    return {
        "prompt_index": run.prompt_index,
        "sample": run.sample,
        "seed": run.params.seed,
        "text": "".join(e["text"] for e in run.events),
        "finish_reason": run.events[-1]["finish_reason"] if run.events else None,
        "prompt_tokens": run.prompt_tokens,
        "tokens": n,
        "ttft_ms": run.ttft * 1000 if run.ttft is not None else float("nan"),
        "tokens_per_s": n / run.own_time if run.own_time > 0 else float("nan"),
        "mean_logprob": metrics.mean_logprob(lps),
        "perplexity": metrics.perplexity(lps),
        "distinct_1": metrics.distinct_n([ids], 1),
        "distinct_2": metrics.distinct_n([ids], 2),
        "repetition_rate": metrics.repetition_rate(ids, 4),
        "events": run.events,
    }


SUMMARY_FIELDS = ("runs", "tokens", "tokens_per_s", "ttft_ms", "mean_logprob", "perplexity",
                  "distinct_1", "distinct_2", "repetition_rate", "self_bleu")


def strategy_summary(runs: list[Run]) -> dict[str, Any]:
    """One strategy's numbers over all its prompts and samples. Distinct-n pools
    a prompt's samples (repeats across samples count), then averages over prompts;
    self-BLEU compares a prompt's samples (``None`` with fewer than two)."""
    by_prompt: dict[int, list[Run]] = {}
    for r in runs:
        by_prompt.setdefault(r.prompt_index, []).append(r)
    ids_by_prompt = [[[e["token_id"] for e in r.events] for r in group] for group in by_prompt.values()]
    all_lps = [e["logprob"] for r in runs for e in r.events]
    tokens = sum(len(r.events) for r in runs)
    own = sum(r.own_time for r in runs)
    return {
        "runs": len(runs),
        "tokens": tokens / len(runs) if runs else 0,
        "tokens_per_s": tokens / own if own > 0 else float("nan"),
        "ttft_ms": metrics.nan_mean([r.ttft * 1000 for r in runs if r.ttft is not None]),
        "mean_logprob": metrics.mean_logprob(all_lps),
        "perplexity": metrics.perplexity(all_lps),
        "distinct_1": metrics.nan_mean([metrics.distinct_n(seqs, 1) for seqs in ids_by_prompt]),
        "distinct_2": metrics.nan_mean([metrics.distinct_n(seqs, 2) for seqs in ids_by_prompt]),
        "repetition_rate": metrics.nan_mean([metrics.repetition_rate(s, 4) for seqs in ids_by_prompt
                                             for s in seqs]),
        "self_bleu": metrics.nan_mean([metrics.self_bleu(seqs) for seqs in ids_by_prompt if len(seqs) > 1]),
    }


def build_report(engine, prompts, specs, labels, runs, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything, ready for ``--json``: settings, per-strategy summary, every run
    with every token (id, text, logprob, wall-clock offset ``t``, own time ``t_own``)."""
    entries = []
    for si, (params, label) in enumerate(zip(specs, labels)):
        mine = [r for r in runs if r.spec_index == si]
        entries.append({
            "spec": label,
            "strategy": params.strategy,
            "chain": params.resolved_strategy.chain,
            "params": _jsonable(dataclasses.asdict(params)),
            "summary": strategy_summary(mine),
            "runs": [run_summary(r) for r in mine],
        })
    return _jsonable({"settings": {**settings, "model": engine.name, "device": str(engine.device),
                                   "dtype": str(engine.dtype).removeprefix("torch.")},
                      "prompts": prompts, "strategies": entries})


def _jsonable(obj: Any) -> Any:
    """Plain JSON: tuples to lists, NaN/inf to null."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def summary_table(report: dict[str, Any]):
    """A rich table: one row per strategy."""
    from rich.table import Table

    table = Table(title="strategies compared", title_justify="left")
    heads = ["strategy", "runs", "tokens", "tok/s", "TTFT ms", "logprob", "ppl", "dist-1", "dist-2", "rep-4",
             "self-BLEU"]
    for name in heads:
        table.add_column(name, justify="left" if name == "strategy" else "right",
                         overflow="fold", no_wrap=name != "strategy")
    table.caption = ("logprob: mean token logprob under the model; ppl: its perplexity; dist-n: distinct n-grams; "
                     "rep-4: repeated 4-grams; self-BLEU: across seeds")
    for entry in report["strategies"]:
        s = entry["summary"]

        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        table.add_row(entry["spec"], str(s["runs"]), fmt(s["tokens"], ".1f"), fmt(s["tokens_per_s"], ".1f"),
                      fmt(s["ttft_ms"], ".0f"), fmt(s["mean_logprob"], ".3f"), fmt(s["perplexity"], ".2f"),
                      fmt(s["distinct_1"], ".3f"), fmt(s["distinct_2"], ".3f"), fmt(s["repetition_rate"], ".3f"),
                      fmt(s["self_bleu"], ".3f"))
    return table


# -- the subcommand -------------------------------------------------------------

def read_prompts_file(path: str) -> list[str]:
    """Prompts from JSON Lines: each line ``{"prompt": "..."}`` or a JSON string."""
    from .main import CLIError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CLIError(f"--prompts: cannot read {path}: {exc.strerror}") from None
    prompts = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--prompts: {path}:{no}: not JSON ({exc.msg})") from None
        prompt = obj.get("prompt") if isinstance(obj, dict) else obj
        if not isinstance(prompt, str) or not prompt:
            raise CLIError(f"--prompts: {path}:{no}: expected {{\"prompt\": \"...\"}} or a JSON string")
        prompts.append(prompt)
    if not prompts:
        raise CLIError(f"--prompts: {path} has no prompts")
    return prompts


def add_commands(sub) -> None:
    """Add ``tokenflow compare`` to the CLI."""
    from .main import add_model_flags

    cmp = sub.add_parser(
        "compare", help="run several strategies on a prompt, side by side, and compare them",
        description="Run each --strategy on the prompt(s), stream them side by side, then show a table per "
                    "strategy: tokens, tokens/s, time to first token, mean logprob and perplexity under the "
                    "model, distinct-1/2, repetition rate and self-BLEU across --samples seeds.")
    cmp.add_argument("prompt", nargs="?", help="the prompt text (or use --prompts)")
    cmp.add_argument("--strategy", dest="specs", action="append", metavar="SPEC",
                     help='repeatable: NAME or "NAME:key=value,..." with SamplingParams fields, '
                          'e.g. "sample:temperature=0.8,top_k=50" or beam:num_beams=4')
    cmp.add_argument("--prompts", metavar="FILE.jsonl", help='prompts, one a line: {"prompt": "..."}')
    cmp.add_argument("--samples", type=int, default=3,
                     help="seeds per sampling strategy, for self-BLEU (default 3; deterministic ones run once)")
    cmp.add_argument("--seed", type=int, default=0, help="first seed of the samples (default 0)")
    cmp.add_argument("--max-new-tokens", type=int, default=64, help="tokens per stream unless a spec says (64)")
    cmp.add_argument("--ignore-eos", action="store_true", help="every stream runs to --max-new-tokens")
    cmp.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    cmp.add_argument("--sequential", action="store_true",
                     help="run the streams one after another instead of token by token in turn")
    cmp.add_argument("--no-live", action="store_true", help="do not show the streams, only the table")
    cmp.add_argument("--json", metavar="FILE", help="write everything (every token with logprob and time) here")
    cmp.add_argument("--record", metavar="FILE.jsonl", help="record every stream for `tokenflow replay`")
    cmp.add_argument("--engine-arg", action="append", metavar="KEY=VALUE", help="extra Engine.load option")
    add_model_flags(cmp)
    cmp.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from .main import CLIError

    if not args.specs:
        raise CLIError("give at least one --strategy")
    if args.samples < 1:
        raise CLIError(f"--samples must be >= 1, got {args.samples}")
    if args.prompt is not None and args.prompts:
        raise CLIError("give a prompt or --prompts, not both")
    prompts = read_prompts_file(args.prompts) if args.prompts else [args.prompt] if args.prompt else None
    if not prompts:
        raise CLIError("give a prompt or --prompts FILE.jsonl")
    defaults = {"max_new_tokens": args.max_new_tokens, "ignore_eos": True if args.ignore_eos else None}
    specs = [parse_strategy_spec(s, **defaults) for s in args.specs]  # ParamError -> one line
    labels = list(args.specs)
    options = parse_engine_args(args.engine_arg)
    engine = load_engine(args.model, args.device, args.dtype, options)

    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or file: room for the whole table
    view = None if args.no_live else LiveColumns(labels, console=console)
    recorder = None
    if args.record:
        from .replay import StreamRecorder

        streams = {r.stream_id: f"{labels[r.spec_index]} #{r.sample} (prompt {r.prompt_index})"
                   for r in plan_runs(specs, len(prompts), args.samples, args.seed)}
        recorder = StreamRecorder(args.record, {"command": "compare", "prompts": prompts, "specs": labels,
                                                "streams": streams, "model": engine.name})
    try:
        if view is not None:
            with view:
                runs = run_compare(engine, prompts, specs, labels, samples=args.samples, seed=args.seed,
                                   chat=args.chat, sequential=args.sequential, view=view, recorder=recorder)
        else:
            runs = run_compare(engine, prompts, specs, labels, samples=args.samples, seed=args.seed,
                               chat=args.chat, sequential=args.sequential, recorder=recorder)
    finally:
        if recorder is not None:
            recorder.close()
    settings = {"samples": args.samples, "seed": args.seed, "chat": args.chat,
                "mode": "sequential" if args.sequential else "round-robin", "engine_args": options}
    report = build_report(engine, prompts, specs, labels, runs, settings)
    if view is not None:
        console.print()  # the live view may end mid-line (in a pipe): start the table on its own
    console.print(summary_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
