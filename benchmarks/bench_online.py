"""Online-serving benchmark of Parity: in-process lookups, HTTP under load, and Feast, in one run.

    python benchmarks/bench_online.py --quick                        # smoke run, well under a minute
    python benchmarks/bench_online.py --results /tmp/online.json     # full run (about 6 to 10 minutes)

One run, against ONE private ``redis-server`` it starts (:meth:`parity.embedded.RedisServer.start`):

1. **Definitions** (built here, not read from ``feature_defs/``): entities ``user`` and
   ``video`` (``int64`` keys), the source ``video_events`` (``user_id, video_id, event_type,
   watch_ms, completion, ts``, as in the short-video example), a view ``bench_user`` with 50
   windowed features (count / sum / mean over 10m, 1h, 24h and 7d, with ``where`` filters on
   ``event_type``), a view ``bench_video`` with 20 (count / sum / mean over 10m, 1h, 24h) and
   two feature services: ``bench_single`` (the 50 user features) and ``bench_ranking`` (the 20
   video features plus 16 user features, the entity shape of Feast's ``ranking``).
2. **Events** (numpy, seeded): ``--events`` events uniform over the 7 days before the wall
   clock at generation (``T0``), users and videos drawn by power laws (heavy users, popular
   videos), event types ``play 55% / skip 25% / like 10% / share 4% / comment 4% / report 2%``;
   ``watch_ms`` and ``completion`` are set for plays and skips and null otherwise. Events keep
   arriving at the same rate during the run: another ``--ahead-minutes`` of events after
   ``T0`` are generated and written too, so the open tile always holds events. A lookup at
   ``now`` only ever reads tiles that ended before ``floor(now, 5 min)`` and the tail events
   with ``ts < now``, so at every instant of the run the store answers exactly as it would if
   a zero-lag stream had applied every event up to ``now``.
3. **Tiles.** Each view's tile partials (per entity, resolution and tile start) are computed
   with numpy (a sort and ``reduceat`` per stored column), turned into ``TileValue`` objects
   through the layout (``ViewLayout.decode_numeric``) and written with ``OnlineWriter``
   (``put_tile``, ``--batch-tiles`` tiles per committed batch; tiles already past their
   resolution's retention are left out, as the writer would refuse them). The events from the
   writer's tail floor on (the open 5-minute tile, the one before it, and the events ahead)
   are evaluated by ``EventEvaluator`` and written with ``WriteBatch.add_events``. The writer's
   clock is the wall clock; the watermark is ``T0``; both views have ``freshness_slo: 1h``, so
   values stay ``ok`` (not ``stale``) for the whole run.
4. **Verification** (before anything is timed): a sample of entities of each view (the most
   active ones, activity-weighted draws, uniform draws, and ids that have no event at all) is
   looked up at the wall clock and every value and status compared with values computed
   straight from the generated events by the window rule of DESIGN.md (numpy, independent of
   the tiles); and for a few entities every stored tile is compared with the reference
   aggregation (``EventEvaluator`` + ``TileBuilder``) over their events (entities with at most
   5,000 events: the reference fold is slow). Any mismatch fails the run.
5. **In process** (one Python caller, ``time.perf_counter`` around each call, after
   ``--warmup-calls``): Parity ``OnlineReader.get_online_features(entities, service=...)`` +
   ``to_dict()`` for ``--inproc-seconds`` per shape, with Redis's own counters over the timed
   phase (``commandstats``: commands and server-side microseconds per lookup; reply bytes) and
   Python's GC collections. ``single``: 1 user x 50 features. ``ranking``: 1 user + 500
   distinct videos (drawn by popularity) x (20 video + 16 user features). Request users are
   drawn by activity (the users who open the app are the active ones). ``--profile`` adds a
   cProfile pass of the same loop per shape (after the timed pass) and prints its top 25
   functions by own time and by cumulative time. Parity runs before Feast is imported, so its
   process does not carry Feast's heap (which every full garbage collection would walk).
6. **Feast 0.67** (``benchmarks/feast_online.py``): ``setup_feast`` in the same Redis (its keys
   are namespaced by its own project), ``--users`` users and ``--videos`` videos holding
   precomputed values (Feast's best case); then ``get_online_features(...)`` + ``to_dict()``
   (``FeastBaseline.measure``) for the same shapes and time; the ratio Feast p99 / Parity p99.
7. **HTTP**: what ``parity serve`` runs (``parity.serving.server.build_app``, i.e.
   ``create_app`` over an ``OnlineReader``, a bearer token required unless ``--no-auth``; then
   uvicorn with ``run_server``'s options: ``--workers`` processes, by default ``parity serve``'s
   default of one per core, uvloop, httptools) in a SUBPROCESS bound
   to 127.0.0.1, driven by the load generator of this script (this process; stdlib sockets, no extra
   package): keep-alive HTTP/1.1 connections, a sender thread and a receiver thread (epoll).

   - ``single``, **open loop**: request ``i`` is scheduled at ``start + i / rate`` for
     ``--seconds`` (after ``--warmup-seconds`` of the same load, not recorded); a request whose
     time has come is sent at once on an idle connection of ``--connections``, or queued until
     one frees up. Latency is measured from the *scheduled* send time to the last byte of the
     response, so a stalled server cannot hide its backlog (no coordinated omission); the
     latency from the actual send, the sender thread's own lateness and the time requests
     waited for a free connection are reported too.
   - ``single`` again, open loop at each of ``--extra-rates`` (below the server's capacity:
     latency without a backlog), and a closed loop of ``--capacity-concurrency`` connections
     (its throughput is the server's capacity), ``--ranking-seconds`` each.
   - ``ranking``, **closed loop** at ``--ranking-concurrency`` connections (the target's
     "modest concurrency"), each sending its next request as soon as the previous answer is in,
     for ``--ranking-seconds``; latency from send to last byte. Also at concurrency 1.

   Every response is checked (status 200, JSON with every requested feature and the right
   row count); anything else, a closed connection or a missing answer is an error.
   The CPU seconds of the server, this process (load generator), redis-server and every
   other process are recorded for each phase (``/proc``), so what shared the cores is known.

The JSON result goes to stdout (and to ``--results``); it carries the command line, date,
machine, package versions, the git commit and a hash of the code measured (``serving/``,
``registry/``, ``embedded.py``) at the start, at server launch and at the end, so a run
during which that code changed on disk is flagged. The human table and progress go to
stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import importlib.util
import io
import json
import os
import pstats
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # the shared harness, also when loaded by file path
    sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from harness import CpuWatch, latency_stats, machine, package_versions  # noqa: E402

PROJECT = "parity_bench_online"
USER_VIEW = "bench_user"
VIDEO_VIEW = "bench_video"
SINGLE_SERVICE = "bench_single"
RANKING_SERVICE = "bench_ranking"
RANKING_VIDEOS = 500
AUTH_TOKEN = "parity-bench-token"

MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US

EVENT_TYPES = ("play", "skip", "like", "share", "comment", "report")
EVENT_TYPE_P = (0.55, 0.25, 0.10, 0.04, 0.04, 0.02)

TARGETS = {
    "inprocess_single_p99_ms": 1.0,
    "http_single_p99_ms": 2.5,
    "http_single_errors": 0,
    "http_ranking_p99_ms": 15.0,
    "feast_ratio_ranking": 5.0,
}

# -- definitions ------------------------------------------------------------------------------

# (kind, agg, column, event types or None = every event): crossed with the view's windows
USER_KINDS = (
    ("events", "count", None, None),
    ("plays", "count", None, ("play",)),
    ("skips", "count", None, ("skip",)),
    ("likes", "count", None, ("like",)),
    ("shares", "count", None, ("share",)),
    ("comments", "count", None, ("comment",)),
    ("engaged", "count", None, ("like", "share", "comment")),
    ("watch_ms", "sum", "watch_ms", ("play",)),
    ("watch_ms_all", "sum", "watch_ms", None),
    ("watch_ms_mean", "mean", "watch_ms", ("play",)),
    ("completion_mean", "mean", "completion", ("play",)),
    ("completion_sum", "sum", "completion", ("play", "skip")),
)
USER_WINDOWS = ("10m", "1h", "24h", "7d")
USER_EXTRA = (("reports", "count", None, ("report",), ("24h", "7d")),)

VIDEO_KINDS = (
    ("plays", "count", None, ("play",), ("10m", "1h", "24h")),
    ("likes", "count", None, ("like",), ("10m", "1h", "24h")),
    ("shares", "count", None, ("share",), ("10m", "1h", "24h")),
    ("skips", "count", None, ("skip",), ("10m", "1h", "24h")),
    ("comments", "count", None, ("comment",), ("1h", "24h")),
    ("watch_ms", "sum", "watch_ms", ("play",), ("1h", "24h")),
    ("completion_mean", "mean", "completion", ("play",), ("1h", "24h")),
    ("watch_ms_mean", "mean", "watch_ms", ("play",), ("24h",)),
    ("reports", "count", None, ("report",), ("24h",)),
)

# the 16 user features the ranking shape asks for besides the 20 video features (Feast's
# ranking shape asks for 16 user features too)
RANKING_USER_FEATURES = (
    "plays_10m", "plays_1h", "plays_24h", "plays_7d", "watch_ms_1h", "watch_ms_24h", "watch_ms_7d",
    "completion_mean_24h", "completion_mean_7d", "skips_1h", "skips_24h", "likes_24h", "likes_7d",
    "shares_7d", "engaged_24h", "watch_ms_mean_7d",
)


@dataclass(frozen=True)
class FeatureSpec:
    """What a benchmark feature aggregates, for the numpy side (tiles and the verification)."""

    name: str
    agg: str
    column: str | None
    types: tuple[str, ...] | None
    window: str

    @property
    def where(self) -> str | None:
        if self.types is None:
            return None
        if len(self.types) == 1:
            return f"event_type = '{self.types[0]}'"
        return "event_type IN (" + ", ".join(f"'{t}'" for t in self.types) + ")"


def feature_specs() -> dict[str, list[FeatureSpec]]:
    user = [FeatureSpec(f"{kind}_{w}", agg, column, types, w)
            for kind, agg, column, types in USER_KINDS for w in USER_WINDOWS]
    user += [FeatureSpec(f"{kind}_{w}", agg, column, types, w)
             for kind, agg, column, types, windows in USER_EXTRA for w in windows]
    video = [FeatureSpec(f"{kind}_{w}", agg, column, types, w)
             for kind, agg, column, types, windows in VIDEO_KINDS for w in windows]
    assert len(user) == 50 and len(video) == 20, (len(user), len(video))
    return {USER_VIEW: user, VIDEO_VIEW: video}


def bench_definitions():
    """The benchmark's Definitions (validated like a `parity apply` would)."""
    from parity.registry.loader import LoadedDefinitions
    from parity.registry.models import Definitions, Entity, Feature, FeatureService, FeatureView, Source
    from parity.registry.validate import validate_definitions

    specs = feature_specs()

    def features(view: str) -> list:
        return [Feature(name=s.name, agg=s.agg, column=s.column, window=s.window, where=s.where)
                for s in specs[view]]

    defs = Definitions(
        entities=[Entity(name="user", join_keys={"user_id": "int64"}),
                  Entity(name="video", join_keys={"video_id": "int64"})],
        sources=[Source(name="video_events", schema={
            "user_id": "int64", "video_id": "int64", "event_type": "string", "watch_ms": "int64",
            "completion": "float64", "ts": "timestamp"}, timestamp_field="ts")],
        feature_views=[
            FeatureView(name=USER_VIEW, entity="user", source="video_events", owner="bench",
                        freshness_slo="1h", description="50 windowed user features (benchmark)",
                        features=features(USER_VIEW)),
            FeatureView(name=VIDEO_VIEW, entity="video", source="video_events", owner="bench",
                        freshness_slo="1h", description="20 windowed video features (benchmark)",
                        features=features(VIDEO_VIEW)),
        ],
        feature_services=[
            FeatureService(name=SINGLE_SERVICE, features=[f"{USER_VIEW}:*"]),
            FeatureService(name=RANKING_SERVICE, features=[f"{VIDEO_VIEW}:*"]
                           + [f"{USER_VIEW}:{name}" for name in RANKING_USER_FEATURES]),
        ],
    )
    problems = validate_definitions(LoadedDefinitions(defs))
    if problems:
        raise SystemExit("benchmark definitions are invalid:\n" + "\n".join(str(p) for p in problems))
    return defs


