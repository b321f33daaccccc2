-- category_transitions has one row per src_category_id, dst_category_id
with final as (
    select src_category_id, dst_category_id, count(*) as n
    from {{ ref('category_transitions') }}
    group by src_category_id, dst_category_id
    having count(*) > 1
)

select * from final
