"""The entities of the recsys feature repo: who and what features describe."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A shopper, keyed by the warehouse's user_id.",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="A catalogue item, keyed by the warehouse's item_id.",
)

category = Entity(
    name="category",
    join_keys=["category_id"],
    value_type=ValueType.INT64,
    description="An item category (-1 when the source has none).",
)
