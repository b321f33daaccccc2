-- one row per item_id: item_stats at as_of with last_event_time as hours before it, for
-- item_stats.parquet
with stats as (
    select * from {{ as_of('item_stats') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

final as (
    select
        stats.item_id,
        params.as_of as event_timestamp,
        stats.category_id,
        stats.pop_short,
        stats.pop_long,
        stats.n_view,
        stats.n_cart,
        stats.n_fav,
        stats.n_buy,
        stats.n_users,
        stats.cart_rate,
        stats.buy_rate,
        stats.trend,
        ({{ epoch_us('params.as_of') }} - {{ epoch_us('stats.last_event_time') }}) / 3.6e9
            as hours_since_last_event
    from stats
    cross join params
)

select * from final
