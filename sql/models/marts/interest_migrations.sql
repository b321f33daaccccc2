-- one row per user_id, detected_at
-- A migration into category C is detected at an event in C when, counting the user's events up to
-- it: the user has an established history (more than migration_min_history_events events before
-- first touching C), C is new (first touched at most migration_max_category_age before), C held
-- less than migration_max_long_share of the long-horizon interest just before, C has at least
-- migration_min_category_events events, and at least migration_min_purity of the user's events
-- since first touching C were in C. Repeats for the same user and category within the cooldown are
-- one migration. from_category_id is the user's top long-horizon category just before the
-- detection; strength is C's short-horizon share at detection. Each row depends only on events up
-- to detected_at, so a build as of T holds exactly the detections before T.
with path as (
    select * from {{ ref('int_event_interest_path') }}
),

events as (
    select * from {{ ref('int_ordered_events') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

flagged as (
    select path.*
    from path
    cross join params
    where
        path.user_event_number - path.user_events_since_category_first
        >= params.migration_min_history_events
        and (
            {{ epoch_us('path.event_time') }} - {{ epoch_us('path.category_first_event_time') }}
        )
        / 1e6
        <= params.migration_max_category_age_seconds
        and path.share_long_before < params.migration_max_long_share
        and path.category_events >= params.migration_min_category_events
        and path.category_events
        >= params.migration_min_purity * path.user_events_since_category_first
),

first_of_run as (
    select
        flagged.*,
        lag(flagged.event_time) over (
            partition by flagged.user_id, flagged.category_id
            order by flagged.user_event_number
        ) as previous_flag_time
    from flagged
),

run_starts as (
    select
        first_of_run.user_id,
        first_of_run.category_id as to_category_id,
        first_of_run.event_time as detected_at,
        first_of_run.user_event_number,
        first_of_run.share_short_after as strength,
        -- two categories can cross at one instant; the later event in the user's order wins
        row_number() over (
            partition by first_of_run.user_id, first_of_run.event_time
            order by first_of_run.user_event_number desc
        ) as instant_rank
    from first_of_run
    cross join params
    where
        first_of_run.previous_flag_time is null
        or (
            {{ epoch_us('first_of_run.event_time') }}
            - {{ epoch_us('first_of_run.previous_flag_time') }}
        )
        / 1e6
        > params.migration_cooldown_seconds
),

-- a filter on the window, not `qualify`, which Spark 3.5 lacks
detections as (
    select user_id, to_category_id, detected_at, user_event_number, strength
    from run_starts
    where instant_rank = 1
),

prior_interest as (
    select
        detections.user_id,
        detections.detected_at,
        events.category_id,
        -- decayed to detected_at, the long-horizon interest before the detecting event
        sum(
            events.behavior_weight * pow(
                2.0,
                -(
                    {{ epoch_us('detections.detected_at') }} - {{ epoch_us('events.event_time') }}
                )
                / 1e6
                / params.long_half_life_seconds
            )
        ) as interest_long
    from detections
    inner join events
        on
            events.user_id = detections.user_id
            and events.user_event_number < detections.user_event_number
    cross join params
    group by detections.user_id, detections.detected_at, events.category_id
),

prior_top as (
    select
        user_id,
        detected_at,
        max_by(category_id, (interest_long, -category_id)) as from_category_id
    from prior_interest
    group by user_id, detected_at
),

final as (
    select
        detections.user_id,
        prior_top.from_category_id,
        detections.to_category_id,
        detections.detected_at,
        detections.strength
    from detections
    inner join prior_top
        on
            prior_top.user_id = detections.user_id
            and prior_top.detected_at = detections.detected_at
    where prior_top.from_category_id <> detections.to_category_id
)

select * from final
