"""Deterministic synthetic data for the short-video example (``feature_defs/``).

    python benchmarks/generate.py --scale 5000000 --days 30 --out data/offline_log

writes, straight into the offline log through :class:`parity.batch.offline_log.OfflineLog`:

- ``video_events``: ``--scale`` events (up to 50,000,000). ``event_type`` is play 70%,
  skip 15%, like 8%, share 3%, comment 3%, report 1%. Plays watch a Beta(1.5, 1)
  fraction of the video, skips under 10% of it; ``completion`` = ``watch_ms`` / video
  length, in [0, 1]. For like/share/comment/report, 70% have no ``watch_ms`` (and no
  ``completion``);
- ``follow_events``: ``scale // 20`` follows of creators;
- the ``user_profile`` snapshot: one row per user (country, language, age_bucket,
  signup_ts, updated_at). It is not part of the log: it is written to
  ``<out>/../user_profile/part-0.parquet`` (``--profiles`` overrides). With the example's
  ``offline_log.path: data/offline_log`` that is ``data/user_profile/part-0.parquet``,
  which the ``user_profile`` source's ``snapshot.path`` glob ``data/user_profile/*.parquet``
  matches.

Cardinalities: users = min(1M, max(100, scale // 50)), videos = min(200k, max(50,
scale // 250)), creators = min(20k, max(10, scale // 2500)). Popularity is Zipf-like over
ranks (videos s=1.1, users s=0.8, creators followed s=1.2); ranks map to ids through a
fixed random permutation. Each video belongs to one creator (creators with more videos
follow a Zipf law too) and has a length of 5 s to 3 min.

Time: events spread over ``--days`` days from ``--start`` (UTC), weekends 10% busier,
with a diurnal cycle (peak 20:00 UTC, trough 08:00 UTC, 4:1), microsecond precision.
The rows look streamed: ``_ingested_at`` = ts + ~200 ms (exponential, under 1 s), except 1% of
rows ingested 1 s to 4 h late (log-uniform: out of order); ``_applied_at`` = ``_ingested_at`` + ~55 ms;
``_partition`` = key % 8 (user_id for video events, creator_id for follows) and
``_offset`` counts per partition in ingest order. Rows of a day are in ingest order.

Determinism: every chunk draws from its own generator seeded by (seed, source, day,
part), and ids/offsets are counted in a fixed order, so the same arguments give
byte-identical values (and files) whatever the machine. Memory is bounded: at most one
chunk of ~2M rows per source is held at a time (one batch id per source and day,
``gen-YYYY-MM-DD``; a rerun replaces those days).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
MAX_SCALE = 50_000_000
CHUNK_ROWS = 2_000_000
PARTITIONS = 8
US_PER_DAY = 86_400_000_000
EVENT_TYPES = ("play", "skip", "like", "share", "comment", "report")
EVENT_TYPE_P = (0.70, 0.15, 0.08, 0.03, 0.03, 0.01)
COUNTRIES = ("US", "BR", "IN", "ID", "MX", "GB", "DE", "FR", "JP", "TR", "PH", "VN")
COUNTRY_P = (0.22, 0.12, 0.14, 0.10, 0.08, 0.06, 0.05, 0.05, 0.05, 0.05, 0.04, 0.04)
LANGUAGE_OF = {"US": "en", "BR": "pt", "IN": "hi", "ID": "id", "MX": "es", "GB": "en", "DE": "de",
               "FR": "fr", "JP": "ja", "TR": "tr", "PH": "tl", "VN": "vi"}
AGE_BUCKETS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_P = (0.12, 0.34, 0.27, 0.14, 0.08, 0.05)
ZIPF_S = {"user": 0.8, "video": 1.1, "creator": 1.2}
SOURCES = ("video_events", "follow_events", "user_profile")
_SOURCE_TAG = {name: i + 1 for i, name in enumerate(SOURCES)}


# -- the world: ids, popularity, catalogue ---------------------------------------------------


def cardinalities(scale: int) -> tuple[int, int, int]:
    """(users, videos, creators) for a scale."""
    users = min(1_000_000, max(100, scale // 50))
    videos = min(200_000, max(50, scale // 250))
    creators = min(20_000, max(10, scale // 2_500))
    return users, videos, creators


def power_law_ranks(rng: np.random.Generator, n_ranks: int, s: float, size: int) -> np.ndarray:
    """``size`` 0-based ranks in [0, n_ranks), P(rank k) ~ (k + 1) ** -s (a Zipf-like law).

    Inverse CDF of the continuous power law on [1, n_ranks + 1), floored: O(1) per sample,
    no table lookup (a searchsorted over a 1M-entry CDF was the generator's bottleneck).
    """
    u = rng.random(size)
    top = float(n_ranks + 1)
    if abs(s - 1.0) < 1e-12:
        x = np.power(top, u)
    else:
        a = 1.0 - s
        x = np.power(1.0 + u * (top**a - 1.0), 1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, n_ranks - 1)


@dataclass(frozen=True)
class World:
    scale: int
    days: int
    seed: int
    start: dt.date
    counts: tuple[int, int, int] | None = None  # (users, videos, creators); default: from scale

    @cached_property
    def sizes(self) -> tuple[int, int, int]:
        return self.counts or cardinalities(self.scale)

    def rng(self, *tags: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *tags]))

    @cached_property
    def catalogue(self) -> dict[str, np.ndarray]:
        users, videos, creators = self.sizes
        rng = self.rng(0)
        user_by_rank = rng.permutation(users).astype(np.int64) + 1
        video_by_rank = rng.permutation(videos).astype(np.int64) + 1
        creator_by_rank = rng.permutation(creators).astype(np.int64) + 1
        # creator of each video (index = video_id): prolific creators follow a Zipf law
        video_creator = np.zeros(videos + 1, dtype=np.int64)
        video_creator[1:] = creator_by_rank[power_law_ranks(rng, creators, 1.0, videos)]
        video_len = np.zeros(videos + 1, dtype=np.int64)
        video_len[1:] = np.clip(rng.lognormal(math.log(25_000), 0.7, videos), 5_000, 180_000).astype(np.int64)
        return {
            "user_by_rank": user_by_rank, "video_by_rank": video_by_rank, "creator_by_rank": creator_by_rank,
            "video_creator": video_creator, "video_len": video_len,
        }

    @cached_property
    def minute_table(self) -> np.ndarray:
        """Minute of the day for 2**16 equal slices of [0, 1): the diurnal inverse CDF as a lookup."""
        minutes = np.arange(1440, dtype=np.float64)
        # peak at 20:00 UTC, trough at 08:00: 1 + 0.6 cos -> ratio 4:1
        weights = 1.0 + 0.6 * np.cos(2 * np.pi * (minutes / 1440.0 - 20.0 / 24.0))
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]
        slices = (np.arange(1 << 16) + 0.5) / (1 << 16)
        return np.searchsorted(cdf, slices, side="right").astype(np.int64)

    def day_counts(self, total: int) -> np.ndarray:
        """``total`` split over the days (weekends 10% busier), exactly."""
        weekday = [(self.start + dt.timedelta(days=d)).weekday() for d in range(self.days)]
        weights = np.array([1.1 if w >= 5 else 1.0 for w in weekday])
        share = weights / weights.sum() * total
        counts = np.floor(share).astype(np.int64)
        remainder = total - counts.sum()
        order = np.argsort(-(share - counts), kind="stable")
        counts[order[:remainder]] += 1
        return counts

    def day_start_us(self, day: int) -> int:
        start = dt.datetime.combine(self.start + dt.timedelta(days=day), dt.time())
        return int((start - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1))

    def sample(self, rng: np.random.Generator, what: str, n: int) -> np.ndarray:
        """``n`` ids of users, videos or creators, drawn by popularity."""
        by_rank = self.catalogue[f"{what}_by_rank"]
        return by_rank[power_law_ranks(rng, len(by_rank), ZIPF_S[what], n)]

    def timestamps(self, rng: np.random.Generator, day: int, n: int) -> np.ndarray:
        minute = self.minute_table[(rng.random(n) * (1 << 16)).astype(np.int64)]
        return self.day_start_us(day) + minute * 60_000_000 + rng.integers(0, 60_000_000, n)


# -- chunks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    source: str
    day: int
    part: int
    rows: int
    first_id: int  # global index of the chunk's first event (event ids)


def plan(world: World, source: str) -> list[Chunk]:
    """The chunks of a source, in generation order."""
    if source == "user_profile":
        users = world.sizes[0]
        return [Chunk(source, 0, p, min(CHUNK_ROWS, users - p * CHUNK_ROWS), p * CHUNK_ROWS)
                for p in range(math.ceil(users / CHUNK_ROWS))]
    total = world.scale if source == "video_events" else world.scale // 20
    chunks, first = [], 0
    for day, count in enumerate(world.day_counts(total)):
        parts = max(1, math.ceil(count / CHUNK_ROWS))
        for part in range(parts):
            rows = count // parts + (1 if part < count % parts else 0)
            chunks.append(Chunk(source, day, part, int(rows), first))
            first += int(rows)
    return chunks


def _ids(prefix: str, first: int, n: int) -> pa.Array:
    numbers = pa.array(np.arange(first, first + n, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(pa.scalar(prefix), numbers, "")


def ingest_delays(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` delays from event time to ingestion, in microseconds: ~200 ms (exponential, under
    1 s), except 1% 1 s to 4 h late (log-uniform): out of order."""
    delay = np.minimum(rng.standard_exponential(n) * 200_000 + 1_000, 999_999)
    late = rng.random(n) < 0.01
    delay[late] = np.exp(rng.uniform(math.log(1e6), math.log(4 * 3600e6), int(late.sum())))
    return delay.astype(np.int64)


def _meta(rng: np.random.Generator, ts: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, dict]:
    """Ingest order of a chunk and its meta columns (in that order)."""
    n = len(ts)
    ingested = ts + ingest_delays(rng, n)
    applied = ingested + (rng.standard_exponential(n) * 50_000).astype(np.int64) + 5_000  # ~55 ms
    order = np.argsort(ingested, kind="stable")
    return order, {"ingested": ingested[order], "applied": applied[order],
                   "partition": (keys[order] % PARTITIONS).astype(np.int32)}


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.timestamp("us"))


