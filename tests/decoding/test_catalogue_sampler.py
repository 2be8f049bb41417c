"""BatchSampler with the whole catalogue: history through accept(), mixed batches,
logprobs, and the step through the sampler equal to transformers' processors."""

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
)

from decoding import BatchSampler, RowState, SamplingParams, strategies

VOCAB = 40
EOS = 2


def _logits_stream(seed: int, steps: int, rows: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # a peaky-but-not-degenerate distribution; small vocab so repeats and n-grams happen
    return [torch.randn(rows, VOCAB, generator=g) * 2 for _ in range(steps)]


def _run(params: list[SamplingParams], prompts: list[list[int]], stream: list[torch.Tensor],
         rows: slice | None = None) -> list[list[int]]:
    sampler = BatchSampler(params, prompt_ids=prompts, eos_token_ids=[EOS])
    out = []
    for logits in stream:
        ids = sampler(logits if rows is None else logits[rows]).token_ids.tolist()
        sampler.accept(ids)
        out.append(ids)
    return [list(col) for col in zip(*out)]


def _every_strategy() -> list[SamplingParams]:
    """One request per non-beam strategy, with a seed and a live history processor."""
    out = []
    for i, s in enumerate(strategies()):
        if s.selector.is_beam:
            continue
        extra = [dict(repetition_penalty=1.3), dict(presence_penalty=0.6, frequency_penalty=0.3),
                 dict(no_repeat_ngram_size=2), dict(min_new_tokens=4), dict(logit_bias={5: 3.0}),
                 dict(bad_words_ids=[[7], [3, 4]]), dict(dry_multiplier=0.8)][i % 7]
        kw = dict(temperature=0.9, top_k=20) if "top_k" in s.fields and s.name != "top_k" else {}
        out.append(SamplingParams(strategy=s.name, seed=100 + i, max_new_tokens=16, **kw, **extra))
    # and two greedy-by-temperature rows
    out.append(SamplingParams(strategy="top_p", temperature=0.0, seed=1, repetition_penalty=1.5))
    out.append(SamplingParams(strategy="mirostat", temperature=0.0))
    return out


def test_mixed_batch_row_equals_the_request_alone():
    params = _every_strategy()
    assert {p.strategy for p in params} >= {s.name for s in strategies() if not s.selector.is_beam}
    prompts = [[(3 * i + j) % VOCAB for j in range(5 + i % 4)] for i in range(len(params))]
    stream = _logits_stream(0, steps=16, rows=len(params))
    together = _run(params, prompts, stream)
    for i, p in enumerate(params):
        alone = _run([p], [prompts[i]], stream, rows=slice(i, i + 1))[0]
        assert alone == together[i], p.strategy
    # and the batch in another order gives every row the same tokens again
    order = list(reversed(range(len(params))))
    shuffled = _run([params[i] for i in order], [prompts[i] for i in order],
                    [s[order] for s in stream])
    assert [shuffled[order.index(i)] for i in range(len(params))] == together


def test_sampled_rows_vary_and_seeds_repeat():
    p = SamplingParams(strategy="min_p", seed=5)
    stream = _logits_stream(1, steps=30)
    a, b = _run([p], [[1]], stream), _run([p], [[1]], stream)
    assert a == b and len(set(a[0])) > 3
    assert _run([p.replace(seed=6)], [[1]], stream) != a


def _greedy_vs_processors(params: SamplingParams, processors, prompt: list[int], steps: int = 20):
    """Greedy steps through our sampler equal argmax of transformers' processors on the
    full ids (prompt + output), step after step."""
    stream = _logits_stream(2, steps)
    ours = _run([params], [prompt], stream)[0]
    ids = list(prompt)
    for logits in stream:
        scores = LogitsProcessorList(processors)(torch.tensor([ids]), logits.clone())
        ids.append(int(scores.argmax(-1)))
    assert ours == ids[len(prompt):]
    return ours


PROMPT = [5, 6, 7, 5, 6, 8, 9]


def test_repetition_penalty_through_the_sampler_matches_transformers():
    _greedy_vs_processors(SamplingParams(repetition_penalty=1.8), [RepetitionPenaltyLogitsProcessor(1.8)], PROMPT)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_through_the_sampler_matches_transformers(n):
    out = _greedy_vs_processors(SamplingParams(no_repeat_ngram_size=n), [NoRepeatNGramLogitsProcessor(n)],
                                PROMPT, steps=25 if n > 1 else 12)
    seq = PROMPT + out
    for end in range(len(PROMPT), len(seq)):  # and indeed no generated token repeats an n-gram
        earlier = {tuple(seq[i:i + n]) for i in range(end - n + 1)}
        assert tuple(seq[end - n + 1:end + 1]) not in earlier


def test_bad_words_through_the_sampler_match_transformers():
    bad = [[11], [6, 20], [8, 9, 30]]
    _greedy_vs_processors(SamplingParams(bad_words_ids=bad), [NoBadWordsLogitsProcessor(bad)], PROMPT)


def test_logit_bias_through_the_sampler_matches_transformers():
    bias = {3: 4.0, 4: -50.0, 12: 1.5}
    _greedy_vs_processors(SamplingParams(logit_bias=bias),
                          [SequenceBiasLogitsProcessor([[[t], b] for t, b in bias.items()])], PROMPT)


def test_min_new_tokens_through_the_sampler_matches_transformers():
    bias = {EOS: 50.0}  # EOS would win every step once allowed
    out = _greedy_vs_processors(
        SamplingParams(min_new_tokens=5, logit_bias=bias),
        [SequenceBiasLogitsProcessor([[[EOS], 50.0]]), MinNewTokensLengthLogitsProcessor(len(PROMPT), 5, EOS)],
        PROMPT, steps=7)
    assert EOS not in out[:5] and out[5:] == [EOS, EOS]


def test_presence_and_frequency_count_generated_tokens_only():
    p = SamplingParams(presence_penalty=1.0, frequency_penalty=0.5)
    sampler = BatchSampler([p], prompt_ids=[[1, 1, 1]])
    logits = torch.zeros(1, 8)
    logits[0, 1] = 0.1  # token 1 in the prompt only: not penalised, so it wins
    assert sampler(logits).token_ids.item() == 1
    sampler.accept([1])  # now generated once: 0.1 - 0.5 - 1.0 < 0
    assert sampler(logits).token_ids.item() == 0
    sampler.accept([0])
    out = sampler.process(logits.clone())
    assert out[0, :3].tolist() == pytest.approx([-1.5, 0.1 - 1.5, 0.0])


def test_history_survives_a_new_batch_composition():
    a = SamplingParams(no_repeat_ngram_size=2)
    b = SamplingParams(strategy="mirostat", seed=3)
    stream = _logits_stream(3, steps=12, rows=2)
    rows = [RowState(a, prompt_ids=PROMPT), RowState(b, prompt_ids=[1, 2])]
    sampler = BatchSampler.from_rows(rows)
    got = []
    for i, logits in enumerate(stream):
        if i == 6:  # row 1 leaves and comes back: state lives in the rows
            sampler = sampler.subset([1, 0]).subset([1, 0])
        ids = sampler(logits).token_ids.tolist()
        sampler.accept(ids)
        got.append(ids)
    straight = _run([a, b], [PROMPT, [1, 2]], stream)
    assert [list(c) for c in zip(*got)] == straight


def test_top_logprobs_are_the_raw_distribution_and_free_when_off():
    logits = _logits_stream(4, 1, rows=3)[0]
    params = [SamplingParams(logprobs=5, strategy="sample", seed=1, temperature=0.3, top_k=2),
              SamplingParams(logprobs=2), SamplingParams()]
    out = BatchSampler(params)(logits)
    raw = logits.log_softmax(-1)
    top = torch.topk(raw, 5)
    assert torch.equal(out.top_ids, top.indices) and torch.allclose(out.top_logprobs, top.values)
    assert torch.allclose(out.logprobs, raw.gather(-1, out.token_ids[:, None]).squeeze(-1))
    off = BatchSampler([SamplingParams()])(logits[:1])
    assert off.top_ids is None and off.top_logprobs is None


def test_greedy_rows_skip_the_sampling_work():
    sampler = BatchSampler([SamplingParams(), SamplingParams(strategy="top_p", temperature=0.0)])
    assert sampler.all_greedy and sampler.groups == []
    mixed = BatchSampler([SamplingParams(), SamplingParams(strategy="top_p", seed=1)])
    assert [g.rows for g in mixed.groups] == [[1]]
