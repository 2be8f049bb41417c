"""The server on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import httpx
import openai
import pytest

from decoding import SamplingParams
from server import Settings, create_app
from server_harness import LiveServer, data_json, iter_sse

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def live(default_engine):
    server = LiveServer(create_app(Settings(), engine=default_engine))
    yield server
    server.stop()


def test_openai_client_streams_the_in_process_answer(live, default_engine):
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = default_engine.generate_text(MESSAGES, SamplingParams(strategy="greedy", max_new_tokens=24), chat=True)
    assert text == expected and "Paris" in text
    assert chunks[-1].usage.completion_tokens == sum(1 for c in chunks if c.choices and c.choices[0].delta.content
                                                     is not None and c.choices[0].delta.role is None)
    whole = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=24, temperature=0)
    assert whole.choices[0].message.content == expected


def test_api_stream_chat_on_the_real_model(live, default_engine):
    params = {"prompt": MESSAGES[0]["content"], "chat": "true", "strategy": "sample", "seed": "7",
              "temperature": "0.7", "top_p": "0.9", "max_tokens": "20"}
    with httpx.stream("GET", live.url + "/api/stream", params=params, timeout=60) as res:
        events = [e for e in iter_sse(res) if "event" in e]
    assert events[-1]["event"] == "done"
    text = "".join(data_json(e)["text"] for e in events if e["event"] == "token")
    expected = default_engine.generate_text(MESSAGES[0]["content"], SamplingParams(
        strategy="sample", seed=7, temperature=0.7, top_p=0.9, max_new_tokens=20), chat=True)
    assert text == expected
