"""``plan`` and ``apply``: diff definitions against the registry, refuse silent changes of meaning.

What a feature *means* is its aggregation, column, window (and hop), ``where``, ``k``,
``ttl``, plus its view's source, entity, key columns and derived columns. Changing any of
these on a live ``(view, version)`` is refused; bump ``version`` instead. The old version
stays live beside the new one until the view's name leaves the definitions, or until it
is retired explicitly (``--retire view@1``).
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from parity.errors import PlanRefused, Problem
from parity.registry.durations import LIFETIME, canonical_duration
from parity.registry.expr import parse, to_text
from parity.registry.loader import LoadedDefinitions, object_key
from parity.registry.models import Definitions, Entity, FeatureService, FeatureView, Source
from parity.registry.semantics import feature_window
from parity.registry.store import Change, RegistryStore, Snapshot

MODELS: dict[str, type] = {"entity": Entity, "source": Source, "view": FeatureView, "service": FeatureService}
SECTION: dict[str, str] = {"entity": "entities", "source": "sources", "view": "feature_views",
                           "service": "feature_services"}
ORDER = ("entity", "source", "view", "service")


def spec_of(obj: Any) -> dict:
    """The stored form of a definition object (JSON-ready, aliases as in YAML)."""
    return obj.model_dump(mode="json", by_alias=True)


def _expr(text: str | None) -> str | None:
    return None if text is None else to_text(parse(text))


def feature_meaning(view: FeatureView, name: str) -> dict[str, Any] | None:
    feature = view.feature(name)
    if feature is None:
        return None
    window = feature_window(view, feature)
    return {
        "agg": feature.agg,
        "column": feature.column,
        "window": None if feature.window is None else canonical_duration(feature.window),
        "hop": None if window is None or window.hop is None else canonical_duration(f"{window.hop}us"),
        "where": _expr(feature.where),
        "k": feature.k,
        "ttl": None if feature.ttl is None else canonical_duration(feature.ttl),
    }


def view_meaning(view: FeatureView, entity: Entity | None) -> dict[str, Any]:
    keys = list(entity.join_keys) if entity else list(view.key_columns)
    return {
        "entity": view.entity,
        "source": view.source,
        "key_columns": {key: view.source_column_of(key) for key in keys},
        "derived": {name: _expr(text) for name, text in sorted(view.derived.items())},
    }


@dataclass
class ObjectChange:
    """One line of a plan: ``op`` is add, change, remove or keep (superseded, stays live)."""

    op: str
    kind: str
    name: str
    version: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}" + (f" v{self.version}" if self.kind == "view" else "")


@dataclass
class Plan:
    base_revision: int
    changes: list[ObjectChange]
    store_changes: list[Change]
    refused: list[Problem]

    @property
    def has_changes(self) -> bool:
        return bool(self.store_changes)

    def render(self) -> str:
        """Human-readable plan, one line per object, grouped add / change / remove."""
        symbols = {"add": "+", "change": "~", "remove": "-", "keep": "="}
        lines = []
        for change in self.changes:
            if change.op == "unchanged":
                continue
            detail = f" ({'; '.join(change.details)})" if change.details else ""
            lines.append(f"  {symbols[change.op]} {change.op:<6} {change.label}{detail}")
        if not lines:
            lines.append("  no changes: the registry matches the definitions")
        counts = {op: sum(c.op == op for c in self.changes) for op in ("add", "change", "remove")}
        header = (f"plan against registry revision {self.base_revision}: "
                  f"{counts['add']} to add, {counts['change']} to change, {counts['remove']} to remove")
        return "\n".join([header, *lines])

    def to_json(self) -> dict:
        return {
            "base_revision": self.base_revision,
            "changes": [vars(c) for c in self.changes if c.op != "unchanged"],
            "refused": [str(p) for p in self.refused],
        }


def _diff_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    names = sorted(set(old) | set(new))
    return [f"{prefix}{k}" for k in names if old.get(k) != new.get(k)]


def registry_definitions(snapshot: Snapshot) -> Definitions:
    """The live objects of a registry snapshot, as models."""
    found: dict[str, list] = {section: [] for section in SECTION.values()}
    for (kind, _name, _version), stored in sorted(snapshot.objects.items()):
        found[SECTION[kind]].append(MODELS[kind].model_validate(stored.spec))
    return Definitions(**found)


def compute_plan(loaded: LoadedDefinitions, snapshot: Snapshot, retire: list[tuple[str, int]] = ()) -> Plan:
    """Diff validated definitions against a registry snapshot."""
    defs = loaded.definitions
    live = registry_definitions(snapshot)
    changes: list[ObjectChange] = []
    store_changes: list[Change] = []
    refused: list[Problem] = []
    wanted = {object_key(obj): obj for section in SECTION.values() for obj in getattr(defs, section)}
    defined_view_names = {v.name for v in defs.feature_views}
    retire_set = set(retire)

    for key in sorted(wanted, key=lambda k: (ORDER.index(k[0]), k[1], k[2])):
        kind, name, version = key
        obj = wanted[key]
        stored = snapshot.objects.get(key)
        spec = spec_of(obj)
        if stored is None:
            details = []
            if kind == "view":
                older = [v.version for v in live.views(name)]
                if older:
                    details.append("version " + ", ".join(map(str, older)) + " stays live")
            changes.append(ObjectChange("add", kind, name, version, details))
            store_changes.append(Change("put", kind, name, version, spec))
            continue
        if stored.spec == spec:
            changes.append(ObjectChange("unchanged", kind, name, version))
            continue
        old = MODELS[kind].model_validate(stored.spec)
        problems = _meaning_changes(kind, old, obj, defs, live, loaded.origin(kind, name, version))
        refused.extend(problems)
        changed = _diff_fields(stored.spec, spec)
        changes.append(ObjectChange("change", kind, name, version, [f"{f} changed" for f in changed]))
        store_changes.append(Change("put", kind, name, version, spec))

    for key in sorted(snapshot.objects, key=lambda k: (ORDER.index(k[0]), k[1], k[2])):
        if key in wanted:
            continue
        kind, name, version = key
        if kind == "view" and name in defined_view_names and (name, version) not in retire_set:
            changes.append(ObjectChange("keep", kind, name, version, ["superseded, stays live"]))
            continue
        changes.append(ObjectChange("remove", kind, name, version))
        store_changes.append(Change("delete", kind, name, version))
    for name, version in retire_set:
        if ("view", name, version) not in snapshot.objects:
            refused.append(Problem(f"cannot retire: view {name} version {version} is not live", kind="view",
                                   name=name, fix="see `parity list` for live versions"))
        elif ("view", name, version) in wanted:
            refused.append(Problem(f"cannot retire view {name} version {version} while it is still defined",
                                   kind="view", name=name, fix="remove that version from feature_defs/ first"))
    return Plan(snapshot.revision, changes, store_changes, refused)


def _meaning_changes(kind: str, old: Any, new: Any, defs: Definitions, live: Definitions,
                     file: str | None) -> list[Problem]:
    """Problems for changes of meaning on an object that is already live."""
    problems = []
    if kind == "view":
        fix = (f"bump `version` to {max(v.version for v in [*defs.views(new.name), *live.views(new.name)]) + 1}; "
               f"version {new.version} stays live until you remove it")
        old_meaning = view_meaning(old, live.entity(old.entity))
        new_meaning = view_meaning(new, defs.entity(new.entity))
        for field_name in _diff_fields(old_meaning, new_meaning):
            problems.append(Problem(
                f"{field_name} changed from {old_meaning[field_name]!r} to {new_meaning[field_name]!r} "
                f"without a version bump", file=file, kind="view", name=new.name, field=field_name, fix=fix))
        for feature in new.features:
            before = feature_meaning(old, feature.name)
            if before is None:
                continue  # a new feature in a live version is an addition, not a change of meaning
            after = feature_meaning(new, feature.name)
            for field_name in _diff_fields(before, after):
                problems.append(Problem(
                    f"{field_name} changed from {_show(before[field_name])} to {_show(after[field_name])} "
                    f"without a version bump", file=file, kind="view", name=new.name, feature=feature.name,
                    field=field_name, fix=fix))
    elif kind == "entity" and old.join_keys != new.join_keys:
        users = sorted({v.name for v in live.feature_views if v.entity == new.name})
        if users:
            problems.append(Problem(
                f"join_keys changed while views {', '.join(users)} use it", file=file, kind="entity",
                name=new.name, field="join_keys", fix="define a new entity and bump the views that move to it"))
    elif kind == "source":
        users = sorted({v.name for v in live.feature_views if v.source == new.name})
        if users:
            dropped = [c for c, t in old.schema_.items() if new.schema_.get(c) != t]
            if dropped:
                problems.append(Problem(
                    f"columns {', '.join(dropped)} removed or retyped while views {', '.join(users)} use it",
                    file=file, kind="source", name=new.name, field="schema",
                    fix="add columns instead, or define a new source and bump the views that move to it"))
            if old.timestamp_field != new.timestamp_field:
                problems.append(Problem(
                    f"timestamp_field changed while views {', '.join(users)} use it", file=file, kind="source",
                    name=new.name, field="timestamp_field", fix="define a new source instead"))
    return problems


def _show(value: Any) -> str:
    return "none" if value is None else (LIFETIME if value == LIFETIME else str(value))


def applied_by() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def plan(loaded: LoadedDefinitions, store: RegistryStore, retire: list[tuple[str, int]] = ()) -> Plan:
    """Compute a plan; raise :class:`PlanRefused` if it changes meaning without a version bump."""
    result = compute_plan(loaded, store.snapshot(), retire)
    if result.refused:
        raise PlanRefused(result.refused)
    return result


def apply(loaded: LoadedDefinitions, store: RegistryStore, retire: list[tuple[str, int]] = ()) -> tuple[Plan, int]:
    """Plan, then commit atomically against the revision the plan was computed from.

    A concurrent apply that committed in between makes this one fail with
    :class:`~parity.errors.RegistryConflictError`; nothing is written.
    """
    result = plan(loaded, store, retire)
    if not result.has_changes:
        return result, result.base_revision
    summary = result.render().splitlines()[0].split(": ", 1)[1]
    revision = store.commit(result.store_changes, expected_revision=result.base_revision,
                            summary=summary, applied_by=applied_by())
    return result, revision
