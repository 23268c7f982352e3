"""The semantics core (parity.registry.semantics) against DESIGN.md "Window semantics".

Expected values are derived from the DESIGN.md text, never from the code's output:
the hop table, the four worked examples at t = 2026-01-10 10:07:30, the tile cover
properties, the ttl rule, empty-window values and retention.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity.registry.durations import (
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    format_duration,
    from_micros,
    parse_duration,
    to_micros,
)
from parity.registry.models import Feature, FeatureView
from parity.registry.semantics import (
    Tile,
    Window,
    cover_size_bound,
    default_hop,
    empty_value,
    feature_window,
    is_divisibility_chain,
    latest_is_live,
    output_dtype,
    resolve_window,
    retention,
    tile_cover,
    view_resolutions,
)

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def utc(*args: int) -> int:
    """A UTC wall-clock instant in microseconds (independent of the code under test)."""
    return to_micros(datetime(*args, tzinfo=timezone.utc))


T = utc(2026, 1, 10, 10, 7, 30)  # DESIGN.md's worked-example instant


# --------------------------------------------------------------------------- hop table


@pytest.mark.parametrize(
    ("window", "hop"),
    [
        ("1m", 5 * MINUTE),
        ("5m", 5 * MINUTE),
        ("1h", 5 * MINUTE),
        ("11h55m", 5 * MINUTE),
        ("11h59m", 5 * MINUTE),  # just under 12 h
        ("11h59m59s", 5 * MINUTE),
        ("12h", HOUR),  # exactly 12 h: next class
        ("720m", HOUR),  # same duration, other spelling
        ("24h", HOUR),
        ("1d", HOUR),
        ("7d", HOUR),
        ("11d23h", HOUR),  # just under 12 d
        ("11d23h59m", HOUR),
        ("12d", DAY),  # exactly 12 d: next class
        ("288h", DAY),
        ("30d", DAY),
        ("365d", DAY),
    ],
)
def test_hop_table(window: str, hop: int) -> None:
    length = parse_duration(window)
    assert default_hop(length) == hop
    assert resolve_window(window) == Window(length, hop)


def test_hop_table_exact_microsecond_boundaries() -> None:
    assert default_hop(12 * HOUR - 1) == 5 * MINUTE
    assert default_hop(12 * HOUR) == HOUR
    assert default_hop(12 * DAY - 1) == HOUR
    assert default_hop(12 * DAY) == DAY


@pytest.mark.parametrize(
    ("window", "override", "length", "hop"),
    [
        ("1h", "1m", HOUR, MINUTE),
        ("1h", "15m", HOUR, 15 * MINUTE),
        ("24h", "5m", DAY, 5 * MINUTE),
        ("7d", "1d", 7 * DAY, DAY),
        ("30d", "1h", 30 * DAY, HOUR),
        ("12h", "12h", 12 * HOUR, 12 * HOUR),
    ],
)
def test_resolve_window_hop_override(window: str, override: str, length: int, hop: int) -> None:
    resolved = resolve_window(window, override)
    assert resolved == Window(length, hop)
    assert not resolved.is_lifetime


def test_resolve_window_without_override_uses_table() -> None:
    assert resolve_window("1h", None) == Window(HOUR, 5 * MINUTE)
    assert resolve_window(" 7D ") == Window(7 * DAY, HOUR)


@pytest.mark.parametrize("spelling", ["lifetime", "LIFETIME", " Lifetime "])
def test_resolve_lifetime(spelling: str) -> None:
    window = resolve_window(spelling)
    assert window.is_lifetime
    assert window == Window(None, None)
    assert resolve_window(spelling, "1d") == Window(None, None)
    assert window.start(T) is None
    assert window.bounds(T) == (None, T)
    assert window.contains(utc(1900, 1, 1), T)
    assert window.contains(T - 1, T)
    assert not window.contains(T, T)
    assert not window.contains(T + 1, T)


def test_override_from_view_matches_on_duration() -> None:
    view = _view(
        [Feature(name="c_1h", agg="count", window="60m"), Feature(name="c_7d", agg="count", window="7d")],
        hops={"1h": "1m", "168h": "1d"},
    )
    assert feature_window(view, view.features[0]) == Window(HOUR, MINUTE)
    assert feature_window(view, view.features[1]) == Window(7 * DAY, DAY)
    assert view_resolutions(view) == (MINUTE, DAY)


# --------------------------------------------------------------------------- DESIGN worked examples


WORKED = [
    # window, hop, expected start (from the DESIGN.md table)
    ("1h", 5 * MINUTE, utc(2026, 1, 10, 9, 5, 0)),
    ("24h", HOUR, utc(2026, 1, 9, 10, 0, 0)),
    ("7d", HOUR, utc(2026, 1, 3, 10, 0, 0)),
    ("30d", DAY, utc(2025, 12, 11, 0, 0, 0)),
]


@pytest.mark.parametrize(("window", "hop", "start"), WORKED)
def test_design_worked_examples(window: str, hop: int, start: int) -> None:
    w = resolve_window(window)
    assert w.hop == hop
    assert w.start(T) == start
    assert w.bounds(T) == (start, T)
    # The window spans between W and W + h.
    assert w.length <= T - start < w.length + hop
    # Edge events: the start is in, one microsecond earlier is out, t itself is out.
    assert w.contains(start, T)
    assert not w.contains(start - 1, T)
    assert w.contains(T - 1, T)
    assert not w.contains(T, T)
    assert not w.contains(T + 1, T)


def test_design_1h_edge_events() -> None:
    w = resolve_window("1h")
    assert w.contains(to_micros(datetime(2026, 1, 10, 9, 5, 0, tzinfo=timezone.utc)), T)
    assert not w.contains(to_micros(datetime(2026, 1, 10, 9, 4, 59, 999999, tzinfo=timezone.utc)), T)
    assert not w.contains(to_micros(datetime(2026, 1, 10, 10, 7, 30, tzinfo=timezone.utc)), T)
    assert from_micros(w.start(T)) == datetime(2026, 1, 10, 9, 5, tzinfo=timezone.utc)


def test_window_start_before_epoch() -> None:
    # floor works towards -infinity before 1970 too.
    t = utc(1969, 12, 31, 23, 59, 59)
    assert resolve_window("1h").start(t) == utc(1969, 12, 31, 22, 55)
    assert resolve_window("30d").start(t) == utc(1969, 12, 1)
    t = utc(1960, 6, 15, 10, 7, 30)
    assert resolve_window("24h").start(t) == utc(1960, 6, 14, 10)


def test_worked_example_tile_cover_7d() -> None:
    """7d window at t with resolutions 5m/1h/1d, counted by hand (see docs/semantics.md)."""
    w = resolve_window("7d")
    cover = tile_cover(w.start(T), T, [5 * MINUTE, HOUR, DAY])
    hours_day3 = [Tile(HOUR, utc(2026, 1, 3, h), utc(2026, 1, 3, h) + HOUR) for h in range(10, 24)]
    days = [Tile(DAY, utc(2026, 1, d), utc(2026, 1, d) + DAY) for d in range(4, 10)]
    hours_day10 = [Tile(HOUR, utc(2026, 1, 10, h), utc(2026, 1, 10, h) + HOUR) for h in range(0, 10)]
    fives = [Tile(5 * MINUTE, utc(2026, 1, 10, 10, 0), utc(2026, 1, 10, 10, 5))]
    open_tile = [Tile(5 * MINUTE, utc(2026, 1, 10, 10, 5), T, open=True)]
    assert cover == hours_day3 + days + hours_day10 + fives + open_tile
    assert len(cover) == 14 + 6 + 10 + 1 + 1 == 32


def test_tile_cover_rejects_unaligned_start_and_empty_resolutions() -> None:
    with pytest.raises(ValueError):
        tile_cover(T - 7, T, [MINUTE])
    with pytest.raises(ValueError):
        tile_cover(T - HOUR, T, [])
    with pytest.raises(ValueError):
        tile_cover(T + 2 * DAY - T % DAY, T, [DAY])


def test_divisibility_chain() -> None:
    assert is_divisibility_chain([5 * MINUTE, HOUR, DAY])
    assert is_divisibility_chain([DAY, MINUTE])
    assert is_divisibility_chain([HOUR])
    assert not is_divisibility_chain([2 * MINUTE, 3 * MINUTE])
    assert not is_divisibility_chain([5 * MINUTE, 7 * MINUTE, HOUR])


# --------------------------------------------------------------------------- property tests

# Master divisibility chains; a resolution set is any subset that contains the window's hop.
CHAINS: tuple[tuple[int, ...], ...] = (
    (MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR, 6 * HOUR, DAY, 7 * DAY),
    (30 * SECOND, 5 * MINUTE, HOUR, 4 * HOUR, DAY, 30 * DAY),
    (5 * MINUTE, HOUR, DAY),
)

# Instants: years 2000-2100 and before 1970, microsecond precision.
MODERN = st.integers(min_value=utc(2000, 1, 1), max_value=utc(2100, 12, 31, 23, 59, 59) + 999_999)
ANCIENT = st.integers(min_value=utc(1900, 1, 1), max_value=utc(1969, 12, 31, 23, 59, 59) + 999_999)
SNAPS = (None, None, None, SECOND, MINUTE, 5 * MINUTE, HOUR, DAY)


@st.composite
def instants(draw: st.DrawFn) -> int:
    """Random microsecond instants, sometimes snapped to a boundary (so aligned t occurs)."""
    t = draw(st.one_of(MODERN, ANCIENT))
    snap = draw(st.sampled_from(SNAPS))
    if snap is not None:
        t -= t % snap
    return t


@st.composite
def windows(draw: st.DrawFn) -> Window:
    """A window from one of the three hop classes, a multiple of its hop, via resolve_window."""
    hop_class = draw(st.sampled_from(["5m", "1h", "1d"]))
    if hop_class == "5m":
        length = draw(st.integers(1, 143)) * 5 * MINUTE  # under 12 h
        hop = 5 * MINUTE
    elif hop_class == "1h":
        length = draw(st.integers(12, 287)) * HOUR  # 12 h to under 12 d
        hop = HOUR
    else:
        length = draw(st.integers(12, 500)) * DAY  # 12 d or more
        hop = DAY
    window = resolve_window(format_duration(length))
    assert window == Window(length, hop)
    return window


@st.composite
def resolution_sets(draw: st.DrawFn, hop: int | None) -> tuple[int, ...]:
    """A subset of a divisibility chain; contains ``hop`` (lifetime: contains 1 d)."""
    needed = DAY if hop is None else hop
    chain = draw(st.sampled_from([c for c in CHAINS if needed in c]))
    others = draw(st.lists(st.sampled_from(chain), unique=True, max_size=len(chain)))
    chosen = tuple(sorted(set(others) | {needed}))
    assert is_divisibility_chain(chosen) and needed % chosen[0] == 0
    return chosen


def event_times(t: int, start: int | None, span: int) -> st.SearchStrategy[list[int]]:
    """Events around the window, with its edges (start - 1, start, t - 1, t, t + 1) likely."""
    edges = [t - 1, t, t + 1]
    if start is not None:
        edges += [start - 1, start, start + 1]
    lo = (start if start is not None else t - span) - span
    return st.lists(st.one_of(st.sampled_from(edges), st.integers(lo, t + span)), max_size=30)


def check_cover(cover: list[Tile], start: int, t: int, resolutions: tuple[int, ...]) -> None:
    finest = min(resolutions)
    assert cover, "a non-empty window has a non-empty cover"
    # Contiguous and disjoint: begins at the window start, each end is the next start, ends at t.
    assert cover[0].start == start
    for left, right in zip(cover, cover[1:]):
        assert left.end == right.start
    assert cover[-1].end == t
    for tile in cover:
        assert tile.start < tile.end
    # Closed tiles are whole, aligned tiles of a listed resolution.
    for tile in cover:
        if not tile.open:
            assert tile.resolution in resolutions
            assert tile.end - tile.start == tile.resolution
            assert tile.start % tile.resolution == 0
    # Only the last tile may be open; it is the finest, aligned, clipped at t, present iff t unaligned.
    assert not any(tile.open for tile in cover[:-1])
    if t % finest:
        last = cover[-1]
        assert last.open
        assert last.resolution == finest
        assert last.start == t - t % finest
        assert last.end == t
        assert 0 < last.end - last.start < finest
    else:
        assert not cover[-1].open


def covered(cover: list[Tile], ts: int) -> int:
    """How many tiles hold ``ts`` (naive)."""
    return sum(1 for tile in cover if (tile.start is None or tile.start <= ts) and ts < tile.end)


@st.composite
def windowed_cases(draw: st.DrawFn):
    window = draw(windows())
    resolutions = draw(resolution_sets(window.hop))
    t = draw(instants())
    events = draw(event_times(t, window.start(t), window.length + window.hop))
    return window, resolutions, t, events


@PROPERTY
@given(windowed_cases())
def test_tile_cover_is_exact_window(case) -> None:
    window, resolutions, t, events = case
    start = window.start(t)
    # Window start from the rule, by hand: floor(t - W, h), the window spans [W, W + h).
    assert start == ((t - window.length) // window.hop) * window.hop
    assert window.length <= t - start < window.length + window.hop
    cover = tile_cover(start, t, resolutions)
    check_cover(cover, start, t, resolutions)
    assert len(cover) <= cover_size_bound(window, resolutions)
    # Total covered length is the window's length, so nothing overlaps.
    assert sum(tile.end - tile.start for tile in cover) == t - start
    # Naive oracle: an event is in exactly one tile iff the window contains it.
    for ts in events:
        inside = window.contains(ts, t)
        assert inside == (start <= ts < t)
        assert covered(cover, ts) == (1 if inside else 0)


@st.composite
def override_cases(draw: st.DrawFn):
    """Hop overrides: any chain member as hop, W a multiple of it."""
    chain = draw(st.sampled_from(CHAINS))
    hop = draw(st.sampled_from(chain))
    length = draw(st.integers(1, 400)) * hop
    window = resolve_window(format_duration(length), format_duration(hop))
    assert window == Window(length, hop)
    extra = draw(st.lists(st.sampled_from(chain), unique=True))
    resolutions = tuple(sorted(set(extra) | {hop}))
    t = draw(instants())
    events = draw(event_times(t, window.start(t), length + hop))
    return window, resolutions, t, events


@PROPERTY
@given(override_cases())
def test_tile_cover_with_hop_overrides(case) -> None:
    window, resolutions, t, events = case
    start = window.start(t)
    assert start % window.hop == 0
    cover = tile_cover(start, t, resolutions)
    check_cover(cover, start, t, resolutions)
    assert len(cover) <= cover_size_bound(window, resolutions)
    for ts in events:
        assert covered(cover, ts) == (1 if window.contains(ts, t) else 0)


@st.composite
def lifetime_cases(draw: st.DrawFn):
    resolutions = draw(resolution_sets(None))
    t = draw(instants())
    events = draw(event_times(t, None, 3 * DAY))
    return resolutions, t, events


@PROPERTY
@given(lifetime_cases())
def test_lifetime_cover(case) -> None:
    resolutions, t, events = case
    window = resolve_window("lifetime")
    cover = tile_cover(None, t, resolutions)
    coarsest = max(resolutions)
    prefix = cover[0]
    assert prefix.start is None and prefix.resolution is None and not prefix.open
    assert prefix.end == t - t % coarsest
    rest = cover[1:]
    if rest:
        check_cover(rest, prefix.end, t, resolutions)
    else:
        assert prefix.end == t
    assert len(cover) <= cover_size_bound(window, resolutions)
    for ts in events:
        assert window.contains(ts, t) == (ts < t)
        assert covered(cover, ts) == (1 if ts < t else 0)


@PROPERTY
@given(windows(), instants())
def test_window_bounds_property(window: Window, t: int) -> None:
    start, end = window.bounds(t)
    assert end == t
    assert start % window.hop == 0
    assert start <= t - window.length < start + window.hop
    assert window.contains(start, t) and not window.contains(start - 1, t)
    assert window.contains(t - 1, t) and not window.contains(t, t)


# --------------------------------------------------------------------------- ttl rule


def test_ttl_boundary_is_live() -> None:
    ttl = parse_duration("30d")
    assert latest_is_live(T - ttl, T, ttl)
    assert not latest_is_live(T - ttl - 1, T, ttl)
    assert latest_is_live(T - 1, T, ttl)
    # With DESIGN's instant: 2025-12-11 10:07:30 is live, one microsecond older is expired.
    assert latest_is_live(utc(2025, 12, 11, 10, 7, 30), T, ttl)
    assert not latest_is_live(utc(2025, 12, 11, 10, 7, 29) + 999_999, T, ttl)


@PROPERTY
@given(instants(), st.integers(1, 400 * DAY))
def test_ttl_rule_property(t: int, ttl: int) -> None:
    assert latest_is_live(t - ttl, t, ttl)
    assert not latest_is_live(t - ttl - 1, t, ttl)


# --------------------------------------------------------------------------- empty values, dtypes


INT_COLUMNS = ["int32", "int64"]
FLOAT_COLUMNS = ["float32", "float64"]


@pytest.mark.parametrize("column", [None, *INT_COLUMNS, *FLOAT_COLUMNS])
def test_empty_count(column: str | None) -> None:
    value = empty_value("count", column)
    assert value == 0 and type(value) is int


@pytest.mark.parametrize("column", [None, *INT_COLUMNS])
def test_empty_sum_int(column: str | None) -> None:
    value = empty_value("sum", column)
    assert value == 0 and type(value) is int


@pytest.mark.parametrize("column", FLOAT_COLUMNS)
def test_empty_sum_float(column: str) -> None:
    value = empty_value("sum", column)
    assert value == 0.0 and type(value) is float


@pytest.mark.parametrize("agg", ["mean", "min", "max", "last"])
@pytest.mark.parametrize("column", [*INT_COLUMNS, *FLOAT_COLUMNS])
def test_empty_is_null(agg: str, column: str) -> None:
    assert empty_value(agg, column) is None


@pytest.mark.parametrize("column", [*INT_COLUMNS, *FLOAT_COLUMNS, "string"])
def test_empty_last_k(column: str) -> None:
    first = empty_value("last_k", column)
    assert first == [] and type(first) is list
    first.append(1)  # a fresh list each time: no shared mutable default
    assert empty_value("last_k", column) == []


@pytest.mark.parametrize(
    ("agg", "column", "dtype"),
    [
        ("count", None, "int64"),
        ("count", "float64", "int64"),
        ("count", "string", "int64"),
        ("sum", "int32", "int64"),
        ("sum", "int64", "int64"),
        ("sum", "float32", "float64"),
        ("sum", "float64", "float64"),
        ("mean", "int32", "float64"),
        ("mean", "int64", "float64"),
        ("mean", "float32", "float64"),
        ("mean", "float64", "float64"),
        ("min", "int32", "int32"),
        ("max", "float32", "float32"),
        ("min", "string", "string"),
        ("last", "string", "string"),
        ("last", "int64", "int64"),
        ("last", "timestamp", "timestamp"),
        ("last_k", "int64", "list<int64>"),
        ("last_k", "string", "list<string>"),
    ],
)
def test_output_dtype(agg: str, column: str | None, dtype: str) -> None:
    assert output_dtype(agg, column) == dtype


# --------------------------------------------------------------------------- retention


def _view(features: list[Feature], hops: dict[str, str] | None = None) -> FeatureView:
    return FeatureView(
        name="user_activity",
        entity="user",
        source="clicks",
        owner="team-ranking",
        features=features,
        hops=hops or {},
    )


def test_retention_windowed_is_longest_window_plus_hop() -> None:
    view = _view(
        [
            Feature(name="clicks_1h", agg="count", window="1h"),
            Feature(name="spend_7d", agg="sum", column="amount", window="7d"),
            Feature(name="clicks_24h", agg="count", window="24h"),
        ]
    )
    assert retention(view) == 7 * DAY + HOUR
    assert view_resolutions(view) == (5 * MINUTE, HOUR)


def test_retention_uses_hop_override() -> None:
    view = _view([Feature(name="spend_7d", agg="sum", column="amount", window="7d")], hops={"7d": "1d"})
    assert retention(view) == 8 * DAY


def test_retention_30d() -> None:
    view = _view([Feature(name="spend_30d", agg="sum", column="amount", window="30d")])
    assert retention(view) == 31 * DAY


def test_retention_latest_with_ttl() -> None:
    view = _view([Feature(name="last_country", agg="last", column="country", ttl="30d")])
    assert retention(view) == 30 * DAY
    assert view_resolutions(view) == ()
    assert feature_window(view, view.features[0]) is None


def test_retention_mixed_takes_the_max() -> None:
    view = _view(
        [
            Feature(name="clicks_1h", agg="count", window="1h"),
            Feature(name="last_country", agg="last", column="country", ttl="2d"),
        ]
    )
    assert retention(view) == 2 * DAY
    view = _view(
        [
            Feature(name="clicks_24h", agg="count", window="24h"),
            Feature(name="last_country", agg="last", column="country", ttl="1h"),
        ]
    )
    assert retention(view) == DAY + HOUR


@pytest.mark.parametrize("lifetime_first", [True, False])
def test_retention_lifetime_is_forever(lifetime_first: bool) -> None:
    features = [
        Feature(name="clicks_ever", agg="count", window="lifetime"),
        Feature(name="clicks_1h", agg="count", window="1h"),
    ]
    view = _view(features if lifetime_first else features[::-1])
    assert retention(view) is None
    # A lifetime window adds the 1 d resolution.
    assert view_resolutions(view) == (5 * MINUTE, DAY)
