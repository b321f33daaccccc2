-- with a shorter short half-life, every event's short decay is at most its long decay, so short
-- scores never exceed long scores
with params as (
    select * from {{ source('build_inputs', 'recsys_params') }} where short_half_life_seconds <= long_half_life_seconds
),

violations as (
    select 'user_category_interest' as mart, user_id as id
    from {{ ref('user_category_interest') }} cross join params
    where interest_short > interest_long * (1 + 1e-12)
    union all
    select 'item_stats', item_id from {{ ref('item_stats') }} cross join params
    where pop_short > pop_long * (1 + 1e-12)
),

final as (
    select * from violations
)

select * from final
