-- one row: the feature parameters written by `recsys build` (recsys.config is their source).
-- as_of is the `as_of` DuckDB variable when set (snapshots), else the build's as_of.
with params as (
    select * from recsys_params
),

final as (
    select
        coalesce(getvariable('as_of')::timestamp, params.as_of) as as_of,
        params.short_half_life_seconds,
        params.long_half_life_seconds,
        params.session_gap_seconds,
        params.novelty_window_seconds,
        params.recent_sequence_length,
        params.top_categories,
        params.migration_min_history_events,
        params.migration_max_category_age_seconds,
        params.migration_max_long_share,
        params.migration_min_category_events,
        params.migration_min_purity,
        params.migration_cooldown_seconds
    from params
)

select * from final
