"""Structured output over the OpenAI routes, with the official ``openai`` client against
a live server on the tiny random model: response_format, vLLM's guided_* extras,
streamed chunks that stay a JSON prefix, and 400s that name the field."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from decoding import SamplingParams
from json_prefix import is_json_prefix

MESSAGES = [{"role": "user", "content": "Once upon a time"}]
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 50},
                                           "unit": {"enum": ["kg", "g"]}},
          "required": ["n", "unit"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "weight", "schema": SCHEMA, "strict": True}}


def test_response_format_json_schema_streams_valid_prefixes(client, tiny_engine):
    text = ""
    chunks = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=60, seed=4,
                                           response_format=FORMAT, stream=True)
    finish = None
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            assert is_json_prefix(text), text
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)
    # the same request in process: the route adds nothing and drops nothing
    expected = tiny_engine.generate_text(MESSAGES, SamplingParams(strategy="sample", seed=4, max_new_tokens=60,
                                                                  json_schema=SCHEMA), chat=True)
    assert text == expected


def test_response_format_on_completions_and_json_object(client):
    whole = client.completions.create(model="tokenflow", prompt="Weight:", max_tokens=60, temperature=0,
                                      extra_body={"response_format": FORMAT})
    jsonschema.validate(json.loads(whole.choices[0].text), SCHEMA)
    free = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=40, temperature=0,
                                          response_format={"type": "json_object"})
    text = free.choices[0].message.content
    assert text.startswith("{") and is_json_prefix(text)
    if free.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_guided_extras(client):
    regex = client.completions.create(model="tokenflow", prompt="Code:", max_tokens=30, temperature=0,
                                      extra_body={"guided_regex": "[A-Z]{2}-[0-9]{3}"})
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", regex.choices[0].text)
    choice = client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=10, seed=1, n=3,
                                            extra_body={"guided_choice": ["north", "south"]})
    assert {c.message.content for c in choice.choices} <= {"north", "south"}
    lark = client.completions.create(model="tokenflow", prompt="List:", max_tokens=40, temperature=0,
                                     extra_body={"guided_grammar": 'start: "[" /[a-c]/ ("," /[a-c]/)* "]"'})
    assert re.fullmatch(r"\[[a-c](,[a-c])*\]", lark.choices[0].text)
    as_json = client.completions.create(model="tokenflow", prompt="Weight:", max_tokens=60, temperature=0,
                                        extra_body={"guided_json": SCHEMA})
    jsonschema.validate(json.loads(as_json.choices[0].text), SCHEMA)
    beam = client.completions.create(model="tokenflow", prompt="Weight:", max_tokens=60,
                                     extra_body={"guided_json": SCHEMA, "num_beams": 3})
    jsonschema.validate(json.loads(beam.choices[0].text), SCHEMA)


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "unevaluatedProperties": False}}}}, "response_format", "unevaluatedProperties"),
    ({"response_format": {"type": "yaml"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
     "response_format", "schema"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "unclosed group"),
    ({"guided_grammar": "start: nowhere"}, "guided_grammar", "nowhere"),
    ({"guided_choice": []}, "guided_choice", "non-empty"),
    ({"guided_json": {"type": "object"}, "guided_regex": "a"}, "guided_regex", "only one constraint"),
])
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_bad_constraints_are_400s_naming_the_field(client, body, param, words, route):
    with pytest.raises(openai.BadRequestError) as err:
        if route == "chat":
            client.chat.completions.create(model="tokenflow", messages=MESSAGES, max_tokens=5, extra_body=body)
        else:
            client.completions.create(model="tokenflow", prompt="x", max_tokens=5, extra_body=body)
    error = err.value.body
    assert err.value.status_code == 400 and error["param"] == param and words in error["message"], error
