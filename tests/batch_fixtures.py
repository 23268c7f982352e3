"""Shared definitions and random-event strategies for the batch engine tests."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
from hypothesis import strategies as st

from parity.registry.models import Definitions, Entity, Feature, FeatureView, Source
from parity.registry.resolve import resolve

BASE = datetime(2026, 1, 10, 10, 0, 0)

SOURCE = Source(name="ev", schema={"user_id": "int64", "kind": "string", "amount": "int64", "score": "float64",
                                   "ts": "timestamp"}, timestamp_field="ts")


def F(name, agg, **kw):
    return Feature(name=name, agg=agg, **kw)


VIEWS = [
    FeatureView(name="u", entity="user", source="ev", owner="t", derived={"big": "amount >= 50", "twice": "amount * 2"},
                features=[
        F("n_10m", "count", window="10m"),
        F("amount_a_1h", "sum", column="amount", window="1h", where="kind = 'a'"),
        F("score_sum_1h", "sum", column="score", window="1h"),
        F("score_mean_24h", "mean", column="score", window="24h"),
        F("amount_min_7d", "min", column="amount", window="7d", where="big OR kind IS NULL"),
        F("score_max_30d", "max", column="score", window="30d"),
        F("kind_last_1h", "last", column="kind", window="1h"),
        F("amount_last3_1h", "last_k", column="amount", k=3, window="1h"),
        F("amounts_nonnull_12h", "count", column="amount", window="12h"),
        F("n_lifetime", "count", window="lifetime"),
        # integer means and sums of derived columns: running totals in event-time mode
        F("amount_mean_24h", "mean", column="amount", window="24h", where="kind != 'a'"),
        F("twice_sum_7d", "sum", column="twice", window="7d", where="big"),
        F("amount_sum_lifetime", "sum", column="amount", window="lifetime", where="kind IS NULL"),
        F("kind_latest", "last", column="kind", ttl="2h"),
        F("score_latest", "last", column="score", ttl="30m"),
    ]),
    FeatureView(name="o", entity="user", source="ev", owner="t", hops={"1h": "1m"}, features=[
        F("n_1h_1m", "count", window="1h", where="kind != 'b'"),
        F("amount_max_1h", "max", column="amount", window="1h"),
    ]),
]
DEFS = Definitions(entities=[Entity(name="user", join_keys={"user_id": "int64"})], sources=[SOURCE],
                   feature_views=VIEWS)
RESOLVED = resolve(DEFS, features=["u:*", "o:*"])
MICRO = timedelta(microseconds=1)

# timestamps cluster on a few values so ties and boundary hits are common
offsets = st.one_of(
    st.integers(min_value=-2 * 86400, max_value=3 * 86400).map(lambda s: timedelta(seconds=s)),
    st.sampled_from([timedelta(0), timedelta(minutes=5), timedelta(hours=1), timedelta(days=1),
                     timedelta(minutes=5) - MICRO, timedelta(hours=1, microseconds=1)]),
    st.integers(min_value=0, max_value=10**6).map(lambda us: timedelta(microseconds=us)),
)


@st.composite
def events(draw):
    n = draw(st.integers(min_value=0, max_value=30))
    rows = []
    orders = draw(st.permutations(list(range(n))))
    for i in range(n):
        ts = BASE + draw(offsets)
        ingest_lag = draw(st.one_of(st.just(timedelta(0)), st.integers(-300, 7200).map(lambda s: timedelta(seconds=s))))
        ingested = ts + ingest_lag
        landed = draw(st.booleans())
        applied = None if landed else ingested + draw(st.sampled_from([timedelta(0), timedelta(milliseconds=200),
                                                                       timedelta(minutes=7), timedelta(hours=3)]))
        rows.append({
            "user_id": draw(st.sampled_from([1, 2, 3])),
            "kind": draw(st.sampled_from(["a", "b", None])),
            "amount": draw(st.one_of(st.none(), st.integers(-100, 100))),
            "score": draw(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3)))),
            "ts": ts,
            "_ingested_at": ingested,
            "_applied_at": applied,
            "_partition": -1 if landed else draw(st.sampled_from([0, 1])),
            "_offset": orders[i],
        })
    return rows


@st.composite
def spines(draw, rows):
    n = draw(st.integers(min_value=1, max_value=12))
    times = [r["ts"] for r in rows] + [r["ts"] + MICRO for r in rows]
    out = []
    for _ in range(n):
        if times and draw(st.booleans()):
            t = draw(st.sampled_from(times))
        else:
            t = BASE + draw(offsets)
        out.append({"user_id": draw(st.sampled_from([1, 2, 3, 4, None])), "ts": t, "label": draw(st.integers(0, 1))})
    return out


EVENT_SCHEMA = pa.schema([("user_id", pa.int64()), ("kind", pa.string()), ("amount", pa.int64()),
                          ("score", pa.float64()), ("ts", pa.timestamp("us")), ("_ingested_at", pa.timestamp("us")),
                          ("_applied_at", pa.timestamp("us")), ("_partition", pa.int32()), ("_offset", pa.int64())])
