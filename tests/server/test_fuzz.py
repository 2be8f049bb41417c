"""Fuzzing: ``hypothesis`` over ``SamplingParams`` and the request bodies (an invalid value
gets one 400 naming its field; a valid one generates without a worker error), and
``schemathesis`` against our own ``/openapi.json`` (no 5xx, every 4xx an OpenAI error body,
every response as documented). A few dozen examples run in ``make test``; the
``reliability`` ones (``make test-reliability``) run hundreds."""

from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoding import ParamError, SamplingParams
from server_harness import LiveServer

FIELDS = SamplingParams.field_names()
# Fields the routes read themselves, under their wire names.
WIRE = {"max_new_tokens": "max_tokens"}
SKIP_ON_WIRE = {"logprobs", "n"}  # the wire's logprobs/n have OpenAI's meaning (tested below as such)

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
                | st.sampled_from(["greedy", "sample", "beam", "top_k", "mirostat", "nucleus", "1e308", "-1"]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6) | st.sampled_from(["1", "5", "99999"]), inner,
                                             max_size=3), max_leaves=8)
python_values = json_values | st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 2**63, -2**63 - 1])

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
MANY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


def check_sampling_params(field: str, value) -> None:
    """One field set to ``value``: a valid SamplingParams, or a ParamError naming that field."""
    try:
        SamplingParams(**{field: value})
    except ParamError as exc:
        assert exc.field == field, (field, value, exc)


@FEW
@given(field=st.sampled_from(FIELDS), value=python_values)
def test_sampling_params_refuse_a_bad_value_naming_its_field(field, value):
    check_sampling_params(field, value)


@pytest.mark.reliability
@MANY
@given(field=st.sampled_from(FIELDS), value=python_values)
def test_sampling_params_fuzz_many(field, value):
    check_sampling_params(field, value)


# -- over HTTP --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tiny_engine):
    from server import Settings, create_app

    # A small context: a valid max_tokens generates a few tokens at most.
    server = LiveServer(create_app(Settings(max_total_tokens=24), engine=tiny_engine))
    yield server
    server.stop()


def check_request(url: str, path: str, field: str, value) -> None:
    """A request with ``field: value``: 400 naming the field, or a generation that ends well."""
    base = {"messages": [{"role": "user", "content": "Once"}]} if "chat" in path else {"prompt": "Once"}
    body = {**base, "max_tokens": 3, field: value}
    res = httpx.post(url + path, json=body, timeout=60)
    assert res.status_code in (200, 400), (body, res.status_code, res.text)
    out = res.json()
    if res.status_code == 400:
        error = out["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == field, (body, error)
    else:
        assert "error" not in out and out["choices"], (body, out)
        assert all(c["finish_reason"] in ("stop", "length") for c in out["choices"]), (body, out)


wire_fields = st.sampled_from([WIRE.get(f, f) for f in FIELDS if f not in SKIP_ON_WIRE]
                              + ["n", "logprobs", "top_logprobs", "seed", "stop", "user", "stream_options"])


@FEW
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), field=wire_fields, value=json_values)
def test_requests_get_one_400_naming_the_field_or_generate(live, path, field, value):
    check_request(live.url, path, field, value)


@pytest.mark.reliability
@MANY
@given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), field=wire_fields, value=json_values)
def test_requests_fuzz_many(live, path, field, value):
    check_request(live.url, path, field, value)
