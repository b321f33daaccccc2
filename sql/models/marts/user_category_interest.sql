-- one row per user_id, category_id
-- Behaviour-weighted interest decayed to as_of: sum(weight * 2^(-(as_of - t) / half_life)).
-- Shares are null for a user whose decayed total underflows to 0 (no event within ~1000
-- half-lives of as_of).
with events as (
    select * from {{ ref('int_weighted_events') }}
),

per_category as (
    select
        user_id,
        category_id,
        sum(score_short) as interest_short,
        sum(score_long) as interest_long,
        count(*) as n_events,
        min(event_time) as first_event_time,
        max(event_time) as last_event_time,
        any_value(as_of) as as_of
    from events
    group by user_id, category_id
),

final as (
    select
        user_id,
        category_id,
        interest_short,
        interest_long,
        interest_short
        / nullif(sum(interest_short) over (partition by user_id), 0) as share_short,
        interest_long
        / nullif(sum(interest_long) over (partition by user_id), 0) as share_long,
        n_events,
        first_event_time,
        last_event_time,
        as_of
    from per_category
)

select * from final
