"""The pipeline's own state when it is shared between machines (`STACKONE_STATE_URL`).

Without that setting the state lives in the data directory (warehouse.duckdb, lock files, rate
files), as it always has: `storage.state` is the Warehouse. With `STACKONE_STATE_URL=postgresql://…`
it is a `PostgresState` (postgres.py), and each stage that keeps state (delivery ledger, late
arrivals, notifications, rate limit, webhook staging, hour locks) uses its PostgreSQL form.
"""

from .postgres import PostgresState, is_postgres_url

__all__ = ["PostgresState", "is_postgres_url"]
