"""The real default model (SmolLM2-135M-Instruct from the PyPI wheel), end to end."""

import subprocess
import sys

import pytest
import torch

from decoding import SamplingParams
from generator.loading import DEFAULT_NAME, cache_dir, is_converted

pytestmark = pytest.mark.integration

CHAT_PROMPTS = ["Explain streaming", "Write a haiku about the sea.", "What is 12 times 7?"]


def _ref(engine, ids, **kw):
    out = engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), **kw)
    return out[0, len(ids):].tolist()


def test_default_model_is_cached_as_safetensors(default_engine):
    folder = cache_dir() / DEFAULT_NAME
    assert is_converted(folder)
    assert default_engine.gguf_path is not None and default_engine.gguf_path.suffix == ".gguf"
    assert default_engine.model.config.num_hidden_layers == 30


@pytest.mark.parametrize("prompt", CHAT_PROMPTS)
def test_greedy_equals_generate_on_the_default_model(default_engine, prompt):
    ids = default_engine.encode(prompt, chat=True)
    ours = [ev.token_id for ev in default_engine.stream(ids, SamplingParams(max_new_tokens=32))]
    assert ours == _ref(default_engine, ids, max_new_tokens=32, do_sample=False)


@pytest.mark.parametrize("prompt,chat", [("The capital of France is", False), ("Explain streaming", True)])
def test_beam_equals_generate_on_the_default_model(default_engine, prompt, chat):
    ids = default_engine.encode(prompt, chat=chat)
    params = SamplingParams(strategy="beam", num_beams=4, max_new_tokens=24)
    events = list(default_engine.stream(ids, params))
    assert [ev.token_id for ev in events] == _ref(default_engine, ids, max_new_tokens=24, num_beams=4,
                                                   do_sample=False)
    assert "".join(ev.text for ev in events) == default_engine.tokenizer.decode(
        [ev.token_id for ev in events], skip_special_tokens=True)


def test_chat_answer_ends_with_eos(default_engine):
    events = list(default_engine.stream("Say just the word hello.", SamplingParams(max_new_tokens=64), chat=True))
    assert events[-1].finish_reason == "stop" and events[-1].token_id in default_engine.eos_token_ids
    assert "hello" in "".join(ev.text for ev in events).lower()


CLI = [sys.executable, "-m", "generator.cli", "generate"]


@pytest.mark.parametrize("args", [
    ["Explain streaming", "--chat", "--max-new-tokens", "24"],
    ["Once upon a time", "--strategy", "sample", "--temperature", "0.8", "--top-k", "50", "--top-p", "0.95",
     "--seed", "7", "--max-new-tokens", "24"],
    ["The capital of France is", "--strategy", "beam", "--num-beams", "4", "--max-new-tokens", "16"],
])
def test_cli_commands_from_the_readme(default_engine, args):
    res = subprocess.run(CLI + args + ["--stats"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip()) > 0 and "[stats]" in res.stderr
    if "--seed" in args:  # the same seed again gives the same text
        again = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)
        assert again.stdout == res.stdout


def test_cli_pipe_from_stdin_closed_early(default_engine):
    proc = subprocess.run(
        f"echo 'Explain streaming' | {sys.executable} -m generator.cli generate - --chat | head -c 40;"
        " echo \"rc=${PIPESTATUS[1]}\" >&2",
        shell=True, capture_output=True, text=True, timeout=300, executable="/bin/bash")
    assert "rc=0" in proc.stderr and len(proc.stdout) == 40
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
