"""``schemathesis`` against our own ``/openapi.json``, every route: no 5xx, every 4xx an
OpenAI error body, every response as the schema documents it (status, content type,
body). Minutes long: ``make test-reliability``."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from schemathesis.specs.openapi.checks import positive_data_acceptance

from server_harness import LiveServer

pytestmark = pytest.mark.reliability
EXAMPLES = 150  # per operation (8 operations; those without inputs run once)


@pytest.fixture(scope="module")
def api_url(tiny_engine):
    from server import Settings, create_app

    # A small context and a small body cap: valid requests generate a few tokens at most.
    server = LiveServer(create_app(Settings(max_total_tokens=24, max_body_mb=0.1), engine=tiny_engine))
    yield server.url
    server.stop()


def test_every_route_answers_as_documented(api_url):
    # The operations one by one with hypothesis directly (schemathesis' pytest plugin
    # does not run under this pytest).
    schema = schemathesis.openapi.from_url(api_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    checked: dict[str, int] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            response = case.call(timeout=60)
            # No 5xx; status, content type and body as documented. Not "a schema-valid request is
            # accepted": the schema cannot state every rule (which strategy runs which filter,
            # what fits the context); test_fuzz.py checks that those 400s name their field.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            if 400 <= response.status_code < 500:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, error
            checked[operation.label] = checked.get(operation.label, 0) + 1

        run()
    print("schemathesis cases:", checked, "total", sum(checked.values()))