def _interactions(world: World, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """``n`` video interactions: (user, video, kind, watch_ms, completion, missing), where
    ``missing`` marks the events without watch_ms/completion."""
    cat = world.catalogue
    user = world.sample(rng, "user", n)
    video = world.sample(rng, "video", n)
    kind = rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_P).astype(np.int8)
    length = cat["video_len"][video]
    play, skip = kind == 0, kind == 1
    other = kind > 1
    u = rng.random(n)
    # plays watch Beta(1.5, 1) (= U ** (1 / 1.5)) of the video, skips under 10%, others 30-100%
    fraction = np.where(play, u ** (1 / 1.5), np.where(skip, 0.1 * u, 0.3 + 0.7 * u))
    watch = np.rint(fraction * length).astype(np.int64)
    completion = watch / length
    missing = other & (rng.random(n) < 0.7)
    return user, video, kind, watch, completion, missing


def video_events(world: World, chunk: Chunk) -> dict:
    rng = world.rng(_SOURCE_TAG[chunk.source], chunk.day, chunk.part)
    n, cat = chunk.rows, world.catalogue
    user, video, kind, watch, completion, missing = _interactions(world, rng, n)
    ts = world.timestamps(rng, chunk.day, n)
    order, meta = _meta(rng, ts, user)
    missing = missing[order]
    return {
        "order": order, "meta": meta,
        "columns": {
            "event_id": _ids("ve-", chunk.first_id, n),
            "user_id": pa.array(user[order]),
            "video_id": pa.array(video[order]),
            "creator_id": pa.array(cat["video_creator"][video][order]),
            "event_type": pa.array(EVENT_TYPES).take(pa.array(kind[order])),
            "watch_ms": pa.array(watch[order], mask=missing),
            "completion": pa.array(completion[order], mask=missing),
            "ts": _ts(ts[order]),
        },
    }


