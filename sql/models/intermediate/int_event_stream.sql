-- one row per event of the whole history (every event, whatever as_of): its place in the user's
-- total order, its session link and the user's interest masses up to it.
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    pre_hook="{{ restart_late_users() }}",
) }}
-- Built once, then extended by each build, because every column depends only on the event and
-- the user's earlier events: the events before any as_of are a prefix of each user's order (time
-- comes first), so `where event_time < as_of` on this table equals computing it from them.
-- One total order per user (time, then behavior name, item, category) so that ties in
-- event_time resolve the same way in every model; behavior_rank is the name's place in text
-- order, so sorting numbers gives the same order as sorting names.
-- Interest masses are decayed towards the user's first event rather than as_of, so they never
-- depend on as_of; the common factor cancels in every share. This stays finite while a user's
-- history spans fewer than ~1000 short half-lives (2.7 years at 24 h).
-- Incremental builds append the rows of newly ingested events (ingested_at after the latest
-- here): each user's order, running masses and session links continue from the user's last rows
-- (state, session_tails), which is the recursion s <- s * 2^(-dt/h) + w in a frame that does not
-- move with as_of. A user with a new event at or before their last row here (a late event) is
-- deleted first (macros/restart_late_users.sql) and recomputed from all their events, like every
-- user of a full build (`recsys build --full`).
with events as (
    select * from {{ source('warehouse', 'events') }}
),

{% if is_incremental() %}
new_events as (
    select * from events
    where ingested_at > (select coalesce(max(ingested_at), '-infinity') from {{ this }})
),

-- per streamed user with new events and source session: the session's last row here
session_tails as (
    select
        streamed.user_id,
        streamed.session_id,
        max(streamed.user_event_number) as last_event_number,
        max_by(streamed.item_id, streamed.user_event_number) as last_item_id,
        max(streamed.event_time) as last_event_time,
        max_by(streamed.behavior, streamed.user_event_number) as last_behavior,
        max_by(streamed.user_mass_short, streamed.user_event_number) as last_mass_short,
        max_by(streamed.user_mass_long, streamed.user_event_number) as last_mass_long,
        min(streamed.event_time) as first_event_time
    from {{ this }} as streamed
    semi join new_events on new_events.user_id = streamed.user_id
    group by streamed.user_id, streamed.session_id
),

-- where each streamed user's order and running masses continue
state as (
    select
        user_id,
        max(last_event_number) as last_event_number,
        max_by(last_mass_short, last_event_number) as last_mass_short,
        max_by(last_mass_long, last_event_number) as last_mass_long,
        min(first_event_time) as first_event_time
    from session_tails
    group by user_id
),

-- the new events of streamed users, and every event of new (or restarted) users
source as (
    select new_events.*, false as is_tail
    from new_events
    semi join state on state.user_id = new_events.user_id
    union all
    select events.*, false as is_tail
    from events
    semi join (select user_id from new_events anti join state using (user_id)) as fresh
        on fresh.user_id = events.user_id
    -- each session's last streamed event, so that the first new event of the session links to
    -- it; it adds nothing to the counts and masses, and is dropped at the end
    union all by name
    select
        session_tails.user_id,
        session_tails.last_item_id as item_id,
        session_tails.last_behavior as behavior,
        session_tails.last_event_time as event_time,
        session_tails.session_id,
        true as is_tail
    from session_tails
),
{% else %}
source as (
    select events.*, false as is_tail from events
),
{% endif %}

weights as (
    select
        behavior,
        weight,
        row_number() over (order by behavior) as behavior_rank
    from {{ ref('stg_behavior_weights') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

weighted as (
    select
        source.user_id,
        source.item_id,
        source.category_id,
        source.event_time,
        source.session_id,
        source.ingested_at,
        source.is_tail,
        -- partitions on a 64-bit number sort faster than on text; two session ids of one user
        -- collide with odds ~ sessions^2 / 2^65
        {{ hash64('source.session_id') }} as session_hash,
        -- a tail weighs nothing: it only links its session
        case when source.is_tail then 0.0 else weights.weight end as behavior_weight,
        weights.behavior_rank
    from source
    inner join weights on weights.behavior = source.behavior
),

{% if is_incremental() %}
first_events as (
    select
        weighted.user_id,
        coalesce(any_value(state.first_event_time), min(weighted.event_time))
            as first_event_time,
        coalesce(any_value(state.last_event_number), 0) as last_event_number,
        coalesce(any_value(state.last_mass_short), 0.0) as last_mass_short,
        coalesce(any_value(state.last_mass_long), 0.0) as last_mass_long
    from weighted
    left join state on state.user_id = weighted.user_id
    group by weighted.user_id
),
{% else %}
first_events as (
    select
        user_id,
        min(event_time) as first_event_time,
        0 as last_event_number,
        0.0 as last_mass_short,
        0.0 as last_mass_long
    from weighted
    group by user_id
),
{% endif %}

masses as (
    select
        weighted.*,
        first_events.last_event_number,
        first_events.last_mass_short,
        first_events.last_mass_long,
        (
            {{ epoch_us('weighted.event_time') }}
            - {{ epoch_us('first_events.first_event_time') }}
        ) / 1e6
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
        {{ star_except('masses', ['seconds_since_first_event']) }},
        {% if is_incremental() -%}
        masses.last_event_number
        + sum(case when masses.is_tail then 0 else 1 end) over by_user as user_event_number,
        {%- else -%}
        row_number() over by_user as user_event_number,
        {%- endif %}
        masses.last_mass_short + sum(masses.mass_short) over by_user as user_mass_short,
        masses.last_mass_long + sum(masses.mass_long) over by_user as user_mass_long,
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
        cast(ordered.user_event_number as bigint) as user_event_number,
        -- an event without a session_id starts a gap session after a gap over the session gap
        ordered.session_id is null
        and (
            ordered.previous_time_in_source_session is null
            or (
                {{ epoch_us('ordered.event_time') }}
                - {{ epoch_us('ordered.previous_time_in_source_session') }}
            )
            / 1e6 > params.session_gap_seconds
        ) as starts_gap_session,
        case
            when ordered.session_id is not null
                then ordered.previous_item_in_source_session
            when ordered.previous_time_in_source_session is null then null
            when (
                {{ epoch_us('ordered.event_time') }}
                - {{ epoch_us('ordered.previous_time_in_source_session') }}
            )
            / 1e6 > params.session_gap_seconds then null
            else ordered.previous_item_in_source_session
        end as previous_item_in_session,
        ordered.mass_short,
        ordered.mass_long,
        ordered.user_mass_short,
        ordered.user_mass_long,
        ordered.ingested_at
    from ordered
    inner join weights on weights.behavior_rank = ordered.behavior_rank
    cross join params
    where not ordered.is_tail
)

select * from final
