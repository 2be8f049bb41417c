"""The prefix cache over HTTP on the tiny model (int4, the default model's formats):
``usage.prompt_tokens_details.cached_tokens`` reports the hit and the text is unchanged,
a fork of a finished ``/api/stream`` (``prefix_ids``) reuses its cached KV, ``/metrics``
counts hits, misses and bytes, ``/health`` says whether the cache runs and why."""

from __future__ import annotations

import httpx
import pytest

from generator import Engine
from server import Settings, create_app
from server_harness import LiveServer, data_json, iter_sse


@pytest.fixture(scope="module")
def tiny_int4(tiny_model_dir):
    return Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", num_slots=4,
                       max_len=160, prefix_cache_mb=4)


@pytest.fixture(scope="module")
def server(tiny_int4):
    live = LiveServer(create_app(Settings(), engine=tiny_int4))
    yield live
    live.stop()


def _chat(url: str, messages: list[dict]) -> dict:
    body = {"model": "tokenflow", "messages": messages, "max_tokens": 10, "temperature": 0, "ignore_eos": True}
    res = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert res.status_code == 200, res.text
    return res.json()


def _stream(url: str, **params) -> tuple[list[int], dict]:
    with httpx.stream("GET", url + "/api/stream", params={"strategy": "greedy", "ignore_eos": "true", **params},
                      timeout=60) as res:
        events = [e for e in iter_sse(res) if "event" in e]
    tokens = [data_json(e)["token_id"] for e in events if e["event"] == "token"]
    assert events[-1]["event"] == "done"
    return tokens, data_json(events[-1])


def test_cached_tokens_over_http_and_the_text_is_unchanged(server):
    messages = [{"role": "system", "content": "Streaming means every token reaches the user. " * 3},
                {"role": "user", "content": "Once upon a time"}]
    first = _chat(server.url, messages)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    again = _chat(server.url, messages)
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == again["usage"]["prompt_tokens"] - 1  # all but the last token, whose logits are needed
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    # turn 2 of the conversation: the first turn is cached
    turn2 = messages + [first["choices"][0]["message"], {"role": "user", "content": "The capital of France"}]
    assert _chat(server.url, turn2)["usage"]["prompt_tokens_details"]["cached_tokens"] >= cached

    health = httpx.get(server.url + "/health", timeout=10).json()["prefix_cache"]
    assert health["enabled"] and health["reason"] is None and health["used_bytes"] > 0
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("tokenflow_prefix_cache") and not line.startswith("#")}
    assert values["tokenflow_prefix_cache_hits_total"] >= 2 and values["tokenflow_prefix_cache_misses_total"] >= 1
    assert values["tokenflow_prefix_cache_bytes"] == health["used_bytes"] > 0
    assert values["tokenflow_prefix_cache_cached_tokens_total"] >= 2 * cached


def test_a_fork_of_a_finished_stream_reuses_its_cache(server):
    prompt = "Emoji travel in several bytes and so do the streams that carry them"
    tokens, done = _stream(server.url, prompt=prompt, max_tokens="30")
    assert done["cached_tokens"] == 0
    # fork after the 24th token: the prompt and those tokens are in the cache already
    fork, fork_done = _stream(server.url, prompt=prompt, max_tokens="6", prefix_ids=",".join(map(str, tokens[:24])))
    assert fork_done["cached_tokens"] >= 16
    assert fork == tokens[24:30]  # greedy: the fork continues exactly as the original did
