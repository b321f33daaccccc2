-- one row per event before as_of, assigned a session and the previous item of its session.
-- Events keep their source session_id; events without one are cut into sessions wherever the
-- gap to the user's previous session-less event exceeds the session gap.
with events as (
    select * from int_ordered_events
),

params as (
    select * from stg_params
),

previous as (
    select
        events.*,
        -- times only grow along user_event_number, so the running max is the previous one
        max(case when events.session_id is null then events.event_time end) over (
            partition by events.user_id
            order by events.user_event_number
            rows between unbounded preceding and 1 preceding
        ) as previous_sessionless_time
    from events
),

gap_flags as (
    select
        previous.*,
        case
            when previous.session_id is not null then 0
            when previous.previous_sessionless_time is null then 1
            when (epoch_us(previous.event_time) - epoch_us(previous.previous_sessionless_time))
                / 1e6 > params.session_gap_seconds then 1
            else 0
        end as starts_gap_session
    from previous
    cross join params
),

keyed as (
    select
        gap_flags.* exclude (previous_sessionless_time, starts_gap_session),
        case
            when gap_flags.session_id is not null then 'source:' || gap_flags.session_id
            else 'gap:' || sum(gap_flags.starts_gap_session) over (
                partition by gap_flags.user_id
                order by gap_flags.user_event_number
                rows between unbounded preceding and current row
            )
        end as session_key
    from gap_flags
),

final as (
    select
        keyed.*,
        lag(keyed.item_id) over (
            partition by keyed.user_id, keyed.session_key
            order by keyed.user_event_number
        ) as previous_item_in_session
    from keyed
)

select * from final
