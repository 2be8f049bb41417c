"""The catalogue's transforms against transformers' own processors (random logits and
hand-made ties), and the llama.cpp / OpenAI ones against hand-computed cases."""

import math

import pytest
import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TypicalLogitsWarper,
)

from decoding import transforms
from decoding.selectors import MirostatV2


def _random_logits(seed: int, ties: bool, rows: int = 6, vocab: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 3
    if ties:  # coarse rounding creates many exact ties, including at the cut
        logits = torch.round(logits)
    return logits


def _ids(seed: int, rows: int = 6, length: int = 30, vocab: int = 12) -> torch.Tensor:
    """Token histories over a small id range, so repeats (n-grams, penalties) are common."""
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(
        a.masked_fill(torch.isinf(a), 0), b.masked_fill(torch.isinf(b), 0), atol=1e-5)


WARPERS = [
    ("min_p", MinPLogitsWarper, [0.01, 0.1, 0.3, 0.9, 1.0]),
    ("typical_p", TypicalLogitsWarper, [0.2, 0.5, 0.9, 0.99]),
    ("epsilon_cutoff", EpsilonLogitsWarper, [1e-4, 3e-3, 0.02, 0.1]),
    ("eta_cutoff", EtaLogitsWarper, [1e-4, 2e-3, 0.02, 0.1]),
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("min_keep", [1, 3])
@pytest.mark.parametrize("name,warper,values", WARPERS, ids=[w[0] for w in WARPERS])
def test_warper_matches_transformers(name, warper, values, min_keep, ties):
    for seed, value in enumerate(values):
        logits = _random_logits(10 + seed, ties)
        ref = warper(value, min_tokens_to_keep=min_keep)(None, logits.clone())
        assert _same(getattr(transforms, name)(logits, value, min_keep), ref), (name, value)


@pytest.mark.parametrize("name,warper,values", WARPERS, ids=[w[0] for w in WARPERS])
def test_warper_per_row_values_equal_each_row_alone(name, warper, values):
    off = {"min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}[name]
    logits = _random_logits(20, ties=True, rows=len(values) + 1)
    col = torch.tensor([*values, off])
    got = getattr(transforms, name)(logits, col)
    for i, value in enumerate(values):
        assert _same(got[i:i + 1], warper(value)(None, logits[i:i + 1].clone()))
    assert torch.equal(got[-1], logits[-1])  # the off row is untouched


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 2.0])
@pytest.mark.parametrize("ties", [False, True])
def test_repetition_penalty_matches_transformers(penalty, ties):
    logits, ids = _random_logits(30, ties, vocab=16), _ids(31, vocab=16)
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, ids, True)
    ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    assert _same(transforms.repetition_penalty(logits, seen, penalty), ref)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_transformers(n):
    logits, ids = _random_logits(40, False, vocab=12), _ids(41, length=25, vocab=4)
    ref = NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
    assert _same(transforms.no_repeat_ngram(logits, ids.tolist(), n), ref)


def test_logit_bias_matches_sequence_bias():
    logits = _random_logits(50, True)
    bias = {3: 5.0, 7: -2.5, 63: -100.0, 0: 0.75}
    ref = SequenceBiasLogitsProcessor([[[t], b] for t, b in bias.items()])(_ids(51), logits.clone())
    assert _same(transforms.logit_bias(logits, bias), ref)
    # per-row biases: row i alone equals the processor with row i's bias
    per_row = [{1: 2.0}, {}, {2: -3.0, 5: 1.0}, {1: 1.0}, {}, {63: 4.0}]
    got = transforms.logit_bias(logits, per_row)
    for i, b in enumerate(per_row):
        expected = logits[i] if not b else SequenceBiasLogitsProcessor([[[t], v] for t, v in b.items()])(
            _ids(51)[i:i + 1], logits[i:i + 1].clone())[0]
        assert _same(got[i], expected)


def test_bad_words_match_transformers():
    logits, ids = _random_logits(60, False, vocab=12), _ids(61, vocab=4)
    # one-token bans and sequences whose prefix ends some rows' history but not others'
    bad = [[5], [9, 11], [ids[0, -1].item(), 7], [ids[1, -2].item(), ids[1, -1].item(), 8]]
    ref = NoBadWordsLogitsProcessor(bad)(ids, logits.clone())
    got = transforms.bad_words(logits, ids.tolist(), [tuple(map(tuple, bad))] * ids.shape[0])
    assert _same(got, ref)
    assert torch.isinf(got[0, 7]) and torch.isinf(got[1, 8]) and torch.isinf(got[:, 5]).all()


@pytest.mark.parametrize("generated,minimum", [(0, 3), (2, 3), (3, 3), (5, 3), (4, 0)])
def test_min_new_tokens_matches_transformers(generated, minimum):
    logits, prompt_len = _random_logits(70, True), 7
    ids = _ids(71, length=prompt_len + generated)
    ref = MinNewTokensLengthLogitsProcessor(prompt_len, minimum, [2, 9])(ids, logits.clone())
    assert _same(transforms.min_new_tokens(logits, generated, minimum, [2, 9]), ref)


# -- llama.cpp and OpenAI definitions, by hand -------------------------------------

def _probs(*p):
    return torch.log(torch.tensor([list(p)]))