def follow_events(world: World, chunk: Chunk) -> dict:
    rng = world.rng(_SOURCE_TAG[chunk.source], chunk.day, chunk.part)
    n = chunk.rows
    follower = world.sample(rng, "user", n)
    creator = world.sample(rng, "creator", n)
    ts = world.timestamps(rng, chunk.day, n)
    order, meta = _meta(rng, ts, creator)
    return {
        "order": order, "meta": meta,
        "columns": {
            "event_id": _ids("fe-", chunk.first_id, n),
            "follower_id": pa.array(follower[order]),
            "creator_id": pa.array(creator[order]),
            "ts": _ts(ts[order]),
        },
    }


def user_profiles(world: World, chunk: Chunk) -> pa.RecordBatch:
    rng = world.rng(_SOURCE_TAG[chunk.source], chunk.part)
    n = chunk.rows
    user_id = np.arange(chunk.first_id + 1, chunk.first_id + n + 1, dtype=np.int64)
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_P)
    lang_names = sorted(set(LANGUAGE_OF.values()))
    lang_of_country = np.array([lang_names.index(LANGUAGE_OF[c]) for c in COUNTRIES])
    in_english = rng.random(n) < 0.15  # some users use the app in English
    lang_idx = np.where(in_english, lang_names.index("en"), lang_of_country[country])
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_P)
    start_us = world.day_start_us(0)
    signup = start_us - rng.integers(0, 3 * 365 * US_PER_DAY, n)
    horizon = world.day_start_us(world.days)
    low = np.maximum(signup, start_us - 30 * US_PER_DAY)
    updated = low + (rng.random(n) * (horizon - low)).astype(np.int64)
    return pa.RecordBatch.from_pydict({
        "user_id": pa.array(user_id),
        "country": pa.array(COUNTRIES).take(pa.array(country)),
        "language": pa.array(lang_names).take(pa.array(lang_idx)),
        "age_bucket": pa.array(AGE_BUCKETS).take(pa.array(age)),
        "signup_ts": _ts(signup),
        "updated_at": _ts(updated),
    })


