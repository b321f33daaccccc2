"""Feature services: the exact feature sets each model version trains and serves with.

Services that mix user and item views share feature names (n_view, cart_rate, ...), so they are
always read with full feature names (``<view>__<feature>``).
"""

from feast import FeatureService
from features import (
    category_embedding,
    item_embedding,
    item_stats,
    user_behavior_funnel,
    user_embedding,
    user_interest_long,
    user_interest_shift,
    user_interest_short,
    user_recent_sequence,
)

QUERY_VIEWS = [
    user_interest_short,
    user_interest_long,
    user_interest_shift,
    user_behavior_funnel,
    user_recent_sequence,
]

user_profile_v1 = FeatureService(
    name="user_profile_v1",
    features=QUERY_VIEWS,
    description="Everything known about one user: interests, shift, funnel, recent events.",
    tags={"side": "query"},
)

two_tower_v1_query = FeatureService(
    name="two_tower_v1_query",
    features=QUERY_VIEWS,
    description="Query-tower inputs of the two-tower retrieval model v1.",
    tags={"model": "two_tower", "version": "v1", "side": "query"},
)

two_tower_v1_candidate = FeatureService(
    name="two_tower_v1_candidate",
    features=[item_stats],
    description="Candidate-tower inputs of the two-tower retrieval model v1.",
    tags={"model": "two_tower", "version": "v1", "side": "candidate"},
)

two_tower_v1 = FeatureService(
    name="two_tower_v1",
    features=[*QUERY_VIEWS, item_stats],
    description="Training rows of the two-tower model v1: query-side and candidate-side.",
    tags={"model": "two_tower", "version": "v1"},
)

gnn_v1 = FeatureService(
    name="gnn_v1",
    features=[
        user_interest_short,
        user_interest_long,
        user_interest_shift,
        user_behavior_funnel,
        item_stats,
    ],
    description="Node features of the user-item graph model v1 (users and items).",
    tags={"model": "gnn", "version": "v1"},
)

embeddings_v1 = FeatureService(
    name="embeddings_v1",
    features=[user_embedding, item_embedding, category_embedding],
    description="Learned user, item and category embeddings for retrieval and serving.",
    tags={"model": "embeddings", "version": "v1"},
)
