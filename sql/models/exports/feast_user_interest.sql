-- one row per user_id: the user's top categories at as_of, for user_interest.parquet
with interest as (
    select * from {{ as_of('user_category_interest') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

ranked as (
    select
        interest.*,
        row_number() over (
            partition by interest.user_id
            order by interest.interest_short desc, interest.category_id
        ) as rank_short,
        row_number() over (
            partition by interest.user_id
            order by interest.interest_long desc, interest.category_id
        ) as rank_long
    from interest
),

final as (
    select
        ranked.user_id,
        any_value(ranked.as_of) as event_timestamp,
        {{ ordered_list(
            'ranked.category_id', 'ranked.rank_short', 'ranked.rank_short <= params.top_categories'
        ) }} as top_categories_short,
        {{ ordered_list(
            'ranked.interest_short',
            'ranked.rank_short',
            'ranked.rank_short <= params.top_categories'
        ) }} as top_scores_short,
        {{ ordered_list(
            'ranked.category_id', 'ranked.rank_long', 'ranked.rank_long <= params.top_categories'
        ) }} as top_categories_long,
        {{ ordered_list(
            'ranked.interest_long', 'ranked.rank_long', 'ranked.rank_long <= params.top_categories'
        ) }} as top_scores_long,
        sum(ranked.interest_short) as interest_total_short,
        sum(ranked.interest_long) as interest_total_long
    from ranked
    cross join params
    group by ranked.user_id
)

select * from final
