"""``tokenflow score FILE`` on the tiny model: per-line perplexity and per-token logprobs
equal transformers' (the command run in process: a subprocess would pay torch's start-up
twice more); bad input, as a subprocess, is one line and exit 2."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys

import torch

from generator.cli.main import main

LINES = ["Once upon a time there was a small model.", "", "Café, naïve 🙂 日本語"]


def _run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "generator.cli", "score", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _reference(engine, text):
    ids = engine.tokenizer(text)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(engine.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return ids, [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_score_lines_and_json(tiny_model_dir, tiny_engine, tmp_path, capsys, monkeypatch):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    flags = ["--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32"]
    assert main(["score", str(path), *flags]) == 0
    plain = capsys.readouterr()
    rows = [line.split("\t") for line in plain.out.splitlines()]
    assert len(rows) == 2  # the empty line is skipped
    want_total = []
    for row, text in zip(rows, [LINES[0], LINES[2]]):
        ids, lps = _reference(tiny_engine, text)
        want_total += lps
        assert math.isclose(float(row[0]), math.exp(-sum(lps) / len(lps)), rel_tol=1e-3)
        assert int(row[1]) == len(ids) - 1 and row[2] == text
    assert f"perplexity {math.exp(-sum(want_total) / len(want_total)):.3f}" in plain.err
    monkeypatch.setattr(sys, "stdin", io.StringIO(path.read_text(encoding="utf-8")))
    assert main(["score", "-", *flags, "--json", "--top", "2"]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["line"] for o in objs] == [1, 3]
    ids, lps = _reference(tiny_engine, LINES[2])
    toks = objs[1]["tokens"]
    assert [t["id"] for t in toks] == ids and toks[0]["logprob"] is None
    assert all(math.isclose(t["logprob"], w, abs_tol=1e-4) for t, w in zip(toks[1:], lps))
    assert b"".join(bytes(t["bytes"]) for t in toks) == LINES[2].encode("utf-8")
    assert all("\ufffd" not in t["piece"] for t in toks)
    assert all(len(t["top"]) == 2 for t in toks[1:])


def test_score_bad_input(tmp_path):
    missing = _run(str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "cannot read" in missing.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    got = _run(str(empty))
    assert got.returncode == 2 and "no text to score" in got.stderr and "Traceback" not in got.stderr
    got = _run(str(empty), "--top", "99")
    assert got.returncode == 2 and "--top" in got.stderr
