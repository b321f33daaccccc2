-- one row per src_category_id, dst_category_id
-- The category -> category association learned from two kinds of evidence before as_of:
-- 1. session changes: consecutive events of one session (the sessions of int_sessionized_events:
--    source session_id, else 30-minute gaps) whose category changes from src to dst; n_session
--    counts them and w_session sums the later event's behaviour weight;
-- 2. detected interest migrations (interest_migrations, from_category_id -> to_category_id);
--    n_migration counts them and w_migration sums their strength.
-- weight = w_session + 5.0 * w_migration. The constant 5.0: a detection needs at least
-- migration_min_category_events (5 by default) events in the new category at purity >= 0.9,
-- so one migration stands for about five moves into it, while its strength (a share) is at
-- most 1 against a behaviour weight of at least 1 (a view) per session change; and migrations
-- are rare (a few per hundred users), so unscaled they would vanish in session noise. It is
-- fixed here, not a recsys_params column, because no online path reads it.
-- p = weight / the src's total weight (sums to 1 per src); rank 1 is the src's heaviest dst
-- (ties: the smaller dst_category_id). src = dst is never a row.
-- Cost: the previous event of a session is found without sorting the events again. Mostly it
-- is the user's previous event (user_event_number - 1, an equi-join on int_event_stream's
-- order); where sessions interleave (another session's event came between), it is the latest
-- earlier event of the same session on previous_item_in_session, joined for those events only.
with events as (
    select * from {{ ref('int_ordered_events') }}
),

migrations as (
    select * from {{ as_of('interest_migrations') }}
),

-- events with a previous event in their session, next to the user's previous event
in_session as (
    select
        events.user_id,
        events.user_event_number,
        events.session_id,
        events.previous_item_in_session,
        events.category_id,
        events.behavior_weight,
        previous.category_id as previous_category_id,
        -- the user's previous event is the session's previous one when it is in the same
        -- session: same source session_id, or both session-less (previous_item_in_session is
        -- set, so the gap did not start a new gap session)
        previous.session_id is not distinct from events.session_id
        and previous.item_id = events.previous_item_in_session as previous_is_in_session
    from events
    inner join events as previous
        on
            previous.user_id = events.user_id
            and previous.user_event_number = events.user_event_number - 1
    where events.previous_item_in_session is not null
),

-- interleaved sessions: the latest earlier event of the session on the previous item
interleaved as (
    select
        in_session.user_id,
        in_session.user_event_number,
        any_value(in_session.category_id) as category_id,
        any_value(in_session.behavior_weight) as behavior_weight,
        max_by(previous.category_id, previous.user_event_number) as previous_category_id
    from in_session
    inner join events as previous
        on
            previous.user_id = in_session.user_id
            and previous.session_id is not distinct from in_session.session_id
            and previous.item_id = in_session.previous_item_in_session
            and previous.user_event_number < in_session.user_event_number
    where not in_session.previous_is_in_session
    group by in_session.user_id, in_session.user_event_number
),

steps as (
    select previous_category_id, category_id, behavior_weight
    from in_session
    where previous_is_in_session
    union all
    select previous_category_id, category_id, behavior_weight
    from interleaved
),

session_changes as (
    select
        previous_category_id as src_category_id,
        category_id as dst_category_id,
        count(*) as n_session,
        sum(behavior_weight) as w_session
    from steps
    where previous_category_id <> category_id
    group by previous_category_id, category_id
),

migration_moves as (
    select
        from_category_id as src_category_id,
        to_category_id as dst_category_id,
        count(*) as n_migration,
        sum(strength) as w_migration
    from migrations
    where from_category_id <> to_category_id
    group by from_category_id, to_category_id
),

combined as (
    select
        coalesce(session_changes.src_category_id, migration_moves.src_category_id)
            as src_category_id,
        coalesce(session_changes.dst_category_id, migration_moves.dst_category_id)
            as dst_category_id,
        coalesce(session_changes.n_session, 0) as n_session,
        coalesce(session_changes.w_session, 0.0) as w_session,
        coalesce(migration_moves.n_migration, 0) as n_migration,
        coalesce(migration_moves.w_migration, 0.0) as w_migration
    from session_changes
    full outer join migration_moves
        on
            migration_moves.src_category_id = session_changes.src_category_id
            and migration_moves.dst_category_id = session_changes.dst_category_id
),

weighted as (
    select
        combined.*,
        combined.w_session + 5.0 * combined.w_migration as weight
    from combined
),

final as (
    select
        src_category_id,
        dst_category_id,
        n_session,
        w_session,
        n_migration,
        w_migration,
        weight,
        -- behaviour weights and strengths are positive, so every src has a positive total
        weight / nullif(sum(weight) over (partition by src_category_id), 0) as p,
        row_number() over (
            partition by src_category_id
            order by weight desc, dst_category_id
        ) as rank
    from weighted
)

select * from final
