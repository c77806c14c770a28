"""All configuration, read from the environment in one place, validated once, with clear errors.

`Settings.from_env()` is called once, by definitions.py (and the CLI); everything else receives
a `Settings` (or a part of it). Secrets are read here only to know that they are set: the
Dagster resources refer to them as `EnvVar`s (`secret_vars()`), so their values are resolved
when a run starts and never shown in the UI.

| variable                           | default                  | meaning                                   |
|------------------------------------|--------------------------|-------------------------------------------|
| STACKONE_API_KEY                   | (required to ingest)     | the API key (HTTP Basic username)         |
| STACKONE_PROJECTS                  | (one: default)           | name=VAR,... several projects (projects.py)|
| STACKONE_BASE_URL                  | https://api.stackone.com |                                           |
| STACKONE_DATA_DIR                  | ./data                   | lake, warehouse.duckdb, query.duckdb      |
| STACKONE_RATE_LIMIT_PER_MINUTE     | 1000                     | client-side pacing per key                |
| STACKONE_PAGE_SIZE                 | (adaptive)               | records per page asked; unset: the largest|
|                                    |                          | page the API serves, learnt from clamps   |
|                                    |                          | and 400s (stackone/page_size.py); each    |
|                                    |                          | hour's metadata has the size (`page_size`)|
| STACKONE_CONCURRENCY               | 4                        | hours fetched at once in one run          |
| STACKONE_RETENTION_DAYS            | 90                       | the project's log retention at StackOne   |
| STACKONE_KEEP_BODIES               | false                    | keep request/response bodies (redacted)   |
| STACKONE_REDACT_NAMES              |                          | extra header/field names to redact        |
| STACKONE_ENV                       | prod                     | `env` label/tag of every sink             |
| STACKONE_ALERT_*                   | see `Thresholds`         | alert thresholds                          |
| STACKONE_DETAILS, STACKONE_DETAILS_* | see `DetailsSettings`  | detail records of failed requests         |
| STACKONE_AUTOMATION, _SCHEDULE_LAG_MINUTES, _LOOKBACK_HOURS | see `AutomationSettings` |          |
| STACKONE_NOTIFY_*, STACKONE_DAGSTER_URL | see `NotifySettings` | notification channels                |
| STACKONE_WEBHOOK_SECRET, _SECRETS  | see `WebhookSettings`    | the webhook receiver's signing secret(s)  |
| LOKI_*, DATADOG_*, OTEL_*, PROMETHEUS_* | see each sink's settings | a sink is on when its URL/key is set |
| STACKONE_LAKE_URL                  | (data dir's lake/)       | s3://bucket/prefix: the lake in an object |
|                                    |                          | store (docs/deploy.md); file:///path      |
| STACKONE_STATE_URL                 | (warehouse.duckdb)       | postgresql://…: ledger, late arrivals,    |
|                                    |                          | notifications, rate limit, locks shared   |
| STACKONE_BACKFILL_RUN_HOURS        | (one run per backfill)   | hours per run of a Dagster backfill: its  |
|                                    |                          | chunks run in parallel on the workers     |
| STACKONE_SCRATCH_PER_RUN           | false                    | each run in its own scratch directory,    |
|                                    |                          | removed after (needs the two URLs above)  |
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from urllib.parse import unquote, urlsplit

from .projects import Project, parse_projects

Env = Mapping[str, str]


class UsageError(ValueError):
    """A wrong setting, option or range: the CLI prints it as one `error:` line, exit 2, nothing run."""


class SettingsError(UsageError):
    pass


def env_int(env: Env, name: str, default: int, lo: int = 1, hi: int | None = None) -> int:
    """An integer variable in [lo, hi], or `default` when unset; a clear error otherwise."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise SettingsError(f"{name} must be {bounds}, got {value}")
    return value


