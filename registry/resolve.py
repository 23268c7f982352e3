"""Resolve a feature service or a list of references to concrete (view version, feature) pairs.

Shared by the batch engine (training sets) and online serving, so both answer the same
request with the same columns in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from parity.errors import ParityError
from parity.registry.models import Definitions, Entity, Feature, FeatureRef, FeatureView


class UnknownFeatureError(ParityError):
    """A requested service, view, version or feature does not exist."""


@dataclass(frozen=True)
class ResolvedFeature:
    ref: FeatureRef
    view: FeatureView
    feature: Feature
    entity: Entity

    @property
    def output_name(self) -> str:
        return self.ref.output_name


def resolve(defs: Definitions, *, service: str | None = None,
            features: Sequence[str] | None = None) -> list[ResolvedFeature]:
    """Expand ``service`` or ``features`` (``view:feature``, ``view@2:feature``, ``view:*``) in order."""
    if (service is None) == (features is None):
        raise ParityError("pass exactly one of service= or features=")
    if service is not None:
        found = defs.service(service)
        if found is None:
            known = ", ".join(s.name for s in defs.feature_services) or "none"
            raise UnknownFeatureError(f"unknown feature service {service!r}", hint=f"services: {known}")
        features = found.features
    resolved: list[ResolvedFeature] = []
    seen: set[str] = set()
    for text in features or ():
        try:
            ref = FeatureRef.parse(text)
        except ValueError as exc:
            raise UnknownFeatureError(str(exc)) from None
        view = defs.view(ref.view, ref.version)
        if view is None:
            versions = [v.version for v in defs.views(ref.view)]
            hint = f"live versions: {versions}" if versions else "see `parity list`"
            raise UnknownFeatureError(f"unknown view {ref.view!r}" + (f" version {ref.version}" if ref.version else "")
                                      + f" in {text!r}", hint=hint)
        entity = defs.entity(view.entity)
        if entity is None:
            raise UnknownFeatureError(f"view {view.name} refers to unknown entity {view.entity!r}")
        names = [f.name for f in view.features] if ref.feature == "*" else [ref.feature]
        for name in names:
            feature = view.feature(name)
            if feature is None:
                raise UnknownFeatureError(f"view {view.name} has no feature {name!r} (in {text!r})",
                                          hint="features: " + ", ".join(f.name for f in view.features))
            item = ResolvedFeature(FeatureRef(ref.view, name, ref.version), view, feature, entity)
            if item.output_name not in seen:
                seen.add(item.output_name)
                resolved.append(item)
    return resolved
