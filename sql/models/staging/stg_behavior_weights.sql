-- one row per behavior: its weight in interest and popularity scores
with weights as (
    select * from {{ source('build_inputs', 'behavior_weights') }}
),

final as (
    select
        behavior,
        weight
    from weights
)

select * from final
