"""The catalogue's settings: every bad value is one ParamError naming the field; the
registry's names, aliases, defaults and machine-readable description."""

import json

import pytest

from decoding import ParamError, SamplingParams, describe, processors, resolve, strategies


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
