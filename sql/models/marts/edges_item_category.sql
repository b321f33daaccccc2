-- one row per item_id
-- The item's category on its latest event (ties: the larger category_id).
with events as (
    select * from {{ ref('stg_events') }}
),

final as (
    select
        item_id,
        max_by(category_id, (event_time, category_id)) as category_id
    from events
    group by item_id
)

select * from final
