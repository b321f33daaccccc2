{#- The as-of view of a mart, live.<mart>: what exports and later marts read, so that they can be
    evaluated at any snapshot time. ref() still records the dependency for dbt's graph. -#}
{% macro as_of(name) -%}
    {%- set table = ref(name) -%}
    {{ return(api.Relation.create(database=table.database, schema='live', identifier=name,
                                  type='view')) }}
{%- endmacro %}

{#- A mart is two relations built from one query: the as-of view live.<mart>, then the
    analysts' table (this relation, main.<mart>) holding that view at the build's as_of. Tests
    and ref() read the table. The table's query reads the tables of the marts it depends on
    instead of their as-of views, which hold the same rows at the build's as_of: evaluating
    those views again would recompute every upstream mart inside this one. -#}
{% materialization mart, default %}
    {%- set table_relation = this.incorporate(type='table') -%}
    {%- set view_relation = api.Relation.create(
        database=this.database, schema='live', identifier=model.name, type='view') -%}
    {%- set query = namespace(sql=sql) -%}
    {%- for node_id in model.depends_on.nodes -%}
        {%- set upstream = graph.nodes.get(node_id) -%}
        {%- if upstream and upstream.config.materialized == 'mart' -%}
            {%- set upstream_view = api.Relation.create(
                database=this.database, schema='live', identifier=upstream.name, type='view') -%}
            {%- set upstream_table = api.Relation.create(database=upstream.database,
                schema=upstream.schema, identifier=upstream.alias, type='table') -%}
            {%- set query.sql = query.sql.replace(upstream_view | string,
                                                  upstream_table | string) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ run_hooks(pre_hooks) }}
    {% call statement('as_of_view') -%}
        create or replace view {{ view_relation }} as {{ sql }}
    {%- endcall %}
    {% call statement('main') -%}
        {{ replace_table_as(table_relation, query.sql) }}
    {%- endcall %}
    {{ run_hooks(post_hooks) }}
    {{ adapter.commit() }}
    {{ return({'relations': [table_relation, view_relation]}) }}
{% endmaterialization %}
