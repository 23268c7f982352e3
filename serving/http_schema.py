"""The documented shapes of the HTTP API (``/openapi.json``).

Requests are validated with :class:`FeaturesRequest`. Responses are built with orjson in
:mod:`parity.serving.app`; the response models here only document them (and
``tests/test_http_schemathesis.py`` checks every answer against them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, WithJsonSchema,
                      field_validator, model_validator)

EntityValue = StrictBool | StrictInt | StrictStr | None


class FeaturesRequest(BaseModel):
    """Name a feature service *or* list feature references, and give the entities columnar."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema, _cls: _request_schema(schema))

    # not nullable in the schema: leave the other one out (``oneOf`` says exactly one)
    service: Annotated[str | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200})] = Field(
        default=None, min_length=1, max_length=200, strict=True,
        description="a feature service name (exclusive with `features`)")
    features: Annotated[list[StrictStr] | None, WithJsonSchema(
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000})] = Field(
        default=None, min_length=1, max_length=1000,
        description="feature references: `view:feature`, `view@2:feature` or `view:*` (exclusive with `service`)")
    entities: dict[str, Annotated[list[EntityValue], Field(min_length=1)]] = Field(
        min_length=1, description="join key -> values (JSON integers, strings or booleans); a list of 1 is "
                                  "broadcast to the other lists' length")

    @field_validator("service", "features", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null: leave the key out instead")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "FeaturesRequest":
        if (self.service is None) == (self.features is None):
            raise ValueError("give exactly one of `service` or `features`")
        return self


def _request_schema(schema: dict[str, Any]) -> None:
    """Exactly one of ``service``/``features`` (``oneOf``), no null defaults, examples."""
    for name in ("service", "features"):
        schema["properties"][name].pop("default", None)
    schema["oneOf"] = [{"required": ["service"]}, {"required": ["features"]}]
    schema["examples"] = [
        {"service": "home_feed_ranking", "entities": {"user_id": [1], "video_id": [10, 11, 12]}},
        {"features": ["user_engagement:plays_1h", "video_stats@2:*"], "entities": {"user_id": [1, 2]}}]


class FeatureColumn(BaseModel):
    dtype: str = Field(description="Parity dtype of the values, e.g. int64, float64, timestamp, list<int64>")
    values: list[Any] = Field(description="one value per entity row (timestamps as ISO-8601 UTC strings)")
    status: list[Literal["ok", "missing", "expired", "stale"]]
    age_ms: list[float | None] = Field(description="event-time age of each value in ms (null: no event)")
    defaulted: list[bool] | None = Field(default=None, description="only for features with a default: whether "
                                                                   "the default replaced a missing/expired value")


class FeaturesResponse(BaseModel):
    request_id: str
    now: datetime = Field(description="the lookup instant (UTC); values are computed at it")
    rows: int
    features: dict[str, FeatureColumn] = Field(description="output name (view__feature) -> column")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    type: str = Field(description="unknown_feature, bad_request, too_many_entities, validation, unauthorized, "
                                  "online_store_unavailable, not_found, method_not_allowed or internal")
    message: str
    hint: str | None = None
    request_id: str | None = None
    fields: list[FieldError] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: str
    message: str | None = None


def _error_doc(description: str, kind: str, message: str) -> dict:
    return {"model": ErrorResponse, "description": description,
            "content": {"application/json": {"example": {"error": {"type": kind, "message": message, "hint": None,
                                                                   "request_id": "5f0c..."}}}}}


def error_responses(auth: bool) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of ``POST /v1/features`` (401 only when auth is on)."""
    errors: dict[int | str, dict[str, Any]] = {400: _error_doc("bad request: wrong key type, unknown or missing join key, length mismatch",
                              "bad_request", "join key 'user_id' must be an integer (int64), got str '1' (row 0)"),
              404: _error_doc("unknown feature service, view, version or feature", "unknown_feature",
                              "unknown feature service 'home_feed'"),
              413: _error_doc("more entity rows than serving.max_entities", "too_many_entities",
                              "5000 entity rows exceed the limit of 2000"),
              422: _error_doc("the body does not match the schema", "validation",
                              "invalid request: body.entities: Field required"),
              500: _error_doc("internal error (details are in the server log)", "internal", "internal error"),
              503: _error_doc("the online store (Redis) is unreachable", "online_store_unavailable",
                              "online store (Redis) unreachable: Connection refused")}
    if auth:
        errors[401] = _error_doc("missing or invalid bearer token", "unauthorized", "missing bearer token")
    return errors
