-- one row per event in the first migration_max_category_age of a user's history in a category
-- (the event's "entry" into the category): the category's place in the user's history up to
-- the event, which the migration detector reads. Only these events can detect a migration (the
-- category must be new), and they are ~1/5 of all, so the per-category order is sorted for them
-- only. All earlier events of the category fall in the same entry, so the running counts and
-- masses over the entry equal those over the whole history.
{{ config(materialized='table') }}
-- As int_event_stream: every column depends only on the event and the user's earlier events.
with events as (
    select * from {{ ref('int_event_stream') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

category_firsts as (
    select
        user_id,
        category_id,
        min(event_time) as category_first_event_time,
        min(user_event_number) as category_first_event_number
    from events
    group by user_id, category_id
),

entries as (
    select
        events.user_id,
        events.category_id,
        events.event_time,
        events.user_event_number,
        events.mass_short,
        events.mass_long,
        events.user_mass_short,
        events.user_mass_long,
        category_firsts.category_first_event_time,
        category_firsts.category_first_event_number
    from events
    inner join category_firsts
        on
            category_firsts.user_id = events.user_id
            and category_firsts.category_id = events.category_id
    cross join params
    where
        (
            {{ epoch_us('events.event_time') }}
            - {{ epoch_us('category_firsts.category_first_event_time') }}
        )
        / 1e6
        <= params.migration_max_category_age_seconds
),

running as (
    select
        entries.*,
        row_number() over by_user_category as category_events,
        sum(entries.mass_short) over by_user_category as category_mass_short,
        sum(entries.mass_long) over by_user_category as category_mass_long
    from entries
    window
        by_user_category as (
            partition by entries.user_id, entries.category_id
            order by entries.user_event_number
            rows between unbounded preceding and current row
        )
),

final as (
    select
        user_id,
        category_id,
        event_time,
        user_event_number,
        category_first_event_time,
        category_events,
        user_event_number - category_first_event_number + 1 as user_events_since_category_first,
        category_mass_short / user_mass_short as share_short_after,
        (category_mass_long - mass_long)
        / nullif(user_mass_long - mass_long, 0) as share_long_before
    from running
)

select * from final
