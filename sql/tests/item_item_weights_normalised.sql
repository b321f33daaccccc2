-- transition weights out of each source item sum to 1, and there are no self-loops
with totals as (
    select src_item_id, sum(weight) as total, bool_or(src_item_id = dst_item_id) as has_loop
    from {{ ref('edges_item_item') }}
    group by src_item_id
),

final as (
    select * from totals where abs(total - 1) > 1e-9 or has_loop
)

select * from final
