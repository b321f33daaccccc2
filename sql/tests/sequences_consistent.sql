-- sequences are at most recent_sequence_length long, arrays align, and they run most recent first
with params as (
    select * from {{ source('build_inputs', 'recsys_params') }}
),

checked as (
    select
        sequences.user_id,
        sequences.seq_len,
        {{ list_length('sequences.seq_item_ids') }} as n_items,
        {{ list_length('sequences.seq_category_ids') }} as n_categories,
        {{ list_length('sequences.seq_behaviors') }} as n_behaviors,
        {{ list_length('sequences.seq_gap_seconds') }} as n_gaps,
        sequences.seq_gap_seconds = {{ list_sort('sequences.seq_gap_seconds') }} as gaps_ascending,
        params.recent_sequence_length
    from {{ ref('user_recent_sequence') }} as sequences
    cross join params
),

final as (
    select * from checked
    where
        seq_len > recent_sequence_length
        or n_items <> seq_len
        or n_categories <> seq_len
        or n_behaviors <> seq_len
        or n_gaps <> seq_len
        or not gaps_ascending
)

select * from final
