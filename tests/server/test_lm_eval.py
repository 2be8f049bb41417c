"""lm-eval-harness itself against ``tokenflow serve``: its ``local-completions`` model
(echo, prompt logprobs, batches of token-id prompts, our /tokenize as its tokenizer) on
an offline multiple-choice task (tests/lm_eval_task/), and its log-likelihoods equal
what transformers computes for the same text. Marker ``lm_eval`` (make test-lm-eval):
lm_eval comes from the ``eval`` extra and one run takes about a minute here."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from server_harness import free_port, wait_for_health

pytestmark = pytest.mark.lm_eval
TASK_DIR = Path(__file__).resolve().parents[1] / "lm_eval_task"
LM_EVAL = Path(sys.executable).with_name("lm_eval")


def _reference(model, tokenizer, context: str, continuation: str) -> float:
    """The continuation's log-likelihood after the context as lm-eval splits the pair
    (trailing spaces of the context move to the continuation; the whole text is encoded
    once and cut at the context's length), computed by transformers."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx_len = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(ctx_len, len(whole)))


def test_lm_eval_scores_like_transformers(tiny_model_dir, tiny_engine, tmp_path):
    if not LM_EVAL.exists() and shutil.which("lm_eval") is None:
        pytest.skip("lm_eval is not installed (pip install -e '.[eval]', or make test-lm-eval)")
    lm_eval = str(LM_EVAL) if LM_EVAL.exists() else shutil.which("lm_eval")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen([sys.executable, "-m", "generator.cli", "serve", "--model", str(tiny_model_dir),
                               "--device", "cpu", "--dtype", "float32", "--port", str(port), "--log-level",
                               "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_health(url, server, interval=0.2)
        run = subprocess.run(
            [lm_eval, "--model", "local-completions", "--model_args",
             f"model=tokenflow,base_url={url}/v1/completions,num_concurrent=1,max_retries=1",
             "--batch_size", "4", "--tasks", "tokenflow_mc", "--include_path", ".",
             "--output_path", str(tmp_path), "--log_samples"],
            cwd=TASK_DIR, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # lm-eval took our /tokenize (vLLM's shape) as its tokenizer, so it needed no files
        assert "remote tokenizer backend" in run.stderr + run.stdout
    finally:
        server.terminate()
        server.wait(30)
    samples = [json.loads(line) for f in tmp_path.rglob("samples_tokenflow_mc_*.jsonl")
               for line in f.read_text().splitlines()]
    items = (TASK_DIR / "items.jsonl").read_text().splitlines()
    assert len(samples) == len(items)
    checked = 0
    for sample in samples:
        for args, resp in zip(sample["arguments"].values(), sample["resps"]):
            got = float(resp[0][0])
            want = _reference(tiny_engine.model, tiny_engine.tokenizer, args["arg_0"], args["arg_1"])
            assert math.isclose(got, want, abs_tol=1e-3), (args, got, want)
            checked += 1
    assert checked == sum(len(json.loads(i)["choices"]) for i in items)
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert 0.0 <= results["results"]["tokenflow_mc"]["acc,none"] <= 1.0
