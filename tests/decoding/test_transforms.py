"""Logits transforms against transformers' own warpers, and hand-computed cases."""

import math

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from decoding import transforms


def _random_logits(seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 64, generator=g) * 3
    if ties:  # coarse rounding creates many exact ties, including at the cut
        logits = torch.round(logits)
    return logits


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(
        a.masked_fill(torch.isinf(a), 0), b.masked_fill(torch.isinf(b), 0), atol=1e-6)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("t", [0.3, 0.7, 1.0, 1.8])
def test_temperature_matches_transformers(t, ties):
    logits = _random_logits(1, ties)
    ref = TemperatureLogitsWarper(t)(None, logits.clone())
    assert _same(transforms.temperature(logits, t), ref)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k,min_keep", [(1, 1), (5, 1), (20, 1), (3, 5), (64, 1), (100, 1)])
def test_top_k_matches_transformers(k, min_keep, ties):
    logits = _random_logits(2, ties)
    ref = TopKLogitsWarper(top_k=k, min_tokens_to_keep=min_keep)(None, logits.clone())
    assert _same(transforms.top_k(logits, k, min_keep), ref)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("p,min_keep", [(0.1, 1), (0.5, 1), (0.9, 1), (0.99, 1), (0.3, 4)])
def test_top_p_matches_transformers(p, min_keep, ties):
    logits = _random_logits(3, ties)
    ref = TopPLogitsWarper(top_p=p, min_tokens_to_keep=min_keep)(None, logits.clone())
    assert _same(transforms.top_p(logits, p, min_keep), ref)


def test_per_row_parameters_equal_each_row_alone():
    logits = _random_logits(4, ties=True)
    ks = torch.tensor([0, 1, 3, 10, 64, 5])
    ps = torch.tensor([1.0, 0.2, 0.5, 0.9, 0.75, 0.95])
    ts = torch.tensor([1.0, 0.5, 2.0, 0.8, 1.3, 0.1])
    got_k, got_p, got_t = transforms.top_k(logits, ks), transforms.top_p(logits, ps), \
        transforms.temperature(logits, ts)
    for i in range(logits.shape[0]):
        row = logits[i:i + 1]
        ref_k = row if ks[i] == 0 else TopKLogitsWarper(int(ks[i]))(None, row.clone())
        assert _same(got_k[i:i + 1], ref_k)
        ref_p = row if ps[i] == 1.0 else TopPLogitsWarper(float(ps[i]))(None, row.clone())
        assert _same(got_p[i:i + 1], ref_p)
        assert _same(got_t[i:i + 1], TemperatureLogitsWarper(float(ts[i]))(None, row.clone()))


def test_top_p_hand_computed_keeps_last_two():
    # {0.1, 0.2, 0.3, 0.4} with top-p 0.7: 0.4 + 0.3 = 0.7 reaches p, so the last two stay.
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    out = transforms.top_p(logits, 0.7)
    assert torch.isinf(out[0, :2]).all() and not torch.isinf(out[0, 2:]).any()
    assert out[0, 3] == pytest.approx(math.log(0.4))


def test_top_k_keeps_ties_at_the_cut():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    out = transforms.top_k(logits, 2)
    assert (~torch.isinf(out[0])).tolist() == [False, True, True, True, False]


def test_transforms_never_shrink_vocab():
    logits = _random_logits(5, ties=False)
    for out in (transforms.top_k(logits, 3), transforms.top_p(logits, 0.5), transforms.temperature(logits, 0.5)):
        assert out.shape == logits.shape
