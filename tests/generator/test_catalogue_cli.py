"""`tokenflow strategies` and the catalogue's generate flags."""

import json
import subprocess
import sys

import pytest

from decoding import SamplingParams, processors, strategies
from generator.cli.main import main


def test_strategies_lists_every_name_with_chain_params_and_reference(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for s in strategies():
        assert f"\n  {s.name}" in out and s.chain in out and s.reference in out
        for alias in s.aliases:
            assert alias in out
    for p in processors():
        assert f"\n  {p.name}:" in out
    assert "params: temperature=1.0, top_p=0.9, seed=None" in out  # the nucleus default shows
    assert "params: temperature=1.0, top_k=0, top_p=1.0, seed=None" in out  # unset: off


def test_strategies_json_is_the_machine_readable_catalogue(capsys):
    assert main(["strategies", "--json"]) == 0
    cat = json.loads(capsys.readouterr().out)
    assert len(cat["strategies"]) + len(cat["processors"]) >= 15
    assert cat["params"]["min_p"]["max"] == 1.0


@pytest.mark.parametrize("args,needle", [
    (["--logit-bias", "5"], "ID=BIAS"),
    (["--logit-bias", "5=200"], "logit_bias"),
    (["--bad-words-ids", "1,x"], "comma-separated"),
    (["--strategy", "sample", "--min-p", "0.1"], "min_p"),
    (["--strategy", "typical", "--typical-p", "0"], "typical_p"),
    (["--presence-penalty", "9"], "presence_penalty"),
    (["--strategy", "beam", "--repetition-penalty", "1.2"], "repetition_penalty"),
])
def test_bad_catalogue_flags_are_one_line(capsys, args, needle):
    assert main(["generate", "hi"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokenflow: error:") and needle in err[0]


def test_generate_with_processor_flags_as_a_subprocess(tiny_model_dir, tiny_engine):
    args = ["--strategy", "nucleus", "--seed", "4", "--max-new-tokens", "10", "--ignore-eos",
            "--logit-bias", "40=3", "--logit-bias", "41=-100", "--bad-words-ids", "50", "--bad-words-ids", "60,61",
            "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2", "--min-new-tokens", "3"]
    res = subprocess.run([sys.executable, "-m", "generator.cli", "generate", "Once", "--model", str(tiny_model_dir),
                          *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    params = SamplingParams(strategy="top_p", seed=4, max_new_tokens=10, ignore_eos=True,
                            logit_bias={40: 3.0, 41: -100.0}, bad_words_ids=[[50], [60, 61]],
                            repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=3)
    events = list(tiny_engine.stream("Once", params))
    assert res.stdout == "".join(ev.text for ev in events) + "\n"
    assert not {41, 50} & {ev.token_id for ev in events}
