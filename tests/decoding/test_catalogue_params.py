"""The catalogue's settings: every bad value is one ParamError naming the field; the
registry's names, aliases, defaults and machine-readable description."""

import json

import pytest

from decoding import ParamError, SamplingParams, describe, processors, resolve, strategies


@pytest.mark.parametrize("kwargs,field", [
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
def test_bad_catalogue_values_raise_one_error_naming_the_field(kwargs, field):
    with pytest.raises(ParamError) as info:
        SamplingParams(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_bounds_are_named_in_the_message():
    with pytest.raises(ParamError, match=r"presence_penalty: must be <= 2.0, got 3"):
        SamplingParams(presence_penalty=3)
    with pytest.raises(ParamError, match=r"min_p: strategy 'sample' does not use min_p; strategies that do: "
                                         r"min_p, xtc, dry, llama_cpp, transformers"):
        SamplingParams(strategy="sample", min_p=0.2)


def test_strategy_defaults_fill_unset_fields_only():
    assert SamplingParams(strategy="top_k").top_k == 50
    assert SamplingParams(strategy="top_k", top_k=5).top_k == 5
    assert SamplingParams(strategy="nucleus").top_p == 0.9
    assert SamplingParams(strategy="min_p").min_p == 0.1
    assert SamplingParams(strategy="min_p", min_p=0.0).min_p == 0.0  # explicitly off stays off
    assert SamplingParams(strategy="sample").top_k == 0 and SamplingParams(strategy="sample").top_p == 1.0
    assert SamplingParams(strategy="dry").dry_multiplier == 0.8
    assert SamplingParams().dry_multiplier == 0.0
    lc = SamplingParams(strategy="llama_cpp")
    assert (lc.top_k, lc.top_p, lc.min_p) == (40, 0.95, 0.05)


def test_replace_lets_unset_fields_follow_the_new_strategy():
    p = SamplingParams(seed=3)
    assert p.top_k == 0 and p.replace(strategy="top_k").top_k == 50
    assert p.replace(strategy="top_k", top_k=7).top_k == 7
    assert SamplingParams(strategy="top_k", top_k=5).replace(seed=1).top_k == 5  # set values stay
    assert p.replace(strategy="min_p").replace(strategy="sample").min_p == 0.0


def test_json_style_inputs_are_normalised():
    p = SamplingParams(logit_bias={"42": -3, 7: 1.5}, bad_words_ids=[[1, 2], [3]], stop_token_ids=[9])
    assert p.logit_bias == {42: -3.0, 7: 1.5}
    assert p.bad_words_ids == ((1, 2), (3,)) and p.stop_token_ids == (9,)
    hash(p)  # still usable as a key


def test_chain_shows_what_runs():
    p = SamplingParams(strategy="sample", repetition_penalty=1.1, temperature=0.7, top_k=40, top_p=0.9)
    assert p.chain == "logits -> repetition_penalty -> temperature -> top_k -> top_p -> sample"
    assert SamplingParams(strategy="sample", temperature=0.0, top_k=5).chain == "logits -> argmax"
    assert SamplingParams(strategy="mirostat").chain == "logits -> mirostat_v2"
    assert resolve("xtc").chain == "logits -> top_k -> top_p -> min_p -> xtc -> temperature -> sample"


def test_registry_names_aliases_and_size():
    names = {s.name for s in strategies()}
    assert len(names) + len(processors()) >= 15 and len(names) >= 14
    assert {"greedy", "sample", "beam", "top_k", "top_p", "min_p", "typical", "epsilon", "eta", "xtc", "dry",
            "mirostat", "llama_cpp", "transformers"} <= names
    for alias, name in [("nucleus", "top_p"), ("Nucleus-Sampling", "top_p"), ("topk", "top_k"),
                        ("locally_typical", "typical"), ("mirostat_v2", "mirostat"), ("hf", "transformers"),
                        ("minp", "min_p"), ("eta_cutoff", "eta")]:
        assert resolve(alias).name == name
        assert SamplingParams(strategy=alias).strategy == name
    for s in strategies():
        assert s.reference and s.description


def test_describe_is_json_and_covers_every_field():
    cat = json.loads(json.dumps(describe()))
    assert set(cat["params"]) == set(SamplingParams.field_names())
    top_p = cat["params"]["top_p"]
    assert top_p["type"] == "float" and top_p["min"] == 0.0 and top_p["min_exclusive"] and top_p["max"] == 1.0
    assert top_p["off"] == 1.0 and top_p["help"]
    assert cat["params"]["logit_bias"]["type"] == "dict[int,float]"
    assert cat["params"]["bad_words_ids"]["type"] == "list[list[int]]"
    nucleus = next(s for s in cat["strategies"] if s["name"] == "top_p")
    assert "nucleus" in nucleus["aliases"] and nucleus["defaults"] == {"top_p": 0.9}
    assert nucleus["params"] == ["temperature", "top_p", "seed"]
    assert [p["name"] for p in cat["processors"]][:2] == ["logit_bias", "bad_words"]
