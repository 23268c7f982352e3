"""Feast 0.67 baseline for Parity's online-serving benchmark: ``get_online_features`` on Redis.

    python benchmarks/feast_online.py --redis-url redis://127.0.0.1:6390/0 --users 10000 --videos 20000

What it measures. ``FeatureStore.get_online_features(...).to_dict()``, called in this process,
against a real Redis server given by URL, with Feast holding *precomputed* values: every value
is written beforehand with ``FeatureStore.write_to_online_store`` (or, with
``populate="materialize"``, by ``FeatureStore.materialize`` from Parquet through the DuckDB
offline store). A lookup is then a pure read: Feast's best case. Parity computes windowed
values from tiles at request time; Feast only reads what was written.

The Feast repo (``setup_feast``'s ``workdir``):

- ``feature_store.yaml``: project ``parity_feast_baseline`` (Feast's Redis keys end with the
  project name, so they cannot collide with Parity's keys in the same Redis), provider
  ``local``, a file registry cached forever (``cache_ttl_seconds: 0``, so no registry reload
  can land inside a timed call), ``online_store: {type: redis, connection_string: host:port}``
  built from the URL, ``offline_store: {type: duckdb}``, ``entity_key_serialization_version: 3``;
- ``data/user_stats.parquet``, ``data/video_stats.parquet``: the same values as written online,
  the FileSources of the two views (timestamps ``timestamp[us, UTC]``).

Two views, both with deterministic values (``feature_values``: a hash of seed, view, feature and
id, so any id's values can be recomputed without the others):

- ``user_stats`` (entity ``user``, join key ``user_id`` in ``1..n_users``): 50 features,
  ``u_i64_00, u_f64_01, ..., u_f64_49`` (even index int64, odd index float64);
- ``video_stats`` (entity ``video``, join key ``video_id`` in ``1..n_videos``): 20 features,
  ``v_i64_00, v_f64_01, ..., v_f64_19``; they stand for Parity's 20 windowed video features.

Two shapes, the entity counts of Parity's benchmark:

- ``single``: 1 user x the 50 ``user_stats`` features (1 entity row);
- ``ranking``: 1 user + 500 videos in one call: 500 entity rows, each ``{user_id: u, video_id: v}``
  (same u), requesting the 20 ``video_stats`` features **plus** the first
  ``ranking_user_features`` (default 16, Parity's ``home_feed_ranking`` asks for 16 scalar user
  features) ``user_stats`` features, as Parity's shape does. ``ranking_user_features=0`` asks
  for exactly the 20 video features (and then the rows hold only ``video_id``). Feast reads the
  user's hash once (it de-duplicates entity keys per view) and repeats its values on all 500 rows.

Entity rows are passed column-wise (``{"user_id": [...], "video_id": [...]}``), which Feast
accepts and which spares it the row-to-column conversion.

``FeastBaseline.measure`` times each call with ``time.perf_counter`` (request building,
``get_online_features`` and ``to_dict()``), after a warm-up, on random entities drawn from the
populated ranges (500 distinct videos per ranking call), and reports numpy percentiles. It also
reports the same figures for ``get_online_features`` alone (without ``to_dict``).

Run it against a Redis you started; this script starts nothing. Progress goes to stderr, the
JSON result to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:  # feast is imported lazily: `--help` and importing this module stay fast
    from feast import FeatureStore

PROJECT = "parity_feast_baseline"
SHAPES = ("single", "ranking")
RANKING_VIDEOS = 500
DEFAULT_RANKING_USER_FEATURES = 16
POPULATE_MODES = ("write", "materialize")


class ViewSpec(NamedTuple):
    """One Feast feature view of the baseline: its entity, join key and typed features."""

    name: str
    entity: str
    join_key: str
    code: int  # mixed into the value hash so two views never share values
    features: tuple[tuple[str, str], ...]  # (name, "int64" | "float64")

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self.features]


def _typed_features(prefix: str, count: int) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"{prefix}_i64_{j:02d}", "int64") if j % 2 == 0 else (f"{prefix}_f64_{j:02d}", "float64")
        for j in range(count)
    )


USER_VIEW = ViewSpec("user_stats", "user", "user_id", 1, _typed_features("u", 50))
VIDEO_VIEW = ViewSpec("video_stats", "video", "video_id", 2, _typed_features("v", 20))
VIEWS = {USER_VIEW.name: USER_VIEW, VIDEO_VIEW.name: VIDEO_VIEW}


# ---------------------------------------------------------------- deterministic values

def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def feature_values(view: str, ids: Sequence[int] | np.ndarray, seed: int = 7) -> dict[str, np.ndarray]:
    """The values written for ``ids`` of ``view``: ``{feature: array}`` (int64 or float64).

    A pure function of (seed, view, feature, id): int64 values are in ``[0, 1_000_000)``,
    float64 values in ``[0, 1000)`` with at most 53 significant bits, so they round-trip
    through Feast's protobuf doubles exactly.
    """
    spec = VIEWS[view]
    id_hash = _splitmix64(np.asarray(ids, dtype=np.int64).astype(np.uint64))
    out: dict[str, np.ndarray] = {}
    for j, (name, dtype) in enumerate(spec.features):
        key = _splitmix64(np.array([seed * 1_000_003 + spec.code * 1_009 + j], dtype=np.uint64))
        h = _splitmix64(id_hash ^ key)
        if dtype == "int64":
            out[name] = (h % np.uint64(1_000_000)).astype(np.int64)
        else:
            out[name] = (h >> np.uint64(11)).astype(np.float64) * (1000.0 / 2.0**53)
    return out


# ---------------------------------------------------------------- Feast repo

def redis_connection_string(redis_url: str) -> str:
    """Feast's ``host:port[,db=N][,username=..][,password=..][,ssl=true]`` from a redis:// URL.

    Feast splits the string on commas and JSON-decodes each value, so a password containing a
    comma, or one that is valid JSON (``123``, ``true``), cannot be passed this way.
    """
    parts = urllib.parse.urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"--redis-url {redis_url!r}: expected redis://host:port[/db] or rediss://...")
    out = [f"{parts.hostname or 'localhost'}:{parts.port or 6379}"]
    db = parts.path.strip("/")
    if db:
        if not db.isdigit():
            raise ValueError(f"--redis-url {redis_url!r}: the path must be a database number, not {db!r}")
        out.append(f"db={int(db)}")
    if parts.username:
        out.append(f"username={urllib.parse.unquote(parts.username)}")
    if parts.password:
        password = urllib.parse.unquote(parts.password)
        if "," in password:
            raise ValueError("Feast's Redis connection string cannot carry a password containing ','")
        out.append(f"password={password}")
    if parts.scheme == "rediss":
        out.append("ssl=true")
    return ",".join(out)


def _feature_store_yaml(redis_url: str, workdir: Path) -> str:
    import yaml

    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": {
            "registry_type": "file",
            "path": str(workdir / "data" / "registry.db"),
            "cache_ttl_seconds": 0,  # cache forever: no registry reload inside a timed call
        },
        "online_store": {"type": "redis", "connection_string": redis_connection_string(redis_url)},
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }
    return "# Written by benchmarks/feast_online.py (Parity's Feast online baseline).\n" + yaml.safe_dump(
        config, sort_keys=False
    )


def _feast_objects(workdir: Path) -> list[Any]:
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    dtypes = {"int64": Int64, "float64": Float64}
    objects: list[Any] = []
    for spec in (USER_VIEW, VIDEO_VIEW):
        entity = Entity(name=spec.entity, join_keys=[spec.join_key], value_type=ValueType.INT64)
        source = FileSource(
            name=f"{spec.name}_source",
            path=str(_parquet_path(workdir, spec)),
            timestamp_field="event_timestamp",
        )
        view = FeatureView(
            name=spec.name,
            entities=[entity],
            ttl=timedelta(days=30),
            schema=[Field(name=spec.join_key, dtype=Int64)]
            + [Field(name=name, dtype=dtypes[dtype]) for name, dtype in spec.features],
            source=source,
            online=True,
        )
        objects += [entity, view]
    return objects


def _parquet_path(workdir: Path, spec: ViewSpec) -> Path:
    return workdir / "data" / f"{spec.name}.parquet"


def _batch_frame(spec: ViewSpec, ids: np.ndarray, ts: datetime, seed: int):  # -> pd.DataFrame
    import pandas as pd

    columns: dict[str, Any] = {spec.join_key: ids.astype(np.int64)}
    # microseconds: Feast's DuckDB offline store fails on nanosecond timestamps
    columns["event_timestamp"] = pd.Series(
        np.full(len(ids), np.datetime64(ts.replace(tzinfo=None), "us")), dtype="datetime64[us]"
    ).dt.tz_localize("UTC")
    columns.update(feature_values(spec.name, ids, seed))
    return pd.DataFrame(columns)


def _populate(store: "FeatureStore", workdir: Path, spec: ViewSpec, n: int, ts: datetime, seed: int,
              batch_rows: int, write_online: bool) -> float:
    """Write ids 1..n of ``spec`` to the Parquet source (and online if ``write_online``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    started = time.perf_counter()
    writer = None
    what = "write_to_online_store" if write_online else "parquet"
    with tqdm(total=n, desc=f"feast {spec.name} {what}", unit="row", file=sys.stderr, mininterval=1.0) as bar:
        for lo in range(1, n + 1, batch_rows):
            ids = np.arange(lo, min(lo + batch_rows, n + 1), dtype=np.int64)
            frame = _batch_frame(spec, ids, ts, seed)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(_parquet_path(workdir, spec), table.schema)
            writer.write_table(table)
            if write_online:
                store.write_to_online_store(spec.name, frame)
            bar.update(len(ids))
    if writer is not None:
        writer.close()
    return time.perf_counter() - started


# ---------------------------------------------------------------- the baseline

class FeastBaseline:
    """A populated Feast repo on Redis, and the two benchmark shapes over it.

    ``features`` maps each shape to the feature references it requests (editable: assign a
    new list to change what a shape asks for).
    """

    def __init__(self, store: "FeatureStore", workdir: Path, n_users: int, n_videos: int, seed: int,
                 ranking_user_features: int, timings: dict[str, float]):
        self.store = store
        self.workdir = workdir
        self.n_users = n_users
        self.n_videos = n_videos
        self.seed = seed
        self.timings = timings
        self.features: dict[str, list[str]] = {
            "single": [f"{USER_VIEW.name}:{f}" for f in USER_VIEW.feature_names],
            "ranking": [f"{VIDEO_VIEW.name}:{f}" for f in VIDEO_VIEW.feature_names]
            + [f"{USER_VIEW.name}:{f}" for f in USER_VIEW.feature_names[:ranking_user_features]],
        }

    def _entity_rows(self, shape: str, user_id: int, video_ids: Sequence[int],
                     features: Sequence[str]) -> dict[str, list[int]]:
        if shape == "single":
            return {USER_VIEW.join_key: [int(user_id)]}
        if shape == "ranking":
            if not video_ids:
                raise ValueError("shape 'ranking' needs at least one video id")
            rows = {VIDEO_VIEW.join_key: [int(v) for v in video_ids]}
            if any(ref.startswith(USER_VIEW.name + ":") for ref in features):
                rows[USER_VIEW.join_key] = [int(user_id)] * len(video_ids)
            return rows
        raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")

    def lookup(self, shape: str, user_id: int, video_ids: list[int],
               features: Sequence[str] | None = None) -> dict:
        """One ``get_online_features`` call for ``shape``; returns its ``to_dict()``.

        ``single`` ignores ``video_ids``. ``features`` overrides ``self.features[shape]``.
        Values are keyed by bare feature name (``full_feature_names=False``), plus the join keys.
        """
        refs = list(self.features[shape] if features is None else features)
        rows = self._entity_rows(shape, user_id, video_ids, refs)
        return self.store.get_online_features(features=refs, entity_rows=rows).to_dict()

    def _draw(self, shape: str, rng: np.random.Generator) -> tuple[int, list[int]]:
        user_id = int(rng.integers(1, self.n_users + 1))
        if shape != "ranking":
            return user_id, []
        video_ids = rng.choice(self.n_videos, size=RANKING_VIDEOS, replace=False) + 1
        return user_id, video_ids.tolist()

    def measure(self, shape: str, seconds: float | None = None, iterations: int | None = None, seed: int = 7,
                warmup: int = 20, features: Sequence[str] | None = None) -> dict:
        """Latency of ``lookup(shape, ...)`` on random entities, after ``warmup`` calls.

        Runs ``iterations`` calls, or as many as fit in ``seconds`` (default 5 s if neither is
        given; with both, whichever ends first). Returns ``p50_ms``, ``p99_ms``, ``mean_ms``
        (per call: request building + ``get_online_features`` + ``to_dict``), ``calls`` and
        ``rps`` (calls per second of time spent inside calls, one caller), and the same
        percentiles for ``get_online_features`` alone (``*_ms_get_online_features``).
        """
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")
        if shape == "ranking" and self.n_videos < RANKING_VIDEOS:
            raise ValueError(f"shape 'ranking' draws {RANKING_VIDEOS} distinct videos; only {self.n_videos} exist")
        if seconds is None and iterations is None:
            seconds = 5.0
        refs = list(self.features[shape] if features is None else features)
        rng = np.random.default_rng(seed)
        for _ in range(warmup):
            user_id, video_ids = self._draw(shape, rng)
            self.lookup(shape, user_id, video_ids, refs)

        store = self.store
        totals: list[float] = []
        gets: list[float] = []
        deadline = None if seconds is None else time.perf_counter() + seconds
        while (iterations is None or len(totals) < iterations) and (
            deadline is None or time.perf_counter() < deadline
        ):
            user_id, video_ids = self._draw(shape, rng)  # outside the timed region
            t0 = time.perf_counter()
            rows = self._entity_rows(shape, user_id, video_ids, refs)
            response = store.get_online_features(features=refs, entity_rows=rows)
            t1 = time.perf_counter()
            response.to_dict()
            t2 = time.perf_counter()
            totals.append(t2 - t0)
            gets.append(t1 - t0)
        if not totals:
            raise ValueError("measure ran no call: give iterations >= 1 or seconds > 0")
        total_ms = np.asarray(totals) * 1e3
        get_ms = np.asarray(gets) * 1e3
        return {
            "shape": shape,
            "entity_rows": 1 if shape == "single" else RANKING_VIDEOS,
            "features": len(refs),
            "p50_ms": float(np.percentile(total_ms, 50)),
            "p99_ms": float(np.percentile(total_ms, 99)),
            "mean_ms": float(total_ms.mean()),
            "calls": len(totals),
            "rps": float(len(totals) / (total_ms.sum() / 1e3)),
            "p50_ms_get_online_features": float(np.percentile(get_ms, 50)),
            "p99_ms_get_online_features": float(np.percentile(get_ms, 99)),
        }

    def close(self, drop_keys: bool = False) -> None:
        """Close Feast's Redis connections; with ``drop_keys``, first delete Feast's keys
        (``FeatureStore.teardown``: every key of this project, registry included)."""
        if drop_keys:
            self.store.teardown()
        # FeatureStore.close() is async and the Redis store does not override it, so the sync
        # redis-py client Feast opened is reached here (Feast keeps it on the online store).
        online_store = getattr(self.store._get_provider(), "online_store", None)
        client = getattr(online_store, "_client", None)
        if client is not None:
            client.close()
            online_store._client = None


def setup_feast(redis_url: str, workdir: Path, n_users: int, n_videos: int, seed: int = 7, *,
                ranking_user_features: int = DEFAULT_RANKING_USER_FEATURES, populate: str = "write",
                batch_rows: int = 10_000) -> FeastBaseline:
    """Create the Feast repo in ``workdir``, ``apply`` it and write every value.

    ``populate="write"`` writes each batch with ``FeatureStore.write_to_online_store``;
    ``populate="materialize"`` writes the Parquet sources, then runs ``FeatureStore.materialize``
    (DuckDB offline store) over them. Either way user ids ``1..n_users`` and video ids
    ``1..n_videos`` all hold ``feature_values(...)`` at one event timestamp (now, in microseconds).
    A previous repo in ``workdir`` is replaced; Feast keys already in Redis for this project are
    overwritten, not deleted.
    """
    if n_users < 1 or n_videos < 1:
        raise ValueError("n_users and n_videos must be at least 1")
    if not 0 <= ranking_user_features <= len(USER_VIEW.features):
        raise ValueError(f"ranking_user_features must be in 0..{len(USER_VIEW.features)}")
    if populate not in POPULATE_MODES:
        raise ValueError(f"populate must be one of {', '.join(POPULATE_MODES)}, not {populate!r}")
    from feast import FeatureStore

    workdir = Path(workdir)
    data = workdir / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    (workdir / "feature_store.yaml").write_text(_feature_store_yaml(redis_url, workdir))

    started = time.perf_counter()
    store = FeatureStore(repo_path=str(workdir))
    objects = _feast_objects(workdir)
    store.apply(objects)
    timings = {"apply": time.perf_counter() - started}

    ts = datetime.now(timezone.utc)  # datetime carries microseconds, no finer
    write_online = populate == "write"
    for spec, n in ((USER_VIEW, n_users), (VIDEO_VIEW, n_videos)):
        timings[spec.name] = _populate(store, workdir, spec, n, ts, seed, batch_rows, write_online)
    if not write_online:
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints its progress on stdout
            store.materialize(start_date=ts - timedelta(days=1), end_date=ts + timedelta(seconds=1))
        timings["materialize"] = time.perf_counter() - started
    store.refresh_registry()
    return FeastBaseline(store, workdir, n_users, n_videos, seed, ranking_user_features, timings)


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feast_online.py",
        description=(
            "Feast 0.67 baseline for Parity's online benchmark: populate a Feast repo on Redis with "
            "precomputed values (write_to_online_store), then time get_online_features(...).to_dict() "
            "in process for two shapes: 'single' (1 user x 50 features) and 'ranking' (1 user + "
            f"{RANKING_VIDEOS} videos x 20 video features + N user features). Starts no server: give the "
            "URL of a running Redis. Prints one JSON object on stdout (progress on stderr)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--redis-url", required=True,
                        help="Redis to use, redis://[user:password@]host:port[/db] (rediss:// for TLS); "
                             f"Feast's keys are namespaced by its project name {PROJECT!r}")
    parser.add_argument("--users", type=int, default=100_000, help="user ids 1..USERS are populated")
    parser.add_argument("--videos", type=int, default=200_000, help="video ids 1..VIDEOS are populated")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per shape (after warm-up)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="stop each shape after this many timed calls (with --seconds: whichever ends "
                             "first); None = no limit")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per shape before timing")
    parser.add_argument("--seed", type=int, default=7, help="seed of the values and of the entity draws")
    parser.add_argument("--ranking-user-features", type=int, default=DEFAULT_RANKING_USER_FEATURES,
                        help="user_stats features requested by the ranking shape besides the 20 video features "
                             "(0 = only the video features)")
    parser.add_argument("--populate", choices=POPULATE_MODES, default="write",
                        help="write = write_to_online_store in batches; materialize = Parquet then "
                             "FeatureStore.materialize through the DuckDB offline store")
    parser.add_argument("--batch-rows", type=int, default=10_000, help="rows per write_to_online_store call")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="directory for the Feast repo; None = a temporary directory, removed at exit")
    parser.add_argument("--drop-keys", action="store_true",
                        help="delete Feast's keys from Redis when done (FeatureStore.teardown)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import feast

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="parity-feast-online-")
        workdir = Path(tmp.name)
    try:
        started = time.perf_counter()
        baseline = setup_feast(args.redis_url, workdir, args.users, args.videos, args.seed,
                               ranking_user_features=args.ranking_user_features, populate=args.populate,
                               batch_rows=args.batch_rows)
        setup_seconds = time.perf_counter() - started
        try:
            results = {shape: baseline.measure(shape, seconds=args.seconds, iterations=args.iterations,
                                               seed=args.seed, warmup=args.warmup)
                       for shape in SHAPES}
        finally:
            baseline.close(drop_keys=args.drop_keys)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps({
        "feast_version": feast.__version__,
        "redis_url": args.redis_url,
        "users": args.users,
        "videos": args.videos,
        "populate": args.populate,
        "setup_seconds": round(setup_seconds, 3),
        "setup_timings_seconds": {k: round(v, 3) for k, v in baseline.timings.items()},
        **results,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
