"""SamplingParams: validated once, errors name the field and the bound."""

import pytest

from decoding import ParamError, SamplingParams, resolve, strategies


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(num_beams=0), "num_beams"),
    (dict(strategy="beam", num_beams=1), "num_beams"),
    (dict(strategy="sample", num_beams=3), "num_beams"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(strategy="no-such-thing"), "strategy"),
    (dict(seed=-3), "seed"),
    (dict(stop=[""]), "stop"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    # Values that overflow the int64 columns the sampler builds, or a beam score.
    (dict(strategy="sample", top_k=2**63), "top_k"),
    (dict(strategy="sample", top_k=2**31), "top_k"),
    (dict(no_repeat_ngram_size=2**63), "no_repeat_ngram_size"),
    (dict(max_new_tokens=2**63), "max_new_tokens"),
    (dict(logit_bias={2**63: 1.0}), "logit_bias"),
    (dict(bad_words_ids=[[2**63]]), "bad_words_ids"),
    (dict(stop_token_ids=[2**63]), "stop_token_ids"),
    (dict(strategy="beam", length_penalty=1e308), "length_penalty"),
    (dict(strategy="beam", length_penalty=float("nan")), "length_penalty"),
    (dict(strategy="beam", length_penalty=float("inf")), "length_penalty"),
    (dict(strategy="beam", length_penalty=-10.5), "length_penalty"),
    # the catalogue's fields
    (dict(strategy="min_p", min_p=-0.1), "min_p"),
    (dict(strategy="min_p", min_p=1.5), "min_p"),
    (dict(strategy="typical", typical_p=0.0), "typical_p"),
    (dict(strategy="typical", typical_p=1.2), "typical_p"),
    (dict(strategy="epsilon", epsilon_cutoff=1.0), "epsilon_cutoff"),
    (dict(strategy="epsilon", epsilon_cutoff=-1e-3), "epsilon_cutoff"),
    (dict(strategy="eta", eta_cutoff=1.0), "eta_cutoff"),
    (dict(strategy="eta", eta_cutoff=float("inf")), "eta_cutoff"),
    (dict(strategy="xtc", xtc_probability=1.5), "xtc_probability"),
    (dict(strategy="xtc", xtc_threshold=-0.1), "xtc_threshold"),
    (dict(strategy="mirostat", mirostat_tau=0.0), "mirostat_tau"),
    (dict(strategy="mirostat", mirostat_eta=0.0), "mirostat_eta"),
    (dict(strategy="mirostat", mirostat_eta=1.5), "mirostat_eta"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(repetition_penalty=-1.0), "repetition_penalty"),
    (dict(presence_penalty=2.5), "presence_penalty"),
    (dict(frequency_penalty=-2.5), "frequency_penalty"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(no_repeat_ngram_size=1.5), "no_repeat_ngram_size"),
    (dict(dry_multiplier=-0.5), "dry_multiplier"),
    (dict(dry_multiplier=0.8, dry_base=1.0), "dry_base"),
    (dict(dry_allowed_length=0), "dry_allowed_length"),
    (dict(dry_penalty_last_n=-2), "dry_penalty_last_n"),
    (dict(dry_sequence_breakers=[-1]), "dry_sequence_breakers"),
    (dict(logit_bias={5: 101.0}), "logit_bias"),
    (dict(logit_bias={-1: 1.0}), "logit_bias"),
    (dict(logit_bias={"x": 1.0}), "logit_bias"),
    (dict(logit_bias={5: float("nan")}), "logit_bias"),
    (dict(logit_bias=[1, 2]), "logit_bias"),
    (dict(bad_words_ids=[[]]), "bad_words_ids"),
    (dict(bad_words_ids=[[1, -2]]), "bad_words_ids"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(logprobs=-1), "logprobs"),
    (dict(logprobs=21), "logprobs"),
    (dict(n=0), "n"),
    (dict(n=129), "n"),
    (dict(stop_token_ids=[-5]), "stop_token_ids"),
    (dict(min_tokens_to_keep=0), "min_tokens_to_keep"),
    (dict(strategy="sample", top_k=-1), "top_k"),
    (dict(strategy="sample", top_p=1.01), "top_p"),
    # a live filter the strategy's chain does not run is an error, not silently ignored
    (dict(strategy="sample", min_p=0.1), "min_p"),
    (dict(strategy="greedy", typical_p=0.9), "typical_p"),
    (dict(strategy="top_p", xtc_probability=0.5), "xtc_probability"),
    # beam search runs no history processors and reports no alternatives (yet)
    (dict(strategy="beam", repetition_penalty=1.2), "repetition_penalty"),
    (dict(strategy="beam", logprobs=2), "logprobs"),
    (dict(strategy="beam", num_beams=2, n=3), "n"),
])
def test_bad_values_raise_one_error_naming_the_field(kwargs, field):
    with pytest.raises(ParamError) as info:
        SamplingParams(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_the_largest_allowed_values_still_validate():
    SamplingParams(strategy="sample", top_k=2**31 - 1, seed=2**63 - 1)
    SamplingParams(strategy="beam", length_penalty=10.0)
    SamplingParams(strategy="beam", length_penalty=-10.0)


def test_defaults_and_inference():
    assert SamplingParams().strategy == "greedy"
    assert SamplingParams(num_beams=3).strategy == "beam"
    assert SamplingParams(strategy="beam").num_beams == 4
    assert SamplingParams(stop="###").stop == ("###",)


def test_aliases_resolve_to_canonical_names():
    assert SamplingParams(strategy="beam_search", num_beams=2).strategy == "beam"
    assert SamplingParams(strategy="Multinomial").strategy == "sample"
    assert resolve("argmax").name == "greedy"
    names = [s.name for s in strategies()]
    assert {"greedy", "sample", "beam"} <= set(names)
    assert resolve("sample").chain == "logits -> temperature -> top_k -> top_p -> sample"


def test_temperature_zero_is_greedy():
    assert SamplingParams(strategy="sample", temperature=0.0).is_greedy
    assert not SamplingParams(strategy="sample", temperature=0.5).is_greedy


def test_value_from_text_reads_by_the_field_type():
    """The one text -> value reading every text channel shares (flags, specs, query)."""
    from decoding.checks import value_from_text

    assert value_from_text("int", "50") == 50 and value_from_text("tuple[int, ...]", "7") == 7
    assert value_from_text("float", "0.25") == 0.25
    assert [value_from_text("bool", w) for w in ("true", "1", "yes", "ON", "false", "0", "no", "off")] == \
        [True] * 4 + [False] * 4
    assert value_from_text("bool | str", "never") == "never"  # SamplingParams judges the word
    assert value_from_text("int | None", "none") is None and value_from_text("str", "none") == "none"
    assert value_from_text("tuple[str, ...]", " a ") == " a "  # text stays as it is
    for kind, text in (("int", "1.5"), ("float", "x"), ("bool", "maybe")):
        with pytest.raises(ValueError):
            value_from_text(kind, text)


@pytest.mark.parametrize("name", ["ignore_eos", "include_stop_str_in_output", "skip_special_tokens"])
@pytest.mark.parametrize("value", [[], "yes", 1, {}])
def test_switches_take_only_booleans(name, value):
    # Found by the server's fuzzing: skip_special_tokens=[] passed validation and failed
    # inside the tokenizer's decode, in the worker.
    with pytest.raises(ParamError, match=name):
        SamplingParams(**{name: value})
    assert getattr(SamplingParams(**{name: True}), name) is True
