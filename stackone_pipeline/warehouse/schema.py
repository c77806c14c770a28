"""The `request_logs` table: its DDL, from the one schema of stackone/records.py."""

from ..stackone.records import COLUMNS
from .duckdb_store import create_table_sql

REQUEST_LOGS = "request_logs"
REQUEST_LOG_DETAILS = "request_log_details"  # detail records of failed requests (ingest/details.py)
CREATE_REQUEST_LOGS = create_table_sql(REQUEST_LOGS, COLUMNS, json_columns=("request", "response", "step_requests"))
