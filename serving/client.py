"""Python client of the Parity HTTP API (``parity serve``): ``parity.Client``.

::

    with parity.Client("http://127.0.0.1:8666", token="...") as client:
        result = client.get_online_features({"user_id": [1], "video_id": [10, 11]},
                                            service="home_feed_ranking")
        result.values["user_engagement__plays_1h"], result.status["user_engagement__plays_1h"]

One ``httpx.Client`` with keep-alive per :class:`Client`. An error response raises a
:class:`ClientError` subclass carrying the HTTP status, the server's error type, message,
hint and request id; an unreachable server raises :class:`ServerUnavailable` (no status).
Timestamp values (dtype ``timestamp`` / ``list<timestamp>``) come back as aware UTC
datetimes, as in-process lookups return them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import httpx
import orjson

from parity.errors import ParityError
from parity.serving.result import FeatureColumns


class ClientError(ParityError):
    """An error answer of the Parity server (or no answer). ``status_code`` is None when
    the server could not be reached."""

    def __init__(self, message: str, *, status_code: int | None = None, error_type: str | None = None,
                 hint: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status_code = status_code
        self.error_type = error_type
        self.request_id = request_id


class BadRequestError(ClientError):
    """400 (a key of the wrong type, an unknown or missing join key) or 422 (bad shape)."""


class UnknownFeature(ClientError):
    """404: unknown feature service, view, version or feature."""


class TooManyEntitiesError(BadRequestError):
    """413: more entity rows than the server's ``serving.max_entities``."""


class AuthenticationError(ClientError):
    """401: missing or invalid bearer token."""


class ServerUnavailable(ClientError):
    """503 (the online store is unreachable) or the server itself cannot be reached."""


class ServerError(ClientError):
    """500 or another unexpected answer."""


_BY_STATUS: dict[int, type[ClientError]] = {400: BadRequestError, 401: AuthenticationError, 404: UnknownFeature,
                                            413: TooManyEntitiesError, 422: BadRequestError, 503: ServerUnavailable}


@dataclass(kw_only=True)
class ClientResult(FeatureColumns):
    """A lookup's answer over HTTP, columnar: per output name, values, statuses, ages and
    (for features with a default) whether the default was served."""

    now: datetime
    request_id: str


def _time(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _decode(values: list, dtype: str) -> list:
    if dtype == "timestamp":
        return [_time(v) for v in values]
    if dtype == "list<timestamp>":
        return [None if v is None else [_time(x) for x in v] for v in values]
    return values


class Client:
    """A client of one Parity server. ``token`` is sent as ``Authorization: Bearer``;
    ``timeout`` (seconds) bounds each request."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 5.0) -> None:
        headers = {"Accept": "application/json", "User-Agent": "parity-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_keepalive_connections=10, keepalive_expiry=30.0))

    def get_online_features(self, entities: Mapping[str, Sequence[Any]], service: str | None = None,
                            features: Sequence[str] | None = None, *, request_id: str | None = None) -> ClientResult:
        """Feature values at the server's ``now`` for columnar ``entities`` (a list of 1 is
        broadcast). Name a ``service`` or list ``features``, not both."""
        if (service is None) == (features is None):
            raise BadRequestError("pass exactly one of service= or features=")
        body: dict[str, Any] = {"entities": {k: list(v) for k, v in entities.items()}}
        if service is not None:
            body["service"] = service
        else:
            body["features"] = list(features or ())
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        data = self._call("POST", "/v1/features", content=orjson.dumps(body), headers=headers)
        result = ClientResult(rows=data["rows"], now=datetime.fromisoformat(data["now"]),
                              request_id=data["request_id"])
        for name, column in data["features"].items():
            dtype = column.get("dtype", "")
            result.names.append(name)
            result.dtypes[name] = dtype
            result.values[name] = _decode(column["values"], dtype)
            result.status[name] = column["status"]
            result.age_ms[name] = column["age_ms"]
            if "defaulted" in column:
                result.defaulted[name] = column["defaulted"]
        return result

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "redis": "ok"}``; :class:`ServerUnavailable` when Redis is not."""
        return self._call("GET", "/v1/health")

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach the Parity server at {self.url}: {type(exc).__name__}: {exc}",
                                    hint="is `parity serve` running there?") from None
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if response.status_code == 200 and isinstance(data, dict):
            return data
        raise _error(response.status_code, data, response.text)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


def _error(status: int, data: Any, text: str) -> ClientError:
    cls = _BY_STATUS.get(status, ServerError)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return cls(f"HTTP {status}: {error.get('message', '')}", status_code=status, error_type=error.get("type"),
                   hint=error.get("hint"), request_id=error.get("request_id"))
    if isinstance(data, dict) and "status" in data:  # /v1/health's 503 body
        return cls(f"HTTP {status}: {data.get('message') or data['status']}", status_code=status,
                   error_type=data["status"])
    return cls(f"HTTP {status}: {text[:200]}", status_code=status)
