"""The catalogue through Engine.stream() on the tiny random model: history processors
equal transformers' generate(), logprobs reach TokenEvent, every strategy finishes."""

import pytest
import torch

from decoding import ParamError, SamplingParams, strategies

PROMPT = "Once upon a time"


def _ref_generate(engine, ids, **kw):
    out = engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                pad_token_id=2, do_sample=False, **kw)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kw", [
    dict(repetition_penalty=1.5),
    dict(no_repeat_ngram_size=2),
    dict(repetition_penalty=1.2, no_repeat_ngram_size=3),
    dict(min_new_tokens=20),
    dict(bad_words_ids=[[40], [50], [60]]),
], ids=lambda kw: ",".join(kw))
def test_greedy_with_processors_equals_generate(tiny_engine, kw):
    ids = tiny_engine.encode(PROMPT)
    ours = [ev.token_id for ev in tiny_engine.stream(ids, SamplingParams(max_new_tokens=24, **kw))]
    ref_kw = {k: [list(s) for s in v] if k == "bad_words_ids" else v for k, v in kw.items()}
    assert ours == _ref_generate(tiny_engine, ids, max_new_tokens=24, **ref_kw)


def test_top_logprobs_on_token_events(tiny_engine):
    events = list(tiny_engine.stream(PROMPT, SamplingParams(max_new_tokens=6, logprobs=3, ignore_eos=True)))
    for ev in events:
        assert len(ev.top_logprobs) == 3
        lps = [t.logprob for t in ev.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # greedy: the chosen token is the most likely one, with the same raw logprob
        assert ev.top_logprobs[0].token_id == ev.token_id
        assert ev.top_logprobs[0].logprob == pytest.approx(ev.logprob)
        assert ev.top_logprobs[0].text == tiny_engine.tokenizer.decode([ev.token_id])
    plain = list(tiny_engine.stream(PROMPT, SamplingParams(max_new_tokens=3)))
    assert all(ev.top_logprobs == () for ev in plain)


@pytest.mark.parametrize("name", [s.name for s in strategies()])
def test_every_strategy_streams_and_finishes(tiny_engine, name):
    params = SamplingParams(strategy=name, seed=3, max_new_tokens=8, ignore_eos=True)
    events = list(tiny_engine.stream(PROMPT, params))
    assert len(events) == 8 and events[-1].finish_reason == "length"
    assert [ev.index for ev in events] == list(range(8))
    if params.seed is not None and not params.is_greedy:
        again = [ev.token_id for ev in tiny_engine.stream(PROMPT, params)]
        assert again == [ev.token_id for ev in events]


def test_n_above_one_is_refused_by_stream_for_now(tiny_engine):
    with pytest.raises(ParamError) as info:
        list(tiny_engine.stream(PROMPT, SamplingParams(strategy="sample", n=2)))
    assert info.value.field == "n"


def test_logit_bias_outside_the_vocabulary_names_the_field(tiny_engine):
    with pytest.raises(ParamError) as info:
        list(tiny_engine.stream(PROMPT, SamplingParams(logit_bias={10**6: 1.0})))
    assert info.value.field == "logit_bias" and "vocabulary" in str(info.value)
