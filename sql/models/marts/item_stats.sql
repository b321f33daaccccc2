-- one row per item_id
-- pop_* are decayed behaviour-weighted popularity; cart_rate and buy_rate are the shares of the
-- item's users who carted / bought it; trend = (pop_short / short half-life) / (pop_long / long
-- half-life), 1 for a steady stream of events, above 1 when the item is heating up.
with events as (
    select * from {{ ref('int_weighted_events') }}
),

categories as (
    select * from {{ as_of('edges_item_category') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

per_user_item as (
    select
        item_id,
        user_id,
        sum(score_short) as pop_short,
        sum(score_long) as pop_long,
        count(*) filter (where behavior = 'view') as n_view,
        count(*) filter (where behavior = 'cart') as n_cart,
        count(*) filter (where behavior = 'fav') as n_fav,
        count(*) filter (where behavior = 'buy') as n_buy,
        max(event_time) as last_event_time
    from events
    group by item_id, user_id
),

per_item as (
    select
        item_id,
        sum(pop_short) as pop_short,
        sum(pop_long) as pop_long,
        cast(sum(n_view) as bigint) as n_view,
        cast(sum(n_cart) as bigint) as n_cart,
        cast(sum(n_fav) as bigint) as n_fav,
        cast(sum(n_buy) as bigint) as n_buy,
        count(*) as n_users,
        count(*) filter (where n_cart > 0) as users_carted,
        count(*) filter (where n_buy > 0) as users_bought,
        max(last_event_time) as last_event_time
    from per_user_item
    group by item_id
),

final as (
    select
        per_item.item_id,
        categories.category_id,
        per_item.pop_short,
        per_item.pop_long,
        per_item.n_view,
        per_item.n_cart,
        per_item.n_fav,
        per_item.n_buy,
        per_item.n_users,
        per_item.users_carted / per_item.n_users as cart_rate,
        per_item.users_bought / per_item.n_users as buy_rate,
        (per_item.pop_short / params.short_half_life_seconds)
        / nullif(per_item.pop_long / params.long_half_life_seconds, 0) as trend,
        per_item.last_event_time
    from per_item
    inner join categories on categories.item_id = per_item.item_id
    cross join params
)

select * from final
