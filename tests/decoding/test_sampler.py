"""The batched sampling step: seeds, determinism, row independence."""

import torch

from decoding import BatchSampler, SamplingParams
from decoding.selectors import make_generator


def _draws(params, logits, steps=20):
    gen = make_generator(params.seed)
    sampler = BatchSampler([params], [gen])
    return [int(sampler(logits).token_ids[0]) for _ in range(steps)]


def _logits():
    return torch.randn(1, 50, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_tokens_different_seed_differs():
    p = SamplingParams(strategy="sample", temperature=1.0, seed=7)
    a, b = _draws(p, _logits()), _draws(p, _logits())
    c = _draws(p.replace(seed=8), _logits())
    assert a == b
    assert a != c


def test_near_zero_temperature_equals_greedy():
    logits = _logits()
    assert _draws(SamplingParams(strategy="sample", temperature=1e-4, seed=1), logits) == \
        [int(logits.argmax())] * 20
    assert _draws(SamplingParams(strategy="sample", temperature=0.0, seed=1), logits) == \
        [int(logits.argmax())] * 20


def test_sampled_ids_stay_inside_the_filter():
    logits = _logits()
    allowed = set(torch.topk(logits[0], 3).indices.tolist())
    drawn = _draws(SamplingParams(strategy="sample", top_k=3, seed=3), logits, steps=200)
    assert set(drawn) <= allowed and len(set(drawn)) > 1


def test_row_draws_do_not_depend_on_the_rest_of_the_batch():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    rows = [SamplingParams(strategy="sample", seed=11, top_p=0.9),
            SamplingParams(strategy="greedy"),
            SamplingParams(strategy="sample", seed=12, temperature=0.7, top_k=10)]
    gens = [make_generator(p.seed) for p in rows]
    batch = BatchSampler(rows, gens)
    together = [batch(logits).token_ids.tolist() for _ in range(10)]
    for i, p in enumerate(rows):
        alone = BatchSampler([p], [make_generator(p.seed)])
        assert [alone(logits[i:i + 1]).token_ids.item() for _ in range(10)] == [t[i] for t in together]


def test_logprob_is_of_the_raw_distribution():
    logits = _logits()
    out = BatchSampler([SamplingParams(strategy="sample", temperature=0.5, seed=2)], [make_generator(2)])(logits)
    expected = logits.log_softmax(-1)[0, out.token_ids[0]]
    assert torch.allclose(out.logprobs[0], expected)
