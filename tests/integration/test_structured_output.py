"""Structured output on the real default model through the official ``openai`` client:
held-out schemas (nested objects, arrays, enums, bounded numbers, optional fields,
anyOf), each answer schema-valid; the client's ``parse()`` with a Pydantic model."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from server import Settings, create_app
from server_harness import LiveServer
from json_prefix import is_json_prefix

pytestmark = pytest.mark.integration

NAME = {"type": "string", "maxLength": 24}
SCHEMAS = [  # (what to ask, the schema); strings and arrays bounded so greedy answers finish
    ("a person called Ann who is 31", {
        "type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}),
    ("the colour of the sky", {
        "type": "object", "properties": {"colour": {"enum": ["blue", "green", "red", "grey"]}},
        "required": ["colour"], "additionalProperties": False}),
    ("whether water is wet", {
        "type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"],
        "additionalProperties": False}),
    ("three primary colours", {
        "type": "object", "properties": {"colours": {"type": "array", "items": NAME, "minItems": 3, "maxItems": 3}},
        "required": ["colours"], "additionalProperties": False}),
    ("a city and its country", {
        "type": "object", "properties": {"city": NAME, "country": NAME}, "required": ["city", "country"],
        "additionalProperties": False}),
    ("a temperature in Celsius between -30 and 45", {
        "type": "object", "properties": {"celsius": {"type": "integer", "minimum": -30, "maximum": 45}},
        "required": ["celsius"], "additionalProperties": False}),
    ("a book with its author", {
        "type": "object", "properties": {"book": {"type": "object", "properties": {
            "title": NAME, "author": {"type": "object", "properties": {"first": NAME, "last": NAME},
                                      "required": ["first", "last"], "additionalProperties": False}},
            "required": ["title", "author"], "additionalProperties": False}},
        "required": ["book"], "additionalProperties": False}),
    ("a product with an optional discount", {
        "type": "object", "properties": {"product": NAME, "price": {"type": "integer", "minimum": 1, "maximum": 999},
                                         "discount": {"type": "integer", "minimum": 0, "maximum": 90}},
        "required": ["product", "price"], "additionalProperties": False}),
    ("an id that is either a number or a short code", {
        "type": "object", "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999},
                                                          {"type": "string", "pattern": "^[A-Z]{3}$"}]}},
        "required": ["id"], "additionalProperties": False}),
    ("a traffic light state", {"enum": ["red", "amber", "green"]}),
    ("two points with x and y", {
        "type": "object", "properties": {"points": {"type": "array", "maxItems": 2, "minItems": 2, "items": {
            "type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                             "y": {"type": "integer", "minimum": -9, "maximum": 9}},
            "required": ["x", "y"], "additionalProperties": False}}},
        "required": ["points"], "additionalProperties": False}),
    ("a rating from 1 to 5 stars", {
        "type": "object", "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["stars"], "additionalProperties": False}),
    ("a weekday", {
        "type": "object", "properties": {"day": {"enum": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]}},
        "required": ["day"], "additionalProperties": False}),
    ("a pet that may have no name", {
        "type": "object", "properties": {"species": {"enum": ["cat", "dog", "fish"]},
                                         "name": {"anyOf": [NAME, {"type": "null"}]}},
        "required": ["species", "name"], "additionalProperties": False}),
    ("an HTTP status code for not found", {
        "type": "object", "properties": {"code": {"type": "integer", "minimum": 100, "maximum": 599},
                                         "ok": {"type": "boolean"}},
        "required": ["code", "ok"], "additionalProperties": False}),
    ("a list of up to four even numbers", {
        "type": "object", "properties": {"evens": {"type": "array", "maxItems": 4,
                                                   "items": {"type": "integer", "minimum": 0, "maximum": 100}}},
        "required": ["evens"], "additionalProperties": False}),
    ("a date as year, month and day", {
        "type": "object", "properties": {"year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                                         "month": {"type": "integer", "minimum": 1, "maximum": 12},
                                         "day": {"type": "integer", "minimum": 1, "maximum": 31}},
        "required": ["year", "month", "day"], "additionalProperties": False}),
    ("a short answer: yes or no, and why", {
        "type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "reason": NAME},
        "required": ["answer"], "additionalProperties": False}),
    ("a user with an optional email", {
        "type": "object", "properties": {
            "user": {"type": "object", "properties": {"login": {"type": "string", "pattern": "^[a-z]{2,10}$"},
                                                      "email": NAME}, "required": ["login"],
                     "additionalProperties": False}},
        "required": ["user"], "additionalProperties": False}),
    ("a shape: a circle with a radius or a square with a side", {
        "anyOf": [{"type": "object", "properties": {"circle": {"type": "integer", "minimum": 1, "maximum": 99}},
                   "required": ["circle"], "additionalProperties": False},
                  {"type": "object", "properties": {"square": {"type": "integer", "minimum": 1, "maximum": 99}},
                   "required": ["square"], "additionalProperties": False}]}),
    ("a percentage with at most two decimals", {
        "type": "object", "properties": {"percent": {"type": "number", "minimum": 0, "maximum": 100}},
        "required": ["percent"], "additionalProperties": False}),
    ("the planets nearest the sun, with their order", {
        "type": "object", "properties": {"planets": {"type": "array", "maxItems": 3, "items": {
            "type": "object", "properties": {"name": NAME, "order": {"type": "integer", "minimum": 1, "maximum": 8}},
            "required": ["name", "order"], "additionalProperties": False}}},
        "required": ["planets"], "additionalProperties": False}),
]


@pytest.fixture(scope="module")
def client(default_engine):
    server = LiveServer(create_app(Settings(), engine=default_engine))
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    server.stop()


@pytest.mark.parametrize("ask, schema", SCHEMAS, ids=[ask.split(" ")[1] + str(i) for i, (ask, _) in enumerate(SCHEMAS)])
def test_held_out_schemas_are_always_valid(client, ask, schema):
    res = client.chat.completions.create(
        model="tokenflow", temperature=0, max_tokens=96,
        messages=[{"role": "user", "content": f"Answer in JSON: {ask}."}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    choice = res.choices[0]
    assert choice.finish_reason == "stop", choice.message.content  # designed to finish within max_tokens
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_streamed_sampled_answers_stay_json_prefixes(client):
    ask, schema = SCHEMAS[6]  # nested objects
    for seed in (1, 2):
        text = ""
        for chunk in client.chat.completions.create(
                model="tokenflow", seed=seed, temperature=0.8, max_tokens=96, stream=True,
                messages=[{"role": "user", "content": f"Answer in JSON: {ask}."}],
                response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                assert is_json_prefix(text), text
        jsonschema.validate(json.loads(text), schema)


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population_millions: int = Field(ge=0, le=50)


class Trip(BaseModel):
    cities: list[City] = Field(max_length=2)
    by_train: bool


def test_openai_parse_with_a_pydantic_model(client):
    res = client.chat.completions.parse(
        model="tokenflow", temperature=0, max_tokens=120, response_format=Trip,
        messages=[{"role": "user", "content": "Plan a trip to two European cities as JSON."}])
    trip = res.choices[0].message.parsed
    assert isinstance(trip, Trip) and res.choices[0].finish_reason == "stop"
    assert all(isinstance(c, City) for c in trip.cities)
