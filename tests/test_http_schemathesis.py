"""Property-based HTTP tests: schemathesis generates requests from the app's ``/openapi.json``
(schema-valid ones and invalid ones) and sends them to the app, with a real Redis holding
tiles behind it. No request may produce a 5xx, and every response must conform to the
documented schema (status codes, content types, bodies), auth included. (Schemathesis'
``positive_data_acceptance`` check is off: a schema-valid body may still be a documented
400, e.g. a join key the requested features do not use.)

Random service names almost always miss, so a share of the valid bodies is steered onto
the definitions' real service, references and join keys while keeping the generated entity
values: those requests reach the Redis lookup with arbitrary keys (wrong types, nulls,
huge integers, odd strings, mismatched lengths, too many rows).

Cases are drawn with ``schema.as_strategy`` under ``hypothesis.given`` inside an ordinary
test, because the lazy ``schemathesis.pytest.from_fixture`` loader does not run under
pytest 9 (it writes ``request.node._nodeid``, which pytest 9 no longer has).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from http_fixtures import DEFS, NOW, PROJECT, write_tiles
from parity.serving.app import create_app
from parity.serving.lookup import OnlineReader

TOKEN = "schema-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUESTS = [{"service": "ranking"}, {"features": ["user_stats:*", "pair_stats:plays_24h"]},
            {"features": ["video_stats@1:*"]}]
KEYS = [["user_id", "video_id"], ["user_id"], ["video_id"], ["video_id", "user_id", "other"]]


@pytest.fixture
def api_schema(redis):
    write_tiles(redis)
    reader = OnlineReader(redis, PROJECT, DEFS, clock=lambda: NOW, max_entities=100)
    app = create_app(reader, tokens=[TOKEN], require_auth=True, project=PROJECT)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)


def steer(case, data) -> None:
    """Point a valid POST /v1/features body at real names, keeping its entity values. The
    draws never depend on the case (hypothesis replays them), and the body is replaced, not
    edited in place."""
    steered, keys, request = data.draw(st.booleans()), data.draw(st.sampled_from(KEYS)), \
        data.draw(st.sampled_from(REQUESTS))
    if not steered or case.path != "/v1/features" or not isinstance(case.body, dict):
        return
    columns = [list(v) for v in case.body.get("entities", {}).values()] or [[1]]
    body = {k: v for k, v in case.body.items() if k not in ("service", "features", "entities")}
    case.body = {**body, **request, "entities": {key: columns[i % len(columns)] for i, key in enumerate(keys)}}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_errors_and_responses_match_the_schema(api_schema, mode):
    seen: dict[int, int] = {}

    @given(case=api_schema.as_strategy(generation_mode=mode), data=st.data())
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case, data):
        if mode == GenerationMode.POSITIVE:
            steer(case, data)
        # a schema-valid body may still name join keys the features do not use: a documented 400
        response = case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    check()
    assert not [code for code in seen if code >= 500], seen
    expected = {200, 400, 404} if mode == GenerationMode.POSITIVE else {401, 422}
    assert expected <= set(seen), seen  # the run reached the outcomes it is meant to probe
