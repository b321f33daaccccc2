"""Source ids and the warehouse's BIGINT keys (``dim_users``, ``dim_items``, ``dim_categories``).

Every mart, feature and model works on BIGINT keys; people and apps see the ids of the source.

- An id that reads as an integer from -1 to 2^52 - 1 (``42``, `` 42 ``, ``+42``, ``42.0``; an
  integer or whole float column) is its own key, as it always was: integer sources, their marts
  and their models are unchanged, and -1 stays "no category".
- Every other id is a *string id*: ``SKU-0042``, a UUID, ``Comedy``, ``007`` (leading zeros are
  part of a code), ``-5``, ``1.7`` as text, an integer of 2^52 or more, kept exactly as
  written. It gets a dense key above ``KEY_BASE`` from its dimension table, which stores the
  source id (``source_id``), when it was first seen and by whom (``origin``: the file, or the
  service). A key is never reused: an id seen before keeps its key.

Keys are allocated in SQL in the transaction that writes the events (``allocate_sql``), by
ingest from ``KEY_BASE + 1`` up and by the service from ``SERVICE_BASE`` up, so the two never
hand out the same key without asking each other; a source id reaching both (a file and a post
at once) keeps the warehouse's key (``recsys.serving.inbox``). Keys stay below 2^53 for the
first 2.2e15 ids of each range: exact as float64s and in JavaScript, and positive, so no
"-1 = none" sentinel of the ranking code can mistake one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The id columns with a dimension table, and that table.
DIMS: dict[str, str] = {
    "user_id": "dim_users",
    "item_id": "dim_items",
    "category_id": "dim_categories",
}
# Text that is an integer key (DuckDB's RE2 and Python's re read it alike: hence no \s, whose
# classes differ): no leading zeros, -1 the only negative, spaces around and whole decimals
# written by float-minded tools allowed.
INTEGER_ID = r"^[ \t\n\r\f]*(\+?(0|[1-9][0-9]*)|-1)(\.0*)?[ \t\n\r\f]*$"
_INTEGER_ID = re.compile(INTEGER_ID)
# Ingest's keys are KEY_BASE + 1, + 2, ...; the service's SERVICE_BASE, + 1, ...
KEY_BASE = 2**52
SERVICE_BASE = KEY_BASE + 2**51
MAX_ID_LENGTH = 256

DIMS_DDL = "\n".join(
    f"""
create table if not exists {table} (
    key bigint primary key,
    source_id varchar not null unique,
    first_seen_at timestamp not null,
    origin varchar not null
);"""
    for table in DIMS.values()
)


def key_of(value: int | str) -> int | None:
    """The integer key an id is by itself (``INTEGER_ID``), or None for a string id."""
    if isinstance(value, str):
        if not _INTEGER_ID.match(value):
            return None
        value = int(value.strip().split(".")[0])
    return value if -1 <= value < KEY_BASE else None


def source_text(value: int | str) -> str:
    """A string id as stored in ``source_id``: exactly as written."""
    return str(value)


def allocate_sql(table: str) -> str:
    """SQL inserting the source ids of temp table ``new_ids(source_id, first)`` that ``table``
    lacks, with the next keys of ingest's range in ``first`` order. Parameters: origin."""
    return f"""
        insert into {table}
        select (select coalesce(max(key), {KEY_BASE}) from {table}
                where key > {KEY_BASE} and key < {SERVICE_BASE})
                   + row_number() over (order by n.first, n.source_id),
               n.source_id, now()::timestamp, ?
        from temp.new_ids n
        anti join {table} d on d.source_id = n.source_id
    """


SOURCE_IDS_SCHEMA = "source_ids"
# Key columns (and lists of keys) of the warehouse's tables, the marts and the online features,
# by the dim that names them.
ID_COLUMNS: dict[str, str] = {
    **dict.fromkeys(("user_id",), "dim_users"),
    **dict.fromkeys(("item_id", "src_item_id", "dst_item_id", "seq_item_ids"), "dim_items"),
    **dict.fromkeys(
        (
            "category_id",
            "from_category_id",
            "to_category_id",
            "src_category_id",
            "dst_category_id",
            "top_category_short",
            "top_category_long",
            "top_categories_short",
            "top_categories_long",
            "seq_category_ids",
        ),
        "dim_categories",
    ),
}


