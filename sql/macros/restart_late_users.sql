{#- Pre-hook of int_event_stream on incremental builds: delete every user with a newly ingested
    event at or before their last streamed event (a late event), so that the model recomputes
    them from all their events. Appending would put the late event after later ones. -#}
{% macro restart_late_users() -%}
    {%- if is_incremental() -%}
        delete from {{ this }} where user_id in (
            select new_events.user_id
            from {{ source('warehouse', 'events') }} as new_events
            inner join (
                select user_id, max(event_time) as last_event_time
                from {{ this }}
                group by user_id
            ) as streamed on streamed.user_id = new_events.user_id
            where
                new_events.ingested_at > (select max(ingested_at) from {{ this }})
                and new_events.event_time <= streamed.last_event_time
        )
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}