class _Offsets:
    """Per-partition offset counters of a source, advanced chunk by chunk in order."""

    def __init__(self) -> None:
        self.next = np.zeros(PARTITIONS, dtype=np.int64)

    def assign(self, partition: np.ndarray) -> np.ndarray:
        counts = np.bincount(partition, minlength=PARTITIONS)
        order = np.argsort(partition, kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        rank = np.empty(len(partition), dtype=np.int64)
        rank[order] = np.arange(len(partition)) - np.repeat(starts, counts)
        offsets = self.next[partition] + rank
        self.next += counts
        return offsets


def _finish(parts: dict, offsets: _Offsets) -> pa.RecordBatch:
    meta = parts["meta"]
    columns = dict(parts["columns"])
    columns["_ingested_at"] = _ts(meta["ingested"])
    columns["_applied_at"] = _ts(meta["applied"])
    columns["_partition"] = pa.array(meta["partition"])
    columns["_offset"] = pa.array(offsets.assign(meta["partition"]))
    return pa.RecordBatch.from_pydict(columns)


def _chunks(scale: int, days: int, seed: int, start: dt.date, source: str) -> Iterator[tuple[Chunk, pa.RecordBatch]]:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: one of {', '.join(SOURCES)}")
    if not 1 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be in 1..{MAX_SCALE:,}")
    if days < 1:
        raise ValueError("days must be at least 1")
    world = World(scale, days, seed, start)
    chunks = plan(world, source)
    if source == "user_profile":
        for chunk in chunks:
            yield chunk, user_profiles(world, chunk)
        return
    make = video_events if source == "video_events" else follow_events
    offsets = _Offsets()
    # generate the next chunk in a thread while the caller writes this one (numpy and
    # Arrow release the GIL); offsets are still assigned in chunk order
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make, world, chunks[0]) if chunks else None
        for i, chunk in enumerate(chunks):
            parts = pending.result()
            pending = pool.submit(make, world, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield chunk, _finish(parts, offsets)


def generate(scale: int, days: int = 30, seed: int = 7, start: dt.date = dt.date(2026, 1, 1),
             source: str = "video_events") -> Iterator[pa.RecordBatch]:
    """The batches of one source (``video_events``, ``follow_events`` or ``user_profile``).

    Event batches have exactly the offline log's columns (source schema then meta
    columns) and hold one day each (at most ~2M rows); ``user_profile`` batches have the
    snapshot's schema.
    """
    for _, batch in _chunks(scale, days, seed, start, source):
        yield batch


# -- a live stream ------------------------------------------------------------------------

_LIVE_TAG = 100  # seeds the live stream's blocks apart from the offline chunks'


def live_events(seed: int = 7, users: int = 100_000, videos: int = 20_000, creators: int = 2_000, *,
                clock: Callable[[], int] | None = None, run_id: str = "live",
                block: int = 4096) -> Iterator[tuple[str, dict]]:
    """Endless synthetic events as a live stream carries them: ``(source, event)`` pairs in
    emission order, ``source`` being ``video_events`` or ``follow_events`` (one follow per 20
    video events, as in the offline data).

    Each event has exactly its source's fields. Ids, popularity and the catalogue (each
    video's creator and length) are those of the offline data of the same ``seed`` and
    cardinalities (``cardinalities(scale)`` gives the offline ones). ``ts`` is an int, in
    microseconds since the epoch (UTC): ``clock()`` (default: the wall clock) at the moment
    the event is yielded, minus an ingest delay drawn as in the offline log (~200 ms; 1% 1 s
    to 4 h late), so timestamps are slightly out of order and some events are late.
    ``event_id`` is ``ve-<run_id>-<n>`` / ``fe-<run_id>-<n>``. With a fixed clock, the same
    arguments give the same events.
    """
    if clock is None:
        def clock() -> int:
            return time.time_ns() // 1000
    world = World(0, 1, seed, dt.date(1970, 1, 1), counts=(users, videos, creators))
    video_creator = world.catalogue["video_creator"]
    kinds = EVENT_TYPES
    next_video = next_follow = 0
    for number in itertools.count():
        rng = world.rng(_LIVE_TAG, number)
        is_follow = (rng.random(block) < 1 / 21).tolist()
        n_follow = sum(is_follow)
        n_video = block - n_follow
        user, video, kind, watch, completion, missing = _interactions(world, rng, n_video)
        creator = video_creator[video].tolist()
        user, video, kind = user.tolist(), video.tolist(), kind.tolist()
        watch, completion, missing = watch.tolist(), completion.tolist(), missing.tolist()
        follower = world.sample(rng, "user", n_follow).tolist()
        followed = world.sample(rng, "creator", n_follow).tolist()
        delays = ingest_delays(rng, block).tolist()
        v = f = 0
        for i in range(block):
            if is_follow[i]:
                yield "follow_events", {
                    "event_id": f"fe-{run_id}-{next_follow}", "follower_id": follower[f],
                    "creator_id": followed[f], "ts": clock() - delays[i]}
                next_follow += 1
                f += 1
            else:
                gone = missing[v]
                yield "video_events", {
                    "event_id": f"ve-{run_id}-{next_video}", "user_id": user[v], "video_id": video[v],
                    "creator_id": creator[v], "event_type": kinds[kind[v]],
                    "watch_ms": None if gone else watch[v], "completion": None if gone else completion[v],
                    "ts": clock() - delays[i]}
                next_video += 1
                v += 1


# -- writing ------------------------------------------------------------------------------


def write_all(scale: int, days: int, seed: int, start: dt.date, out: Path, profiles: Path,
              defs_dir: Path = ROOT / "feature_defs", progress: bool = True) -> dict[str, int]:
    """Generate every source into the offline log at ``out`` and the profile snapshot at ``profiles``."""
    from itertools import groupby

    from tqdm import tqdm

    from parity.batch.offline_log import OfflineLog
    from parity.registry.loader import load_definitions

    defs = load_definitions(defs_dir).definitions
    log = OfflineLog(out)
    users = cardinalities(scale)[0]
    counts = {"video_events": scale, "follow_events": scale // 20, "user_profile": users}
    bar = tqdm(total=sum(counts.values()), unit="row", unit_scale=True, file=sys.stderr,
               disable=not progress, desc="generating")
    try:
        for name in ("video_events", "follow_events"):
            source = defs.source(name)
            stream = _chunks(scale, days, seed, start, name)
            for day, group in groupby(stream, key=lambda item: item[0].day):
                date = start + dt.timedelta(days=day)
                bar.set_postfix_str(f"{name} {date}")

                def batches(group=group):
                    for _, batch in group:
                        yield batch
                        bar.update(batch.num_rows)

                log.write_batches(source, batches(), batch_id=f"gen-{date.isoformat()}")
        bar.set_postfix_str("user_profile")
        profiles.parent.mkdir(parents=True, exist_ok=True)
        tmp = profiles.parent / f".{profiles.name}.{uuid.uuid4().hex}.tmp"
        writer = None
        try:
            for _, batch in _chunks(scale, days, seed, start, "user_profile"):
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), batch.schema, compression="zstd", compression_level=1)
                writer.write_batch(batch)
                bar.update(batch.num_rows)
            writer.close()
            os.replace(tmp, profiles)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        bar.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/generate.py",
        description=(
            "Write deterministic synthetic data for the short-video example (feature_defs/) into an "
            "offline log: video_events (SCALE events), follow_events (SCALE/20) and the user_profile "
            "snapshot (one row per user). Same arguments, same bytes."
        ),
        epilog="example: python benchmarks/generate.py --scale 5000000 --days 30 --out data/offline_log",
    )
    parser.add_argument("--scale", type=int, required=True,
                        help=f"number of video events, 1..{MAX_SCALE:,} (users = min(1M, max(100, scale//50)), "
                             "videos = min(200k, max(50, scale//250)), creators = min(20k, max(10, scale//2500)))")
    parser.add_argument("--days", type=int, default=30, help="days of events from --start (default: 30)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the offline log root (offline_log.path of feature_store.yaml, e.g. data/offline_log)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1),
                        help="first day, UTC, YYYY-MM-DD (default: 2026-01-01)")
    parser.add_argument("--profiles", type=Path, default=None,
                        help="where to write the user_profile snapshot (default: OUT/../user_profile/part-0.parquet, "
                             "which the example's snapshot.path data/user_profile/*.parquet matches when OUT is "
                             "data/offline_log)")
    parser.add_argument("--defs", type=Path, default=ROOT / "feature_defs",
                        help="definitions folder holding the sources (default: the example's feature_defs/)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 1 <= args.scale <= MAX_SCALE:
        parser.error(f"--scale must be in 1..{MAX_SCALE:,}")
    if args.days < 1:
        parser.error("--days must be at least 1")
    profiles = args.profiles or args.out.parent / "user_profile" / "part-0.parquet"
    began = time.perf_counter()
    counts = write_all(args.scale, args.days, args.seed, args.start, args.out, profiles, args.defs,
                       progress=not args.no_progress)
    elapsed = time.perf_counter() - began
    events = counts["video_events"] + counts["follow_events"]
    print(f"wrote {counts['video_events']:,} video events, {counts['follow_events']:,} follow events "
          f"to {args.out} and {counts['user_profile']:,} profiles to {profiles} in {elapsed:.1f} s "
          f"({events / elapsed:,.0f} events/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
