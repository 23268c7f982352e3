"""The short-video example of feature_defs/, written with the Python front end.

tests/test_definitions.py loads this file and the YAML files and asserts the models are equal.
"""

from parity.registry.dsl import (
    Count, Entity, FeatureService, FeatureView, Kafka, LastK, Latest, Mean, OfflineLog, Snapshot, Source, Sum,
)

user = Entity(name="user", join_keys={"user_id": "int64"}, description="A viewer of the home feed.")
video = Entity(name="video", join_keys={"video_id": "int64"}, description="An uploaded short video.")
creator = Entity(name="creator", join_keys={"creator_id": "int64"}, description="The account that uploaded videos.")

video_events = Source(
    name="video_events",
    description="Every interaction of a user with a video in the feed.",
    schema={"event_id": "string", "user_id": "int64", "video_id": "int64", "creator_id": "int64",
            "event_type": "string", "watch_ms": "int64", "completion": "float64", "ts": "timestamp"},
    timestamp_field="ts",
    kafka=Kafka(topic="video_events"),
    offline_log=OfflineLog(path="video_events"),
    max_future="5m",
)
follow_events = Source(
    name="follow_events",
    description="A user follows a creator.",
    schema={"event_id": "string", "follower_id": "int64", "creator_id": "int64", "ts": "timestamp"},
    timestamp_field="ts",
    kafka=Kafka(topic="follow_events"),
    offline_log=OfflineLog(path="follow_events"),
)
user_profile_source = Source(
    name="user_profile",
    kind="snapshot",
    description="Daily snapshot of user profiles.",
    schema={"user_id": "int64", "country": "string", "language": "string", "age_bucket": "string",
            "signup_ts": "timestamp", "updated_at": "timestamp"},
    timestamp_field="updated_at",
    snapshot=Snapshot(path="data/user_profile/*.parquet"),
)

PLAY = "event_type = 'play'"

user_engagement = FeatureView(
    name="user_engagement", version=1, entity="user", source="video_events", owner="ranking@short.video",
    description="What a user watched recently, for home-feed ranking.", tags={"team": "ranking"},
    freshness_slo="1m",
    features=[
        Sum("watch_ms_1h", column="watch_ms", window="1h", where=PLAY),
        Sum("watch_ms_24h", column="watch_ms", window="24h", where=PLAY),
        Sum("watch_ms_7d", column="watch_ms", window="7d", where=PLAY),
        Count("plays_1h", window="1h", where=PLAY),
        Count("plays_24h", window="24h", where=PLAY),
        Count("plays_7d", window="7d", where=PLAY),
        Mean("completion_mean_24h", column="completion", window="24h", where=PLAY),
        Mean("completion_mean_7d", column="completion", window="7d", where=PLAY),
        Count("skips_1h", window="1h", where="event_type = 'skip'"),
        Count("plays_10m", window="10m", where=PLAY),
        Count("likes_24h", window="24h", where="event_type = 'like'"),
        Count("shares_7d", window="7d", where="event_type = 'share'"),
        LastK("last_watched_videos", column="video_id", k=20, window="7d",
              where="event_type = 'play' AND completion >= 0.5",
              description="The 20 most recent videos watched past half-way, newest first."),
    ],
)

user_profile = FeatureView(
    name="user_profile", version=1, entity="user", source="user_profile", owner="growth@short.video",
    description="Slow-moving profile attributes.", online=True,
    features=[Latest(name, column=name, ttl="30d") for name in ("country", "language", "age_bucket", "signup_ts")],
)

video_engagement = FeatureView(
    name="video_engagement", version=1, entity="video", source="video_events", owner="ranking@short.video",
    description="How a video performs right now, for ranking and trending.", tags={"team": "ranking"},
    freshness_slo="30s",
    derived={"completed": "CASE WHEN completion >= 0.9 THEN 1 ELSE 0 END"},
    features=[
        *[Count(f"{what}s_{window}", window=window, where=f"event_type = '{what}'")
          for what in ("play", "like", "share") for window in ("10m", "1h", "24h")],
        Sum("completions_24h", column="completed", window="24h", where=PLAY),
        Mean("watch_ms_mean_24h", column="watch_ms", window="24h", where=PLAY),
        Count("skips_1h", window="1h", where="event_type = 'skip'"),
    ],
)

video_safety = FeatureView(
    name="video_safety", version=1, entity="video", source="video_events", owner="trust-safety@short.video",
    description="Abuse reports on a video; the safety screen fails closed when stale.", tags={"team": "safety"},
    freshness_slo="30s",
    features=[
        Count("reports_10m", window="10m", where="event_type = 'report'"),
        Count("reports_1h", window="1h", where="event_type = 'report'"),
        LastK("reporters_last", column="user_id", k=10, window="1h", where="event_type = 'report'"),
    ],
)

creator_follows = FeatureView(
    name="creator_follows", version=1, entity="creator", source="follow_events", owner="ranking@short.video",
    description="Follows a creator gained recently.", freshness_slo="5m",
    features=[Count("follows_24h", window="24h"), Count("follows_7d", window="7d"),
              Count("follows_lifetime", window="lifetime")],
)

home_feed_ranking = FeatureService(
    name="home_feed_ranking",
    description="Everything the home-feed ranker reads for 1 user and its candidate videos.",
    owner="ranking@short.video",
    features=["user_engagement:*", "user_profile:*", "video_engagement:*",
              "creator_follows:follows_24h", "creator_follows:follows_7d"],
)
safety_screen = FeatureService(
    name="safety_screen",
    description="Report signals the safety screen checks before a video is shown.",
    owner="trust-safety@short.video",
    features=["video_safety:reports_10m", "video_safety:reports_1h", "video_safety:reporters_last",
              "video_engagement:plays_1h"],
)