def test_xtc_removes_every_top_choice_but_the_least_likely():
    logits = _probs(0.4, 0.3, 0.2, 0.1)
    kept = lambda out: (~torch.isinf(out[0])).tolist()  # noqa: E731
    # threshold 0.25: 0.4 and 0.3 are top choices; only 0.3 (the least likely of them) stays
    assert kept(transforms.xtc(logits, 1.0, 0.25, 0.5)) == [False, True, True, True]
    # threshold 0.15: 0.4, 0.3, 0.2 qualify; 0.2 stays
    assert kept(transforms.xtc(logits, 1.0, 0.15, 0.5)) == [False, False, True, True]
    # only one token above the threshold: nothing to exclude
    assert kept(transforms.xtc(logits, 1.0, 0.35, 0.0)) == [True] * 4
    # the draw is above the probability: this step is left alone; probability 0 is off
    assert kept(transforms.xtc(logits, 0.5, 0.15, 0.7)) == [True] * 4
    assert kept(transforms.xtc(logits, 0.0, 0.15, 0.0)) == [True] * 4
    # min_keep: removing 0.4 and 0.3 would leave 2 < 3 tokens, so the step is skipped
    assert kept(transforms.xtc(logits, 1.0, 0.15, 0.5, min_tokens_to_keep=3)) == [True] * 4
    # the kept logits are untouched (masking, never rescaling)
    assert transforms.xtc(logits, 1.0, 0.25, 0.5)[0, 1] == logits[0, 1]


def test_dry_penalty_hand_computed():
    a, b, c, d, e = 10, 11, 12, 13, 14
    # context ... a b c d ... a b c: choosing d would extend a repeat of length 3
    hist = [a, b, c, d, e, a, b, c]
    pens = transforms.dry_penalties(hist, multiplier=0.8, base=1.75, allowed_length=2)
    assert pens == pytest.approx({d: 0.8 * 1.75 ** (3 - 2)})
    # allowed_length 3: still penalised (3 >= 3), exponent 0
    assert transforms.dry_penalties(hist, 0.8, 1.75, 3) == pytest.approx({d: 0.8})
    # allowed_length 4: the repeat is too short
    assert transforms.dry_penalties(hist, 0.8, 1.75, 4) == {}
    # a breaker between the repeat and the end limits the repeat length to 1 (< 2)
    assert transforms.dry_penalties([a, b, c, d, e, a, b, 99, c], 0.8, 1.75, 2, sequence_breakers={99}) == {}
    # a breaker is never penalised itself
    assert transforms.dry_penalties([a, b, 99, e, a, b], 0.8, 1.75, 2, sequence_breakers={99}) == {}
    # the longest of several matches decides: "b c" -> e (length 2) and "a b c" -> d (length 3)
    hist = [a, b, c, d, b, c, e, a, b, c]
    assert transforms.dry_penalties(hist, 1.0, 2.0, 2) == pytest.approx({d: 2.0, e: 1.0})
    # penalty_last_n: the window hides the earlier occurrence; 0 switches DRY off
    assert transforms.dry_penalties([a, b, c, d, e, a, b, c], 0.8, 1.75, 2, penalty_last_n=4) == {}
    assert transforms.dry_penalties([a, b, c, d, a, b, c], 0.8, 1.75, 2, penalty_last_n=0) == {}
    # applied as a subtraction from the logits
    logits = torch.zeros(1, 20)
    out = transforms.dry(logits, [{d: 1.4}])
    assert out[0, d] == pytest.approx(-1.4) and out[0].abs().sum() == pytest.approx(1.4)


def test_presence_and_frequency_penalties_follow_openai_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    counts = torch.tensor([[0, 1, 3, 0]])
    out = transforms.presence_frequency_penalty(logits, counts, presence=0.5, frequency=0.25)
    # mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence
    assert out.tolist() == [[1.0, 2.0 - 0.25 - 0.5, 3.0 - 0.75 - 0.5, 4.0]]
    # negative values encourage repetition
    assert transforms.presence_frequency_penalty(logits, counts, -1.0, 0.0)[0, 1] == 3.0


def test_mirostat_v2_truncates_samples_and_learns():
    # probabilities 1/2, 1/4, 1/8, 1/8: surprises 1, 2, 3, 3 bits
    logits = _probs(0.5, 0.25, 0.125, 0.125)
    m = MirostatV2(tau=1.0, eta=0.1)
    assert float(m.mu) == 2.0  # mu starts at 2 tau
    kept = ~torch.isinf(transforms.mirostat_v2_truncate(logits, m.mu.reshape(1)))
    assert kept[0].tolist() == [True, True, False, False]  # surprise <= mu
    # a truncation below every token still keeps the most likely one
    assert (~torch.isinf(transforms.mirostat_v2_truncate(logits, 0.1))).sum() == 1
    gen = torch.Generator().manual_seed(0)
    tok = int(m(logits, gen))
    assert tok in (0, 1)
    before = m.clone()
    m.accept(tok)
    # observed surprise under the truncated, renormalised distribution {2/3, 1/3}
    surprise = -math.log2(2 / 3 if tok == 0 else 1 / 3)
    assert float(m.mu) == pytest.approx(2.0 - 0.1 * (surprise - 1.0))
    assert float(before.mu) == 2.0  # the clone kept the old state
    m.reset()
    assert float(m.mu) == 2.0 and m.last_log2p is None


def test_top_k_partial_sort_equals_full_sort():
    logits = _random_logits(80, ties=True)
    ks = torch.tensor([1, 3, 5, 10, 2, 7])
    assert torch.equal(transforms.top_k(logits, ks, k_max=10), transforms.top_k(logits, ks))
    assert torch.equal(transforms.top_k(logits, ks, min_tokens_to_keep=4, k_max=10),
                       transforms.top_k(logits, ks, min_tokens_to_keep=4))
