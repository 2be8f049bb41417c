"""What prompt-lookup drafting could gain on the default model, from counts: the greedy
answers of benchmarks/speculate.py's task set are generated once without speculation, then
replayed through drafting policies (which tokens each step would draft, how many the
answer would have accepted) at a given cost of one more row in a forward, as a fraction of
a one-row step. Greedy answers do not depend on speculation, so the replay is exact about
counts; the time per step is the model ``1 + row_cost * drafted rows``.

    PYTHONPATH=. .venv/bin/python benchmarks/speculate_replay.py [--tokens 96] [--row-costs 0,0.12,0.2]

Policies: ``cost-aware`` (tokenflow's: ``NgramDrafter.propose``), ``schedule`` (transformers'
+2/-1 heuristic), ``whole`` (every match verified ``k`` tokens: the upper bound of what
drafts can supply), each with the first (transformers) or the latest earlier match, over
``k`` in 4, 8, 16 and ``min_n`` in 1, 2. Also the int4 matmuls of one layer at 1..16 rows
on one thread (``--matmuls``): what one more row costs in compute. Writes
benchmarks/results/speculate_replay.json."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speculate import prompts  # noqa: E402

from decoding import SamplingParams  # noqa: E402
from decoding.speculative import Speculation  # noqa: E402
from generator import Engine  # noqa: E402
from generator.kernels.build import cpu  # noqa: E402
from generator.speculate import NgramDrafter  # noqa: E402


class _LastWins(dict):
    """An n-gram index whose ``setdefault`` keeps the latest position, not the first."""

    def setdefault(self, key, value):
        self[key] = value
        return value


class Latest(NgramDrafter):
    """Drafts from the latest earlier occurrence of the suffix n-gram instead of the first
    (``NgramDrafter.extend`` indexes with ``setdefault``)."""

    def __init__(self, spec: Speculation):
        super().__init__(spec)
        self.index = _LastWins()


def make(base: type, policy: str, spec: Speculation):
    d = base(spec)
    if policy == "cost-aware":
        return d, lambda limit, cost: d.propose(limit, cost), d.observe
    d.size = spec.k  # the schedule's draft length: +2 after a draft accepted whole, -1 after a rejection

    def schedule(accepted: int, drafted: int) -> None:
        d.size = min(d.k, d.size + 2) if accepted == drafted else max(1, d.size - 1)

    if policy == "schedule":
        return d, lambda limit, cost: d.draft(min(d.size, limit)), schedule
    return d, lambda limit, cost: d.draft(limit), lambda accepted, drafted: None  # whole


def replay(prompt: list[int], answer: list[int], tokens: int, row_cost: float, base, policy, spec) -> tuple:
    """(tokens after the first, steps' cost, drafted, accepted) for one answer."""
    answer = answer[:tokens]
    d, propose, observe = make(base, policy, spec)
    done, cost, drafted, accepted = 1, 0.0, 0, 0  # the first token comes from the prefill
    while done < len(answer):
        d.extend(prompt + answer[:done])
        draft = propose(tokens - done - 1, row_cost)
        ok = 0
        while ok < len(draft) and done + ok < len(answer) and answer[done + ok] == draft[ok]:
            ok += 1
        if draft:
            observe(ok, len(draft))
        cost += 1 + row_cost * len(draft)
        drafted += len(draft)
        accepted += ok
        done += ok + 1
    return len(answer) - 1, cost, drafted, accepted


def matmul_rows(engine, rows=(1, 2, 4, 8, 16), reps: int = 60) -> dict:
    """The four int4 projections of one layer at ``rows`` rows, one thread, least of ``reps``
    interleaved timings (the weights stay in cache: compute, not memory), in ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    layer = engine.runner.model.layers[0]
    names = ("qkv", "o", "gate_up", "down")
    xs = {m: [torch.randn(m, getattr(layer, n).in_features).bfloat16() for n in names] for m in rows}
    best = dict.fromkeys(rows, float("inf"))
    with torch.inference_mode():
        for _ in range(reps):
            for m in rows:
                t = time.perf_counter()
                for n, x in zip(names, xs[m]):
                    getattr(layer, n)(x)
                best[m] = min(best[m], time.perf_counter() - t)
    torch.set_num_threads(threads)
    macs = sum(getattr(layer, n).in_features * getattr(layer, n).out_features for n in names)
    return {"ms": {m: round(v * 1e3, 4) for m, v in best.items()}, "macs_per_row": macs,
            "extra_row_ms": round((best[max(rows)] - best[min(rows)]) / (max(rows) - min(rows)) * 1e3, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--row-costs", default="0,0.12,0.2")
    ap.add_argument("--matmuls", action="store_true", help="also time one layer's int4 matmuls by rows")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speculate_replay.json"))
    args = ap.parse_args()
    engine = Engine.load(prefix_cache_mb=0)
    grounded, stories = prompts()
    sets = {"grounded": grounded, "stories": stories}
    answers = {}
    for key, items in sets.items():
        for name, text in items:
            ids = engine.encode(text, chat=True)
            out = [ev.token_id for ev in engine.stream(text, SamplingParams(max_new_tokens=args.tokens,
                                                                          speculative="off"), chat=True)]
            answers[name] = (ids, out)
        print(f"{key}: {len(items)} greedy answers", flush=True)
    result = {"cpu": cpu(), "tier": engine.config.kernels, "tokens": args.tokens, "policies": []}
    for row_cost in (float(c) for c in args.row_costs.split(",")):
        for (match, base), policy, k, min_n in itertools.product((("first", NgramDrafter), ("latest", Latest)),
                                                                 ("cost-aware", "schedule", "whole"), (4, 8, 16),
                                                                 (1, 2)):
            spec = Speculation("ngram", k, 3, min_n)
            entry = {"row_cost": row_cost, "match": match, "policy": policy, "k": k, "n": 3, "min_n": min_n}
            for key, items in sets.items():
                got = [replay(*answers[name], args.tokens, row_cost, base, policy, spec) for name, _ in items]
                tok = sum(g[0] for g in got)
                entry[key] = {"speedup": round(tok / sum(g[1] for g in got), 3),
                              "worst": round(min(g[0] / g[1] for g in got), 3),
                              "accepted_share": round(sum(g[3] for g in got) / tok, 3),
                              "drafted": sum(g[2] for g in got)}
            result["policies"].append(entry)
        best = max((p for p in result["policies"] if p["row_cost"] == row_cost), key=lambda p: p["grounded"]["speedup"])
        ours = next(p for p in result["policies"] if p["row_cost"] == row_cost and p["match"] == "first"
                    and p["policy"] == "cost-aware" and p["k"] == 4 and p["min_n"] == 2)
        print(f"row cost {row_cost}: tokenflow's default (cost-aware, k=4, min_n=2) grounded x{ours['grounded']['speedup']}"
              f" stories x{ours['stories']['speedup']}; best replayed {best['policy']}/{best['match']} k={best['k']} "
              f"min_n={best['min_n']} grounded x{best['grounded']['speedup']}", flush=True)
    result["most_tokens_any_draft_supplies"] = max(p["grounded"]["accepted_share"] for p in result["policies"])
    print("share of grounded tokens the most generous drafting accepts:", result["most_tokens_any_draft_supplies"])
    if args.matmuls:
        result["matmuls_one_layer_one_thread"] = matmul_rows(engine)
        print("one layer's int4 matmuls by rows (ms, one thread):", result["matmuls_one_layer_one_thread"])
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
