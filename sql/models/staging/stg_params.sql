-- one row: the feature parameters written by `recsys build` (recsys.config is their source).
-- as_of is the snapshot time while the exports are evaluated (the `as_of` DuckDB variable, or
-- build.snapshot_as_of on Spark: macros/engine.sql), else the build's as_of.
with params as (
    select * from {{ source('build_inputs', 'recsys_params') }}
),

final as (
    select
        coalesce({{ as_of_override() }}, params.as_of) as as_of,
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
