-- every event before as_of is counted once in each mart that counts events (nothing lost)
with params as (
    select * from {{ source('build_inputs', 'recsys_params') }}
),

expected as (
    select count(*) as n from {{ source('warehouse', 'events') }} as events cross join params where events.event_time < params.as_of
),

counted as (
    select 'user_category_interest' as mart, sum(n_events) as n from {{ ref('user_category_interest') }}
    union all
    select 'user_behavior_funnel', sum(n_view + n_cart + n_fav + n_buy) from {{ ref('user_behavior_funnel') }}
    union all
    select 'item_stats', sum(n_view + n_cart + n_fav + n_buy) from {{ ref('item_stats') }}
    union all
    select 'edges_user_item', sum(n_events) from {{ ref('edges_user_item') }}
),

final as (
    select counted.mart, counted.n, expected.n as expected
    from counted cross join expected
    where counted.n is distinct from expected.n
)

select * from final
