-- one row per src_item_id, dst_item_id
-- Transitions between consecutive events of one session on different items; weight is the
-- transition probability n_transitions / all transitions out of src_item_id.
with events as (
    select * from {{ ref('int_sessionized_events') }}
),

transitions as (
    select
        previous_item_in_session as src_item_id,
        item_id as dst_item_id,
        count(*) as n_transitions
    from events
    where
        previous_item_in_session is not null
        and previous_item_in_session <> item_id
    group by previous_item_in_session, item_id
),

final as (
    select
        src_item_id,
        dst_item_id,
        n_transitions,
        n_transitions / sum(n_transitions) over (partition by src_item_id) as weight
    from transitions
)

select * from final
