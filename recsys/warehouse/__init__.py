"""DuckDB only: connections and locks, ingest, the SQL build, write-back, the simulator."""
