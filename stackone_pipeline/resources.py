"""Every Dagster resource, and `build_resources(settings)`: the one place they are configured.

Secrets (the API key, sink credentials, notification URLs) are `EnvVar`s: Dagster resolves them
when a run starts and never shows their values. Each resource is a thin, typed view of a part
of `Settings` that builds the plain object the stages use (a client, a `Storage`, a sink).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import ClassVar

import dagster as dg
from pydantic import PrivateAttr

from .http import Transport
from .ingest import RedactionSettings
from .notify import Notifier, channels
from .projects import DEFAULT_PROJECT
from .settings import DetailsSettings, NotifySettings, Settings, Thresholds
from .sinks.registry import BY_NAME, SINKS
from .stackone.client import StackOneClient
from .stackone.ratelimit import RateLimiter, shared_limiter
from .storage import Storage

RATE_LIMIT_STATE = ".ratelimit"  # in the data directory: each key's shared rate budget (ratelimit.py)


def _with_env_vars(values: dict, secret_vars: dict[str, str]) -> dict:
    """`values` with each secret replaced by a reference to its environment variable."""
    return {**values, **{f: dg.EnvVar(var) for f, var in secret_vars.items()}}


class ProjectKey(dg.Config):
    """One more StackOne project's key (projects.py), as an `EnvVar`."""

    name: str
    api_key: str


class StackOneResource(dg.ConfigurableResource):
    api_key: str = ""  # the default project's key
    projects: list[ProjectKey] = []  # every other project's
    base_url: str = "https://api.stackone.com"
    rate_limit_per_minute: int = 1000
    rate_limit_window_s: float = 60.0
    page_size: int | None = None  # None: the largest page the API serves (stackone/page_size.py)
    concurrency: int = 4
    retention_days: int = 90  # hours older than this are refused (StackOne no longer has them)
    deadline_s: float = 1800.0
    keep_bodies: bool = False
    redact_names: list[str] = []
    # Where each key's rate budget is shared with every other process that uses it ("": this
    # process only). The CLI and the definitions put it in the data directory. With
    # STACKONE_STATE_URL (the state shared between machines) the budget is a row of that
    # PostgreSQL database instead, shared by every machine (stackone/ratelimit.py).
    rate_limit_state_dir: str = ""

    @classmethod
    def from_settings(cls, s: Settings) -> StackOneResource:
        default = next((p for p in s.projects if p.is_default), None)
        return cls(
            api_key=dg.EnvVar(default.api_key_var) if default else "",
            projects=[
                ProjectKey(name=p.name, api_key=dg.EnvVar(p.api_key_var)) for p in s.projects if not p.is_default
            ],
            base_url=s.base_url,
            rate_limit_per_minute=s.rate_limit_per_minute,
            page_size=s.page_size,
            concurrency=s.concurrency,
            retention_days=s.retention_days,
            keep_bodies=s.keep_bodies,
            redact_names=list(s.redact_names),
            rate_limit_state_dir=str(Path(s.data_dir) / RATE_LIMIT_STATE),
        )

    def key(self, project: str = DEFAULT_PROJECT) -> str:
        if project == DEFAULT_PROJECT:
            return self.api_key
        return next((p.api_key for p in self.projects if p.name == project), "")

    def client(self, project: str = DEFAULT_PROJECT) -> StackOneClient:
        """A client with `project`'s key, paced by that key's shared budget."""
        key = self.key(project)
        return StackOneClient(
            key,
            self.base_url,
            rate_limiter=self._limiter(self.base_url, key, self.rate_limit_per_minute),
            page_size=self.page_size,
            deadline_s=self.deadline_s,
            max_connections=max(self.concurrency, 1),
        )

    def redaction(self) -> RedactionSettings:
        return RedactionSettings(keep_bodies=self.keep_bodies, extra_names=tuple(self.redact_names))

    def share_limiter(self, name: str, share: float, project: str = DEFAULT_PROJECT) -> RateLimiter:
        """A limiter at `share` of the key's limit, for work (detail fetches) that must never
        starve ingestion; its requests take from the key's own limiter as well."""
        return self._limiter(f"{self.base_url}#{name}", self.key(project), self.rate_limit_per_minute * share)

    def _limiter(self, base_url: str, key: str, per_minute: float) -> RateLimiter:
        """The key's budget, shared by every process of the deployment: a row of the PostgreSQL
        state when STACKONE_STATE_URL is set (shared_limiter reads it from the environment of the
        run, so the URL, which may hold a password, is never part of the resource's config), else
        a file of the state directory."""
        return shared_limiter(
            base_url,
            key,
            per_minute,
            self.rate_limit_window_s,
            self.rate_limit_state_dir or None,
        )


