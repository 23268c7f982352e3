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

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from parity.errors import ParityError
from parity.registry.durations import floor_to, from_micros, parse_duration
from parity.registry.models import Definitions, FeatureView
from parity.registry.online.keys import complex_field, encode_entity, entity_key, meta_key, tail_key, view_prefix
from parity.registry.online.layout import ViewLayout
from parity.registry.online.writer import OnlineStoreUnavailable, wall_clock_us
from parity.registry.partials import finalize, merge
from parity.registry.resolve import ResolvedFeature, UnknownFeatureError, resolve
from parity.registry.semantics import empty_value, ingestion_lag_exceeds, latest_is_live, output_dtype
from parity.serving.merge import decode_complex_columns, last_before, merge_numeric, tail_latest
from parity.serving.read_plan import latest_cover, plan_for
from parity.serving.result import FeatureColumns

READ_SCRIPT = r"""
local prefix = ARGV[1]
local nf = tonumber(ARGV[2])
local fields = {}
for j = 1, nf do fields[j] = ARGV[2 + j] end
local i = 3 + nf
local open_field, tail_lo, tail_hi = ARGV[i], ARGV[i + 1], ARGV[i + 2]
local life_res, life_end = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
local want_complex, want_latest = ARGV[i + 5] == '1', ARGV[i + 6] == '1'
local meta = redis.call('HMGET', KEYS[1], 'watermark', 'tail_from', 'min_ts')
local use_tail = 0
if open_field ~= '' and (not meta[2] or tonumber(tail_lo) >= tonumber(meta[2])) then use_tail = 1 end
local read = {}
for j = 1, nf do read[j] = fields[j] end
if open_field ~= '' and use_tail == 0 then read[#read + 1] = open_field end
local n_life = 0
if life_res > 0 and meta[3] then
  local first = math.floor(tonumber(meta[3]) / (life_res * 1000000))
  for idx = first, life_end - 1 do read[#read + 1] = life_res .. ':' .. idx; n_life = n_life + 1 end
end
local cx = {}
if want_complex then for j = 1, #read do cx[j] = read[j] .. 'x' end end
local out = {{meta[1] or false, meta[2] or false, use_tail, n_life}}
for k = 2, #KEYS do
  local h = KEYS[k]
  local entry = {redis.call('EXISTS', h)}
  if entry[1] == 1 then
    local present = {}
    if #read > 0 then
      local vals = redis.call('HMGET', h, unpack(read))
      for j = 1, #read do
        if vals[j] then present[#present + 1] = j; present[#present + 1] = vals[j] end
      end
    end
    entry[2] = present
    if use_tail == 1 then
      entry[3] = redis.call('ZRANGEBYSCORE', prefix .. 't:' .. string.sub(h, #prefix + 3), tail_lo, tail_hi)
    else
      entry[3] = {}
    end
    if want_complex and #cx > 0 then entry[4] = redis.call('HMGET', h, unpack(cx)) else entry[4] = {} end
    if want_latest then entry[5] = redis.call('HGET', h, 'L') or false else entry[5] = false end
  end
  out[#out + 1] = entry
end
return out
"""

SLOW_SCRIPT = r"""
local out = {}
for k = 1, #KEYS do out[k] = redis.call('HMGET', KEYS[k], unpack(ARGV)) end
return out
"""

STATUSES = ("ok", "missing", "expired", "stale")


class BadRequest(ParityError):
    """The request is malformed (unknown key, wrong type, length mismatch, too many rows)."""


class TooManyEntities(BadRequest):
    """More entity rows than ``serving.max_entities``."""


@dataclass(kw_only=True)
class OnlineResult(FeatureColumns):
    """Columnar answer: per output column, values, statuses, ages (ms) and default flags."""

    now_us: int

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
                 max_entities: int = 2000):
        self.client = client
        self.project = project
        self.defs = defs
        self.clock = clock
        self.max_entities = max_entities
        self._read = client.register_script(READ_SCRIPT)
        self._slow = client.register_script(SLOW_SCRIPT)
        self._scripts_loaded = False
        self._window_cache: dict[tuple, tuple] = {}
        self._group_cache: dict[int, tuple] = {}
        self._layouts: dict[tuple[str, int], ViewLayout] = {}
        self._resolved: dict[Any, list[ResolvedFeature]] = {}
        self.stats = Stats()

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
            encoded_rows = []
            unique: dict[bytes, int] = {}
            for r in range(span):
                try:
                    code = encode_entity(layout.join_keys, [c[r] for c in columns])
                except BadRequest:
                    raise
                except ParityError as exc:
                    raise BadRequest(f"{exc} (row {r})", hint=exc.hint) from None
                encoded_rows.append(unique.setdefault(code, len(unique)))
            if span == 1 and rows > 1:
                encoded_rows = encoded_rows * rows
            work.append((view, layout, items, list(unique), encoded_rows))
        replies = self._fetch(work, now)
        for (view, layout, items, unique, encoded_rows), reply in zip(work, replies):
            self._answer(view, layout, items, unique, encoded_rows, reply, now, result)
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
    def _fetch(self, work, now: int) -> list:
        """One pipelined round trip: an EVALSHA of the read script per view (the script is
        loaded once; redis-py's Script objects would add a SCRIPT EXISTS round trip)."""
        import redis

        def run():
            if not self._scripts_loaded:
                self.client.script_load(READ_SCRIPT)
                self.client.script_load(SLOW_SCRIPT)
                self._scripts_loaded = True
            pipe = self.client.pipeline(transaction=False)
            for view, layout, items, unique, _rows in work:
                prefix = view_prefix(self.project, view.name, view.version)
                keys = [meta_key(prefix)] + [entity_key(prefix, code) for code in unique]
                pipe.evalsha(self._read.sha, len(keys), *keys, *self._read_args(layout, items, prefix, now))
            return pipe.execute()

        try:
            try:
                replies = run()
            except redis.exceptions.NoScriptError:  # the server restarted or was flushed of scripts
                self._scripts_loaded = False
                replies = run()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._scripts_loaded = False
            raise OnlineStoreUnavailable(f"online store (Redis) unreachable: {exc}",
                                         hint="check online_store.connection_string") from None
        self.stats.round_trips += 1
        return replies

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
    def _answer(self, view, layout, items, unique, encoded_rows, reply, now, result) -> None:
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
            merged = merge_numeric(layout, plan, entries, exists_list, use_tail, n_life, now, wanted)
        complex_cache: dict[int, list] = {}
        latest_cache: list | None = None
        ages_entity = merged["age"] if merged else [None] * len(entries)
        present = "stale" if stale else "ok"
        windowed_status = [present if e else "missing" for e in exists_list]
        identity = len(encoded_rows) == len(entries) and all(u == r for r, u in enumerate(encoded_rows))
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
            if identity:
                result.values[name] = values_u
                result.status[name] = status_u
                result.age_ms[name] = age_u
                result.defaulted[name] = defaulted_u if defaulted_u is not None else [False] * len(values_u)
            else:
                result.values[name] = [values_u[u] for u in encoded_rows]
                result.status[name] = [status_u[u] for u in encoded_rows]
                result.age_ms[name] = [age_u[u] for u in encoded_rows]
                result.defaulted[name] = ([defaulted_u[u] for u in encoded_rows] if defaulted_u is not None
                                          else [False] * len(encoded_rows))
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


