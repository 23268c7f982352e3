"""Backfill: tiles of every resolution each view needs, from the offline log, as Parquet.

Layout (the online store's bootstrap loads it)::

    <tiles root>/<view>/v<version>/res=<resolution>/date=YYYY-MM-DD/tiles.parquet
    <tiles root>/<view>/v<version>/_backfill.json      the ranges computed so far

Columns: the entity's join keys, ``tile_start`` (timestamp, UTC), ``__rows`` (events in
the tile) and ``__max_ts`` (the newest event time, microseconds), then the partials of
each feature, ``<feature>__<part>`` as rendered by :mod:`parity.batch.aggregates`
(``last`` order keys are structs ``{ts, p, o}`` with ``ts`` in microseconds). A tile
holds the events with ``tile_start <= ts < tile_start + resolution`` and
``start <= ts < end`` of the run.

Work is done per UTC date: a run over ``[start, end)`` recomputes every date it touches
from the log (events before ``end``), each date on its own (as many dates side by side as
DuckDB has threads, each on its own cursor), and replaces that date's file atomically, so
re-running a range replaces it and nothing is counted twice. The resolutions are
:func:`parity.registry.semantics.tile_resolutions`: the ones the online store keeps.

**Handoff** (``--handoff``): the seam with the stream engine is cut in Kafka offsets, not in
time, because event times are not ordered by offset. For each partition ``p`` of a stream
source's topic, ``applied[p]`` is the last offset before the first log row (of that
partition) with ``ts >= end``, or the partition's last landed offset when there is none;
``landed[p]`` is the partition's last landed offset. The tiles then hold exactly the rows
with ``_offset <= applied[p]`` (plus rows landed from files, ``_partition`` -1, by time),
all of which have ``ts < end``; ``parity materialize`` stores both as the engine's progress
markers, and the engine applies every offset after ``applied[p]`` (a late event with
``ts < end`` among them lands in its tile, not lost) and lands only those after
``landed[p]`` (the log has the rest). No event is dropped or counted twice at the seam.
The cut is recorded in ``_backfill.json`` with the range.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from parity.batch.aggregates import feature_partials, q
from parity.batch.training_set import events_sql, floor_sql
from parity.errors import ParityError
from parity.registry.durations import DAY, floor_to, format_duration, from_micros, to_micros
from parity.registry.models import Definitions, FeatureView
from parity.registry.offline_log import tiles_resolution_dir, tiles_view_dir
from parity.registry.schema import view_schema
from parity.registry.semantics import tile_resolutions


@dataclass
class BackfillSummary:
    start: datetime
    end: datetime
    views: list[str]
    files: int = 0
    tiles: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    handoff: dict[str, dict] = field(default_factory=dict)  #: topic -> {"applied": {p: o}, "landed": {p: o}}


def handoff_cut(con, scan: str, ts_field: str, end_us: int) -> dict[str, dict[int, int]]:
    """Per Kafka partition landed in ``scan``: ``applied`` (the last offset of the prefix
    whose events are all before ``end_us``) and ``landed`` (the last offset in the log)."""
    rows = con.execute(f"""
        SELECT _partition, max(_offset), min(_offset) FILTER (WHERE epoch_us({q(ts_field)}) >= {end_us})
        FROM {scan} WHERE _partition >= 0 GROUP BY 1 ORDER BY 1""").fetchall()
    return {"applied": {int(p): int(last if first_after is None else first_after - 1) for p, last, first_after in rows},
            "landed": {int(p): int(last) for p, last, _first in rows}}


def _cut_scan(scan: str, applied: dict[int, int]) -> str:
    """``scan`` without the Kafka rows after the cut (rows landed from files stay)."""
    cases = " ".join(f"WHEN {int(p)} THEN {int(o)}" for p, o in sorted(applied.items()))
    bound = f"CASE _partition {cases} ELSE -1 END" if cases else "-1"
    return f"(SELECT * FROM {scan} WHERE _partition < 0 OR _offset <= {bound})"


def partial_columns(defs: Definitions, view: FeatureView) -> list[str]:
    """``<aggregate SQL> AS "<feature>__<part>"`` for every feature of a view."""
    schema = view_schema(defs, view)
    return ["count(*) AS __rows", "epoch_us(make_timestamp(max(__ts))) AS __max_ts"] + [
        f"{sql} AS {q(feature.name + '__' + suffix)}"
        for feature in view.features for suffix, sql in feature_partials(feature, schema)]


view_dir = tiles_view_dir  # the layout is shared with the online bootstrap (registry/offline_log.py)


def backfill(con, defs: Definitions, root: Path, scan_of: Callable[[str], str], start: datetime, end: datetime,
             views: Sequence[str] | None = None, progress: bool = False, handoff: bool = False) -> BackfillSummary:
    """Compute and write tiles for ``[start, end)`` (UTC) for the named views (default: all);
    with ``handoff``, cut stream sources at the Kafka offsets of the seam (module docstring)."""
    start_us, end_us = to_micros(start), to_micros(end)
    if end_us <= start_us:
        raise ParityError(f"backfill range is empty: --start {start} is not before --end {end}")
    chosen = [v for v in defs.feature_views if views is None or v.name in views]
    missing = sorted(set(views or ()) - {v.name for v in chosen})
    if missing:
        raise ParityError(f"unknown view(s) {', '.join(missing)}",
                          hint="live views: " + ", ".join(sorted({v.name for v in defs.feature_views})))
    first_day, last_day = floor_to(start_us, DAY), floor_to(end_us - 1, DAY)
    summary = BackfillSummary(start, end, [f"{v.name}@{v.version}" for v in chosen])
    cuts: dict[str, dict] = {}  # source name -> cut
    if handoff:
        for view in chosen:
            source = defs.source(view.source)
            if source.kind == "stream" and source.kafka and source.name not in cuts:
                cuts[source.name] = handoff_cut(con, scan_of(source.name), source.timestamp_field, end_us)
                summary.handoff[source.kafka.topic] = cuts[source.name]
        if not cuts:
            raise ParityError("--handoff needs a view on a stream source with a Kafka topic; none was chosen",
                              hint="drop --handoff, or add the streamed views to --views")

    def scan_for(name: str) -> str:
        return _cut_scan(scan_of(name), cuts[name]["applied"]) if name in cuts else scan_of(name)
    days = range(first_day, last_day + 1, DAY)
    # dates run side by side, one per DuckDB thread: a date's scan is one or two Parquet row
    # groups, so one date at a time leaves cores idle
    workers = max(1, min(len(days), int(con.execute("SELECT current_setting('threads')").fetchone()[0])))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chosen) * len(days), desc="backfill", unit="view-day")
    for view in chosen:
        if bar:
            bar.set_postfix_str(f"{view.name} v{view.version}")
        done = _backfill_view(con, defs, root, scan_for, view, days, end_us, bar, workers)
        for res, (files, tiles, seconds) in done.items():
            summary.files += files
            summary.tiles += tiles
            summary.seconds[f"{view.name} v{view.version} @{format_duration(res)}"] = seconds
    if bar:
        bar.close()
    for view in chosen:
        cut = cuts.get(view.source)
        _record_range(view_dir(root, view), start, end,
                      None if cut is None else {"topic": defs.source(view.source).kafka.topic, **cut})
    return summary


def _backfill_view(con, defs, root, scan_of, view, days, end_us, bar, workers: int = 1) -> dict[int, tuple[int, int, float]]:
    """Every tile set of one view, each UTC date on its own, ``workers`` dates side by side:
    resolution -> (files, tiles, seconds; seconds summed over the dates, so they can exceed the wall time).

    A tile never crosses a date (resolutions divide a day), so each date is aggregated on
    its own: the hash tables hold one day's tiles (about 30 times fewer than the month's:
    they stay in memory, ``last_k`` list states included, and run about twice as fast as
    one GROUP BY over the whole range), and bounds on the log's raw ``ts`` column let
    DuckDB skip the other days' row groups. (Coarser tiles rolled up from finer ones were
    tried: no faster, as merging ``last_k`` lists costs more than re-reading the events.)
    """
    entity = defs.entity(view.entity)
    raw_keys = ", ".join(q("__k_" + k) for k in entity.join_keys)
    keys = ", ".join(f"{q('__k_' + k)} AS {q(k)}" for k in entity.join_keys)
    columns = partial_columns(defs, view)
    names = ", ".join(c.rsplit(" AS ", 1)[1] for c in columns)
    ts_field = q(defs.source(view.source).timestamp_field)
    resolutions = tile_resolutions(view)
    stats = {res: [0, 0, 0.0] for res in resolutions}
    staging = {res: tiles_resolution_dir(root, view, res).parent / f".staging-{uuid.uuid4().hex}" for res in resolutions}
    def one_day(day: int) -> list[tuple[int, int, float]]:
        cur = con.cursor()  # one cursor per worker: DuckDB runs their statements side by side
        try:
            until = min(day + DAY, end_us)
            # bounds on the raw column reach the Parquet scan (row groups of other days are skipped)
            scan = (f"(SELECT * FROM {scan_of(view.source)} "
                    f"WHERE {ts_field} >= make_timestamp({day}) AND {ts_field} < make_timestamp({until}))")
            done = []
            for res in resolutions:
                began = time.perf_counter()
                label = from_micros(day).strftime("%Y-%m-%d")
                new, old = staging[res] / f"date={label}", tiles_resolution_dir(root, view, res) / f"date={label}"
                new.mkdir()
                path = str(new / "tiles.parquet").replace("'", "''")
                written = cur.execute(
                    f"COPY (SELECT {keys}, make_timestamp(__tile) AS tile_start, {names} FROM ("
                    f"SELECT {raw_keys}, {floor_sql('__ts', res)} AS __tile, {', '.join(columns)} "
                    f"FROM ({events_sql(defs, view, scan)}) WHERE __ts >= {day} AND __ts < {until} "
                    f"GROUP BY ALL)) TO '{path}' (FORMAT parquet)").fetchall()[0][0]
                _swap(new if written else None, old)
                done.append((res, int(written), time.perf_counter() - began))
            return done
        finally:
            cur.close()

    try:
        for folder in staging.values():
            folder.mkdir(parents=True)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done in pool.map(one_day, days):
                for res, written, seconds in done:
                    entry = stats[res]
                    entry[0] += 1 if written else 0
                    entry[1] += written
                    entry[2] += seconds
                if bar:
                    bar.update(1)
        return {res: (files, tiles, seconds) for res, (files, tiles, seconds) in stats.items()}
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)


def _swap(new: Path | None, old: Path) -> None:
    """Replace directory ``old`` with ``new`` (or remove it when ``new`` is None)."""
    old.parent.mkdir(parents=True, exist_ok=True)
    trash = old.parent / f".trash-{uuid.uuid4().hex}"
    if old.exists():
        os.replace(old, trash)
    if new is not None:
        os.replace(new, old)
    shutil.rmtree(trash, ignore_errors=True)


def _record_range(folder: Path, start: datetime, end: datetime, handoff: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "_backfill.json"
    ranges = json.loads(path.read_text())["ranges"] if path.exists() else []
    entry = {"start": start.isoformat(), "end": end.isoformat(), "computed_at": datetime.now(timezone.utc).isoformat()}
    if handoff is not None:
        entry["handoff"] = {"topic": handoff["topic"],
                            "applied": {str(p): o for p, o in handoff["applied"].items()},
                            "landed": {str(p): o for p, o in handoff["landed"].items()}}
    ranges.append(entry)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ranges": ranges}, indent=2))
    os.replace(tmp, path)
