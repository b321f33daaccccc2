-- a migration leaves one category for another that the user really touched before detected_at
with final as (
    select migrations.*
    from {{ ref('interest_migrations') }} as migrations
    left join {{ ref('user_category_interest') }} as interest
        on
            interest.user_id = migrations.user_id
            and interest.category_id = migrations.to_category_id
            and interest.first_event_time <= migrations.detected_at
    where
        migrations.from_category_id = migrations.to_category_id
        or interest.user_id is null
        or migrations.strength <= 0
)

select * from final
