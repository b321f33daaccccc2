{#- Engine-specific SQL. dbt does not transpile, so every construct that DuckDB and Spark spell
    differently is a dispatched macro here: `default__` is DuckDB (the default target), `spark__`
    is Spark SQL 3.5 (dbt-spark, `recsys build --engine spark`). The DuckDB renderings are the SQL
    the models held before, so DuckDB builds are unchanged. The README lists these macros. -#}

{#- Microseconds since the epoch of a zone-less timestamp. Spark reads DuckDB's TIMESTAMP columns
    as TIMESTAMP_NTZ, which unix_micros refuses; the cast reads it in the session zone, UTC. -#}
{% macro epoch_us(moment) %}{{ return(adapter.dispatch('epoch_us')(moment)) }}{% endmacro %}
{% macro default__epoch_us(moment) %}epoch_us({{ moment }}){% endmacro %}
{% macro spark__epoch_us(moment) %}unix_micros(cast({{ moment }} as timestamp)){% endmacro %}

{#- The snapshot time the exports are being evaluated at, or null outside the snapshot loop.
    DuckDB: the `as_of` session variable (`set variable as_of = T`). Spark has no variable a
    persistent view can read, so the loop writes T into the one-row table build.snapshot_as_of
    (recsys/warehouse/spark.py), which every view re-reads when it is queried. -#}
{% macro as_of_override() %}{{ return(adapter.dispatch('as_of_override')()) }}{% endmacro %}
{% macro default__as_of_override() %}getvariable('as_of')::timestamp{% endmacro %}
{% macro spark__as_of_override() -%}
    (select max(as_of) from {{ source('build_inputs', 'snapshot_as_of') }})
{%- endmacro %}

{#- The values of `value` in ascending `order_key` over the group's rows where `condition` holds
    (null when none does). Spark's collect_list has no ORDER BY: sort (key, value) pairs. -#}
{% macro ordered_list(value, order_key, condition) -%}
    {{ return(adapter.dispatch('ordered_list')(value, order_key, condition)) }}
{%- endmacro %}
{% macro default__ordered_list(value, order_key, condition) -%}
    list({{ value }} order by {{ order_key }}) filter (where {{ condition }})
{%- endmacro %}
{% macro spark__ordered_list(value, order_key, condition) -%}
    if(
            count_if({{ condition }}) = 0,
            null,
            transform(
                array_sort(
                    collect_list(named_struct('k', {{ order_key }}, 'v', {{ value }}))
                        filter (where {{ condition }})
                ),
                pair -> pair.v
            )
        )
{%- endmacro %}

{#- The `n` values of the group with the largest `order_key`, largest first (`order_key` is
    unique within the group, `n` the same on every row). -#}
{% macro max_by_n(value, order_key, n) -%}
    {{ return(adapter.dispatch('max_by_n')(value, order_key, n)) }}
{%- endmacro %}
{% macro default__max_by_n(value, order_key, n) -%}
    max_by({{ value }}, {{ order_key }}, {{ n }})
{%- endmacro %}
{% macro spark__max_by_n(value, order_key, n) -%}
    slice(
            transform(
                sort_array(
                    collect_list(named_struct('k', {{ order_key }}, 'v', {{ value }})), false
                ),
                pair -> pair.v
            ),
            1,
            max({{ n }})
        )
{%- endmacro %}

{#- A struct literal from a mapping of field name -> expression (field order kept). -#}
{% macro struct_of(fields) %}{{ return(adapter.dispatch('struct_of')(fields)) }}{% endmacro %}
{% macro default__struct_of(fields) -%}
    {
                {%- for name, expression in fields.items() %}
                '{{ name }}': {{ expression }}{{ ',' if not loop.last }}
                {%- endfor %}
            }
{%- endmacro %}
{% macro spark__struct_of(fields) -%}
    named_struct(
                {%- for name, expression in fields.items() %}
                '{{ name }}', {{ expression }}{{ ',' if not loop.last }}
                {%- endfor %}
            )
{%- endmacro %}

{#- `body` applied to each element (named `element`) of a list. DuckDB 2 refuses the arrow
    lambda without a setting; Spark knows only the arrow. -#}
{% macro list_transform(list, element, body) -%}
    {{ return(adapter.dispatch('list_transform')(list, element, body)) }}
{%- endmacro %}
{% macro default__list_transform(list, element, body) -%}
    list_transform({{ list }}, lambda {{ element }}: {{ body }})
{%- endmacro %}
{% macro spark__list_transform(list, element, body) -%}
    transform({{ list }}, {{ element }} -> {{ body }})
{%- endmacro %}

{#- The number of elements of a list, null for a null list (Spark's size gives -1 for null). -#}
{% macro list_length(list) %}{{ return(adapter.dispatch('list_length')(list)) }}{% endmacro %}
{% macro default__list_length(list) %}len({{ list }}){% endmacro %}
{% macro spark__list_length(list) %}if({{ list }} is null, null, size({{ list }})){% endmacro %}

{#- A list sorted ascending. -#}
{% macro list_sort(list) %}{{ return(adapter.dispatch('list_sort')(list)) }}{% endmacro %}
{% macro default__list_sort(list) %}list_sort({{ list }}){% endmacro %}
{% macro spark__list_sort(list) %}array_sort({{ list }}){% endmacro %}

{#- One row per element of a list (in the select list). -#}
{% macro unnest_list(list) %}{{ return(adapter.dispatch('unnest_list')(list)) }}{% endmacro %}
{% macro default__unnest_list(list) %}unnest({{ list }}){% endmacro %}
{% macro spark__unnest_list(list) %}explode({{ list }}){% endmacro %}

{#- A timestamp minus a bigint number of microseconds, of the timestamp's type. Spark's
    timestampadd takes an int count, which overflows past 36 minutes of microseconds. -#}
{% macro minus_microseconds(moment, micros) -%}
    {{ return(adapter.dispatch('minus_microseconds')(moment, micros)) }}
{%- endmacro %}
{% macro default__minus_microseconds(moment, micros) -%}
    {{ moment }} - to_microseconds({{ micros }})
{%- endmacro %}
{% macro spark__minus_microseconds(moment, micros) -%}
    {{ moment }} - make_dt_interval(0, 0, 0, cast({{ micros }} as decimal(18, 0)) / 1000000)
{%- endmacro %}

{#- A 64-bit hash of a value, for partitioning (equal values, equal hashes; null hashes too). -#}
{% macro hash64(value) %}{{ return(adapter.dispatch('hash64')(value)) }}{% endmacro %}
{% macro default__hash64(value) %}hash({{ value }}){% endmacro %}
{% macro spark__hash64(value) %}xxhash64({{ value }}){% endmacro %}

{#- Every column of `relation` except `columns` (a list of names), in the select list. Spark 3.5
    has no `* except`: a quoted regex selects the others (the Spark profile turns on
    spark.sql.parser.quotedRegexColumnNames, which views keep with their definition). -#}
{% macro star_except(relation, columns) -%}
    {{ return(adapter.dispatch('star_except')(relation, columns)) }}
{%- endmacro %}
{% macro default__star_except(relation, columns) -%}
    {{ relation }}.* exclude ({{ columns | join(', ') }})
{%- endmacro %}
{% macro spark__star_except(relation, columns) -%}
    {{ relation }}.`(?!(?:{{ columns | join('|') }})$).+`
{%- endmacro %}

{#- A table replaced by the result of a query (the mart materialization's table). Spark cannot
    replace a Parquet table in one statement, so it drops it first. -#}
{% macro replace_table_as(relation, query) -%}
    {{ return(adapter.dispatch('replace_table_as')(relation, query)) }}
{%- endmacro %}
{% macro default__replace_table_as(relation, query) -%}
    create or replace table {{ relation }} as {{ query }}
{%- endmacro %}
{% macro spark__replace_table_as(relation, query) -%}
    {% do run_query('drop table if exists ' ~ relation) %}
    create table {{ relation }} using parquet as {{ query }}
{%- endmacro %}
