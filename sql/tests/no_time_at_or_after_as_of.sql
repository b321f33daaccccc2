-- no mart holds a time at or after as_of: later events never leak in
with params as (
    select * from {{ source('build_inputs', 'recsys_params') }}
),

times as (
    select 'user_category_interest' as mart, last_event_time as t from {{ ref('user_category_interest') }}
    union all
    select 'item_stats', last_event_time from {{ ref('item_stats') }}
    union all
    select 'edges_user_item', last_event_time from {{ ref('edges_user_item') }}
    union all
    select 'interest_migrations', detected_at from {{ ref('interest_migrations') }}
    union all
    select 'user_behavior_funnel', greatest(last_view_at, last_cart_at, last_fav_at, last_buy_at)
    from {{ ref('user_behavior_funnel') }}
),

gaps as (
    select 'user_recent_sequence' as mart, {{ unnest_list('seq_gap_seconds') }} as gap from {{ ref('user_recent_sequence') }}
),

final as (
    select times.mart, cast(times.t as string) as value from times cross join params
    where times.t >= params.as_of
    union all
    select mart, cast(gap as string) from gaps where gap <= 0
)

select * from final