# -- events -----------------------------------------------------------------------------------


@dataclass
class Events:
    """Columnar events sorted by ts; ``offset`` is the ingest order (partition 0)."""

    user_id: np.ndarray
    video_id: np.ndarray
    etype: np.ndarray        # int8 index into EVENT_TYPES
    watch_ms: np.ndarray     # int64 (0 where null)
    watch_null: np.ndarray   # bool
    completion: np.ndarray   # float64 (NaN where null)
    ts: np.ndarray           # int64 microseconds
    t0: int                  # generation instant: events before it are "the past 7 days"
    horizon: int             # events reach up to here (exclusive)

    def __len__(self) -> int:
        return len(self.ts)

    def row(self, i: int) -> dict[str, Any]:
        """Event ``i`` as a source row (what a Kafka message would carry)."""
        from parity.registry.durations import from_micros

        return {"user_id": int(self.user_id[i]), "video_id": int(self.video_id[i]),
                "event_type": EVENT_TYPES[self.etype[i]],
                "watch_ms": None if self.watch_null[i] else int(self.watch_ms[i]),
                "completion": None if np.isnan(self.completion[i]) else float(self.completion[i]),
                "ts": from_micros(int(self.ts[i]))}

    def entity(self, view: str) -> np.ndarray:
        return self.user_id if view == USER_VIEW else self.video_id


def _power_law_ids(rng: np.random.Generator, n_ids: int, exponent: float, size: int) -> np.ndarray:
    """``size`` draws of ids 1..n_ids, P(rank k) ~ k^-exponent, ranks shuffled over the ids."""
    weights = np.arange(1, n_ids + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_ids - 1)
    id_of_rank = rng.permutation(n_ids) + 1
    return id_of_rank[ranks].astype(np.int64)


def generate_events(n_past: int, n_users: int, n_videos: int, t0: int, ahead_us: int, seed: int,
                    days: int = 7) -> Events:
    rng = np.random.default_rng(seed)
    span = days * DAY_US
    n_ahead = int(round(n_past * ahead_us / span))
    n = n_past + n_ahead
    ts = np.concatenate([t0 - span + (rng.random(n_past) * span).astype(np.int64),
                         t0 + (rng.random(n_ahead) * ahead_us).astype(np.int64)])
    ts = np.sort(ts)
    etype = rng.choice(len(EVENT_TYPES), size=n, p=EVENT_TYPE_P).astype(np.int8)
    play, skip = etype == 0, etype == 1
    watch = np.zeros(n, dtype=np.int64)
    watch[play] = np.minimum(rng.lognormal(np.log(15_000), 0.8, int(play.sum())), 600_000).astype(np.int64)
    watch[skip] = rng.integers(200, 3_000, int(skip.sum()))
    completion = np.full(n, np.nan)
    completion[play] = rng.beta(2.0, 1.5, int(play.sum()))
    completion[skip] = rng.random(int(skip.sum())) * 0.15
    return Events(
        user_id=_power_law_ids(rng, n_users, 0.8, n),
        video_id=_power_law_ids(rng, n_videos, 1.0, n),
        etype=etype, watch_ms=watch, watch_null=~(play | skip), completion=completion, ts=ts,
        t0=t0, horizon=t0 + ahead_us)


def _type_mask(events: Events, types: tuple[str, ...] | None, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
    et = events.etype[idx]
    if types is None:
        return np.ones(len(et), dtype=bool)
    return np.isin(et, [EVENT_TYPES.index(t) for t in types])


def _event_partials(events: Events, spec: FeatureSpec, idx) -> tuple[np.ndarray, np.ndarray | None]:
    """(whether each selected event counts for the feature, its column values or None)."""
    mask = _type_mask(events, spec.types, idx)
    if spec.column == "watch_ms":
        mask &= ~events.watch_null[idx]
        values = events.watch_ms[idx]
    elif spec.column == "completion":
        values = events.completion[idx]
        mask &= ~np.isnan(values)
    else:
        values = None
    return mask, values


# -- tiles: numpy --------------------------------------------------------------------------------


@dataclass
class TileTable:
    resolution: int
    entity: np.ndarray
    start: np.ndarray
    records: np.ndarray  # structured: ("i", int64[n_int]), ("f", float64[n_float])


def record_dtype(layout) -> np.dtype:
    return np.dtype([("i", "<i8", (layout.n_int,)), ("f", "<f8", (layout.n_float,))])


def compute_tiles(events: Events, view: str, layout, resolution: int, keep_from_end: int | None,
                  specs: dict[str, FeatureSpec]) -> TileTable:
    """Absolute numeric records of every tile of ``resolution`` whose end is after
    ``keep_from_end`` (the writer refuses older ones), straight from the events."""
    from parity.registry.online.layout import MAX_TS, ROWS

    ts = events.ts
    start_all = ts - ts % resolution
    idx = np.flatnonzero(start_all + resolution > keep_from_end) if keep_from_end is not None else np.arange(len(ts))
    ent = events.entity(view)[idx]
    start = start_all[idx]
    order = np.lexsort((start, ent))  # stable: events of a tile stay in ts order
    idx, ent, start = idx[order], ent[order], start[order]
    if len(idx) == 0:
        return TileTable(resolution, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, record_dtype(layout)))
    change = np.r_[True, (ent[1:] != ent[:-1]) | (start[1:] != start[:-1])]
    bounds = np.flatnonzero(change)
    records = np.zeros(len(bounds), dtype=record_dtype(layout))
    ints, floats = records["i"], records["f"]
    ints[:, ROWS] = np.diff(np.r_[bounds, len(idx)])
    ints[:, MAX_TS] = np.maximum.reduceat(ts[idx], bounds)
    for slot in layout.numeric:
        spec = specs[slot.feature.name]
        mask, values = _event_partials(events, spec, idx)
        if spec.agg == "count":
            ints[:, slot.int_slots[0]] = np.add.reduceat(mask.astype(np.int64), bounds)
        elif spec.agg == "sum" and slot.int_slots:
            ints[:, slot.int_slots[0]] = np.add.reduceat(np.where(mask, values, 0).astype(np.int64), bounds)
        elif spec.agg == "sum":
            floats[:, slot.float_slots[0]] = np.add.reduceat(np.where(mask, values, 0.0).astype(np.float64), bounds)
        elif spec.agg == "mean":
            ints[:, slot.int_slots[0]] = np.add.reduceat(mask.astype(np.int64), bounds)
            floats[:, slot.float_slots[0]] = np.add.reduceat(np.where(mask, values, 0.0).astype(np.float64), bounds)
        else:
            raise AssertionError(f"the benchmark has no {spec.agg} feature")
    return TileTable(resolution, ent[bounds], start[bounds], records)


