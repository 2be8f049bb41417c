"""``tokenflow serve --ray-replicas 2`` as Ray Serve runs it: two replicas of the app
behind one endpoint on a real local Ray cluster (``ray.init(num_cpus=2)``), the tiny
model. Marker ``ray``: ``make test-ray``."""

import re
import threading
import time

import pytest

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from generator.config import EngineConfig  # noqa: E402
from server.settings import Settings  # noqa: E402

PORT = 8731
URL = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def replicas(tiny_model_dir):
    from ray import serve

    from server import ray_serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    settings = Settings(port=PORT, engine=EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="float32"))
    try:
        ray_serve.start(settings, replicas=2, wait_ready=300)
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def _stream(out: dict, i: int, max_tokens: int) -> None:
    t0 = time.perf_counter()
    stamps, texts = [], []
    body = {"model": "tokenflow", "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{URL}/v1/completions", json=body, timeout=120) as r:
        out[i] = {"status": r.status_code, "replica": r.headers.get("x-tokenflow-replica")}
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                stamps.append(time.perf_counter() - t0)
                texts.append(line)
            elif line == "data: [DONE]":
                out[i]["done"] = True
    out[i].update(stamps=stamps, chunks=len(texts))


def test_two_replicas_stream_two_concurrent_requests_token_by_token(replicas):
    # Both replicas are up: each /health answer names the replica that gave it.
    seen = {httpx.get(f"{URL}/health").headers["x-tokenflow-replica"] for _ in range(30)}
    assert len(seen) == 2
    out: dict = {}
    threads = [threading.Thread(target=_stream, args=(out, i, 200)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    for i in range(2):
        got = out[i]
        assert got["status"] == 200 and got.get("done"), got
        assert got["chunks"] >= 200  # a chunk a token (and one with the finish reason)
        # Token by token: the first chunk arrives well before the last one is produced,
        # and the chunks arrive spread over the generation, not in one burst at the end.
        first, last = got["stamps"][0], got["stamps"][-1]
        assert first < last / 2, (first, last)
        assert len({round(s, 3) for s in got["stamps"]}) > 20


def _tokens_by_replica(replicas: set[str] | None = None) -> dict[str, float]:
    """tokenflow_tokens_generated of each replica (``/metrics`` until each one answered)."""
    got: dict[str, float] = {}
    for _ in range(100):
        r = httpx.get(f"{URL}/metrics")
        got[r.headers["x-tokenflow-replica"]] = sum(
            float(v) for v in re.findall(r"^tokenflow_tokens_generated_total\{[^}]*\} (\S+)$", r.text, re.M))
        if len(got) == 2 and (replicas is None or replicas <= set(got)):
            return got
    raise AssertionError(f"only {sorted(got)} answered /metrics")


def test_a_client_that_leaves_stops_its_generation_on_its_replica(replicas):
    """/metrics is per replica; the replica that served a stream stops generating soon
    after its client hangs up (the whole 230 tokens are never made)."""
    before = _tokens_by_replica()
    body = {"model": "tokenflow", "prompt": "Once upon a time", "max_tokens": 230, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{URL}/v1/completions", json=body, timeout=60) as r:
        replica = r.headers["x-tokenflow-replica"]
        for line in r.iter_lines():
            if line.startswith("data: {") and '"text": ""' not in line:
                break  # the first token, then hang up
    time.sleep(2.0)  # more than the whole generation takes
    after = _tokens_by_replica({replica})
    made = after[replica] - before[replica]
    assert 1 <= made < 230, made
