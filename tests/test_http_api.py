"""The HTTP read path against a real Redis: values equal the in-process reader, typed errors
map to status codes without tracebacks, auth, metrics, feature logging, ``parity.Client``
against a real uvicorn server, and ``parity serve`` end to end."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import httpx
import orjson
import pytest

import parity
from harness_paths import stop
from http_fixtures import DEFS, NOW, PROJECT, AsgiClient, serve_in_thread, write_tiles
from parity.embedded import RedisServer, free_port, redis_client
from parity.errors import ConfigError
from parity.registry.config import ServingConfig
from parity.registry.durations import from_micros
from parity.serving.app import auth_settings, create_app
from parity.serving.client import AuthenticationError, BadRequestError, ServerUnavailable, UnknownFeature
from parity.serving.feature_log import FeatureLogger, read_feature_log
from parity.serving.lookup import OnlineReader

ENTITIES = {"user_id": [1], "video_id": ["v0", "v1", "v4", "nope"]}


def make_reader(client, max_entities: int = 2000) -> OnlineReader:
    return OnlineReader(client, PROJECT, DEFS, clock=lambda: NOW, max_entities=max_entities)


@pytest.fixture
def tiles(redis):
    write_tiles(redis)
    return redis


@pytest.fixture
def http(tiles):
    with AsgiClient(create_app(make_reader(tiles, max_entities=50), tokens=[], require_auth=False,
                               project=PROJECT)) as client:
        yield client


def post(client, body, **headers):
    return client.post("/v1/features", json=body, headers=headers)


def expected(reader: OnlineReader, entities, **request) -> dict:
    """The in-process answer in the HTTP response's shape (timestamps as aware datetimes)."""
    result = reader.get_online_features(entities, **request)
    return {name: {"values": result.values[name], "status": result.status[name], "age_ms": result.age_ms[name],
                   "defaulted": result.defaulted[name]} for name in result.names}


def decoded(column: dict) -> list:
    if column["dtype"] == "timestamp":
        return [None if v is None else datetime.fromisoformat(v) for v in column["values"]]
    return column["values"]


