-- one row per user_id
-- How far the short-horizon interest distribution has moved from the long-horizon one.
-- js_divergence and the entropies are in bits, so js_divergence lies in [0, 1].
with interest as (
    select * from {{ as_of('user_category_interest') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

terms as (
    select
        interest.*,
        (interest.share_short + interest.share_long) / 2 as share_mid,
        interest.first_event_time
        >= {{ minus_microseconds(
            'interest.as_of', 'cast((params.novelty_window_seconds * 1e6) as bigint)'
        ) }} as is_novel
    from interest
    cross join params
),

per_user as (
    select
        user_id,
        0.5 * sum(
            case when share_short > 0 then share_short * log2(share_short / share_mid) else 0 end
        )
        + 0.5 * sum(
            case when share_long > 0 then share_long * log2(share_long / share_mid) else 0 end
        ) as js_divergence,
        -- ties go to the smallest category_id so the answer is deterministic
        max_by(category_id, (interest_short, -category_id)) as top_category_short,
        max_by(category_id, (interest_long, -category_id)) as top_category_long,
        coalesce(sum(share_short) filter (where is_novel), 0) as novel_category_share,
        -sum(case when share_short > 0 then share_short * log2(share_short) else 0 end)
            as entropy_short,
        -sum(case when share_long > 0 then share_long * log2(share_long) else 0 end)
            as entropy_long,
        any_value(as_of) as as_of
    from terms
    group by user_id
),

final as (
    select
        user_id,
        -- rounding can leave a hair below 0 when the two distributions are equal
        greatest(js_divergence, 0.0) as js_divergence,
        top_category_short,
        top_category_long,
        top_category_short <> top_category_long as top_category_changed,
        novel_category_share,
        greatest(entropy_short, 0.0) as entropy_short,
        greatest(entropy_long, 0.0) as entropy_long,
        as_of
    from per_user
)

select * from final
