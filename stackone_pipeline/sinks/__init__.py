"""Observability sinks: Loki, Datadog, OTLP, Prometheus.

Shared machinery, one implementation for every HTTP sink:
  payload.py    what a sink may see of a stored row, as SQL (header allowlist, no bodies)
  delivery.py   one hour: DuckDB reads the lake, leaves out what was delivered or is too old,
                builds each entry -> batch -> send (two in flight) -> ledger
  batching.py   cuts a chunk into batches per destination key, by entries and bytes
  transport.py  POST with retry (backoff + jitter, Retry-After, deadline); each sink classifies
  ledger.py     which request_ids each sink accepted, per hour (DuckDB)
Each sink module holds only its entry (SQL), its request encoding and its status classification.
"""
