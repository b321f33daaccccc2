"""The frozen configuration of the feature layer, shared by the SQL marts and the online updater."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FeatureConfig:
    """Parameters of the behavioural features, shared by the SQL marts and the online updater.

    The online updater and the SQL marts must agree to 1e-6, so both read these values from here
    (the warehouse gets them as the ``recsys_params`` and ``behavior_weights`` tables).
    """

    short_half_life_hours: float = 24.0
    long_half_life_hours: float = 14 * 24.0
    behavior_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "fav": 2.0, "cart": 3.0, "buy": 4.0}
    )
    session_gap_minutes: float = 30.0
    # 100, not 50: on the Taobao sample's validation days (2017-12-01 and -02) a user's last
    # 100 events rank their own items as well as the whole history (NDCG@20 0.120 and 0.128 vs
    # 0.119 and 0.128), the last 50 do not (0.119 and 0.124).
    recent_sequence_length: int = 100
    top_categories: int = 20
    # A category counts as "new to the user" when the user's first event in it falls inside
    # this window before the as-of time.
    novelty_window_hours: float = 24.0
