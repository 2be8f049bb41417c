"""Ours vs llama.cpp vs transformers, one run, same machine, same prompt, same threads.

ours             tokenflow's engine, compiled step, int4 from the GGUF's Q4_1 blocks; once per
                 --heads format of the output head (int8 as in the GGUF, and int4)
llama.cpp        llama-cpp-python on the very same GGUF file (optional: `make bench-peer` builds it);
                 with ``--tier``: llama.cpp's own ``llama-server`` built for that ISA tier
                 (``benchmarks/llamacpp.py``), streaming ``/completion`` with the same prompt ids
transformers     `model.generate()` greedy, float32 (the converted HF model)

``--tier avx512|avx2|portable`` forces our kernel tier (``TOKENFLOW_KERNELS``) and builds
llama.cpp for the same ISA (``native`` for ``avx512``), so a lower tier forced on a bigger
CPU is compared like for like: ``make bench-peer TIER=avx2``.

Every contender gets the same prompt token ids (the chat template applied once by
our tokenizer), greedy decoding, exactly ``--tokens`` new tokens (EOS ignored) and
``--threads`` CPU threads. Reported per contender: time to first token (prefill
included), decode tokens/s over the tokens after the first, and ratios. Writes
``benchmarks/results/peer_llamacpp.json``.

    .venv/bin/python benchmarks/peer_llamacpp.py [--tokens 128] [--threads 2] [--quant int4] [--tier avx2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from decoding import SamplingParams
from generator import Engine, kernels
from generator.kernels.build import cpu
from generator.eval.quality import agreement
from generator.eval.timing import median, stream_timing

RESULTS = Path(__file__).parent / "results"


def _rates(start: float, stamps: list[float]) -> dict:
    """One run's time to first token and decode rate (``timing.stream_timing``)."""
    t = stream_timing(start, stamps)
    return {"ttft_ms": t["ttft_ms"], "decode_tok_s": t["decode_tps"], "tokens": t["tokens"]}


