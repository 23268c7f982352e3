"""Backfilled tiles, merged by the semantics core's tile cover, equal the training set.

Events go through the real offline log (Parquet on disk), the tiles through the real
backfill, and the merge through parity.registry.partials, as the online store will.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity.batch.backfill import backfill, view_dir
from parity.registry.semantics import tile_resolutions
from parity.batch.engine import connect, run_training_set
from parity.batch.offline_log import OfflineLog
from parity.registry import partials
from parity.registry.durations import format_duration, to_micros
from parity.registry.schema import view_schema
from parity.registry.semantics import feature_window, tile_cover
from batch_fixtures import BASE, DEFS, EVENT_SCHEMA, RESOLVED, SOURCE, events
from oracle import close

START, END = BASE - timedelta(days=3), BASE + timedelta(days=5)


def read_tiles(root, view):
    """(key, resolution, tile_start) -> row of partials."""
    tiles = {}
    for res in tile_resolutions(view):
        folder = view_dir(root, view) / f"res={format_duration(res)}"
        for path in sorted(folder.glob("date=*/*.parquet")):
            for row in pq.read_table(path).to_pylist():
                tiles[(row["user_id"], res, to_micros(row["tile_start"]))] = row
    return tiles


def partial_of(feature, row):
    """A tile row's partial for one feature, in parity.registry.partials' shape."""
    name = feature.name
    agg = feature.agg
    if agg == "count":
        return row[f"{name}__c"]
    if agg == "sum":
        return row[f"{name}__s"]
    if agg == "mean":
        return (row[f"{name}__s"], row[f"{name}__c"])
    if agg in ("min", "max"):
        return row[f"{name}__m"]
    if agg == "last":
        key = row[f"{name}__k"]
        return None if key is None else ((key["ts"], key["p"], key["o"]), row[f"{name}__v"])
    if agg == "last_k":
        return [((x["k"]["ts"], x["k"]["p"], x["k"]["o"]), x["v"]) for x in row[f"{name}__l"] or []]
    raise AssertionError(agg)


def value_from_tiles(view, feature, tiles, user, t_us):
    window = feature_window(view, feature)
    resolutions = [r for r in tile_resolutions(view)]
    cover = tile_cover(window.start(t_us), t_us, resolutions)
    parts = []
    for tile in cover:
        assert not tile.open, "hop-aligned times have no open tile"
        if tile.resolution is None:  # lifetime prefix: every coarsest tile before its end
            coarsest = max(resolutions)
            parts += [partial_of(feature, row) for (k, r, s), row in tiles.items()
                      if k == user and r == coarsest and s < tile.end]
        else:
            row = tiles.get((user, tile.resolution, tile.start))
            if row is not None:
                parts.append(partial_of(feature, row))
    merged = partials.merge(feature.agg, parts, feature.k)
    column_dtype = view_schema(DEFS, view).get(feature.column) if feature.column else None
    return partials.finalize(feature.agg, merged, column_dtype)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(rows=events(), picks=st.lists(st.tuples(st.sampled_from([1, 2, 3]),
                                                st.integers(-2 * 24 * 12, 4 * 24 * 12)), min_size=1, max_size=8))
def test_backfilled_tiles_merged_by_the_cover_equal_the_training_set(tmp_path_factory, rows, picks):
    folder = tmp_path_factory.mktemp("log")
    log = OfflineLog(folder / "log")
    log.write(SOURCE, pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), batch_id="b1")
    scan = lambda name: log.scan_sql(DEFS.source(name))  # noqa: E731
    con = connect()
    backfill(con, DEFS, folder / "tiles", scan, START, END)
    backfill(con, DEFS, folder / "tiles", scan, START, END)  # idempotent: a re-run replaces
    # hop-aligned times: multiples of 5 minutes (the finest resolution of view u, and of 1m for view o)
    spine = [{"user_id": user, "ts": BASE + timedelta(minutes=5 * step), "label": 0} for user, step in picks]
    windowed = [item for item in RESOLVED if item.feature.window is not None]
    table = pa.Table.from_pylist(spine, schema=pa.schema([("user_id", pa.int64()), ("ts", pa.timestamp("us")),
                                                          ("label", pa.int64())]))
    expected = run_training_set(con, DEFS, windowed, table, scan).to_pylist()
    tiles = {view.name: read_tiles(folder / "tiles", view) for view in DEFS.feature_views}
    for row, want in zip(spine, expected):
        for item in windowed:
            got = value_from_tiles(item.view, item.feature, tiles[item.view.name], row["user_id"],
                                   to_micros(row["ts"]))
            assert close(got, want[item.output_name]), (item.output_name, row, got, want[item.output_name])


def test_backfill_replaces_a_range_and_counts_nothing_twice(tmp_path):
    rows = [{"user_id": 1, "kind": "a", "amount": 5, "score": 1.0, "ts": BASE + timedelta(minutes=i),
             "_ingested_at": BASE, "_applied_at": None, "_partition": -1, "_offset": i} for i in range(10)]
    log = OfflineLog(tmp_path / "log")
    log.write(SOURCE, pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), batch_id="b1")
    scan = lambda name: log.scan_sql(DEFS.source(name))  # noqa: E731
    con = connect()
    for _ in range(3):
        summary = backfill(con, DEFS, tmp_path / "tiles", scan, START, END)
    u = DEFS.view("u")
    tiles = read_tiles(tmp_path / "tiles", u)
    day_tiles = [row for (k, r, s), row in tiles.items() if r == 24 * 3600 * 10**6]
    assert sum(row["n_lifetime__c"] for row in day_tiles) == 10
    assert summary.files == len({(v.name, r) for v in DEFS.feature_views for r in tile_resolutions(v)})
    by_res = defaultdict(int)
    for (k, r, s), row in tiles.items():
        by_res[r] += row["n_10m__c"] if "n_10m__c" in row else 0
    assert set(by_res.values()) == {10}
