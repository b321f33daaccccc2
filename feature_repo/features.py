"""The feature views: user interests (two horizons), their shift, the behaviour funnel, the
recent sequence, item statistics and the learned embeddings.

Category interests are stored as top-N arrays, one online row per user (never one per user and
category), which keeps materialisation proportional to the number of users. TTLs follow the
data's clock: the exports are daily snapshots, the short horizon halves every day and the long
one every two weeks, so a row stays servable for about as long as its signal lasts.
"""

from datetime import timedelta

from data_sources import (
    category_embeddings_source,
    item_embeddings_source,
    item_stats_source,
    user_behavior_funnel_push,
    user_embeddings_source,
    user_interest_push,
    user_interest_shift_push,
    user_recent_sequence_push,
)
from entities import category, item, user
from feast import FeatureView, Field
from feast.types import Array, Bool, Float32, Float64, Int64, String

SHORT_TTL = timedelta(days=7)
LONG_TTL = timedelta(days=56)
ITEM_TTL = timedelta(days=14)
EMBEDDING_TTL = timedelta(days=365)

user_interest_short = FeatureView(
    name="user_interest_short",
    description="Top-N categories by short-horizon (24h half-life) decayed interest.",
    entities=[user],
    ttl=SHORT_TTL,
    schema=[
        Field(
            name="top_categories_short",
            dtype=Array(Int64),
            description="Category ids, highest short-horizon interest first (at most N).",
        ),
        Field(
            name="top_scores_short",
            dtype=Array(Float64),
            description="Decayed interest of each of top_categories_short, same order.",
        ),
        Field(
            name="interest_total_short",
            dtype=Float64,
            description="Sum of short-horizon interest over all the user's categories.",
        ),
    ],
    online=True,
    source=user_interest_push,
    tags={"horizon": "short", "team": "recsys"},
)

user_interest_long = FeatureView(
    name="user_interest_long",
    description="Top-N categories by long-horizon (14-day half-life) decayed interest.",
    entities=[user],
    ttl=LONG_TTL,
    schema=[
        Field(
            name="top_categories_long",
            dtype=Array(Int64),
            description="Category ids, highest long-horizon interest first (at most N).",
        ),
        Field(
            name="top_scores_long",
            dtype=Array(Float64),
            description="Decayed interest of each of top_categories_long, same order.",
        ),
        Field(
            name="interest_total_long",
            dtype=Float64,
            description="Sum of long-horizon interest over all the user's categories.",
        ),
    ],
    online=True,
    source=user_interest_push,
    tags={"horizon": "long", "team": "recsys"},
)

user_interest_shift = FeatureView(
    name="user_interest_shift",
    description="How far the user's short-horizon interests moved away from the long ones.",
    entities=[user],
    ttl=SHORT_TTL,
    schema=[
        Field(
            name="js_divergence",
            dtype=Float64,
            description="Jensen-Shannon divergence (base 2) of short vs long category shares.",
        ),
        Field(
            name="top_category_short",
            dtype=Int64,
            description="Category with the highest short-horizon interest.",
        ),
        Field(
            name="top_category_long",
            dtype=Int64,
            description="Category with the highest long-horizon interest.",
        ),
        Field(
            name="top_category_changed",
            dtype=Bool,
            description="True when top_category_short differs from top_category_long.",
        ),
        Field(
            name="novel_category_share",
            dtype=Float64,
            description="Share of short interest in categories first seen within the window.",
        ),
        Field(
            name="entropy_short",
            dtype=Float64,
            description="Shannon entropy (base 2) of the short-horizon category shares.",
        ),
        Field(
            name="entropy_long",
            dtype=Float64,
            description="Shannon entropy (base 2) of the long-horizon category shares.",
        ),
    ],
    online=True,
    source=user_interest_shift_push,
    tags={"team": "recsys"},
)

user_behavior_funnel = FeatureView(
    name="user_behavior_funnel",
    description="The user's view -> cart/fav -> buy funnel: counts, rates and recencies.",
    entities=[user],
    ttl=LONG_TTL,
    schema=[
        Field(name="n_view", dtype=Int64, description="Number of view events."),
        Field(name="n_cart", dtype=Int64, description="Number of add-to-cart events."),
        Field(name="n_fav", dtype=Int64, description="Number of favourite events."),
        Field(name="n_buy", dtype=Int64, description="Number of purchase events."),
        Field(name="cart_rate", dtype=Float64, description="n_cart / n_view (0 without views)."),
        Field(name="fav_rate", dtype=Float64, description="n_fav / n_view (0 without views)."),
        Field(name="buy_rate", dtype=Float64, description="n_buy / n_view (0 without views)."),
        Field(
            name="cart_to_buy_rate",
            dtype=Float64,
            description="n_buy / n_cart (0 without carts).",
        ),
        Field(
            name="hours_since_last_view",
            dtype=Float64,
            description="Hours from the last view to the snapshot time (null if none).",
        ),
        Field(
            name="hours_since_last_cart",
            dtype=Float64,
            description="Hours from the last add-to-cart to the snapshot time (null if none).",
        ),
        Field(
            name="hours_since_last_fav",
            dtype=Float64,
            description="Hours from the last favourite to the snapshot time (null if none).",
        ),
        Field(
            name="hours_since_last_buy",
            dtype=Float64,
            description="Hours from the last purchase to the snapshot time (null if none).",
        ),
        Field(
            name="hours_since_last_event",
            dtype=Float64,
            description="Hours from the user's last event of any kind to the snapshot time.",
        ),
    ],
    online=True,
    source=user_behavior_funnel_push,
    tags={"team": "recsys"},
)

