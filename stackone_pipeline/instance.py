"""The Dagster instance the commands use, and what keeps it truthful after a `kill -9`.

A run whose process is killed (`kill -9`, the out-of-memory killer, a reboot) never records how it
ended, so it stays STARTED for ever. Two things fix that:

* `prepare_home` writes a `dagster.yaml` with Dagster's run monitoring on. The daemon of
  `dagster dev` then fails runs that never got going (NOT_STARTED/STARTING longer than
  `start_timeout_seconds`) and cancels runs stuck in CANCELING. It cannot tell whether a STARTED
  run's worker is alive: the local DefaultRunLauncher has no worker health check
  (`supports_check_run_worker_health` is False).
* `fail_dead_runs`, called when `backfill` or `dev` starts, fails the runs whose process is gone.
  Backfill runs execute in the `stackone-pipeline backfill` process itself, which tags them with
  its host, pid and process start (`run_tags`). Runs that `dagster dev` launched carry no tags; the
  pid that recorded their RUN_START event is used instead (only when asked: `dev_runs=True`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType, JobFailureData, RunFailureReason

HOST_TAG = "stackone/host"
PID_TAG = "stackone/pid"
PROCESS_START_TAG = "stackone/process_start"  # "<ticks since boot>@<boot id>": a reused pid differs

# What `prepare_home` writes, for the home it is in (the event log's directory is absolute). Earlier
# versions of this package wrote the ones in OURS_BEFORE: a dagster.yaml that is one of those, or
# this one for another directory (a home that moved), is ours and is rewritten; any other is the
# user's.
DAGSTER_YAML = """\
# Written by stackone-pipeline. Edit freely: once it differs from what stackone-pipeline writes,
# it is left alone. For PostgreSQL, replace the whole file (docs/deploy.md).
telemetry:
  enabled: false
# The daemon of `dagster dev` fails runs that never started within start_timeout_seconds (their
# process was killed while launching) and cancels runs stuck canceling. The local run launcher
# cannot resume a run, hence max_resume_run_attempts: 0.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
  max_resume_run_attempts: 0
# Dagster's SQLite event log, keeping its connections between events: an event costs ~1.3 ms
# instead of 6-11 (stackone_pipeline/dagster_event_log.py). Delete this block for Dagster's own.
event_log_storage:
  module: stackone_pipeline.dagster_event_log
  class: KeptSqliteEventLogStorage
  config:
    base_dir: {events_dir}
"""
OURS_BEFORE = (
    "telemetry:\n  enabled: false\n",
    """\
# Written by stackone-pipeline. Edit freely: once it differs from what stackone-pipeline writes,
# it is left alone.
telemetry:
  enabled: false
# The daemon of `dagster dev` fails runs that never started within start_timeout_seconds (their
# process was killed while launching) and cancels runs stuck canceling. The local run launcher
# cannot resume a run, hence max_resume_run_attempts: 0.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
  max_resume_run_attempts: 0
""",
)
_OURS_ANYWHERE = re.compile(re.escape(DAGSTER_YAML).replace(re.escape("{events_dir}"), ".+"))

# A run that may still be executing. QUEUED runs wait for the daemon, not for a process.
IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# A run with one of these events went through a run launcher (dagster dev, a schedule, a
# re-execution from the UI), even if it inherited a backfill run's tags.
LAUNCHER_EVENTS = {DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_DEQUEUED, DagsterEventType.RUN_STARTING}
# How much later than a run's RUN_START event a process with the same pid may have started and still
# be taken for the run's process (wall-clock steps move the computed start times by a little).
CLOCK_SLACK_S = 60.0


def dagster_yaml(home: Path) -> str:
    """The dagster.yaml `prepare_home` writes in `home`."""
    events_dir = os.path.join(home.resolve(), "history", "runs", "")  # where Dagster's default keeps them
    return DAGSTER_YAML.replace("{events_dir}", json.dumps(events_dir))  # a JSON string is a YAML string


def prepare_home(home: Path) -> None:
    """Create `home` with our dagster.yaml, leaving a dagster.yaml that someone else wrote alone."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    ours = dagster_yaml(home)
    current = path.read_text() if path.exists() else None
    if current == ours or (
        current is not None and current not in OURS_BEFORE and not _OURS_ANYWHERE.fullmatch(current)
    ):
        return
    tmp = path.with_name(f".dagster.yaml.{os.getpid()}.tmp")
    tmp.write_text(ours)
    tmp.replace(path)


