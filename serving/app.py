"""The HTTP read path: ``POST /v1/features``, ``GET /v1/health``, ``GET /metrics``.

:func:`create_app` wraps one :class:`~parity.serving.lookup.OnlineReader` in a FastAPI
app. Request bodies are validated by pydantic (a bad shape is a 422 naming the field);
responses are built with orjson (the pydantic response models only document the shape in
``/openapi.json``). Every error is JSON ``{"error": {"type", "message", "hint",
"request_id"}}`` and never carries a traceback:

============================  ====  ===========================
error                         code  ``type``
============================  ====  ===========================
UnknownFeatureError           404   ``unknown_feature``
BadRequest                    400   ``bad_request``
TooManyEntities               413   ``too_many_entities``
body / header validation      422   ``validation``
missing or wrong bearer token 401   ``unauthorized``
OnlineStoreUnavailable        503   ``online_store_unavailable``
anything else                 500   ``internal`` (logged server-side)
============================  ====  ===========================

**Fast path.** A well-formed ``POST /v1/features`` is answered by :class:`_FastFeatures`, a
thin ASGI layer in front of the framework: it checks the bearer token and headers, validates
the body with the same :class:`~parity.serving.http_schema.FeaturesRequest` model
(``model_validate_json``), and builds the same response with the same function; lookups of
up to :data:`INLINE_ROWS` entity rows run on the event loop (a Redis round trip of well
under a millisecond), larger ones in the threadpool so they never hold up the loop, health
probes or small requests. Whatever it does not answer itself (a body or header that does not
validate, a missing or wrong token, another content type, any error of the lookup) is
replayed, body included, to the FastAPI route below, so every error answer is the one
documented here and in ``/openapi.json``. The framework's per-request dependency solving and
threadpool hop cost about 1.1 ms of CPU per small request on this machine; the fast path is
what lets one worker sustain 1,000 lookups/s.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, MutableMapping

import orjson
from fastapi import Body, Depends, FastAPI, Header, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from parity.errors import ConfigError, ParityError
from parity.registry.config import ServingConfig
from parity.registry.online.writer import OnlineStoreUnavailable
from parity.registry.resolve import UnknownFeatureError
from parity.serving.answer_json import ORJSON_OPTIONS, features_json
from parity.serving.feature_log import FeatureLogger, LoggedColumn
from parity.serving.http_schema import FeaturesRequest, FeaturesResponse, HealthResponse, error_responses
from parity.serving.lookup import BadRequest, OnlineReader, TooManyEntities
from parity.serving.stream_metrics import StreamMetrics

log = logging.getLogger(__name__)

LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ENDPOINTS = frozenset({"/v1/features", "/v1/health", "/metrics", "/openapi.json", "/docs"})
INLINE_ROWS = 64  # fast-path lookups of at most this many entity rows run on the event loop
_JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")
REQUEST_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN.encode())
AUTH_HINT = "send `Authorization: Bearer <token>` with a token from serving.auth_tokens or PARITY_AUTH_TOKENS"


class Unauthorized(ParityError):
    """The request carries no bearer token, or one that is not configured."""


# -- auth ---------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_settings(config: ServingConfig, host: str) -> tuple[list[str], bool]:
    """``(tokens, required)``: tokens from ``serving.auth_tokens`` plus ``PARITY_AUTH_TOKENS``
    (comma-separated); required is ``serving.require_auth``, or, when unset, whether ``host``
    is not a loopback address. Required without tokens is a ``ConfigError``."""
    tokens: list[str] = []
    for token in [*config.auth_tokens, *os.environ.get("PARITY_AUTH_TOKENS", "").split(",")]:
        token = token.strip()
        if token and token not in tokens:
            tokens.append(token)
    required = config.require_auth if config.require_auth is not None else not is_loopback(host)
    if required and not tokens:
        why = "serving.require_auth is true" if config.require_auth else f"host {host!r} is not a loopback address"
        raise ConfigError(f"serving requires authentication ({why}) but no token is configured",
                          hint="set serving.auth_tokens in feature_store.yaml or the PARITY_AUTH_TOKENS environment "
                               "variable (comma-separated), or bind to 127.0.0.1")
    return tokens, required


def _authorizer(tokens: list[str]):
    encoded = [t.encode() for t in tokens]
    bearer = HTTPBearer(auto_error=False, description="a token from serving.auth_tokens / PARITY_AUTH_TOKENS")

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if credentials is None:
            raise Unauthorized("missing bearer token", hint=AUTH_HINT)
        given, matched = credentials.credentials.encode(), False
        for token in encoded:  # compare with every token: the time does not depend on which matched
            matched |= hmac.compare_digest(given, token)
        if not matched:
            raise Unauthorized("invalid bearer token", hint=AUTH_HINT)

    return authorize


# -- metrics ------------------------------------------------------------------------------

class _Metrics:
    """The app's Prometheus metrics.

    Without ``shared_dir`` (one process: ``parity serve --workers 1``, the in-process app of
    tests and ``FeatureStore``) the app has its own registry and a scrape reports this
    process. With ``shared_dir`` (a worker of ``parity serve``) every counter and histogram
    is kept in prometheus_client's multiprocess files in that directory (the supervisor
    creates it before forking the workers), and a scrape reports their sum over every worker
    that ever ran in it: the living ones and the ones that died, whose counts stay.

    The reader's and the serving cache's counters are plain integers bumped on the lookup
    path; they are copied into counters (by their increase since the last copy) when a
    request ends and at scrape time. The feature logger's are counted as they change. The
    stream engine's freshness figures (:mod:`parity.serving.stream_metrics`) are read from
    Redis at scrape time by the worker scraped, so they appear once."""

    def __init__(self, reader: OnlineReader, feature_logger: FeatureLogger | None,
                 shared_dir: str | None = None) -> None:
        import threading

        self.registry = CollectorRegistry(auto_describe=True)
        # first: a scrape that cannot read Redis counts parity_errors{type="metrics_redis"} before it is collected
        self.registry.register(StreamMetrics(reader.client, reader.project, reader.defs,
                                             on_error=lambda kind: self.errors.labels(kind).inc()))
        own = self.registry
        if shared_dir is not None:
            from prometheus_client import multiprocess

            _multiprocess_values(shared_dir)
            multiprocess.MultiProcessCollector(self.registry, path=shared_dir)
            own = None  # the metrics below are collected from the files, every worker's
        self.lookup = Histogram("parity_lookup_seconds", "Time of one online lookup (Redis round trip and merge)",
                                buckets=LOOKUP_BUCKETS, registry=own)
        self.requests = Counter("parity_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=own)
        self.errors = Counter("parity_errors", "Error responses by error type", ["type"], registry=own)
        self.fast_path = Counter("parity_fast_path_answers", "POST /v1/features answered by the fast path (the "
                                 "rest went through the framework's route)", registry=own)
        self.reader = reader
        self._lock = threading.Lock()
        # (counter, object, attribute, value copied so far): the reader's and the cache's integers
        self._copied: list[list[Any]] = [
            [Counter("parity_redis_round_trips", "Redis round trips of lookups", registry=own),
             reader.stats, "round_trips", 0],
            [Counter("parity_lookup_entities", "Entity rows looked up", registry=own), reader.stats, "entities", 0]]
        cache = reader.cache
        if cache is not None:
            for name, attribute, text in (
                    ("parity_tile_cache_hits", "hits", "Entities whose complete window parts were kept (only their "
                                                       "open tile read)"),
                    ("parity_tile_cache_fresh", "fresh", "Hits whose open tile's fold was kept too (nothing of them "
                                                         "read)"),
                    ("parity_tile_cache_misses", "misses", "Entities of cached views read in full"),
                    ("parity_tile_cache_rereads", "reread", "Kept entities found changed after the read, read again")):
                self._copied.append([Counter(name, text, registry=own), cache.stats, attribute, 0])
        self.copy()
        if feature_logger is not None:
            logged = {"dropped": Counter("parity_feature_log_dropped", "Sampled responses dropped (queue full)",
                                         registry=own),
                      "written_rows": Counter("parity_feature_log_written_rows", "Feature log rows written to Parquet",
                                              registry=own)}
            feature_logger.watch(lambda name, n: logged[name].inc(n) if name in logged else None)

    def copy(self) -> None:
        """Add to each copied counter what its integer grew by since the last copy."""
        with self._lock:
            for entry in self._copied:
                value = getattr(entry[1], entry[2])
                if value != entry[3]:
                    entry[0].inc(value - entry[3])
                    entry[3] = value

    def scrape(self) -> bytes:
        self.copy()
        return generate_latest(self.registry)


def _multiprocess_values(shared_dir: str) -> None:
    """From now on, metrics created in this process keep their values in ``shared_dir``'s
    multiprocess files (prometheus_client chooses its value class when it is imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; a worker chooses after the fork)."""
    from prometheus_client import values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared_dir
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()


# -- errors -------------------------------------------------------------------------------

ERRORS: tuple[tuple[type[ParityError], int, str], ...] = (  # most specific first
    (TooManyEntities, 413, "too_many_entities"),
    (BadRequest, 400, "bad_request"),
    (UnknownFeatureError, 404, "unknown_feature"),
    (Unauthorized, 401, "unauthorized"),
    (OnlineStoreUnavailable, 503, "online_store_unavailable"),
)


def _json(body: Any, status: int = 200, background: BackgroundTask | None = None,
          headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=ORJSON_OPTIONS), status_code=status, media_type="application/json",
                    background=background, headers=headers)


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """One entry per offending field; a value failing every member of a union is one entry."""
    out: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            out.setdefault("body", f"not valid JSON ({reason}) at position {loc[-1]}" if reason else "not valid JSON")
            continue
        if loc and loc[-1] in ("bool", "int", "str", "none", "list[str]", "function-after[_exactly_one()]"):
            loc = loc[:-1]
        where = ".".join(loc) or "body"
        message = error.get("msg", "invalid")
        if len(loc) >= 4 and loc[:2] == ["body", "entities"]:
            message = "entity values must be JSON integers, strings or booleans"
        out.setdefault(where, message.removeprefix("Value error, "))
    return [{"field": k, "message": v} for k, v in out.items()]


def _install_error_handlers(app: FastAPI, metrics: _Metrics) -> None:
    def error(request: Request, status: int, kind: str, message: str, hint: str | None = None,
              **extra: Any) -> Response:
        metrics.errors.labels(kind).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return _json({"error": {"type": kind, "message": message, "hint": hint, "request_id": _request_id(request),
                                **extra}}, status, headers=headers)

    async def parity_error(request: Request, exc: Exception) -> Response:
        for cls, status, kind in ERRORS:
            if isinstance(exc, cls):
                return error(request, status, kind, str(exc), getattr(exc, "hint", None))
        log.error("request %s failed: %s", _request_id(request), exc, exc_info=exc)
        return error(request, 500, "internal", "internal error")

    async def validation_error(request: Request, exc: Exception) -> Response:
        fields = _field_errors(exc)  # type: ignore[arg-type]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return error(request, 422, "validation", f"invalid request: {summary}",
                     'e.g. {"service": "home_feed_ranking", "entities": {"user_id": [1], "video_id": [10, 11]}}',
                     fields=fields)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        message = str(getattr(exc, "detail", "")) or kind.replace("_", " ")
        hint = None
        if status in (404, 405):
            message = f"{message}: {request.method} {request.url.path}"
            hint = "endpoints: POST /v1/features, GET /v1/health, GET /metrics, GET /openapi.json"
        return error(request, status, kind, message, hint)

    app.add_exception_handler(ParityError, parity_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


class _Observe:
    """Outermost ASGI layer: assigns the request id (``X-Request-Id`` or a uuid4 hex), echoes
    it, counts requests by endpoint and code, and turns any unhandled exception into a JSON
    500 without a traceback (the traceback goes to the log)."""

    def __init__(self, app: Any, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = given.decode() if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status, started = 500, False

        async def observed_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            log.exception("request %s failed", rid)
            self.metrics.errors.labels("internal").inc()
            if started:
                raise
            await _json({"error": {"type": "internal", "message": "internal error", "request_id": rid}},
                        500)(scope, receive, observed_send)
        finally:
            path = scope.get("path", "")
            self.metrics.requests.labels(path if path in ENDPOINTS else "other", str(status)).inc()
            self.metrics.copy()


class _FastFeatures:
    """``POST /v1/features`` without the framework's per-request machinery (module docstring).

    ``answer(request, request_id) -> Response`` is the route's own answer function. Anything
    this layer does not answer goes to ``app`` with the body replayed."""

    def __init__(self, app: Any, answer: Any, tokens: list[str], auth_on: bool, metrics: "_Metrics") -> None:
        self.app, self.answer, self.auth_on = app, answer, auth_on
        self.bearers = [b"Bearer " + t.encode() for t in tokens]
        self.answered = metrics.fast_path

    def _admissible(self, headers: list[tuple[bytes, bytes]]) -> bool:
        content_type = authorization = request_id = None
        for name, value in headers:
            if name == b"content-type":
                content_type = value.lower()
            elif name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                request_id = value
        if content_type not in _JSON_TYPES:
            return False
        if request_id is not None and not _REQUEST_ID.fullmatch(request_id):
            return False  # the route answers 422 naming the header
        if self.auth_on:
            if authorization is None:
                return False
            matched = False
            for bearer in self.bearers:  # compare with every token: the time does not depend on which matched
                matched |= hmac.compare_digest(authorization, bearer)
            return matched
        return True

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/features" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if self._admissible(scope["headers"]):
            try:
                request = FeaturesRequest.model_validate_json(body)
            except ValueError:  # pydantic's ValidationError: the route answers 422 naming the field
                request = None
            if request is not None:
                rid = scope["state"]["request_id"]
                rows = max(len(v) for v in request.entities.values())
                try:
                    if rows <= INLINE_ROWS:
                        response = self.answer(request, rid, True)
                    else:
                        response = await run_in_threadpool(self.answer, request, rid, True)
                except Exception:  # every error answer is the route's (it maps and counts them)
                    response = None
                if response is not None:
                    self.answered.inc()
                    return await response(scope, replay, send)
        return await self.app(scope, replay, send)


# -- the app ------------------------------------------------------------------------------

def _feature_set(service: str | None, features: list[str] | None) -> str:
    if service is not None:
        return service
    return "adhoc-" + hashlib.sha1("\n".join(sorted(features or ())).encode()).hexdigest()[:12]


def create_app(reader: OnlineReader, *, tokens: list[str], require_auth: bool,
               feature_logger: FeatureLogger | None = None, project: str,
               metrics_dir: str | None = None) -> FastAPI:
    """The serving app for ``reader``. When ``require_auth`` or ``tokens`` are given, every
    endpoint but ``/v1/health`` needs ``Authorization: Bearer <token>``. A ``feature_logger``
    gets every answered request after the response is sent, and is closed on shutdown.
    ``metrics_dir``: the multiprocess metrics directory shared by the workers of one server
    (``/metrics`` then reports all of them, see :class:`_Metrics`); None for one process."""
    auth_on = bool(require_auth or tokens)
    if auth_on and not tokens:
        raise ConfigError("authentication is required but no token is configured",
                          hint="set serving.auth_tokens or PARITY_AUTH_TOKENS")
    protected = [Depends(_authorizer(tokens))] if auth_on else []
    metrics = _Metrics(reader, feature_logger, metrics_dir)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if feature_logger is not None:
            feature_logger.close()

    app = FastAPI(title=f"Parity online features ({project})", version="1", lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  description="Feature vectors at request time, with a status and an age per value. "
                              + ("Every endpoint but /v1/health needs a bearer token." if auth_on else ""))
    _install_error_handlers(app, metrics)
    errors = error_responses(auth_on)

    def answer(body: FeaturesRequest, rid: str, may_retry: bool = False) -> Response:
        """The response of a valid request. ``may_retry=True`` (the fast path): a failed lookup
        is not timed, because the route, which maps the error, runs it again and times it."""
        features = list(body.features) if body.features is not None else None
        started = time.perf_counter()
        try:
            result = reader.get_online_features(body.entities, service=body.service, features=features)
        except Exception as exc:
            import redis

            if not may_retry:
                metrics.lookup.observe(time.perf_counter() - started)
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                raise OnlineStoreUnavailable(f"online store (Redis) unreachable: {exc}",
                                             hint="check online_store.connection_string") from None
            raise
        metrics.lookup.observe(time.perf_counter() - started)
        resolved = reader.resolve(body.service, features)
        background = None
        if feature_logger is not None:
            background = BackgroundTask(_log, feature_logger, rid, body, features, result, resolved)
        return Response(features_json(rid, result, resolved), media_type="application/json", background=background)

    @app.post("/v1/features", dependencies=protected, response_model=None, tags=["features"],
              summary="Feature vectors for entities at request time",
              responses={200: {"model": FeaturesResponse, "description": "values, statuses and ages per feature"},
                         **errors})
    def get_features(request: Request, body: FeaturesRequest = Body(openapi_examples={
            "service": {"summary": "a feature service for 1 user and 3 candidate videos",
                        "value": {"service": "home_feed_ranking", "entities": {"user_id": [1],
                                                                               "video_id": [10, 11, 12]}}},
            "features": {"summary": "feature references",
                         "value": {"features": ["user_engagement:plays_1h", "user_engagement@2:*"],
                                   "entities": {"user_id": [1, 2]}}}}),
            x_request_id: str | None = Header(default=None, pattern=REQUEST_ID_PATTERN,
                                              description="echoed as request_id (default: a uuid4 hex)")) -> Response:
        return answer(body, _request_id(request))

    @app.get("/v1/health", response_model=None, tags=["operations"], summary="Liveness and Redis reachability",
             responses={200: {"model": HealthResponse}, 503: {"model": HealthResponse,
                                                              "description": "Redis is unreachable"}})
    def health() -> Response:
        try:
            reader.client.ping()
        except Exception as exc:  # any failure to PING is "unavailable"; the reason is in the body
            return _json({"status": "unavailable", "redis": "unreachable",
                          "message": f"online store (Redis) unreachable: {type(exc).__name__}: {exc}"}, 503)
        return _json({"status": "ok", "redis": "ok"})

    @app.get("/metrics", dependencies=protected, response_class=Response, tags=["operations"],
             summary="Prometheus metrics", responses={200: {"content": {"text/plain": {}}}, **(
                 {401: errors[401]} if auth_on else {})})
    def prometheus() -> Response:
        return Response(metrics.scrape(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/openapi.json", dependencies=protected, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=protected, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    app.add_middleware(_FastFeatures, answer=answer, tokens=tokens, auth_on=auth_on, metrics=metrics)
    app.add_middleware(_Observe, metrics=metrics)  # added last: the outermost layer
    app.state.metrics = metrics
    return app


async def _log(feature_logger: FeatureLogger, rid: str, body: FeaturesRequest, features: list[str] | None,
               result: Any, resolved: list) -> None:
    """Hand the answered request to the feature logger (non-blocking; failures are logged)."""
    try:
        rows = result.rows
        keys: dict[str, tuple[str, list]] = {}
        for item in resolved:
            for key, dtype in item.entity.join_keys.items():
                if key not in keys:
                    values = body.entities[key]
                    keys[key] = (dtype, values * rows if len(values) == 1 and rows > 1 else list(values))
        feature_logger.log(request_id=rid, now_us=result.now_us, feature_set=_feature_set(body.service, features),
                           keys=keys, columns=[LoggedColumn(n, result.dtypes[n]) for n in result.names],
                           values=result.values, statuses=result.status, ages_ms=result.age_ms)
    except Exception:
        log.exception("feature log: request %s not logged", rid)
