-- one row per event before as_of, numbered 1..n in the user's history.
-- One total order per user (time, then behavior, item, category) so that ties in event_time
-- resolve the same way in every model.
with events as (
    select * from int_weighted_events
),

final as (
    select
        events.*,
        row_number() over (
            partition by events.user_id
            order by events.event_time, events.behavior, events.item_id, events.category_id
        ) as user_event_number
    from events
)

select * from final
