"""The GPU check: the CUDA tests, then what the engine does on the GPU, as one JSON file.

    python3 benchmarks/gpu_check.py [--out DIR] [--model-dir DIR] [--bundle gpu_bundle] [--budget-s 450]
    python3 benchmarks/gpu_check.py --device cpu --quick --model-dir DIR --out DIR   # a dry run, no GPU

Made to run on a lent GPU machine from a fresh copy of the tree with that machine's own
PyTorch (no ``.venv``, no network, no install): the repository root goes on ``sys.path``.
It writes ``gpu_check.json`` (rewritten after every section, so a run cut short keeps what it
measured) and ``gpu_tests.log`` into ``--out`` (default ``$OUT``, else ``benchmarks/results``).

1. environment: torch, CUDA, the GPU's name, the Python packages the engine and the server
   need and which of them are missing (``--bundle``'s ``wheels/`` are installed into
   ``/tmp/tokenflow-site`` first when the server's are missing);
2. ``pytest tests/gpu tests/generator/test_cuda_path.py`` with ``$TOKENFLOW_GPU_MODEL`` set;
3. per weight format (bf16, int4) and decode step (CUDA graphs, eager): batch-1 time to first
   token and decode tok/s, and the step time and aggregate tok/s at 1, 16 and 64 rows; then,
   time allowing, the compiled step in graphs (``--compile``) at one row.

The model: ``--model-dir`` (a converted HF folder), else the default model where the tokenflow
cache holds it converted, else a *shape twin* of SmolLM2-135M-Instruct built from
``<bundle>/smollm2/`` (its config.json and tokenizer, a few MB): the same shapes and
tokenizer with seeded random weights. The default model's weights (517 MB converted, 94 MB as
the GGUF) are over what travels to the GPU machine (64 MiB), and a step's time depends on the
shapes, not the values; the JSON says which model ran. ``make gpu-bundle`` fills the bundle.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENGINE_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "jinja2", "pytest")
SERVER_PACKAGES = ("fastapi", "starlette", "pydantic", "uvicorn", "httptools", "httpx", "prometheus_client")
PROMPT = ("Explain, in a short paragraph for a curious student, why the sky looks blue in the "
          "daytime and red at sunset.")
SITE = Path("/tmp/tokenflow-site")


def missing(names) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def install_bundle_wheels(bundle: Path) -> str:
    """The bundle's wheels into SITE (no index, no network) when the server's packages are missing."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if not missing(SERVER_PACKAGES):
        return "not needed"
    if not wheels:
        return f"no wheels in {bundle / 'wheels'}"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(SITE), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode:
        return f"pip failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    sys.path.insert(0, str(SITE))
    importlib.invalidate_caches()
    return f"installed {len(wheels)} wheels into {SITE}"


def pick_model(args) -> tuple[str, str]:
    """``(folder, kind)``: the folder to load and what it is (``given``, ``default``, ``twin``)."""
    from generator.loading import DEFAULT_NAME, cache_dir, is_converted

    if args.model_dir:
        return args.model_dir, "given"
    default = cache_dir() / DEFAULT_NAME
    if is_converted(default) and not args.twin:
        return str(default), "default"
    spec = Path(args.bundle) / "smollm2"
    if not (spec / "config.json").is_file() or not (spec / "tokenizer.json").is_file():
        raise SystemExit(f"gpu_check: no model: pass --model-dir, or carry {spec} (make gpu-bundle)")
    return build_twin(spec, Path(args.work) / "smollm2-twin"), "twin"


