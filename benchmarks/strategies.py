"""Per-strategy latency: our hand-written loop against transformers' own generate().

For every registered strategy (or the ones given with --strategies), on a fixed
prompt set, a fixed number of new tokens with EOS ignored, a warm-up run that is
not counted, and several repeats: time to first token, inter-token latency
p50/p95/p99, decode and prefill tokens/s and peak RSS, for tokenflow and, in the
same run and on the same prompts, for ``model.generate()`` with the same settings
(its first token timed through ``TextIteratorStreamer``). Writes JSON, CSV, a
markdown table and two PNG plots to --out, each stamped with the machine.

    .venv/bin/python benchmarks/strategies.py                 # what `make bench` runs
    .venv/bin/python benchmarks/strategies.py --tokens 8 --repeats 1 --strategies greedy beam:num_beams=2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from decoding import ParamError, SamplingParams, resolve, strategies
from decoding.selectors import ARGMAX, BEAM, SAMPLE
from generator import Engine
from generator.cli.common import is_sampling, parse_engine_args, parse_strategy_spec
from generator.eval.timing import pooled_timing

# The selectors transformers' generate() has (mirostat, for one, it has not).
_PEER_SELECTORS = (ARGMAX, SAMPLE, BEAM)

DEFAULT_PROMPTS = [
    "Explain streaming in one paragraph.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List three reasons why the sky is blue, and explain each briefly.",
    "What is the difference between a list and a tuple in Python?",
]

# Settings that show each strategy doing its thing; a strategy not named here runs
# with its own defaults (plus a seed when it samples). Keys a SamplingParams
# version does not have are dropped, so this table may run ahead of the registry.
EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "greedy": {},
    "sample": {"temperature": 0.8, "top_k": 50, "top_p": 0.95},
    "beam": {"num_beams": 4},
    "top_k": {"top_k": 50},
    "top_p": {"top_p": 0.9},
    "min_p": {"min_p": 0.05},
    "typical": {"typical_p": 0.9},
    "epsilon": {"epsilon_cutoff": 3e-4},
    "eta": {"eta_cutoff": 3e-4},
    "repetition_penalty": {"repetition_penalty": 1.2},
    "presence_penalty": {"presence_penalty": 0.5},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "no_repeat_ngram": {"no_repeat_ngram_size": 3},
    "xtc": {"xtc_probability": 0.5, "xtc_threshold": 0.1},
    "dry": {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2},
    "mirostat": {"mirostat_tau": 5.0, "mirostat_eta": 0.1},
}

# SamplingParams fields that change nothing about the work transformers would do
# (or that we set the same way ourselves), so they never block the peer run.
_PEER_NEUTRAL = {"strategy", "seed", "max_new_tokens", "ignore_eos", "stop", "stop_token_ids",
                 "min_tokens_to_keep", "logprobs", "top_logprobs"}


# -- settings -------------------------------------------------------------------

def strategy_params(spec_or_name: str, tokens: int) -> SamplingParams:
    """The benchmark's settings for one strategy: a spec given on the command line
    (``name:key=value,...``) as it is, else the example settings for the name."""
    base = {"max_new_tokens": tokens, "ignore_eos": True}
    if ":" in spec_or_name or "=" in spec_or_name:
        params = parse_strategy_spec(spec_or_name, **base)
    else:
        name = resolve(spec_or_name).name
        known = set(SamplingParams.field_names())
        example = {k: v for k, v in EXAMPLE_PARAMS.get(name, {}).items() if k in known}
        try:
            params = SamplingParams(strategy=name, **base, **example)
        except ParamError:
            params = SamplingParams(strategy=name, **base)  # the example outran this version
    if is_sampling(params) and params.seed is None:
        params = params.replace(seed=0)
    return params


def peer_kwargs(params: SamplingParams) -> tuple[dict[str, Any] | None, str]:
    """``model.generate`` keyword arguments doing the same as ``params``, or
    ``(None, reason)`` when transformers has no equivalent."""
    from transformers import GenerationConfig

    strategy = params.resolved_strategy
    if strategy.selector not in _PEER_SELECTORS:
        return None, f"transformers generate() has no '{strategy.selector.name}' selector"
    generate_fields = set(GenerationConfig().to_dict())
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens}
    for f in dataclasses.fields(SamplingParams):
        value = getattr(params, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        off = f.metadata.get("off")  # fields whose default is "unset" resolve to their off value
        if (f.name in _PEER_NEUTRAL or value == default or (off is not None and value == off)
                or (f.name == "num_beams" and value == 1)):
            continue
        if f.name not in generate_fields:
            return None, f"transformers generate() has no '{f.name}'"
        kwargs[f.name] = value
    if params.ignore_eos:
        kwargs["eos_token_id"] = None  # generate() then runs to max_new_tokens, as ours does
    if strategy.selector.is_beam:
        kwargs.update(do_sample=False, num_beams=params.num_beams)
    elif params.is_greedy:
        kwargs.update(do_sample=False)
        kwargs.pop("temperature", None)
    else:
        # Explicit, so no generation_config default (e.g. top_k=50) creeps in.
        kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    return kwargs, ""


# -- measuring --------------------------------------------------------------------

def reset_peak_rss() -> None:
    """Make the kernel's peak-RSS mark start again from the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(engine, ids: list[int], params: SamplingParams) -> dict[str, Any]:
    """One tokenflow stream on this (the main) thread, timed at each event. Both sides
    run every torch op on this one thread: a loop on a second thread decodes at about
    half speed here (GNU OpenMP stops spin-waiting once two threads have run parallel
    ops; see server.scheduler.WorkerHost)."""
    reset_peak_rss()
    _sync(engine.device)
    stamps: list[float] = []
    start = time.perf_counter()
    for _ in engine.stream(ids, params):
        stamps.append(time.perf_counter())
    return {"start": start, "stamps": stamps, "prompt_tokens": len(ids), "peak_rss_mb": peak_rss_mb()}


