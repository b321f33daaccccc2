-- one row per user_id
-- The user's last recent_sequence_length events, most recent first; gaps are as_of - event_time
-- in seconds, so they never decrease along the arrays.
with events as (
    select * from int_ordered_events
),

params as (
    select * from stg_params
),

recent as (
    select
        events.user_id,
        events.item_id,
        events.category_id,
        events.behavior,
        events.age_seconds,
        events.user_event_number
    from events
    cross join params
    qualify row_number() over (
        partition by events.user_id
        order by events.user_event_number desc
    ) <= params.recent_sequence_length
),

final as (
    select
        user_id,
        list(item_id order by user_event_number desc) as seq_item_ids,
        list(category_id order by user_event_number desc) as seq_category_ids,
        list(behavior order by user_event_number desc) as seq_behaviors,
        list(age_seconds order by user_event_number desc) as seq_gap_seconds,
        count(*) as seq_len
    from recent
    group by user_id
)

select * from final
