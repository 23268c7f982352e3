"""Definition models: the one IR every front end produces and every engine renders.

Frozen pydantic v2 models with ``extra="forbid"``. They check *shape* (types, required
fields); the cross-object *meaning* checks (unknown column, window vs hop, ...) live in
:mod:`parity.registry.validate`, which collects every problem before failing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, StringConstraints

from parity.registry.types import DType

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

Agg = Literal["count", "sum", "mean", "min", "max", "last", "last_k"]
AGGS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "last", "last_k")
Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Entity(Model):
    """A thing features describe, with typed join keys (composite keys allowed, ordered)."""

    name: Name
    join_keys: dict[str, DType]
    description: str = ""


class KafkaFace(Model):
    """The streamed face of a source: a Kafka topic of JSON events."""

    topic: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    format: Literal["json"] = "json"
    dead_letter_topic: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,249}$")


class OfflineLogFace(Model):
    """The landed face of a source: a Parquet dataset, Hive-partitioned by date.

    ``path`` is relative to the ``offline_log`` root of feature_store.yaml (default: the
    source name).
    """

    path: str | None = None


class SnapshotFace(Model):
    """A batch-only table (e.g. user profiles): a Parquet file or glob."""

    path: str


class Source(Model):
    """A named event stream (``kind: stream``) or batch-only table (``kind: snapshot``)."""

    name: Name
    kind: Literal["stream", "snapshot"] = "stream"
    schema_: dict[str, DType] = Field(alias="schema")
    timestamp_field: str
    kafka: KafkaFace | None = None
    offline_log: OfflineLogFace | None = None
    snapshot: SnapshotFace | None = None
    max_future: str = "5m"
    description: str = ""


class Feature(Model):
    """One feature of a view.

    Either an aggregation (``agg`` over a ``window`` or ``lifetime``, optional ``column``,
    ``where`` and ``k`` for last_k) or a latest value (``agg: last`` with a ``ttl`` and no
    window).
    """

    name: Name
    agg: Agg
    column: str | None = None
    window: str | None = None
    where: str | None = None
    k: StrictInt | None = None
    ttl: str | None = None
    default: Scalar | None = None
    description: str = ""

    @property
    def is_latest(self) -> bool:
        return self.window is None and self.ttl is not None


class FeatureView(Model):
    """Features of one entity computed from one source. ``(name, version)`` is unique."""

    name: Name
    version: StrictInt = Field(default=1, ge=1)
    entity: str
    source: str
    owner: str = Field(min_length=1)
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    online: bool = True
    offline: bool = True
    freshness_slo: str | None = None
    key_columns: dict[str, str] = Field(default_factory=dict)
    derived: dict[str, str] = Field(default_factory=dict)
    hops: dict[str, str] = Field(default_factory=dict)
    features: list[Feature] = Field(min_length=1)

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)

    def source_column_of(self, join_key: str) -> str:
        """The source column that carries an entity join key (default: the same name)."""
        return self.key_columns.get(join_key, join_key)


class FeatureService(Model):
    """A named list of feature references that callers ask for by name."""

    name: Name
    features: list[str] = Field(min_length=1)
    description: str = ""
    owner: str | None = None


class Definitions(Model):
    """A whole definition set (what ``feature_defs/`` holds)."""

    entities: list[Entity] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    feature_views: list[FeatureView] = Field(default_factory=list)
    feature_services: list[FeatureService] = Field(default_factory=list)

    def entity(self, name: str) -> Entity | None:
        return next((e for e in self.entities if e.name == name), None)

    def source(self, name: str) -> Source | None:
        return next((s for s in self.sources if s.name == name), None)

    def views(self, name: str) -> list[FeatureView]:
        """Every version of a view, oldest first."""
        return sorted((v for v in self.feature_views if v.name == name), key=lambda v: v.version)

    def view(self, name: str, version: int | None = None) -> FeatureView | None:
        """A view at ``version``, or its newest version when ``version`` is None."""
        matching = self.views(name)
        if version is None:
            return matching[-1] if matching else None
        return next((v for v in matching if v.version == version), None)

    def service(self, name: str) -> FeatureService | None:
        return next((s for s in self.feature_services if s.name == name), None)


_REF = re.compile(r"^(?P<view>[a-z][a-z0-9_]{0,62})(?:@v?(?P<version>[0-9]+))?:(?P<feature>[a-z][a-z0-9_]{0,62}|\*)$")


@dataclass(frozen=True)
class FeatureRef:
    """``view:feature``, ``view@2:feature`` (version pinned) or ``view:*`` (every feature).

    An unpinned reference means the view's newest live version.
    """

    view: str
    feature: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> FeatureRef:
        match = _REF.match(text.strip()) if isinstance(text, str) else None
        if not match:
            raise ValueError(
                f"bad feature reference {text!r}: write view:feature, view@2:feature or view:*"
            )
        version = match["version"]
        return cls(match["view"], match["feature"], int(version) if version else None)

    def __str__(self) -> str:
        pinned = f"@{self.version}" if self.version is not None else ""
        return f"{self.view}{pinned}:{self.feature}"

    @property
    def output_name(self) -> str:
        """The column name of this feature in training sets and lookups.

        ``view__feature`` for an unpinned reference, ``view__v2__feature`` for a pinned one.
        Names are lower case and contain ``__`` only as these separators (view and feature
        names cannot contain a double underscore, see :mod:`parity.registry.validate`).
        """
        if self.version is None:
            return f"{self.view}__{self.feature}"
        return f"{self.view}__v{self.version}__{self.feature}"
