-- recsys_params holds exactly one row
with final as (
    select count(*) as n from {{ source('build_inputs', 'recsys_params') }} having count(*) <> 1
)

select * from final
