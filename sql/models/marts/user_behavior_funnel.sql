-- one row per user_id
-- Rates are over distinct items: cart_rate = items viewed and carted / items viewed (fav_rate and
-- buy_rate alike), cart_to_buy_rate = items carted and bought / items carted; null without a base.
with events as (
    select * from {{ ref('stg_events') }}
),

per_item as (
    select
        user_id,
        item_id,
        count(*) filter (where behavior = 'view') as n_view,
        count(*) filter (where behavior = 'cart') as n_cart,
        count(*) filter (where behavior = 'fav') as n_fav,
        count(*) filter (where behavior = 'buy') as n_buy,
        max(event_time) filter (where behavior = 'view') as last_view_at,
        max(event_time) filter (where behavior = 'cart') as last_cart_at,
        max(event_time) filter (where behavior = 'fav') as last_fav_at,
        max(event_time) filter (where behavior = 'buy') as last_buy_at,
        max(event_time) as last_event_time,
        any_value(as_of) as as_of
    from events
    group by user_id, item_id
),

per_user as (
    select
        user_id,
        cast(sum(n_view) as bigint) as n_view,
        cast(sum(n_cart) as bigint) as n_cart,
        cast(sum(n_fav) as bigint) as n_fav,
        cast(sum(n_buy) as bigint) as n_buy,
        count(*) filter (where n_view > 0) as items_viewed,
        count(*) filter (where n_cart > 0) as items_carted,
        count(*) filter (where n_view > 0 and n_cart > 0) as items_viewed_carted,
        count(*) filter (where n_view > 0 and n_fav > 0) as items_viewed_faved,
        count(*) filter (where n_view > 0 and n_buy > 0) as items_viewed_bought,
        count(*) filter (where n_cart > 0 and n_buy > 0) as items_carted_bought,
        max(last_view_at) as last_view_at,
        max(last_cart_at) as last_cart_at,
        max(last_fav_at) as last_fav_at,
        max(last_buy_at) as last_buy_at,
        max(last_event_time) as last_event_time,
        any_value(as_of) as as_of
    from per_item
    group by user_id
),

final as (
    select
        user_id,
        n_view,
        n_cart,
        n_fav,
        n_buy,
        items_viewed_carted / nullif(items_viewed, 0) as cart_rate,
        items_viewed_faved / nullif(items_viewed, 0) as fav_rate,
        items_viewed_bought / nullif(items_viewed, 0) as buy_rate,
        items_carted_bought / nullif(items_carted, 0) as cart_to_buy_rate,
        last_view_at,
        last_cart_at,
        last_fav_at,
        last_buy_at,
        ({{ epoch_us('as_of') }} - {{ epoch_us('last_event_time') }})
        / 3.6e9 as hours_since_last_event,
        as_of
    from per_user
)

select * from final
