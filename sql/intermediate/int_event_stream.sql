-- one row per event of the whole history (every event, whatever as_of): its place in the user's
-- total order, its session link and the user's interest masses up to it.
-- materialized: table
-- Computed once per build, because every column depends only on the event and the user's
-- earlier events: the events before any as_of are a prefix of each user's order (time comes
-- first), so `where event_time < as_of` on this table equals computing it from those events.
-- One total order per user (time, then behavior name, item, category) so that ties in
-- event_time resolve the same way in every model; behavior_rank is the name's place in text
-- order, so sorting numbers gives the same order as sorting names.
-- Interest masses are decayed towards the user's first event rather than as_of, so they never
-- depend on as_of; the common factor cancels in every share. This stays finite while a user's
-- history spans fewer than ~1000 short half-lives (2.7 years at 24 h).
with source as (
    select * from events
),

weights as (
    select
        behavior,
        weight,
        row_number() over (order by behavior) as behavior_rank
    from stg_behavior_weights
),

params as (
    select * from stg_params
),

weighted as (
    select
        source.user_id,
        source.item_id,
        source.category_id,
        source.event_time,
        source.session_id,
        -- partitions on a 64-bit number sort faster than on text; two session ids of one user
        -- collide with odds ~ sessions^2 / 2^65
        hash(source.session_id) as session_hash,
        weights.weight as behavior_weight,
        weights.behavior_rank
    from source
    inner join weights on weights.behavior = source.behavior
),

first_events as (
    select
        user_id,
        min(event_time) as first_event_time
    from weighted
    group by user_id
),

masses as (
    select
        weighted.*,
        (epoch_us(weighted.event_time) - epoch_us(first_events.first_event_time)) / 1e6
            as seconds_since_first_event,
        weighted.behavior_weight
        * pow(2.0, seconds_since_first_event / params.short_half_life_seconds) as mass_short,
        weighted.behavior_weight
        * pow(2.0, seconds_since_first_event / params.long_half_life_seconds) as mass_long
    from weighted
    inner join first_events on first_events.user_id = weighted.user_id
    cross join params
),

-- one sort per window: the user's order, and the order within each source session (events
-- without a session_id share one partition per user, whose lag is the previous such event)
ordered as (
    select
        masses.* exclude (seconds_since_first_event),
        row_number() over by_user as user_event_number,
        sum(masses.mass_short) over by_user as user_mass_short,
        sum(masses.mass_long) over by_user as user_mass_long,
        lag(masses.item_id) over by_source_session as previous_item_in_source_session,
        lag(masses.event_time) over by_source_session as previous_time_in_source_session
    from masses
    window
        by_user as (
            partition by masses.user_id
            order by
                masses.event_time, masses.behavior_rank, masses.item_id, masses.category_id
            rows between unbounded preceding and current row
        ),
        by_source_session as (
            partition by masses.user_id, masses.session_hash
            order by
                masses.event_time, masses.behavior_rank, masses.item_id, masses.category_id
        )
),

final as (
    select
        ordered.user_id,
        ordered.item_id,
        ordered.category_id,
        weights.behavior,
        ordered.event_time,
        ordered.session_id,
        ordered.behavior_weight,
        ordered.user_event_number,
        -- an event without a session_id starts a gap session after a gap over the session gap
        ordered.session_id is null
        and (
            ordered.previous_time_in_source_session is null
            or (
                epoch_us(ordered.event_time)
                - epoch_us(ordered.previous_time_in_source_session)
            )
            / 1e6 > params.session_gap_seconds
        ) as starts_gap_session,
        case
            when ordered.session_id is not null
                then ordered.previous_item_in_source_session
            when ordered.previous_time_in_source_session is null then null
            when (
                epoch_us(ordered.event_time)
                - epoch_us(ordered.previous_time_in_source_session)
            )
            / 1e6 > params.session_gap_seconds then null
            else ordered.previous_item_in_source_session
        end as previous_item_in_session,
        ordered.mass_short,
        ordered.mass_long,
        ordered.user_mass_short,
        ordered.user_mass_long
    from ordered
    inner join weights on weights.behavior_rank = ordered.behavior_rank
    cross join params
)

select * from final