@pytest.mark.parametrize("request_", [
    {"service": "ranking"},
    {"features": ["user_stats:*", "video_stats@1:plays_1h", "pair_stats:plays_24h"]},
])
def test_values_equal_the_in_process_reader(tiles, http, request_):
    response = post(http, {**request_, "entities": ENTITIES}, **{"X-Request-Id": "req-42"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-42"
    body = response.json()
    assert body["request_id"] == "req-42" and body["rows"] == 4
    assert datetime.fromisoformat(body["now"]) == from_micros(NOW)
    want = expected(make_reader(tiles), ENTITIES, **request_)
    assert list(body["features"]) == list(want)
    for name, column in body["features"].items():
        assert decoded(column) == want[name]["values"], name
        assert column["status"] == want[name]["status"], name
        assert column["age_ms"] == want[name]["age_ms"], name
        if name == "user_stats__last_video":
            assert column["defaulted"] == want[name]["defaulted"]
        else:
            assert "defaulted" not in column
    if "service" in request_:
        features = body["features"]
        assert features["user_stats__plays_1h"]["values"] == [5] * 4
        assert features["video_stats__plays_1h"]["status"] == ["stale", "stale", "stale", "missing"]
        assert features["pair_stats__plays_24h"]["status"][3] == "missing"
        assert features["user_stats__last_seen"]["values"][0].endswith("Z")
        assert features["user_stats__recent_videos"]["dtype"] == "list<string>"


def test_statuses_expired_and_defaulted(http):
    body = post(http, {"features": ["user_stats:last_video"], "entities": {"user_id": [1, 3, 99]}}).json()
    column = body["features"]["user_stats__last_video"]
    assert column["status"] == ["ok", "expired", "missing"]
    assert column["values"][1:] == ["none", "none"] and column["defaulted"] == [False, True, True]


def test_request_id_is_generated_when_absent(http):
    response = post(http, {"service": "ranking", "entities": ENTITIES})
    assert len(response.json()["request_id"]) == 32 == len(response.headers["x-request-id"])


@pytest.mark.parametrize("request_, named", [
    ({"service": "nope"}, "nope"),
    ({"features": ["user_stats:nope"]}, "nope"),
    ({"features": ["no_view:plays_1h"]}, "no_view"),
    ({"features": ["user_stats@7:plays_1h"]}, "version 7"),
    ({"features": ["not a reference"]}, "not a reference"),
])
def test_unknown_names_are_404_naming_them(http, request_, named):
    response = post(http, {**request_, "entities": {"user_id": [1]}})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["type"] == "unknown_feature" and named in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize("entities, named", [
    ({"user_id": ["1"]}, "'user_id' must be an integer"),
    ({"user_id": [True]}, "'user_id' must be an integer"),
    ({"user_id": [None]}, "'user_id' is null"),
    ({"user_id": [2**63]}, "out of range"),
    ({"user_id": [1], "video_id": [5]}, "'video_id' must be a string"),
    ({"user_id": [1], "nope_id": [1]}, "unknown join key(s) 'nope_id'"),
    ({"video_id": ["v1"]}, "missing join key(s) 'user_id'"),
    ({"user_id": [1, 2], "video_id": ["a", "b", "c"]}, "different lengths"),
])
def test_bad_keys_are_400_naming_the_key(http, entities, named):
    features = ["user_stats:plays_1h"] + (["pair_stats:plays_24h"] if "video_id" in entities else [])
    response = post(http, {"features": features, "entities": entities})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "bad_request" and named in error["message"] and "hint" in error


def test_too_many_entities_is_413(http):
    response = post(http, {"service": "ranking", "entities": {"user_id": [1], "video_id": ["v"] * 51}})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["type"] == "too_many_entities" and "51" in error["message"] and "max_entities" in error["hint"]


@pytest.mark.parametrize("content, field", [
    (b'{"service": "ranking", "entities": ', "body"),
    (b'[1, 2]', "body"),
    (b'{"service": "ranking"}', "body.entities"),
    (b'{"service": "ranking", "entities": {"user_id": 1}}', "body.entities.user_id"),
    (b'{"service": "ranking", "entities": {"user_id": [1.5]}}', "body.entities.user_id.0"),
    (b'{"service": "ranking", "entities": {"user_id": [[1]]}}', "body.entities.user_id.0"),
    (b'{"service": "ranking", "entities": {"user_id": []}}', "body.entities.user_id"),
    (b'{"service": "ranking", "entities": {}}', "body.entities"),
    (b'{"service": "ranking", "features": ["u:x"], "entities": {"user_id": [1]}}', "body"),
    (b'{"entities": {"user_id": [1]}}', "body"),
    (b'{"service": 7, "entities": {"user_id": [1]}}', "body.service"),
    (b'{"features": [], "entities": {"user_id": [1]}}', "body.features"),
    (b'{"service": "ranking", "entities": {"user_id": [1]}, "extra": 1}', "body.extra"),
])
def test_bad_shapes_are_422_naming_the_field(http, content, field):
    response = http.post("/v1/features", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation"
    assert field in [f["field"] for f in error["fields"]], error
    assert field in error["message"]


def test_bad_request_id_header_is_422(http):
    response = post(http, {"service": "ranking", "entities": ENTITIES}, **{"X-Request-Id": "has space"})
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "header.x-request-id"


def test_unknown_route_and_method_are_json(http):
    assert http.get("/v2/nothing").json()["error"]["type"] == "not_found"
    response = http.get("/v1/features")
    assert response.status_code == 405 and response.json()["error"]["type"] == "method_not_allowed"


class _Broken(OnlineReader):
    def get_online_features(self, *args, **kwargs):
        raise RuntimeError("secret detail at /srv/x.py line 3")


def test_an_unexpected_error_is_500_without_details(tiles, caplog):
    app = create_app(_Broken(tiles, PROJECT, DEFS), tokens=[], require_auth=False, project=PROJECT)
    with AsgiClient(app) as client:
        response = post(client, {"service": "ranking", "entities": ENTITIES}, **{"X-Request-Id": "r1"})
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json() == {"error": {"type": "internal", "message": "internal error", "request_id": "r1"}}
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret detail" in caplog.text  # logged server-side
    assert 'parity_errors_total{type="internal"} 1.0' in metrics
    assert 'parity_requests_total{code="500",endpoint="/v1/features"} 1.0' in metrics


def test_redis_down_is_503_and_health_says_so():
    server = RedisServer.start()
    try:
        client = redis_client(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        write_tiles(client)
        with AsgiClient(create_app(make_reader(client), tokens=[], require_auth=False, project=PROJECT)) as http:
            assert post(http, {"service": "ranking", "entities": ENTITIES}).status_code == 200
            assert http.get("/v1/health").json() == {"status": "ok", "redis": "ok"}
            server.stop()
            response = post(http, {"service": "ranking", "entities": ENTITIES})
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["type"] == "online_store_unavailable"
            assert error["message"].startswith("online store (Redis) unreachable") and error["hint"]
            assert "Traceback" not in response.text
            health = http.get("/v1/health")
            assert health.status_code == 503
            assert health.json()["status"] == "unavailable" and "unreachable" in health.json()["message"]
    finally:
        server.stop()


def test_auth_required(tiles):
    app = create_app(make_reader(tiles), tokens=["s3cret", "other"], require_auth=True, project=PROJECT)
    body = {"service": "ranking", "entities": ENTITIES}
    with AsgiClient(app) as http:
        missing = post(http, body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        error = missing.json()["error"]
        assert error["type"] == "unauthorized" and "PARITY_AUTH_TOKENS" in error["hint"]
        assert post(http, body, Authorization="Bearer wrong").status_code == 401
        assert post(http, body, Authorization="Basic czNjcmV0").status_code == 401
        assert post(http, body, Authorization="Bearer s3cret").status_code == 200
        assert post(http, body, Authorization="Bearer other").status_code == 200
        assert http.get("/v1/health").status_code == 200  # probes need no token
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert http.get(path).status_code == 401, path
            assert http.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        schema = http.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "a token from serving.auth_tokens / PARITY_AUTH_TOKENS"}
    assert "401" in schema["paths"]["/v1/features"]["post"]["responses"]
    # tokens alone switch auth on; required without tokens is refused
    with AsgiClient(create_app(make_reader(tiles), tokens=["t"], require_auth=False, project=PROJECT)) as http:
        assert post(http, body).status_code == 401
    with pytest.raises(ConfigError):
        create_app(make_reader(tiles), tokens=[], require_auth=True, project=PROJECT)


def test_auth_settings(monkeypatch):
    monkeypatch.delenv("PARITY_AUTH_TOKENS", raising=False)
    for host in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost"):
        assert auth_settings(ServingConfig(), host) == ([], False), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "example.com"):
        with pytest.raises(ConfigError) as raised:
            auth_settings(ServingConfig(), host)
        assert "serving.auth_tokens" in raised.value.hint and "PARITY_AUTH_TOKENS" in raised.value.hint
    assert auth_settings(ServingConfig(require_auth=False), "0.0.0.0") == ([], False)
    with pytest.raises(ConfigError):
        auth_settings(ServingConfig(require_auth=True), "127.0.0.1")
    monkeypatch.setenv("PARITY_AUTH_TOKENS", " a, b ,,a")
    assert auth_settings(ServingConfig(auth_tokens=["c"]), "0.0.0.0") == (["c", "a", "b"], True)


def metric(text: str, line_start: str) -> float:
    found = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    assert found, (line_start, text)
    return float(found[0].rsplit(" ", 1)[1])


def test_metrics(tiles, tmp_path):
    logger = FeatureLogger(tmp_path, flush_interval=0.05)
    with AsgiClient(create_app(make_reader(tiles), tokens=[], require_auth=False, feature_logger=logger,
                               project=PROJECT)) as http:
        for _ in range(3):
            assert post(http, {"service": "ranking", "entities": ENTITIES}).status_code == 200
        post(http, {"service": "nope", "entities": ENTITIES})
        logger.flush()
        first = http.get("/metrics")
        assert first.headers["content-type"].startswith("text/plain")
        post(http, {"service": "ranking", "entities": ENTITIES})
        second = http.get("/metrics").text
    text = first.text
    assert metric(text, "parity_lookup_seconds_count") == 4  # the 404 is a lookup too (it resolves first)
    assert 'parity_lookup_seconds_bucket{le="0.0001"}' in text and 'parity_lookup_seconds_bucket{le="1.0"}' in text
    assert metric(text, 'parity_requests_total{code="200",endpoint="/v1/features"}') == 3
    assert metric(text, 'parity_requests_total{code="404",endpoint="/v1/features"}') == 1
    assert metric(text, 'parity_errors_total{type="unknown_feature"}') == 1
    assert metric(text, "parity_lookup_entities_total") == 12
    assert metric(text, "parity_feature_log_written_rows_total") == 12
    assert metric(text, "parity_feature_log_dropped_total") == 0
    trips = metric(text, "parity_redis_round_trips_total")
    assert trips >= 3 and metric(second, "parity_redis_round_trips_total") > trips


def test_feature_logging_writes_what_was_served(tiles, tmp_path):
    logger = FeatureLogger(tmp_path, flush_interval=0.05)
    app = create_app(make_reader(tiles), tokens=[], require_auth=False, feature_logger=logger, project=PROJECT)
    features = ["user_stats:last_video", "user_stats:last_seen", "pair_stats:plays_24h"]
    with AsgiClient(app) as http:
        served = post(http, {"service": "ranking", "entities": ENTITIES}, **{"X-Request-Id": "log-1"}).json()
        adhoc = post(http, {"features": features, "entities": ENTITIES}, **{"X-Request-Id": "log-2"}).json()
    logger.close()
    table = read_feature_log(tmp_path, "ranking").to_pylist()
    assert [row["request_id"] for row in table] == ["log-1"] * 4
    assert [row["video_id"] for row in table] == ENTITIES["video_id"] and {row["user_id"] for row in table} == {1}
    for name, column in served["features"].items():
        assert [row[name + "__status"] for row in table] == column["status"], name
        logged = [row[name] for row in table]
        if column["dtype"] == "timestamp":
            logged = [v.isoformat().replace("+00:00", "Z") for v in logged]
        assert logged == column["values"], name
    assert {row["now"] for row in table} == {from_micros(NOW)}
    name = "adhoc-" + hashlib.sha1("\n".join(sorted(features)).encode()).hexdigest()[:12]
    rows = read_feature_log(tmp_path, name).to_pylist()
    assert [r["pair_stats__plays_24h"] for r in rows] == adhoc["features"]["pair_stats__plays_24h"]["values"]


def test_openapi_documents_requests_responses_and_errors(http):
    schema = http.get("/openapi.json").json()
    post_op = schema["paths"]["/v1/features"]["post"]
    assert set(post_op["responses"]) == {"200", "400", "404", "413", "422", "500", "503"}
    assert post_op["requestBody"]["content"]["application/json"]["examples"]["service"]["value"]["service"]
    assert post_op["parameters"][0]["name"] == "x-request-id"
    components = schema["components"]["schemas"]
    assert {"FeaturesRequest", "FeaturesResponse", "FeatureColumn", "ErrorResponse", "HealthResponse"} <= set(components)
    assert components["FeaturesRequest"]["oneOf"] == [{"required": ["service"]}, {"required": ["features"]}]
    assert set(schema["paths"]) == {"/v1/features", "/v1/health", "/metrics"}
    assert "securitySchemes" not in schema.get("components", {})  # no auth configured


def test_client_against_a_real_uvicorn_server(tiles, tmp_path):
    reader = make_reader(tiles)
    logger = FeatureLogger(tmp_path, flush_interval=600)  # only the app's shutdown writes
    app = create_app(reader, tokens=["tok"], require_auth=True, feature_logger=logger, project=PROJECT)
    with serve_in_thread(app) as url:
        with parity.Client(url, token="tok") as client:
            result = client.get_online_features(ENTITIES, service="ranking", request_id="c-1")
            want = expected(reader, ENTITIES, service="ranking")
            assert result.rows == 4 and result.request_id == "c-1" and result.now == from_micros(NOW)
            assert result.names == list(want)
            for name in want:
                assert result.values[name] == want[name]["values"], name
                assert result.status[name] == want[name]["status"] and result.age_ms[name] == want[name]["age_ms"]
            assert result.defaulted == {"user_stats__last_video": want["user_stats__last_video"]["defaulted"]}
            assert result.to_dict()["user_stats__plays_1h__status"] == ["ok"] * 4
            assert client.health() == {"status": "ok", "redis": "ok"}
            with pytest.raises(UnknownFeature) as raised:
                client.get_online_features({"user_id": [1]}, service="nope")
            assert raised.value.status_code == 404 and "nope" in str(raised.value) and raised.value.hint
            assert isinstance(raised.value, parity.ParityError)
            with pytest.raises(BadRequestError) as bad:
                client.get_online_features({"user_id": ["1"]}, features=["user_stats:plays_1h"])
            assert bad.value.status_code == 400 and bad.value.error_type == "bad_request"
        with parity.Client(url) as anonymous, pytest.raises(AuthenticationError):
            anonymous.get_online_features({"user_id": [1]}, service="ranking")
        # keep-alive: many requests over one connection pool
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok"}) as raw:
            for _ in range(20):
                assert raw.post("/v1/features", json={"service": "ranking", "entities": ENTITIES}).status_code == 200
    with pytest.raises(ServerUnavailable) as down:
        parity.Client(url, timeout=1.0).health()
    assert down.value.status_code is None
    # uvicorn's shutdown closed the feature logger, which wrote what it held
    assert read_feature_log(tmp_path, "ranking").num_rows == 21 * 4


def test_parity_serve_end_to_end(tmp_path, redis_server):
    """``parity serve --workers 2`` on the example project: refuses a public bind without a
    token and a port in use (one line each), then serves, answers typed errors, and stops on
    SIGINT."""
    run = [sys.executable, "-m", "parity.cli"]
    subprocess.run([*run, "init", "proj"], cwd=tmp_path, check=True, capture_output=True)
    project = tmp_path / "proj"
    config = project / "feature_store.yaml"
    text = re.sub(r"(?m)^  type: redis\b.*$", f"  type: redis\n  connection_string: {redis_server.url}", config.read_text(),
                  count=1)
    assert redis_server.url in text  # never let `parity serve` start (and leak) an embedded Redis here
    config.write_text(text)
    subprocess.run([*run, "apply"], cwd=project, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "PARITY_AUTH_TOKENS"}
    refused = subprocess.run([*run, "serve", "--host", "0.0.0.0", "--port", str(free_port())], cwd=project,
                             capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: serving requires authentication")
    assert "PARITY_AUTH_TOKENS" in refused.stderr.splitlines()[-1]

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = subprocess.run([*run, "serve", "--port", str(busy.getsockname()[1])], cwd=project,
                               capture_output=True, text=True, env=env, timeout=60)
    assert taken.returncode == 1 and taken.stderr.startswith("error: cannot serve on 127.0.0.1:"), taken.stderr

    port = free_port()
    server = subprocess.Popen([*run, "serve", "--port", str(port), "--workers", "2"], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else ""
            time.sleep(0.1)
        with parity.Client(url) as client:
            result = client.get_online_features({"user_id": [1], "video_id": [10, 11], "creator_id": [7]},
                                                service="home_feed_ranking")
            assert result.rows == 2 and set(result.status["video_engagement__plays_1h"]) == {"missing"}
            assert abs((result.now - datetime.now(timezone.utc)).total_seconds()) < 60
            with pytest.raises(UnknownFeature):
                client.get_online_features({"user_id": [1]}, features=["user_engagement:nope"])
    finally:
        err = stop(server)
    assert err.startswith(f"parity: serving project short_video on http://127.0.0.1:{port} (2 worker(s)"), err
    assert "Traceback" not in err


def test_fast_path_answers_exactly_like_the_route(tiles):
    """Valid lookups skip the framework (``_FastFeatures``); the same request sent with a JSON
    content type the fast path leaves to the route gets the same answer, byte for byte, and
    everything the fast path does not accept still gets the route's documented error."""
    app = create_app(make_reader(tiles, max_entities=50), tokens=["s3cret"], require_auth=True, project=PROJECT)
    auth = {"Authorization": "Bearer s3cret"}
    requests = [{"service": "ranking", "entities": ENTITIES},
                {"features": ["user_stats:*"], "entities": {"user_id": [1, 2, 99]}},
                {"service": "ranking", "entities": {"user_id": [1], "video_id": [f"v{i}" for i in range(40)]}}]
    with AsgiClient(app) as http:
        for i, body in enumerate(requests):
            headers = {**auth, "X-Request-Id": f"same-{i}"}
            fast = http.post("/v1/features", content=orjson.dumps(body),
                             headers={**headers, "Content-Type": "application/json"})
            route = http.post("/v1/features", content=orjson.dumps(body),
                              headers={**headers, "Content-Type": "application/vnd.parity+json"})
            assert fast.status_code == route.status_code == 200, (fast.text, route.text)
            assert fast.content == route.content
        answered = metric(http.get("/metrics", headers=auth).text, "parity_fast_path_answers_total")
        assert answered == len(requests)
        # left to the route: each gets its documented error, none a 500
        cases = [({"service": "nope", "entities": ENTITIES}, auth, 404),
                 ({"service": "ranking", "entities": {"user_id": [1], "video_id": list(range(60))}}, auth, 413),
                 ({"service": "ranking", "features": ["a:b"], "entities": ENTITIES}, auth, 422),
                 ({"service": "ranking", "entities": ENTITIES}, {"Authorization": "Bearer wrong"}, 401),
                 ({"service": "ranking", "entities": ENTITIES}, {**auth, "X-Request-Id": "bad id!"}, 422)]
        for body, headers, code in cases:
            response = post(http, body, **headers)
            assert response.status_code == code, (body, response.text)
            assert "Traceback" not in response.text and response.json()["error"]["request_id"]
        bad_json = http.post("/v1/features", content=b'{"service": ', headers={**auth, "Content-Type": "application/json"})
        assert bad_json.status_code == 422 and bad_json.json()["error"]["type"] == "validation"
        assert metric(http.get("/metrics", headers=auth).text, "parity_fast_path_answers_total") == len(requests)