def populate(client, defs, events: Events, batch_tiles: int, progress: bool = True) -> dict[str, Any]:
    """Write every retained tile and the tail through OnlineWriter (writer clock = wall clock)."""
    from parity.registry.online.accumulate import EventEvaluator
    from parity.registry.online.writer import OnlineWriter

    writer = OnlineWriter(client, PROJECT, defs)
    specs = {v: {s.name: s for s in ss} for v, ss in feature_specs().items()}
    report: dict[str, Any] = {"views": {}}
    began = time.perf_counter()
    for view_name in (USER_VIEW, VIDEO_VIEW):
        view = defs.view(view_name)
        layout = writer.layout(view)
        info: dict[str, Any] = {"resolutions_s": [r // 1_000_000 for r in layout.resolutions], "tiles": {},
                                "record_bytes": layout.width}
        written_entities: set[int] = set()
        for resolution in layout.resolutions:
            t_compute = time.perf_counter()
            keep = layout.resolution_retention[resolution]
            # put_tile refuses a tile when end + keep <= clock: leave those out up front (with a
            # minute of slack, so a tile crossing the line while we write is still offered)
            keep_from_end = None if keep is None else writer.clock() - keep - MINUTE_US
            table = compute_tiles(events, view_name, layout, resolution, keep_from_end, specs[view_name])
            compute_s = time.perf_counter() - t_compute
            t_write = time.perf_counter()
            raw = table.records.tobytes()
            width = layout.width
            n = len(table.entity)
            entities = table.entity.tolist()
            starts = table.start.tolist()
            accepted = 0
            batch = writer.batch()
            in_batch = 0
            for k in range(n):
                value = layout.decode_numeric(raw[k * width:(k + 1) * width])
                if batch.put_tile(view, (entities[k],), resolution, starts[k], value):
                    accepted += 1
                    written_entities.add(entities[k])
                in_batch += 1
                if in_batch >= batch_tiles:
                    batch.commit()
                    batch = writer.batch()
                    in_batch = 0
                    if progress and k % (batch_tiles * 50) < batch_tiles:
                        _log(f"  {view_name} @{resolution // 1_000_000}s: {k + 1:,}/{n:,} tiles")
            batch.commit()
            info["tiles"][str(resolution // 1_000_000)] = {"computed": n, "written": accepted,
                                                            "compute_s": round(compute_s, 2),
                                                            "write_s": round(time.perf_counter() - t_write, 2)}
            _log(f"  {view_name} @{resolution // 1_000_000}s: {accepted:,} tiles written "
                 f"(numpy {compute_s:.1f} s, write {time.perf_counter() - t_write:.1f} s)")
        # the tail: every event from the writer's tail floor on, evaluated by the reference path
        floor = writer.tail_floor(layout)
        tail_idx = np.flatnonzero(events.ts >= floor)
        evaluator = EventEvaluator(defs, view, layout)
        tail_events = [evaluator.evaluate(events.row(i), 0, int(i)) for i in tail_idx]
        batch = writer.batch()
        for lo in range(0, len(tail_events), batch_tiles):
            batch.add_events(view, tail_events[lo:lo + batch_tiles])
            if lo + batch_tiles >= len(tail_events):
                batch.set_watermark(view, events.t0)
            batch.commit()
            batch = writer.batch()
        if not tail_events:
            batch.set_watermark(view, events.t0)
            batch.commit()
        info["tail_events"] = len(tail_events)
        info["tail_floor_utc"] = _iso(floor)
        info["entities_written"] = len(written_entities)
        info["written_entity_ids"] = written_entities  # dropped from the JSON
        report["views"][view_name] = info
    report["seconds"] = round(time.perf_counter() - began, 1)
    return report


# -- verification -----------------------------------------------------------------------------


def _hop(length: int) -> int:
    """DESIGN.md's hop table (re-derived here on purpose)."""
    if length < 12 * HOUR_US:
        return 5 * MINUTE_US
    if length < 12 * DAY_US:
        return HOUR_US
    return DAY_US


def _window_us(text: str) -> int:
    unit = {"m": MINUTE_US, "h": HOUR_US, "d": DAY_US}[text[-1]]
    return int(text[:-1]) * unit


def expected_values(events: Events, view: str, entity_id: int, now: int) -> dict[str, Any]:
    """Every feature of ``view`` for one entity at ``now``, by the window rule, from the events."""
    idx = np.flatnonzero(events.entity(view) == entity_id)
    out: dict[str, Any] = {}
    for spec in feature_specs()[view]:
        length = _window_us(spec.window)
        hop = _hop(length)
        lo = (now - length) - (now - length) % hop
        ts = events.ts[idx]
        inside = idx[(ts >= lo) & (ts < now)]
        mask, values = _event_partials(events, spec, inside)
        if spec.agg == "count":
            out[spec.name] = int(mask.sum())
        elif spec.agg == "sum" and spec.column == "watch_ms":
            out[spec.name] = int(values[mask].sum())
        elif spec.agg == "sum":
            out[spec.name] = float(values[mask].sum())
        else:
            out[spec.name] = float(values[mask].astype(np.float64).mean()) if mask.any() else None
    return out


def values_equal(want: Any, got: Any, rel: float = 1e-9) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        if want is None or got is None:
            return want is got
        return want == got or abs(want - got) <= rel * max(abs(want), abs(got))
    return want == got and type(want) is type(got)


def sample_entities(events: Events, view: str, n_ids: int, rng: np.random.Generator, k: int) -> list[int]:
    ids = events.entity(view)
    counts = np.bincount(ids, minlength=n_ids + 1)
    top = np.argsort(counts)[::-1][:3].tolist()
    weighted = ids[rng.integers(0, len(ids), k)].tolist()
    uniform = rng.integers(1, n_ids + 1, k).tolist()
    never = np.flatnonzero(counts[1:] == 0)
    absent = (never[:2] + 1).tolist() + [n_ids + 1_000_000]  # ids no event has (and one out of range)
    seen, out = set(), []
    for e in [*top, *weighted, *uniform, *absent]:
        if e not in seen and e > 0:
            seen.add(int(e))
            out.append(int(e))
    return out


def verify(reader, defs, events: Events, written: dict[str, set[int]], n_users: int, n_videos: int,
           seed: int, k: int = 12) -> dict[str, Any]:
    """Lookups of a sample of entities equal the values computed from the events."""
    from parity.registry.durations import floor_to
    from parity.registry.online.writer import wall_clock_us

    rng = np.random.default_rng(seed + 1)
    report: dict[str, Any] = {"lookups": 0, "values": 0, "mismatches": 0, "examples": [], "statuses": {}}
    for view, n_ids, key in ((USER_VIEW, n_users, "user_id"), (VIDEO_VIEW, n_videos, "video_id")):
        ids = sample_entities(events, view, n_ids, rng, k)
        now = wall_clock_us()
        result = reader.get_online_features({key: ids}, features=[f"{view}:*"], now=now)
        report["lookups"] += len(ids)
        for row, entity_id in enumerate(ids):
            want = expected_values(events, view, entity_id, now)
            want_status = "ok" if entity_id in written[view] else "missing"
            for name, value in want.items():
                column = f"{view}__{name}"
                got = result.values[column][row]
                status = result.status[column][row]
                report["values"] += 1
                report["statuses"][status] = report["statuses"].get(status, 0) + 1
                if not values_equal(value, got) or status != want_status:
                    report["mismatches"] += 1
                    if len(report["examples"]) < 10:
                        report["examples"].append({"view": view, "entity": entity_id, "feature": name,
                                                   "expected": value, "got": got, "status": status,
                                                   "expected_status": want_status, "now": _iso(now)})
        report.setdefault("now_utc", {})[view] = _iso(now)
        report.setdefault("open_tile_events", {})[view] = int(
            ((events.ts >= floor_to(now, 5 * MINUTE_US)) & (events.ts < now)).sum())
    report["tiles"] = verify_tiles_with_tilebuilder(reader.client, defs, events, rng)
    report["ok"] = report["mismatches"] == 0 and report["tiles"]["mismatches"] == 0
    return report


def verify_tiles_with_tilebuilder(client, defs, events: Events, rng: np.random.Generator,
                                  per_view: int = 4, max_events: int = 5000) -> dict[str, Any]:
    """Every stored tile of a few entities equals the reference aggregation of their events."""
    from parity.registry.online.accumulate import EventEvaluator, TileBuilder
    from parity.registry.online.keys import encode_entity, entity_key, tile_field, view_prefix
    from parity.registry.online.layout import ViewLayout
    from parity.registry.online.writer import wall_clock_us

    out = {"entities": 0, "tiles": 0, "mismatches": 0, "examples": []}
    for view_name in (USER_VIEW, VIDEO_VIEW):
        view = defs.view(view_name)
        layout = ViewLayout(defs, view)
        ids = events.entity(view_name)
        counts = np.bincount(ids)
        # the reference fold is slow (tens of microseconds per event and resolution): the most
        # active entity with at most max_events events, and activity-weighted draws under it
        small = np.flatnonzero((counts > 0) & (counts <= max_events))
        candidates = [int(small[np.argmax(counts[small])])] if len(small) else []
        draws = ids[rng.integers(0, len(ids), 50 * per_view)]
        candidates += [int(e) for e in draws if counts[e] <= max_events][:per_view - 1]
        evaluator = EventEvaluator(defs, view, layout)
        prefix = view_prefix(PROJECT, view.name, view.version)
        for entity_id in dict.fromkeys(candidates):
            builder = TileBuilder(layout)
            for i in np.flatnonzero(ids == entity_id):
                builder.add(evaluator.evaluate(events.row(int(i)), 0, int(i)))
            stored = client.hgetall(entity_key(prefix, encode_entity(layout.join_keys, [entity_id])))
            out["entities"] += 1
            for (entity, resolution, start), value in builder.tiles.items():
                blob = stored.get(tile_field(resolution, start))
                if blob is None:
                    keep = layout.resolution_retention[resolution]
                    if keep is not None and start + resolution + keep <= wall_clock_us():
                        continue  # past its retention now: the writer refuses (or prunes) it
                    got = None
                else:
                    got = layout.decode_numeric(blob)
                out["tiles"] += 1
                if got is None or not _tile_equal(layout, value, got):
                    out["mismatches"] += 1
                    if len(out["examples"]) < 5:
                        out["examples"].append({"view": view_name, "entity": entity_id, "resolution": resolution,
                                                "start": _iso(start), "expected": repr(value), "got": repr(got)})
    return out


def _tile_parts(layout, value) -> list:
    """A tile value as comparable numbers: rows, max_ts, then per slot count / sum / (sum, count)."""
    out: list = [value.rows, value.max_ts]
    for slot in layout.numeric:
        partial = value.partials.get(slot.feature.name)
        if slot.agg == "count":
            out.append(int(partial or 0))
        elif slot.agg == "sum":
            out.append(partial if partial is not None else (0 if slot.int_slots else 0.0))
        else:  # mean: (sum, count)
            out.append((0.0, 0) if partial is None else (float(partial[0]), int(partial[1])))
    return out


def _tile_equal(layout, want, got) -> bool:
    for a, b in zip(_tile_parts(layout, want), _tile_parts(layout, got)):
        if isinstance(a, tuple):
            if a[1] != b[1] or not values_equal(a[0], b[0]):
                return False
        elif not values_equal(a, b):
            return False
    return True


# -- requests ---------------------------------------------------------------------------------


def draw_requests(events: Events, n_videos: int, count: int, seed: int, shape: str) -> list[dict[str, list[int]]]:
    """Entity dicts: users drawn by activity; for ranking 500 distinct videos by popularity."""
    rng = np.random.default_rng(seed + (11 if shape == "single" else 13))
    users = events.user_id[rng.integers(0, len(events), count)].tolist()
    if shape == "single":
        return [{"user_id": [u]} for u in users]
    popularity = np.bincount(events.video_id, minlength=n_videos + 1)[1:].astype(np.float64) + 0.5
    p = popularity / popularity.sum()
    out = []
    for u in users:
        # Efraimidis-Spirakis: the 500 largest u^(1/w) are a weighted draw without replacement
        keys = np.log(rng.random(n_videos)) / p
        videos = (np.argpartition(keys, -RANKING_VIDEOS)[-RANKING_VIDEOS:] + 1).tolist()
        out.append({"user_id": [u], "video_id": videos})
    return out


SERVICES = {"single": SINGLE_SERVICE, "ranking": RANKING_SERVICE}


# -- statistics -------------------------------------------------------------------------------


def redis_commandstats(client) -> dict[str, dict[str, float]]:
    """Redis's own per-command counters since the last CONFIG RESETSTAT (calls, server-side µs)."""
    out = {}
    for name, stats in client.info("commandstats").items():
        if isinstance(stats, dict):
            out[name.removeprefix("cmdstat_")] = {"calls": int(stats.get("calls", 0)),
                                                  "usec_per_call": float(stats.get("usec_per_call", 0.0))}
    return out


def ping_round_trip(client, calls: int = 2000) -> dict[str, Any]:
    """The floor of any lookup: one PING round trip through the same redis-py client."""
    for _ in range(100):
        client.ping()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - t0)
    return latency_stats(samples)



def time_calls(call: Callable[[Any], Any], requests: list, seconds: float, warmup: int) -> list[float]:
    for i in range(warmup):
        call(requests[i % len(requests)])
    out: list[float] = []
    perf = time.perf_counter
    deadline = perf() + seconds
    i = 0
    n = len(requests)
    while True:
        req = requests[i % n]
        t0 = perf()
        call(req)
        t1 = perf()
        out.append(t1 - t0)
        i += 1
        if t1 >= deadline:
            break
    return out


def _gc_collections() -> list[int]:
    return [g["collections"] for g in gc.get_stats()]


def _gc_delta(before: list[int]) -> dict[str, int]:
    return {f"gen{i}": after - b for i, (after, b) in enumerate(zip(_gc_collections(), before))}


def measure_parity_inprocess(reader, client, shape: str, requests: list, args, pids: dict[str, int]) -> dict[str, Any]:
    """Timed ``get_online_features`` calls (after warm-up), with Redis's own counters."""
    call = parity_call(reader, shape)
    for i in range(args.warmup_calls):
        call(requests[i % len(requests)])
    client.config_resetstat()
    out_bytes = client.info("stats")["total_net_output_bytes"]
    gc0 = _gc_collections()
    cache0 = dict(vars(reader.cache.stats)) if reader.cache is not None else None
    with CpuWatch(pids) as cpu:
        samples = time_calls(call, requests, args.inproc_seconds, warmup=0)
    gc_delta = _gc_delta(gc0)
    out_bytes = client.info("stats")["total_net_output_bytes"] - out_bytes
    commands = redis_commandstats(client)
    stats = latency_stats(samples)
    stats["rps"] = round(len(samples) / sum(samples), 1)
    stats["redis_reply_bytes_per_lookup"] = int(out_bytes / len(samples))
    stats["redis_commands_per_lookup"] = {
        name: {"calls_per_lookup": round(c["calls"] / len(samples), 3), "usec_per_call": c["usec_per_call"]}
        for name, c in commands.items() if c["calls"] and name not in ("info", "config|resetstat")}
    stats["gc_collections"] = gc_delta
    stats["cpu"] = cpu.report
    if cache0 is not None:
        stats["tile_cache"] = {k: v - cache0[k] for k, v in vars(reader.cache.stats).items()}
    sample = reader.get_online_features(requests[0], service=SERVICES[shape])
    stats["entity_rows"], stats["features"] = sample.rows, len(sample.names)
    stats["statuses"] = {st: sum(col.count(st) for col in sample.status.values())
                         for st in ("ok", "missing", "stale", "expired")}
    return stats


def parity_call(reader, shape: str) -> Callable[[dict], Any]:
    service = SERVICES[shape]

    def call(entities: dict) -> Any:
        return reader.get_online_features(entities, service=service).to_dict()

    return call


def profile_calls(call: Callable[[Any], Any], requests: list, seconds: float, top: int = 25) -> dict[str, Any]:
    profiler = cProfile.Profile()
    calls = 0
    deadline = time.perf_counter() + seconds
    profiler.enable()
    while time.perf_counter() < deadline:
        call(requests[calls % len(requests)])
        calls += 1
    profiler.disable()
    texts = {}
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        texts[order] = buf.getvalue()
    return {"calls": calls, "seconds": seconds, "top_by_tottime": texts["tottime"],
            "top_by_cumulative": texts["cumulative"]}


# -- HTTP: server subprocess ------------------------------------------------------------------


def serve_child(redis_url: str, port: int, auth: bool, workers: int) -> None:
    """The server process: what ``parity serve`` runs (``parity.serving.server.serve``: the app
    of ``build_app`` under uvicorn with ``run_server``'s options, in ``workers`` processes),
    over this benchmark's definitions."""
    from parity.registry.config import FeatureStoreConfig

    config = FeatureStoreConfig(project=PROJECT, serving={"auth_tokens": [AUTH_TOKEN] if auth else [],
                                                          "require_auth": auth},
                                root=Path(tempfile.gettempdir()))
    from parity.serving.server import serve

    serve(config, redis_url, bench_definitions(), "127.0.0.1", port, workers)


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(redis_url: str, auth: bool, log_dir: Path, workers: int, timeout: float = 90.0) -> Server:
    from parity.embedded import free_port

    port = free_port()
    log_path = log_dir / "server.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-child", "--redis-url", redis_url,
           "--port", str(port), "--workers", str(workers)] + ([] if auth else ["--no-auth"])
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
    server = Server(process, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    if workers > 1:
                        _await_workers(server, workers, deadline)
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise SystemExit(f"the server did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def _await_workers(server: Server, workers: int, deadline: float) -> None:
    """Wait until the server has ``workers`` worker processes and each has finished starting
    (its CPU time stands still for half a second): a worker still importing would not accept
    the connections of the first phase, and they would all go to the others."""
    last: dict[int, float | None] = {}
    while time.monotonic() < deadline:
        pids = harness.child_pids(server.process.pid)
        now = {pid: harness.proc_cpu(pid) for pid in pids}
        if len(pids) >= workers and now == last:
            return
        last = now
        time.sleep(0.5)
    raise SystemExit(f"the server's {workers} workers did not start:\n{server.log_path.read_text()[-3000:]}")


def server_pids(server: Server, workers: int) -> int | list[int]:
    """The server's process, or with several workers the supervisor and its workers (their
    CPU is summed as the server's)."""
    return server.process.pid if workers == 1 else [server.process.pid, *harness.child_pids(server.process.pid)]


# -- HTTP: load generator ---------------------------------------------------------------------


def http_request(port: int, body: dict, auth: bool) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (f"POST /v1/features HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n" + (f"Authorization: Bearer {AUTH_TOKEN}\r\n" if auth else "")
            + "\r\n").encode()
    return head + payload


def server_cache_counters(port: int, auth: bool) -> dict[str, float]:
    """The server's ``parity_tile_cache_*`` counters from ``/metrics`` (cumulative)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {AUTH_TOKEN}"} if auth else {})
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("parity_tile_cache_") and "_total " in line:
            name, value = line.split()
            out[name.removeprefix("parity_tile_cache_").removesuffix("_total")] = float(value)
    return out


def parse_response(buf: bytearray) -> tuple[int, bytes, int] | None:
    """(status, body, bytes consumed) of a complete HTTP/1.1 response at the start of ``buf``."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    pos = end + 4
    if not chunked:
        length = length or 0
        if len(buf) < pos + length:
            return None
        return status, bytes(buf[pos:pos + length]), pos + length
    body = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        start = line_end + 2
        if len(buf) < start + size + 2:
            return None
        body += buf[start:start + size]
        pos = start + size + 2
        if size == 0:
            return status, bytes(body), pos


class _Conn:
    __slots__ = ("sock", "buf", "index", "scheduled", "sent", "busy")

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, bytearray()
        self.index, self.scheduled, self.sent, self.busy = -1, 0.0, 0.0, False


class LoadGenerator:
    """Keep-alive HTTP/1.1 connections; a sender thread (open loop) or the receiver (closed
    loop) sends, one receiver thread (epoll) reads and times every response."""

    def __init__(self, port: int, connections: int, requests: list[bytes], check: Callable[[bytes], str | None]):
        self.port, self.requests, self.check = port, requests, check
        self.selector = selectors.DefaultSelector()
        self.lock = threading.RLock()
        self.conns = [self._connect() for _ in range(connections)]
        self.idle: deque[_Conn] = deque(self.conns)
        self.pending: deque[tuple[int, float]] = deque()
        self.outstanding = 0
        self.scheduled: list[float] = []
        self.submitted: list[float] = []  # when the sender thread handled it (its own lateness)
        self.sent: list[float] = []       # when it went on the wire (later if every connection was busy)
        self.done: list[float] = []
        self.ok: list[bool] = []
        self.errors: dict[str, int] = {}
        self.closed_loop_until: float | None = None
        self.next_index = 0
        self._stop = threading.Event()

    def _connect(self) -> _Conn:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        conn = _Conn(sock)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def _new_slot(self, scheduled: float) -> int:
        self.scheduled.append(scheduled)
        self.submitted.append(time.perf_counter())
        self.sent.append(float("nan"))
        self.done.append(float("nan"))
        self.ok.append(False)
        return len(self.scheduled) - 1

    def _send(self, conn: _Conn, slot: int) -> None:
        conn.index = slot
        conn.busy = True
        now = time.perf_counter()
        conn.sent = self.sent[slot] = now
        try:
            conn.sock.sendall(self.requests[slot % len(self.requests)])
        except OSError:
            self._error("send failed")
            self._replace(conn)

    def _replace(self, conn: _Conn) -> None:
        """A broken connection: its request is an error; a fresh connection takes its place."""
        with self.lock:
            if conn.busy:
                self.outstanding -= 1
            conn.busy = False
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()
            self.conns.remove(conn)
            try:
                fresh = self._connect()
            except OSError:
                self._error("reconnect failed")
                return
            self.conns.append(fresh)
            self._dispatch_idle(fresh)

    def _dispatch_idle(self, conn: _Conn) -> None:
        """Under the lock: give ``conn`` the next queued request, or make it idle."""
        if self.pending:
            slot, _ = self.pending.popleft()
            self._send(conn, slot)
        elif self.closed_loop_until is not None and time.perf_counter() < self.closed_loop_until:
            slot = self._new_slot(time.perf_counter())
            self.outstanding += 1
            self._send(conn, slot)
        else:
            conn.busy = False
            self.idle.append(conn)

    def submit(self, scheduled: float) -> None:
        with self.lock:
            slot = self._new_slot(scheduled)
            self.outstanding += 1
            if self.idle:
                self._send(self.idle.popleft(), slot)
            else:
                self.pending.append((slot, scheduled))

    def _receive_loop(self) -> None:
        perf = time.perf_counter
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.05):
                conn: _Conn = key.data
                try:
                    data = conn.sock.recv(1 << 20)
                except OSError:
                    data = b""
                if not data:
                    self._error("connection closed")
                    self._replace(conn)
                    continue
                conn.buf += data
                parsed = parse_response(conn.buf)
                if parsed is None:
                    continue
                finished = perf()
                status, body, used = parsed
                del conn.buf[:used]
                slot = conn.index
                self.done[slot] = finished
                with self.lock:
                    self.outstanding -= 1
                    self._dispatch_idle(conn)
                problem = f"HTTP {status}" if status != 200 else self.check(body)
                if problem is None:
                    self.ok[slot] = True
                else:
                    self._error(problem)

    def start(self) -> None:
        self.receiver = threading.Thread(target=self._receive_loop, name="receiver", daemon=True)
        self.receiver.start()

    def drain(self, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                if self.outstanding == 0:
                    break
            time.sleep(0.01)
        with self.lock:
            missing = self.outstanding
        if missing:
            self.errors["unanswered: still queued or in flight when the drain timeout ended"] = missing

    def close(self) -> None:
        self._stop.set()
        self.receiver.join(timeout=5)
        for conn in self.conns:
            try:
                conn.sock.close()
            except OSError:
                pass
        self.selector.close()

    # -- the two load shapes --------------------------------------------------------------
    def open_loop(self, rate: float, seconds: float) -> tuple[float, float]:
        n = int(round(rate * seconds))
        perf = time.perf_counter
        start = perf() + 0.01
        for i in range(n):
            target = start + i / rate
            delay = target - perf()
            if delay > 0:
                time.sleep(delay)
            self.submit(target)
        return start, start + n / rate

    def closed_loop(self, concurrency: int, seconds: float) -> tuple[float, float]:
        start = time.perf_counter()
        self.closed_loop_until = start + seconds
        for _ in range(concurrency):
            self.submit(time.perf_counter())
        while time.perf_counter() < self.closed_loop_until:
            time.sleep(0.05)
        return start, self.closed_loop_until

    def results(self, first: int, window: tuple[float, float], open_loop: bool) -> dict[str, Any]:
        scheduled = np.asarray(self.scheduled[first:])
        submitted = np.asarray(self.submitted[first:])
        sent = np.asarray(self.sent[first:])
        done = np.asarray(self.done[first:])
        ok = np.asarray(self.ok[first:], dtype=bool)
        answered = ~np.isnan(done)
        good = answered & ok
        unanswered = int((~answered).sum())
        out: dict[str, Any] = {"requests": int(len(scheduled)), "ok": int(good.sum()),
                               "errors": int(len(scheduled) - good.sum()), "unanswered": unanswered,
                               "failed_answers": int((answered & ~ok).sum()), "error_kinds": dict(self.errors)}
        if good.any():
            span = float(np.nanmax(done[good]) - window[0])
            out["throughput_rps"] = round(float(good.sum()) / span, 1) if span > 0 else None
            if open_loop:
                out["latency_from_scheduled"] = latency_stats((done - scheduled)[good])
                out["latency_from_sent"] = latency_stats((done - sent)[good])
                out["sender_lateness"] = latency_stats((submitted - scheduled)[good])
                out["waited_for_a_connection"] = latency_stats((sent - submitted)[good])
            else:
                out["latency"] = latency_stats((done - sent)[good])
        return out


def response_checker(n_features: int, rows: int, parse_every: int = 1) -> Callable[[bytes], str | None]:
    """Checks an answer: byte-level checks on every response (C-speed, so the receiver thread
    times the next response without delay), a full JSON parse on every ``parse_every``-th."""
    import orjson

    rows_marker = b'"rows":%d' % rows
    seen = [0]

    def check(body: bytes) -> str | None:
        if rows_marker not in body:
            return "wrong row count"
        if body.count(b'"dtype":') != n_features:
            return "wrong feature count"
        seen[0] += 1
        if seen[0] % parse_every:
            return None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "invalid JSON"
        features = data.get("features")
        if not isinstance(features, dict) or len(features) != n_features or data.get("rows") != rows:
            return "wrong shape"
        if any(len(col.get("values", ())) != rows or len(col.get("status", ())) != rows for col in features.values()):
            return "wrong column length"
        return None

    return check


def run_http_phase(port: int, requests: list[bytes], check, *, connections: int, warmup_seconds: float,
                   pids: dict[str, int], rate: float | None = None, seconds: float,
                   concurrency: int | None = None) -> dict[str, Any]:
    """One load phase on fresh connections: warm-up (not recorded), then the measured part."""
    gen = LoadGenerator(port, connections if rate is not None else concurrency, requests, check)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the sender thread must not wait 5 ms for the GIL
    gc_was = gc.isenabled()
    gc.disable()  # the generator's own pauses would count as server latency
    gen.start()
    try:
        if warmup_seconds > 0:
            if rate is not None:
                gen.open_loop(rate, warmup_seconds)
            else:
                gen.closed_loop(concurrency, warmup_seconds)
                gen.closed_loop_until = None
            gen.drain(30)
        first = len(gen.scheduled)
        warm_errors = dict(gen.errors)
        gen.errors.clear()
        with CpuWatch(pids) as cpu:
            if rate is not None:
                window = gen.open_loop(rate, seconds)
            else:
                window = gen.closed_loop(concurrency, seconds)
                gen.closed_loop_until = None
            gen.drain(30)
        out = gen.results(first, window, open_loop=rate is not None)
        out["warmup_errors"] = warm_errors
        out["cpu"] = cpu.report
        out["connections"] = len(gen.conns)
        if rate is not None:
            out.update(offered_rps=rate, seconds=seconds)
        else:
            out.update(concurrency=concurrency, seconds=seconds)
        return out
    finally:
        gen.close()
        sys.setswitchinterval(old_switch)
        if gc_was:
            gc.enable()


# -- Feast ------------------------------------------------------------------------------------


def load_feast_module():
    spec = importlib.util.spec_from_file_location("parity_bench_feast_online", HERE / "feast_online.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- the machine and the software -------------------------------------------------------------


def versions(redis_server_version: str | None = None) -> dict[str, str | None]:
    found = package_versions(("parity", "feast", "redis", "hiredis", "numpy", "fastapi", "starlette", "uvicorn",
                              "uvloop", "httptools", "orjson", "pydantic"))
    found["redis-server"] = redis_server_version
    return found


def source_state() -> dict[str, Any]:
    return harness.source_state(REPO, ("serving", "registry", "embedded.py", "benchmarks"), code_hash())


def code_hash() -> str:
    """A hash of the code a lookup runs (serving/, registry/, embedded.py)."""
    return harness.code_hash(REPO, [*(REPO / "serving").glob("*.py"), *(REPO / "registry").rglob("*.py"),
                                    REPO / "embedded.py"])


def _iso(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- report -----------------------------------------------------------------------------------


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ip = results.get("inprocess", {}).get("single")
    if ip:
        out["inprocess_single_p99"] = {"target": "<= 1 ms", "measured_ms": ip["p99_ms"],
                                       "met": ip["p99_ms"] <= TARGETS["inprocess_single_p99_ms"]}
    hs = results.get("http", {}).get("single")
    if hs and "latency_from_scheduled" in hs:
        out["http_single_p99"] = {"target": f"<= 2.5 ms at {hs['offered_rps']:g} req/s for {hs['seconds']:g} s",
                                  "measured_ms": hs["latency_from_scheduled"]["p99_ms"],
                                  "met": hs["latency_from_scheduled"]["p99_ms"] <= TARGETS["http_single_p99_ms"]}
    if hs:
        out["http_single_errors"] = {"target": "0 errors", "measured": hs["errors"], "met": hs["errors"] == 0}
        if hs.get("throughput_rps") is not None:
            out["http_single_sustained"] = {"target": f"{hs['offered_rps']:g} req/s sustained (>= 99%)",
                                            "measured_rps": hs["throughput_rps"],
                                            "met": hs["throughput_rps"] >= 0.99 * hs["offered_rps"]}
    hr = results.get("http", {}).get("ranking")
    if hr and "latency" in hr:
        out["http_ranking_p99"] = {"target": f"<= 15 ms at concurrency {hr['concurrency']}",
                                   "measured_ms": hr["latency"]["p99_ms"],
                                   "met": hr["latency"]["p99_ms"] <= TARGETS["http_ranking_p99_ms"] and hr["errors"] == 0}
    ratio = results.get("feast_ratio_p99", {}).get("ranking")
    if ratio is not None:
        out["feast_ratio_ranking"] = {"target": ">= 5x (Feast p99 / Parity p99, in process)", "measured": ratio,
                                      "met": ratio >= TARGETS["feast_ratio_ranking"]}
    ver = results.get("verification")
    if ver:
        out["data_verified"] = {"target": "0 mismatches", "measured": ver["mismatches"] + ver["tiles"]["mismatches"],
                                "met": ver["ok"]}
    return out


def summary_table(r: dict[str, Any]) -> str:
    L: list[str] = []
    a = r["args"]
    d = r.get("data", {})
    L.append(f"Parity online benchmark, {r['date_utc']}, {r['machine']['cores']} cores, "
             f"{r['machine'].get('memory_gib')} GiB, commit {str(r['source'].get('commit'))[:10]}, "
             f"code sha256 {r['source'].get('code_sha256')}"
             + (", uncommitted: " + ", ".join(r["source"]["uncommitted"]) if r["source"].get("uncommitted") else "")
             + ("  WARNING: the code changed on disk during the run" if r.get("code_changed_during_run") else ""))
    if d:
        L.append(f"data: {d['events_past']:,} events over 7 d (+{d['events_ahead']:,} ahead), {a['users']:,} users, "
                 f"{a['videos']:,} videos; tiles written "
                 + ", ".join(f"{v}: {sum(t['written'] for t in info['tiles'].values()):,}"
                             for v, info in r["populate"]["views"].items())
                 + f"; populate {r['populate']['seconds']} s; redis used {d.get('redis_used_memory_human')}")
    ver = r.get("verification")
    if ver:
        L.append(f"verification: {ver['values']:,} values of {ver['lookups']} entities, {ver['mismatches']} mismatches; "
                 f"{ver['tiles']['tiles']:,} tiles vs TileBuilder, {ver['tiles']['mismatches']} mismatches")
    L.append("")
    L.append(f"{'shape':<9} {'what':<44} {'p50 ms':>9} {'p99 ms':>9} {'p99.9 ms':>9} {'calls':>8} {'rps':>8}")
    for shape in ("single", "ranking"):
        ip = r.get("inprocess", {}).get(shape)
        if ip:
            L.append(f"{shape:<9} {'Parity in process (get_online_features)':<44} {ip['p50_ms']:>9.3f} "
                     f"{ip['p99_ms']:>9.3f} {ip['p999_ms']:>9.3f} {ip['count']:>8,} {ip['rps']:>8,.0f}")
        fe = r.get("feast", {}).get(shape)
        if fe:
            L.append(f"{shape:<9} {'Feast in process (get_online_features)':<44} {fe['p50_ms']:>9.3f} "
                     f"{fe['p99_ms']:>9.3f} {'':>9} {fe['calls']:>8,} {fe['rps']:>8,.0f}")
        if shape == "ranking" and r.get("inprocess", {}).get("ranking_uncached"):
            ip = r["inprocess"]["ranking_uncached"]
            L.append(f"{shape:<9} {'Parity in process, serving cache off':<44} {ip['p50_ms']:>9.3f} "
                     f"{ip['p99_ms']:>9.3f} {ip['p999_ms']:>9.3f} {ip['count']:>8,} {ip['rps']:>8,.0f}")
        ratio = r.get("feast_ratio_p99", {}).get(shape)
        if ratio is not None:
            L.append(f"{shape:<9} {'Feast p99 / Parity p99 (in process)':<44} {ratio:>9.2f}x")
        off = r.get("feast_ratio_p99", {}).get("ranking_cache_off") if shape == "ranking" else None
        if off is not None:
            L.append(f"{shape:<9} {'  ... with the serving cache off':<44} {off:>9.2f}x")
    hs = r.get("http", {}).get("single")
    if hs and "latency_from_scheduled" in hs:
        s, a2, lat = hs["latency_from_scheduled"], hs["latency_from_sent"], hs["sender_lateness"]
        wait = hs["waited_for_a_connection"]
        what = f"HTTP open loop {hs['offered_rps']:g}/s, from scheduled"
        L.append(f"{'single':<9} {what:<44} {s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} {s['p999_ms']:>9.3f} "
                 f"{hs['requests']:>8,} {hs['throughput_rps']:>8,.0f}")
        L.append(f"{'single':<9} {'  (from actual send)':<44} {a2['p50_ms']:>9.3f} {a2['p99_ms']:>9.3f} "
                 f"{a2['p999_ms']:>9.3f}")
        L.append(f"{'single':<9} {'  (sender thread lateness)':<44} {lat['p50_ms']:>9.3f} {lat['p99_ms']:>9.3f} "
                 f"{lat['p999_ms']:>9.3f}")
        L.append(f"{'single':<9} {'  (queued: every connection busy)':<44} {wait['p50_ms']:>9.3f} "
                 f"{wait['p99_ms']:>9.3f} {wait['p999_ms']:>9.3f}")
        L.append(f"{'single':<9} errors {hs['errors']} ({hs['unanswered']} unanswered, {hs['failed_answers']} failed "
                 f"answers) {hs['error_kinds'] or ''}")
    for key, block in r.get("http", {}).items():
        if key.startswith("single_at_") and "latency_from_scheduled" in block:
            s = block["latency_from_scheduled"]
            what = f"HTTP open loop {block['offered_rps']:g}/s, from scheduled"
            L.append(f"{'single':<9} {what:<44} {s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} {s['p999_ms']:>9.3f} "
                     f"{block['requests']:>8,} {block['throughput_rps']:>8,.0f}  errors {block['errors']}")
    cap = r.get("http", {}).get("single_capacity")
    if cap and "latency" in cap:
        s = cap["latency"]
        what = f"HTTP closed loop, concurrency {cap['concurrency']} (capacity)"
        L.append(f"{'single':<9} {what:<44} {s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} {s['p999_ms']:>9.3f} "
                 f"{cap['requests']:>8,} {cap['throughput_rps']:>8,.0f}  errors {cap['errors']}")
    for key in ("ranking_c1", "ranking"):
        hr = r.get("http", {}).get(key)
        if hr and "latency" in hr:
            s = hr["latency"]
            what = f"HTTP closed loop, concurrency {hr['concurrency']}"
            L.append(f"{'ranking':<9} {what:<44} {s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} {s['p999_ms']:>9.3f} "
                     f"{hr['requests']:>8,} {hr['throughput_rps']:>8,.1f}")
            if hr["errors"]:
                L.append(f"{'ranking':<9} errors {hr['errors']} {hr['error_kinds']}")
            if hr.get("tile_cache_after"):
                L.append(f"{'ranking':<9}   server cache counters after the phase (cumulative): {hr['tile_cache_after']}")
    ping = r.get("redis_ping_round_trip")
    if ping:
        L.append(f"\nRedis: PING round trip p50 {ping['p50_ms']:.3f} ms, p99 {ping['p99_ms']:.3f} ms (same client)")
    for shape in ("single", "ranking", "ranking_uncached"):
        ip = r.get("inprocess", {}).get(shape)
        if ip and "redis_commands_per_lookup" in ip:
            cmds = ip["redis_commands_per_lookup"]
            ev = cmds.get("evalsha", {})
            L.append(f"  {shape}: per lookup {ev.get('calls_per_lookup')} EVALSHA x {ev.get('usec_per_call')} us "
                     f"in Redis, {cmds.get('script|exists', {}).get('calls_per_lookup', 0)} SCRIPT EXISTS, "
                     f"{ip['redis_reply_bytes_per_lookup']:,} reply bytes"
                     + (f"; serving cache {ip['tile_cache']}" if ip.get("tile_cache") else ""))
    cpu_lines = []
    phases = [("inprocess", "single"), ("inprocess", "ranking"), ("inprocess", "ranking_uncached")] + [("http", k) for k in r.get("http", {})
                                                                     if k not in ("server", "load_generator")]
    for key, phase in phases:
        block = r.get(key, {}).get(phase)
        if block and "cpu" in block:
            c = block["cpu"]
            cpu_lines.append(f"  {key} {phase:<16} wall {c['wall_s']:>6.1f} s; % of one core: "
                             + ", ".join(f"{k} {v}" for k, v in c["pct_of_one_core"].items()))
    if cpu_lines:
        L.append("\nwho used the cores")
        L.extend(cpu_lines)
    L.append("\ntargets")
    for name, v in r.get("verdicts", {}).items():
        measured = v.get("measured_ms", v.get("measured", v.get("measured_rps")))
        L.append(f"  {name:<24} {v['target']:<48} measured {measured!s:<10} {'met' if v['met'] else 'MISSED'}")
    return "\n".join(L)


# -- main -------------------------------------------------------------------------------------

QUICK = {"events": 20_000, "users": 2_000, "videos": 1_000, "seconds": 3.0, "inproc_seconds": 1.5,
         "ranking_requests": 50, "ranking_seconds": 2.0, "warmup_seconds": 0.5, "warmup_calls": 5, "rate": 500.0, "ahead_minutes": 20.0,
         "extra_rates": [100.0], "capacity_concurrency": 4}


def build_parser() -> argparse.ArgumentParser:
    import textwrap

    p = argparse.ArgumentParser(
        prog="python benchmarks/bench_online.py",
        description=textwrap.fill("Benchmark Parity's online serving in one run against one private redis-server: populate "
                    "realistic tiles (numpy-generated events folded into tiles and written through OnlineWriter, "
                    "plus the open tile's tail), verify a sample of lookups against values computed from the events, "
                    "then time OnlineReader.get_online_features in process, the HTTP app under uvicorn in a "
                    "subprocess under an open-loop load (single) and a closed-loop load (ranking), and Feast 0.67's "
                    "get_online_features on the same Redis. Shapes: single = 1 user x 50 windowed features "
                    "(10m..7d); ranking = 1 user + 500 videos x (20 video + 16 user) windowed features. "
                    "Prints the JSON result on stdout and a table (and progress) on stderr.", 100),
        epilog="targets: in-process single p99 <= 1 ms; HTTP single p99 <= 2.5 ms at 1,000 req/s for 60 s with 0 "
               "errors; HTTP ranking p99 <= 15 ms at modest concurrency; Feast p99 / Parity p99 >= 5x for ranking.\n"
               "smoke run: python benchmarks/bench_online.py --quick\n"
               "full run:  python benchmarks/bench_online.py --results /tmp/online.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000,
                   help="events over the 7 days before the start of the run (default: 2000000)")
    p.add_argument("--users", type=int, default=100_000, help="user ids 1..USERS (default: 100000)")
    p.add_argument("--videos", type=int, default=200_000,
                   help="video ids 1..VIDEOS (default: 200000; at least 500, the ranking shape's candidates)")
    p.add_argument("--ahead-minutes", type=float, default=30.0,
                   help="events keep arriving at the same rate for this long after the start (written ahead; "
                        "a lookup only sees those before its now); the run should end before (default: 30)")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="measured seconds of the HTTP single open-loop load (default: 60)")
    p.add_argument("--rate", type=float, default=1000.0, help="HTTP single: requests per second (default: 1000)")
    p.add_argument("--connections", type=int, default=64,
                   help="HTTP single: keep-alive connections of the open-loop generator (default: 64)")
    p.add_argument("--warmup-seconds", type=float, default=5.0,
                   help="HTTP: seconds of the same load before each measured phase, not recorded (default: 5)")
    p.add_argument("--ranking-seconds", type=float, default=20.0,
                   help="HTTP: measured seconds of each phase other than the main open loop (ranking at each "
                        "concurrency, the extra rates, the capacity run) (default: 20)")
    p.add_argument("--extra-rates", type=float, nargs="*", default=[250.0],
                   help="HTTP single: also run the open loop at these rates, for --ranking-seconds each (e.g. "
                        "below the server's capacity, for latency without a backlog) (default: 250)")
    p.add_argument("--capacity-concurrency", type=int, default=8,
                   help="HTTP single: a closed loop at this many connections for --ranking-seconds, whose "
                        "throughput is the server's capacity (0: skip) (default: 8)")
    p.add_argument("--ranking-requests", type=int, default=1000,
                   help="distinct ranking requests drawn (1 user + 500 videos each), cycled through (default: "
                        "1000); more of them make the serving cache's working set larger")
    p.add_argument("--ranking-concurrency", type=int, default=4,
                   help="HTTP ranking: closed-loop connections the target is judged at (default: 4); "
                        "concurrency 1 is measured too")
    p.add_argument("--inproc-seconds", type=float, default=20.0,
                   help="in process: timed seconds per shape, for Parity and for Feast each (default: 20)")
    p.add_argument("--warmup-calls", type=int, default=50,
                   help="in process: untimed calls per shape before timing, Parity and Feast each (default: 50)")
    p.add_argument("--batch-tiles", type=int, default=5000, help="tiles per OnlineWriter batch (default: 5000)")
    p.add_argument("--seed", type=int, default=7, help="seed of the events and the request draws (default: 7)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve without a bearer token (default: the app requires one and the generator sends it)")
    p.add_argument("--skip", nargs="+", choices=("http", "feast"), default=[],
                   help="leave out the HTTP phases or the Feast baseline")
    p.add_argument("--quick", action="store_true",
                   help="small fast smoke run: " + ", ".join(
                       f"--{k.replace('_', '-')} {' '.join(f'{x:g}' for x in v) if isinstance(v, list) else f'{v:g}'}"
                       for k, v in QUICK.items())
                        + " (options given explicitly win)")
    p.add_argument("--profile", action="store_true",
                   help="after the timed in-process pass, run the same loop under cProfile per shape and print the "
                        "top 25 functions (by own time and by cumulative time)")
    p.add_argument("--results", type=Path, default=None,
                   help="also write the JSON (with command, date, machine, versions, git commit) to this file")
    p.add_argument("--workers", type=int, default=None,
                   help="HTTP: server worker processes (default: parity serve's default, one per core)")
    p.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _apply_quick(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]) -> None:
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    for name, value in QUICK.items():
        if f"--{name.replace('_', '-')}" not in given:
            setattr(args, name, value)


def main(argv: Sequence[str] | None = None, on_populated: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run the benchmark. ``on_populated(context)`` (tests) is called after the data is written
    and verified, with ``reader``, ``defs``, ``events``, ``args`` and ``written`` (entity ids
    per view that have tiles)."""
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(raw_argv)
    if args.workers is None:
        from parity.serving.server import default_workers

        args.workers = default_workers()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.serve_child:
        serve_child(args.redis_url, args.port, not args.no_auth, args.workers)
        return 0
    if args.quick:
        _apply_quick(parser, args, raw_argv)
    if args.videos < RANKING_VIDEOS:
        parser.error(f"--videos must be at least {RANKING_VIDEOS} (the ranking shape's candidates)")
    if args.events < 1 or args.users < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--events, --users, --rate and --seconds must be positive")

    from parity.embedded import RedisServer, redis_client
    from parity.registry.online.writer import wall_clock_us
    from parity.serving.lookup import OnlineReader

    command = shlex.join(["python", "benchmarks/bench_online.py", *raw_argv])
    results: dict[str, Any] = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "machine": machine(), "source": source_state(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k not in ("serve_child", "redis_url", "port")},
        "targets": TARGETS,
    }
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="parity-bench-online-"))
    redis_server = RedisServer.start()
    server: Server | None = None
    feast_baseline = None
    try:
        client = redis_client(redis_server.url)
        results["versions"] = versions(client.info("server").get("redis_version"))
        pids = {"this_process": os.getpid(), "redis_server": redis_server.process.pid}
        defs = bench_definitions()

        _log(f"generating {args.events:,} events ({args.users:,} users, {args.videos:,} videos)")
        t = time.perf_counter()
        t0 = wall_clock_us()
        events = generate_events(args.events, args.users, args.videos, t0, int(args.ahead_minutes * MINUTE_US),
                                 args.seed)
        results["data"] = {"events_past": args.events, "events_ahead": len(events) - args.events,
                           "t0_utc": _iso(t0), "horizon_utc": _iso(events.horizon),
                           "active_users": int(len(np.unique(events.user_id))),
                           "active_videos": int(len(np.unique(events.video_id))),
                           "generate_s": round(time.perf_counter() - t, 2)}
        _log("writing tiles through OnlineWriter")
        populated = populate(client, defs, events, args.batch_tiles)
        written = {v: info.pop("written_entity_ids") for v, info in populated["views"].items()}
        results["populate"] = populated
        memory = client.info("memory")
        results["data"]["redis_used_memory_bytes"] = memory.get("used_memory")
        results["data"]["redis_used_memory_human"] = memory.get("used_memory_human")
        results["data"]["redis_keys"] = client.dbsize()

        reader = OnlineReader(client, PROJECT, defs)
        _log("verifying a sample of lookups against the events")
        results["verification"] = verify(reader, defs, events, written, args.users, args.videos, args.seed)
        ver = results["verification"]
        _log(f"  {ver['values']:,} values, {ver['mismatches']} mismatches; {ver['tiles']['tiles']:,} tiles vs "
             f"TileBuilder, {ver['tiles']['mismatches']} mismatches")
        if on_populated is not None:
            on_populated({"reader": reader, "defs": defs, "events": events, "args": args, "written": written,
                          "client": client})
        if not ver["ok"]:
            raise SystemExit("verification failed: " + json.dumps(ver["examples"] + ver["tiles"]["examples"],
                                                                   default=str)[:3000])

        requests = {shape: draw_requests(events, args.videos, 2000 if shape == "single" else args.ranking_requests,
                                         args.seed, shape) for shape in ("single", "ranking")}

        # -- in process: Parity first (before Feast is imported: a Parity serving process does not
        # carry Feast's heap, which every full garbage collection would walk), then Feast ----------
        results["redis_ping_round_trip"] = ping_round_trip(client)
        results["inprocess"], results["feast"], results["feast_ratio_p99"] = {}, {}, {}
        for shape in ("single", "ranking"):
            _log(f"in process, {shape}: Parity for {args.inproc_seconds:g} s")
            results["inprocess"][shape] = measure_parity_inprocess(reader, client, shape, requests[shape], args, pids)
            stats = results["inprocess"][shape]
            _log(f"  p50 {stats['p50_ms']:.3f} ms, p99 {stats['p99_ms']:.3f} ms over {stats['count']:,} calls"
                 + (f"; cache {stats['tile_cache']}" if stats.get("tile_cache") else ""))
        _log(f"in process, ranking: Parity without its serving cache for {args.inproc_seconds:g} s")
        uncached = OnlineReader(client, PROJECT, defs, cache_bytes=0)
        results["inprocess"]["ranking_uncached"] = measure_parity_inprocess(uncached, client, "ranking",
                                                                            requests["ranking"], args, pids)
        stats = results["inprocess"]["ranking_uncached"]
        _log(f"  p50 {stats['p50_ms']:.3f} ms, p99 {stats['p99_ms']:.3f} ms over {stats['count']:,} calls")
        if args.profile:
            results["profile"] = {}
            for shape in ("single", "ranking"):
                prof = profile_calls(parity_call(reader, shape), requests[shape], max(2.0, args.inproc_seconds / 2))
                results["profile"][shape] = prof
                _log(f"\n== cProfile, in process, {shape} ({prof['calls']:,} calls in {prof['seconds']:g} s) ==")
                _log(prof["top_by_tottime"])
                _log(prof["top_by_cumulative"])
        if "feast" not in args.skip:
            _log(f"Feast: setup_feast({args.users:,} users, {args.videos:,} videos) in the same Redis")
            feast_module = load_feast_module()
            import feast

            t = time.perf_counter()
            feast_baseline = feast_module.setup_feast(redis_server.url, workdir / "feast", args.users, args.videos,
                                                      seed=args.seed)
            results["feast_setup"] = {"seconds": round(time.perf_counter() - t, 1), "version": feast.__version__,
                                      "timings_s": {k: round(v, 2) for k, v in feast_baseline.timings.items()}}
            for shape in ("single", "ranking"):
                _log(f"in process, {shape}: Feast for {args.inproc_seconds:g} s")
                gc0 = _gc_collections()
                with CpuWatch(pids) as cpu:
                    fe = feast_baseline.measure(shape, seconds=args.inproc_seconds, seed=args.seed,
                                                warmup=args.warmup_calls)
                fe["gc_collections"] = _gc_delta(gc0)
                fe["cpu"] = cpu.report
                results["feast"][shape] = fe
                ratio = round(fe["p99_ms"] / results["inprocess"][shape]["p99_ms"], 2)
                results["feast_ratio_p99"][shape] = ratio
                if shape == "ranking":
                    results["feast_ratio_p99"]["ranking_cache_off"] = round(
                        fe["p99_ms"] / results["inprocess"]["ranking_uncached"]["p99_ms"], 2)
                _log(f"  p50 {fe['p50_ms']:.3f} ms, p99 {fe['p99_ms']:.3f} ms; Feast p99 / Parity p99 = {ratio:.2f}x")

        # -- HTTP ---------------------------------------------------------------------------------
        if "http" not in args.skip:
            auth = not args.no_auth
            _log(f"HTTP: starting the server subprocess (uvicorn, {args.workers} worker(s)) on 127.0.0.1")
            server_code = code_hash()
            server = start_server(redis_server.url, auth, workdir, args.workers)
            hpids = {**pids, "server": server_pids(server, args.workers)}
            results["http"] = {"server": {"app": "parity.serving.server.build_app (create_app)",
                                          "uvicorn": f"{args.workers} worker(s), uvloop, httptools, log level warning "
                                                     "(run_server's options)",
                                          "auth": auth, "feature_logger": None, "code_sha256": server_code,
                                          "bind": f"127.0.0.1:{server.port}"},
                               "load_generator": "this process: sender thread (time.sleep to each scheduled "
                                                 "instant) + receiver thread (epoll), keep-alive HTTP/1.1"}
            counts = {"single": 50, "ranking": 36}
            bodies = {shape: [http_request(server.port, {"service": SERVICES[shape], "entities": e}, auth)
                              for e in requests[shape]] for shape in ("single", "ranking")}
            _log(f"HTTP single: open loop {args.rate:g} req/s for {args.seconds:g} s "
                 f"(+{args.warmup_seconds:g} s warm-up), {args.connections} connections")
            results["http"]["single"] = run_http_phase(
                server.port, bodies["single"], response_checker(counts["single"], 1), connections=args.connections,
                warmup_seconds=args.warmup_seconds, pids=hpids, rate=args.rate, seconds=args.seconds)
            hs = results["http"]["single"]
            hs["tile_cache_after"] = server_cache_counters(server.port, auth)
            if "latency_from_scheduled" in hs:
                _log(f"  p50 {hs['latency_from_scheduled']['p50_ms']:.3f} ms, p99 "
                     f"{hs['latency_from_scheduled']['p99_ms']:.3f} ms, {hs['throughput_rps']} req/s, "
                     f"errors {hs['errors']}")
            for rate in args.extra_rates:
                key = f"single_at_{rate:g}"
                _log(f"HTTP single: open loop {rate:g} req/s for {args.ranking_seconds:g} s (below capacity)")
                results["http"][key] = run_http_phase(
                    server.port, bodies["single"], response_checker(counts["single"], 1),
                    connections=args.connections, warmup_seconds=min(args.warmup_seconds, 3.0), pids=hpids,
                    rate=rate, seconds=args.ranking_seconds)
                block = results["http"][key]
                if "latency_from_scheduled" in block:
                    _log(f"  p50 {block['latency_from_scheduled']['p50_ms']:.3f} ms, p99 "
                         f"{block['latency_from_scheduled']['p99_ms']:.3f} ms, {block['throughput_rps']} req/s, "
                         f"errors {block['errors']}")
            if args.capacity_concurrency > 0:
                _log(f"HTTP single: closed loop, concurrency {args.capacity_concurrency}, {args.ranking_seconds:g} s "
                     "(the server's capacity)")
                results["http"]["single_capacity"] = run_http_phase(
                    server.port, bodies["single"], response_checker(counts["single"], 1),
                    connections=args.capacity_concurrency, warmup_seconds=min(args.warmup_seconds, 3.0), pids=hpids,
                    seconds=args.ranking_seconds, concurrency=args.capacity_concurrency)
                block = results["http"]["single_capacity"]
                if "latency" in block:
                    _log(f"  {block['throughput_rps']} req/s, p50 {block['latency']['p50_ms']:.3f} ms, "
                         f"p99 {block['latency']['p99_ms']:.3f} ms, errors {block['errors']}")
            for key, concurrency in (("ranking_c1", 1), ("ranking", args.ranking_concurrency)):
                _log(f"HTTP ranking: closed loop, concurrency {concurrency}, {args.ranking_seconds:g} s")
                results["http"][key] = run_http_phase(
                    server.port, bodies["ranking"], response_checker(counts["ranking"], RANKING_VIDEOS, parse_every=25),
                    connections=concurrency, warmup_seconds=min(args.warmup_seconds, 3.0), pids=hpids,
                    seconds=args.ranking_seconds, concurrency=concurrency)
                hr = results["http"][key]
                hr["tile_cache_after"] = server_cache_counters(server.port, auth)
                if "latency" in hr:
                    _log(f"  p50 {hr['latency']['p50_ms']:.3f} ms, p99 {hr['latency']['p99_ms']:.3f} ms, "
                         f"{hr['throughput_rps']} req/s, errors {hr['errors']}")
            server.stop()
            results["http"]["server"]["exit_code"] = server.process.returncode
            server = None
        last = wall_clock_us()
        results["data"]["last_lookup_before_horizon"] = last < events.horizon
    finally:
        if server is not None:
            server.stop()
        if feast_baseline is not None:
            try:
                feast_baseline.close()
            except Exception:  # noqa: BLE001 - best effort: the Redis is stopped next anyway
                pass
        redis_server.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)

    results["source"]["code_sha256_at_end"] = code_hash()
    results["code_changed_during_run"] = results["source"]["code_sha256_at_end"] != results["source"]["code_sha256"]
    if results["code_changed_during_run"]:
        _log("WARNING: serving/, registry/ or embedded.py changed on disk during the run: the phases may have "
             "measured different code (see source.code_sha256, http.server.code_sha256, source.code_sha256_at_end)")
    results["verdicts"] = verdicts(results)
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    text = json.dumps(results, indent=2, default=str)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text + "\n")
    print(text)
    _log("\n" + summary_table(results))
    if args.results:
        _log(f"\nresults: {args.results}")
    main.last_results = results  # type: ignore[attr-defined]  # for in-process callers (tests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