def pipeline_instance() -> dg.DagsterInstance:
    """The instance in `DAGSTER_HOME` when it is set (so `dagster dev` shows the runs), else a
    throw-away one. A missing home is created. Several commands starting at once on a fresh home
    take turns: two processes creating the SQLite instance together fail (`table secondary_indexes
    already exists`)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return dg.DagsterInstance.ephemeral()
    prepare_home(Path(home))
    with open(Path(home) / ".stackone-instance.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return dg.DagsterInstance.get()


@dataclass(frozen=True)
class Proc:
    """What is known about a process: whether it runs, and its start token (None where there is no /proc)."""

    running: bool
    start: str | None = None  # "<ticks since boot>@<boot id>"
    started_at: float | None = None  # epoch seconds


def _boot() -> tuple[str, float] | None:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        btime = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot_id, btime


def process(pid: int) -> Proc:
    """Is `pid` running (a zombie is not), and since when."""
    if pid <= 0:
        return Proc(False)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return Proc(False)
    except OSError:
        stat = None
    boot = _boot()
    if stat is None or boot is None:  # no /proc (macOS): only ask whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return Proc(False)
        except PermissionError:
            pass
        return Proc(True)
    try:
        fields = stat.rsplit(")", 1)[1].split()  # the command name (field 2) may hold spaces and ')'
        state, ticks = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return Proc(True)
    if state in ("Z", "X"):
        return Proc(False)
    boot_id, btime = boot
    return Proc(True, f"{ticks}@{boot_id}", btime + ticks / os.sysconf("SC_CLK_TCK"))


def run_tags() -> dict[str, str]:
    """Tags naming the process that executes a run in process (`dg.materialize`)."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    start = process(os.getpid()).start
    if start:
        tags[PROCESS_START_TAG] = start
    return tags


def _first_event(instance: dg.DagsterInstance, run_id: str, types) -> dg.EventLogRecord | None:
    records = instance.get_records_for_run(run_id, of_type=types, limit=1).records
    return records[0] if records else None


def _dead_because(instance: dg.DagsterInstance, run: dg.DagsterRun, host: str, dev_runs: bool) -> str | None:
    """Why `run`'s process is known to be gone, or None when it may be alive (or is not ours to judge)."""
    start_event = _first_event(instance, run.run_id, DagsterEventType.RUN_START)
    start_pid = (
        start_event.event_log_entry.dagster_event.pid
        if start_event and start_event.event_log_entry.dagster_event
        else None
    )
    tags = run.tags
    if PID_TAG in tags and HOST_TAG in tags and not _first_event(instance, run.run_id, LAUNCHER_EVENTS):
        if tags[HOST_TAG] != host:
            return None  # another machine's process: it is for that machine to tell
        try:
            pid = int(tags[PID_TAG])
        except ValueError:
            return None
        if start_pid is not None and start_pid != pid:
            return None  # tags inherited by a run someone else executes
        now = process(pid)
        recorded = tags.get(PROCESS_START_TAG)
        if not now.running:
            return f"its process (pid {pid} on {host}) is gone"
        if recorded and now.start and recorded != now.start:
            return f"its process (pid {pid} on {host}) is gone; the pid now belongs to another process"
        return None
    if not dev_runs or run.status != dg.DagsterRunStatus.STARTED or start_pid is None:
        return None
    # A run a launcher started (dagster dev): judged by the pid of its RUN_START event, on a
    # SQLite instance only, whose runs all come from this machine.
    if type(instance.run_storage).__name__ != "SqliteRunStorage":
        return None
    now = process(start_pid)
    if not now.running:
        return f"its run worker (pid {start_pid}) is gone"
    if now.started_at is not None and now.started_at > start_event.timestamp + CLOCK_SLACK_S:
        return f"its run worker (pid {start_pid}) is gone; the pid now belongs to a newer process"
    return None


def fail_dead_runs(instance: dg.DagsterInstance, *, dev_runs: bool = False) -> list[str]:
    """Mark failed the in-flight runs whose process has died; return their run ids.

    Judged: runs tagged by `run_tags` on this host (backfills), and with `dev_runs=True` also
    STARTED runs without those tags whose RUN_START came from a process that no longer runs (runs
    `dagster dev` launched: call it before starting `dagster dev`).
    """
    host = socket.gethostname()
    failed = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=IN_FLIGHT)):
        run = record.dagster_run
        reason = _dead_because(instance, run, host, dev_runs)
        if reason is None:
            continue
        fresh = instance.get_run_by_id(run.run_id)
        if fresh is None or fresh.is_finished:  # it ended while we looked
            continue
        instance.report_run_failed(
            fresh,
            message=(
                f"Marked failed by stackone-pipeline: {reason}. It was killed (kill -9, out of memory, "
                "a reboot) before it could record how the run ended."
            ),
            job_failure_data=JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
        )
        failed.append(run.run_id)
    return failed
