"""What the prefix cache buys and costs on the default model (one process, cache off and
on over the same engine). Writes benchmarks/results/prefix_cache.json.

    PYTHONPATH=. .venv/bin/python benchmarks/prefix_cache.py [--turns 6] [--answer 48] [--load 200]

- chat: a conversation of ``--turns`` turns (a system prompt, a user message a turn, the
  model's greedy answer kept in the history); TTFT of each turn with the cache off and on,
  and the answers of both runs compared (they must be the same text).
- compare: four columns of one prompt (four strategies), as the page sends them: arriving
  together (one admission) and one after another (each after the previous one's first
  token); prompt tokens actually prefilled and the time to every column's first token.
- load: ``--load`` distinct prompts (no two share even their first token) through one batch, cache off
  and on: total time (what the cache costs when it never hits), process RSS before and
  after, and the cache's bytes against its budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import psutil
import torch

from decoding import SamplingParams
from generator import Engine
from generator.kernels.build import cpu
from generator.prefix_cache import PrefixCache

SYSTEM = ("You are a friendly travel assistant. You answer questions about places, food, trains and "
          "museums in short, concrete sentences, you name real places, and you say so when you are not sure.")
TURNS = ["I am planning three days in Lisbon in May. Where should I stay?",
         "What should I eat on the first evening?",
         "Is the tram 28 worth it, or is it only for tourists?",
         "Which museum would you pick for a rainy afternoon?",
         "How do I get to Sintra and back in one day?",
         "Summarize the plan for the three days in a few lines."]
COLUMNS = [SamplingParams(strategy="greedy"), SamplingParams(strategy="top_p", top_p=0.9, seed=1),
           SamplingParams(strategy="min_p", min_p=0.1, seed=2), SamplingParams(strategy="top_k", top_k=40, seed=3)]
WORDS = ("river mountain lamp violin harbor glacier orchard comet lantern meadow falcon quartz canyon "
         "ember willow saffron tundra beacon marble cedar").split()


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


class Counting:
    """Counts the prompt tokens the runner is asked to prefill (wraps ``prefill_many``)."""

    def __init__(self, runner):
        self.runner, self.tokens = runner, 0
        self._inner = runner.prefill_many
        runner.prefill_many = self

    def __call__(self, slots, id_lists, starts):
        self.tokens += sum(len(ids) for ids in id_lists)
        return self._inner(slots, id_lists, starts)


def use_cache(engine: Engine, mb: int) -> PrefixCache:
    """A fresh cache of ``mb`` MB on ``engine`` (0: off)."""
    engine.prefix_cache = PrefixCache(engine.runner, mb, None if mb else "off in this run")
    return engine.prefix_cache


def chat(engine: Engine, answer_tokens: int, turns: int, system: str) -> list[dict]:
    messages = [{"role": "system", "content": system}]
    out = []
    for turn in TURNS[:turns]:
        messages.append({"role": "user", "content": turn})
        ids = engine.encode(messages, chat=True)
        before = engine.prefix_cache.cached_tokens
        t0, c0 = time.perf_counter(), time.process_time()
        stream = engine.stream(ids, SamplingParams(strategy="greedy", max_new_tokens=answer_tokens))
        first = next(stream)
        ttft, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        text = first.text + "".join(ev.text for ev in stream)
        messages.append({"role": "assistant", "content": text})
        out.append({"prompt_tokens": len(ids), "cached_tokens": engine.prefix_cache.cached_tokens - before,
                    "ttft_ms": round(ttft * 1000, 1), "ttft_cpu_ms": round(cpu_s * 1000, 1), "answer": text})
    return out


def compare(engine: Engine, counter: Counting, together: bool, system: str) -> dict:
    ids = engine.encode([{"role": "system", "content": system}, {"role": "user", "content": TURNS[0]}], chat=True)
    batch = engine.batch()
    counter.tokens = 0
    t0, c0 = time.perf_counter(), time.process_time()
    firsts: dict[int, float] = {}
    cpu_firsts: dict[int, float] = {}
    handles = []
    for i, params in enumerate(COLUMNS):
        if together or i == 0:
            handles.append(batch.add(ids, params.replace(max_new_tokens=8)))
        if not together:  # the next column arrives once this one has its first token
            while handles[-1] not in firsts:
                for h, _ in batch.step():
                    firsts.setdefault(h, time.perf_counter() - t0)
                    cpu_firsts.setdefault(h, time.process_time() - c0)
            if i + 1 < len(COLUMNS):
                handles.append(batch.add(ids, COLUMNS[i + 1].replace(max_new_tokens=8)))
    while batch.active:
        for h, _ in batch.step():
            firsts.setdefault(h, time.perf_counter() - t0)
            cpu_firsts.setdefault(h, time.process_time() - c0)
    return {"prompt_tokens": len(ids), "columns": len(COLUMNS), "prefilled_tokens": counter.tokens,
            "all_first_tokens_ms": round(max(firsts.values()) * 1000, 1),
            "all_first_tokens_cpu_ms": round(max(cpu_firsts.values()) * 1000, 1)}


class Timed:
    """Seconds spent inside a cache's own calls (lookups, copies in and out)."""

    def __init__(self, cache: PrefixCache):
        self.seconds = 0.0
        for name in ("admit", "insert"):
            setattr(cache, name, self._wrap(getattr(cache, name)))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return timed


