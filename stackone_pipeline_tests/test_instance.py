"""Runs whose process was killed (`kill -9`) do not stay STARTED: `fail_dead_runs` marks them failed
when the next `backfill` or `dev` starts, and leaves alone every run whose process still runs.
Also the dagster.yaml that `prepare_home` writes (run monitoring on) and when it writes it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from stackone_pipeline.dagster_event_log import KeptSqliteEventLogStorage
from stackone_pipeline.instance import (
    HOST_TAG,
    OURS_BEFORE,
    PID_TAG,
    PROCESS_START_TAG,
    dagster_yaml,
    fail_dead_runs,
    prepare_home,
    process,
    run_tags,
)
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator

from .conftest import closed_hour

CLI = Path(sys.executable).parent / "stackone-pipeline"
DROPPED_ENV_PREFIXES = ("STACKONE_", "DAGSTER_", "DATADOG_", "LOKI_", "OTEL_", "PROMETHEUS_")


def wait_for(what: str, fn, timeout_s: float = 120.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while not (found := fn()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    (record,) = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return record.event_log_entry.dagster_event.message


class RunInThisProcess:
    """A run executing in a thread of the test process (alive, for as long as the test wants)."""

    def __init__(self, home: Path, tags: dict):
        self.release = threading.Event()
        release = self.release

        @dg.asset
        def waits():
            assert release.wait(120)

        self.instance = dg.DagsterInstance.from_config(str(home))
        self.result = None
        marker = {"test/marker": uuid.uuid4().hex}  # to find the run
        self.thread = threading.Thread(
            target=lambda: setattr(
                self, "result", dg.materialize([waits], instance=self.instance, tags={**tags, **marker})
            )
        )
        self.thread.start()
        started = dg.RunsFilter(tags=marker, statuses=[dg.DagsterRunStatus.STARTED])
        self.run_id = wait_for(
            "the in-process run to start",
            lambda: next((r.dagster_run.run_id for r in self.instance.get_run_records(filters=started)), None),
        )

    def finish(self) -> bool:
        self.release.set()
        self.thread.join(60)
        self.instance.dispose()
        return self.result is not None and self.result.success


def test_a_killed_backfill_run_is_marked_failed_and_live_runs_are_left_alone(tmp_path):
    home = tmp_path / "home"
    prepare_home(home)
    end = closed_hour(1)
    with start_simulator(SimulatorConfig(seed=5, rows_per_hour=300, diurnal=False)) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
        env.update(
            STACKONE_API_KEY=DEFAULT_API_KEY,
            STACKONE_BASE_URL=sim.url,
            STACKONE_DATA_DIR=str(tmp_path / "data"),
            DAGSTER_HOME=str(home),
            # 10-row pages at 60 requests a minute: 30 s for each of the 2 hours, so it is mid-run when killed
            STACKONE_PAGE_SIZE="10",
            STACKONE_RATE_LIMIT_PER_MINUTE="60",
            STACKONE_CONCURRENCY="1",
        )
        cmd = [str(CLI), "backfill", "--start", (end - timedelta(hours=2)).isoformat(), "--end", end.isoformat()]
        # the test's instance first: two processes creating one SQLite instance at once collide
        instance = dg.DagsterInstance.from_config(str(home))
        backfill = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            killed = wait_for(
                "the backfill run to start",
                lambda: next(
                    (
                        r.dagster_run
                        for r in instance.get_run_records()
                        if r.dagster_run.status == dg.DagsterRunStatus.STARTED
                        and r.dagster_run.tags.get(PID_TAG) == str(backfill.pid)
                    ),
                    None,
                ),
                proc=backfill,
            )
            wait_for("the first request", lambda: sim.simulator.stats.snapshot()["total"] > 0, proc=backfill)
            os.kill(backfill.pid, signal.SIGKILL)
            backfill.communicate(timeout=30)
        finally:
            if backfill.poll() is None:
                backfill.kill()
                backfill.wait()
    assert backfill.returncode == -signal.SIGKILL
    assert killed.tags[HOST_TAG] == socket.gethostname() and PROCESS_START_TAG in killed.tags
    assert status(instance, killed.run_id) == dg.DagsterRunStatus.STARTED  # the bug: it stays so for ever

    # alive while the sweep runs: a backfill of this very process, and a run that inherited the
    # killed run's tags (as a re-execution from the UI does) but is executed by another process
    live = RunInThisProcess(home, run_tags())
    inherited = RunInThisProcess(home, {k: v for k, v in killed.tags.items() if k.startswith("stackone/")})
    try:
        assert fail_dead_runs(instance) == [killed.run_id]
        assert status(instance, killed.run_id) == dg.DagsterRunStatus.FAILURE
        message = failure_message(instance, killed.run_id)
        assert f"pid {backfill.pid} on {socket.gethostname()}" in message and "killed" in message
        assert status(instance, live.run_id) == status(instance, inherited.run_id) == dg.DagsterRunStatus.STARTED
        assert fail_dead_runs(instance, dev_runs=True) == []  # once is enough, and live runs stay
    finally:
        assert live.finish() and inherited.finish()
    assert status(instance, live.run_id) == dg.DagsterRunStatus.SUCCESS
    instance.dispose()


# A run that a process executes without our tags, as a run worker of `dagster dev` does.
UNTAGGED_RUN = textwrap.dedent(
    """
    import time
    import dagster as dg

    @dg.asset
    def sleeps():
        time.sleep(600)

    dg.materialize([sleeps], instance=dg.DagsterInstance.get())
    """
)


def test_a_killed_run_without_our_tags_is_failed_only_when_dev_asks(tmp_path):
    home = tmp_path / "home"
    prepare_home(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
    worker = subprocess.Popen(
        [sys.executable, "-c", UNTAGGED_RUN],
        env={**env, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        run_id = wait_for(
            "the run to start",
            lambda: next(
                (
                    r.dagster_run.run_id
                    for r in instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
                ),
                None,
            ),
            proc=worker,
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    live = RunInThisProcess(home, {})  # untagged too, and alive
    try:
        assert fail_dead_runs(instance) == []  # backfill does not judge runs it did not tag
        assert fail_dead_runs(instance, dev_runs=True) == [run_id]
        assert status(instance, run_id) == dg.DagsterRunStatus.FAILURE
        assert f"run worker (pid {worker.pid})" in failure_message(instance, run_id)
        assert status(instance, live.run_id) == dg.DagsterRunStatus.STARTED
    finally:
        assert live.finish()
    instance.dispose()


def test_process_tells_a_running_process_from_a_zombie_and_a_reused_pid():
    me = process(os.getpid())
    assert me.running and me.start == run_tags()[PROCESS_START_TAG] == process(os.getpid()).start
    assert abs(me.started_at - time.time()) < 3600 * 24 * 365
    parent = process(os.getppid())
    # a start token identifies a process together with its pid (two processes may start in the
    # same clock tick: the parent here is often exec'd just before pytest)
    assert parent.running and parent.start.endswith(me.start.split("@")[1])
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(
        "the child to exit", lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 30
    )
    assert not process(child.pid).running  # a zombie, not yet collected
    child.wait()
    assert not process(child.pid).running


def test_prepare_home_writes_run_monitoring_and_keeps_a_users_dagster_yaml(tmp_path):
    fresh = tmp_path / "fresh"
    prepare_home(fresh)
    assert (fresh / "dagster.yaml").read_text() == dagster_yaml(fresh)
    with dg.DagsterInstance.from_config(str(fresh)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_poll_interval_seconds == 30
        assert instance.run_monitoring_start_timeout_seconds == 180
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert "MONITORING" in instance.get_required_daemon_types()  # dagster dev's daemon runs it
        assert not instance.run_launcher.supports_check_run_worker_health  # hence fail_dead_runs
        assert isinstance(instance.event_log_storage, KeptSqliteEventLogStorage)
        # Where Dagster's default keeps the event log, so that a home's earlier runs stay visible.
        assert Path(instance.event_log_storage._base_dir) == fresh.resolve() / "history" / "runs"

    for before in (*OURS_BEFORE, dagster_yaml(tmp_path / "where-the-home-was")):  # earlier versions; a moved home
        old = tmp_path / "old"
        old.mkdir(exist_ok=True)
        (old / "dagster.yaml").write_text(before)
        prepare_home(old)
        assert (old / "dagster.yaml").read_text() == dagster_yaml(old)

    users = tmp_path / "users"
    users.mkdir()
    mine = "telemetry:\n  enabled: false\nrun_monitoring:\n  enabled: false\n"
    (users / "dagster.yaml").write_text(mine)
    prepare_home(users)
    assert (users / "dagster.yaml").read_text() == mine
    assert sorted(p.name for p in users.iterdir()) == ["dagster.yaml"]
