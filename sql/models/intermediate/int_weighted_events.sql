-- one row per event before as_of, with its decayed weight at the short and long half-lives
with events as (
    select * from {{ ref('stg_events') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

final as (
    select
        events.*,
        events.behavior_weight
        * pow(2.0, -events.age_seconds / params.short_half_life_seconds) as score_short,
        events.behavior_weight
        * pow(2.0, -events.age_seconds / params.long_half_life_seconds) as score_long
    from events
    cross join params
)

select * from final
