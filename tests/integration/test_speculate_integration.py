"""Prompt-lookup speculation on the real default model (int4 weights, the best kernel tier
this CPU runs): greedy answers to input-grounded prompts (benchmarks/data/) are the same
tokens and log-probabilities with and without speculation, some drafts are accepted, and
a seeded sampled answer is the same too. (The tiny model, every tier: tests/generator/test_speculate.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from decoding import SamplingParams

pytestmark = pytest.mark.integration

DATA = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "speculate_passages.json").read_text())


def _run(engine, prompt, params):
    return [(ev.token_id, ev.logprob) for ev in engine.stream(prompt, params, chat=True)]


def test_default_model_speculation_changes_no_token(default_int4):
    from generator.speculate import exact_here

    assert exact_here(default_int4)
    counts = default_int4.__dict__.get("spec_counts")
    before = counts.accepted if counts else 0
    for passage, task, kw in ((DATA["passages"]["minutes"], DATA["tasks"][2], {}),
                              (DATA["passages"]["recipe"], DATA["tasks"][3],
                               {"strategy": "sample", "temperature": 0.7, "seed": 11})):
        p = SamplingParams(max_new_tokens=40, **kw)
        prompt = f"{passage}\n\n{task}"
        plain = _run(default_int4, prompt, p.replace(speculative="off"))
        spec = _run(default_int4, prompt, p.replace(speculative="ngram:k=4,n=3,min_n=2"))
        assert spec == plain
    assert default_int4.spec_counts.accepted > before