def create_source_id_views(con) -> list[str]:
    """(Re)create, in schema ``source_ids``, one view per table and view of the main schema
    that has key columns: the same name and columns, every key shown as its source id (VARCHAR:
    the dim's ``source_id``, else the integer key as text; lists of keys likewise). Run in the
    transaction that (re)creates the tables; returns the views' names."""
    con.execute(f"create schema if not exists {SOURCE_IDS_SCHEMA}")
    rows = con.execute(
        "select table_name, list((column_name, data_type) order by ordinal_position) "
        "from information_schema.columns "
        "where table_catalog = current_database() and table_schema = 'main' "
        "and table_name not like 'dim\\_%' escape '\\' and table_name != 'forgotten_users' "
        "group by 1 order by 1"
    ).fetchall()
    created = []
    for table, columns in rows:
        shown = {c: t.endswith("[]") for c, t in columns if c in ID_COLUMNS}
        if not shown:
            continue
        joins = " ".join(
            f"left join main.{ID_COLUMNS[c]} d_{c} on d_{c}.key = t.{c}"
            for c, is_list in shown.items()
            if not is_list
        )
        replaced = [
            f"coalesce((select list(coalesce(d.source_id, k::varchar) order by i) "
            f"from unnest(t.{c}) with ordinality as u(k, i) "
            f"left join main.{ID_COLUMNS[c]} d on d.key = k), t.{c}::varchar[]) as {c}"
            if is_list
            else f"coalesce(d_{c}.source_id, t.{c}::varchar) as {c}"
            for c, is_list in shown.items()
        ]
        con.execute(
            f"create or replace view {SOURCE_IDS_SCHEMA}.{table} as "
            f"select t.* replace ({', '.join(replaced)}) from main.{table} t {joins}"
        )
        created.append(table)
    return created


@dataclass
class IdMap:
    """Source id <-> key of one dim, in memory."""

    keys: dict[str, int]
    ids: dict[int, str]
    # the highest key of the service's range held (the floor of its next allocation)
    service_top: int = SERVICE_BASE - 1

    @classmethod
    def of(cls, rows: list[tuple[int, str]]) -> IdMap:
        top = max((key for key, _ in rows if key >= SERVICE_BASE), default=SERVICE_BASE - 1)
        return cls(
            {source: key for key, source in rows}, {key: source for key, source in rows}, top
        )

    def key(self, value: int | str) -> int | None:
        """The id's key: its own, or the dim's; None for a string id never seen."""
        own = key_of(value)
        return own if own is not None else self.keys.get(source_text(value))

    def shown(self, key: int) -> int | str:
        """What a person sees for a key: the source id, or the integer key itself."""
        return self.ids.get(key, key)

    def add(self, key: int, source_id: str) -> None:
        self.keys[source_id] = key
        self.ids[key] = source_id
        self.service_top = max(self.service_top, key)

    def drop(self, key: int) -> None:
        source = self.ids.pop(key, None)
        if source is not None:
            self.keys.pop(source, None)


@dataclass
class Ids:
    """The dims in memory, by dim table name (``DIMS``' values)."""

    maps: dict[str, IdMap]

    @classmethod
    def load(cls, con, keys: Iterable[int] | None = None, source_ids: Iterable[str] = ()) -> Ids:
        """Read the warehouse's dims (only the rows of ``keys`` and ``source_ids`` when keys
        are given); a warehouse without dims has none."""
        present = {
            row[0]
            for row in con.execute(
                "select table_name from information_schema.tables "
                "where table_catalog = current_database() and table_schema = 'main'"
            ).fetchall()
        }
        ids = cls.empty()
        maps = ids.maps
        for table in DIMS.values():
            if table not in present:
                continue
            if keys is None:
                maps[table] = IdMap.of(
                    con.execute(f"select key, source_id from {table}").fetchall()
                )
            else:
                maps[table] = IdMap.of(
                    con.execute(
                        f"select key, source_id from {table} "
                        "where key in (select unnest(?)) or source_id in (select unnest(?))",
                        [sorted(set(keys)), sorted(set(source_ids))],
                    ).fetchall()
                )
        return ids

    @classmethod
    def empty(cls) -> Ids:
        return cls({table: IdMap({}, {}) for table in DIMS.values()})

    def of(self, column: str) -> IdMap:
        """The map of an id column (``ID_COLUMNS``: ``user_id``, ``item_id``, ...)."""
        return self.maps[ID_COLUMNS[column]]

    def shown(self, name: str, value: Any) -> Any:
        """``value`` of the field ``name`` (``view__feature`` names count by their feature) as a
        person sees it: keys of an id field as source ids, anything else unchanged."""
        column = name.rpartition("__")[2]
        if column not in ID_COLUMNS or value is None:
            return value
        ids = self.of(column)
        if isinstance(value, list | tuple):
            return [ids.shown(int(k)) for k in value]
        return ids.shown(int(value))

    def shown_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """``shown`` for every field of a row."""
        return {name: self.shown(name, value) for name, value in row.items()}


def find_key(con, column: str, value: int | str) -> int | None:
    """The key of an id of ``column`` as in the source, looked up in the warehouse; None for a
    string id it never saw."""
    return Ids.load(con, keys=[], source_ids=[source_text(value)]).of(column).key(value)


def as_given(value: int | str) -> int | str:
    """An id as a person gave it (a path, a ``--user``): its own key when it is one (``"42"`` is
    42), else the string id."""
    own = key_of(value)
    return value if own is None else own
