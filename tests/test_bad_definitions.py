"""Bad definitions: each gives a typed DefinitionError with an exact, located, fixable message."""

from __future__ import annotations

import textwrap

import pytest

from parity.errors import DefinitionError, ParityError
from parity.registry.loader import load_definitions
from defs_fixtures import BASE, write_defs

F = "feature_defs/views.yaml"
COLUMNS = "user_id, video_id, event_type, watch_ms, completion, liked, ts"


def view(features: str, head: str = "") -> str:
    """A view of entity user on source events, with the given feature lines (YAML flow maps)."""
    lines = ["feature_views:", "  - name: v", "    entity: user", "    source: events", "    owner: team"]
    lines += [f"    {line}" for line in textwrap.dedent(head).splitlines() if line.strip()]
    lines.append("    features:")
    lines += [f"      - {line}" for line in textwrap.dedent(features).splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


CASES = [
    ("unknown_column",
     view("{name: f, agg: sum, column: watchms, window: 1h}"),
     f"{F}: view v, feature f, field column: unknown column 'watchms' "
     f"(fix: use a column of the source schema or a derived column: {COLUMNS})"),
    ("window_not_multiple_of_hop",
     view("{name: f, agg: count, window: 62m}"),
     f"{F}: view v, feature f, field window: window 62m is not a multiple of its 5m hop "
     "(fix: use a multiple of 5m, such as 1h, or override the hop in `hops`)"),
    ("window_not_multiple_of_day_hop",
     view("{name: f, agg: count, window: 30d12h}"),
     f"{F}: view v, feature f, field window: window 30d12h is not a multiple of its 1d hop "
     "(fix: use a multiple of 1d, such as 30d, or override the hop in `hops`)"),
    ("duplicate_feature_name",
     view("{name: f, agg: count, window: 1h}\n{name: f, agg: count, window: 24h}"),
     f"{F}: view v, feature f, field name: feature name 'f' is used twice (fix: give each feature a unique name)"),
    ("missing_owner",
     "feature_views:\n  - {name: v, entity: user, source: events, features: [{name: f, agg: count, window: 1h}]}\n",
     f"{F}: view v, field owner: required field is missing "
     "(fix: add `owner: <team or person>`; every view has an accountable owner)"),
    ("bad_duration",
     view("{name: f, agg: count, window: 1 hour}"),
     f"{F}: view v, feature f, field window: bad duration '1 hour': use a number and a unit "
     "(us, ms, s, m, h, d), e.g. '10m', '1h30m', '7d' "
     "(fix: write e.g. `window: 1h`, `window: 7d` or `window: lifetime`)"),
    ("unknown_entity",
     view("{name: f, agg: count, window: 1h}").replace("entity: user", "entity: usr"),
     f"{F}: view v, field entity: unknown entity 'usr' (fix: use one of: user, video)"),
    ("unknown_source",
     view("{name: f, agg: count, window: 1h}").replace("source: events", "source: evnts"),
     f"{F}: view v, field source: unknown source 'evnts' (fix: use one of: events)"),
    ("sum_over_string",
     view("{name: f, agg: sum, column: event_type, window: 1h}"),
     f"{F}: view v, feature f, field column: sum over column 'event_type' of type string "
     "(fix: sum takes float32, float64, int32, int64 columns)"),
    ("mean_over_bool",
     view("{name: f, agg: mean, column: liked, window: 1h}"),
     f"{F}: view v, feature f, field column: mean over column 'liked' of type bool "
     "(fix: mean takes float32, float64, int32, int64 columns)"),
    ("last_k_without_k",
     view("{name: f, agg: last_k, column: video_id, window: 1h}"),
     f"{F}: view v, feature f, field k: last_k needs k (fix: add `k: 10` (1 to 1000))"),
    ("last_k_k_zero",
     view("{name: f, agg: last_k, column: video_id, window: 1h, k: 0}"),
     f"{F}: view v, feature f, field k: k = 0 is out of range (fix: use 1 to 1000)"),
    ("last_k_k_too_big",
     view("{name: f, agg: last_k, column: video_id, window: 1h, k: 5000}"),
     f"{F}: view v, feature f, field k: k = 5000 is out of range (fix: use 1 to 1000)"),
    ("k_on_count",
     view("{name: f, agg: count, window: 1h, k: 3}"),
     f"{F}: view v, feature f, field k: k applies to last_k, not count (fix: remove `k`, or use `agg: last_k`)"),
    ("where_missing_column",
     view("{name: f, agg: count, window: 1h, where: \"event = 'play'\"}"),
     None),  # message comes from the expression checker; asserted below on its parts
    ("key_type_mismatch",
     view("{name: f, agg: count, window: 1h}", head="key_columns: {user_id: event_type}"),
     f"{F}: view v, field key_columns: join key 'user_id' of entity user is int64, but source column "
     "'event_type' is string (fix: make the types match: declare 'event_type' as int64 in source events)"),
    ("key_column_missing",
     view("{name: f, agg: count, window: 1h}", head="key_columns: {user_id: uid}"),
     f"{F}: view v, field key_columns: source events has no column 'uid' for join key 'user_id' of entity user "
     "(fix: add `key_columns: {user_id: <source column>}` or add 'uid' to the source schema)"),
    ("key_columns_not_a_key",
     view("{name: f, agg: count, window: 1h}", head="key_columns: {account: user_id}"),
     f"{F}: view v, field key_columns.account: 'account' is not a join key of entity user "
     "(fix: map the entity's keys: user_id)"),
    ("window_and_ttl",
     view("{name: f, agg: last, column: watch_ms, window: 1h, ttl: 1d}"),
     f"{F}: view v, feature f, field ttl: a feature has either a window or a ttl, not both "
     "(fix: drop `ttl` for a windowed aggregation, or drop `window` for a latest value)"),
    ("ttl_on_sum",
     view("{name: f, agg: sum, column: watch_ms, ttl: 1d}"),
     f"{F}: view v, feature f, field ttl: ttl applies to latest values (agg: last), not sum "
     "(fix: give the sum a `window`, or use `agg: last`)"),
    ("missing_window",
     view("{name: f, agg: count}"),
     f"{F}: view v, feature f, field window: missing window "
     "(fix: add `window: 1h` (or `lifetime`); for a latest value use `agg: last` with a `ttl`)"),
    ("sum_without_column",
     view("{name: f, agg: sum, window: 1h}"),
     f"{F}: view v, feature f, field column: sum needs a column (fix: add `column: <source column>`)"),
    ("bad_feature_name",
     view("{name: PlaysOneHour, agg: count, window: 1h}"),
     f"{F}: view v, feature PlaysOneHour, field name: 'PlaysOneHour' is not a valid name "
     "(fix: use lower_snake_case: a letter, then letters, digits or _ (at most 63))"),
    ("double_underscore_name",
     view("{name: plays__1h, agg: count, window: 1h}"),
     f"{F}: view v, feature plays__1h, field name: a feature name cannot contain '__' (fix: use single underscores)"),
    ("unknown_field",
     view("{name: f, agg: count, windw: 1h}"),
     None),  # two problems: the unknown field and (after) nothing else: shape errors stop that view
    ("unknown_agg",
     view("{name: f, agg: median, column: watch_ms, window: 1h}"),
     f"{F}: view v, feature f, field agg: 'median' is not allowed, expected "
     "'count', 'sum', 'mean', 'min', 'max', 'last' or 'last_k'"),
    ("freshness_slo_bad_duration",
     view("{name: f, agg: count, window: 1h}", head="freshness_slo: soon"),
     f"{F}: view v, field freshness_slo: bad duration 'soon': use a number and a unit (us, ms, s, m, h, d), "
     "e.g. '10m', '1h30m', '7d' (fix: write e.g. `freshness_slo: 2m`)"),
    ("hop_override_does_not_divide",
     view("{name: f, agg: count, window: 1h}", head="hops: {1h: 7m}"),
     f"{F}: view v, field hops.1h: window 1h is not a multiple of hop 7m (fix: use a hop that divides the window)"),
    ("hop_override_for_missing_window",
     view("{name: f, agg: count, window: 1h}", head="hops: {2h: 10m}"),
     f"{F}: view v, field hops.2h: no feature has a 2h window (fix: remove the override or fix its window)"),
    ("derived_shadows_column",
     view("{name: f, agg: count, window: 1h}", head="derived: {watch_ms: 'watch_ms + 1'}"),
     f"{F}: view v, field derived.watch_ms: derived column 'watch_ms' shadows a source column (fix: pick another name)"),
]

BASE_CASES = [
    ("timestamp_field_not_in_schema",
     BASE.replace("timestamp_field: ts", "timestamp_field: event_time"),
     "feature_defs/base.yaml: source events, field timestamp_field: timestamp field 'event_time' is not in the "
     "schema (fix: use one of the schema's timestamp columns, or add `event_time: timestamp`)"),
    ("timestamp_field_wrong_type",
     BASE.replace("timestamp_field: ts", "timestamp_field: watch_ms"),
     "feature_defs/base.yaml: source events, field timestamp_field: timestamp field 'watch_ms' has type int64 "
     "(fix: declare it as `timestamp` in the schema)"),
    ("float_join_key",
     BASE.replace("join_keys: {video_id: int64}", "join_keys: {video_id: float64}"),
     "feature_defs/base.yaml: entity video, field join_keys.video_id: join key 'video_id' has type float64, which "
     "cannot be a key (fix: use one of bool, int32, int64, string)"),
    ("unknown_type",
     BASE.replace("watch_ms: int64", "watch_ms: integer"),
     None),
    ("snapshot_with_kafka",
     BASE.replace("    kafka: {topic: events}", "    kind: snapshot\n    kafka: {topic: events}\n"
                  "    snapshot: {path: x.parquet}"),
     "feature_defs/base.yaml: source events, field kafka: a snapshot source cannot have a `kafka` face "
     "(fix: remove it, or make the source `kind: stream`)"),
]


def _load(tmp_path, views: str, base: str = BASE):
    folder = write_defs(tmp_path / "feature_defs", views, base=base)
    return load_definitions(folder)


@pytest.mark.parametrize("case, views, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_view_definitions_have_exact_messages(tmp_path, case, views, expected):
    with pytest.raises(DefinitionError) as info:
        _load(tmp_path, views)
    problems = info.value.problems
    assert isinstance(info.value, ParityError)
    if case == "where_missing_column":
        assert len(problems) == 1
        p = problems[0]
        assert (p.file, p.kind, p.name, p.feature, p.field) == (F, "view", "v", "f", "where")
        assert "'event'" in p.message and "unknown column" in p.message
        return
    if case == "unknown_field":
        assert [str(p) for p in problems] == [
            f"{F}: view v, feature f, field windw: unknown field (fix: remove it or check its spelling)"]
        return
    assert [str(p) for p in problems] == [expected]


@pytest.mark.parametrize("case, base, expected", BASE_CASES, ids=[c[0] for c in BASE_CASES])
def test_bad_entity_and_source_definitions_have_exact_messages(tmp_path, case, base, expected):
    views = view("{name: f, agg: count, window: 1h}")
    with pytest.raises(DefinitionError) as info:
        _load(tmp_path, views, base=base)
    messages = [str(p) for p in info.value.problems]
    if case == "unknown_type":
        assert messages[0] == (
            "feature_defs/base.yaml: source events, field schema.watch_ms: 'integer' is not allowed, expected "
            "'bool', 'int32', 'int64', 'float32', 'float64', 'string' or 'timestamp'")
        return
    assert messages == [expected]


def test_every_problem_in_the_set_is_collected_before_failing(tmp_path):
    views = view("""\
        {name: a, agg: sum, column: nope, window: 1h}
        {name: b, agg: count, window: 61m}
        {name: c, agg: last_k, column: video_id, window: 1h}
    """)
    views += textwrap.dedent("""\
      - name: w
        entity: ghost
        source: events
        owner: team
        features: [{name: x, agg: count, window: 1h}]
    feature_services:
      - name: s
        features: ["v:a", "v:zzz", "nope:x", "v@9:a"]
    """)
    with pytest.raises(DefinitionError) as info:
        _load(tmp_path, views)
    err = info.value
    assert [(p.name, p.feature, p.field) for p in err.problems] == [
        ("v", "a", "column"), ("v", "b", "window"), ("v", "c", "k"), ("w", None, "entity"),
        ("s", None, "features"), ("s", None, "features"), ("s", None, "features"),
    ]
    assert str(err).startswith("7 problems in the definitions:\n  - feature_defs/views.yaml: view v, feature a")
    assert [p.message for p in err.problems[4:]] == [
        "view v has no feature 'zzz'", "unknown view 'nope' in 'nope:x'", "view v has no version 9"]


def test_the_same_view_twice_names_both_files(tmp_path):
    folder = write_defs(tmp_path / "feature_defs", view("{name: f, agg: count, window: 1h}"))
    (folder / "copy.yaml").write_text(view("{name: f, agg: count, window: 1h}"))
    with pytest.raises(DefinitionError) as info:
        load_definitions(folder)
    assert [str(p) for p in info.value.problems] == [
        "feature_defs/views.yaml: view v: view v version 1 is defined twice (first in feature_defs/copy.yaml) "
        "(fix: rename one of them, or bump the view's version)"]


def test_invalid_yaml_names_the_line(tmp_path):
    folder = write_defs(tmp_path / "feature_defs", "feature_views:\n  - name: v\n    features: [\n")
    with pytest.raises(DefinitionError) as info:
        load_definitions(folder)
    (problem,) = info.value.problems
    assert problem.file == F
    assert problem.message.startswith("not valid YAML at line 4")


def test_python_front_end_errors_are_located(tmp_path):
    folder = tmp_path / "feature_defs"
    folder.mkdir()
    (folder / "base.yaml").write_text(BASE)
    (folder / "views.py").write_text(textwrap.dedent("""\
        from parity.registry.dsl import FeatureView, Count
        v = FeatureView(name="v", entity="user", source="events", owner="team",
                        features=[Count("f", window="61m")])
    """))
    with pytest.raises(DefinitionError) as info:
        load_definitions(folder)
    assert [str(p) for p in info.value.problems] == [
        "feature_defs/views.py: view v, feature f, field window: window 61m is not a multiple of its 5m hop "
        "(fix: use a multiple of 5m, such as 1h, or override the hop in `hops`)"]