FIRST_TOKEN = 1000  # the load's prompts begin with tokens 1000, 1001, ... (one each)


def load(engine: Engine, n: int, mb: int, words: int) -> dict:
    cache = use_cache(engine, mb)
    timed = Timed(cache)
    prompts = [" ".join([f"Request {i}:"] + [WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(words)])
               for i in range(n)]
    # Each prompt begins with a token of its own, so that none shares even its first token
    # with another (the cache matches to the token: "Request 1" and "Request 12" would share
    # three) and every admission is a miss: what the cache costs where it never helps.
    first = max(0, min(FIRST_TOKEN, len(engine.tokenizer) - n))  # a small model's vocabulary may end sooner
    ids = [[first + i] + engine.encode(p) for i, p in enumerate(prompts)]
    params = SamplingParams(strategy="greedy", max_new_tokens=2, ignore_eos=True)
    batch = engine.batch()
    before = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    waiting = list(ids)
    while waiting or batch.active:
        while waiting and engine.runner.free_count:
            batch.add(waiting.pop(0), params)
        batch.step()
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    st = cache.status()
    return {"prompts": n, "prompt_tokens": sum(map(len, ids)), "budget_mb": mb, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_s, 2),
            "rss_before_mb": before, "rss_after_mb": rss_mb(), "cache_used_mb": round(st["used_bytes"] / 2**20, 1),
            "cache_capacity_mb": round(st["capacity_blocks"] * st["block_bytes"] / 2**20, 1),
            "evictions": st["evictions"], "hit_requests": st["hit_requests"], "cached_tokens": st["cached_tokens"],
            "seconds_in_cache_calls": round(timed.seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--quant", default="auto", help="the weights' format (auto: int4 for the default model)")
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--system", default=SYSTEM, help="the conversation's system prompt")
    ap.add_argument("--answer", type=int, default=48, help="greedy tokens an answer (48)")
    ap.add_argument("--repeats", type=int, default=2, help="conversations off and on, alternately (2)")
    ap.add_argument("--load", type=int, default=200, help="distinct prompts of the load (200)")
    ap.add_argument("--load-words", type=int, default=24, help="words a load prompt (24: about 30 tokens)")
    ap.add_argument("--load-mb", type=int, default=32, help="the cache's budget in the load (32 MB: it fills)")
    ap.add_argument("--load-repeats", type=int, default=3, help="load runs off and on, alternately (3)")
    ap.add_argument("--parts", default="chat,compare,load", help="which parts to run (chat,compare,load)")
    ap.add_argument("--out", default="benchmarks/results/prefix_cache.json")
    args = ap.parse_args()

    dtype = "auto" if args.quant == "auto" else "bfloat16"
    engine = Engine.load(args.model, device="cpu", dtype=dtype, quant=args.quant, num_slots=8, max_len=2048)
    budget = engine.config.prefix_cache_mb or 256
    print(engine.config.summary(), f"prefix cache {budget} MB:", engine.prefix_cache.reason or "on", flush=True)
    engine.generate_text("Hello", SamplingParams(strategy="greedy", max_new_tokens=4))  # warm up
    counter = Counting(engine.runner)
    result = {"machine": {"cpu": cpu()["model"], "cpu_features": cpu()["features"], "cores": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                          "torch": torch.__version__},
              "engine": engine.config.summary(), "budget_mb": budget}

    # The conversation off and on, alternately, --repeats times (each "on" with a fresh cache):
    # a turn's TTFT is its best of the repeats, which a busy machine disturbs least.
    parts = set(args.parts.split(","))
    runs: dict[str, list[list[dict]]] = {"off": [], "on": []}
    for _ in range(args.repeats if "chat" in parts else 0):
        for mode, mb in (("off", 0), ("on", budget)):
            use_cache(engine, mb)
            runs[mode].append(chat(engine, args.answer, args.turns, args.system))
            print(mode, "TTFT ms per turn:", [t["ttft_ms"] for t in runs[mode][-1]],
                  "cached:", [t["cached_tokens"] for t in runs[mode][-1]], flush=True)
    result["chat"] = []
    for i in range(args.turns if "chat" in parts else 0):
        off = min(r[i]["ttft_ms"] for r in runs["off"])
        on = min(r[i]["ttft_ms"] for r in runs["on"])
        cpu_off = min(r[i]["ttft_cpu_ms"] for r in runs["off"])
        cpu_on = min(r[i]["ttft_cpu_ms"] for r in runs["on"])
        first_off, first_on = runs["off"][0][i], runs["on"][0][i]
        result["chat"].append({
            "turn": i + 1, "prompt_tokens": first_off["prompt_tokens"], "cached_tokens": first_on["cached_tokens"],
            "prefilled_tokens_on": first_on["prompt_tokens"] - first_on["cached_tokens"],
            "ttft_ms_off": off, "ttft_ms_on": on, "speedup": round(off / on, 2),
            "ttft_cpu_ms_off": cpu_off, "ttft_cpu_ms_on": cpu_on, "cpu_speedup": round(cpu_off / cpu_on, 2),
            "ttft_ms_off_all": [r[i]["ttft_ms"] for r in runs["off"]],
            "ttft_ms_on_all": [r[i]["ttft_ms"] for r in runs["on"]],
            "same_answer": all(r[i]["answer"] == first_off["answer"] for r in runs["off"] + runs["on"])})

    result["compare"] = {}
    for mode, mb in (("off", 0), ("on", budget)) if "compare" in parts else ():
        for together in (True, False):
            use_cache(engine, mb)
            key = f"{mode}_{'together' if together else 'one_after_another'}"
            result["compare"][key] = compare(engine, counter, together, args.system)
            print("compare", key, result["compare"][key], flush=True)

    # The load off and on, alternately (the host drifts): each mode's fastest run is its figure.
    loads: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.load_repeats if "load" in parts else 0):
        for mode, mb in (("off", 0), ("on", args.load_mb)):
            loads[mode].append(load(engine, args.load, mb, args.load_words))
            print("load", mode, loads[mode][-1], flush=True)
    result["load"] = {}
    for mode, got in loads.items():
        if got:
            result["load"][mode] = {**min(got, key=lambda r: r["seconds"]),
                                    "seconds_all": [r["seconds"] for r in got]}
    if loads["off"] and loads["on"]:
        result["load"]["on_vs_off"] = round(result["load"]["on"]["seconds"] / result["load"]["off"]["seconds"], 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
