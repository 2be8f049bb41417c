"""What constrained output costs: the grammar mask per decode step at 1 and 16 rows,
compiling a ~10-field JSON schema cold and cached, and tokens/s with and without the
schema on the same prompt. Writes benchmarks/results/grammar_cost.json.

    .venv/bin/python benchmarks/grammar_cost.py [--model PATH] [--rows 1,16] [--repeats 5]

The mask is timed where it runs (``BatchGenerator.step`` with and without the schema,
the same rows and prompts) and alone (the link's ``apply`` over a replayed answer).
Timings on a shared machine are noisy: compare numbers of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from decoding import SamplingParams
from decoding.links.grammar import GRAMMAR, Grammars, mask_rows
from decoding.sampler import RowState
from generator import Engine
from generator.kernels.build import cpu

SCHEMA = {  # ten fields: strings, integers with bounds, an enum, a boolean, an array, a nested object
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 32},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 40},
        "city": {"type": "string", "maxLength": 24},
        "country": {"enum": ["France", "Germany", "Italy", "Spain", "UK", "USA", "Other"]},
        "member": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "address": {"type": "object", "properties": {"street": {"type": "string", "maxLength": 32},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["street", "zip"], "additionalProperties": False},
        "notes": {"anyOf": [{"type": "string", "maxLength": 40}, {"type": "null"}]},
    },
    "required": ["name", "age", "email", "city", "country", "member", "score", "tags", "address", "notes"],
    "additionalProperties": False,
}
PROMPT = [{"role": "user", "content": "Invent a customer record as JSON."}]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def compile_costs(engine: Engine, repeats: int) -> dict:
    """The token table (once per engine), the schema check at the boundary, and what a
    request pays before its first mask: the compile for the tokenizer and the first mask
    (llguidance builds its lexer lazily), cold (a fresh cache) and cached (a copy of a
    compiled matcher that has computed masks before)."""
    t = time.perf_counter()
    grammars = Grammars(engine.tokenizer, engine.model.config.vocab_size, engine.eos_token_ids)
    grammars.tokenizer  # noqa: B018 - builds it
    table = time.perf_counter() - t
    text = json.dumps(SCHEMA)
    t = time.perf_counter()
    params = SamplingParams(json_schema=text)
    check = time.perf_counter() - t
    bitmask = torch.zeros((1, (engine.model.config.vocab_size + 31) // 32), dtype=torch.int32)
    cold, cached = [], []
    for _ in range(repeats):
        fresh = Grammars(engine.tokenizer, engine.model.config.vocab_size, engine.eos_token_ids)
        fresh._tokenizer = grammars.tokenizer  # the table is per engine; time the schema alone
        for times in (cold, cached):
            t = time.perf_counter()
            state = RowState(params, prompt_ids=[1], grammars=fresh).states[GRAMMAR]
            fresh.fill([state], bitmask)
            times.append(time.perf_counter() - t)
    return {"token_table_ms": ms(table), "schema_check_ms": ms(check),
            "compile_cold_ms": ms(statistics.median(cold)), "compile_cached_ms": ms(statistics.median(cached))}


def answer_ids(engine: Engine, params: SamplingParams) -> list[int]:
    return [ev.token_id for ev in engine.stream(PROMPT, params, chat=True)]


def mask_alone(engine: Engine, ids: list[int], rows: int) -> float:
    """Median ms of the link's apply over ``rows`` rows, replaying a schema-valid answer."""
    params = SamplingParams(json_schema=SCHEMA)
    states = [RowState(params, prompt_ids=[1], grammars=engine.grammars).states[GRAMMAR] for _ in range(rows)]
    vocab = engine.model.config.vocab_size
    bitmask = torch.zeros((rows, (vocab + 31) // 32), dtype=torch.int32)
    logits = torch.randn(rows, vocab)
    times = []
    for tok in ids:
        t = time.perf_counter()
        mask_rows(logits, states, bitmask)
        times.append(time.perf_counter() - t)
        for s in states:
            s.accept(tok)
    return statistics.median(times)


def step_times(engine: Engine, rows: int, params: SamplingParams) -> tuple[list[float], int]:
    """Seconds of each decode step with ``rows`` rows under ``params``, and the tokens made."""
    batch = engine.batch()
    ids = engine.encode(PROMPT, chat=True)
    for i in range(rows):
        batch.add(ids, params.replace(seed=i) if params.seed is not None else params)
    while any(not r.ready for r in batch.rows.values()):
        batch.step()
    times, tokens = [], 0
    while batch.active:
        full = batch.active == rows  # steps with every row running: the same batch size both ways
        t = time.perf_counter()
        tokens += len(batch.step())
        if full:
            times.append(time.perf_counter() - t)
    return times, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or .gguf (default: the default model)")
    ap.add_argument("--rows", default="1,16", help="batch sizes for the mask and step timings")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    engine = Engine.load(model=args.model, num_slots=max(16, *(int(r) for r in args.rows.split(","))))
    result = {"machine": {"cpu": cpu()["model"], "cpu_features": cpu()["features"], "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "platform": platform.platform(),
                          "engine": engine.config.summary()},
              "schema_fields": len(SCHEMA["properties"]), "compile": compile_costs(engine, args.repeats)}

    # The same answer length with and without the schema: the free run stops where the constrained one did.
    bound = SamplingParams(strategy="sample", seed=0, temperature=0.7, json_schema=SCHEMA, max_new_tokens=200)
    ids = answer_ids(engine, bound)
    free = SamplingParams(strategy="sample", seed=0, temperature=0.7, max_new_tokens=len(ids), ignore_eos=True)
    result["answer_tokens"] = len(ids)
    result["answer_valid"] = _valid(engine.tokenizer.decode(ids))
    per_rows = {}
    for rows in (int(r) for r in args.rows.split(",")):
        free_t, bound_t = [], []
        for _ in range(2):  # interleaved, so a burst of load on the machine hits both
            times, free_n = step_times(engine, rows, free)
            free_t += times
            times, bound_n = step_times(engine, rows, bound)
            bound_t += times
        alone = mask_alone(engine, ids, rows)
        free_s = statistics.median(free_t)
        per_rows[rows] = {"step_ms_free": ms(free_s), "step_ms_schema": ms(statistics.median(bound_t)),
                          "step_ms_free_min": ms(min(free_t)), "step_ms_schema_min": ms(min(bound_t)),
                          "mask_ms_alone": ms(alone), "mask_share_of_step": round(alone / free_s, 4),
                          "tokens_free": free_n, "tokens_schema": bound_n}
    result["per_rows"] = per_rows
    tps = {}
    for name, params in (("free", free), ("schema", bound)):
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            n = len(answer_ids(engine, params))
            runs.append(n / (time.perf_counter() - t))
        tps[name] = round(statistics.median(runs), 2)
        tps[name + "_best"] = round(max(runs), 2)
    result["tokens_per_s_batch1"] = tps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grammar_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _valid(text: str) -> bool:
    try:
        import jsonschema

        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except Exception:  # noqa: BLE001 - reported, not raised
        return False


if __name__ == "__main__":
    main()
