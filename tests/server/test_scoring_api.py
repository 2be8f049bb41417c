"""Scoring through /v1/completions as evaluation harnesses call it (echo, prompt logprobs,
several prompts, max_tokens 0 or 1) and token identity to the byte, against transformers
on the tiny model served by a real uvicorn."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from decoding import SamplingParams

TEXTS = ["Once upon a time there was", "Café, naïve 🙂 日本語", "Paris"]


def _reference(engine, ids: list[int]) -> list[float]:
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1)
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def _post(live, body, path="/v1/completions"):
    return httpx.post(live.url + path, json=body, timeout=60)


def test_echo_scores_several_prompts_in_one_forward(live, tiny_engine):
    """Texts and id lists, max_tokens 0: one choice per prompt in order, the prompt's
    tokens with null first and transformers' logprobs after, one forward in all."""
    ids2 = tiny_engine.encode(TEXTS[2])
    runner = tiny_engine.runner
    calls = runner.forward_calls
    r = _post(live, {"prompt": TEXTS[:2], "echo": True, "logprobs": 2,
                     "max_tokens": 0})
    assert r.status_code == 200, r.text
    assert runner.forward_calls == calls + 1  # both prompts in one forward, no decode step
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for text, choice in zip(TEXTS, body["choices"]):
        ids = tiny_engine.encode(text)
        lp = choice["logprobs"]
        assert choice["text"] == text and choice["finish_reason"] == "length"
        assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["token_logprobs"][1:] == pytest.approx(_reference(tiny_engine, ids), abs=1e-4)
        assert all(len(top) <= 2 for top in lp["top_logprobs"][1:])
        assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
        assert all("\ufffd" not in t for t in lp["tokens"])
    assert body["usage"]["prompt_tokens"] == sum(len(tiny_engine.encode(t)) for t in TEXTS[:2])
    assert body["usage"]["completion_tokens"] == 0
    # token-id prompts: the same numbers, the text decoded
    r = _post(live, {"prompt": [tiny_engine.encode(TEXTS[0]), ids2], "echo": True, "logprobs": 0, "max_tokens": 0})
    choices = r.json()["choices"]
    assert choices[0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
        _reference(tiny_engine, tiny_engine.encode(TEXTS[0])), abs=1e-4)
    assert choices[1]["text"] == TEXTS[2]


def test_echo_with_one_token_as_lm_eval_sends_it(live, tiny_engine):
    """max_tokens 1 (what lm-eval's local-completions sends): the prompt's logprobs, then
    the generated token, whose logprob is the greedy one; the text is prompt + token."""
    ids = tiny_engine.encode(TEXTS[0])
    r = _post(live, {"prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0,
                     "ignore_eos": True})
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1
    assert lp["token_logprobs"][1:-1] == pytest.approx(_reference(tiny_engine, ids), abs=1e-4)
    ev = next(iter(tiny_engine.stream(ids, SamplingParams(max_new_tokens=1, ignore_eos=True, logprobs=1))))
    assert lp["token_logprobs"][-1] == pytest.approx(ev.logprob, abs=1e-4)
    assert choice["text"] == TEXTS[0] + ev.text
    assert lp["text_offset"][-1] == len(TEXTS[0])
    assert max(lp["top_logprobs"][-1], key=lp["top_logprobs"][-1].get) == lp["tokens"][-1]  # greedy


def test_several_prompts_generate_in_order(live, tiny_engine):
    r = _post(live, {"prompt": ["Once upon", "The capital"], "max_tokens": 4, "temperature": 0, "n": 2,
                     "ignore_eos": True})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for k, prompt in enumerate(["Once upon", "The capital"]):
        want = tiny_engine.generate_text(prompt, SamplingParams(max_new_tokens=4, ignore_eos=True))
        assert choices[2 * k]["text"] == choices[2 * k + 1]["text"] == want


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a", "echo": True, "stream": True}, "stream"),
    ({"prompt": ["a", "b"], "stream": True, "max_tokens": 2}, "stream"),
    ({"prompt": "a", "echo": True, "max_tokens": -1}, "max_tokens"),
    ({"prompt": ["a", [99999]], "echo": True}, "prompt"),
    ({"prompt": [[1, 2], [99999]], "echo": True, "max_tokens": 0}, "prompt"),
])
def test_bad_scoring_requests(live, body, param):
    r = _post(live, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize("text", ["naïve café, jalapeño señor", "🙂🚀🎉", "日本語 Ελληνικά", "a🙂b日"])
def test_logprob_bytes_round_trip(live, tiny_engine, text):
    """The generated text forced to ``text``: every token's ``bytes`` joined equal its
    UTF-8, no token shows a lone U+FFFD, and a piece of a character prints as \\xNN."""
    body = {"messages": [{"role": "user", "content": "say it"}], "max_tokens": 40, "logprobs": True,
            "top_logprobs": 2, "guided_choice": [text]}
    r = _post(live, body, "/v1/chat/completions")
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == text
    content = choice["logprobs"]["content"]
    data = b"".join(bytes(e["bytes"]) for e in content)
    assert data == text.encode("utf-8")
    assert any("\\x" in e["token"] for e in content)  # the tiny vocabulary splits each of these texts' characters
    for e in content:
        assert "\ufffd" not in e["token"]
        assert e["token"] == bytes(e["bytes"]).decode("utf-8", "backslashreplace")
        for alt in e["top_logprobs"]:
            assert alt["token"] == bytes(alt["bytes"]).decode("utf-8", "backslashreplace")


def test_tokenize_and_detokenize(live, tiny_engine):
    text = "naïve 🙂 日本語"
    r = _post(live, {"prompt": text}, "/tokenize").json()
    ids = tiny_engine.encode(text)
    assert r["tokens"] == ids and r["count"] == len(ids) and r["max_model_len"] == tiny_engine.context_length
    assert b"".join(bytes(b) for b in r["bytes"]) == text.encode("utf-8")
    assert [bytes(b).decode("utf-8", "backslashreplace") for b in r["bytes"]] == r["pieces"]
    data = text.encode("utf-8")
    assert [data[s:e] for s, e in r["offsets"]] == [bytes(b) for b in r["bytes"]]
    assert all("\ufffd" not in p for p in r["pieces"])
    chat = _post(live, {"messages": [{"role": "user", "content": text}]}, "/tokenize").json()
    assert chat["tokens"] == tiny_engine.encode([{"role": "user", "content": text}], chat=True)
    back = _post(live, {"tokens": ids}, "/detokenize").json()
    assert back["prompt"] == text and back["count"] == len(ids)
    info = httpx.get(live.url + "/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and info["bos_token"] == "<s>" and "chat_template" in info


@pytest.mark.parametrize("path, body, param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ("/tokenize", {"prompt": "\ud800"}, "prompt"),
    ("/detokenize", {"tokens": [99999]}, "tokens"),
    ("/tokenize", {"prompt": "a", "model": "other"}, "model"),
])
def test_tokenize_errors(live, path, body, param):
    r = httpx.post(live.url + path, content=json.dumps(body), timeout=30,
                   headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"] == param
