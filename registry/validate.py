"""Meaning checks across a definition set. Every problem is collected, none stops the scan.

Each check appends a :class:`~parity.errors.Problem` naming the file, object, feature
and field, with a fix. The order of problems is deterministic (file order, then field).
"""

from __future__ import annotations

from parity.errors import ExpressionError, Problem
from parity.registry.durations import LIFETIME, DurationSyntaxError, format_duration, parse_duration
from parity.registry.expr import check_filter, infer_type, parse
from parity.registry.loader import LoadedDefinitions
from parity.registry.models import AGGS, Entity, Feature, FeatureRef, FeatureView, Source
from parity.registry.semantics import default_hop, feature_window, is_divisibility_chain, view_resolutions
from parity.registry.types import KEY_TYPES, NUMERIC_TYPES

LAST_K_MAX = 1000
# Aggregations that need a column, and the column types each accepts (None: any type).
COLUMN_TYPES: dict[str, frozenset[str] | None] = {
    "sum": NUMERIC_TYPES,
    "mean": NUMERIC_TYPES,
    "min": NUMERIC_TYPES | {"string", "timestamp"},
    "max": NUMERIC_TYPES | {"string", "timestamp"},
    "last": None,
    "last_k": None,
}


class _Checker:
    def __init__(self, loaded: LoadedDefinitions) -> None:
        self.loaded = loaded
        self.defs = loaded.definitions
        self.problems: list[Problem] = []

    def add(self, message: str, *, kind: str, name: str, version: int = 0, feature: str | None = None,
            field: str | None = None, fix: str | None = None) -> None:
        file = self.loaded.origin(kind, name, version)
        self.problems.append(Problem(message, file=file, kind=kind, name=name, feature=feature, field=field, fix=fix))

    # -- entities and sources -------------------------------------------------------------

    def entity(self, entity: Entity) -> None:
        if not entity.join_keys:
            self.add("an entity needs at least one join key", kind="entity", name=entity.name, field="join_keys",
                     fix="add `join_keys: {user_id: int64}`")
        for key, dtype in entity.join_keys.items():
            if dtype not in KEY_TYPES:
                self.add(f"join key {key!r} has type {dtype}, which cannot be a key", kind="entity",
                         name=entity.name, field=f"join_keys.{key}",
                         fix=f"use one of {', '.join(sorted(KEY_TYPES))}")

    def source(self, source: Source) -> None:
        def add(message: str, field: str, fix: str) -> None:
            self.add(message, kind="source", name=source.name, field=field, fix=fix)

        ts_type = source.schema_.get(source.timestamp_field)
        if ts_type is None:
            add(f"timestamp field {source.timestamp_field!r} is not in the schema", "timestamp_field",
                f"use one of the schema's timestamp columns, or add `{source.timestamp_field}: timestamp`")
        elif ts_type != "timestamp":
            add(f"timestamp field {source.timestamp_field!r} has type {ts_type}", "timestamp_field",
                "declare it as `timestamp` in the schema")
        if source.kind == "snapshot":
            if source.snapshot is None:
                add("a snapshot source needs a `snapshot` face", "snapshot",
                    "add `snapshot: {path: data/table.parquet}`")
            for face in ("kafka", "offline_log"):
                if getattr(source, face) is not None:
                    add(f"a snapshot source cannot have a `{face}` face", face,
                        "remove it, or make the source `kind: stream`")
        else:
            if source.snapshot is not None:
                add("a stream source cannot have a `snapshot` face", "snapshot",
                    "remove it, or make the source `kind: snapshot`")
        try:
            parse_duration(source.max_future)
        except DurationSyntaxError as exc:
            add(str(exc), "max_future", "write e.g. `max_future: 5m`")

    # -- views -----------------------------------------------------------------------------

    def view(self, view: FeatureView) -> None:
        def add(message: str, field: str | None = None, fix: str | None = None, feature: str | None = None) -> None:
            self.add(message, kind="view", name=view.name, version=view.version, feature=feature, field=field, fix=fix)

        if "__" in view.name:
            add("a view name cannot contain '__' (it separates names in output columns)", "name",
                "use single underscores")
        if not view.owner.strip():
            add("owner is empty", "owner", "add `owner: <team or person>`")
        entity = self.defs.entity(view.entity)
        source = self.defs.source(view.source)
        if entity is None:
            known = ", ".join(e.name for e in self.defs.entities) or "none defined"
            add(f"unknown entity {view.entity!r}", "entity", f"use one of: {known}")
        if source is None:
            known = ", ".join(s.name for s in self.defs.sources) or "none defined"
            add(f"unknown source {view.source!r}", "source", f"use one of: {known}")
        if view.freshness_slo is not None:
            self.duration(view.freshness_slo, lambda m: add(m, "freshness_slo", "write e.g. `freshness_slo: 2m`"))
        schema = dict(source.schema_) if source else None
        if entity is not None:
            for key in view.key_columns:
                if key not in entity.join_keys:
                    add(f"{key!r} is not a join key of entity {entity.name}", f"key_columns.{key}",
                        f"map the entity's keys: {', '.join(entity.join_keys)}")
            if schema is not None:
                for key, dtype in entity.join_keys.items():
                    column = view.source_column_of(key)
                    if column not in schema:
                        add(f"source {view.source} has no column {column!r} for join key {key!r} of entity "
                            f"{entity.name}", "key_columns",
                            f"add `key_columns: {{{key}: <source column>}}` or add {column!r} to the source schema")
                    elif schema[column] != dtype:
                        add(f"join key {key!r} of entity {entity.name} is {dtype}, but source column {column!r} is "
                            f"{schema[column]}", "key_columns",
                            f"make the types match: declare {column!r} as {dtype} in source {view.source}")
        if schema is not None:
            for name, text in view.derived.items():
                if name in schema:
                    add(f"derived column {name!r} shadows a source column", f"derived.{name}", "pick another name")
                    continue
                dtype = self.expression(text, schema, lambda m, fix: add(m, f"derived.{name}", fix))
                if dtype is not None:
                    schema[name] = dtype
        self.hops(view, add)
        names: set[str] = set()
        for feature in view.features:
            if feature.name in names:
                add(f"feature name {feature.name!r} is used twice", "name", "give each feature a unique name",
                    feature=feature.name)
            names.add(feature.name)
            self.feature(view, feature, schema, lambda m, field, fix, f=feature.name: add(m, field, fix, f))
        try:
            resolutions = view_resolutions(view)
        except DurationSyntaxError:
            return  # already reported on the feature or hop
        if not is_divisibility_chain(resolutions):
            add("tile resolutions " + ", ".join(format_duration(r) for r in resolutions)
                + " do not divide each other", "hops", "choose hop overrides that divide the coarser hops")

    def hops(self, view: FeatureView, add) -> None:
        windows = set()
        for feature in view.features:
            if feature.window and feature.window.strip().lower() != LIFETIME:
                try:
                    windows.add(parse_duration(feature.window))
                except DurationSyntaxError:
                    pass
        for window_text, hop_text in view.hops.items():
            field = f"hops.{window_text}"
            try:
                window = parse_duration(window_text)
                hop = parse_duration(hop_text)
            except DurationSyntaxError as exc:
                add(str(exc), field, "write e.g. `hops: {1h: 1m}`")
                continue
            if window not in windows:
                add(f"no feature has a {window_text} window", field, "remove the override or fix its window")
            elif window % hop:
                add(f"window {window_text} is not a multiple of hop {hop_text}", field,
                    "use a hop that divides the window")

    def feature(self, view: FeatureView, feature: Feature, schema: dict | None, add) -> None:
        if "__" in feature.name:
            add("a feature name cannot contain '__'", "name", "use single underscores")
        agg = feature.agg
        if feature.window is not None and feature.ttl is not None:
            add("a feature has either a window or a ttl, not both", "ttl",
                "drop `ttl` for a windowed aggregation, or drop `window` for a latest value")
        elif feature.ttl is not None:
            if agg != "last":
                add(f"ttl applies to latest values (agg: last), not {agg}", "ttl",
                    f"give the {agg} a `window`, or use `agg: last`")
            self.duration(feature.ttl, lambda m: add(m, "ttl", "write e.g. `ttl: 30d`"))
        elif feature.window is None:
            add("missing window", "window",
                "add `window: 1h` (or `lifetime`); for a latest value use `agg: last` with a `ttl`")
        else:
            self.window(view, feature, add)
        if agg in COLUMN_TYPES and feature.column is None:
            add(f"{agg} needs a column", "column", "add `column: <source column>`")
        if agg == "last_k":
            if feature.k is None:
                add("last_k needs k", "k", f"add `k: 10` (1 to {LAST_K_MAX})")
            elif not 1 <= feature.k <= LAST_K_MAX:
                add(f"k = {feature.k} is out of range", "k", f"use 1 to {LAST_K_MAX}")
        elif feature.k is not None:
            add(f"k applies to last_k, not {agg}", "k", "remove `k`, or use `agg: last_k`")
        if schema is None:
            return
        if feature.column is not None:
            dtype = schema.get(feature.column)
            if dtype is None:
                add(f"unknown column {feature.column!r}", "column",
                    f"use a column of the source schema or a derived column: {', '.join(schema)}")
            else:
                accepted = COLUMN_TYPES.get(agg)
                if accepted is not None and dtype not in accepted:
                    add(f"{agg} over column {feature.column!r} of type {dtype}", "column",
                        f"{agg} takes {', '.join(sorted(accepted))} columns")
        if feature.where is not None:
            self.expression(feature.where, schema, lambda m, fix: add(m, "where", fix), is_filter=True)

    def window(self, view: FeatureView, feature: Feature, add) -> None:
        if feature.window.strip().lower() == LIFETIME:
            return
        try:
            length = parse_duration(feature.window)
        except DurationSyntaxError as exc:
            add(str(exc), "window", "write e.g. `window: 1h`, `window: 7d` or `window: lifetime`")
            return
        try:
            window = feature_window(view, feature)
        except DurationSyntaxError:
            return  # the hop override is reported by hops()
        if window is None or window.hop != default_hop(length):
            return  # an overridden hop is checked against its window by hops()
        if length % window.hop:
            hop = format_duration(window.hop)
            lower = format_duration(length - length % window.hop) if length > window.hop else hop
            add(f"window {feature.window} is not a multiple of its {hop} hop", "window",
                f"use a multiple of {hop}, such as {lower}, or override the hop in `hops`")

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def duration(text: str, report) -> None:
        try:
            parse_duration(text)
        except DurationSyntaxError as exc:
            report(str(exc))

    @staticmethod
    def expression(text: str, schema: dict, report, is_filter: bool = False) -> str | None:
        try:
            expr = parse(text)
            if is_filter:
                check_filter(expr, schema)
                return "bool"
            return infer_type(expr, schema)
        except ExpressionError as exc:
            report(f"{exc.reason}: {exc.fragment!r}", exc.fix)
            return None

    # -- services --------------------------------------------------------------------------

    def services(self) -> None:
        for service in self.defs.feature_services:
            outputs: dict[str, str] = {}
            for text in service.features:
                def add(message: str, fix: str) -> None:
                    self.add(message, kind="service", name=service.name, field="features", fix=fix)
                try:
                    ref = FeatureRef.parse(text)
                except ValueError as exc:
                    add(str(exc), "write view:feature")
                    continue
                view = self.defs.view(ref.view, ref.version)
                if view is None:
                    versions = [v.version for v in self.defs.views(ref.view)]
                    if versions:
                        add(f"view {ref.view} has no version {ref.version}",
                            f"use one of versions {', '.join(map(str, versions))}")
                    else:
                        add(f"unknown view {ref.view!r} in {text!r}", "define the view or fix the reference")
                    continue
                names = [f.name for f in view.features] if ref.feature == "*" else [ref.feature]
                for name in names:
                    if view.feature(name) is None:
                        add(f"view {view.name} has no feature {name!r}",
                            f"use one of: {', '.join(f.name for f in view.features)}")
                        continue
                    output = FeatureRef(ref.view, name, ref.version).output_name
                    if output in outputs:
                        add(f"{text!r} repeats output column {output} (from {outputs[output]!r})",
                            "list each feature once")
                    outputs[output] = text


def validate_definitions(loaded: LoadedDefinitions) -> list[Problem]:
    """Every meaning problem in a definition set, in a deterministic order."""
    checker = _Checker(loaded)
    for entity in checker.defs.entities:
        checker.entity(entity)
    for source in checker.defs.sources:
        checker.source(source)
    for view in checker.defs.feature_views:
        checker.view(view)
    checker.services()
    return checker.problems


__all__ = ["validate_definitions", "AGGS", "LAST_K_MAX"]
