"""The hand-written loop on a tiny random model, against transformers' generate()."""

import pytest
import torch

from decoding import ParamError, SamplingParams

PROMPTS = ["Once upon a time", "The capital of France is", "Emoji 🙂 and café"]


def _ref_generate(engine, ids, **kw):
    out = engine.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                pad_token_id=2, **kw)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_generate(tiny_engine, prompt):
    ids = tiny_engine.encode(prompt)
    ours = [ev.token_id for ev in tiny_engine.stream(ids, SamplingParams(max_new_tokens=24))]
    assert ours == _ref_generate(tiny_engine, ids, max_new_tokens=24, do_sample=False)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("num_beams,length_penalty,early_stopping", [
    (2, 1.0, False), (3, 1.0, True), (4, 0.0, "never"), (4, 2.0, False), (3, -1.0, False)])
def test_beam_equals_generate(tiny_engine, prompt, num_beams, length_penalty, early_stopping):
    ids = tiny_engine.encode(prompt)
    params = SamplingParams(strategy="beam", num_beams=num_beams, length_penalty=length_penalty,
                            early_stopping=early_stopping, max_new_tokens=16)
    ours = [ev.token_id for ev in tiny_engine.stream(ids, params)]
    ref = _ref_generate(tiny_engine, ids, max_new_tokens=16, num_beams=num_beams, do_sample=False,
                        length_penalty=length_penalty, early_stopping=early_stopping)
    assert ours == ref


def _likely_tokens(engine, ids, num_beams):
    """Tokens the unconstrained search produces: as extra EOS ids they make hypotheses
    finish early, so finished ones compete with the running beams."""
    params = SamplingParams(strategy="beam", num_beams=num_beams, max_new_tokens=12, ignore_eos=True)
    best = [ev.token_id for ev in engine.stream(ids, params)]
    return sorted({best[2], best[5], best[8]})


def test_beam_stream_equals_final_best_including_finished_winners(tiny_engine):
    early_wins = 0
    for prompt in PROMPTS:
        ids = tiny_engine.encode(prompt)
        for num_beams in (2, 4):
            for stop in _likely_tokens(tiny_engine, ids, num_beams):
                params = SamplingParams(strategy="beam", num_beams=num_beams, max_new_tokens=20,
                                        stop_token_ids=[stop])
                events = list(tiny_engine.stream(ids, params))
                ours = [ev.token_id for ev in events]
                ref = _ref_generate(tiny_engine, ids, max_new_tokens=20, num_beams=num_beams,
                                    do_sample=False, eos_token_id=[2, stop])
                assert ours == ref
                assert [ev.index for ev in events] == list(range(len(events)))
                text = "".join(ev.text for ev in events)
                assert text == tiny_engine.tokenizer.decode(ours, skip_special_tokens=True)
                if ours[-1] in (2, stop) and len(ours) < 20:
                    assert events[-1].finish_reason == "stop"
                    early_wins += 1
    # The cases above must include finished hypotheses that beat the running beams.
    assert early_wins >= 2, early_wins


def test_beam_streams_before_the_search_ends(tiny_engine):
    """Settled tokens are emitted while the search still runs, not all at the end."""
    runner = tiny_engine.runner
    params = SamplingParams(strategy="beam", num_beams=2, max_new_tokens=40, ignore_eos=True)
    seen = []
    for ev in tiny_engine.stream("Once upon a time", params):
        seen.append(runner.forward_calls)
    assert len(seen) == 40
    assert seen[0] < seen[-1], "every token came out only after the last forward"


def test_first_event_before_the_last_token_is_computed(tiny_engine):
    runner = tiny_engine.runner
    stream = tiny_engine.stream("Once upon a time", SamplingParams(max_new_tokens=10, ignore_eos=True))
    start = runner.forward_calls
    first = next(stream)
    assert first.index == 0
    assert runner.forward_calls == start + 1  # only the prefill has run
    rest = list(stream)
    assert len(rest) == 9 and runner.forward_calls == start + 10  # one forward per further token


