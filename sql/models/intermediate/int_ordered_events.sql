-- one row per event before as_of, numbered 1..n in the user's history, with its age at as_of.
-- The order, sessions and interest path come from the materialised int_event_stream; the
-- events before as_of are a prefix of each user's order there.
with events as (
    select * from {{ ref('int_event_stream') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

final as (
    select
        events.*,
        -- microsecond integers keep the age exact before the division
        ({{ epoch_us('params.as_of') }} - {{ epoch_us('events.event_time') }})
        / 1e6 as age_seconds,
        params.as_of
    from events
    cross join params
    where events.event_time < params.as_of
)

select * from final
