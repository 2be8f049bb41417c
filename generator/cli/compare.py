"""``tokenflow compare``: several strategies on the same prompt(s), streamed side by
side, then what each produced and what it cost.

Strategies are given as ``name:key=value,...`` (``sample:temperature=0.8,top_k=50``);
every key is a ``SamplingParams`` field, checked by ``SamplingParams`` itself
(``common.parse_strategy_spec``).
By default the streams advance round-robin, one token each in turn, so they grow
side by side; each stream's timings count only the time spent producing *its*
tokens (``--sequential`` runs them one after another instead, in wall time).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from decoding import SamplingParams

from ..eval.text import distinct_n, nan_mean, repetition_rate, self_bleu
from ..eval.likelihood import mean_logprob, perplexity
from .columns import LiveColumns
from .common import (CLIError, add_constraint_flags, add_model_flags, engine_options, is_sampling, load_engine,
                     parse_engine_args, parse_strategy_spec, read_prompts_file)
from .replay import StreamRecorder, engine_header
from .research import divergence_table, divergences

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
        "mean_logprob": mean_logprob(lps),
        "perplexity": perplexity(lps),
        "distinct_1": distinct_n([ids], 1),
        "distinct_2": distinct_n([ids], 2),
        "repetition_rate": repetition_rate(ids, 4),
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
        "ttft_ms": nan_mean([r.ttft * 1000 for r in runs if r.ttft is not None]),
        "mean_logprob": mean_logprob(all_lps),
        "perplexity": perplexity(all_lps),
        "distinct_1": nan_mean([distinct_n(seqs, 1) for seqs in ids_by_prompt]),
        "distinct_2": nan_mean([distinct_n(seqs, 2) for seqs in ids_by_prompt]),
        "repetition_rate": nan_mean([repetition_rate(s, 4) for seqs in ids_by_prompt
                                             for s in seqs]),
        "self_bleu": nan_mean([self_bleu(seqs) for seqs in ids_by_prompt if len(seqs) > 1]),
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
                      "prompts": prompts, "strategies": entries, "divergences": divergences(runs, labels)})


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

def add_commands(sub) -> None:
    """Add ``tokenflow compare`` to the CLI."""
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
    add_constraint_flags(cmp)  # one constraint for every strategy
    cmp.add_argument("--trace", action="store_true",
                     help="add each token's decision trace to --json/--record (every strategy but beam)")
    cmp.add_argument("--sequential", action="store_true",
                     help="run the streams one after another instead of token by token in turn")
    cmp.add_argument("--no-live", action="store_true", help="do not show the streams, only the table")
    cmp.add_argument("-v", "--verbose", action="store_true",
                     help="say each stage of loading the model and what runs, on stderr")
    cmp.add_argument("--json", metavar="FILE", help="write everything (every token with logprob and time) here")
    cmp.add_argument("--record", metavar="FILE.jsonl", help="record every stream for `tokenflow replay`")
    cmp.add_argument("--engine-arg", action="append", metavar="KEY=VALUE", help="extra Engine.load option")
    add_model_flags(cmp)
    cmp.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    """Run the strategies, show them live, print the table, write ``--json``."""
    if not args.specs:
        raise CLIError("give at least one --strategy")
    if args.samples < 1:
        raise CLIError(f"--samples must be >= 1, got {args.samples}")
    if args.prompt is not None and args.prompts:
        raise CLIError("give a prompt or --prompts, not both")
    prompts = read_prompts_file(args.prompts) if args.prompts else [args.prompt] if args.prompt else None
    if not prompts:
        raise CLIError("give a prompt or --prompts FILE.jsonl")
    defaults = {"max_new_tokens": args.max_new_tokens, "ignore_eos": True if args.ignore_eos else None,
                "json_schema": args.json_schema, "regex": args.regex, "grammar": args.grammar}
    specs = [parse_strategy_spec(s, **defaults) for s in args.specs]  # ParamError -> one line
    if args.trace:
        specs = [p if p.resolved_strategy.selector.is_beam else p.replace(trace=True) for p in specs]
    labels = list(args.specs)
    options = parse_engine_args(args.engine_arg)
    load_options = engine_options(args, options)
    engine = load_engine(load_options, verbose=args.verbose)  # heavy imports only once the flags are good

    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or file: room for the whole table
    view = None if args.no_live else LiveColumns(labels, console=console)
    recorder = None
    if args.record:
        streams = {r.stream_id: f"{labels[r.spec_index]} #{r.sample} (prompt {r.prompt_index})"
                   for r in plan_runs(specs, len(prompts), args.samples, args.seed)}
        recorder = StreamRecorder(args.record, {"command": "compare", "prompts": prompts, "specs": labels,
                                                "streams": streams, **engine_header(engine)})
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
    if len(specs) > 1:
        console.print(divergence_table(report["divergences"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
