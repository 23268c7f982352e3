"""The columns a view's features can read: its source schema plus its derived columns."""

from __future__ import annotations

from parity.registry.expr import infer_type, parse
from parity.registry.models import Definitions, FeatureView


def view_schema(defs: Definitions, view: FeatureView) -> dict[str, str]:
    """Column -> dtype for a *validated* view: source columns, then derived columns in order."""
    source = defs.source(view.source)
    schema = dict(source.schema_) if source else {}
    for name, text in view.derived.items():
        schema[name] = infer_type(parse(text), schema)
    return schema
