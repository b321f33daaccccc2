-- one row per user_id
-- The user's last recent_sequence_length events, most recent first; gaps are as_of - event_time
-- in seconds, so they never decrease along the arrays.
with events as (
    select * from {{ ref('int_ordered_events') }}
),

params as (
    select * from {{ ref('stg_params') }}
),

-- the top recent_sequence_length events by their number in the user's order, most recent
-- first: one hash aggregate keeping a small heap per user, instead of sorting every event
recent as (
    select
        events.user_id,
        {{ max_by_n(
            struct_of({
                'item_id': 'events.item_id',
                'category_id': 'events.category_id',
                'behavior': 'events.behavior',
                'gap_seconds': 'events.age_seconds',
            }),
            'events.user_event_number',
            'params.recent_sequence_length',
        ) }} as last_events
    from events
    cross join params
    group by events.user_id
),

final as (
    select
        user_id,
        {{ list_transform('last_events', 'e', 'e.item_id') }} as seq_item_ids,
        {{ list_transform('last_events', 'e', 'e.category_id') }} as seq_category_ids,
        {{ list_transform('last_events', 'e', 'e.behavior') }} as seq_behaviors,
        {{ list_transform('last_events', 'e', 'e.gap_seconds') }} as seq_gap_seconds,
        {{ list_length('last_events') }} as seq_len
    from recent
)

select * from final