user_recent_sequence = FeatureView(
    name="user_recent_sequence",
    description="The user's most recent events, most recent first (at most 50).",
    entities=[user],
    ttl=LONG_TTL,
    schema=[
        Field(
            name="seq_item_ids",
            dtype=Array(Int64),
            description="Item ids of the recent events, most recent first.",
        ),
        Field(
            name="seq_category_ids",
            dtype=Array(Int64),
            description="Category ids of the recent events, same order.",
        ),
        Field(
            name="seq_behaviors",
            dtype=Array(String),
            description="Behaviours (view, cart, fav, buy) of the recent events, same order.",
        ),
        Field(
            name="seq_gap_seconds",
            dtype=Array(Float64),
            description="Seconds from each event to the snapshot time, same order.",
        ),
        Field(name="seq_len", dtype=Int64, description="Length of the sequence arrays."),
    ],
    online=True,
    source=user_recent_sequence_push,
    tags={"team": "recsys"},
)

item_stats = FeatureView(
    name="item_stats",
    description="Item popularity (decayed, two horizons), funnel counts and trend.",
    entities=[item],
    ttl=ITEM_TTL,
    schema=[
        Field(name="category_id", dtype=Int64, description="The item's category."),
        Field(
            name="pop_short",
            dtype=Float64,
            description="Behaviour-weighted popularity decayed with the short half-life.",
        ),
        Field(
            name="pop_long",
            dtype=Float64,
            description="Behaviour-weighted popularity decayed with the long half-life.",
        ),
        Field(name="n_view", dtype=Int64, description="Number of view events on the item."),
        Field(name="n_cart", dtype=Int64, description="Number of add-to-cart events."),
        Field(name="n_fav", dtype=Int64, description="Number of favourite events."),
        Field(name="n_buy", dtype=Int64, description="Number of purchase events."),
        Field(name="n_users", dtype=Int64, description="Distinct users who touched the item."),
        Field(name="cart_rate", dtype=Float64, description="n_cart / n_view (0 without views)."),
        Field(name="buy_rate", dtype=Float64, description="n_buy / n_view (0 without views)."),
        Field(
            name="trend",
            dtype=Float64,
            description="pop_short relative to pop_long: > 0 when the item is heating up.",
        ),
        Field(
            name="hours_since_last_event",
            dtype=Float64,
            description="Hours from the item's last event to the snapshot time.",
        ),
    ],
    online=True,
    source=item_stats_source,
    tags={"team": "recsys"},
)

user_embedding = FeatureView(
    name="user_embedding",
    description="Learned user embedding (query tower / GNN), written back by the models.",
    entities=[user],
    ttl=EMBEDDING_TTL,
    schema=[
        Field(
            name="embedding",
            dtype=Array(Float32),
            description="The user's embedding vector, shape [d].",
        ),
    ],
    online=True,
    source=user_embeddings_source,
    tags={"team": "recsys", "filled_by": "models"},
)

item_embedding = FeatureView(
    name="item_embedding",
    description="Learned item embedding (candidate tower / GNN), written back by the models.",
    entities=[item],
    ttl=EMBEDDING_TTL,
    schema=[
        Field(
            name="embedding",
            dtype=Array(Float32),
            description="The item's embedding vector, shape [d].",
        ),
    ],
    online=True,
    source=item_embeddings_source,
    tags={"team": "recsys", "filled_by": "models"},
)

category_embedding = FeatureView(
    name="category_embedding",
    description="Learned category embedding (GNN readout), written back by the models.",
    entities=[category],
    ttl=EMBEDDING_TTL,
    schema=[
        Field(
            name="embedding",
            dtype=Array(Float32),
            description="The category's embedding vector, shape [d].",
        ),
    ],
    online=True,
    source=category_embeddings_source,
    tags={"team": "recsys", "filled_by": "models"},
)
