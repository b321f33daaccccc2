-- every event's behaviour has a weight, so no event drops out of the weighted marts
with final as (
    select events.behavior, count(*) as n
    from events
    anti join behavior_weights on behavior_weights.behavior = events.behavior
    group by events.behavior
)

select * from final
