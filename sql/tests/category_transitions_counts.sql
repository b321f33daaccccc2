-- category_transitions: counts and weights are non-negative, every row has evidence, a weight
-- is zero exactly when its count is, and every detected migration is counted once
with bad_rows as (
    select src_category_id, dst_category_id, 'row' as problem
    from {{ ref('category_transitions') }}
    where
        n_session < 0
        or n_migration < 0
        or w_session < 0
        or w_migration < 0
        or n_session + n_migration = 0
        or (n_session = 0) <> (w_session = 0)
        or (n_migration = 0) <> (w_migration = 0)
        or abs(weight - (w_session + 5.0 * w_migration)) > 1e-9 * greatest(1, weight)
),

migration_total as (
    select cast(null as bigint), cast(null as bigint), 'migrations' as problem
    from (select sum(n_migration) as n from {{ ref('category_transitions') }}) as counted
    cross join (select count(*) as n from {{ ref('interest_migrations') }}) as expected
    where coalesce(counted.n, 0) <> expected.n
),

final as (
    select * from bad_rows
    union all
    select * from migration_total
)

select * from final
