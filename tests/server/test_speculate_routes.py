"""The per-request ``speculative`` field over HTTP: a bad method, k or n is a 400 naming the
field on every route; a good one gives the same tokens as without, streamed one event per
token (the tiny model with int4 weights, where speculation runs)."""

from __future__ import annotations

import json

import httpx
import pytest

from server_harness import LiveServer, data_json, iter_sse

PROMPT = "the cat sat on the mat. the cat sat on the mat. the cat sat on the mat. the cat"
SPEC = {"method": "ngram", "k": 4, "n": 3, "min_n": 1}


@pytest.fixture(scope="module")
def int4_engine(tiny_model_dir):
    from generator import Engine

    return Engine.load(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", quant="int4", max_len=256)


@pytest.fixture(scope="module")
def url(int4_engine):
    from server import Settings, create_app

    server = LiveServer(create_app(Settings(), engine=int4_engine))
    yield server.url
    server.stop()


@pytest.mark.parametrize("bad,word", [({"method": "ngram", "k": 0}, "k"), ({"method": "eagle"}, "method"),
                                      ({"method": "ngram", "n": 99}, "n"), ("ngram:k=x", "k")])
def test_a_bad_speculative_field_is_400_naming_it(url, bad, word):
    for path, body in (("/v1/completions", {"prompt": "Once"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Once"}]})):
        res = httpx.post(url + path, json={**body, "max_tokens": 2, "speculative": bad})
        assert res.status_code == 400, res.text
        err = res.json()["error"]
        assert err["param"] == "speculative" and f"{word} " in err["message"]
    q = bad if isinstance(bad, str) else json.dumps(bad)
    res = httpx.get(url + "/api/stream", params={"prompt": "Once", "max_tokens": 2, "speculative": q})
    assert res.status_code == 400 and res.json()["error"]["param"] == "speculative"


def test_speculation_over_http_gives_the_same_tokens_one_event_each(url, int4_engine):
    body = {"prompt": PROMPT, "max_tokens": 30, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    plain = httpx.post(url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    before = int4_engine.spec_counts.drafted if hasattr(int4_engine, "spec_counts") else 0
    spec = httpx.post(url + "/v1/completions", json={**body, "speculative": SPEC}, timeout=60).json()["choices"][0]
    assert spec["text"] == plain["text"] and spec["logprobs"]["tokens"] == plain["logprobs"]["tokens"]
    assert int4_engine.spec_counts.drafted > before
    metrics = httpx.get(url + "/metrics").text
    drafted = next(line for line in metrics.splitlines() if line.startswith("tokenflow_speculative_draft_tokens_total"))
    assert float(drafted.split()[-1]) >= int4_engine.spec_counts.drafted - before > 0
    assert "tokenflow_speculative_accepted_tokens_total" in metrics
    params = {"prompt": PROMPT, "max_tokens": 30, "ignore_eos": "true", "strategy": "sample", "seed": "3"}
    streams = []
    for extra in ({}, {"speculative": "ngram:k=4,n=3,min_n=1"}):
        with httpx.stream("GET", url + "/api/stream", params={**params, **extra}, timeout=60) as res:
            assert res.status_code == 200
            streams.append([data_json(e) for e in iter_sse(res) if e.get("event") == "token"])
    assert len(streams[1]) == 30 and streams[1] == streams[0]
