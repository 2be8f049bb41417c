"""Log-likelihood (generator/eval/likelihood.py): per-token logprobs -> mean, perplexity."""

import math

import pytest
import torch

from generator.eval.likelihood import mean_logprob, perplexity, text_logprobs


def test_logprob_and_perplexity():
    lps = [math.log(0.5), math.log(0.25), None]
    assert mean_logprob(lps) == pytest.approx((math.log(0.5) + math.log(0.25)) / 2)
    assert perplexity(lps) == pytest.approx(math.sqrt(8))  # geometric mean of 1/p
    assert perplexity([0.0, 0.0]) == 1.0
    assert math.isnan(perplexity([]))


def test_a_tensor_is_averaged_in_its_own_dtype():
    lps = torch.tensor([-0.1, -2.0, -0.3], dtype=torch.float32)
    assert mean_logprob(lps) == float(lps.mean())
    assert perplexity(lps) == math.exp(-float(lps.mean()))
    assert math.isnan(mean_logprob(torch.empty(0)))


def test_text_logprobs_scores_each_token_after_its_prefix(tiny_engine):
    text = "Once upon a time there was a"
    ids = tiny_engine.tokenizer(text)["input_ids"]
    lps = text_logprobs(tiny_engine, text)
    assert lps.shape == (len(ids) - 1,) and lps.dtype == torch.float32 and bool((lps <= 0).all())
    # The reference: the HF model's own forward over the whole text.
    with torch.no_grad():
        logits = tiny_engine.model(torch.tensor([ids])).logits[0].float()
    ref = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(lps, ref, rtol=1e-4, atol=1e-4)
    assert perplexity(lps) == pytest.approx(math.exp(-float(ref.mean())), rel=1e-4)