def _median_run(runs: list[dict]) -> dict:
    """The run of median decode rate (a real run: the upper middle one for an even
    count), with the median time to first token over all runs."""
    middle = sorted(runs, key=lambda r: r["decode_tok_s"])[len(runs) // 2]
    return dict(middle, ttft_ms=median([r["ttft_ms"] for r in runs]), runs=runs)


def bench_ours(ids: list[int], args, head: str = "auto") -> tuple[dict, list[int]]:
    t0 = time.perf_counter()
    engine = Engine.load(device="cpu", dtype=args.dtype, quant=args.quant, compile=not args.no_compile, head=head)
    load_s = time.perf_counter() - t0
    params = SamplingParams(max_new_tokens=args.tokens, ignore_eos=True)
    t0 = time.perf_counter()
    # Warm-up: builds the compiled step (once per process; inductor caches it on disk too).
    for _ in engine.stream(ids, params.replace(max_new_tokens=8)):
        pass
    warm_s = time.perf_counter() - t0
    runs, tokens = [], []
    for _ in range(args.repeats):
        start, stamps, tokens = time.perf_counter(), [], []
        for ev in engine.stream(ids, params):
            stamps.append(time.perf_counter())
            tokens.append(ev.token_id)
        runs.append(_rates(start, stamps))
    res = _median_run(runs)
    fmt = engine.quant if engine.quant != "none" else str(engine.dtype).replace("torch.", "")
    head_fmt = type(engine.runner.model.lm_head).__name__.replace("Linear", "").lower() \
        if hasattr(engine.runner.model, "lm_head") else "?"
    res.update(name=f"tokenflow {fmt}, {head_fmt} head{'' if engine.runner.compiled else ', eager'}",
               head=head_fmt, load_s=load_s, warmup_s=warm_s, engine=engine.config.as_dict(),
               weight_mb=engine.runner.model.weight_bytes() / 1e6 if hasattr(engine.runner.model, "weight_bytes")
               else None)
    return res, tokens


def bench_llamacpp(ids: list[int], gguf: Path, args) -> tuple[dict | None, list[int]]:
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama.cpp: skipped (llama-cpp-python not installed; `make bench-peer` installs it)", file=sys.stderr)
        return None, []
    t0 = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=max(512, len(ids) + args.tokens + 8), n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    load_s = time.perf_counter() - t0
    runs, tokens = [], []
    for rep in range(args.repeats + 1):  # the first run warms up
        # Without reset() llama-cpp-python reuses the previous run's KV prefix and skips prefill.
        llm.reset()
        start, stamps, tokens = time.perf_counter(), [], []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            stamps.append(time.perf_counter())
            tokens.append(int(tok))
            if len(tokens) >= args.tokens:
                break
        if rep:
            runs.append(_rates(start, stamps))
    import llama_cpp

    res = _median_run(runs)
    res.update(name=f"llama.cpp {llama_cpp.__version__} (Q4_1 GGUF)", load_s=load_s)
    return res, tokens


def bench_llama_server(ids: list[int], gguf: Path, tier: str, args) -> tuple[dict, list[int]]:
    """llama-server built for ``tier`` on the same GGUF: one slot, the same threads, the
    prompt ids as they are, greedy, exactly ``--tokens`` tokens, the prompt cache off; each
    streamed event timestamped on arrival, as ours are."""
    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import llamacpp

    bin_dir = llamacpp.build(tier, log=lambda m: print(m, file=sys.stderr))
    body = {"prompt": ids, "n_predict": args.tokens, "temperature": 0.0, "top_k": 1, "ignore_eos": True,
            "stream": True, "cache_prompt": False, "return_tokens": True, "samplers": ["top_k"]}
    runs, tokens = [], []
    with llamacpp.LlamaServer(bin_dir, gguf, slots=1, threads=args.threads,
                              ctx_per_slot=max(512, len(ids) + args.tokens + 8)) as server:
        for rep in range(args.repeats + 1):  # the first run warms up
            start, stamps, tokens = time.perf_counter(), [], []
            with httpx.stream("POST", server.url + "/completion", json=body, timeout=300) as res:
                res.raise_for_status()
                for line in res.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    new = event.get("tokens") or []
                    if new:
                        now = time.perf_counter()
                        stamps += [now] * len(new)
                        tokens += [int(t) for t in new]
            if rep:
                runs.append(_rates(start, stamps))
    res = _median_run(runs)
    res.update(name=f"llama.cpp server ({tier} build)", tier=tier, llama_cpp_python=llamacpp.VERSION)
    return res, tokens


def bench_transformers(ids: list[int], model, args) -> tuple[dict, list[int]]:
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps: list[float] = []
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:  # generate() first hands over the prompt
                self.prompt_seen = True
                return
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    inp = torch.tensor([ids])
    mask = torch.ones_like(inp)
    runs, tokens = [], []
    for rep in range(args.repeats + 1):
        streamer = Stamps()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(inp, attention_mask=mask, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                 do_sample=False, streamer=streamer)
        tokens = out[0, len(ids):].tolist()
        if rep:
            runs.append(_rates(start, streamer.stamps))
    res = _median_run(runs)
    res.update(name="transformers generate() fp32")
    return res, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description="tokenflow vs llama.cpp vs transformers, one run")
    ap.add_argument("--prompt", default="Explain streaming")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="measured runs per contender (median reported)")
    ap.add_argument("--quant", default="auto", help="our weight format: auto (int4 on CPU), none, int8, int4")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--heads", default="auto,int4",
                    help="our output-head formats to run, comma separated (auto: int8 as in the GGUF; int4: "
                         "a third fewer bytes a token, see --head in docs/performance.md)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--tier", choices=["avx512", "avx2", "portable"],
                    help="force our kernel tier and compare with llama.cpp built for the same ISA")
    ap.add_argument("--skip", action="append", default=[], choices=["llamacpp", "transformers"])
    ap.add_argument("--out", default=str(RESULTS / "peer_llamacpp.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.tier:
        kernels.use(args.tier)  # for the whole process, before any engine loads

    ref = Engine.load(device="cpu", dtype="float32", quant="none", compile=False)
    ids = ref.encode(args.prompt, chat=True)
    gguf = ref.gguf_path
    results, token_sets = [], {}
    for i, head in enumerate(h for h in args.heads.split(",") if h):
        res, toks = bench_ours(ids, args, head)
        results.append(res)
        token_sets["ours" if i == 0 else f"ours, {res['head']} head"] = toks
    ours = results[0]
    if "llamacpp" not in args.skip:
        peer, token_sets["llamacpp"] = (bench_llama_server(ids, gguf, {"avx512": "native"}.get(args.tier, args.tier),
                                                           args) if args.tier else bench_llamacpp(ids, gguf, args))
        if peer:
            results.append(peer)
    if "transformers" not in args.skip:
        hf, token_sets["transformers"] = bench_transformers(ids, ref.model, args)
        results.append(hf)

    print(f"\n{len(ids)}-token chat prompt {args.prompt!r}, {args.tokens} new tokens, greedy, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}")
    base = next((r for r in results if r["name"].startswith("llama.cpp")), ours)
    print(f"{'contender':42s} {'decode tok/s':>12s} {'TTFT ms':>9s} {'vs ' + base['name'].split()[0]:>14s}")
    for r in results:
        r["vs_" + base["name"].split()[0]] = r["decode_tok_s"] / base["decode_tok_s"]
        r["ours_speedup"] = ours["decode_tok_s"] / r["decode_tok_s"]
        print(f"{r['name']:42s} {r['decode_tok_s']:12.1f} {r['ttft_ms']:9.0f} "
              f"{r['decode_tok_s'] / base['decode_tok_s']:13.2f}x")
    # How long our greedy ids follow each peer's (same prompt ids, same weights for llama.cpp).
    agree = {}
    for name, toks in token_sets.items():
        if name != "ours" and toks:
            n = agreement(token_sets["ours"], toks)
            agree[name] = n
            print(f"greedy ids: ours and {name} agree on the first {n} tokens")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(kernels=kernels.status()["tier"], cpu=cpu(), prompt=args.prompt, prompt_tokens=len(ids),
                                   new_tokens=args.tokens,
                                   threads=args.threads, machine=platform.machine(), torch=torch.__version__,
                                   results=results, greedy_agreement=agree,
                                   time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
