"""The DuckDB warehouse: one writer at a time across processes, transactions (see duckdb_store.py)."""

from .duckdb_store import Warehouse, WarehouseLockedError, create_table_sql, duckdb_type, in_transaction, scratch

__all__ = ["Warehouse", "WarehouseLockedError", "create_table_sql", "duckdb_type", "in_transaction", "scratch"]
