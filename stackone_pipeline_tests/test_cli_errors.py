"""What a user sees when something is wrong: one `error:` line, the right exit code, nothing run.

Every case runs the real command in its own process, as a user would type it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from argparse import Namespace
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from stackone_pipeline.cli import report_window, short_error
from stackone_pipeline.http.transport import Action, Transport, retryable_statuses
from stackone_pipeline.simulator import DEFAULT_API_KEY

from .conftest import closed_hour
from .prometheus_server import free_port

CLEAN = {k: v for k, v in os.environ.items() if not k.startswith(("STACKONE_", "DAGSTER_HOME"))}


def cli(*args: str, env: dict | None = None, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stackone_pipeline.cli", *args],
        env={**CLEAN, **(env or {}), **extra},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("error: ") and "Traceback" not in out.stderr
    return lines[0]


def hour_range() -> list[str]:
    end = closed_hour(1)
    return ["--start", (end - timedelta(hours=1)).isoformat(), "--end", end.isoformat()]


KEY = {"STACKONE_API_KEY": DEFAULT_API_KEY}


@pytest.mark.parametrize(
    "env, names",
    [
        ({}, "STACKONE_API_KEY is not set"),
        ({"STACKONE_API_KEY": ""}, "STACKONE_API_KEY is empty"),
        ({"STACKONE_API_KEY": "v1.eu1.abc\n"}, "STACKONE_API_KEY contains spaces or line breaks"),
        ({**KEY, "STACKONE_PAGE_SIZE": "abc"}, "STACKONE_PAGE_SIZE must be an integer"),
        ({**KEY, "STACKONE_CONCURRENCY": "0"}, "STACKONE_CONCURRENCY must be at least 1"),
        ({**KEY, "STACKONE_RETENTION_DAYS": "99999"}, "STACKONE_RETENTION_DAYS must be between 1 and 3650"),
        ({**KEY, "STACKONE_ALERT_P95_MS": "-1"}, "STACKONE_ALERT_P95_MS) must be positive"),
        ({**KEY, "STACKONE_ALERT_ERROR_RATE_5M": "nan"}, "STACKONE_ALERT_ERROR_RATE_5M must be a finite number"),
        ({**KEY, "STACKONE_DETAILS_SHARE": "2"}, "STACKONE_DETAILS_SHARE must be a fraction"),
        ({**KEY, "STACKONE_KEEP_BODIES": "maybe"}, "STACKONE_KEEP_BODIES must be true or false"),
        ({**KEY, "STACKONE_AUTOMATION": "yes please"}, "STACKONE_AUTOMATION must be true or false"),
        ({**KEY, "STACKONE_BASE_URL": "api.stackone.com"}, "STACKONE_BASE_URL must be an http:// or https:// URL"),
        ({**KEY, "LOKI_URL": "loki:3100"}, "LOKI_URL must be an http:// or https:// URL"),
        ({**KEY, "STACKONE_STATE_URL": "mysql://u:pw@db/x"}, "STACKONE_STATE_URL must be a postgresql:// URL"),
        ({**KEY, "STACKONE_SCRATCH_PER_RUN": "true"}, "STACKONE_SCRATCH_PER_RUN=true removes each run's directory"),
    ],
)
def test_a_configuration_mistake_is_one_line_naming_the_variable_and_exit_2(tmp_path, env, names):
    out = cli("backfill", *hour_range(), env=env, STACKONE_DATA_DIR=str(tmp_path / "data"))
    assert out.returncode == 2
    assert names in one_error_line(out)
    assert not (tmp_path / "data").exists()  # nothing ran


def test_a_secret_in_a_wrong_url_is_not_echoed(tmp_path):
    out = cli("report", STACKONE_NOTIFY_SLACK_URL="hooks.slack.com/services/T0/B0/s3cr3t-token")
    assert out.returncode == 2 and "STACKONE_NOTIFY_SLACK_URL" in one_error_line(out)
    assert "s3cr3t" not in out.stderr
    out = cli("report", STACKONE_STATE_URL="mysql://stackone:s3cr3t-pw@db/state")
    assert out.returncode == 2 and "STACKONE_STATE_URL" in one_error_line(out)
    assert "s3cr3t" not in out.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["demo", "--hours", "0"], "argument --hours: must be at least 1, not 0"),
        (["demo", "--hours", "-5"], "argument --hours: must be at least 1"),
        (["demo", "--hours", "99999"], "--hours must be at most 2159"),
        (["report", "--since", "0h"], "--since must be a positive length of time"),
        (["report", "--since=-3h"], "--since must be a positive length of time"),
        (["report", "--since", "lots"], "--since takes a number and a unit"),
        (["report", "--start", "2026-11-30T10:00Z", "--end", "2026-11-30T10:00Z"], "the report window is empty"),
        (["report", "--start", "yesterday"], "not an ISO-8601 date-time"),
        (["backfill", "--start", "2026-11-30T10:00Z"], "the following arguments are required: --end"),
        (["backfill", "--start", "2020-01-01T00:00Z", "--end", "2020-01-01T03:00Z"], "90-day log retention"),
        (["simulate", "--port", "70000"], "argument --port: must be between 0 and 65535"),
        (["webhooks", "--tolerance", "-1"], "argument --tolerance: must be a positive number"),
    ],
)
def test_a_wrong_option_is_one_line_and_exit_2(tmp_path, args, says):
    out = cli(*args, **KEY, STACKONE_DATA_DIR=str(tmp_path / "data"))
    assert out.returncode == 2
    assert says in one_error_line(out)


def test_a_host_that_does_not_resolve_fails_at_once_in_one_line(tmp_path):
    started = time.monotonic()
    out = cli(
        "backfill",
        *hour_range(),
        **KEY,
        STACKONE_BASE_URL="http://no-such-host.invalid",
        STACKONE_DATA_DIR=str(tmp_path),
    )
    assert time.monotonic() - started < 60  # the retry deadline alone is 120 s
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "the host name 'no-such-host.invalid' does not resolve" in errors[0]
    assert "dagster._core" not in out.stderr and "Stack Trace" not in out.stderr and "Traceback" not in out.stderr
    assert "--verbose" in out.stderr.splitlines()[-1]
    verbose = cli(
        "backfill",
        *hour_range(),
        "--verbose",
        **KEY,
        STACKONE_BASE_URL="http://no-such-host.invalid",
        STACKONE_DATA_DIR=str(tmp_path),
    )
    assert verbose.returncode == 1 and "Stack Trace" in verbose.stderr


def test_transport_fails_at_once_on_urls_that_can_never_work_and_briefly_retries_a_refused_port():
    classify = retryable_statuses({500})
    for base, says in [
        ("localhost:8765", "needs http:// or https://"),
        ("http://no-such-host.invalid", "does not resolve"),
    ]:
        t = Transport(base_url=base, sleep=lambda s: None)
        sent = t.get("/requests/logs", classify)
        assert sent.attempts == 1 and sent.verdict.action is Action.FAIL and says in sent.verdict.reason
    waits: list[float] = []
    t = Transport(base_url=f"http://127.0.0.1:{free_port()}", sleep=waits.append, max_attempts=8)
    sent = t.get("/", classify)
    assert sent.verdict.action is Action.FAIL and sent.gave_up == "attempts"
    assert sent.attempts == 3 and "connection refused" in sent.last_reason and sum(waits) < 5


def test_a_refused_connection_is_retried_until_the_server_is_there(sim):
    """A short retry still rides out a server that is restarting: the refusals stop counting once
    an answer comes."""
    port = free_port()
    attempts = []

    def before():
        attempts.append(1)
        if len(attempts) == 3:  # the third attempt finds the server
            t.http = httpx.Client(base_url=sim.url)

    t = Transport(base_url=f"http://127.0.0.1:{port}", sleep=lambda s: None)
    sent = t.send("GET", "/requests/logs", retryable_statuses({500}), before_attempt=before)
    assert sent.response is not None and sent.attempts == 3


def test_short_error_keeps_the_deepest_cause_on_one_line():
    text = (
        'dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op "request_logs":\n\n'
        '  File "x.py", line 1\n\nThe above exception was caused by the following exception:\n'
        "stackone_pipeline.stackone.client.StackOneAuthError: the API key was rejected (401)\n\n"
        'Stack Trace:\n  File "y.py", line 2\n'
    )
    assert short_error(text) == "StackOneAuthError: the API key was rejected (401)"
    failure = "dagster._core.definitions.events.Failure: 2 of 2 hours failed:\nA: x\nB: y\n\nStack Trace:\n  ..."
    assert short_error(failure) == "2 of 2 hours failed: A: x; B: y"


def test_since_24h_is_the_last_24_closed_hours():
    now = datetime(2026, 12, 2, 15, 52, tzinfo=timezone.utc)
    start, end = report_window(Namespace(start=None, end=None, since="24h"), now)
    assert (start, end) == (
        datetime(2026, 12, 1, 15, tzinfo=timezone.utc),
        datetime(2026, 12, 2, 15, tzinfo=timezone.utc),
    )
    start, end = report_window(Namespace(start=None, end=None, since="90m"), now)
    assert end - start == timedelta(hours=2) and end == datetime(2026, 12, 2, 15, tzinfo=timezone.utc)