def build_twin(spec: Path, out: Path) -> str:
    """SmolLM2-135M's config and tokenizer with seeded random weights, saved once into ``out``."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "model.safetensors").is_file():
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(spec)
    # Larger than the trained model's init: peakier logits, fewer near-ties in the greedy checks.
    config.initializer_range = 0.1
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for f in spec.iterdir():
        if f.name != "config.json" and f.is_file():
            shutil.copy(f, out / f.name)
    return str(out)


def run_tests(model: str, kind: str, out: Path, timeout: int, paths: list[str]) -> dict:
    # The tests write how long greedy runs agreed into out/agreement.json (tests/gpu).
    (out / "agreement.json").unlink(missing_ok=True)
    env = {**os.environ, "TOKENFLOW_GPU_MODEL": model, "TOKENFLOW_GPU_MODEL_KIND": kind,
           "TOKENFLOW_GPU_REPORT": str(out), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(SITE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *paths]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout} s", 124
        text = text if isinstance(text, str) else text.decode(errors="replace")
    (out / "gpu_tests.log").write_text(text)
    summary = next((ln for ln in reversed(text.splitlines()) if " in " in ln and ("passed" in ln or "failed" in ln
                                                                                   or "skipped" in ln)), "")
    agreement = out / "agreement.json"
    return {"rc": rc, "summary": summary.strip("= "), "seconds": round(time.perf_counter() - t0, 1),
            "log": "gpu_tests.log", "agreement": json.loads(agreement.read_text()) if agreement.is_file() else None}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch1(engine, tokens: int, repeats: int) -> dict:
    """Batch-1 greedy: time to first token (prompt written + first token, median of ``repeats``)
    and decode tok/s over the ``tokens`` after the first."""
    from decoding import SamplingParams

    ids = engine.encode(PROMPT)
    ttft, rates = [], []
    for _ in range(repeats):
        params = SamplingParams(strategy="greedy", max_new_tokens=tokens + 1, ignore_eos=True)
        sync(engine.device)
        t0 = time.perf_counter()
        stream = engine.stream(ids, params)
        next(stream)
        t1 = time.perf_counter()
        n = sum(1 for _ in stream)
        t2 = time.perf_counter()
        ttft.append((t1 - t0) * 1000)
        rates.append(n / (t2 - t1))
    return {"prompt_tokens": len(ids), "ttft_ms": round(sorted(ttft)[len(ttft) // 2], 2),
            "decode_tok_s": round(sorted(rates)[len(rates) // 2], 1), "decode_tokens": tokens}


def step_time(engine, rows: int, steps: int) -> dict:
    """Median ms of a decode step with ``rows`` greedy rows (the step's one host read included)."""
    from decoding import SamplingParams

    batch = engine.batch()
    params = SamplingParams(strategy="greedy", max_new_tokens=steps + 8, ignore_eos=True)
    ids = engine.encode(PROMPT)
    for i in range(rows):
        batch.add(ids[: len(ids) - (i % 7)], params)  # rows of a few different lengths
    while any(not r.ready for r in batch.rows.values()):
        batch.step()
    for _ in range(3):
        batch.step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        batch.step()
        times.append(time.perf_counter() - t)
    while batch.active:
        batch.step()
    ms = sorted(times)[len(times) // 2] * 1000
    return {"rows": rows, "step_ms": round(ms, 3), "aggregate_tok_s": round(rows * 1000 / ms, 1)}


def measure(model: str, device: str, name: str, quant: str, graphs: str, compile: bool, rows: tuple,
            args) -> dict:
    import torch

    from generator import Engine

    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    dtype = "float32" if device == "cpu" else "auto"
    engine = Engine.load(model=model, device=device, dtype=dtype, quant=quant, cuda_graphs=graphs,
                         compile=compile, num_slots=max(rows), max_len=512)
    load_s = time.perf_counter() - t0
    row = {"name": name, "engine": engine.config.summary(), "load_s": round(load_s, 1)}
    if engine.device.type == "cuda":
        row["graph_captures"] = engine.runner.graphs.captures if engine.runner.graphs is not None else 0
    row["batch1"] = batch1(engine, args.tokens, args.repeats)
    row["steps"] = [step_time(engine, r, args.steps) for r in rows]
    if engine.device.type == "cuda":
        row["gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del engine
    if device != "cpu":
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run of the script)")
    ap.add_argument("--quick", action="store_true", help="a few tokens and rows: checks the script, measures nothing")
    ap.add_argument("--model-dir", default=None, help="a converted HF model folder (default: see the docstring)")
    ap.add_argument("--twin", action="store_true", help="the shape twin even where the default model is cached")
    ap.add_argument("--bundle", default=str(ROOT / "gpu_bundle"), help="what make gpu-bundle made (carried)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default="/tmp/tokenflow-gpu", help="scratch folder (the twin's weights)")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="the run's end: a section starts only if its usual length still fits before it")
    ap.add_argument("--tests-timeout-s", type=int, default=220)
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args(argv)
    args.tokens, args.repeats, args.steps, args.rows = (8, 1, 4, (1, 4)) if args.quick else (128, 3, 32, (1, 16, 64))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick}

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        tmp = out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out / "gpu_check.json")

    report["wheels"] = install_bundle_wheels(Path(args.bundle))
    report["missing"] = {"engine": missing(ENGINE_PACKAGES), "server": missing(SERVER_PACKAGES)}
    if report["missing"]["engine"]:
        save()
        print(f"gpu_check: missing packages: {', '.join(report['missing']['engine'])}", file=sys.stderr)
        return 2
    import torch

    from generator.config import CUDA_AUTO_QUANT
    from generator.model.cuda import gpu_name

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        report["error"] = "torch sees no CUDA device"
        save()
        print("gpu_check: torch sees no CUDA device (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    report["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "cuda": torch.version.cuda, "gpu": gpu_name(args.device),
                             "cpu_cores": os.cpu_count(), "quant_auto_on_cuda": CUDA_AUTO_QUANT}
    model, kind = pick_model(args)
    report["model"] = {"folder": model, "kind": kind}
    save()
    if not args.skip_tests:
        # On the GPU machine the CPU-side CUDA tests too (its torch is another version); a dry run
        # only checks that tests/gpu skips cleanly.
        paths = ["tests/gpu"] + ([] if args.device == "cpu" else ["tests/generator/test_cuda_path.py"])
        # the four plain runs below need about 40 s each: leave them that
        left = int(args.budget_s - (time.perf_counter() - start) - 4 * 40)
        report["tests"] = run_tests(model, kind, out, max(30, min(args.tests_timeout_s, left)), paths)
        save()
    rows = args.rows
    if args.device == "cpu":
        runs = [("float32 eager", "none", "off", False, rows)]
    else:
        # Most telling first: a run that would start past the budget is skipped. The compiled
        # step (inductor's fused kernels in the graphs) only at one row: a compile per bucket.
        runs = [("bf16 graphs", "none", "on", False, rows), ("int4 graphs", "int4", "on", False, rows),
                ("bf16 eager", "none", "off", False, rows), ("int4 eager", "int4", "off", False, rows),
                ("bf16 compiled graphs", "none", "on", True, (1,))]
    report["runs"] = []
    for name, quant, graphs, compile, run_rows in runs:
        need = 150 if compile else 40  # a compile at load takes minutes cold
        if time.perf_counter() - start + need > args.budget_s:
            report["runs"].append({"name": name,
                                   "skipped": f"{need} s more would pass the {args.budget_s:.0f} s budget"})
            continue
        try:
            report["runs"].append(measure(model, args.device, name, quant, graphs, compile, run_rows, args))
        except Exception as exc:  # noqa: BLE001 - one format's failure is recorded, the others still run
            report["runs"].append({"name": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        save()
    done = {r["name"]: r for r in report["runs"] if "batch1" in r}
    if "bf16 graphs" in done and "int4 graphs" in done:
        b, i = done["bf16 graphs"]["batch1"]["decode_tok_s"], done["int4 graphs"]["batch1"]["decode_tok_s"]
        report["faster_at_batch_1"] = "int4" if i > b else "bf16"
    save()
    print(json.dumps(report, indent=2))
    return 0 if report.get("tests", {}).get("rc", 0) in (0, 5) else 1


if __name__ == "__main__":
    sys.exit(main())
