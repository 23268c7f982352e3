"""Partial aggregates in Python: how tiles merge into a feature value.

The online store composes window values at request time from tile partials; the batch
engine writes the same partials in its tile tables. Their shapes:

| agg    | partial                                  |
|--------|------------------------------------------|
| count  | int                                      |
| sum    | int or float                             |
| mean   | (sum, count)                             |
| min    | value or None                            |
| max    | value or None                            |
| last   | (order key, value) or None               |
| last_k | list of (order key, value), newest first |

An *order key* is ``(ts, partition, offset)``: greater is newer (DESIGN.md tie-break).
``None`` partials (an empty tile) are skipped by every merge.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from parity.registry.semantics import empty_value


def _present(parts: Iterable[Any]) -> list[Any]:
    return [p for p in parts if p is not None]


def _merge_mean(parts: list) -> Any:
    total = sum(p[0] for p in parts if p[0] is not None)
    count = sum(p[1] for p in parts)
    return (total, count)


def _merge_last_k(parts: list, k: int) -> list:
    # = heapq.nlargest(k, ..., key=order key): order keys are unique, and a sort of a few
    # dozen items is several times faster than the heap
    items = [item for part in parts for item in part]
    items.sort(key=_order_key, reverse=True)
    return items[:k]


def _order_key(item: tuple) -> Any:
    return item[0]


MERGE: dict[str, Callable[[list, int | None], Any]] = {
    "count": lambda parts, k: sum(parts),
    "sum": lambda parts, k: sum(parts),
    "mean": lambda parts, k: _merge_mean(parts),
    "min": lambda parts, k: min(parts) if parts else None,
    "max": lambda parts, k: max(parts) if parts else None,
    "last": lambda parts, k: max(parts, key=lambda p: p[0]) if parts else None,
    "last_k": lambda parts, k: _merge_last_k(parts, k or 0),
}


def merge(agg: str, parts: Iterable[Any], k: int | None = None) -> Any:
    """Merge partials of the same aggregation into one partial."""
    return MERGE[agg](_present(parts), k)


def finalize(agg: str, partial: Any, column_dtype: str | None) -> Any:
    """The feature value of a merged partial (empty-window values from the semantics core)."""
    empty = empty_value(agg, column_dtype)
    if partial is None:
        return empty
    if agg in ("count", "sum"):
        return partial if partial != 0 or empty is None else empty
    if agg == "mean":
        total, count = partial
        return total / count if count else None
    if agg == "last":
        return partial[1]
    if agg == "last_k":
        return [value for _key, value in partial]
    return partial
