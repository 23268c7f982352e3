"""Front ends: YAML files and Python modules under ``feature_defs/`` -> one :class:`Definitions`.

Both front ends build the same models. Every problem in every file is collected (shape
errors from pydantic, then meaning errors from :mod:`parity.registry.validate`) and
raised together as one :class:`~parity.errors.DefinitionError`.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from parity.errors import DefinitionError, Problem
from parity.registry.models import Definitions, Entity, FeatureService, FeatureView, Source

# YAML section -> (model, kind used in messages)
SECTIONS: dict[str, tuple[type[BaseModel], str]] = {
    "entities": (Entity, "entity"),
    "sources": (Source, "source"),
    "feature_views": (FeatureView, "view"),
    "feature_services": (FeatureService, "service"),
}
KIND_OF: dict[type, str] = {model: kind for model, kind in SECTIONS.values()}
SECTION_OF: dict[type, str] = {model: section for section, (model, _) in SECTIONS.items()}

FIXES_BY_FIELD = {
    "owner": "add `owner: <team or person>`; every view has an accountable owner",
    "join_keys": "add `join_keys: {user_id: int64}`",
    "timestamp_field": "name the event-time column, e.g. `timestamp_field: ts`",
    "schema": "list the columns and their types, e.g. `schema: {user_id: int64, ts: timestamp}`",
    "entity": "name an entity defined under `entities:`",
    "source": "name a source defined under `sources:`",
    "features": "list at least one feature",
    "agg": "use one of count, sum, mean, min, max, last, last_k",
}


@dataclass
class LoadedDefinitions:
    """Definitions plus where each object came from (for messages and ``describe``)."""

    definitions: Definitions
    origins: dict[tuple[str, str, int], str] = field(default_factory=dict)

    def origin(self, kind: str, name: str, version: int = 0) -> str | None:
        return self.origins.get((kind, name, version))


def object_key(obj: BaseModel) -> tuple[str, str, int]:
    """(kind, name, version) of a definition object; version is 0 for unversioned kinds."""
    return KIND_OF[type(obj)], obj.name, getattr(obj, "version", 0)  # type: ignore[attr-defined]


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return str(path)


def translate_validation_error(
    error: ValidationError, kind: str, raw: Any, file: str | None
) -> list[Problem]:
    """Turn pydantic's errors into located, fixable :class:`Problem` s."""
    raw = raw if isinstance(raw, dict) else {}
    name = raw.get("name") if isinstance(raw.get("name"), str) else "<unnamed>"
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        feature = None
        if kind == "view" and len(loc) >= 2 and loc[0] == "features" and isinstance(loc[1], int):
            features = raw.get("features") or []
            entry = features[loc[1]] if loc[1] < len(features) else {}
            feature = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else f"#{loc[1] + 1}"
            loc = loc[2:]
        field_name = ".".join(str(p) for p in loc) or None
        kind_of_error = item["type"]
        fix = FIXES_BY_FIELD.get(field_name or "") if kind_of_error == "missing" else None
        if kind_of_error == "missing":
            message = "required field is missing"
        elif kind_of_error == "extra_forbidden":
            message = "unknown field"
            fix = "remove it or check its spelling"
        elif kind_of_error == "literal_error":
            message = f"{item['input']!r} is not allowed, expected {item['ctx']['expected']}"
        elif kind_of_error == "string_pattern_mismatch" and (field_name or "").endswith("name"):
            message = f"{item['input']!r} is not a valid name"
            fix = "use lower_snake_case: a letter, then letters, digits or _ (at most 63)"
        else:
            message = item["msg"][0].lower() + item["msg"][1:]
        problems.append(Problem(message, file=file, kind=kind, name=name, feature=feature, field=field_name, fix=fix))
    return problems


def _add(obj: BaseModel, display: str, found: dict[str, list], origins: dict, problems: list[Problem]) -> None:
    """Keep an object unless another file (or the same one) already defined it."""
    key = object_key(obj)
    if key in origins:
        kind, name, version = key
        what = f"{name} version {version}" if kind == "view" else name
        problems.append(Problem(f"{kind} {what} is defined twice (first in {origins[key]})", file=display,
                                kind=kind, name=name, fix="rename one of them, or bump the view's version"))
        return
    origins[key] = display
    found[SECTION_OF[type(obj)]].append(obj)


def _load_yaml(path: Path, display: str, found: dict[str, list], origins: dict, problems: list[Problem]) -> None:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append(Problem(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", file=display))
        return
    if document is None:
        return
    if not isinstance(document, dict):
        problems.append(Problem("a definitions file must be a mapping of sections", file=display,
                                fix=f"use top-level keys {', '.join(SECTIONS)}"))
        return
    for section, entries in document.items():
        if section not in SECTIONS:
            problems.append(Problem(f"unknown section {section!r}", file=display,
                                    fix=f"use {', '.join(SECTIONS)}"))
            continue
        model, kind = SECTIONS[section]
        if not isinstance(entries, list):
            problems.append(Problem(f"section {section!r} must be a list", file=display,
                                    fix=f"write `{section}:` followed by `- name: ...` items"))
            continue
        for raw in entries:
            try:
                obj = model.model_validate(raw)
            except ValidationError as exc:
                problems.extend(translate_validation_error(exc, kind, raw, display))
                continue
            _add(obj, display, found, origins, problems)


def _load_python(path: Path, display: str, found: dict[str, list], origins: dict, problems: list[Problem]) -> None:
    module_name = f"parity_feature_defs_{abs(hash(str(path)))}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        problems.append(Problem("cannot be imported as a Python module", file=display))
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ValidationError as exc:
        title = exc.title
        kind = {"Entity": "entity", "Source": "source", "FeatureView": "view", "FeatureService": "service",
                "Feature": "view"}.get(title, title)
        problems.extend(translate_validation_error(exc, kind, {}, display))
        return
    except Exception as exc:  # a user's module may raise anything; report it, located
        problems.append(Problem(f"raised {type(exc).__name__}: {exc}", file=display,
                                fix="run the file with python to see the traceback"))
        return
    finally:
        sys.modules.pop(module_name, None)
    for value in vars(module).values():
        if type(value) in SECTION_OF:
            _add(value, display, found, origins, problems)


def definition_files(root: Path) -> list[Path]:
    """YAML and Python files under ``root``, sorted, skipping ``_private`` files and caches."""
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.name.startswith(("_", ".")):
            continue
        if path.suffix in (".yaml", ".yml", ".py"):
            files.append(path)
    return files


def load_definitions(root: str | Path, *, validate: bool = True) -> LoadedDefinitions:
    """Load every definition under ``root`` (a folder or one file) and validate the set.

    Raises :class:`DefinitionError` listing every problem found in every file.
    """
    from parity.registry.validate import validate_definitions

    root = Path(root)
    if not root.exists():
        raise DefinitionError(Problem("no such file or folder", file=str(root),
                                      fix="run `parity init` or pass --defs"))
    files = [root] if root.is_file() else definition_files(root)
    found: dict[str, list] = {section: [] for section in SECTIONS}
    origins: dict[tuple[str, str, int], str] = {}
    problems: list[Problem] = []
    base = root if root.is_dir() else root.parent
    for path in files:
        display = _display(path, base)
        loader = _load_python if path.suffix == ".py" else _load_yaml
        loader(path, display, found, origins, problems)
    definitions = Definitions(**found)
    loaded = LoadedDefinitions(definitions, origins)
    if validate:
        problems.extend(validate_definitions(loaded))
    if problems:
        raise DefinitionError(problems)
    return loaded
