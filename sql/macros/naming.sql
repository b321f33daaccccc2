{#- Schemas are taken as configured (`live`, `main`), not prefixed with the target schema. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ custom_schema_name if custom_schema_name else target.schema }}
{%- endmacro %}

{#- A mart's table is main.<mart>, or main.<mart><publish_suffix> while `recsys build` stages a
    build: it publishes the staged tables under their own names only after every test passed. -#}
{% macro generate_alias_name(custom_alias_name, node) -%}
    {%- if custom_alias_name -%}
        {{ custom_alias_name }}
    {%- elif node.config.materialized == 'mart' -%}
        {{ node.name ~ var('publish_suffix', '') }}
    {%- else -%}
        {{ node.name }}
    {%- endif -%}
{%- endmacro %}
