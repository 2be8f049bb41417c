"""The text metrics of `tokenflow compare` and the benchmarks, on hand-made inputs."""

import math

import pytest

from generator.eval import text


def test_distinct_n_counts_unique_ngrams_pooled_over_sequences():
    assert text.distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert text.distinct_n([[1, 1, 1, 1]], 1) == 0.25
    # bigrams (1,2) (2,1) (1,2): 2 unique of 3
    assert text.distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    # two identical samples: every n-gram appears twice across them
    assert text.distinct_n([[5, 6, 7], [5, 6, 7]], 1) == 0.5
    assert text.distinct_n([[5, 6, 7], [8, 9]], 2) == 1.0
    assert math.isnan(text.distinct_n([[1]], 2))


def test_repetition_rate_is_the_share_of_repeated_ngrams():
    assert text.repetition_rate([1, 2, 3, 4, 5, 6], 2) == 0.0
    # a loop: "1 2 1 2 1 2" has bigrams 12 21 12 21 12 -> 2 unique of 5, 3 repeats
    assert text.repetition_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(3 / 5)
    assert text.repetition_rate([9] * 10, 4) == pytest.approx(6 / 7)
    assert math.isnan(text.repetition_rate([1, 2, 3], 4))


def test_self_bleu_is_one_for_identical_and_zero_for_disjoint_samples():
    same = [[1, 2, 3, 4, 5, 6]] * 3
    assert text.self_bleu(same) == pytest.approx(1.0)
    disjoint = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    assert text.self_bleu(disjoint) == 0.0
    partial = text.self_bleu([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9], [7, 8, 7, 8, 7, 8]])
    assert 0.0 < partial < 1.0
    assert math.isnan(text.self_bleu([[1, 2, 3]]))


def test_self_bleu_matches_nltk_sentence_bleu_by_hand():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    a, b = [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 8, 9, 7]
    sm = SmoothingFunction().method1
    expected = (sentence_bleu([b], a, smoothing_function=sm) + sentence_bleu([a], b, smoothing_function=sm)) / 2
    assert text.self_bleu([a, b]) == pytest.approx(expected)
