-- one row per event strictly before as_of, with its behaviour weight and age at as_of
with source as (
    select * from {{ source('warehouse', 'events') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

weights as (
    select * from {{ ref('stg_behavior_weights') }}
),

final as (
    select
        source.user_id,
        source.item_id,
        source.category_id,
        source.behavior,
        source.event_time,
        source.session_id,
        weights.weight as behavior_weight,
        -- microsecond integers keep the age exact before the division
        ({{ epoch_us('params.as_of') }} - {{ epoch_us('source.event_time') }})
        / 1e6 as age_seconds,
        params.as_of
    from source
    cross join params
    inner join weights on weights.behavior = source.behavior
    where source.event_time < params.as_of
)

select * from final
