-- category_transitions: p sums to 1 out of each source category, there are no self-loops, and
-- rank runs 1..n per source in descending weight
with totals as (
    select
        src_category_id,
        sum(p) as total,
        bool_or(src_category_id = dst_category_id) as has_loop,
        count(*) as n,
        count(distinct rank) as n_ranks,
        min(rank) as min_rank,
        max(rank) as max_rank
    from {{ ref('category_transitions') }}
    group by src_category_id
),

-- a filter on the window, not `qualify`, which Spark 3.5 lacks
misordered as (
    select src_category_id
    from (
        select
            src_category_id,
            weight,
            lag(weight) over (partition by src_category_id order by rank) as previous_weight
        from {{ ref('category_transitions') }}
    ) as ranked
    where weight > previous_weight
),

final as (
    select src_category_id, 'normalisation' as problem from totals
    where
        abs(total - 1) > 1e-9
        or total is null
        or has_loop
        or n_ranks <> n
        or min_rank <> 1
        or max_rank <> n
    union all
    select src_category_id, 'rank order' from misordered
)

select * from final
