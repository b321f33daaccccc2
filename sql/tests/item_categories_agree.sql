-- item_stats and edges_item_category give each item the same category, and cover the same items
with final as (
    select
        coalesce(stats.item_id, edges.item_id) as item_id,
        stats.category_id as stats_category,
        edges.category_id as edge_category
    from {{ ref('item_stats') }} as stats
    full outer join {{ ref('edges_item_category') }} as edges on edges.item_id = stats.item_id
    where stats.category_id is distinct from edges.category_id
)

select * from final
