"""Constrained output through the engine on the tiny random model: every strategy's
stream stays a JSON prefix at every event and ends schema-valid; beams and n > 1
each follow their own grammar state; a complete grammar ends the row."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from decoding import SamplingParams
from json_prefix import is_json_prefix

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "colour": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
        "size": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 0, "maximum": 10}]},
    },
    "required": ["id", "colour", "ok", "tags"],
    "additionalProperties": False,
}
PROMPT = "Once upon a time"


def check_stream(events) -> str:
    """Every prefix of the stream is a JSON prefix; the whole text is returned."""
    text = ""
    for ev in events:
        text += ev.text
        assert is_json_prefix(text), text
    return text


@pytest.mark.parametrize("strategy", ["greedy", "sample", "top_k", "top_p", "min_p", "typical", "mirostat", "beam"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_strategy_streams_schema_valid_json(tiny_engine, strategy, seed):
    extra = {"num_beams": 3} if strategy == "beam" else {"seed": seed}
    if strategy == "beam" and seed:
        extra["length_penalty"] = 0.5  # a second beam setting instead of a seed
    params = SamplingParams(strategy=strategy, json_schema=SCHEMA, max_new_tokens=120, **extra)
    events = list(tiny_engine.stream(PROMPT, params))
    text = check_stream(events)
    assert events[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_a_complete_grammar_ends_the_row_without_waiting_for_eos(tiny_engine):
    events = list(tiny_engine.stream(PROMPT, SamplingParams(choice=["red", "green"], ignore_eos=True,
                                                            max_new_tokens=50)))
    assert "".join(ev.text for ev in events) in {"red", "green"}
    assert events[-1].finish_reason == "stop" and len(events) < 50


def test_n_choices_each_follow_their_own_grammar(tiny_engine):
    params = SamplingParams(strategy="sample", seed=3, json_schema=SCHEMA, max_new_tokens=120, n=3)
    texts = {0: "", 1: "", 2: ""}
    for i, ev in tiny_engine.stream_n(PROMPT, params):
        texts[i] += ev.text
        assert is_json_prefix(texts[i])
    for i, text in texts.items():
        jsonschema.validate(json.loads(text), SCHEMA)
        alone = tiny_engine.generate_text(PROMPT, params.replace(n=1, seed=3 + i))
        assert text == alone  # a choice draws what it draws alone


def test_constrained_and_free_rows_share_a_batch(tiny_engine):
    free = SamplingParams(strategy="sample", seed=8, max_new_tokens=12, ignore_eos=True)
    bound = SamplingParams(strategy="sample", seed=9, regex="[0-9]{3}-[a-z]{2,5}", max_new_tokens=30)
    ids = tiny_engine.encode(PROMPT)
    batch = tiny_engine.batch()
    h_free, h_bound = batch.add(ids, free), batch.add(ids, bound)
    texts = {h_free: "", h_bound: ""}
    while batch.active:
        for handle, ev in batch.step():
            texts[handle] += ev.text
    assert texts[h_free] == tiny_engine.generate_text(PROMPT, free)
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2,5}", texts[h_bound])
