"""`tokenflow generate` and `compare` with a constraint, on the tiny model."""

import json
import re
import subprocess
import sys

import jsonschema
import pytest

from decoding import SamplingParams
from generator.cli.main import main

CLI = [sys.executable, "-m", "generator.cli"]
SCHEMA = {"type": "object", "properties": {"k": {"enum": ["a", "b"]}, "v": {"type": "integer", "minimum": 0,
                                                                             "maximum": 9}},
          "required": ["k", "v"], "additionalProperties": False}


def run(args):
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=300)


def test_generate_json_schema_file_regex_and_choice(tiny_model_dir, tiny_engine, tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    res = run(["generate", "Once", "--model", str(tiny_model_dir), "--json-schema", str(path), "--seed", "2",
               "--strategy", "sample"])
    assert res.returncode == 0, res.stderr
    jsonschema.validate(json.loads(res.stdout), SCHEMA)
    expected = tiny_engine.generate_text("Once", SamplingParams(strategy="sample", seed=2, json_schema=SCHEMA))
    assert res.stdout == expected + "\n"
    res = run(["generate", "Once", "--model", str(tiny_model_dir), "--regex", "[a-c]{3}"])
    assert res.returncode == 0 and re.fullmatch(r"[a-c]{3}\n", res.stdout), res.stderr
    res = run(["generate", "Once", "--model", str(tiny_model_dir), "--choice", "up", "--choice", "down"])
    assert res.returncode == 0 and res.stdout in ("up\n", "down\n"), res.stderr


@pytest.mark.parametrize("args, needle", [
    (["--json-schema", "missing.json"], "no such file"),
    (["--json-schema", '{"type": "object", "dependentSchemas": {}}'], "dependentSchemas"),
    (["--regex", "(open"], "unclosed group"),
    (["--grammar", "start: nothing_here"], "nothing_here"),
    (["--regex", "a", "--choice", "x"], "only one constraint"),
])
def test_bad_constraints_are_one_line(capsys, args, needle):
    assert main(["generate", "hi"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokenflow: error:") and needle in err[0]


def test_compare_applies_the_constraint_to_every_strategy(tiny_model_dir, tmp_path):
    path, out = tmp_path / "schema.json", tmp_path / "cmp.json"
    path.write_text(json.dumps(SCHEMA))
    res = run(["compare", "Once upon a time", "--model", str(tiny_model_dir), "--json-schema", str(path),
               "--strategy", "greedy", "--strategy", "beam:num_beams=3", "--strategy", "sample:temperature=0.9",
               "--samples", "2", "--no-live", "--json", str(out)])
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    runs = [r for entry in report["strategies"] for r in entry["runs"]]
    assert len(runs) == 4
    for r in runs:
        jsonschema.validate(json.loads(r["text"]), SCHEMA)
