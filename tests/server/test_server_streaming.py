"""SSE behaviour over a real socket: order, [DONE], disconnects, /api/stream resume,
errors mid-stream, limits, metrics, health, auth and ``tokenflow serve``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from generator.config import EngineConfig
from server import Settings, create_app
from server_harness import (CHAT, LiveServer, free_port, StepEngine, data_json, iter_sse, serve,  # noqa: F401
                            wait_for_health, wait_until)


# -- OpenAI streams over httpx ------------------------------------------------------------
def test_first_chunk_arrives_before_generation_ends(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.02)
    server = serve(slow)
    body = {**CHAT, "max_tokens": 30, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        assert res.headers["cache-control"] == "no-cache" and res.headers["x-accel-buffering"] == "no"
        events = iter_sse(res)
        first = data_json(next(events))
        assert first["choices"][0]["delta"]["role"] == "assistant"
        content = data_json(next(events))
        assert "content" in content["choices"][0]["delta"]
        steps_at_first_token = slow.steps
        rest = [e for e in events if "data" in e]
    # The first token reached us while most of the generation was still to come.
    assert steps_at_first_token < 30 and slow.steps == 30
    assert rest[-1]["data"] == "[DONE]" and all(e["data"] != "[DONE]" for e in rest[:-1])
    assert data_json(rest[-2])["choices"][0]["finish_reason"] == "length"


def test_disconnect_stops_generation_within_one_step(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.05)
    server = serve(slow)
    body = {**CHAT, "max_tokens": 200, "temperature": 0, "stream": True}
    calls_before = tiny_engine.runner.forward_calls
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as res:
        events = iter_sse(res)
        for _ in range(4):  # role chunk + 3 tokens
            next(events)
    # The client is gone. The worker may finish the step it is in, then must stop.
    steps_at_close = slow.steps
    calls_at_close = tiny_engine.runner.forward_calls
    assert wait_until(lambda: server.app.state.scheduler.active_count == 0, timeout=5)
    time.sleep(0.3)  # several steps' worth: nothing more may happen
    assert slow.steps - steps_at_close <= 2
    assert tiny_engine.runner.forward_calls - calls_at_close <= 2
    assert tiny_engine.runner.forward_calls - calls_before < 20


def test_non_streaming_client_that_hangs_up_cancels(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.05)
    server = serve(slow)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 200, "ignore_eos": True},
                   timeout=0.3)
    assert wait_until(lambda: server.app.state.scheduler.active_count == 0, timeout=5)
    steps = slow.steps
    time.sleep(0.2)
    assert slow.steps == steps < 50


def test_mid_stream_failure_ends_with_an_error_event(serve, tiny_engine):
    server = serve(StepEngine(tiny_engine, fail_after=3))
    body = {**CHAT, "max_tokens": 10, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as res:
        events = [e for e in iter_sse(res) if "data" in e]
    last = data_json(events[-1])
    assert last["error"]["type"] == "server_error" and "simulated device failure" in last["error"]["message"]
    assert len(events) == 1 + 3 + 1 and "Traceback" not in json.dumps(last)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="tokenflow", messages=CHAT["messages"], max_tokens=10, stream=True))
    # Non-streaming: a 500 with an OpenAI body, and the server keeps serving.
    res = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 10})
    assert res.status_code == 500 and res.json()["error"]["code"] == "generation_failed"
    assert httpx.get(server.url + "/health").status_code == 200


def test_keepalive_comments_on_an_idle_stream(serve, tiny_engine):
    server = serve(StepEngine(tiny_engine, delay_s=0.25), keepalive_s=0.05)
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"prompt": "Once upon", "max_tokens": 2, "stream": True, "ignore_eos": True}) as res:
        raw = res.read().decode()
    assert ": ping" in raw and raw.rstrip().split("\n\n")[-1].startswith("data: [DONE]\nid: ")


def test_queue_full_is_429_with_retry_after(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.05)
    server = serve(slow, max_active=1, max_waiting=1, retry_after_s=3)
    body = {**CHAT, "max_tokens": 40, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as running:
        running_events = iter_sse(running)  # kept: dropping the iterator closes the response
        next(running_events)
        assert wait_until(lambda: server.app.state.scheduler.active_count == 1)
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as waiting:
            waiting_events = iter_sse(waiting)
            assert waiting.status_code == 200 and "role" in next(waiting_events)["data"]
            refused = httpx.post(server.url + "/v1/chat/completions", json=body)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            metrics = httpx.get(server.url + "/metrics").text
            assert "tokenflow_queue_depth 1.0" in metrics and "tokenflow_active_streams 2.0" in metrics


# -- /api/stream ------------------------------------------------------------------------
def read_api_stream(url, params=None, headers=None, limit=None):
    events = []
    with httpx.stream("GET", url + "/api/stream", params=params, headers=headers, timeout=30) as res:
        assert res.status_code == 200, res.read()
        for e in iter_sse(res):
            if "event" in e:
                events.append(e)
            if limit is not None and len(events) >= limit:
                break
    return events


def test_api_stream_events_and_text(serve, tiny_engine):
    server = serve(tiny_engine)
    params = {"prompt": "Once upon", "strategy": "sample", "seed": "4", "max_tokens": "12", "ignore_eos": "true"}
    events = read_api_stream(server.url, params)
    tokens, done = events[:-1], events[-1]
    assert [e["event"] for e in tokens] == ["token"] * 12 and done["event"] == "done"
    seqs = [int(e["id"].rsplit(".", 1)[1]) for e in events]
    assert seqs == list(range(len(events)))  # ids increase by one
    assert len({e["id"].rsplit(".", 1)[0] for e in events}) == 1
    stats = data_json(done)
    assert stats["finish_reason"] == "length" and stats["tokens"] == 12 and stats["ttft_ms"] > 0
    assert "tokens_per_s" in stats and stats["strategy"] == "sample"
    text = "".join(data_json(e)["text"] for e in tokens)
    answer = httpx.post(server.url + "/v1/completions", json={"prompt": "Once upon", "seed": 4, "max_tokens": 12,
                                                              "strategy": "sample", "ignore_eos": True}).json()
    assert text == answer["choices"][0]["text"]


def test_api_stream_resume_after_disconnect(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.03)
    server = serve(slow)
    params = {"prompt": "Once upon", "strategy": "greedy", "max_tokens": "20", "ignore_eos": "true"}
    first = read_api_stream(server.url, params, limit=5)
    steps_at_drop = slow.steps
    # The generation goes on without a reader (grace period) ...
    assert wait_until(lambda: slow.steps > steps_at_drop + 3)
    # ... and a reconnect gets exactly the events after the last one seen.
    rest = read_api_stream(server.url, params, headers={"Last-Event-ID": first[-1]["id"]})
    events = first + rest
    seqs = [int(e["id"].rsplit(".", 1)[1]) for e in events]
    assert seqs == list(range(21)) and events[-1]["event"] == "done"
    assert slow.steps == 20  # generated once, not again for the reconnect
    text = "".join(data_json(e)["text"] for e in events[:-1])
    answer = httpx.post(server.url + "/v1/completions", json={"prompt": "Once upon", "temperature": 0,
                                                              "max_tokens": 20, "ignore_eos": True}).json()
    assert text == answer["choices"][0]["text"]
    # Resuming from the middle again works too (query form), and after the end there is nothing more.
    again = read_api_stream(server.url, {"last_event_id": events[10]["id"]})
    assert again == events[11:]
    res = httpx.get(server.url + "/api/stream", headers={"Last-Event-ID": events[-1]["id"]})
    assert res.status_code == 204


def test_api_stream_is_cancelled_after_the_grace_period(serve, tiny_engine):
    slow = StepEngine(tiny_engine, delay_s=0.05)
    server = serve(slow, resume_grace_s=0.2)
    params = {"prompt": "Once upon", "max_tokens": "200", "ignore_eos": "true"}
    first = read_api_stream(server.url, params, limit=2)
    assert wait_until(lambda: server.app.state.scheduler.active_count == 0, timeout=5)
    steps = slow.steps
    time.sleep(0.3)
    assert slow.steps == steps < 50
    res = httpx.get(server.url + "/api/stream", headers={"Last-Event-ID": first[-1]["id"]})
    assert res.status_code == 404 and res.json()["error"]["code"] == "stream_not_found"


def test_api_stream_bad_input(serve, tiny_engine):
    server = serve(tiny_engine)
    for params, field in [({"prompt": "hi", "top_p": "2"}, "top_p"), ({"prompt": "hi", "top_k": "many"}, "top_k"),
                          ({"prompt": "hi", "wizard": "1"}, "wizard"), ({}, "prompt")]:
        res = httpx.get(server.url + "/api/stream", params=params)
        assert res.status_code == 400 and res.json()["error"]["param"] == field


# -- service routes, auth, loading --------------------------------------------------------------
def test_metrics_count_what_happened(serve, tiny_engine):
    server = serve(tiny_engine)
    for _ in range(2):
        httpx.post(server.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 3, "ignore_eos": True,
                                                         "temperature": 0})
    httpx.post(server.url + "/v1/completions", json={"prompt": "Once", "top_p": 9})
    httpx.get(server.url + "/no/such/route")
    text = httpx.get(server.url + "/metrics").text
    assert 'tokenflow_requests_total{method="POST",route="/v1/completions",status="200"} 2.0' in text
    assert 'tokenflow_requests_total{method="POST",route="/v1/completions",status="400"} 1.0' in text
    assert 'tokenflow_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'tokenflow_tokens_generated_total{strategy="greedy"} 6.0' in text
    assert 'tokenflow_time_to_first_token_seconds_count{strategy="greedy"} 2.0' in text
    assert 'tokenflow_inter_token_latency_seconds_count{strategy="greedy"} 4.0' in text
    assert 'tokenflow_request_duration_seconds_count{finish_reason="length",strategy="greedy"} 2.0' in text


def test_health_strategies_and_unknown_route(serve, tiny_engine):
    server = serve(tiny_engine)
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert health.json()["device"] == "cpu" and health.json()["gpu"] is None  # named on CUDA (tests/gpu/)
    names = [s["name"] for s in httpx.get(server.url + "/strategies").json()["strategies"]]
    assert {"greedy", "sample", "beam"} <= set(names)
    res = httpx.get(server.url + "/v1/nothing")
    assert res.status_code == 404 and res.json()["error"]["type"] == "not_found_error"
    res = httpx.post(server.url + "/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert res.status_code == 400 and res.json()["error"]["code"] == "invalid_json"


def test_api_key_required_on_v1(serve, tiny_engine):
    server = serve(tiny_engine, api_key="s3cret")
    anon = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anon.models.list()
    assert httpx.post(server.url + "/v1/completions", json={"prompt": "hi"}).status_code == 401
    good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
    assert good.completions.create(model="tokenflow", prompt="hi", max_tokens=2).choices
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    # EventSource cannot send headers: /api/stream takes the key in the query instead.
    assert httpx.get(server.url + "/api/stream", params={"prompt": "hi"}).status_code == 401
    events = read_api_stream(server.url, {"prompt": "hi", "max_tokens": "2", "api_key": "s3cret"})
    assert events[-1]["event"] == "done"


def test_loading_then_ready_and_failed_load(monkeypatch, tiny_engine):
    from generator import Engine

    release = threading.Event()

    def slow_load(config, progress):
        progress("converting", "converting whatever.gguf")
        release.wait(10)
        return tiny_engine

    monkeypatch.setattr(Engine, "from_config", staticmethod(slow_load))
    server = LiveServer(create_app(Settings(engine=EngineConfig(model="whatever"))), wait_ready=False)
    try:
        # /health names the stage in hand and the share of the load's stages already done.
        assert wait_until(lambda: httpx.get(server.url + "/health").json().get("stage") == "converting")
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert (health.json()["progress"], health.json()["detail"]) == (0.25, "converting whatever.gguf")
        res = httpx.post(server.url + "/v1/completions", json={"prompt": "hi"})
        assert res.status_code == 503 and res.json()["error"]["code"] == "model_loading"
        release.set()
        server.wait_ready()
    finally:
        server.stop()

    def broken_load(*args, **kwargs):
        raise OSError("no such model folder")

    monkeypatch.setattr(Engine, "from_config", staticmethod(broken_load))
    server = LiveServer(create_app(Settings(engine=EngineConfig(model="nowhere"))), wait_ready=False)
    try:
        assert wait_until(lambda: httpx.get(server.url + "/health").json()["status"] == "error")
        res = httpx.post(server.url + "/v1/completions", json={"prompt": "hi"})
        assert res.status_code == 503 and "no such model folder" in res.json()["error"]["message"]
    finally:
        server.stop()


def test_tokenflow_serve_command(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "TOKENFLOW_API_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "generator.cli", "serve", "--model", str(tiny_model_dir),
                             "--device", "cpu", "--port", str(port), "--log-level", "warning",
                             "--quant", "int4", "--activations", "bf16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_health(url, proc, interval=0.2)
        # The model's loop runs on the process's main thread (uvicorn on another): a torch
        # loop on a second thread decodes at about half speed here (server.scheduler.WorkerHost).
        health = httpx.get(url + "/health").json()
        assert health["worker_thread"] == "MainThread"
        # The flags reach the engine (auto would pick int8 where the CPU has VNNI).
        assert (health["quant"], health["activations"]) == ("int4", "bf16")
        # /health shows the resolved engine configuration: every "auto" settled, kernels named with why.
        engine = health["engine"]
        assert (engine["quant"], engine["activations"], engine["device"]) == ("int4", "bf16", "cpu")
        assert engine["kernels"] in ("avx512", "avx2", "portable", "aten") and engine["kernels_reason"]
        assert "auto" not in (engine["dtype"], engine["head"], engine["device"])
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        chunks = list(client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=3, stream=True,
                                                extra_body={"ignore_eos": True}))
        assert chunks[-1].choices[0].finish_reason == "length"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(20)
    assert code == 0
    assert "Traceback" not in proc.stderr.read()


def test_tokenflow_serve_port_taken_exits_nonzero(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "generator.cli", "serve", "--model", str(tiny_model_dir),
                              "--device", "cpu", "--port", str(port), "--log-level", "warning",
                             "--quant", "int4", "--activations", "bf16"],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "address already in use" in res.stderr.lower()


def test_serve_bad_flag_is_one_line():
    res = subprocess.run([sys.executable, "-m", "generator.cli", "serve", "--port", "99999"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--port" in res.stderr
