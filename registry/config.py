"""``feature_store.yaml``: Feast's keys keep Feast's meaning; Parity's sections sit beside them.

Feast's keys: ``project``, ``provider``, ``registry``, ``online_store``,
``offline_store``, ``entity_key_serialization_version`` (plus ``project_description``
and ``auth``, which Parity ignores). Parity's own sections (``offline_log``,
``streaming``, ``serving``, ``batch``) are strict: an unknown key is an error.

Stores are discriminated unions selected by ``type`` and validated by pydantic: no string
class paths, no ``Any``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from parity.errors import ConfigError
from parity.registry.durations import DurationSyntaxError, parse_duration

CONFIG_FILE = "feature_store.yaml"
PARITY_SECTIONS = ("offline_log", "streaming", "serving", "batch")


class _Feast(BaseModel):
    """A section Feast defines: Feast may add keys, so unknown ones are kept, not refused."""

    model_config = ConfigDict(frozen=True, extra="allow")


class _Parity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _duration(value: str) -> str:
    try:
        parse_duration(value)
    except DurationSyntaxError as exc:
        raise ValueError(str(exc)) from None
    return value


class RedisOnlineStore(_Feast):
    """Feast's redis online store. Without ``connection_string`` Parity starts its own Redis."""

    type: Literal["redis"]
    connection_string: str | None = None
    redis_type: Literal["redis"] = "redis"
    key_ttl_seconds: int | None = None


class DuckDBOfflineStore(_Feast):
    type: Literal["duckdb"]


OnlineStore = Annotated[Union[RedisOnlineStore], Field(discriminator="type")]
OfflineStore = Annotated[Union[DuckDBOfflineStore], Field(discriminator="type")]


class SqlRegistry(_Feast):
    """Feast's long form ``registry: {registry_type: sql|file, path: ...}``."""

    registry_type: Literal["sql", "file"] = "file"
    path: str


class OfflineLogConfig(_Parity):
    path: str = "data/offline_log"


class StreamingConfig(_Parity):
    engine: Literal["embedded", "flink"] = "embedded"
    bootstrap_servers: str | None = None
    group_id: str = "parity"
    max_batch: int = Field(default=20000, ge=1)
    flush_interval: str = "200ms"
    dead_letter: Literal["topic", "file"] = "topic"
    flink_kafka_connector_jar: str | None = None

    _check_flush = field_validator("flush_interval")(_duration)


class FeatureLogConfig(_Parity):
    """Sampled logging of served vectors to Parquet (off unless ``path`` is set)."""

    path: str | None = None
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    queue_size: int = Field(default=10_000, ge=1)


class ServingConfig(_Parity):
    host: str = "127.0.0.1"
    port: int = Field(default=8666, ge=0, le=65535)
    max_entities: int = Field(default=2000, ge=1)
    auth_tokens: list[str] = Field(default_factory=list)
    require_auth: bool | None = None  # None: required when binding to a non-loopback address
    feature_log: FeatureLogConfig = FeatureLogConfig()


class BatchConfig(_Parity):
    tiles_path: str = "data/tiles"
    memory_limit: str | None = None
    threads: int | None = Field(default=None, ge=1)
    temp_directory: str | None = None


class FeatureStoreConfig(BaseModel):
    """The parsed ``feature_store.yaml``. ``root`` is the folder that holds it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    project: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")
    project_description: str | None = None
    provider: str = "local"
    registry: Union[str, SqlRegistry] = "data/registry.db"
    online_store: OnlineStore = RedisOnlineStore(type="redis")
    offline_store: OfflineStore = DuckDBOfflineStore(type="duckdb")
    entity_key_serialization_version: int = 3
    auth: dict | None = None
    feature_defs: str = "feature_defs"
    offline_log: OfflineLogConfig = OfflineLogConfig()
    streaming: StreamingConfig = StreamingConfig()
    serving: ServingConfig = ServingConfig()
    batch: BatchConfig = BatchConfig()
    root: Path = Field(default=Path("."), exclude=True)

    @property
    def registry_location(self) -> str:
        """A SQLite path (relative to ``root``) or a ``postgresql://`` URL."""
        return self.registry if isinstance(self.registry, str) else self.registry.path

    def path(self, relative: str) -> Path:
        """A path from the config, resolved against the folder holding feature_store.yaml."""
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.root / candidate


def _describe(error: dict) -> tuple[str, str]:
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-after"))
    kind = error["type"]
    if kind == "extra_forbidden":
        return loc, "unknown key (fix: remove it or check its spelling; see docs/configuration.md)"
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "union_tag_invalid":
        return loc, f"type {error['ctx']['tag']!r} is not supported (fix: use {error['ctx']['expected_tags']})"
    return loc, error["msg"]


def load_config(path: str | Path = CONFIG_FILE) -> FeatureStoreConfig:
    """Read and validate a feature_store.yaml (a file, or the folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path}: not found", hint="run `parity init DIR`, or pass --config")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys such as project:, registry:")
    # a section whose keys are all commented out is an empty section, not an error
    raw = {key: value for key, value in raw.items() if not (value is None and key in PARITY_SECTIONS)}
    try:
        return FeatureStoreConfig.model_validate({**raw, "root": path.parent.resolve()})
    except ValidationError as exc:
        lines = [f"{path}: {loc}: {msg}" for loc, msg in map(_describe, exc.errors())]
        raise ConfigError("\n".join(lines), hint="see docs/configuration.md for every key") from None