def test_seeded_sampling_through_the_engine(tiny_engine):
    p = SamplingParams(strategy="sample", temperature=1.0, top_k=40, top_p=0.95, seed=7, max_new_tokens=20,
                       ignore_eos=True)
    a = [ev.token_id for ev in tiny_engine.stream("Once", p)]
    b = [ev.token_id for ev in tiny_engine.stream("Once", p)]
    c = [ev.token_id for ev in tiny_engine.stream("Once", p.replace(seed=8))]
    assert a == b and a != c
    greedy = [ev.token_id for ev in tiny_engine.stream("Once", SamplingParams(max_new_tokens=20, ignore_eos=True))]
    cold = [ev.token_id for ev in tiny_engine.stream("Once", p.replace(temperature=1e-5, top_k=0, top_p=1.0))]
    assert cold == greedy


def test_limits_and_finish_reasons(tiny_engine):
    events = list(tiny_engine.stream("Once", SamplingParams(max_new_tokens=5, ignore_eos=True)))
    assert len(events) == 5 and events[-1].finish_reason == "length"
    assert all(ev.finish_reason is None for ev in events[:-1])
    first = events[0].token_id
    stopped = list(tiny_engine.stream("Once", SamplingParams(max_new_tokens=5, stop_token_ids=[first])))
    assert len(stopped) == 1 and stopped[0].finish_reason == "stop"


def test_logprobs_are_log_probabilities(tiny_engine):
    events = list(tiny_engine.stream("Once", SamplingParams(max_new_tokens=6, ignore_eos=True)))
    assert all(ev.logprob <= 0.0 for ev in events)


def test_chat_prompt_uses_the_template(tiny_engine):
    ids = tiny_engine.encode("hi", chat=True)
    expected = tiny_engine.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                         add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)["input_ids"]
    assert ids == list(expected)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert tiny_engine.encode(msgs, chat=True) != ids


@pytest.mark.parametrize("prompt,field", [("", "prompt"), ([10_000], "prompt"), (3.5, "prompt")])
def test_bad_prompts_are_clear_errors(tiny_engine, prompt, field):
    with pytest.raises(ParamError) as info:
        list(tiny_engine.stream(prompt, SamplingParams(max_new_tokens=2)))
    assert info.value.field == field


def test_prompt_longer_than_context_is_rejected(tiny_engine):
    with pytest.raises(ParamError) as info:
        list(tiny_engine.stream([5] * 250, SamplingParams(max_new_tokens=10)))
    assert info.value.field == "max_new_tokens" and "context" in str(info.value)


@pytest.mark.parametrize("text", ["Once upon a time, " * 50, " " * 4000, "\n\n\t  " * 300, "naïve café déjà vu " * 40,
                                  "東京の天気は晴れです。" * 60, "🙂👍🏽🚀" * 100, "<|im_end|><|im_start|>user" * 30,
                                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" * 50, "0123456789" * 200])
def test_the_token_floor_never_exceeds_the_real_count(tiny_engine, text):
    """``fewest_tokens`` refuses prompts before tokenizing them: it must never claim more
    tokens than the tokenizer then makes, or a prompt that fits would be refused."""
    assert 0 < tiny_engine.fewest_tokens(text) <= len(tiny_engine.encode(text))
    messages = [{"role": "system", "content": text}, {"role": "user", "content": text}]
    assert tiny_engine.fewest_tokens(messages) <= len(tiny_engine.encode(messages, chat=True))
    assert tiny_engine.fewest_tokens(messages) <= len(tiny_engine.encode(messages, chat=True, special_tokens=True))


def test_no_token_spells_more_bytes_than_the_floor_assumes(tiny_engine):
    tok = tiny_engine.tokenizer
    bound = tiny_engine.max_token_bytes
    vocab = tiny_engine.model.config.vocab_size
    assert max(len(tok.convert_tokens_to_string([p]).encode()) for p in tok.convert_ids_to_tokens(range(vocab))) \
        <= bound
    # Not a loose guess either: the longest piece's own bytes, or a special token's text.
    longest = max(len(tok.convert_tokens_to_string([p]).encode()) for p in tok.convert_ids_to_tokens(range(vocab))
                  if p not in tok.all_special_tokens)
    assert bound == max(longest, *(len(t.encode()) for t in tok.all_special_tokens))
