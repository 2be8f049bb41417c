"""The OpenAI-compatible routes, driven by the official ``openai`` client against a
real uvicorn on 127.0.0.1 serving the tiny random model."""

from __future__ import annotations

import openai
import pytest

from decoding import SamplingParams

MESSAGES = [{"role": "user", "content": "Once upon a time"}]
NO_EOS = {"ignore_eos": True}  # the random model may emit EOS at any step; fixed lengths are easier to check


def engine_events(engine, prompt, chat=False, **params):
    return list(engine.stream(prompt, SamplingParams(**params), chat=chat))


def test_chat_streaming_shape_and_text(client, tiny_engine):
    stream = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body=NO_EOS)
    chunks = list(stream)
    expected = engine_events(tiny_engine, MESSAGES, chat=True, strategy="greedy", max_new_tokens=8, ignore_eos=True)
    first, *middle, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and not first.choices[0].delta.content
    # One content delta per token event, in order, then a chunk carrying only the finish reason.
    assert [c.choices[0].delta.content for c in middle] == [ev.text for ev in expected]
    assert finish.choices[0].finish_reason == "length" and not finish.choices[0].delta.content
    assert usage.choices == [] and usage.usage.completion_tokens == 8
    assert usage.usage.prompt_tokens == len(tiny_engine.encode(MESSAGES, chat=True))
    assert all(c.id == first.id and c.object == "chat.completion.chunk" for c in chunks)


def test_chat_non_streaming_equals_streaming(client, tiny_engine):
    kwargs = dict(model="tokenflow", messages=MESSAGES, max_completion_tokens=10, seed=11, extra_body=NO_EOS)
    whole = client.chat.completions.create(**kwargs)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kwargs, stream=True)
                       if c.choices)
    expected = tiny_engine.generate_text(MESSAGES, SamplingParams(strategy="sample", seed=11, max_new_tokens=10,
                                                                  ignore_eos=True), chat=True)
    assert whole.choices[0].message.content == streamed == expected
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 10 and whole.object == "chat.completion"


def test_completions_streaming_and_not(client, tiny_engine):
    prompt = "The capital of France is"
    expected = engine_events(tiny_engine, prompt, strategy="greedy", max_new_tokens=6, ignore_eos=True)
    whole = client.completions.create(model="tokenflow", prompt=prompt, max_tokens=6, temperature=0,
                                      extra_body=NO_EOS)
    assert whole.choices[0].text == "".join(ev.text for ev in expected)
    assert whole.usage.prompt_tokens == len(tiny_engine.encode(prompt))
    chunks = list(client.completions.create(model="tokenflow", prompt=prompt, max_tokens=6, temperature=0,
                                            stream=True, extra_body=NO_EOS))
    assert [c.choices[0].text for c in chunks[:-1]] == [ev.text for ev in expected]
    assert chunks[-1].choices[0].finish_reason == "length"
    # Token ids are a valid prompt too.
    by_ids = client.completions.create(model="tokenflow", prompt=tiny_engine.encode(prompt), max_tokens=6,
                                       temperature=0, extra_body=NO_EOS)
    assert by_ids.choices[0].text == whole.choices[0].text


def test_logprobs_match_the_engine(client, tiny_engine):
    expected = engine_events(tiny_engine, MESSAGES, chat=True, strategy="greedy", max_new_tokens=5, ignore_eos=True)
    res = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=5, temperature=0,
                                         logprobs=True, top_logprobs=2, extra_body=NO_EOS)
    content = res.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx([ev.logprob for ev in expected], abs=1e-5)
    assert all(c.logprob <= 0 and len(c.top_logprobs) <= 2 for c in content)
    streamed = [c.choices[0].logprobs.content[0].logprob
                for c in client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=5,
                                                        temperature=0, logprobs=True, stream=True, extra_body=NO_EOS)
                if c.choices and c.choices[0].logprobs]
    assert streamed == pytest.approx([ev.logprob for ev in expected], abs=1e-5)
    comp = client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=4, temperature=0, logprobs=1,
                                     extra_body=NO_EOS)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 4
    assert lp.text_offset[0] == 0 and all(v <= 0 for v in lp.token_logprobs)


def test_top_logprobs_alternatives(client):
    res = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=4, temperature=0,
                                         logprobs=True, top_logprobs=3, extra_body=NO_EOS)
    for entry in res.choices[0].logprobs.content:
        top = entry.top_logprobs
        assert len(top) == 3 and top[0].logprob >= top[1].logprob >= top[2].logprob
        # Greedy: the chosen token is the most likely one.
        assert top[0].token == entry.token and top[0].logprob == pytest.approx(entry.logprob, abs=1e-5)
    comp = client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=3, temperature=0, logprobs=2,
                                     extra_body=NO_EOS)
    lp = comp.choices[0].logprobs
    # A dict keyed by token text: two ids that decode alike (byte pieces) share a key.
    for chosen, alts in zip(lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(alts) <= 2 and max(alts.values()) == pytest.approx(chosen, abs=1e-5)


def test_vllm_filter_without_naming_a_strategy(client, tiny_engine):
    # Plain "sample" may not run min_p; the server picks a sampling strategy that does.
    res = client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=6, seed=2,
                                    extra_body={"min_p": 0.2, **NO_EOS})
    assert res.choices[0].text == tiny_engine.generate_text(
        "Once upon", SamplingParams(strategy="min_p", min_p=0.2, seed=2, max_new_tokens=6, ignore_eos=True))
    # Two filters no single-filter strategy runs together: a strategy running both, never one dropped.
    from server.openai.protocol import CompletionRequest

    params = CompletionRequest(prompt="x", top_k=5, min_p=0.1).to_sampling_params()
    assert {"top_k", "min_p"} <= set(params.resolved_strategy.fields)


