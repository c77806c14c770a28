"""Fixtures: a real simulator on 127.0.0.1, clients against it, a temporary data directory.

The simulator's list pages carry StackOne's partial records (the SDK's shape) unless
`STACKONE_SIM_LIST_SHAPE=full` runs the suite in the guide's full-record shape. Tests about what
becomes of logged headers and bodies pin `list_shape="full"` themselves.
"""

from __future__ import annotations

import os
import warnings
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from stackone_pipeline.http import Transport
from stackone_pipeline.partitions import hourly_partitions
from stackone_pipeline.resources import SINK_RESOURCES, StackOneResource, StorageResource, build_resources
from stackone_pipeline.settings import Settings
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator
from stackone_pipeline.simulator.config import LIST_SHAPES
from stackone_pipeline.stackone.client import EncodingMemo, StackOneClient
from stackone_pipeline.stackone.page_size import PageSizeMemo
from stackone_pipeline.stackone.ratelimit import RateLimiter
from stackone_pipeline.storage import Storage

from .inbox import Inbox

warnings.filterwarnings("ignore", module="dagster")

SIM_LIST_SHAPE = os.environ.get("STACKONE_SIM_LIST_SHAPE") or "partial"
if SIM_LIST_SHAPE not in LIST_SHAPES:
    raise ValueError(f"STACKONE_SIM_LIST_SHAPE must be one of {', '.join(LIST_SHAPES)}, got {SIM_LIST_SHAPE!r}")


def closed_hour(hours_ago: int = 2) -> datetime:
    """A closed UTC hour `hours_ago` hours before the current one."""
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=hours_ago)


def http_error(record: dict) -> bool:
    return (record["status"] or 0) >= 400


def closed_hour_with_errors(sim, hours_ago: int = 2, at_least: int = 1, error=http_error) -> datetime:
    """The newest closed hour at least `hours_ago` back whose simulated traffic has `at_least`
    errors (`error` says what counts; a quiet hour may have none, and a test about errors must
    not depend on the clock)."""
    for ago in range(hours_ago, hours_ago + 48):
        hour = closed_hour(ago)
        records = sim.simulator.expected_records(hour, hour + timedelta(hours=1))
        if sum(1 for r in records if error(r)) >= at_least:
            return hour
    raise AssertionError(f"two days of simulated traffic without an hour of {at_least} errors")


def partition_key(hour: datetime) -> str:
    return hourly_partitions.get_partition_key_for_timestamp(hour.timestamp())


def pipeline_resources(sim_url: str, data_dir, sinks: dict | None = None, **stackone) -> dict:
    """The resources a Dagster test run needs: the simulator (no client-side limit to speak of),
    a data directory, and every sink off unless `sinks` (e.g. `sink_resources(env)`) turns it on."""
    return {
        "stackone": StackOneResource(
            api_key=DEFAULT_API_KEY, base_url=sim_url, rate_limit_per_minute=100_000, **stackone
        ),
        "storage": StorageResource(data_dir=str(data_dir)),
        **{name: resource() for name, resource in SINK_RESOURCES.items()},
        **(sinks or {}),
    }


def sink_resources(env) -> dict:
    """The sink resources that `env` configures, exactly as the definitions build them."""
    return {k: v for k, v in build_resources(Settings.from_env(env)).items() if k in SINK_RESOURCES}


@pytest.fixture
def sim_config() -> SimulatorConfig:
    return SimulatorConfig(seed=7, rows_per_hour=300, diurnal=False, list_shape=SIM_LIST_SHAPE)


@pytest.fixture
def sim(sim_config):
    with start_simulator(sim_config) as running:
        yield running


@pytest.fixture
def make_client(sim):
    clients = []
    # the test's clients share what they learn, and nothing from other tests
    memo, page_size_memo = EncodingMemo(), PageSizeMemo()

    def make(**kw) -> StackOneClient:
        kw.setdefault("rate_limiter", RateLimiter(100_000))
        kw.setdefault("encoding_memo", memo)
        kw.setdefault("page_size_memo", page_size_memo)
        kw.setdefault("backoff_base_s", 0.05)
        kw.setdefault("page_size", 100)
        client = StackOneClient(kw.pop("api_key", DEFAULT_API_KEY), kw.pop("base_url", sim.url), **kw)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(tmp_path / "data", lock_timeout_s=30)


@pytest.fixture
def hooks():
    """Two JSON inboxes: a generic webhook and Slack."""
    webhook, slack = Inbox(), Inbox()
    yield webhook, slack
    for inbox in (webhook, slack):
        inbox.server.shutdown()
        inbox.server.server_close()


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def transport():
    """The sinks' transport with short backoffs (Retry-After is still honoured as sent)."""
    t = Transport(backoff_base_s=0.01, backoff_max_s=0.05)
    yield t
    t.close()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL cluster for the session (postgres_server.py); tests make their own database."""
    from .postgres_server import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One real S3-compatible server (moto) for the session; tests make their own bucket."""
    from .s3_server import running_s3

    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch) -> dict:
    """A fresh bucket, and this process's environment pointed at the store; `lake_url` is in it."""
    bucket = s3.create_bucket()
    env = {**s3.env(), "STACKONE_LAKE_URL": f"s3://{bucket}/stackone"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
