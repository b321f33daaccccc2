"""A user's online features as one typed profile, read straight from the Feast provider.

``FeatureStore.get_online_features`` resolves the feature service from the registry and builds
pandas/arrow frames on every call. ``OnlineProfileReader`` resolves the service's views once and
calls the provider's ``online_read`` with the entity key, which returns the same values (a test
checks it against ``recsys.features.store.online_features``) in a fraction of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from recsys.features.store import PROFILE_SERVICE

SEQUENCE_FIELDS = ("seq_item_ids", "seq_category_ids", "seq_behaviors", "seq_gap_seconds")


@dataclass(frozen=True)
class UserProfile:
    """One user's current features.

    ``features`` is the flat ``{"<view>__<feature>": value}`` row of the profile service (what a
    trained query tower or ranker reads); the other fields are the parts the service uses
    itself. Lists are most-important / most-recent first; ``as_of`` is the newest row time.
    """

    user_id: int
    as_of: datetime | None
    features: dict[str, Any]

    @cached_property
    def _by_name(self) -> dict[str, Any]:
        return {key.split("__", 1)[1]: value for key, value in self.features.items()}

    def get(self, name: str, default: Any = None) -> Any:
        """A feature by its short name (``top_categories_short``), whatever its view."""
        value = self._by_name.get(name)
        return default if value is None else value

    @cached_property
    def short_interests(self) -> list[tuple[int, float]]:
        return list(
            zip(self.get("top_categories_short", []), self.get("top_scores_short", []), strict=True)
        )

    @cached_property
    def long_interests(self) -> list[tuple[int, float]]:
        return list(
            zip(self.get("top_categories_long", []), self.get("top_scores_long", []), strict=True)
        )

    @cached_property
    def sequence(self) -> list[tuple[int, int, str, float]]:
        """Recent events (item_id, category_id, behavior, gap_seconds), most recent first."""
        columns = [self.get(name, []) for name in SEQUENCE_FIELDS]
        return list(zip(*columns, strict=True))

    @cached_property
    def purchased(self) -> set[int]:
        """Items bought within the recent sequence (what ``exclude_purchased`` removes)."""
        return {item for item, _, behavior, _ in self.sequence if behavior == "buy"}


def _naive_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


class OnlineProfileReader:
    """Reads ``UserProfile``\\s of one feature service from an open ``FeatureStore``.

    ``profile_from_rows`` turns the rows an ``OnlineUpdater`` just pushed into the same profile
    without reading them back.
    """

    def __init__(self, store: Any, service: str = PROFILE_SERVICE) -> None:
        feature_service = store.get_feature_service(service)
        self.store = store
        self.provider = store._get_provider()
        self.views = [
            (store.get_feature_view(p.name), [f.name for f in p.features])
            for p in feature_service.feature_view_projections
        ]

    def read(self, user_id: int) -> UserProfile | None:
        """The user's profile, or None when the online store holds nothing for the user."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user_id)])
        features: dict[str, Any] = {}
        stamps: list[datetime] = []
        for view, names in self.views:
            [(stamp, values)] = self.provider.online_read(
                self.store.config, view, [key], requested_features=names
            )
            values = values or {}
            if values:
                stamps.append(_naive_utc(stamp))
            for name in names:
                value = values.get(name)
                features[f"{view.name}__{name}"] = (
                    None if value is None else feast_value_type_to_python_type(value)
                )
        if not stamps:
            return None
        return UserProfile(user_id=user_id, as_of=max(stamps), features=features)

    def profile_from_rows(self, user_id: int, rows: dict[str, dict[str, Any]]) -> UserProfile:
        """The profile made of pushed rows (keyed by push source, as ``UpdateResult.rows``)."""
        features = {
            f"{view.name}__{name}": rows[view.stream_source.name][name]
            for view, names in self.views
            for name in names
        }
        stamps = [row["event_timestamp"] for row in rows.values()]
        return UserProfile(user_id=user_id, as_of=max(stamps), features=features)

    def ping(self) -> None:
        """One read of one view: raises when the online store is unreachable."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=0)])
        view, names = self.views[0]
        self.provider.online_read(self.store.config, view, [key], requested_features=names[:1])