def test_n_choices_use_consecutive_seeds(client, tiny_engine):
    res = client.chat.completions.create(model="tokenflow", messages=MESSAGES, n=2, seed=5, max_tokens=8,
                                         extra_body=NO_EOS)
    texts = [c.message.content for c in sorted(res.choices, key=lambda c: c.index)]
    for i, text in enumerate(texts):
        assert text == tiny_engine.generate_text(MESSAGES, SamplingParams(strategy="sample", seed=5 + i,
                                                                          max_new_tokens=8, ignore_eos=True), chat=True)
    assert res.usage.completion_tokens == 16
    chunks = list(client.chat.completions.create(model="tokenflow", messages=MESSAGES, n=2, seed=5, max_tokens=8,
                                                 stream=True, extra_body=NO_EOS))
    streamed = ["", ""]
    finished = set()
    for c in chunks:
        for choice in c.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert streamed == texts and finished == {0, 1}


def test_stop_string_cuts_the_answer(client, tiny_engine):
    full = tiny_engine.generate_text("Once upon", SamplingParams(strategy="greedy", max_new_tokens=12,
                                                                 ignore_eos=True))
    stop = next(full[i:i + 2] for i in range(3, len(full) - 1) if full[i:i + 2].strip() and full[i:i + 2] not in full[:i])
    res = client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=12, temperature=0, stop=[stop],
                                    extra_body=NO_EOS)
    assert res.choices[0].text == full[:full.index(stop)]
    assert res.choices[0].finish_reason == "stop"


def test_seed_reproducibility(client):
    def run(seed):
        return client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=12, seed=seed,
                                         temperature=1.0, extra_body=NO_EOS).choices[0].text

    assert run(3) == run(3)
    assert len({run(s) for s in (1, 2, 3, 4)}) > 1  # different seeds do not all agree on 12 sampled tokens


def test_vllm_style_extras_reach_sampling_params(client, tiny_engine):
    res = client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=6, seed=9,
                                    extra_body={"top_k": 3, "strategy": "sample", **NO_EOS})
    assert res.choices[0].text == tiny_engine.generate_text(
        "Once upon", SamplingParams(strategy="sample", top_k=3, seed=9, max_new_tokens=6, ignore_eos=True))
    beam = client.completions.create(model="tokenflow", prompt="Once upon", max_tokens=5,
                                     extra_body={"num_beams": 3, **NO_EOS})
    assert beam.choices[0].text == tiny_engine.generate_text(
        "Once upon", SamplingParams(strategy="beam", num_beams=3, max_new_tokens=5, ignore_eos=True))


@pytest.mark.parametrize("kwargs,param", [
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": -1}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"extra_body": {"top_k": -2}}, "top_k"),
    ({"extra_body": {"strategy": "wizard"}}, "strategy"),
    ({"extra_body": {"no_such_knob": 1}}, "no_such_knob"),
    ({"n": 0}, "n"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
])
def test_bad_input_is_a_bad_request_naming_the_field(client, kwargs, param):
    kwargs = {"model": "tokenflow", "messages": MESSAGES, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs)
    err = info.value.body
    assert info.value.status_code == 400 and err["param"] == param and param in err["message"]
    assert err["type"] == "invalid_request_error" and "Traceback" not in str(err)


def test_unsupported_openai_setting(client):
    # presence_penalty works once SamplingParams has it; until then it is a clear 400, never ignored.
    has_it = "presence_penalty" in SamplingParams.field_names()
    try:
        client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=2, presence_penalty=0.5)
        assert has_it
    except openai.BadRequestError as exc:
        assert not has_it and exc.body["param"] == "presence_penalty"
    # The neutral value is accepted either way.
    client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=2, presence_penalty=0)


def test_unknown_model_and_long_prompt(client, tiny_engine):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES, max_tokens=2)
    assert info.value.body["param"] == "model" and info.value.body["code"] == "model_not_found"
    long_prompt = "Once upon a time " * 200  # well past the tiny model's 256-token context
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tokenflow", prompt=long_prompt, max_tokens=2)
    assert info.value.body["code"] == "context_length_exceeded" and info.value.body["param"] == "prompt"


def test_models_route(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tokenflow"]


def test_system_fingerprint_names_the_arithmetic(client, tiny_engine):
    """Every OpenAI answer (whole or streamed) and /health carry the engine's fingerprint."""
    import httpx

    from generator.fingerprint import engine_fingerprint

    fp = engine_fingerprint(tiny_engine)
    assert fp.startswith("fp_") and len(fp) == 19
    whole = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=2, extra_body=NO_EOS)
    assert whole.system_fingerprint == fp
    assert client.completions.create(model="tokenflow", prompt="Once", max_tokens=2,
                                     extra_body=NO_EOS).system_fingerprint == fp
    chunks = list(client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=2, stream=True,
                                                 extra_body=NO_EOS))
    assert chunks and all(c.system_fingerprint == fp for c in chunks)
    assert httpx.get(str(client.base_url).replace("/v1/", "/health")).json()["system_fingerprint"] == fp
