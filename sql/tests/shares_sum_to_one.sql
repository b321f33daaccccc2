-- each user's short and long interest shares sum to 1
with totals as (
    select user_id, sum(share_short) as short_total, sum(share_long) as long_total
    from {{ ref('user_category_interest') }}
    group by user_id
),

final as (
    select * from totals
    where abs(short_total - 1) > 1e-9 or abs(long_total - 1) > 1e-9
)

select * from final
