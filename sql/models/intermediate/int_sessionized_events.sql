-- one row per event before as_of, assigned a session and the previous item of its session.
-- Events keep their source session_id; events without one are cut into sessions wherever the
-- gap to the user's previous session-less event exceeds the session gap (int_event_stream flags
-- where and links each event to the previous item of its session).
with events as (
    select * from {{ ref('int_ordered_events') }}
),

final as (
    select
        events.user_id,
        events.item_id,
        events.category_id,
        events.behavior,
        events.event_time,
        events.session_id,
        events.user_event_number,
        case
            when events.session_id is not null then 'source:' || events.session_id
            else 'gap:' || sum(cast(events.starts_gap_session as integer)) over (
                partition by events.user_id
                order by events.user_event_number
                rows between unbounded preceding and current row
            )
        end as session_key,
        events.previous_item_in_session
    from events
)

select * from final
