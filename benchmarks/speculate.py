"""Prompt-lookup speculation on the default model: greedy tokens/s with and without, and
token agreement, over input-grounded tasks (summarize / rewrite / extract / copy out over
passages of 300-600 tokens, benchmarks/data/speculate_passages.json) and free-form stories
(where drafts rarely match: what speculation costs there).

    python benchmarks/speculate.py [--tokens 128] [--spec ngram:k=4,n=3,min_n=2] [--limit N]

Each prompt runs without and with speculation back to back (the same engine, one
request at a time). Decode tokens/s counts the tokens after the first over the time
after the first (the prefill is the same work either way); end-to-end adds it. JSON in
benchmarks/results/speculate.json with the CPU (generator.kernels.build.cpu())."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decoding import SamplingParams  # noqa: E402
from generator import Engine  # noqa: E402
from generator.kernels.build import cpu  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "speculate_passages.json"


def prompts() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    data = json.loads(DATA.read_text())
    grounded = [(f"{name}/{i}", f"{passage}\n\n{task}") for name, passage in data["passages"].items()
                for i, task in enumerate(data["tasks"])]
    stories = [(f"story/{i}", s) for i, s in enumerate(data["stories"])]
    return grounded, stories


def run(engine, text: str, params: SamplingParams) -> dict:
    t0 = time.perf_counter()
    first = None
    ids = []
    for ev in engine.stream(text, params, chat=True):
        if first is None:
            first = time.perf_counter()
        ids.append(ev.token_id)
    end = time.perf_counter()
    return {"ids": ids, "total_s": end - t0, "decode_s": end - first}


def measure(engine, items, tokens: int, spec: str, rows: list | None = None, save=lambda: None,
            repeats: int = 1) -> dict:
    rows = [] if rows is None else rows
    for name, text in items:
        base = SamplingParams(max_new_tokens=tokens)
        c = engine.spec_counts
        d0, a0 = c.drafted, c.accepted
        runs = {"off": [], "on": []}
        for rep in range(repeats):  # alternated, the order flipped each time: the host drifts
            for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                runs[mode].append(run(engine, text, base.replace(speculative="off" if mode == "off" else spec)))
        d1 = c.drafted - d0
        off, on = (min(runs[m], key=lambda r: r["decode_s"]) for m in ("off", "on"))
        same = sum(a == b for a, b in zip(off["ids"], on["ids"]))
        n = len(off["ids"])
        rows.append({
            "prompt": name, "prompt_tokens": len(engine.encode(text, chat=True)), "tokens": n,
            "agreement": same / max(n, len(on["ids"])), "identical": off["ids"] == on["ids"],
            "decode_tps_off": (n - 1) / off["decode_s"], "decode_tps_on": (len(on["ids"]) - 1) / on["decode_s"],
            "total_s_off": off["total_s"], "total_s_on": on["total_s"],
            "drafted": d1 // repeats, "accepted": (c.accepted - a0) // repeats,
        })
        r = rows[-1]
        print(f"{name:10s} {n:4d} tok  off {r['decode_tps_off']:6.1f} tok/s  on {r['decode_tps_on']:6.1f} tok/s  "
              f"x{r['decode_tps_on'] / r['decode_tps_off']:.2f}  accepted {r['accepted']}/{r['drafted']}  "
              f"agreement {r['agreement']:.3f}", flush=True)
        save()
    return summarize(rows)


def summarize(rows: list) -> dict:
    tok = sum(r["tokens"] for r in rows)
    dec_off = sum((r["tokens"] - 1) / r["decode_tps_off"] for r in rows)
    dec_on = sum((r["tokens"] - 1) / r["decode_tps_on"] for r in rows)
    summary = {
        "prompts": len(rows), "tokens": tok,
        "decode_tps_off": (tok - len(rows)) / dec_off, "decode_tps_on": (tok - len(rows)) / dec_on,
        "speedup_decode": dec_off / dec_on,
        "speedup_total": sum(r["total_s_off"] for r in rows) / sum(r["total_s_on"] for r in rows),
        "speedup_median": statistics.median(r["decode_tps_on"] / r["decode_tps_off"] for r in rows),
        "speedup_min": min(r["decode_tps_on"] / r["decode_tps_off"] for r in rows),
        "agreement": sum(r["agreement"] * r["tokens"] for r in rows) / tok,
        "identical": sum(r["identical"] for r in rows),
        "acceptance": sum(r["accepted"] for r in rows) / max(1, sum(r["drafted"] for r in rows)),
    }
    return {"summary": summary, "rows": rows}


def row_cost(engine, rows=(1, 2, 3, 5), reps: int = 30) -> dict:
    """The verify forward's cost by its rows of one slot: the least of ``reps`` interleaved
    timings of each (the least is the least disturbed by a busy machine), in ms."""
    runner = engine.runner
    slot = runner.acquire(1)[0]
    try:
        runner.prefill(slot, list(range(100, 500)))
        best = {n: float("inf") for n in rows}
        for _ in range(reps):
            for n in rows:
                t = time.perf_counter()
                runner.forward_rows([slot] * n, list(range(400, 400 + n)), [5] * n, list(range(n)))
                best[n] = min(best[n], time.perf_counter() - t)
    finally:
        runner.release([slot])
    return {n: 1000 * v for n, v in best.items()}


def add_model(out: dict, cost: dict | None, fraction: float | None = None) -> None:
    """Speedups from counts rather than clocks: a token a step without speculation; with it,
    a step per token not accepted, each verified draft token adding one row at the measured
    marginal row cost (``cost``: ms by rows) or at ``fraction`` of a one-row step. Robust to
    a busy machine's drift between the two timed runs."""
    per_row = fraction if cost is None else (cost[max(cost)] - cost[1]) / (max(cost) - 1) / cost[1]
    if cost is not None:
        out["row_cost_ms"] = cost
    out["extra_row_fraction"] = per_row
    for key in ("grounded", "stories"):
        if key not in out:
            continue
        rows = out[key]["rows"]
        for r in rows:
            r["modeled_speedup"] = r["tokens"] / (r["tokens"] - r["accepted"] + per_row * r["drafted"])
        tok = sum(r["tokens"] for r in rows)
        acc = sum(r["accepted"] for r in rows)
        dr = sum(r["drafted"] for r in rows)
        out[key]["summary"]["forwards_saved"] = acc / tok
        out[key]["summary"]["modeled_speedup"] = tok / (tok - acc + per_row * dr)
        out[key]["summary"]["modeled_speedup_min"] = min(r["modeled_speedup"] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--spec", default="ngram:k=4,n=3,min_n=2")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts of each set")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs off and on per prompt, alternated; the fastest of each is kept (2)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speculate.json"))
    ap.add_argument("--model-only", action="store_true",
                    help="measure the verify forward's cost by rows and add the count-based speedups to --out")
    ap.add_argument("--rows", default="1,2,3,5", help="--model-only: the verify forward's row counts timed")
    ap.add_argument("--row-cost", type=float, default=None,
                    help="--model-only: an extra row as this fraction of a one-row step instead of timing it")
    args = ap.parse_args()
    # No prefix cache: the second run of a prompt would skip its prefill (end-to-end figures
    # compare the same prefill work); the decode figures do not depend on it.
    engine = Engine.load(prefix_cache_mb=0)
    if args.model_only:
        out = json.loads(Path(args.out).read_text())
        cost = None if args.row_cost is not None else row_cost(engine, tuple(map(int, args.rows.split(","))))
        add_model(out, cost, args.row_cost)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps({k: out[k]["summary"] for k in ("grounded", "stories") if k in out}, indent=1))
        print("row cost (ms):", cost, "extra row:", round(out["extra_row_fraction"], 3), "of a one-row step")
        return
    grounded, stories = prompts()
    if args.limit:
        grounded, stories = grounded[: args.limit], stories[: args.limit]
    run(engine, "Hello", SamplingParams(max_new_tokens=8))  # warm-up
    out = {"cpu": cpu(), "engine": engine.config.as_dict(), "spec": args.spec, "tokens": args.tokens,
           "note": f"greedy, one request at a time, off and on alternated {args.repeats}x per prompt "
                    "(fastest of each), no prefix cache"}
    partial = {"grounded": [], "stories": []}

    def save():  # after every prompt: a long run on a busy machine leaves what it measured
        Path(args.out).write_text(json.dumps({**out, **{k: summarize(v) for k, v in partial.items() if v}},
                                             indent=1))

    # Interleaved (a grounded prompt, then a story, every task and passage early): a run cut
    # short on a busy machine still covers both sets.
    grounded = sorted(grounded, key=lambda item: (int(item[0].rsplit("/", 1)[1]) + list(dict.fromkeys(
        g[0].split("/")[0] for g in grounded)).index(item[0].split("/")[0])) % 4)
    order = [("grounded", g) for g in grounded]
    for i, st in enumerate(stories):
        order.insert(min(len(order), 2 * i + 1), ("stories", st))
    for key, item in order:
        measure(engine, [item], args.tokens, args.spec, partial[key], save, args.repeats)
    for key in partial:
        out[key] = summarize(partial[key])
    step_cost = getattr(engine, "step_cost", None)  # the engine's own fit over the speculating runs' forwards
    fit = step_cost.fit() if step_cost is not None else None
    out["step_cost"] = {"fixed_ms": round(fit[0] * 1e3, 3), "per_row_ms": round(fit[1] * 1e3, 3),
                        "extra_row_fraction": round(step_cost.row_cost(1), 3)} if fit else None
    for key in ("grounded", "stories"):
        s = out[key]["summary"]
        print(f"{key}: decode {s['decode_tps_off']:.1f} -> {s['decode_tps_on']:.1f} tok/s "
              f"(x{s['speedup_decode']:.2f}, end-to-end x{s['speedup_total']:.2f}, worst prompt "
              f"x{s['speedup_min']:.2f}), agreement {s['agreement']:.4f}, acceptance {s['acceptance']:.2f}")
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
