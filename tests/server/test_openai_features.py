"""The OpenAI features that tools send, through the official ``openai`` client against
the tiny model served by a real uvicorn: content parts and roles, the Responses API
(whole and streamed), usage on every chunk, timings, and vLLM's output options."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from decoding import SamplingParams
from server_harness import iter_sse

NO_EOS = {"ignore_eos": True}
PLAIN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"}]


def greedy(engine, prompt, n, chat=True, **params):
    return engine.generate_text(prompt, SamplingParams(max_new_tokens=n, ignore_eos=True, **params), chat=chat)


def test_content_parts_and_developer_role_read_as_plain_messages(client, tiny_engine):
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Once upon a time"}]}]
    got = client.chat.completions.create(model="tokenflow", messages=parts, max_tokens=6, temperature=0,
                                         extra_body=NO_EOS)
    assert got.choices[0].message.content == greedy(tiny_engine, PLAIN, 6)
    assert got.usage.prompt_tokens == len(tiny_engine.encode(PLAIN, chat=True))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tokenflow", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    assert err.value.body["param"] == "messages"


def test_responses_whole(client, tiny_engine):
    r = client.responses.create(model="tokenflow", instructions="Be brief.", input="Once upon a time",
                                max_output_tokens=6, temperature=0, extra_body=NO_EOS)
    assert r.object == "response" and r.id.startswith("resp")
    assert r.output_text == greedy(tiny_engine, PLAIN, 6)
    # max_output_tokens cut it: OpenAI's "incomplete", with the reason
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (len(tiny_engine.encode(PLAIN, chat=True)), 6)
    assert r.usage.total_tokens == r.usage.input_tokens + 6


def test_responses_input_as_messages_with_parts(client, tiny_engine):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "Once upon a time"}]
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
             {"role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
             {"role": "user", "content": "Once upon a time"}]
    r = client.responses.create(model="tokenflow", input=items, max_output_tokens=5, temperature=0,
                                extra_body=NO_EOS)
    assert r.output_text == greedy(tiny_engine, history, 5)


def test_responses_stream_events_in_order(client, tiny_engine):
    stream = client.responses.create(model="tokenflow", input=[{"role": "user", "content": "Once upon a time"}],
                                     max_output_tokens=8, temperature=0, stream=True, extra_body=NO_EOS)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    expected = greedy(tiny_engine, [{"role": "user", "content": "Once upon a time"}], 8)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected
    assert events[-4].text == expected and events[-1].response.output_text == expected
    assert events[-1].response.usage.output_tokens == 8
    # An end before the limit (here a stop string) is "completed".
    stop = expected[2:4]
    done = list(client.responses.create(model="tokenflow", input=[{"role": "user", "content": "Once upon a time"}],
                                        max_output_tokens=8, temperature=0, stream=True,
                                        extra_body={**NO_EOS, "stop": [stop]}))
    assert done[-1].type == "response.completed" and done[-1].response.status == "completed"
    assert done[-1].response.output_text == expected[:expected.index(stop)]


def test_responses_refuses_what_it_cannot_do(client):
    for kwargs, param in [({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
                          ({"previous_response_id": "resp_1"}, "previous_response_id"),
                          ({"max_output_tokens": 0}, "max_output_tokens")]:
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model="tokenflow", input="hi", **kwargs)
        assert param in (err.value.body.get("param") or "") + err.value.message, kwargs


def test_continuous_usage_stats_and_timings(client, tiny_engine):
    chunks = list(client.chat.completions.create(
        model="tokenflow", messages=PLAIN, max_tokens=5, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}, extra_body=NO_EOS))
    prompt_n = len(tiny_engine.encode(PLAIN, chat=True))
    # Every chunk counts the tokens so far: 0 with the role, one more per token chunk.
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == [0, 1, 2, 3, 4, 5, 5, 5] and all(c.usage.prompt_tokens == prompt_n for c in chunks)
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == "length"
    timings = finish.model_extra["timings"]  # llama.cpp's names, on the choice's last chunk
    assert (timings["prompt_n"], timings["predicted_n"]) == (prompt_n, 4)
    assert timings["prompt_ms"] > 0 and timings["predicted_ms"] > 0
    assert timings["predicted_per_second"] == pytest.approx(4 / timings["predicted_ms"] * 1000, rel=1e-2)
    whole = client.completions.create(model="tokenflow", prompt="Once", max_tokens=3, extra_body=NO_EOS)
    assert whole.model_extra["timings"]["prompt_n"] == len(tiny_engine.encode("Once"))


def test_include_stop_str_in_output(client, tiny_engine):
    text = greedy(tiny_engine, "Once upon", 12, chat=False)
    stop = text[4:6]
    cut = text[:text.index(stop)]
    for include, expected in [(False, cut), (True, cut + stop)]:
        got = client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=12, temperature=0,
                                        stop=[stop], extra_body={**NO_EOS, "include_stop_str_in_output": include})
        assert got.choices[0].text == expected and got.choices[0].finish_reason == "stop"


def test_skip_special_tokens_false_shows_them(client, tiny_engine):
    unk = tiny_engine.tokenizer.convert_tokens_to_ids("<unk>")
    body = dict(model="tokenflow", prompt="Once", max_tokens=3, temperature=0, logit_bias={str(unk): 100})
    assert client.completions.create(**body, extra_body=NO_EOS).choices[0].text == ""
    shown = client.completions.create(**body, extra_body={**NO_EOS, "skip_special_tokens": False})
    assert shown.choices[0].text == "<unk>" * 3


def test_responses_raw_event_names_match_their_type(live):
    with httpx.stream("POST", live.url + "/v1/responses", json={"input": "hi", "max_output_tokens": 2,
                                                                "stream": True}, timeout=30) as res:
        events = list(iter_sse(res))
    events = [e for e in events if "data" in e]
    assert events and all(e["event"] == json.loads(e["data"])["type"] for e in events)
