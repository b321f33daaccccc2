-- one row per user_id: user_recent_sequence at as_of, for user_recent_sequence.parquet
with sequences as (
    select * from {{ as_of('user_recent_sequence') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

final as (
    select
        sequences.user_id,
        params.as_of as event_timestamp,
        sequences.seq_item_ids,
        sequences.seq_category_ids,
        sequences.seq_behaviors,
        sequences.seq_gap_seconds,
        sequences.seq_len
    from sequences
    cross join params
)

select * from final