def env_bool(env: Env, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def env_float(env: Env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    return value


def env_url(env: Env, name: str, default: str = "") -> str:
    """An http(s) URL with a host, or `default` when unset: a URL without a scheme would only fail
    later, on every retry of every request."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname or ''}…" if parts.scheme and parts.hostname else "this value"
        raise SettingsError(
            f"{name} must be an http:// or https:// URL with a host name (e.g. https://host:port), not {shown}"
        )
    return raw


def require_api_key(env: Env | None = None, name: str = "STACKONE_API_KEY") -> None:
    """Before a run starts: the key is set, and looks like one (a pasted newline or space would
    only show as a 401 on the first request)."""
    env = os.environ if env is None else env
    key = env.get(name)
    if key is None:
        raise SettingsError(f"{name} is not set: export {name}=<your StackOne API key>")
    if not key.strip():
        raise SettingsError(f"{name} is empty: export {name}=<your StackOne API key>")
    if key != key.strip() or any(c.isspace() for c in key):
        raise SettingsError(f"{name} contains spaces or line breaks: set it to the key alone")


DEFAULT_RETENTION_DAYS = 90  # StackOne's log retention unless the project set another


def projects_from_env(env: Env) -> tuple[Project, ...]:
    try:
        return parse_projects(env.get("STACKONE_PROJECTS", ""))
    except ValueError as exc:
        raise SettingsError(f"STACKONE_PROJECTS: {exc}") from None


def retention_days_from_env(env: Env | None = None) -> int:
    """STACKONE_RETENTION_DAYS (1-3650, default 90). Read on its own by partitions.py when it is
    imported (the hourly partitions start at the retention horizon), and by `Settings.from_env`."""
    env = os.environ if env is None else env
    return env_int(env, "STACKONE_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, 1, 3650)


# -- a deployment beyond one machine (docs/deploy.md) --------------------------------------------
# Read on their own by the modules they place (storage.py, the rate limiter, webhook staging,
# partitions.py): every process of a deployment, sensors and run workers alike, shares them.
def lake_url_from_env(env: Env | None = None) -> str:
    """STACKONE_LAKE_URL: "" (the data directory's lake/), file:///path, or s3://bucket/prefix."""
    return (os.environ if env is None else env).get("STACKONE_LAKE_URL", "").strip()


def is_postgres_url(url: str | None) -> bool:
    """Whether `url` names a PostgreSQL database (postgresql://, postgres://, postgresql+driver://)."""
    return bool(url) and urlsplit(url).scheme.split("+")[0] in ("postgresql", "postgres")


def state_url_from_env(env: Env | None = None) -> str:
    """STACKONE_STATE_URL: "" (the data directory) or postgresql://… (the shared state)."""
    url = (os.environ if env is None else env).get("STACKONE_STATE_URL", "").strip()
    if url and not is_postgres_url(url):
        raise SettingsError(f"STACKONE_STATE_URL must be a postgresql:// URL, got one starting {url.split(':')[0]}:")
    return url


def backfill_run_hours_from_env(env: Env | None = None) -> int:
    """STACKONE_BACKFILL_RUN_HOURS: hours per run of a Dagster backfill; 0 (unset): one run."""
    return env_int(os.environ if env is None else env, "STACKONE_BACKFILL_RUN_HOURS", 0, lo=0)


def _secrets(values: dict[str, str], names: dict[str, str]) -> dict[str, str]:
    """{field: variable} for the secret fields that are set."""
    return {f: var for f, var in names.items() if values.get(f)}


# -- analytics and automation ------------------------------------------------------------------
class ThresholdsError(SettingsError):
    pass


SEVERITIES = ("WARN", "ERROR")


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds (the guide's "Key Metrics to Track"). Values equal to a threshold pass:
    only *crossing* one fails. 3.5 is Iglewicz and Hoaglin's cut-off for the modified z-score.

    STACKONE_ALERT_ERROR_RATE_5M (0.05), _P95_MS (2000), _PROVIDER_ERROR_RATE (0.10),
    _VOLUME_SCORE (3.5), _SEVERITY (WARN or ERROR)."""

    error_rate_5m: float = 0.05
    p95_ms: float = 2000.0
    provider_error_rate: float = 0.10
    volume_score: float = 3.5
    severity: str = "WARN"

    VARS = {
        "error_rate_5m": "STACKONE_ALERT_ERROR_RATE_5M",
        "p95_ms": "STACKONE_ALERT_P95_MS",
        "provider_error_rate": "STACKONE_ALERT_PROVIDER_ERROR_RATE",
        "volume_score": "STACKONE_ALERT_VOLUME_SCORE",
        "severity": "STACKONE_ALERT_SEVERITY",
    }

    def __post_init__(self):
        def named(f):
            return f"{f} ({self.VARS[f]})"

        for name in ("error_rate_5m", "provider_error_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ThresholdsError(f"{named(name)} must be a fraction between 0 and 1, got {getattr(self, name)}")
        for name in ("p95_ms", "volume_score"):
            if getattr(self, name) <= 0:
                raise ThresholdsError(f"{named(name)} must be positive, got {getattr(self, name)}")
        if self.severity not in SEVERITIES:
            raise ThresholdsError(f"{named('severity')} must be WARN or ERROR, got {self.severity!r}")

    @classmethod
    def from_env(cls, env: Env | None = None) -> Thresholds:
        env = os.environ if env is None else env
        try:
            return cls(
                error_rate_5m=env_float(env, "STACKONE_ALERT_ERROR_RATE_5M", cls.error_rate_5m),
                p95_ms=env_float(env, "STACKONE_ALERT_P95_MS", cls.p95_ms),
                provider_error_rate=env_float(env, "STACKONE_ALERT_PROVIDER_ERROR_RATE", cls.provider_error_rate),
                volume_score=env_float(env, "STACKONE_ALERT_VOLUME_SCORE", cls.volume_score),
                severity=(env.get("STACKONE_ALERT_SEVERITY") or cls.severity).strip().upper(),
            )
        except ThresholdsError:
            raise
        except SettingsError as exc:
            raise ThresholdsError(str(exc)) from None

    def sql_params(self) -> dict[str, float]:
        """The numeric thresholds as named SQL parameters ($error_rate_5m, ...)."""
        return {k: float(v) for k, v in asdict(self).items() if k != "severity"}


@dataclass(frozen=True)
class AutomationSettings:
    """STACKONE_AUTOMATION (off; `on`: schedules and sensors start RUNNING),
    STACKONE_SCHEDULE_LAG_MINUTES (5: minutes after the hour closes that it is ingested, 0-59),
    STACKONE_LOOKBACK_HOURS (3: earlier hours re-ingested each hour for late logs; 0 = off)."""

    enabled: bool = False
    lag_minutes: int = 5
    lookback_hours: int = 3

    @classmethod
    def from_env(cls, env: Env | None = None) -> AutomationSettings:
        env = os.environ if env is None else env
        return cls(
            enabled=env_bool(env, "STACKONE_AUTOMATION", False),
            lag_minutes=env_int(env, "STACKONE_SCHEDULE_LAG_MINUTES", cls.lag_minutes, 0, 59),
            lookback_hours=env_int(env, "STACKONE_LOOKBACK_HOURS", cls.lookback_hours, 0, 24 * 7),
        )

    @property
    def keep_baseline_hours(self) -> int:
        """Hours of late-arrival baselines to keep behind the newest: the lookback and a margin."""
        return max(48, self.lookback_hours + 2)


@dataclass(frozen=True)
class NotifySettings:
    """STACKONE_NOTIFY_WEBHOOK_URL (generic JSON webhook), STACKONE_NOTIFY_SLACK_URL (Slack incoming
    webhook), STACKONE_NOTIFY_ALERTMANAGER_URL (e.g. http://alertmanager:9093), STACKONE_DAGSTER_URL
    (the UI, linked from messages). The URLs carry tokens: they are secrets."""

    webhook_url: str = field(default="", repr=False)
    slack_url: str = field(default="", repr=False)
    alertmanager_url: str = field(default="", repr=False)
    dagster_url: str = "http://127.0.0.1:3000"

    SECRET_VARS = {
        "webhook_url": "STACKONE_NOTIFY_WEBHOOK_URL",
        "slack_url": "STACKONE_NOTIFY_SLACK_URL",
        "alertmanager_url": "STACKONE_NOTIFY_ALERTMANAGER_URL",
    }

    @classmethod
    def from_env(cls, env: Env | None = None) -> NotifySettings:
        env = os.environ if env is None else env
        urls = {f: env_url(env, var) for f, var in cls.SECRET_VARS.items()}
        return cls(**urls, dagster_url=env_url(env, "STACKONE_DAGSTER_URL", cls.dagster_url))

    def secret_vars(self) -> dict[str, str]:
        return _secrets(asdict(self), self.SECRET_VARS)


@dataclass(frozen=True)
class DetailsSettings:
    """The detail records (`GET /requests/logs/{id}`: request, response, provider errors) of each
    hour's failed requests, in `request_log_details`.

    STACKONE_DETAILS (on), STACKONE_DETAILS_SLOW_MS (0: off; else requests at least this slow
    too), STACKONE_DETAILS_SHARE (0.25: the most of the key's rate limit detail fetches may use,
    so ingestion is never starved), STACKONE_DETAILS_MAX_PER_HOUR (100: the rest are counted)."""

    enabled: bool = True
    slow_ms: float = 0.0
    share: float = 0.25
    max_per_hour: int = 100

    @classmethod
    def from_env(cls, env: Env | None = None) -> DetailsSettings:
        env = os.environ if env is None else env
        share = env_float(env, "STACKONE_DETAILS_SHARE", cls.share)
        if not 0 < share <= 1:
            raise SettingsError(f"STACKONE_DETAILS_SHARE must be a fraction in (0, 1], got {share}")
        slow = env_float(env, "STACKONE_DETAILS_SLOW_MS", cls.slow_ms)
        if slow < 0:
            raise SettingsError(f"STACKONE_DETAILS_SLOW_MS must be 0 (off) or positive, got {slow}")
        return cls(
            enabled=env_bool(env, "STACKONE_DETAILS", cls.enabled),
            slow_ms=slow,
            share=share,
            max_per_hour=env_int(env, "STACKONE_DETAILS_MAX_PER_HOUR", cls.max_per_hour, lo=0),
        )


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook receiver's signing secrets (`stackone-pipeline webhooks`; the CLI passes them).

    STACKONE_WEBHOOK_SECRET (one secret) and STACKONE_WEBHOOK_SECRETS (several, comma-separated:
    while rotating, `old,new`); a delivery signed with any of them is accepted. Both may be set
    (the union is used, SECRETS first). A secret containing a comma goes in STACKONE_WEBHOOK_SECRET."""

    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: Env | None = None) -> WebhookSettings:
        env = os.environ if env is None else env
        listed = [s.strip() for s in (env.get("STACKONE_WEBHOOK_SECRETS") or "").split(",")]
        single = env.get("STACKONE_WEBHOOK_SECRET") or ""
        found = [s for s in [*listed, single] if s.strip()]
        return cls(secrets=tuple(dict.fromkeys(found)))


# -- sinks: each is on when its endpoint (or key) is set ------------------------------------------
@dataclass(frozen=True)
class LokiSettings:
    """LOKI_URL (base or full push URL), LOKI_TENANT_ID (X-Scope-OrgID), LOKI_USERNAME and
    LOKI_PASSWORD (basic auth), LOKI_MAX_AGE_HOURS (Loki's reject_old_samples_max_age, 168)."""

    url: str
    env: str = "prod"
    max_age_hours: int = 168
    tenant_id: str = ""
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Env) -> LokiSettings | None:
        url = env_url(env, "LOKI_URL")
        if not url:
            return None
        return cls(
            url=url,
            env=env.get("STACKONE_ENV") or "prod",
            max_age_hours=env_int(env, "LOKI_MAX_AGE_HOURS", 168),
            tenant_id=env.get("LOKI_TENANT_ID") or "",
            username=env.get("LOKI_USERNAME") or "",
            password=env.get("LOKI_PASSWORD") or "",
        )

    def secret_vars(self) -> dict[str, str]:
        return _secrets(asdict(self), {"password": "LOKI_PASSWORD"})


@dataclass(frozen=True)
class DatadogSettings:
    """DATADOG_API_KEY, DATADOG_SITE (datadoghq.com), DATADOG_LOGS_URL (overrides the site's
    intake), DATADOG_SEND_OLD_AS_METRICS (false) and DATADOG_METRICS_URL."""

    api_key: str = field(repr=False)
    site: str = "datadoghq.com"
    logs_url: str = ""
    env: str = "prod"
    send_old_as_metrics: bool = False
    metrics_url: str = ""

    @classmethod
    def from_env(cls, env: Env) -> DatadogSettings | None:
        key = env.get("DATADOG_API_KEY")
        if not key:
            return None
        return cls(
            api_key=key,
            site=env.get("DATADOG_SITE") or "datadoghq.com",
            logs_url=env_url(env, "DATADOG_LOGS_URL"),
            env=env.get("STACKONE_ENV") or "prod",
            send_old_as_metrics=env_bool(env, "DATADOG_SEND_OLD_AS_METRICS", False),
            metrics_url=env_url(env, "DATADOG_METRICS_URL"),
        )

    def secret_vars(self) -> dict[str, str]:
        return _secrets(asdict(self), {"api_key": "DATADOG_API_KEY"})


DEFAULT_OTEL_SERVICE_NAME = "stackone-request-log"


@dataclass(frozen=True)
class OtlpSettings:
    """The OpenTelemetry SDK's variables: OTEL_EXPORTER_OTLP_LOGS_ENDPOINT (used as given) or
    OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/logs); headers from OTEL_EXPORTER_OTLP_LOGS_HEADERS, else
    OTEL_EXPORTER_OTLP_HEADERS (`k=v,k2=v2`, URL-encoded; a secret: tokens live there);
    OTEL_SERVICE_NAME over OTEL_RESOURCE_ATTRIBUTES."""

    url: str
    headers: str = field(default="", repr=False)
    headers_var: str = "OTEL_EXPORTER_OTLP_HEADERS"
    resource_attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Env) -> OtlpSettings | None:
        if url := env_url(env, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
            pass
        elif base := env_url(env, "OTEL_EXPORTER_OTLP_ENDPOINT"):
            url = f"{base.removesuffix('/')}/v1/logs"
        else:
            return None
        var = "OTEL_EXPORTER_OTLP_LOGS_HEADERS" if env.get("OTEL_EXPORTER_OTLP_LOGS_HEADERS") else cls.headers_var
        attrs = {}
        for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
            key, sep, value = item.partition("=")
            if sep and key.strip():  # URL-encoded; keys keep their case
                attrs[unquote(key.strip())] = unquote(value.strip())
        attrs["service.name"] = env.get("OTEL_SERVICE_NAME") or attrs.get("service.name") or DEFAULT_OTEL_SERVICE_NAME
        return cls(url=url, headers=env.get(var) or "", headers_var=var, resource_attributes=attrs)

    def secret_vars(self) -> dict[str, str]:
        return _secrets(asdict(self), {"headers": self.headers_var})


@dataclass(frozen=True)
class PrometheusSettings:
    """PROMETHEUS_REMOTE_WRITE_URL (…/api/v1/write), PROMETHEUS_URL (query and admin API, for a
    forced resend; default: the write URL's base), PROMETHEUS_USERNAME / PROMETHEUS_PASSWORD."""

    write_url: str
    api_url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, env: Env) -> PrometheusSettings | None:
        url = env_url(env, "PROMETHEUS_REMOTE_WRITE_URL")
        if not url:
            return None
        return cls(
            write_url=url,
            api_url=env_url(env, "PROMETHEUS_URL").rstrip("/"),
            username=env.get("PROMETHEUS_USERNAME") or "",
            password=env.get("PROMETHEUS_PASSWORD") or "",
        )

    def secret_vars(self) -> dict[str, str]:
        return _secrets(asdict(self), {"password": "PROMETHEUS_PASSWORD"})


# -- everything -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    base_url: str = "https://api.stackone.com"
    data_dir: str = "./data"
    rate_limit_per_minute: int = 1000
    page_size: int | None = None  # None: the largest page the API serves (stackone/page_size.py)
    concurrency: int = 4  # hours fetched at once inside one run (all share the rate limit)
    retention_days: int = DEFAULT_RETENTION_DAYS  # StackOne's log retention for the project
    keep_bodies: bool = False
    redact_names: tuple[str, ...] = ()
    projects: tuple[Project, ...] = (Project(),)
    thresholds: Thresholds = Thresholds()
    details: DetailsSettings = DetailsSettings()
    automation: AutomationSettings = AutomationSettings()
    notify: NotifySettings = NotifySettings()
    loki: LokiSettings | None = None
    datadog: DatadogSettings | None = None
    otlp: OtlpSettings | None = None
    prometheus: PrometheusSettings | None = None
    scratch_per_run: bool = False  # docs/deploy.md: runs on workers with no shared disk

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        scratch_per_run = env_bool(env, "STACKONE_SCRATCH_PER_RUN", False)
        if scratch_per_run and not (lake_url_from_env(env) and state_url_from_env(env)):
            raise SettingsError(
                "STACKONE_SCRATCH_PER_RUN=true removes each run's directory when it ends: it needs the lake "
                "and the state elsewhere (STACKONE_LAKE_URL and STACKONE_STATE_URL), or the data would go with it"
            )
        state_url_from_env(env)  # a wrong URL is one clear error here, before anything runs
        return cls(
            base_url=env_url(env, "STACKONE_BASE_URL", cls.base_url),
            data_dir=env.get("STACKONE_DATA_DIR") or cls.data_dir,
            rate_limit_per_minute=env_int(env, "STACKONE_RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute),
            page_size=env_int(env, "STACKONE_PAGE_SIZE", 0) or None,  # unset: adaptive
            concurrency=env_int(env, "STACKONE_CONCURRENCY", cls.concurrency),
            retention_days=retention_days_from_env(env),
            keep_bodies=env_bool(env, "STACKONE_KEEP_BODIES", False),
            redact_names=tuple(n.strip() for n in env.get("STACKONE_REDACT_NAMES", "").split(",") if n.strip()),
            projects=projects_from_env(env),
            thresholds=Thresholds.from_env(env),
            details=DetailsSettings.from_env(env),
            automation=AutomationSettings.from_env(env),
            notify=NotifySettings.from_env(env),
            loki=LokiSettings.from_env(env),
            datadog=DatadogSettings.from_env(env),
            otlp=OtlpSettings.from_env(env),
            prometheus=PrometheusSettings.from_env(env),
            scratch_per_run=scratch_per_run,
        )

    def project(self, name: str) -> Project:
        for p in self.projects:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.projects)
        raise SettingsError(f"no project {name!r} (STACKONE_PROJECTS has: {known})")

    def sink(self, name: str):
        """The settings of sink `name`, or None when it is not configured."""
        return getattr(self, name)


def batch_dagster_events() -> None:
    """Turn on Dagster's own event batching (read as each event is stored) unless the user chose:
    the materializations a step makes of many hours go in one statement instead of one each (a
    90-day step has 2,150 of them per table; one each cost ~35 ms on PostgreSQL with Dagster's
    storage, ~4 ms on our SQLite one). dagster_event_log.py stores the batches."""
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