def run_theirs(model, ids: list[int], kwargs: dict[str, Any]) -> dict[str, Any]:
    """One ``model.generate`` run on this thread. Tokens are timed as generate() hands
    them to its streamer (the moment a ``TextIteratorStreamer`` would receive them);
    beam search cannot stream in transformers, so there every token is timed at the end."""
    from transformers.generation.streamers import BaseStreamer

    class TimedStreamer(BaseStreamer):
        """Notes the arrival time of every generated token (the first put() is the prompt)."""

        def __init__(self):
            self.stamps: list[float] = []
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            now = time.perf_counter()
            self.stamps.extend(now for _ in range(value.numel()))

        def end(self):
            pass

    input_ids = torch.tensor([ids], device=model.device)
    call = dict(kwargs, input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    reset_peak_rss()
    _sync(model.device)
    beam = kwargs.get("num_beams", 1) > 1
    streamer = TimedStreamer()
    start = time.perf_counter()
    out = model.generate(**call) if beam else model.generate(**call, streamer=streamer)
    _sync(model.device)
    if beam:  # transformers cannot stream beam search: every token arrives at the end
        end = time.perf_counter()
        stamps = [end] * (out.shape[1] - len(ids))
    else:
        stamps = streamer.stamps
    return {"start": start, "stamps": stamps, "prompt_tokens": len(ids), "peak_rss_mb": peak_rss_mb(),
            "streamed": not beam}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's numbers over all measured runs (``timing.pooled_timing``): ITL
    percentiles over every gap pooled, decode tok/s as all decode tokens over all
    decode time. A side that could not stream (beam in transformers) has no ITL,
    decode or prefill rate: its tokens all arrived at the end."""
    t = pooled_timing([(r["start"], r["stamps"], r["prompt_tokens"]) for r in runs])
    streamed = all(r.get("streamed", True) for r in runs)
    nan = float("nan")
    return {
        "runs": len(runs),
        "tokens_per_run": t["tokens"] / len(runs) if runs else 0,
        "ttft_ms": t["ttft_ms"],
        "itl_p50_ms": t["itl_p50_ms"] if streamed else nan,
        "itl_p95_ms": t["itl_p95_ms"] if streamed else nan,
        "itl_p99_ms": t["itl_p99_ms"] if streamed else nan,
        "decode_tps": t["decode_tps"] if streamed else nan,
        "e2e_tps": t["tokens_per_s"],
        "prefill_tps": t["prefill_tps"] if streamed else nan,
        "peak_rss_mb": max((r["peak_rss_mb"] for r in runs), default=nan),
        "streamed": streamed,
        "itl_ms": t["itl_ms"] if streamed else [],
    }


def ratio(a: float, b: float) -> float:
    return a / b if a and b and math.isfinite(a) and math.isfinite(b) else float("nan")


# -- the machine ------------------------------------------------------------------

def machine_info(engine, args) -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    from generator.kernels.build import cpu as cpu_of_this_machine

    cpu = cpu_of_this_machine()["model"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {
        "cpu": cpu,
        "cpu_features": cpu_of_this_machine()["features"],
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(engine.device),
        "kernels": engine.config.kernels,  # the kernel tier (TOKENFLOW_KERNELS)
        "dtype": str(engine.dtype).removeprefix("torch."),
        "model": engine.name,
        "engine_args": parse_engine_args(args.engine_arg),
        "git_commit": commit,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if engine.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(engine.device)
    return info


def machine_stamp(info: dict[str, Any]) -> str:
    return (f"{info['cpu']}, {info['cores_usable']} cores, torch {info['torch']}, {info['dtype']}, "
            f"{info['device']}" + (f" ({info['gpu']})" if info.get("gpu") else "") + f", {info['date_utc']}")


# -- output -----------------------------------------------------------------------

CSV_FIELDS = ["strategy", "spec", "impl", "runs", "tokens_per_run", "ttft_ms", "itl_p50_ms", "itl_p95_ms",
              "itl_p99_ms", "decode_tps", "e2e_tps", "prefill_tps", "peak_rss_mb", "ratio_decode_tps",
              "ratio_e2e_tps", "note"]


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else None
    return obj


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _basis(result: dict[str, Any]) -> str:
    """Which tokens/s to compare: decode, unless transformers could not stream this
    strategy (beam search), where only end-to-end tokens/s means the same on both sides."""
    theirs = result.get("transformers")
    return "e2e_tps" if theirs and not theirs.get("streamed", True) else "decode_tps"


def markdown_table(report: dict[str, Any]) -> str:
    """The markdown table (docs/performance.md): one row per strategy, ours against transformers."""
    s = report["settings"]
    lines = [
        f"Machine: {machine_stamp(report['machine'])}. {s['tokens']} new tokens (EOS ignored), "
        f"{s['prompts']} prompts x {s['repeats']} repeats, warm-up excluded.",
        "",
        "| strategy | decode tok/s ours | decode tok/s transformers | ours / transformers | TTFT ms ours "
        "| TTFT ms transformers | ITL p50 / p95 / p99 ms ours | prefill tok/s ours | peak RSS MiB ours |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        o, t = r["ours"], r.get("transformers") or {}
        basis = _basis(r)
        mark = "" if basis == "decode_tps" else " (e2e)"
        theirs = _fmt(t.get(basis)) + mark if t else f"n/a ({r.get('peer_note', '')})"
        ratio_txt = _fmt(r.get(f"ratio_{basis}"), ".2f") + "x" if t else "-"
        lines.append(
            f"| `{r['spec']}` | {_fmt(o.get(basis))}{mark} | {theirs} | {ratio_txt} | {_fmt(o['ttft_ms'], '.0f')} "
            f"| {_fmt(t.get('ttft_ms'), '.0f')} | {_fmt(o['itl_p50_ms'])} / {_fmt(o['itl_p95_ms'])} / "
            f"{_fmt(o['itl_p99_ms'])} | {_fmt(o['prefill_tps'], '.0f')} | {_fmt(o['peak_rss_mb'], '.0f')} |")
    for item in report.get("skipped", []):
        lines.append(f"\nSkipped `{item['spec']}`: {item['reason']}")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """``strategies.json``, ``.csv``, ``.md``, ``strategies_tps.png``, ``strategies_itl.png``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out / "strategies.json"
    p.write_text(json.dumps(_clean(report), indent=1) + "\n")
    paths.append(p)

    p = out / "strategies.csv"
    with open(p, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS + [f"machine_{k}" for k in report["machine"]])
        writer.writeheader()
        stamp = {f"machine_{k}": (json.dumps(v) if isinstance(v, dict) else v) for k, v in report["machine"].items()}
        for r in report["results"]:
            for impl in ("ours", "transformers"):
                side = r.get(impl)
                if side is None:
                    continue
                row = {k: v for k, v in side.items() if k in CSV_FIELDS}
                row.update(strategy=r["strategy"], spec=r["spec"], impl="tokenflow" if impl == "ours" else impl,
                           ratio_decode_tps=r.get("ratio_decode_tps"), ratio_e2e_tps=r.get("ratio_e2e_tps"),
                           note=r.get("peer_note", ""), **stamp)
                writer.writerow(_clean(row))
    paths.append(p)

    p = out / "strategies.md"
    p.write_text(markdown_table(report))
    paths.append(p)
    paths += plot(report, out)
    return paths


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    """Bar chart of tokens/s per strategy (ours vs transformers) and the ITL distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    results = report["results"]
    stamp = machine_stamp(report["machine"])
    names = [r["spec"] for r in results]
    x = np.arange(len(results))

    def tps(r, impl):
        side = r.get(impl)
        if not side:
            return 0.0
        v = side[_basis(r)]
        return v if v is not None and math.isfinite(v) else 0.0

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(results) + 2), 4.5))
    w = 0.4
    ax.bar(x - w / 2, [tps(r, "ours") for r in results], w, label="tokenflow")
    ax.bar(x + w / 2, [tps(r, "transformers") for r in results], w, label="transformers generate()")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("decode tokens/s (beam: end-to-end)")
    ax.set_title(f"tokens/s per strategy, {report['settings']['tokens']} new tokens")
    ax.legend()
    fig.text(0.01, 0.01, stamp, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    p_tps = out / "strategies_tps.png"
    fig.savefig(p_tps, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(results) + 2), 4.5))
    data, positions, colors = [], [], []
    for i, r in enumerate(results):
        for off, side, color in ((-0.2, r["ours"], "C0"), (0.2, r.get("transformers"), "C1")):
            if side and side.get("itl_ms"):
                data.append([max(g, 0.01) for g in side["itl_ms"]])  # log scale: beam bursts have 0 gaps
                positions.append(i + off)
                colors.append(color)
    if data:
        parts = ax.boxplot(data, positions=positions, widths=0.35, showfliers=True, patch_artist=True,
                           flierprops={"markersize": 2})
        for patch, color in zip(parts["boxes"], colors):
            patch.set_facecolor(color)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("inter-token latency (ms, log scale)")
    ax.set_yscale("log")
    ax.set_title("inter-token latency: tokenflow (blue), transformers (orange)")
    fig.text(0.01, 0.01, stamp, fontsize=7, color="gray")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    p_itl = out / "strategies_itl.png"
    fig.savefig(p_itl, dpi=110)
    plt.close(fig)
    return [p_tps, p_itl]


# -- main -------------------------------------------------------------------------

def load_peer_model(model: str | None, device: torch.device, dtype: torch.dtype):
    """The same weights loaded by transformers as anyone would, apart from our engine
    (which may have converted or compiled its own copy)."""
    from transformers import AutoModelForCausalLM

    from generator.loading import resolve_model

    source, _ = resolve_model(model)
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()


def read_prompts(path: str | None) -> list[str]:
    if not path:
        return list(DEFAULT_PROMPTS)
    from generator.cli.common import read_prompts_file

    return read_prompts_file(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="benchmarks/strategies.py")
    p.add_argument("--model", default=None, help="default SmolLM2-135M-Instruct, a folder, a .gguf or a hub id")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per run, EOS ignored (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="measured passes over the prompt set (default 3)")
    p.add_argument("--strategies", nargs="+", metavar="SPEC",
                   help='names or "name:key=value,..." specs (default: every registered strategy)')
    p.add_argument("--prompts", metavar="FILE.jsonl", help='prompts, one a line: {"prompt": "..."}')
    p.add_argument("--no-chat", action="store_true", help="use the prompts as raw text, not chat messages")
    p.add_argument("--no-peer", action="store_true", help="skip transformers generate()")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--engine-arg", action="append", metavar="KEY=VALUE",
                   help="extra Engine.load option, e.g. quant=int4")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    return p


def measure(engine, peer, prompt_ids, params, kwargs, repeats, spec, progress, task):
    """A warm-up run per side (not counted), then ``repeats`` passes over the prompts,
    ours and transformers' alternating so both see the same machine conditions."""
    progress.update(task, description=f"{spec}: warm-up")
    warm = params.replace(max_new_tokens=min(params.max_new_tokens, 16))
    run_ours(engine, prompt_ids[0], warm)
    progress.advance(task)
    if kwargs is not None:
        run_theirs(peer, prompt_ids[0], {**kwargs, "max_new_tokens": warm.max_new_tokens})
    progress.advance(task)
    ours, theirs = [], []
    for rep in range(repeats):
        for i, ids in enumerate(prompt_ids):
            progress.update(task, description=f"{spec}: repeat {rep + 1}, prompt {i + 1}")
            ours.append(run_ours(engine, ids, params))
            progress.advance(task)
            if kwargs is not None:
                theirs.append(run_theirs(peer, ids, kwargs))
            progress.advance(task)
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from generator.cli.common import CLIError
    from generator.loading import ModelLoadError, pick_device, pick_dtype

    err = Console(stderr=True)
    try:
        if args.tokens < 2 or args.repeats < 1:
            raise CLIError("--tokens must be >= 2 and --repeats >= 1")
        if args.threads is not None:
            if args.threads < 1:
                raise CLIError("--threads must be >= 1")
            torch.set_num_threads(args.threads)
        prompts = read_prompts(args.prompts)
        plan, skipped = [], []
        for spec in args.strategies or [s.name for s in strategies()]:
            try:
                plan.append((spec, strategy_params(spec, args.tokens)))
            except ParamError as exc:
                if args.strategies:  # asked for by name: a bad spec is the user's error
                    raise
                skipped.append({"spec": spec, "reason": f"no usable default settings: {exc}"})
        engine = Engine.load(args.model, device=args.device, dtype=args.dtype, **parse_engine_args(args.engine_arg))
        device = pick_device(args.device)
        peer = None if args.no_peer else load_peer_model(args.model, device, pick_dtype(args.dtype, device))
    except (CLIError, ParamError, ModelLoadError, KeyError) as exc:
        print(f"strategies.py: error: {exc}", file=sys.stderr)
        return 2

    prompt_ids = [engine.encode(p, chat=not args.no_chat) for p in prompts]
    info = machine_info(engine, args)
    results = []
    per_strategy = 2 + 2 * args.repeats * len(prompts)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err) as progress:
        task = progress.add_task("benchmark", total=per_strategy * len(plan))
        for spec, params in plan:
            kwargs, note = peer_kwargs(params) if peer is not None else (None, "--no-peer")
            try:
                ours, theirs = measure(engine, peer, prompt_ids, params, kwargs, args.repeats, spec, progress, task)
            except Exception as exc:  # noqa: BLE001 - one broken strategy must not lose the others' numbers
                err.print(f"[red]{spec}: failed: {type(exc).__name__}: {exc}[/red]")
                skipped.append({"spec": spec, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            entry: dict[str, Any] = {
                "strategy": params.strategy, "spec": spec, "chain": params.resolved_strategy.chain,
                "params": dataclasses.asdict(params), "ours": summarize(ours),
            }
            if kwargs is not None:
                entry["peer_kwargs"] = {k: v for k, v in kwargs.items()}
                entry["transformers"] = summarize(theirs)
                entry["ratio_decode_tps"] = ratio(entry["ours"]["decode_tps"], entry["transformers"]["decode_tps"])
                entry["ratio_e2e_tps"] = ratio(entry["ours"]["e2e_tps"], entry["transformers"]["e2e_tps"])
            else:
                entry["peer_note"] = note
            results.append(entry)
            if not err.is_terminal:  # no live bar in a log file: one line per strategy instead
                err.print(f"{spec}: ours {entry['ours']['e2e_tps']:.1f} tok/s end to end"
                          + (f", transformers {entry['transformers']['e2e_tps']:.1f}" if kwargs is not None else ""))

    report = {
        "machine": info,
        "settings": {"tokens": args.tokens, "repeats": args.repeats, "prompts": len(prompts),
                     "prompt_tokens": [len(ids) for ids in prompt_ids], "chat": not args.no_chat,
                     "ignore_eos": True, "warmup": "one run per strategy and side, not counted",
                     "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])},
        "prompts": prompts,
        "results": results,
        "skipped": skipped,
    }
    paths = write_outputs(report, Path(args.out))
    print(markdown_table(report))
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    for item in skipped:
        print(f"skipped {item['spec']}: {item['reason']}", file=sys.stderr)
    return 1 if skipped and args.strategies else 0


if __name__ == "__main__":
    sys.exit(main())
