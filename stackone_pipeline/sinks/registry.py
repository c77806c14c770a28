"""Every sink, declared once: what definitions.py, the resources and the CLI iterate.

Two families, delivered differently:
* logs sinks (Loki, Datadog, OTLP) send one entry per request through the shared machinery of
  delivery.py (lake -> entries -> batches -> send -> ledger);
* the metrics sink (Prometheus) sends per-hour aggregates (counters and a histogram) with its
  own revision bookkeeping (prometheus.py).

To add a sink: a module with its encoder and answer classification (see loki.py), its settings
in settings.py, a resource in resources.py, and one `SinkSpec` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Literal

from ..settings import DatadogSettings, LokiSettings, OtlpSettings, PrometheusSettings


def lazy(module: str, attr: str) -> Callable:
    """`<this package>.module.attr`, imported when first called: a sink's code and its libraries
    (OpenTelemetry, pyarrow.compute, ...) load only in a process that delivers to it, not in every
    process that loads the definitions."""

    def call(*args, **kwargs):
        target = import_module(f"{__package__}.{module}")
        for part in attr.split("."):
            target = getattr(target, part)
        return target(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{attr}"
    return call


LOG_TOTALS = ("sent", "accepted", "rejected", "skipped", "dead_letters")
METRIC_TOTALS = ("rows", "series", "samples", "batches", "retries", "bytes", "skipped", "already_delivered")


@dataclass(frozen=True)
class SinkSpec:
    name: str  # asset `<name>_delivery`, resource key `<name>`, Settings.<name>
    family: Literal["logs", "metrics"]
    description: str  # shown on the asset
    not_configured: str  # what to set, shown on the stand-in asset when the sink is off
    settings_class: type  # its part of settings.py
    build: Callable  # the sink's settings -> the sink object `deliver` takes
    deliver: Callable = lazy(
        "delivery", "deliver_hour"
    )  # (sink, storage, hour, transport, force=) -> report with .metadata()
    after_hour: Callable | None = None  # (sink, storage, hour, transport) -> extra metadata or None
    totals: tuple[str, ...] = LOG_TOTALS  # figures summed over the hours of a range run

    @property
    def asset_name(self) -> str:
        return f"{self.name}_delivery"

    def from_env(self, env: Mapping[str, str]):
        """The sink as `env` configures it, or None (for tests, benchmarks and scripts; the Dagster
        definitions build it from their resource instead)."""
        s = self.settings_class.from_env(env)
        return None if s is None else self.build(s)


SINKS: tuple[SinkSpec, ...] = (
    SinkSpec(
        "loki",
        "logs",
        "Grafana Loki: every record as one deterministic JSON line, gzip JSON pushes to /loki/api/v1/push.",
        "LOKI_URL is not set",
        LokiSettings,
        lazy("loki", "LokiSink.from_settings"),
        after_hour=lazy("loki", "after_hour"),  # the streams the hour went to (late arrivals: late_shard)
    ),
    SinkSpec(
        "datadog",
        "logs",
        "Datadog Logs: gzip JSON arrays to the logs intake (/api/v2/logs); optionally old hours as metrics.",
        "DATADOG_API_KEY is not set",
        DatadogSettings,
        lazy("datadog", "DatadogSink.from_settings"),
        after_hour=lazy("datadog", "after_hour"),
    ),
    SinkSpec(
        "otlp",
        "logs",
        "OpenTelemetry: OTLP/HTTP protobuf logs (gzip), one LogRecord per request, at its event time.",
        "OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_LOGS_ENDPOINT is not set",
        OtlpSettings,
        lazy("otlp", "OtlpSink.from_settings"),
    ),
    SinkSpec(
        "prometheus",
        "metrics",
        "The guide's dashboard metrics (stackone_requests_total, stackone_request_duration) "
        "remote-written to Prometheus at the events' real times.",
        "PROMETHEUS_REMOTE_WRITE_URL is not set",
        PrometheusSettings,
        lazy("prometheus", "PrometheusSink.from_settings"),
        deliver=lazy("prometheus", "deliver_hour"),
        totals=METRIC_TOTALS,
    ),
)
BY_NAME = {spec.name: spec for spec in SINKS}
