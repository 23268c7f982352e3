"""Bootstrap (``parity materialize``): load backfilled tiles into the online store.

Reads the tile tables ``parity backfill`` wrote (``<tiles>/<view>/v<N>/res=<r>/date=D/
*.parquet``, columns: join keys, ``tile_start``, ``__rows``, ``__max_ts`` and
``<feature>__<part>`` partials) for every resolution the view stores, keeps the tiles still
inside their resolution's retention on the writer's clock, and upserts them through
:class:`~parity.registry.online.writer.OnlineWriter` with each entity's newest latest
values. Then it records, atomically with the last batch:

- the view's **watermark**: the end of the backfilled range (the online store is complete
  for events before it);
- ``tail_from``: the first finest-tile boundary at or after the watermark, so lookups in
  the tile holding the watermark read that tile's stored record (which has the backfilled
  events) and the stream engine's tail takes over after it.

When the newest backfill of a streamed view was made with ``--handoff``, it also stores,
in the same final transaction, the stream engine's progress markers for that topic:
``offset/<topic>/<p>`` (the last offset the tiles hold) and ``landed/<topic>/<p>`` (the
last offset already in the offline log), so ``parity stream`` continues exactly at the
seam. Every online view of the topic must be materialized together (they share the
offsets), and the store must not have streamed that topic past the seam already.

Re-running it upserts the same absolute values: idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from parity.errors import ParityError
from parity.registry.durations import from_micros, to_micros
from parity.registry.offline_log import tiles_resolution_dir, tiles_view_dir
from parity.registry.semantics import retention
from parity.registry.models import Definitions, FeatureView
from parity.registry.online.layout import TileValue, ViewLayout
from parity.registry.online.writer import OnlineWriter

BATCH_TILES = 2000


@dataclass
class MaterializeSummary:
    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    handoff: dict[str, str] = field(default_factory=dict)  #: progress markers stored for the stream engine

    @property
    def tiles(self) -> int:
        return sum(v["tiles"] for v in self.views.values())


def _ranges(folder: Path, view: FeatureView) -> list[dict]:
    path = folder / "_backfill.json"
    if not path.exists():
        raise ParityError(f"view {view.name} v{view.version} has no backfilled tiles in {folder}",
                          hint=f"run `parity backfill --start ... --end ... --views {view.name}` first")
    return json.loads(path.read_text())["ranges"]


def _backfilled_until(ranges: Sequence[dict]) -> int:
    return max(to_micros(datetime.fromisoformat(r["end"])) for r in ranges)


def coverage_gaps(ranges: Sequence[dict], needed_from: int, until: int) -> list[tuple[int, int]]:
    """The parts of ``[needed_from, until)`` (microseconds) that no backfilled range covers."""
    spans = sorted((to_micros(datetime.fromisoformat(r["start"])), to_micros(datetime.fromisoformat(r["end"])))
                   for r in ranges)
    gaps, cursor = [], needed_from
    for start, end in spans:
        if start > cursor:
            gaps.append((cursor, min(start, until)))
        cursor = max(cursor, end)
        if cursor >= until:
            break
    if cursor < until:
        gaps.append((cursor, until))
    return [(a, b) for a, b in gaps if a < b]


def _needed_from(view: FeatureView, defs: Definitions, log, now: int) -> int | None:
    """Where a view's online state must start (its retention before ``now``), no earlier than
    the first day of its source's offline log; None when that cannot be known (a lifetime
    window over a snapshot source, or no log given)."""
    keep = retention(view)
    first = None
    source = defs.source(view.source)
    if log is not None and source is not None and source.kind == "stream":
        day = log.first_day(source)
        if day is None:
            return None  # nothing logged: nothing to miss
        first = to_micros(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
    if keep is None:
        return first
    return now - keep if first is None else max(now - keep, first)


def handoff_markers(writer: OnlineWriter, defs: Definitions, tiles_root: Path,
                    chosen: Sequence[FeatureView]) -> tuple[dict[str, str], dict[str, str | None]]:
    """The progress markers a ``--handoff`` backfill asks for, and the values they hold now
    (the compare-and-set expectation). Raises when views of one topic disagree, when a view
    of the topic is left out, or when the store has already streamed the topic elsewhere."""
    cuts: dict[str, tuple[dict, list[str]]] = {}
    for view in chosen:
        newest = _ranges(tiles_view_dir(tiles_root, view), view)[-1]
        cut = newest.get("handoff")
        if cut is None:
            continue
        name = f"{view.name}@{view.version}"
        seen = cuts.setdefault(cut["topic"], (cut, []))
        if (seen[0]["applied"], seen[0]["landed"]) != (cut["applied"], cut["landed"]):
            raise ParityError(f"views {', '.join(seen[1])} and {name} were backfilled with different handoff cuts "
                              f"of topic {cut['topic']}",
                              hint="backfill every view of the topic in one `parity backfill --handoff` run")
        seen[1].append(name)
    markers: dict[str, str] = {}
    for topic, (cut, names) in cuts.items():
        source = next(s for s in defs.sources if s.kafka and s.kafka.topic == topic)
        needed = {f"{v.name}@{v.version}" for v in defs.feature_views if v.online and v.source == source.name}
        left_out = sorted(needed - set(names))
        if left_out:
            raise ParityError(f"the handoff of topic {topic} needs every online view of source {source.name}; "
                              f"missing: {', '.join(left_out)}",
                              hint="materialize them together, after one `parity backfill --handoff` of all of them")
        for p, o in cut["applied"].items():
            markers[f"offset/{topic}/{p}"] = str(o)
        for p, o in cut["landed"].items():
            markers[f"landed/{topic}/{p}"] = str(o)
    if not markers:
        return {}, {}
    stored = writer.read_progress()
    for name, value in markers.items():
        if name.startswith("offset/") and stored.get(name) not in (None, value):
            raise ParityError(f"the online store has already streamed {name.removeprefix('offset/')} to offset "
                              f"{stored[name]}, not the handoff's {value}",
                              hint="materialize a handoff into an online store no engine has written for this "
                                   "project (a new Redis, or one whose project keys were deleted)")
    expect = {name: stored.get(name) for name in markers}
    return markers, expect


def _order_key(raw: dict | None) -> tuple | None:
    return None if raw is None else (raw["ts"], raw["p"], raw["o"])


def _micros(value: Any) -> Any:
    return to_micros(value) if isinstance(value, datetime) else value


def tile_value(layout: ViewLayout, row: dict) -> TileValue:
    """A backfilled tile row as a :class:`TileValue` (the partial shapes of the registry)."""
    value = TileValue(rows=row.get("__rows") or 0, max_ts=row.get("__max_ts"))
    for feature in layout.view.features:
        name = feature.name
        agg = "last" if feature.window is None else feature.agg
        if agg == "count":
            partial = row[f"{name}__c"] or 0
            partial = partial or None
        elif agg == "sum":
            partial = row[f"{name}__s"]
        elif agg == "mean":
            count = row[f"{name}__c"] or 0
            partial = (row[f"{name}__s"] or 0.0, count) if count else None
        elif agg in ("min", "max"):
            partial = _micros(row[f"{name}__m"])
        elif agg == "last":
            key = _order_key(row[f"{name}__k"])
            partial = None if key is None else (key, _micros(row[f"{name}__v"]))
        else:
            items = row[f"{name}__l"] or []
            partial = [(_order_key(i["k"]), _micros(i["v"])) for i in items] or None
        if partial is not None:
            value.partials[name] = partial
    return value


def materialize(writer: OnlineWriter, defs: Definitions, tiles_root: Path, views: Sequence[str] | None = None,
                progress: bool = False, log=None) -> MaterializeSummary:
    """Load each view's backfilled tiles within its retention into the online store, and its
    watermark (complete up to the newest backfilled end). ``log`` (the
    :class:`~parity.registry.offline_log.OfflineLog`) lets the summary name each view's
    ``gaps``: the parts of its retention, from its log's first day, that no backfill covers;
    online values miss those events (``parity materialize`` warns)."""
    import pyarrow.parquet as pq

    chosen = [v for v in defs.feature_views if v.online and (views is None or v.name in views)]
    unknown = sorted(set(views or ()) - {v.name for v in chosen})
    if unknown:
        raise ParityError(f"unknown or offline-only view(s) {', '.join(unknown)}",
                          hint="online views: " + ", ".join(sorted({v.name for v in defs.feature_views if v.online})))
    summary = MaterializeSummary()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="materialize", unit=" tiles")
    now = writer.clock()
    markers, expect = handoff_markers(writer, defs, tiles_root, chosen)
    for index, view in enumerate(chosen):
        layout = writer.layout(view)
        folder = tiles_view_dir(tiles_root, view)
        ranges = _ranges(folder, view)
        watermark = _backfilled_until(ranges)
        needed = _needed_from(view, defs, log, now)
        gaps = [] if needed is None else coverage_gaps(ranges, needed, min(watermark, now))
        written = skipped = 0
        latest: dict[tuple, TileValue] = {}
        batch = writer.batch()
        pending = 0
        for resolution in layout.resolutions:
            keep = layout.resolution_retention[resolution]
            files = sorted(tiles_resolution_dir(tiles_root, view, resolution).glob("date=*/*.parquet"))
            for path in files:
                table = pq.read_table(path)
                keys = list(layout.join_keys)
                for row in table.to_pylist():
                    start = to_micros(row["tile_start"])
                    entity = tuple(row[k] for k in keys)
                    value = tile_value(layout, row)
                    if layout.latest and resolution == layout.resolutions[-1]:
                        mine = TileValue(partials={c.feature.name: value.partials.get(c.feature.name)
                                                   for c in layout.latest})
                        old = latest.get(entity)
                        latest[entity] = mine if old is None else layout.merge_values([old, mine])
                    if keep is not None and start + resolution + keep <= now:
                        skipped += 1
                        continue
                    batch.put_tile(view, entity, resolution, start, value)
                    written += 1
                    pending += 1
                    if bar is not None:
                        bar.update(1)
                    if pending >= BATCH_TILES:
                        batch.commit()
                        pending = 0
        for entity, value in latest.items():
            batch.put_latest(view, entity, value)
        finest = layout.resolutions[0] if layout.resolutions else None
        batch.set_watermark(view, watermark)
        if finest:
            batch.set_tail_from(view, -(-watermark // finest) * finest)
        if markers and index == len(chosen) - 1:  # with the last tiles, in one transaction
            batch.set_progress(markers, expect=expect)
            summary.handoff = markers
        batch.commit()
        summary.views[f"{view.name}@{view.version}"] = {
            "tiles": written, "skipped_beyond_retention": skipped, "entities_with_latest": len(latest),
            "watermark": from_micros(watermark).isoformat(),
            "gaps": [(from_micros(a).isoformat(), from_micros(b).isoformat()) for a, b in gaps]}
    if bar is not None:
        bar.close()
    return summary
