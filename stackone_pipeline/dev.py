"""`stackone-pipeline dev`: the simulator and `dagster dev` on one data directory.

`dagster dev` starts a webserver, a daemon and code servers, and the code servers start run
workers. All of them run in a process group of their own (a new session), so that whatever stops
this command (SIGTERM from `kill` or a service manager, SIGINT from Ctrl-C, SIGHUP from a closed
terminal) stops all of them: SIGTERM to the group (Dagster treats it as Ctrl-C and shuts down in
order), then SIGKILL for whatever is left after a grace period. The exit code is 128 + the signal
number, as a shell reports a process stopped by that signal (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 15.0  # dagster dev stops in 3-5 s when idle; a run worker may need a few more to record its end
KILL_WAIT_S = 5.0


def _group_running(pgid: int) -> bool:
    """Is any process of the group still running? (A zombie only waits to be collected.)"""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):  # fields 5 (pgrp) and 3 (state)
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, grace_s: float = GRACE_S, hurry: Callable[[], bool] = lambda: False) -> None:
    """SIGTERM to `proc`'s process group; SIGKILL to it after `grace_s` (or as soon as `hurry()`)."""
    pgid = proc.pid  # the leader of a new session: its pid is the group's id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not hurry():
        if proc.poll() is not None and not _group_running(pgid):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + KILL_WAIT_S
    while _group_running(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def supervise(start: subprocess.Popen | Callable[[], subprocess.Popen], grace_s: float = GRACE_S) -> int:
    """Wait for a process started with `start_new_session=True`; stop its whole group on any stop signal.

    `start` is the process or a function starting it (then the handlers are in place before it
    exists, so no signal is missed). Returns 128 + the signal number when a signal stopped it,
    otherwise the process's own exit code (128 + n when signal n killed it); either way nothing of
    its group is left running. A second signal while the group stops skips the grace period.
    """
    received: list[int] = []

    def on_signal(signum, frame) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        proc = start() if callable(start) else start
        try:
            while not received:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
        finally:
            stop_group(proc, grace_s if received or proc.returncode is None else KILL_WAIT_S, lambda: len(received) > 1)
        if received:
            return 128 + received[0]
        return _exit_code(proc.returncode)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_dev(data_dir: str, port: int, sim_port: int, seed: int) -> int:
    """Start the simulator and `dagster dev` on the same data directory; return dagster's exit code
    (or 128 + the signal that stopped this command)."""
    import dagster as dg

    from .instance import fail_dead_runs, prepare_home
    from .settings import Settings
    from .simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator

    data_dir = Path(os.environ.get("STACKONE_DATA_DIR", data_dir)).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ.get("DAGSTER_HOME", data_dir / "dagster_home")).resolve()
    prepare_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        failed = fail_dead_runs(instance, dev_runs=True)
    if failed:
        print(f"marked {len(failed)} run(s) failed whose process had been killed: {', '.join(failed)}", file=sys.stderr)
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.exists() else ["-m", "stackone_pipeline.definitions"]
    retention = Settings.from_env().retention_days
    with start_simulator(SimulatorConfig(seed=seed, retention_days=retention), port=sim_port) as sim:
        env = dict(
            os.environ,
            STACKONE_API_KEY=DEFAULT_API_KEY,
            STACKONE_BASE_URL=sim.url,
            STACKONE_DATA_DIR=str(data_dir),
            DAGSTER_HOME=str(home),
        )
        print(f"simulator at {sim.url}; data in {data_dir}; Dagster UI on http://127.0.0.1:{port}", file=sys.stderr)
        cmd = [sys.executable, "-m", "dagster", "dev", *target, "-h", "127.0.0.1", "-p", str(port)]
        return supervise(lambda: subprocess.Popen(cmd, env=env, start_new_session=True))
