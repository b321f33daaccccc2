-- one row per event before as_of, describing the event's category in the user's history up to
-- the event: short interest share right after it, long interest share right before it, when the
-- user first touched the category, and how many of the user's events since then were in it.
-- int_event_stream computes these from the events up to each one, so a row never depends on
-- as_of.
with events as (
    select * from int_ordered_events
),

final as (
    select
        user_id,
        category_id,
        event_time,
        user_event_number,
        category_first_event_time,
        category_events,
        user_events_since_category_first,
        share_short_after,
        share_long_before
    from events
)

select * from final
