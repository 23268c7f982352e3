"""What ``parity list`` and ``parity describe`` show, as plain data (the CLI only prints it)."""

from __future__ import annotations

from typing import Any

from parity.registry.durations import format_duration, parse_duration
from parity.registry.expr import parse, render_sql
from parity.registry.models import Definitions, FeatureRef, FeatureView
from parity.registry.schema import view_schema
from parity.registry.semantics import feature_window, output_dtype, retention, tile_resolutions


def _duration(us: int | None) -> str | None:
    return None if us is None else format_duration(us)


def describe_view(defs: Definitions, view: FeatureView) -> dict[str, Any]:
    """Everything an operator wants to know about one view version."""
    schema = view_schema(defs, view)
    keep = retention(view)
    features = []
    for feature in view.features:
        window = feature_window(view, feature)
        column_type = schema.get(feature.column) if feature.column else None
        features.append({
            "name": feature.name,
            "output_column": FeatureRef(view.name, feature.name).output_name,
            "agg": feature.agg if feature.agg != "last_k" else f"last_k({feature.k})",
            "column": feature.column,
            "type": output_dtype(feature.agg, column_type),
            "window": feature.window,
            "hop": None if window is None else _duration(window.hop),
            "ttl": None if feature.ttl is None else format_duration(parse_duration(feature.ttl)),
            "where": feature.where,
            "where_duckdb": None if feature.where is None else render_sql(parse(feature.where), "duckdb", schema),
        })
    return {
        "name": view.name,
        "version": view.version,
        "entity": view.entity,
        "join_keys": {key: view.source_column_of(key) for key in (defs.entity(view.entity).join_keys
                                                                     if defs.entity(view.entity) else {})},
        "source": view.source,
        "owner": view.owner,
        "description": view.description,
        "tags": view.tags,
        "online": view.online,
        "offline": view.offline,
        "freshness_slo": view.freshness_slo,
        "tile_resolutions": [format_duration(r) for r in tile_resolutions(view)],
        "retention": "forever" if keep is None else (format_duration(keep) if keep else None),
        "derived": {name: {"expression": text, "duckdb": render_sql(parse(text), "duckdb", schema)}
                    for name, text in view.derived.items()},
        "features": features,
    }


def render_view(info: dict[str, Any]) -> str:
    """A compact text rendering of :func:`describe_view`."""
    lines = [
        f"view {info['name']} v{info['version']}  ({info['description']})" if info["description"]
        else f"view {info['name']} v{info['version']}",
        f"  owner:       {info['owner']}",
        f"  entity:      {info['entity']} (keys: {', '.join(f'{k}<-{c}' for k, c in info['join_keys'].items())})",
        f"  source:      {info['source']}",
        f"  online/offline: {info['online']}/{info['offline']}   freshness SLO: {info['freshness_slo'] or 'none'}",
        f"  tiles:       {', '.join(info['tile_resolutions']) or 'none (latest values only)'}",
        f"  retention:   {info['retention']}",
    ]
    for name, derived in info["derived"].items():
        lines.append(f"  derived {name} = {derived['duckdb']}")
    lines.append("  features:")
    header = f"    {'name':<24} {'agg':<12} {'column':<12} {'window':<9} {'hop':<5} {'ttl':<5} type"
    lines.append(header)
    for f in info["features"]:
        lines.append(f"    {f['name']:<24} {f['agg']:<12} {f['column'] or '-':<12} {f['window'] or '-':<9} "
                     f"{f['hop'] or '-':<5} {f['ttl'] or '-':<5} {f['type']}")
        if f["where_duckdb"]:
            lines.append(f"      where (DuckDB): {f['where_duckdb']}")
    return "\n".join(lines)


def list_objects(defs: Definitions) -> dict[str, Any]:
    """The live registry content, for ``parity list``."""
    newest = {v.name: max(x.version for x in defs.views(v.name)) for v in defs.feature_views}
    return {
        "entities": [{"name": e.name, "join_keys": e.join_keys} for e in defs.entities],
        "sources": [{"name": s.name, "kind": s.kind, "topic": s.kafka.topic if s.kafka else None}
                    for s in defs.sources],
        "feature_views": [{"name": v.name, "version": v.version, "entity": v.entity, "source": v.source,
                           "owner": v.owner, "features": len(v.features),
                           "status": "live" if v.version == newest[v.name] else "live (superseded)"}
                          for v in sorted(defs.feature_views, key=lambda v: (v.name, v.version))],
        "feature_services": [{"name": s.name, "features": len(s.features)} for s in defs.feature_services],
    }
