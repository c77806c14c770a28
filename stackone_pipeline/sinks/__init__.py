"""Observability sinks: Loki, Datadog, OTLP (the logs family) and Prometheus (the metrics family).

  registry.py   every sink declared once (SinkSpec): what the definitions and the CLI iterate
  payload.py    what a sink may see of a stored row, as SQL (header allowlist, no bodies)
  delivery.py   one hour of a logs sink: DuckDB reads the lake, leaves out what was delivered or
                is too old, builds each entry -> batch -> send (two in flight) -> ledger
  batching.py   cuts a chunk into batches per destination key, by entries and bytes
  ledger.py     each record's outcome per sink and hour, keyed by request_id or a hash of the row
  loki.py datadog.py otlp.py   a logs sink: its entry (SQL), request encoding, answer classification
  prometheus*.py remote_write.py   the metrics sink: per-hour series, revisions, remote write
Sending (retries, backoff, Retry-After, deadline) is `stackone_pipeline.http`'s.
"""
