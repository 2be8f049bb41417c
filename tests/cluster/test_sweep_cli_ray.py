"""``tokenflow sweep --ray`` as a user runs it: a local Ray started by the command,
two actors, the tiny model; the rows equal the in-process command's. Marker ``ray``."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray
pytest.importorskip("ray")

CLI = [sys.executable, "-m", "generator.cli"]


def _rows(out):
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return {r["key"]: (r["token_ids"], r["text"], r["finish_reason"], r["fingerprint"]) for r in rows}


def test_sweep_with_ray_writes_the_in_process_rows(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Once upon a time", "The sea", "Hi")))
    base = ["sweep", str(prompts), "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "float32",
            "--strategy", "greedy", "--strategy", "sample:temperature=0.8", "--seeds", "0-1",
            "--max-new-tokens", "6", "--ignore-eos", "--chunk", "3", "--no-plots", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    local = subprocess.run(CLI + base + ["--out", str(tmp_path / "local")], capture_output=True, text=True,
                           timeout=300, env=env)
    assert local.returncode == 0, local.stderr
    on_ray = subprocess.run(CLI + base + ["--out", str(tmp_path / "ray"), "--ray", "--ray-workers", "2"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert on_ray.returncode == 0, on_ray.stderr
    assert "on 2 Ray workers" in on_ray.stderr
    assert len(_rows(tmp_path / "ray")) == 3 * (1 + 2)
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    workers = {json.loads(line)["worker"] for line in (tmp_path / "ray" / "rows.jsonl").read_text().splitlines()}
    assert all(w.startswith("ray:") for w in workers)
