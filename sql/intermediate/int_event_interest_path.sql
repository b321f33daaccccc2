-- one row per event before as_of, describing the event's category in the user's history up to
-- the event: short interest share right after it, long interest share right before it, when the
-- user first touched the category, and how many of the user's events since then were in it.
-- Masses are decayed towards the user's first event rather than as_of, so a row depends only on
-- the events up to it (never on as_of); the common factor cancels in every share. This stays
-- finite while a user's history spans fewer than ~1000 short half-lives (2.7 years at 24 h).
with events as (
    select * from int_ordered_events
),

params as (
    select * from stg_params
),

first_events as (
    select
        user_id,
        min(event_time) as first_event_time
    from events
    group by user_id
),

anchored as (
    select
        events.user_id,
        events.category_id,
        events.event_time,
        events.user_event_number,
        (epoch_us(events.event_time) - epoch_us(first_events.first_event_time)) / 1e6
            as seconds_since_first_event,
        events.behavior_weight
    from events
    inner join first_events on first_events.user_id = events.user_id
),

masses as (
    select
        anchored.*,
        anchored.behavior_weight
        * pow(2.0, anchored.seconds_since_first_event / params.short_half_life_seconds)
            as mass_short,
        anchored.behavior_weight
        * pow(2.0, anchored.seconds_since_first_event / params.long_half_life_seconds)
            as mass_long
    from anchored
    cross join params
),

cumulative as (
    select
        masses.*,
        min(masses.event_time) over by_user_category as category_first_event_time,
        min(masses.user_event_number) over by_user_category as category_first_event_number,
        count(*) over by_user_category as category_events,
        sum(masses.mass_short) over by_user_category as category_mass_short,
        sum(masses.mass_long) over by_user_category as category_mass_long,
        sum(masses.mass_short) over by_user as user_mass_short,
        sum(masses.mass_long) over by_user as user_mass_long
    from masses
    window
        by_user_category as (
            partition by masses.user_id, masses.category_id
            order by masses.user_event_number
            rows between unbounded preceding and current row
        ),
        by_user as (
            partition by masses.user_id
            order by masses.user_event_number
            rows between unbounded preceding and current row
        )
),

final as (
    select
        cumulative.user_id,
        cumulative.category_id,
        cumulative.event_time,
        cumulative.user_event_number,
        cumulative.category_first_event_time,
        cumulative.category_events,
        cumulative.user_event_number - cumulative.category_first_event_number + 1
            as user_events_since_category_first,
        cumulative.category_mass_short / cumulative.user_mass_short as share_short_after,
        (cumulative.category_mass_long - cumulative.mass_long)
        / nullif(cumulative.user_mass_long - cumulative.mass_long, 0) as share_long_before
    from cumulative
)

select * from final
