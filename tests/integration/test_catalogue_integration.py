"""Every registered strategy, end to end on the real default model, through the CLI."""

import subprocess
import sys

import pytest
import torch

from decoding import SamplingParams, strategies
from generator.cli import main as cli_main

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_on_default_engine(default_engine, monkeypatch):
    """`tokenflow generate` in this process, reusing the loaded default model (one load,
    not one per strategy); parsing, validation and streaming are the real CLI path."""
    from generator.engine import Engine

    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **kw: default_engine))
    return cli_main


@pytest.mark.parametrize("name", [s.name for s in strategies()])
def test_each_strategy_generates_from_the_cli(cli_on_default_engine, capsys, name):
    extra = ["--num-beams", "2"] if name == "beam" else ["--seed", "1"]  # few beams, few tokens: quick
    rc = cli_on_default_engine(["generate", "Write a sentence about the sea.", "--chat", "--strategy", name,
                                *extra, "--max-new-tokens", "6", "--stats"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip() and "[stats]" in err
    assert "finish=length" in err or "finish=stop" in err


def test_cli_subprocess_with_llama_cpp_chain_and_dry(default_engine):
    args = ["generate", "List three colours.", "--chat", "--strategy", "llama_cpp", "--dry-multiplier", "0.8",
            "--xtc-probability", "0.5", "--seed", "3", "--max-new-tokens", "8",
            "--dtype", "float32"]  # the reference weights, as default_engine
    first = subprocess.run([sys.executable, "-m", "generator.cli", *args], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    params = SamplingParams(strategy="llama_cpp", dry_multiplier=0.8, xtc_probability=0.5, seed=3,
                            max_new_tokens=8)
    assert first.stdout == default_engine.generate_text("List three colours.", params, chat=True) + "\n"


def test_penalised_greedy_equals_generate_on_the_default_model(default_engine):
    ids = default_engine.encode("Repeat after me: la la la la la", chat=True)
    params = SamplingParams(max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=3)
    ours = [ev.token_id for ev in default_engine.stream(ids, params)]
    ref = default_engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=20, do_sample=False, repetition_penalty=1.3,
                                        no_repeat_ngram_size=3)[0, len(ids):].tolist()
    assert ours == ref


def test_top_logprobs_on_the_default_model(default_engine):
    events = list(default_engine.stream("The capital of France is", SamplingParams(max_new_tokens=3, logprobs=5)))
    assert all(len(ev.top_logprobs) == 5 for ev in events)
    assert events[0].top_logprobs[0].token_id == events[0].token_id  # greedy picks the most likely
    assert "Paris" in "".join(t.text for t in events[0].top_logprobs + events[1].top_logprobs)
