"""The sweep on a real local Ray cluster (``ray.init(num_cpus=2)``) with the tiny model:
the same rows as in process, and an actor killed mid-sweep loses no finished cell.
Marker ``ray``: ``make test-ray`` (installs the ``ray`` extra first)."""

import dataclasses
import json

import pytest

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

from generator.cli.common import parse_strategy_spec  # noqa: E402
from generator.config import EngineConfig  # noqa: E402
from generator.eval.rows import RowStore, jsonable, read_rows  # noqa: E402
from generator.eval.sweep import chunked, plan_cells, run_cells  # noqa: E402
from generator.eval.sweep_ray import RayError, RayFanOut, connect  # noqa: E402

PROMPTS = ["Once upon a time", "The sea is", "Hello there"]
SPECS = ["sample:temperature=0.8", "top_k:top_k=20,temperature=1.2"]
VOLATILE = ("timing", "worker")  # when and where a cell ran
# float sums: an actor's torch runs 1 thread, this process maybe 2, so they may differ in the last bits
ROUNDED = ("logprobs", "metrics")


@pytest.fixture(scope="module")
def cluster():
    resources = connect(None, num_cpus=2)
    assert resources["CPU"] == 2
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cells():
    specs = [parse_strategy_spec(s, max_new_tokens=8, ignore_eos=True) for s in SPECS]
    return plan_cells(len(PROMPTS), specs, SPECS, [0, 1])  # 3 prompts x 2 strategies x 2 seeds


@pytest.fixture(scope="module")
def in_process(tiny_engine, cells):
    """The rows the in-process sweep writes, by key."""
    rows = [r for chunk in chunked(cells, 4) for r in run_cells(tiny_engine, chunk, PROMPTS)]
    return {r["key"]: _stable(r) for r in rows}


@pytest.fixture(scope="module")
def options(tiny_model_dir):
    return dataclasses.asdict(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))


def _stable(row):
    """The row as rows.jsonl holds it (JSON: lists, null), less when and where it ran."""
    return {k: v for k, v in json.loads(json.dumps(jsonable(row))).items() if k not in VOLATILE}


def assert_same_rows(got: dict, want: dict) -> None:
    """Same cells, and in each the same tokens, text, finish, params, engine, fingerprint;
    the same logprobs and metrics up to float rounding."""
    assert sorted(got) == sorted(want)
    for key, row in got.items():
        exact = {k: v for k, v in row.items() if k not in ROUNDED}
        assert exact == {k: v for k, v in want[key].items() if k not in ROUNDED}, key
        assert row["logprobs"] == pytest.approx(want[key]["logprobs"], abs=1e-5), key
        assert row["metrics"] == pytest.approx(want[key]["metrics"], rel=1e-5), key


def test_ray_sweep_gives_the_in_process_rows(cluster, cells, in_process, options):
    fan = RayFanOut(options, PROMPTS, workers=2)
    try:
        rows = list(fan.rows(chunked(cells, 4)))
    finally:
        fan.close()
    assert len(cells) == 12 and len(rows) == 12
    assert_same_rows({r["key"]: _stable(r) for r in rows}, in_process)  # same seeds -> same tokens
    assert len({r["worker"] for r in rows}) == 2 and all(r["worker"].startswith("ray:") for r in rows)


def test_a_killed_actor_loses_no_finished_cell_and_the_rerun_finishes(cluster, cells, in_process, options,
                                                                       tmp_path):
    fan = RayFanOut(options, PROMPTS, workers=1)
    kept = 0
    with RowStore(tmp_path) as store, pytest.raises(RayError, match="every Ray worker died"):
        for row in fan.rows(chunked(cells, 4)):
            store.append(row)
            kept += 1
            if kept == 1:
                ray.kill(fan.actors[0])  # mid-sweep: its chunk is still running
    assert 1 <= kept < len(cells)
    kept_rows = {r["key"]: _stable(r) for r in read_rows(tmp_path)}
    assert len(kept_rows) == kept
    assert_same_rows(kept_rows, {k: in_process[k] for k in kept_rows})

    # The rerun (what `tokenflow sweep` does with the same --out) runs the rest only.
    store = RowStore(tmp_path)
    todo = [[c for c in chunk if c.key not in store.done] for chunk in chunked(cells, 4)]
    todo = [c for c in todo if c]
    assert sum(map(len, todo)) == len(cells) - kept
    fan = RayFanOut(options, PROMPTS, workers=2)
    try:
        for row in fan.rows(todo):
            store.append(row)
    finally:
        fan.close()
        store.close()
    rows = read_rows(tmp_path)
    assert len(rows) == len(cells)
    assert_same_rows({r["key"]: _stable(r) for r in rows}, in_process)


def test_the_survivor_takes_a_dead_actors_cells(cluster, cells, in_process, options):
    fan = RayFanOut(options, PROMPTS, workers=2)
    rows = []
    try:
        for row in fan.rows(chunked(cells, 2)):
            rows.append(row)
            if len(rows) == 1:
                ray.kill(fan.actors[0])
    finally:
        fan.close()
    assert sorted(r["key"] for r in rows) == sorted(in_process)
    assert {r["key"]: r["token_ids"] for r in rows} == {k: r["token_ids"] for k, r in in_process.items()}
