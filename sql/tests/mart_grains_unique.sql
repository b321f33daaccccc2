-- every mart has one row per its grain (the first-line comment of each mart)
with duplicates as (
    select 'user_category_interest' as mart, count(*) as n
    from {{ ref('user_category_interest') }} group by user_id, category_id having count(*) > 1
    union all
    select 'user_interest_shift', count(*) from {{ ref('user_interest_shift') }}
    group by user_id having count(*) > 1
    union all
    select 'interest_migrations', count(*) from {{ ref('interest_migrations') }}
    group by user_id, detected_at having count(*) > 1
    union all
    select 'user_behavior_funnel', count(*) from {{ ref('user_behavior_funnel') }}
    group by user_id having count(*) > 1
    union all
    select 'user_recent_sequence', count(*) from {{ ref('user_recent_sequence') }}
    group by user_id having count(*) > 1
    union all
    select 'item_stats', count(*) from {{ ref('item_stats') }} group by item_id having count(*) > 1
    union all
    select 'edges_user_item', count(*) from {{ ref('edges_user_item') }}
    group by user_id, item_id, behavior having count(*) > 1
    union all
    select 'edges_item_item', count(*) from {{ ref('edges_item_item') }}
    group by src_item_id, dst_item_id having count(*) > 1
    union all
    select 'edges_item_category', count(*) from {{ ref('edges_item_category') }}
    group by item_id having count(*) > 1
),

final as (
    select * from duplicates
)

select * from final
