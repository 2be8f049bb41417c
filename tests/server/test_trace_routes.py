"""The decision trace and ``logprobs_mode`` over HTTP: ``trace: true`` on the OpenAI routes
(an extra field, as vLLM takes them) and ``trace=1`` on ``/api/stream``, against the
engine's own trace of the same request."""

from __future__ import annotations

import httpx
import openai
import pytest

from decoding import SamplingParams
from server_harness import data_json, iter_sse

SETTINGS = {"temperature": 0.8, "top_k": 20, "seed": 4, "ignore_eos": True}


def engine_traces(engine, prompt, n, **settings):
    params = SamplingParams(strategy="sample", max_new_tokens=n, trace=True, **settings)
    return [ev.trace for ev in engine.stream(prompt, params)]


def test_completions_carry_one_trace_per_token(client, tiny_engine):
    got = client.completions.create(model="tokenflow", prompt="Once upon a time", max_tokens=5,
                                    extra_body={**SETTINGS, "strategy": "sample", "trace": True})
    choice = got.model_dump()["choices"][0]
    want = engine_traces(tiny_engine, "Once upon a time", 5, temperature=0.8, top_k=20, seed=4, ignore_eos=True)
    assert [t["links"] for t in choice["trace"]] == [t["links"] for t in want]
    assert [t["rank"] for t in choice["trace"]] == [t["rank"] for t in want]
    assert [n["name"] for n in choice["trace"][0]["links"]] == ["temperature", "top_k"]
    plain = client.completions.create(model="tokenflow", prompt="Once upon a time", max_tokens=3,
                                      extra_body=SETTINGS)
    assert "trace" not in plain.model_dump()["choices"][0]


def test_streamed_chat_chunks_carry_the_trace(client):
    stream = client.chat.completions.create(
        model="tokenflow", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True,
        extra_body={**SETTINGS, "trace": True})
    traces = [t for chunk in stream for c in chunk.model_dump()["choices"] for t in (c.get("trace") or [])]
    assert len(traces) == 4
    assert all(t["links"][0]["name"] == "temperature" and t["links"][1]["kept"] <= 20 for t in traces)


def test_bad_logprobs_mode_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tokenflow", prompt="x", max_tokens=2, extra_body={"logprobs_mode": "cooked"})
    assert err.value.body["param"] == "logprobs_mode"


def test_api_stream_trace_and_processed_alternatives(live, tiny_engine):
    query = {"prompt": "Once upon a time", "max_tokens": 4, "strategy": "top_k", "top_k": 3, "seed": 2,
             "ignore_eos": "true", "trace": "1", "logprobs": 5, "logprobs_mode": "processed"}
    with httpx.stream("GET", live.url + "/api/stream", params=query, timeout=60) as res:
        tokens = [data_json(e) for e in iter_sse(res) if e.get("event") == "token"]
    assert len(tokens) == 4
    for tok in tokens:
        assert [n["name"] for n in tok["trace"]["links"]] == ["top_k"] and tok["trace"]["links"][0]["kept"] == 3
        # processed alternatives: only what top-k kept, renormalised
        assert len(tok["top_logprobs"]) == 3
        assert sum(2.718281828 ** a["logprob"] for a in tok["top_logprobs"]) == pytest.approx(1.0, abs=1e-4)
        assert tok["trace"]["processed_logprob"] >= tok["logprob"]


def test_dry_breakers_as_text_over_http(client, live):
    got = client.completions.create(model="tokenflow", prompt="Once upon a time", max_tokens=3, extra_body={
        "strategy": "dry", "seed": 1, "dry_sequence_breakers": ["\n", ":", "\"", "*"]})
    assert got.usage.completion_tokens == 3
    from server.web.query import _convert

    kind = "tuple[int | str, ...]"
    assert _convert(kind, ["1,2", ":"]) == ("1", "2", ":")  # ids as the page sends them, or a text
    assert SamplingParams(strategy="dry", dry_sequence_breakers=_convert(kind, ["1,2", ":"])).dry_sequence_breakers \
        == (1, 2, ":")


def test_api_stream_prefix_ids_continue_after_them(live, tiny_engine):
    prefix = [40, 41, 42]
    query = {"prompt": "Once upon a time", "max_tokens": 5, "ignore_eos": "true", "prefix_ids": "40,41,42"}
    with httpx.stream("GET", live.url + "/api/stream", params=query, timeout=60) as res:
        got = [data_json(e)["token_id"] for e in iter_sse(res) if e.get("event") == "token"]
    ids = tiny_engine.encode("Once upon a time") + prefix
    assert got == [ev.token_id for ev in tiny_engine.stream(ids, SamplingParams(max_new_tokens=5, ignore_eos=True))]
    for bad in ("1,x", "99999"):
        res = httpx.get(live.url + "/api/stream", params={**query, "prefix_ids": bad}, timeout=30)
        assert res.status_code == 400 and res.json()["error"]["param"] == "prefix_ids"


def test_api_stream_prefix_ids_fork_a_sampled_stream(live, tiny_engine):
    settings = dict(strategy="top_k", top_k=40, presence_penalty=1.5, seed=11)
    whole = [ev.token_id for ev in tiny_engine.stream("Once upon a time", SamplingParams(max_new_tokens=12, ignore_eos=True, **settings))]
    query = {"prompt": "Once upon a time", "max_tokens": 12 - 4, "ignore_eos": "true", "prefix_ids": ",".join(map(str, whole[:4])),
             **{k: str(v) for k, v in settings.items()}}
    with httpx.stream("GET", live.url + "/api/stream", params=query, timeout=60) as res:
        got = [data_json(e)["token_id"] for e in iter_sse(res) if e.get("event") == "token"]
    assert got == whole[4:]


def test_responses_carry_the_trace_whole_and_streamed(client, tiny_engine):
    want = engine_traces(tiny_engine, tiny_engine.encode("Hi", chat=True), 4, temperature=0.8, top_k=20, seed=4,
                         ignore_eos=True)
    body = {**SETTINGS, "strategy": "sample", "trace": True}
    got = client.responses.create(model="tokenflow", input="Hi", max_output_tokens=4, extra_body=body)
    part = got.model_dump()["output"][0]["content"][0]
    assert [t["rank"] for t in part["trace"]] == [t["rank"] for t in want]
    assert [t["links"] for t in part["trace"]] == [t["links"] for t in want]
    deltas, done = [], None
    for ev in client.responses.create(model="tokenflow", input="Hi", max_output_tokens=4, stream=True,
                                      extra_body=body):
        dumped = ev.model_dump()
        if ev.type == "response.output_text.delta":
            deltas += dumped["trace"]
        elif ev.type in ("response.completed", "response.incomplete"):
            done = dumped["response"]["output"][0]["content"][0]["trace"]
    assert [t["rank"] for t in deltas] == [t["rank"] for t in want] == [t["rank"] for t in done]
    plain = client.responses.create(model="tokenflow", input="Hi", max_output_tokens=2, extra_body=SETTINGS)
    assert "trace" not in plain.model_dump()["output"][0]["content"][0]
