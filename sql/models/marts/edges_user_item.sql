-- one row per user_id, item_id, behavior
-- weight is the long-horizon decayed behaviour weight: sum(weight * 2^(-(as_of - t) / long)).
with events as (
    select * from {{ ref('int_weighted_events') }}
),

final as (
    select
        user_id,
        item_id,
        behavior,
        sum(score_long) as weight,
        count(*) as n_events,
        max(event_time) as last_event_time
    from events
    group by user_id, item_id, behavior
)

select * from final
