"""``tokenflow sweep PROMPTS.jsonl --strategy ... --seeds 0-4 --out results/``: every
(prompt, strategy, seed) cell, one JSON row each in ``results/rows.jsonl``, then a
summary per strategy (``summary.json``, a table, ``summary.png``).

In this process by default; ``--ray`` starts a local Ray and ``--ray ADDRESS`` joins a
cluster, fanning the cells out to actors (``eval/sweep_ray.py``). Both run the same
chunks of cells through ``eval.sweep.run_cells``, so they write the same rows. A second
run with the same ``--out`` skips the cells already there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..eval.sweep import chunked, parse_seeds, plan_cells
from .common import (CLIError, add_model_flags, engine_options, load_engine, parse_engine_args,
                     parse_strategy_spec)


def read_sweep_prompts(path: str, strict: bool = False) -> tuple[list[str], list[str]]:
    """Prompts from JSON Lines (``{"prompt": "..."}`` or a JSON string a line) and one
    warning per malformed line, naming its number; ``strict``: the first one is a ``CLIError``."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    prompts, warnings = [], []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt = obj.get("prompt") if isinstance(obj, dict) else obj
            if not isinstance(prompt, str) or not prompt:
                raise ValueError('expected {"prompt": "..."} or a JSON string')
        except ValueError as exc:  # JSONDecodeError is a ValueError
            problem = f"{path}:{no}: " + (f"not JSON ({exc.msg})" if isinstance(exc, json.JSONDecodeError) else str(exc))
            if strict:
                raise CLIError(problem + " (--strict)") from None
            warnings.append(problem + "; line skipped")
            continue
        prompts.append(prompt)
    if not prompts:
        raise CLIError(f"{path} has no prompts")
    return prompts, warnings


