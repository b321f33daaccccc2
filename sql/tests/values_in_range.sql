-- rates, shares and divergences lie in [0, 1]; entropies in [0, log2(categories)]
with bounded as (
    select 'cart_rate' as metric, cart_rate as v from {{ ref('user_behavior_funnel') }}
    union all select 'fav_rate', fav_rate from {{ ref('user_behavior_funnel') }}
    union all select 'buy_rate', buy_rate from {{ ref('user_behavior_funnel') }}
    union all select 'cart_to_buy_rate', cart_to_buy_rate from {{ ref('user_behavior_funnel') }}
    union all select 'item_cart_rate', cart_rate from {{ ref('item_stats') }}
    union all select 'item_buy_rate', buy_rate from {{ ref('item_stats') }}
    union all select 'share_short', share_short from {{ ref('user_category_interest') }}
    union all select 'share_long', share_long from {{ ref('user_category_interest') }}
    union all select 'js_divergence', js_divergence from {{ ref('user_interest_shift') }}
    union all select 'novel_category_share', novel_category_share from {{ ref('user_interest_shift') }}
    union all select 'migration_strength', strength from {{ ref('interest_migrations') }}
    union all select 'item_item_weight', weight from {{ ref('edges_item_item') }}
),

categories as (
    select user_id, count(*) as n from {{ ref('user_category_interest') }} group by user_id
),

entropy_violations as (
    select 'entropy' as metric, greatest(shift.entropy_short, shift.entropy_long) as v
    from {{ ref('user_interest_shift') }} as shift
    inner join categories on categories.user_id = shift.user_id
    where
        least(shift.entropy_short, shift.entropy_long) < 0
        or greatest(shift.entropy_short, shift.entropy_long) > log2(categories.n) + 1e-9
),

final as (
    select * from bounded where v < -1e-12 or v > 1 + 1e-12 or isnan(v)
    union all
    select * from entropy_violations
)

select * from final
