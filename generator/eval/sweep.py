"""A sweep: every (prompt, strategy, seed) cell, run through the engine's
``BatchGenerator``, one JSON row per cell.

    cells = plan_cells(prompts, specs, labels, seeds)     # deterministic order, stable keys
    for chunk in chunked(cells, size):                      # the unit a worker runs
        for row in run_cells(engine, chunk, prompts):       # each row as its cell finishes
            ...

A chunk's cells share one batch: up to the engine's free KV-cache slots run at
once, the next cell joining as one finishes, in the chunk's order; so the same
chunk gives the same rows (tokens, logprobs) in this process or on a Ray actor.
A deterministic strategy (greedy, beam) runs once per prompt (its seed is
``None``): seeds would repeat the same text. Rows hold the tokens, text, per-token
logprobs, finish reason, timings (``timing.stream_timing``), per-cell metrics
(``text``, ``likelihood``), the resolved engine config and ``engine_fingerprint``.
Aggregating rows is ``sweep_summary``; storing them ``rows``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from decoding import SamplingParams

from ..fingerprint import engine_fingerprint, with_chain
from .likelihood import mean_logprob, perplexity
from .text import distinct_n, repetition_rate
from .timing import stream_timing


@dataclass(frozen=True)
class Cell:
    """One generation of a sweep: strategy ``spec`` (index into the specs) on prompt
    ``prompt`` with ``seed`` (``None`` for a deterministic strategy)."""

    prompt: int
    spec: int
    label: str
    seed: int | None
    params: SamplingParams

    @property
    def key(self) -> str:
        """Stable across runs of the same sweep: what resuming matches rows on."""
        return f"p{self.prompt}|{self.label}|s{'-' if self.seed is None else self.seed}"


def is_sampling(params: SamplingParams) -> bool:
    """True when the strategy draws at random (so different seeds give different texts)."""
    return not params.is_greedy and params.resolved_strategy.selector.samples


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"1,5,9"``; ``"3"``; mixed ``"0-2,7"``. ValueError if bad."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        if dash:
            a, b = int(lo), int(hi)
            if b < a:
                raise ValueError(f"range {part!r} runs backwards")
            seeds.extend(range(a, b + 1))
        else:
            seeds.append(int(part))
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"expected seeds like 0-4 or 1,5,9 (>= 0), got {text!r}")
    return list(dict.fromkeys(seeds))


def plan_cells(n_prompts: int, specs: Sequence[SamplingParams], labels: Sequence[str],
               seeds: Sequence[int]) -> list[Cell]:
    """Every cell, prompt-major: each prompt x each strategy x its seeds (one for a
    deterministic strategy)."""
    cells = []
    for pi in range(n_prompts):
        for si, (params, label) in enumerate(zip(specs, labels)):
            for seed in (seeds if is_sampling(params) else [None]):
                cells.append(Cell(pi, si, label, seed, params if seed is None else params.replace(seed=seed)))
    return cells


def chunked(cells: Sequence[Cell], size: int) -> list[list[Cell]]:
    """The cells in runs of ``size``: what one worker call takes."""
    return [list(cells[i:i + size]) for i in range(0, len(cells), size)]


def run_cells(engine, cells: Sequence[Cell], prompts: Sequence[str], *, chat: bool = False,
              worker: str | None = None, clock=time.perf_counter) -> Iterator[dict[str, Any]]:
    """Run ``cells`` as rows of one ``BatchGenerator`` (as many at once as the KV-cache
    slots hold, in order) and yield each cell's row the moment its last token exists."""
    batch = engine.batch()
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    fingerprint = engine_fingerprint(engine)
    config = engine.config.as_dict()
    queue = list(cells)
    live: dict[int, dict[str, Any]] = {}  # handle -> what the cell has so far
    try:
        while queue or live:
            while queue and batch.slots_needed(queue[0].params) <= engine.free_slots:
                cell = queue.pop(0)
                got = {"cell": cell, "prompt_tokens": 0, "start": clock(), "events": [], "stamps": []}
                try:
                    ids = engine.encode(prompts[cell.prompt], chat)
                    got["prompt_tokens"] = len(ids)
                    handle = batch.add(ids, cell.params)
                except Exception as exc:  # noqa: BLE001 - a prompt too long for the context, say: this cell only
                    yield make_row(got, prompts[cell.prompt], fingerprint, config, worker,
                                   error=f"{type(exc).__name__}: {exc}")
                    continue
                live[handle] = got
            if not live and not queue:
                break
            if not live:  # a cell that needs more slots than the engine has
                cell = queue[0]
                raise ValueError(f"{cell.label} needs {batch.slots_needed(cell.params)} KV-cache slots; "
                                 f"the engine has {engine.free_slots} (raise num_slots)")
            for handle, ev in batch.step():
                now = clock()
                got = live[handle]
                if isinstance(ev, Exception):  # this cell's own failure: the others go on
                    del live[handle]
                    yield make_row(got, prompts[got["cell"].prompt], fingerprint, config, worker,
                                   error=f"{type(ev).__name__}: {ev}")
                    continue
                got["events"].append(ev)
                got["stamps"].append(now)
                if ev.finish_reason is not None:
                    del live[handle]
                    yield make_row(got, prompts[got["cell"].prompt], fingerprint, config, worker)
    finally:
        for handle in live:
            batch.cancel(handle)


def make_row(got: dict[str, Any], prompt: str | None, fingerprint: str, config: dict[str, Any],
             worker: str, error: str | None = None) -> dict[str, Any]:
    """One cell's row: what it produced, what it cost, what it scores, what produced it."""
    cell: Cell = got["cell"]
    events = got["events"]
    ids = [e.token_id for e in events]
    lps = [e.logprob for e in events]
    params = cell.params
    chain = params.resolved_strategy.chain
    return {
        "key": cell.key,
        "prompt_index": cell.prompt,
        "prompt": prompt,
        "spec": cell.label,
        "spec_index": cell.spec,
        "strategy": params.strategy,
        "chain": chain,
        "seed": cell.seed,
        "params": dataclasses.asdict(params),
        "prompt_tokens": got["prompt_tokens"],
        "token_ids": ids,
        "text": "".join(e.text for e in events),
        "logprobs": lps,
        "finish_reason": events[-1].finish_reason if events else None,
        "error": error,
        "timing": stream_timing(got["start"], got["stamps"], got["prompt_tokens"]),
        "metrics": {
            "tokens": len(ids),
            "mean_logprob": mean_logprob(lps),
            "perplexity": perplexity(lps),
            "distinct_1": distinct_n([ids], 1),
            "distinct_2": distinct_n([ids], 2),
            "repetition_rate": repetition_rate(ids, 4),
        },
        "engine": config,
        "fingerprint": with_chain(fingerprint, chain),
        "engine_fingerprint": fingerprint,
        "worker": worker,
    }

