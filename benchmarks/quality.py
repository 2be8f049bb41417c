"""Quality of each weight format against the float32 reference on the default model:
greedy agreement over the first 64 tokens on a fixed prompt set, and the mean
log-likelihood (perplexity) of a fixed text. Writes benchmarks/results/quality.json.

    .venv/bin/python benchmarks/quality.py [--formats fp32,bf16,int8,int4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from generator import Engine, kernels
from generator.eval.likelihood import mean_logprob, perplexity, text_logprobs
from generator.eval.quality import AGREEMENT_PROMPTS, LIKELIHOOD_TEXT, agreement, greedy_ids

FORMATS = {"fp32": dict(dtype="float32", quant="none"), "bf16": dict(dtype="bfloat16", quant="none"),
           "int8": dict(dtype="auto", quant="int8"), "int4": dict(dtype="auto", quant="int4"),
           "int4-bf16act": dict(dtype="auto", quant="int4", activations="bf16"),
           "int4-head4": dict(dtype="auto", quant="int4", head="int4"),
           "int4-dense-prefill": dict(dtype="auto", quant="int4", dense_prefill=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="fp32,bf16,int8,int4,int4-bf16act,int4-head4",
                    help="int4: int4 body, int8 head (as the GGUF), activations auto (int8 with AVX512_VNNI); "
                         "int4-bf16act: the same with bf16 activations; int4-head4: the head in int4 too (--head int4)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality.json"))
    args = ap.parse_args()
    ref_ids: dict[str, list[int]] = {}
    rows = []
    for name in ["fp32"] + [f for f in args.formats.split(",") if f != "fp32"]:
        t0 = time.perf_counter()
        engine = Engine.load(device="cpu", compile=False, **FORMATS[name])
        ids = {p: greedy_ids(engine, p, args.tokens) for p in AGREEMENT_PROMPTS}
        if name == "fp32":
            ref_ids = ids
        agree = [agreement(ids[p], ref_ids[p]) for p in AGREEMENT_PROMPTS]
        logprobs = text_logprobs(engine, LIKELIHOOD_TEXT)
        lp, ppl = mean_logprob(logprobs), perplexity(logprobs)
        rows.append(dict(format=name, agreement=agree, mean_agreement=sum(agree) / len(agree),
                         full_matches=sum(a == args.tokens for a in agree), mean_logprob=lp,
                         perplexity=ppl, seconds=round(time.perf_counter() - t0, 1),
                         engine=engine.config.as_dict()))
        print(f"{name:5s} agreement/{args.tokens} {agree} mean {rows[-1]['mean_agreement']:.1f}  "
              f"ppl {ppl:.3f} (mean logprob {lp:.4f})", flush=True)
        del engine
    ref_ppl = rows[0]["perplexity"]
    for r in rows:
        r["ppl_vs_fp32"] = r["perplexity"] / ref_ppl - 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(kernels=kernels.status()["tier"], tokens=args.tokens, prompts=list(AGREEMENT_PROMPTS),
                                   formats=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
