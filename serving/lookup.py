"""Online lookup: feature values at ``now``, composed at request time from Redis tiles.

One request may name several entity types (``user_id`` for user features, ``video_id``
for video features) and several versions of a view. Entity columns of length 1 are
broadcast to the request's row count. Each view is read with **one** Lua call for all of
its distinct entities (all views of a request share one round trip), which returns, per
entity, the cover tiles present (column and numeric record; missing tiles are zero records), the
tail events of the open tile, and the complex partials when the request needs them.
Numeric features are then merged for all entities at once with numpy.

Every value carries a status (DESIGN.md, docs/online.md):

- ``missing``: the store holds nothing for the entity in this view (for a latest value:
  no value of that feature);
- ``expired``: a latest value exists, but none in ``[now - ttl, now)``;
- ``stale``: the value is there, but the view's ingestion lag (``now`` minus the
  watermark writers store) exceeds its ``freshness_slo`` (no watermark at all is stale);
- ``ok``.

and its event-time age: ``now`` minus the time of the newest event behind it (for a
windowed value, the entity's newest event in the view before ``now``; for a latest value,
the event served), in milliseconds; None when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from parity.errors import ParityError
from parity.registry.durations import floor_to, from_micros, parse_duration
from parity.registry.models import Definitions, FeatureView
from parity.registry.online.keys import (
    complex_field, encode_entity, encode_ints, entity_key, meta_key, tail_key, view_prefix,
)
from parity.registry.online.layout import ViewLayout
from parity.registry.online.writer import OnlineStoreUnavailable, wall_clock_us
from parity.registry.partials import finalize, merge
from parity.registry.resolve import ResolvedFeature, UnknownFeatureError, resolve
from parity.registry.semantics import empty_value, ingestion_lag_exceeds, latest_is_live, output_dtype
from parity.serving.merge import (
    decode_complex_columns, finish_numeric, fold_complete, last_before, open_part, tail_latest,
)
from parity.serving.read_plan import READ_SCRIPT, SLOW_SCRIPT, latest_cover, plan_for
from parity.serving.result import FeatureColumns
from parity.serving.tile_cache import Split, TailFolds, TileCache

STATUSES = ("ok", "missing", "expired", "stale")
FRESH = (1, (), (), (), None)  # the reply entry of a fresh hit left out of the read (nothing to read)


class BadRequest(ParityError):
    """The request is malformed (unknown key, wrong type, length mismatch, too many rows)."""


class TooManyEntities(BadRequest):
    """More entity rows than ``serving.max_entities``."""


@dataclass(kw_only=True)
class OnlineResult(FeatureColumns):
    """Columnar answer: per output column, values, statuses, ages (ms) and default flags."""

    now_us: int
    #: output names whose columns repeat one entity's value on every row (an encoder may encode it once)
    repeated: set[str] = field(default_factory=set, repr=False, compare=False)

    def to_arrow(self):
        import pyarrow as pa

        from parity.registry.types import arrow_type

        columns, names = [], []
        for name in self.names:
            columns.append(pa.array(self.values[name], type=arrow_type(self.dtypes[name])))
            names.append(name)
            columns.append(pa.array(self.status[name], type=pa.string()).dictionary_encode())
            names.append(name + "__status")
            columns.append(pa.array(self.age_ms[name], type=pa.float64()))
            names.append(name + "__age_ms")
        return pa.Table.from_arrays(columns, names=names)


@dataclass
class Stats:
    requests: int = 0
    round_trips: int = 0
    entities: int = 0


class OnlineReader:
    """Answers lookups for one project from one Redis. ``clock()`` returns microseconds."""

    def __init__(self, client, project: str, defs: Definitions, clock: Callable[[], int] = wall_clock_us,
                 max_entities: int = 2000, cache_bytes: int = 256 << 20, cache_min_entities: int = 8):
        """``cache_bytes``: memory for the complete parts of windows kept between lookups
        (:mod:`parity.serving.tile_cache`); 0 reads every tile on every lookup. Only views
        looked up for at least ``cache_min_entities`` distinct entities use it (for one
        entity, reading its tiles costs less than the cache's extra round trip)."""
        self.client = client
        self.project = project
        self.defs = defs
        self.clock = clock
        self.max_entities = max_entities
        self.cache_min_entities = cache_min_entities
        self._read = client.register_script(READ_SCRIPT)
        self._slow = client.register_script(SLOW_SCRIPT)
        self._scripts_loaded = False
        self._window_cache: dict[tuple, tuple] = {}
        self._group_cache: dict[int, tuple] = {}
        self._layouts: dict[tuple[str, int], ViewLayout] = {}
        self._resolved: dict[Any, list[ResolvedFeature]] = {}
        self.stats = Stats()
        self.cache = TileCache(client, [entity_key(view_prefix(project, v.name, v.version), b"")
                                        for v in defs.feature_views if v.online],
                               max_bytes=cache_bytes) if cache_bytes > 0 else None

    def close(self) -> None:
        """Close the cache's tracking connection (the Redis client is the caller's)."""
        if self.cache is not None:
            self.cache.close()

    # -- public -----------------------------------------------------------------------
    def resolve(self, service: str | None = None, features: Sequence[str] | None = None) -> list[ResolvedFeature]:
        key = (service, tuple(features) if features is not None else None)
        found = self._resolved.get(key)
        if found is None:
            found = resolve(self.defs, service=service, features=features)
            offline = sorted({f"{r.view.name}@{r.view.version}" for r in found if not r.view.online})
            if offline:
                raise UnknownFeatureError(f"view(s) {', '.join(offline)} are not online (online: false)",
                                          hint="set `online: true` on the view, or request offline features "
                                               "through a training set")
            if len(self._resolved) > 1024:
                self._resolved.clear()
            self._resolved[key] = found
        return found

    def get_online_features(self, entities: Mapping[str, Sequence[Any]], *, service: str | None = None,
                            features: Sequence[str] | None = None, now: int | None = None) -> OnlineResult:
        resolved = self.resolve(service, features)
        rows = self._row_count(entities, resolved)
        now = self.clock() if now is None else int(now)
        names, groups = self._groups(resolved)
        result = OnlineResult(now_us=now, rows=rows, names=list(names))
        by_view = {key: items for key, items in groups}
        work = []
        for items in by_view.values():
            view = items[0].view
            layout = self._layout(view)
            keys = list(layout.join_keys)
            if all(len(entities[k]) == 1 for k in keys):  # e.g. the one user of a ranking request
                columns = [entities[k] for k in keys]
                span = 1
            else:
                columns = [self._column(entities, k, rows) for k in keys]
                span = rows
            encoded_rows: Sequence[int] = []
            unique: dict[bytes, int] = {}
            fast = None
            if len(keys) == 1 and layout.join_keys[keys[0]] in ("int32", "int64"):
                fast = encode_ints(layout.join_keys[keys[0]], columns[0][:span])
            for r in (() if fast is not None else range(span)):
                try:
                    code = encode_entity(layout.join_keys, [c[r] for c in columns])
                except BadRequest:
                    raise
                except ParityError as exc:
                    raise BadRequest(f"{exc} (row {r})", hint=exc.hint) from None
                encoded_rows.append(unique.setdefault(code, len(unique)))
            if fast is not None:
                unique = dict(zip(fast, range(len(fast))))
                if len(unique) == len(fast):  # all distinct (the usual ranking request): row r is entity r
                    encoded_rows = range(len(fast))
                else:
                    unique = dict.fromkeys(fast)
                    unique = dict(zip(unique, range(len(unique))))
                    encoded_rows = list(map(unique.__getitem__, fast))
            if span == 1 and rows > 1:
                encoded_rows = [0] * rows
            work.append((view, layout, items, list(unique), encoded_rows))
        splits = [self._split(layout, items, unique, now) for (_v, layout, items, unique, _r) in work]
        replies = self._fetch(work, now, splits)
        for (view, layout, items, unique, encoded_rows), (reply, part) in zip(
                work, self._complete_parts(work, splits, replies, now)):
            self._answer(view, layout, items, unique, encoded_rows, reply, part, now, result)
        self.stats.requests += 1
        self.stats.entities += rows
        return result

    def _groups(self, resolved: list[ResolvedFeature]):
        """(output names, [((view, version), items)]) of a resolved request (cached per list)."""
        key = id(resolved)
        found = self._group_cache.get(key)
        if found is None or found[0] is not resolved:
            by_view: dict[tuple[str, int], list[ResolvedFeature]] = {}
            for item in resolved:
                by_view.setdefault((item.view.name, item.view.version), []).append(item)
            found = self._group_cache[key] = (resolved, tuple(r.output_name for r in resolved),
                                              list(by_view.items()))
        return found[1], found[2]

    # -- request checks ------------------------------------------------------------------
    def _row_count(self, entities: Mapping[str, Sequence[Any]], resolved: list[ResolvedFeature]) -> int:
        if not isinstance(entities, Mapping) or not entities:
            raise BadRequest("entities must be a non-empty mapping of join key -> list of values",
                             hint='e.g. {"user_id": [1], "video_id": [10, 11]}')
        needed = {k for r in resolved for k in r.entity.join_keys}
        unknown = sorted(set(entities) - needed)
        if unknown:
            raise BadRequest(f"unknown join key(s) {', '.join(map(repr, unknown))} for these features",
                             hint="join keys used: " + ", ".join(sorted(needed)))
        missing = sorted(needed - set(entities))
        if missing:
            raise BadRequest(f"missing join key(s) {', '.join(map(repr, missing))}",
                             hint="send every join key of the requested features' entities")
        lengths = set()
        for name, values in entities.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise BadRequest(f"join key {name!r} must be a list of values")
            lengths.add(len(values))
        longest = max(lengths)
        if longest == 0:
            raise BadRequest("entity lists are empty")
        if lengths - {1, longest}:
            raise BadRequest(f"entity lists have different lengths {sorted(lengths)}",
                             hint="give every join key the same number of values (a list of 1 is broadcast)")
        if longest > self.max_entities:
            raise TooManyEntities(f"{longest} entity rows exceed the limit of {self.max_entities}",
                                  hint="split the request, or raise serving.max_entities")
        return longest

    @staticmethod
    def _column(entities: Mapping[str, Sequence[Any]], key: str, rows: int) -> Sequence[Any]:
        values = entities[key]
        return values * rows if len(values) == 1 and rows > 1 else values

    def _layout(self, view: FeatureView) -> ViewLayout:
        key = (view.name, view.version)
        if key not in self._layouts:
            self._layouts[key] = ViewLayout(self.defs, view)
        return self._layouts[key]

    # -- reading ------------------------------------------------------------------------
    def _fetch(self, work, now: int, splits: Sequence[Split | None]) -> list:
        """One pipelined round trip: an EVALSHA of the read script per view (the script is
        loaded once; redis-py's Script objects would add a SCRIPT EXISTS round trip).
        Entities whose complete part the cache keeps (``splits``) have only their tail read,
        and fresh ones (their tail's fold kept too) nothing: unless latest values are asked
        for, they are left out of the call and get the entry :data:`FRESH`."""
        import redis

        calls = []
        for (view, layout, items, unique, _rows), split in zip(work, splits):
            prefix = view_prefix(self.project, view.name, view.version)
            codes, modes, sent = unique, b"", None
            if split is not None:
                marks = np.full(len(unique), 49, np.uint8)  # '1': read all
                marks[split.hits] = 48  # '0': complete part kept
                marks[split.fresh] = 51  # '3': tail fold kept too
                marks[split.absent] = 50  # '2': known absent
                if split.fresh and not self._shape(layout, items)[2]:
                    sent = np.flatnonzero(marks != 51)
                    marks = marks[sent]
                    sent = sent.tolist()
                    codes = [unique[u] for u in sent]
                    split.skipped = True
                modes = marks.tobytes() + b"."  # never empty: the script then reads its clock
            entity = entity_key(prefix, b"")
            keys = [meta_key(prefix), *[entity + code for code in codes]]
            calls.append((keys, [*self._read_args(layout, items, prefix, now), modes,
                                 *self._tail_after(layout, items, now)], sent, len(unique)))

        def run():
            if not self._scripts_loaded:
                self.client.script_load(READ_SCRIPT)
                self.client.script_load(SLOW_SCRIPT)
                self._scripts_loaded = True
            if len(calls) == 1:  # one view: no pipeline object
                keys, args = calls[0][:2]
                return [self.client.evalsha(self._read.sha, len(keys), *keys, *args)]
            pipe = self.client.pipeline(transaction=False)
            for keys, args, _sent, _n in calls:
                pipe.evalsha(self._read.sha, len(keys), *keys, *args)
            return pipe.execute()

        try:
            try:
                replies = run()
            except redis.exceptions.NoScriptError:  # the server restarted or was flushed of scripts
                self._scripts_loaded = False  # (a restart also drops the cache's tracking connection)
                replies = run()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._scripts_loaded = False
            raise OnlineStoreUnavailable(f"online store (Redis) unreachable: {exc}",
                                         hint="check online_store.connection_string") from None
        self.stats.round_trips += 1
        for n, (_keys, _args, sent, n_unique) in enumerate(calls):
            if sent is not None:
                entries = [FRESH] * n_unique
                for u, entry in zip(sent, replies[n][1:]):
                    entries[u] = entry
                replies[n] = [replies[n][0], *entries]
        return replies

    def _tail_after(self, layout: ViewLayout, items, now: int) -> list:
        """The read script's last two arguments: the open tile's part after ``now``, where the
        next event of each tail read is looked for."""
        windows = self._shape(layout, items)[0]
        if not windows:
            return [0, -1]
        return [now, plan_for(layout, windows, now).open_start + layout.resolutions[0] - 1]

    def _split(self, layout: ViewLayout, items, unique: list[bytes], now: int) -> Split | None:
        """The cache's hits among a view's entities (None: this view's lookup is not cached)."""
        if self.cache is None or len(unique) < self.cache_min_entities:
            return None
        windows, want_complex = self._shape(layout, items)[:2]
        if not windows or want_complex:
            return None
        plan = plan_for(layout, windows, now)
        if plan.lifetime_res is not None:
            return None
        view = layout.view
        prefix = entity_key(view_prefix(self.project, view.name, view.version), b"")
        return self.cache.split(layout, prefix, windows, plan.open_start, unique, now)

    def _complete_parts(self, work, splits, replies, now: int) -> list:
        """Per view ``(reply, parts)``: the complete parts of its windows for every entity
        (kept ones from the cache, the others folded from the reply) and the open parts (kept
        tail folds of fresh hits, the others folded from the reply); what was read is offered
        to the cache. A view with a kept entity that changed meanwhile is read again in full
        (a second round trip)."""
        out: list = []
        redo = []
        synced = self.cache.sync() if any(splits) else False
        for n, ((view, layout, items, unique, _rows), split, reply) in enumerate(zip(work, splits, replies)):
            windows = self._shape(layout, items)[0]
            if not windows:
                out.append((reply, None))
                continue
            plan = plan_for(layout, windows, now)
            header, entries = reply[0], reply[1:]
            use_tail, n_life = int(header[2]), int(header[3])
            if split is not None and use_tail != 1:
                if split.skipped:  # fresh hits were left out, but their tail no longer counts: read all
                    redo.append(n)
                    out.append(None)
                    continue
                split.hits, split.fresh = [], []  # the script read them in full
            hits = split.hits if split is not None else []
            if not hits:
                out.append((reply, _parts(layout, plan, entries, use_tail, n_life, now)))
                if split is None:
                    continue
                full = range(len(entries))
                (ci, cf), (oi, of) = out[-1][1]
            else:
                hit_set = set(hits)
                full = [u for u in range(len(entries)) if u not in hit_set]
                (ci, cf), (oi, of) = fold_complete(layout, plan, [entries[u] for u in full], use_tail, n_life, now)
                oi, of = open_part(layout, entries, (np.zeros((len(entries), 0, oi.shape[2]), oi.dtype),
                                                     np.zeros((len(entries), 0, of.shape[2]), of.dtype)))
                if split.fresh:
                    oi[split.fresh, 0], of[split.fresh, 0] = split.fresh_ints, split.fresh_floats
            prefix = entity_key(view_prefix(self.project, view.name, view.version), b"")
            kept = [i for i, u in enumerate(full) if entries[u][0] == 1]
            known = set(split.absent)
            missing = [u for u in full if entries[u][0] != 1 and u not in known]
            expires = [int(entries[full[i]][5]) for i in kept]
            tails = TailFolds.read(layout, plan.open_start, entries, oi, of) if use_tail == 1 else None
            if self.cache.settle(split, synced, prefix, unique, [full[i] for i in kept], ci[kept], cf[kept],
                                 expires, missing, int(header[4]), tails):
                redo.append(n)
                if hits:
                    out.append(None)
                else:
                    out[-1] = None
                continue
            if hits:
                ci, cf = _scatter(ci, full, split.hit_ints, hits), _scatter(cf, full, split.hit_floats, hits)
                out.append((reply, ((ci, cf), (oi, of))))
        if redo:
            again = self._fetch([work[n] for n in redo], now, [None] * len(redo))
            for n, reply in zip(redo, again):
                layout, items = work[n][1], work[n][2]
                header = reply[0]
                plan = plan_for(layout, self._shape(layout, items)[0], now)
                out[n] = (reply, _parts(layout, plan, reply[1:], int(header[2]), int(header[3]), now))
        return out

    def _shape(self, layout: ViewLayout, items: list[ResolvedFeature]) -> tuple:
        """(windows, want_complex, want_latest) of a view's requested features (cached)."""
        key = (id(layout), id(items))
        found = self._window_cache.get(key)
        if found is None or found[3] is not items:
            windows: list = []
            for item in items:
                window = layout_window(layout, item)
                if window is not None and window not in windows:
                    windows.append(window)
            want_complex = any(layout_window(layout, i) is not None and _complex(layout, i) for i in items)
            want_latest = any(i.feature.window is None for i in items)
            meta = []
            latest_positions = {c.feature.name: n for n, c in enumerate(layout.latest)}
            for item in items:
                feature = item.feature
                agg = "last" if feature.window is None else feature.agg
                dtype = layout.schema.get(feature.column) if feature.column else None
                meta.append((item, item.output_name, feature, agg, output_dtype(agg, dtype),
                             latest_positions.get(feature.name), parse_duration(feature.ttl) if feature.ttl else None,
                             _complex(layout, item)))
            found = self._window_cache[key] = (tuple(windows), want_complex, want_latest, items, meta,
                                               frozenset(i.feature.name for i in items))
        return found

    def _read_args(self, layout: ViewLayout, items, prefix: bytes, now: int) -> list:
        windows, want_complex, want_latest = self._shape(layout, items)[:3]
        if windows:
            plan = plan_for(layout, windows, now)
            fields = list(plan.fields)
            open_field = plan.open_field if now > plan.open_start else b""
            life_res = plan.lifetime_res // 1_000_000 if plan.lifetime_res else 0
            life_end = plan.lifetime_end // plan.lifetime_res if plan.lifetime_res else 0
            lo, hi = plan.open_start, now - 1
        else:
            fields, open_field, life_res, life_end, lo, hi = [], b"", 0, 0, 0, -1
        return [prefix, len(fields), *fields, open_field, lo, hi, life_res, life_end,
                "1" if want_complex else "0", "1" if want_latest else "0"]

    # -- merging ------------------------------------------------------------------------
    def _answer(self, view, layout, items, unique, encoded_rows, reply, part, now, result) -> None:
        header, entries = reply[0], reply[1:]
        watermark = int(header[0]) if header[0] else None
        use_tail, n_life = int(header[2]), int(header[3])
        stale = ingestion_lag_exceeds(view, watermark, now)
        exists_list = [e[0] == 1 for e in entries]
        exists = np.array(exists_list, dtype=bool)
        windows, _wc, _wl, _items, meta, wanted = self._shape(layout, items)
        merged = None
        if windows:
            plan = plan_for(layout, windows, now)
            merged = finish_numeric(layout, plan, part[0], part[1], exists_list, now, wanted)
        complex_cache: dict[int, list] = {}
        latest_cache: list | None = None
        ages_entity = merged["age"] if merged else [None] * len(entries)
        present = "stale" if stale else "ok"
        windowed_status = [present if e else "missing" for e in exists_list]
        n = len(encoded_rows)
        identity = n == len(entries)  # entities are numbered in order of first appearance: all distinct
        single = not identity and len(entries) == 1
        spread_cache: dict[int, tuple[list, list]] = {}
        no_default = [False] * n

        def spread(column: list) -> list:
            """A per-entity column on the request's rows; one list per column object, shared by
            the features of this view (their statuses and ages are the entity's)."""
            found = spread_cache.get(id(column))
            if found is None:
                rows = column * n if single else column if identity else [column[u] for u in encoded_rows]
                found = spread_cache[id(column)] = (column, rows)  # the column is kept: its id stays unique
            return found[1]

        slow_latest: dict[int, list] | None = None
        for item, name, feature, agg, out_type, pos, ttl, is_complex in meta:
            if feature.window is None:
                values_u, status_u, age_u = [], [], []
                if latest_cache is None:
                    latest_cache = [layout.decode_complex(e[4], latest=True) if e[0] == 1 and e[4] else None
                                    for e in entries]
                for u, latest in enumerate(latest_cache):
                    partial = latest[pos] if latest else None
                    if partial is not None and partial[0][0] >= now:
                        if slow_latest is None:
                            slow_latest = self._slow_latest(view, layout, unique, entries, now, use_tail)
                        partial = last_before(slow_latest.get(u, []), pos, now, layout)
                        if partial is None:
                            values_u.append(None)
                            status_u.append("expired")
                            age_u.append(None)
                            continue
                    if partial is None:
                        values_u.append(None)
                        status_u.append("missing")
                        age_u.append(None)
                    elif not latest_is_live(partial[0][0], now, ttl):
                        values_u.append(None)
                        status_u.append("expired")
                        age_u.append((now - partial[0][0]) / 1000.0)
                    else:
                        values_u.append(partial[1])
                        status_u.append(present)
                        age_u.append((now - partial[0][0]) / 1000.0)
            else:
                if is_complex:
                    values_u = self._complex_values(layout, plan_for(layout, windows, now), item, entries, exists,
                                                    use_tail, n_life, complex_cache, now)
                else:
                    values_u = merged["values"][feature.name]
                status_u, age_u = windowed_status, ages_entity
            if out_type == "timestamp":
                values_u = [from_micros(v) if isinstance(v, int) else v for v in values_u]
            defaulted_u = None
            if feature.default is not None:
                values_u = list(values_u)
                defaulted_u = [False] * len(values_u)
                for u, st in enumerate(status_u):
                    if st in ("missing", "expired"):
                        values_u[u] = feature.default
                        defaulted_u[u] = True
            if single:  # one entity for every row (e.g. the user of a ranking request)
                result.values[name] = values_u * n
                result.repeated.add(name)
            elif identity:
                result.values[name] = values_u
            else:
                result.values[name] = [values_u[u] for u in encoded_rows]
            if identity:
                result.status[name], result.age_ms[name] = status_u, age_u
                result.defaulted[name] = no_default if defaulted_u is None else defaulted_u
            else:
                result.status[name], result.age_ms[name] = spread(status_u), spread(age_u)
                result.defaulted[name] = no_default if defaulted_u is None else spread(defaulted_u)
            result.dtypes[name] = out_type

    def _complex_values(self, layout, plan, item, entries, exists, use_tail, n_life, cache, now) -> list:
        feature = item.feature
        window = layout_window(layout, item)
        w = plan.windows.index(window)
        spec = next(c for c in layout.windowed_complex if c.feature.name == feature.name)
        pos = layout.windowed_complex.index(spec)
        n_fields = len(plan.fields)
        mask = list(plan.window_fields[w])
        out = []
        for u, entry in enumerate(entries):
            if not exists[u]:
                out.append(empty_value(spec.agg, spec.column_dtype))
                continue
            decoded = cache.get(u)
            if decoded is None:
                decoded = cache[u] = decode_complex_columns(layout, entry)
            parts = [decoded["tiles"][j][pos] for j in range(n_fields) if mask[j]]
            extra = decoded["tiles"][n_fields:]
            if not use_tail and now > plan.open_start:
                parts.append(extra[0][pos])  # the open tile's record
                extra = extra[1:]
            if plan.window_lifetime[w]:
                parts.extend(t[pos] for t in extra[:n_life])
            parts.extend(t[pos] for t in decoded["tail"])
            out.append(finalize(spec.agg, merge(spec.agg, parts, feature.k), spec.column_dtype))
        return out

    def _slow_latest(self, view, layout, unique, entries, now, use_tail) -> dict[int, list]:
        """Latest values whose newest stored event is not before ``now`` (a lookup in the
        past, or events ahead of the clock): merge the ttl cover's tiles and the tail."""
        prefix = view_prefix(self.project, view.name, view.version)
        ttl = max(parse_duration(c.feature.ttl) for c in layout.latest)
        cx = latest_cover(layout, ttl, now)
        finest = layout.resolutions[0]
        open_start = floor_to(now, finest)
        if not use_tail and now > open_start:
            cx.append(complex_field(finest, open_start))
        wanted = [u for u, e in enumerate(entries) if e[0] == 1]
        keys = [entity_key(prefix, unique[u]) for u in wanted]
        tails = {}
        if not cx or not keys:
            found = [[] for _ in keys]
        else:
            found = self._slow(keys=keys, args=cx)
        self.stats.round_trips += 1
        if use_tail:
            pipe = self.client.pipeline(transaction=False)
            for u in wanted:
                pipe.zrangebyscore(tail_key(prefix, unique[u]), open_start, now - 1)
            tails = dict(zip(wanted, pipe.execute()))
        out: dict[int, list] = {}
        for u, blobs in zip(wanted, found):
            decoded = [layout.decode_complex(b, latest=None) for b in blobs if b]
            latest_idx = [c.index for c in layout.latest]
            items = [[d[i] for i in latest_idx] for d in decoded]
            for member in tails.get(u, []):
                items.append(tail_latest(layout, member))
            out[u] = items
        return out


def layout_window(layout: ViewLayout, item: ResolvedFeature):
    return layout.windows[item.feature.name]


def _complex(layout: ViewLayout, item: ResolvedFeature) -> bool:
    return item.feature.name in layout.complex_names


def _parts(layout: ViewLayout, plan, entries, use_tail: int, n_life: int, now: int) -> tuple:
    """``((ints, floats) complete (E, W, ·), (ints, floats) open (E, 1, ·))`` of fully read entries."""
    complete, opened = fold_complete(layout, plan, entries, use_tail, n_life, now)
    return complete, open_part(layout, entries, opened)


def _scatter(fresh: np.ndarray, at: list[int], kept: np.ndarray, kept_at: list[int]) -> np.ndarray:
    out = np.empty((len(at) + len(kept_at),) + fresh.shape[1:], fresh.dtype)
    out[at] = fresh
    out[kept_at] = kept
    return out
