-- every event's behaviour has a weight, so no event drops out of the weighted marts
with final as (
    select events.behavior, count(*) as n
    from {{ source('warehouse', 'events') }} as events
    anti join {{ source('build_inputs', 'behavior_weights') }} as behavior_weights on behavior_weights.behavior = events.behavior
    group by events.behavior
)

select * from final