def add_commands(sub) -> None:
    """Add ``tokenflow sweep`` to the CLI."""
    sw = sub.add_parser(
        "sweep", help="run strategies x prompts x seeds, score every cell, summarize (in process or on Ray)",
        description="Run every --strategy on every prompt of PROMPTS.jsonl with every seed of --seeds "
                    "(deterministic strategies once), write one JSON row per cell to OUT/rows.jsonl, then a "
                    "table of each metric's mean and 95%% confidence interval per strategy, OUT/summary.json "
                    "and OUT/summary.png. Rerun with the same --out to finish an interrupted sweep.")
    sw.add_argument("prompts", metavar="PROMPTS.jsonl", help='prompts, one a line: {"prompt": "..."}')
    sw.add_argument("--strategy", dest="specs", action="append", metavar="SPEC",
                    help='repeatable: NAME or "NAME:key=value,..." (as in `tokenflow compare`)')
    sw.add_argument("--seeds", default="0", help="seeds of sampling strategies: 0-4, 1,5,9 or 0-2,7 (default 0)")
    sw.add_argument("--out", default="results", help="folder of rows.jsonl, summary.json, summary.png (results)")
    sw.add_argument("--max-new-tokens", type=int, default=64, help="tokens per cell unless a spec says (64)")
    sw.add_argument("--ignore-eos", action="store_true", help="every cell runs to --max-new-tokens")
    sw.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    sw.add_argument("--strict", action="store_true", help="stop at a malformed prompt line instead of skipping it")
    sw.add_argument("--chunk", type=int, default=None,
                    help="cells a worker takes at a time, run as one batch (default: the engine's --num-slots)")
    sw.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="fan the cells out to Ray actors: a local Ray started here, or the cluster at ADDRESS "
                         "(HOST:PORT, ray://HOST:PORT, auto); needs pip install 'tokenflow[ray]'")
    sw.add_argument("--ray-workers", type=int, default=None, help="actors, each with its own engine "
                    "(default: the cluster's CPUs / --ray-cpus)")
    sw.add_argument("--ray-cpus", type=int, default=1, help="CPUs (torch threads) per actor (1)")
    sw.add_argument("--threads", type=int, default=None,
                    help="torch threads of the in-process engine (default: torch's; 1 is often faster on a "
                         "busy machine)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.add_argument("--no-plots", action="store_true", help="no summary.png")
    sw.add_argument("-v", "--verbose", action="store_true", help="say each stage of loading the model")
    sw.add_argument("--engine-arg", action="append", metavar="KEY=VALUE", help="extra Engine.load option")
    add_model_flags(sw)
    sw.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Check everything, run the cells not yet in ``--out``, write the summary."""
    if not args.specs:
        raise CLIError("give at least one --strategy")
    if len(set(args.specs)) != len(args.specs):
        raise CLIError("a --strategy is given twice")
    for name in ("chunk", "ray_workers", "ray_cpus", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        raise CLIError(f"--seeds: {exc}") from None
    defaults = {"max_new_tokens": args.max_new_tokens, "ignore_eos": True if args.ignore_eos else None}
    specs = [parse_strategy_spec(s, **defaults) for s in args.specs]  # an unknown strategy: one line, no cell run
    slots = engine_options(args, parse_engine_args(args.engine_arg))["num_slots"]
    for spec, p in zip(args.specs, specs):
        if p.resolved_strategy.selector.is_beam and p.num_beams > slots:
            raise CLIError(f"{spec}: {p.num_beams} beams need as many KV-cache slots; the engine has {slots} "
                           f"(--engine-arg num_slots={p.num_beams})")
    prompts, warnings = read_sweep_prompts(args.prompts, args.strict)
    for w in warnings:
        print(f"tokenflow: warning: {w}", file=sys.stderr)
    options = engine_options(args, parse_engine_args(args.engine_arg))
    cells = plan_cells(len(prompts), specs, args.specs, seeds)
    chunks = chunked(cells, args.chunk or options["num_slots"])
    rows = run_sweep(args, options, prompts, chunks)
    if rows is None:
        return 130
    finish(args, rows, cells, prompts)
    return 0


def run_sweep(args, options: dict[str, Any], prompts: list[str], chunks) -> list[dict] | None:
    """Run the chunks' cells not in ``--out`` yet (here or on Ray); every row of the sweep,
    or ``None`` when interrupted (the finished rows are on disk)."""
    from ..eval.rows import RowStore
    from ..eval.sweep import run_cells

    fan = None
    if args.ray:
        from ..eval import sweep_ray

        try:
            sweep_ray.connect(None if args.ray == "local" else args.ray)
            fan = sweep_ray.RayFanOut(options, prompts, workers=args.ray_workers, cpus=args.ray_cpus,
                                      chat=args.chat)
        except sweep_ray.RayError as exc:
            raise CLIError(str(exc)) from None
        fingerprint = fan.fingerprint
    else:
        if args.threads:
            import os

            # Before torch loads: OpenMP reads it once (our kernels' pool too); what Ray sets in its actors.
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
            import torch

            torch.set_num_threads(args.threads)
        engine = load_engine(options, verbose=args.verbose)
        from ..fingerprint import engine_fingerprint

        fingerprint = engine_fingerprint(engine)
    with RowStore(args.out) as store:
        try:
            store.check_engine(fingerprint)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        todo = [[c for c in chunk if c.key not in store.done] for chunk in chunks]
        todo = [c for c in todo if c]
        total = sum(len(c) for c in chunks)
        done = total - sum(len(c) for c in todo)
        if store.dropped:
            print(f"tokenflow: {store.dropped} cut row(s) in {store.path} dropped; their cells run again",
                  file=sys.stderr)
        if done:
            print(f"tokenflow: resuming: {done}/{total} cells already in {store.path}", file=sys.stderr)
        rows = fan.rows(todo) if fan is not None else (
            row for chunk in todo for row in run_cells(engine, chunk, prompts, chat=args.chat))
        import time

        started, ran = time.perf_counter(), 0
        try:
            with _progress(total, done, args.no_progress) as advance:
                for row in rows:
                    store.append(row)
                    advance(row)
                    ran += 1
        except KeyboardInterrupt:
            print(f"tokenflow: interrupted: {len(store.done)}/{total} cells in {store.path}; run the same "
                  "command again to finish", file=sys.stderr)
            return None
        except RuntimeError as exc:
            from ..eval.sweep_ray import RayError  # only a Ray run raises it; no Ray import here

            if fan is not None and isinstance(exc, RayError):
                raise CLIError(str(exc)) from None
            raise
        finally:
            if fan is not None:
                fan.close()
        if ran:
            took = time.perf_counter() - started
            print(f"tokenflow: ran {ran} cells in {took:.1f} s ({ran / took:.2f} cells/s, the model(s) already "
                  f"loaded){f' on {len(fan.fingerprints)} Ray workers' if fan is not None else ''}", file=sys.stderr)
        return list(store.done.values()) + list(store.failed.values())


class _progress:
    """A rich progress bar (cells done / total, rate, ETA) on stderr; silent if ``off``."""

    def __init__(self, total: int, done: int, off: bool):
        self.total, self.done, self.off = total, done, off
        self.bar = None

    def __enter__(self):
        if self.off:
            return lambda row: None
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("cells"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}"),
                            console=Console(stderr=True))
        task = self.bar.add_task("", total=self.total, completed=self.done)
        self.bar.start()

        def advance(row):
            self.bar.update(task, advance=1, description=row["key"] + (" (failed)" if row.get("error") else ""))
        return advance

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def finish(args, rows: list[dict], cells, prompts) -> None:
    """``summary.json``, the table on stdout, ``summary.png``."""
    from rich.console import Console

    from ..eval.rows import jsonable
    from ..eval.sweep_summary import plot, summarize, table

    keys = {c.key for c in cells}
    rows = [r for r in rows if r["key"] in keys]  # rows of cells no longer asked for stay on disk, unused
    summary = summarize(rows, args.specs)
    out = Path(args.out)
    failed = [r["key"] for r in rows if r.get("error")]
    (out / "summary.json").write_text(json.dumps(jsonable({
        "prompts": prompts, "strategies": args.specs, "seeds": args.seeds, "cells": len(cells),
        "rows": len(rows), "fingerprint": rows[0]["engine_fingerprint"] if rows else None,
        "engine": rows[0]["engine"] if rows else None, "summary": summary}), indent=1), encoding="utf-8")
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table(summary))
    if not args.no_plots and rows:
        for p in plot(summary, out):
            print(f"wrote {p}", file=sys.stderr)
    print(f"wrote {out / 'rows.jsonl'} ({len(rows)}/{len(cells)} cells) and {out / 'summary.json'}"
          + (f"; {len(failed)} failed: {', '.join(failed[:5])}" if failed else ""), file=sys.stderr)
