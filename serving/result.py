"""The columnar shape of a lookup's answer, shared by the in-process reader and the client.

No heavy imports: ``parity.Client`` uses it without numpy or redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class FeatureColumns:
    """Per output column: values, statuses, event-time ages (ms), default flags, dtypes."""

    rows: int
    names: list[str] = field(default_factory=list)
    values: dict[str, list] = field(default_factory=dict)
    status: dict[str, list[str]] = field(default_factory=dict)
    age_ms: dict[str, list[float | None]] = field(default_factory=dict)
    defaulted: dict[str, list[bool]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, list]:
        """``{name: values}``, with the statuses under ``<name>__status``."""
        out: dict[str, list] = {}
        for name in self.names:
            out[name] = self.values[name]
            out[name + "__status"] = self.status[name]
        return out
