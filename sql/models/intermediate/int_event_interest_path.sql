-- one row per event before as_of in the first migration_max_category_age of the user's history
-- in its category, describing the category in the user's history up to the event: short
-- interest share right after it, long interest share right before it, when the user first
-- touched the category, and how many of the user's events since then were in it.
-- int_category_entries computes these from the events up to each one; the events before as_of
-- are a prefix of each user's history there.
with entries as (
    select * from {{ ref('int_category_entries') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

final as (
    select
        entries.user_id,
        entries.category_id,
        entries.event_time,
        entries.user_event_number,
        entries.category_first_event_time,
        entries.category_events,
        entries.user_events_since_category_first,
        entries.share_short_after,
        entries.share_long_before
    from entries
    cross join params
    where entries.event_time < params.as_of
)

select * from final
