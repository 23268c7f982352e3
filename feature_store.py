"""``FeatureStore``: the Python entry point over a project's registry and engines.

Engines are imported only when a method needs them, so constructing a FeatureStore
starts nothing.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from parity.errors import ParityError
from parity.registry.config import FeatureStoreConfig, load_config
from parity.registry.models import Definitions
from parity.registry.resolve import ResolvedFeature, resolve


class FeatureStore:
    """A Parity project: ``FeatureStore("path/to/feature_store.yaml")``.

    ``definitions`` defaults to what the registry holds (``parity apply``); pass a
    :class:`Definitions` to work without a registry (tests, notebooks).
    """

    def __init__(self, config: str | Path | FeatureStoreConfig = "feature_store.yaml", *,
                 definitions: Definitions | None = None) -> None:
        self.config = config if isinstance(config, FeatureStoreConfig) else load_config(config)
        self._definitions = definitions

    @property
    def definitions(self) -> Definitions:
        if self._definitions is None:
            from parity.registry.plan import registry_definitions
            from parity.registry.store import open_store

            with open_store(self.config.registry_location, base_dir=self.config.root) as store:
                snapshot = store.snapshot()
            if not snapshot.objects:
                raise ParityError("the registry holds no definitions yet", hint="run `parity apply` first")
            self._definitions = registry_definitions(snapshot)
        return self._definitions

    @property
    def offline_log(self):
        from parity.batch.offline_log import OfflineLog

        return OfflineLog.from_config(self.config)

    @property
    def tiles_root(self) -> Path:
        return self.config.path(self.config.batch.tiles_path)

    def scan_sql(self, source_name: str) -> str:
        """DuckDB table expression reading a source: its offline log, or its snapshot files."""
        from parity.batch.offline_log import snapshot_scan_sql

        source = self.definitions.source(source_name)
        if source is None:
            raise ParityError(f"unknown source {source_name!r}")
        if source.kind == "snapshot":
            return snapshot_scan_sql(source, self.config.root)
        return self.offline_log.scan_sql(source)

    def resolve(self, *, features: Sequence[str] | None = None, service: str | None = None) -> list[ResolvedFeature]:
        return resolve(self.definitions, service=service, features=features)

    def _connect(self, capped: bool = True):
        from parity.batch.engine import connect

        batch = self.config.batch
        temp = self.config.path(batch.temp_directory) if batch.temp_directory else None
        return connect(batch.memory_limit, batch.threads, temp, capped=capped)

    def get_training_set(self, spine: Any, *, features: Sequence[str] | None = None, service: str | None = None,
                         mode: str = "event_time", timestamp_column: str = "ts", progress: bool = False,
                         out: str | Path | None = None, phases=None):
        """Point-in-time values of the features at each spine row's time.

        ``spine``: a pyarrow Table, a pandas DataFrame or a Parquet/CSV/JSON-lines path, with
        the entities' join keys and ``timestamp_column`` (UTC). Extra columns (labels) are
        kept; rows keep the spine's order. ``mode``: ``"event_time"`` (every event in the
        log) or ``"as_served"`` (only events already applied online at ``t``). Returns an
        Arrow table, or writes Parquet to ``out`` and returns its path.
        """
        from parity.batch.engine import run_training_set

        resolved = self.resolve(features=features, service=service)
        con = self._connect()
        try:
            return run_training_set(con, self.definitions, resolved, spine, self.scan_sql, mode=mode,
                                    timestamp_column=timestamp_column, out=out, progress=progress, phases=phases)
        finally:
            con.close()

    def get_training_dataframe(self, spine: Any, **kwargs):
        """:meth:`get_training_set` as a pandas DataFrame."""
        return self.get_training_set(spine, **kwargs).to_pandas()

    def land(self, source: str, files: Sequence[str | Path], *, progress: bool = False):
        """Land Parquet / JSON-lines / CSV files into a source's offline log (idempotent)."""
        from parity.batch.land import land_files, source_key_columns

        found = self.definitions.source(source)
        if found is None:
            known = ", ".join(s.name for s in self.definitions.sources)
            raise ParityError(f"unknown source {source!r}", hint=f"sources: {known}")
        return land_files(self.offline_log, found, [Path(f) for f in files],
                          key_columns=source_key_columns(self.definitions, source), progress=progress)

    def backfill(self, start: datetime, end: datetime, *, views: Sequence[str] | None = None,
                 progress: bool = False, handoff: bool = False):
        """Compute tiles for ``[start, end)`` from the offline log (idempotent per date);
        ``handoff``: cut stream sources at Kafka offsets for a seamless stream takeover
        (see :mod:`parity.batch.backfill`)."""
        from parity.batch.backfill import backfill

        con = self._connect(capped=False)
        try:
            return backfill(con, self.definitions, self.tiles_root, self.scan_sql, start, end, views, progress,
                            handoff)
        finally:
            con.close()

    # -- online --------------------------------------------------------------------------
    def _redis(self):
        if getattr(self, "_redis_client", None) is None:
            from parity.embedded import online_store_url, redis_client

            self._redis_client = redis_client(online_store_url(self.config))
        return self._redis_client

    def online_writer(self, clock=None):
        """The project's :class:`~parity.registry.online.writer.OnlineWriter` (``clock``: µs)."""
        from parity.registry.online.writer import OnlineWriter, wall_clock_us

        return OnlineWriter(self._redis(), self.config.project, self.definitions, clock=clock or wall_clock_us)

    def online_reader(self, clock=None):
        from parity.registry.online.writer import wall_clock_us
        from parity.serving.lookup import OnlineReader

        if getattr(self, "_reader", None) is None or clock is not None:
            self._reader = OnlineReader(self._redis(), self.config.project, self.definitions,
                                        clock=clock or wall_clock_us, max_entities=self.config.serving.max_entities)
        return self._reader

    def get_online_features(self, entities: dict[str, Sequence[Any]], *, service: str | None = None,
                            features: Sequence[str] | None = None, now: datetime | None = None):
        """Feature values at ``now`` (default: the clock) for columnar ``entities``, e.g.
        ``{"user_id": [1], "video_id": [10, 11]}`` (a list of 1 is broadcast). Returns an
        :class:`~parity.serving.lookup.OnlineResult` (``.values``, ``.status``, ``.age_ms``,
        ``.to_arrow()``, ``.to_dict()``)."""
        from parity.registry.durations import to_micros

        reader = self.online_reader()
        return reader.get_online_features(entities, service=service, features=features,
                                          now=None if now is None else to_micros(now))

    def materialize(self, *, views: Sequence[str] | None = None, progress: bool = False, clock=None):
        """Load backfilled tiles into the online store (``parity materialize``)."""
        from parity.serving.materialize import materialize

        return materialize(self.online_writer(clock), self.definitions, self.tiles_root, views, progress,
                           log=self.offline_log)
