-- one row per user_id
-- The user's last recent_sequence_length events, most recent first; gaps are as_of - event_time
-- in seconds, so they never decrease along the arrays.
with events as (
    select * from int_ordered_events
),

params as (
    select * from stg_params
),

-- the events before as_of are numbered 1..n in each user's order, so the last ones are those
-- above n - length: a hash join instead of sorting every event again
counts as (
    select
        user_id,
        max(user_event_number) as n_events
    from events
    group by user_id
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
    inner join counts on counts.user_id = events.user_id
    cross join params
    where events.user_event_number > counts.n_events - params.recent_sequence_length
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