class DetailsResource(dg.ConfigurableResource):
    """Which failed requests get their detail record fetched (settings.DetailsSettings)."""

    enabled: bool = DetailsSettings.enabled
    slow_ms: float = DetailsSettings.slow_ms
    share: float = DetailsSettings.share
    max_per_hour: int = DetailsSettings.max_per_hour

    @classmethod
    def from_settings(cls, s: DetailsSettings) -> DetailsResource:
        return cls(**asdict(s))

    def settings(self) -> DetailsSettings:
        return DetailsSettings(
            enabled=self.enabled, slow_ms=self.slow_ms, share=self.share, max_per_hour=self.max_per_hour
        )


class StorageResource(dg.ConfigurableResource):
    data_dir: str = "./data"
    lock_timeout_s: float = 600.0
    # STACKONE_SCRATCH_PER_RUN: each run works in <data_dir>/runs/<run id>/, removed when it ends,
    # as a Kubernetes run pod's emptyDir is. Only with the lake and the state shared (settings.py
    # refuses it otherwise): then nothing a run needs is on a disk another run wrote.
    scratch_per_run: bool = False
    _run_id: str = PrivateAttr(default="")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_id = context.run_id or ""
        if self.scratch_per_run and self._run_id and context.instance is not None:
            self._sweep_ended_runs(context.instance)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self.scratch_per_run and self._run_id:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _sweep_ended_runs(self, instance: dg.DagsterInstance) -> None:
        """A run worker killed outright (SIGKILL, the out-of-memory killer) never reaches its
        teardown. A pod's emptyDir goes with the pod; on a machine that runs many runs, the next
        run removes such a directory once Dagster has the run as ended (its code server fails a
        run whose process died). A directory Dagster does not know is left alone."""
        try:
            names = [p.name for p in self._runs_dir.iterdir() if p.name != self._run_id]
        except OSError:
            return
        if not names:
            return
        for run in instance.get_runs(dg.RunsFilter(run_ids=names)):  # one query, whatever the count
            if run.is_finished:
                shutil.rmtree(self._runs_dir / run.run_id, ignore_errors=True)

    @property
    def _runs_dir(self) -> Path:
        return Path(self.data_dir) / "runs"

    @property
    def work_dir(self) -> Path:
        if self.scratch_per_run and self._run_id:
            return self._runs_dir / self._run_id
        return Path(self.data_dir)

    def storage(self, project: str = DEFAULT_PROJECT) -> Storage:
        return Storage(self.work_dir, lock_timeout_s=self.lock_timeout_s, project=project)


class AlertThresholdsResource(dg.ConfigurableResource):
    """The alert thresholds (settings.Thresholds)."""

    error_rate_5m: float = Thresholds.error_rate_5m
    p95_ms: float = Thresholds.p95_ms
    provider_error_rate: float = Thresholds.provider_error_rate
    volume_score: float = Thresholds.volume_score
    severity: str = Thresholds.severity

    @classmethod
    def from_thresholds(cls, t: Thresholds) -> AlertThresholdsResource:
        return cls(**asdict(t))

    def thresholds(self) -> Thresholds:
        return Thresholds(
            error_rate_5m=self.error_rate_5m,
            p95_ms=self.p95_ms,
            provider_error_rate=self.provider_error_rate,
            volume_score=self.volume_score,
            severity=self.severity.upper(),
        )


