"""Top-n-sigma: by hand, against llama.cpp's definition, and as a strategy."""

import math

import pytest
import torch

from decoding import BatchSampler, SamplingParams, describe, resolve, transforms

INF = float("inf")


def _kept(out: torch.Tensor) -> list[list[bool]]:
    return (~torch.isinf(out)).tolist()


def test_hand_computed_row():
    # finite logits 2, 1, 0, -1: mean 0.5, variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25, std 1.118;
    # the -inf entry is left out of both
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -INF]])
    assert _kept(transforms.top_n_sigma(logits, 1.0)) == [[True, True, False, False, False]]  # >= 0.882
    assert _kept(transforms.top_n_sigma(logits, 2.0)) == [[True, True, True, False, False]]  # >= -0.236
    assert _kept(transforms.top_n_sigma(logits, 0.0)) == [[True, True, True, True, False]]  # off
    kept = transforms.top_n_sigma(logits, 1.0)
    assert kept[0, :2].tolist() == [2.0, 1.0]  # survivors keep their logits


def test_per_row_n_and_min_tokens_to_keep():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 3)
    out = transforms.top_n_sigma(logits, torch.tensor([1.0, 0.0, 3.0]))
    assert _kept(out) == [[True, True, False, False], [True] * 4, [True] * 4]
    assert _kept(transforms.top_n_sigma(logits[:1], 0.1, min_tokens_to_keep=3)) == [[True, True, True, False]]


def _llama_cpp_reference(row: list[float], n: float) -> list[bool]:
    """llama.cpp's llama_sampler_top_n_sigma, written from its definition: n <= 0 is off;
    max, mean and population std over the entries that are not -inf; a token stays when
    its logit >= max - n * std."""
    if n <= 0 or len(row) <= 1:
        return [v != -INF for v in row]
    valid = [v for v in row if v != -INF]
    top = max(valid)
    mean = sum(valid) / len(valid)
    std = math.sqrt(sum((v - mean) ** 2 for v in valid) / len(valid))
    return [v != -INF and v >= top - n * std for v in row]


@pytest.mark.parametrize("n", [0.5, 1.0, 1.7, 3.0, -1.0])
def test_matches_llama_cpp_definition(n):
    g = torch.Generator().manual_seed(int(10 * abs(n)))
    logits = torch.randn(8, 97, generator=g) * 3
    logits[logits < -5] = -INF  # already removed entries do not count
    logits[3, 10:] = -INF
    got = _kept(transforms.top_n_sigma(logits, n))
    assert got == [_llama_cpp_reference(row, n) for row in logits.double().tolist()]


def test_argmax_and_kept_set_do_not_move_with_temperature():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3)) * 2
    kept = transforms.top_n_sigma(logits, 1.0)
    assert torch.equal(kept.argmax(-1), logits.argmax(-1))
    assert _kept(transforms.top_n_sigma(logits / 0.5, 1.0)) == _kept(kept)


def test_the_strategy_samples_inside_the_kept_set():
    assert resolve("top_nsigma").name == "top_n_sigma"
    assert resolve("top_n_sigma").chain == "logits -> temperature -> top_n_sigma -> sample"
    p = SamplingParams(strategy="top-nsigma", seed=2)
    assert p.top_nsigma == 1.0 and SamplingParams().top_nsigma == 0.0
    logits = torch.randn(1, 60, generator=torch.Generator().manual_seed(5)) * 3
    allowed = {i for i, keep in enumerate(_kept(transforms.top_n_sigma(logits, 1.0))[0]) if keep}
    sampler = BatchSampler([p])
    drawn = {int(sampler(logits).token_ids[0]) for _ in range(200)}
    assert drawn <= allowed and len(drawn) > 1


def test_its_field_reaches_the_catalogue():
    cat = describe()
    assert cat["params"]["top_nsigma"]["off"] == 0.0 and cat["params"]["top_nsigma"]["min"] == 0.0
    entry = next(s for s in cat["strategies"] if s["name"] == "top_n_sigma")
    assert entry["params"] == ["temperature", "top_nsigma", "seed"] and entry["defaults"] == {"top_nsigma": 1.0}
