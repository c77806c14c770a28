"""Observability sinks: Loki, Datadog, OTLP, Prometheus.

Shared machinery, one implementation for every HTTP sink:
  payload.py    a stored row -> the record a sink may see (header allowlist, no bodies)
  batching.py   groups rows by the destination's natural key, cut by entries and bytes
  transport.py  POST with retry (backoff + jitter, Retry-After, deadline); each sink classifies
  ledger.py     which request_ids each sink accepted, per hour (DuckDB)
  delivery.py   one hour: read the lake in chunks -> skip delivered/too old -> batch -> send -> ledger
Each sink module holds only its encoder (pure: rows -> bytes) and its status classification.
"""
