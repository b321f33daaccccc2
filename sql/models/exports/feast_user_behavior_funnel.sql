-- one row per user_id: user_behavior_funnel at as_of with times as hours before it (null when the
-- user never did that behaviour), for user_behavior_funnel.parquet
with funnel as (
    select * from {{ as_of('user_behavior_funnel') }}
),

final as (
    select
        user_id,
        as_of as event_timestamp,
        n_view,
        n_cart,
        n_fav,
        n_buy,
        cart_rate,
        fav_rate,
        buy_rate,
        cart_to_buy_rate,
        ({{ epoch_us('as_of') }} - {{ epoch_us('last_view_at') }})
        / 3.6e9 as hours_since_last_view,
        ({{ epoch_us('as_of') }} - {{ epoch_us('last_cart_at') }})
        / 3.6e9 as hours_since_last_cart,
        ({{ epoch_us('as_of') }} - {{ epoch_us('last_fav_at') }})
        / 3.6e9 as hours_since_last_fav,
        ({{ epoch_us('as_of') }} - {{ epoch_us('last_buy_at') }})
        / 3.6e9 as hours_since_last_buy,
        hours_since_last_event
    from funnel
)

select * from final
