-- one row per user_id: user_interest_shift at as_of, for user_interest_shift.parquet
with shift as (
    select * from {{ as_of('user_interest_shift') }}
),

final as (
    select
        user_id,
        as_of as event_timestamp,
        js_divergence,
        top_category_short,
        top_category_long,
        top_category_changed,
        novel_category_share,
        entropy_short,
        entropy_long
    from shift
)

select * from final
