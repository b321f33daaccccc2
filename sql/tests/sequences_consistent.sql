-- sequences are at most recent_sequence_length long, arrays align, and they run most recent first
with params as (
    select * from recsys_params
),

checked as (
    select
        sequences.user_id,
        sequences.seq_len,
        len(sequences.seq_item_ids) as n_items,
        len(sequences.seq_category_ids) as n_categories,
        len(sequences.seq_behaviors) as n_behaviors,
        len(sequences.seq_gap_seconds) as n_gaps,
        sequences.seq_gap_seconds = list_sort(sequences.seq_gap_seconds) as gaps_ascending,
        params.recent_sequence_length
    from user_recent_sequence as sequences
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