class NotifyResource(dg.ConfigurableResource):
    """The notification channels (settings.NotifySettings); unset URLs are channels left out."""

    webhook_url: str = ""
    slack_url: str = ""
    alertmanager_url: str = ""
    dagster_url: str = NotifySettings.dagster_url
    timeout_s: float = 5.0  # per request
    deadline_s: float = 10.0  # per message and channel, retries included: a down channel costs this once per tick
    alertmanager_refresh_s: float = 900.0

    @classmethod
    def from_settings(cls, s: NotifySettings) -> NotifyResource:
        return cls(**_with_env_vars({"dagster_url": s.dagster_url}, s.secret_vars()))

    def channel_names(self) -> list[str]:
        return [c.name for c in self._channels()]

    def notifier(self, storage: Storage) -> Notifier:
        return Notifier(
            storage,
            self._channels(),
            transport=lambda: Transport(
                timeout_s=self.timeout_s, max_attempts=3, deadline_s=self.deadline_s, backoff_base_s=0.2
            ),
        )

    def _channels(self):
        return channels(self.webhook_url, self.slack_url, self.alertmanager_url, self.alertmanager_refresh_s)


# -- sinks: one resource per sink, mirroring its settings ---------------------------------------------
class SinkResource(dg.ConfigurableResource):
    """Base of the sink resources: the fields are the sink's settings; `sink()` builds the sink.
    Built with no arguments, a sink resource is off: its delivery asset skips and says why."""

    name: ClassVar[str]
    key_field: ClassVar[str]  # the field that switches the sink on (its endpoint or key)

    @property
    def configured(self) -> bool:
        return bool(getattr(self, self.key_field))

    @classmethod
    def from_settings(cls, s) -> SinkResource:
        return cls(**_with_env_vars(asdict(s), s.secret_vars()))

    def settings(self):
        settings_class = BY_NAME[self.name].settings_class
        return settings_class(**{f.name: getattr(self, f.name) for f in fields(settings_class)})

    def sink(self):
        return BY_NAME[self.name].build(self.settings())


class LokiResource(SinkResource):
    name: ClassVar[str] = "loki"
    key_field: ClassVar[str] = "url"
    url: str = ""
    env: str = "prod"
    max_age_hours: int = 168
    tenant_id: str = ""
    username: str = ""
    password: str = ""


class DatadogResource(SinkResource):
    name: ClassVar[str] = "datadog"
    key_field: ClassVar[str] = "api_key"
    api_key: str = ""
    site: str = "datadoghq.com"
    logs_url: str = ""
    env: str = "prod"
    send_old_as_metrics: bool = False
    metrics_url: str = ""


class OtlpResource(SinkResource):
    name: ClassVar[str] = "otlp"
    key_field: ClassVar[str] = "url"
    url: str = ""
    headers: str = ""
    headers_var: str = "OTEL_EXPORTER_OTLP_HEADERS"
    resource_attributes: dict[str, str] = {}


class PrometheusResource(SinkResource):
    name: ClassVar[str] = "prometheus"
    key_field: ClassVar[str] = "write_url"
    write_url: str = ""
    api_url: str = ""
    username: str = ""
    password: str = ""


SINK_RESOURCES: dict[str, type[SinkResource]] = {
    r.name: r for r in (LokiResource, DatadogResource, OtlpResource, PrometheusResource)
}
assert set(SINK_RESOURCES) == {s.name for s in SINKS}, "every registered sink needs a resource"


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """Every resource the definitions need (a sink that is not configured gets an 'off' resource)."""
    resources: dict[str, dg.ConfigurableResource] = {
        "stackone": StackOneResource.from_settings(settings),
        "storage": StorageResource(data_dir=settings.data_dir, scratch_per_run=settings.scratch_per_run),
        "alerts": AlertThresholdsResource.from_thresholds(settings.thresholds),
        "details": DetailsResource.from_settings(settings.details),
        "notify": NotifyResource.from_settings(settings.notify),
    }
    for spec in SINKS:
        s, resource = settings.sink(spec.name), SINK_RESOURCES[spec.name]
        resources[spec.name] = resource() if s is None else resource.from_settings(s)
    return resources
