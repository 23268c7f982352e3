"""The example definitions: both front ends give equal models; references and output names."""

from __future__ import annotations

import pytest

from parity.registry.loader import load_definitions, object_key
from parity.registry.models import FeatureRef
from defs_fixtures import ROOT


def _by_key(loaded):
    defs = loaded.definitions
    return {object_key(o): o for section in ("entities", "sources", "feature_views", "feature_services")
            for o in getattr(defs, section)}


def test_yaml_and_python_front_ends_build_equal_models():
    from_yaml = _by_key(load_definitions(ROOT / "feature_defs"))
    from_python = _by_key(load_definitions(ROOT / "docs/examples/python_defs"))
    assert set(from_yaml) == set(from_python)
    for key, obj in from_yaml.items():
        assert obj == from_python[key], key
    # the example is the one the issue describes
    views = {k[1] for k in from_yaml if k[0] == "view"}
    assert views == {"user_engagement", "user_profile", "video_engagement", "video_safety", "creator_follows"}
    assert {k[1] for k in from_yaml if k[0] == "service"} == {"home_feed_ranking", "safety_screen"}


def test_home_feed_ranking_has_at_least_30_features_from_3_views():
    defs = load_definitions(ROOT / "feature_defs").definitions
    service = defs.service("home_feed_ranking")
    refs = [FeatureRef.parse(text) for text in service.features]
    expanded = [(r.view, f.name) for r in refs for f in defs.view(r.view).features if r.feature in ("*", f.name)]
    assert len(expanded) >= 30
    assert len({view for view, _ in expanded}) >= 3


@pytest.mark.parametrize("text, view, feature, version, output", [
    ("user_engagement:plays_1h", "user_engagement", "plays_1h", None, "user_engagement__plays_1h"),
    ("user_engagement@2:plays_1h", "user_engagement", "plays_1h", 2, "user_engagement__v2__plays_1h"),
    ("user_engagement@v3:plays_1h", "user_engagement", "plays_1h", 3, "user_engagement__v3__plays_1h"),
    ("video_safety:*", "video_safety", "*", None, "video_safety__*"),
])
def test_feature_references_and_output_names(text, view, feature, version, output):
    ref = FeatureRef.parse(text)
    assert (ref.view, ref.feature, ref.version) == (view, feature, version)
    assert ref.output_name == output


@pytest.mark.parametrize("text", ["plays_1h", "user_engagement:", ":plays", "User:plays", "a:b:c", "v@x:f", ""])
def test_bad_feature_references_are_refused(text):
    with pytest.raises(ValueError, match="bad feature reference"):
        FeatureRef.parse(text)


def test_models_are_frozen_and_forbid_unknown_fields():
    from pydantic import ValidationError

    from parity.registry.models import Entity

    entity = Entity(name="user", join_keys={"user_id": "int64"})
    with pytest.raises(ValidationError):
        entity.name = "other"
    with pytest.raises(ValidationError, match="extra"):
        Entity(name="user", join_keys={"user_id": "int64"}, colour="red")
