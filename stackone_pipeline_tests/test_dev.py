"""`stackone-pipeline dev` stops everything it started: the simulator, `dagster dev`, its webserver,
daemon and code servers, whichever signal stops it and whether or not `dagster dev` goes first.

The first test runs the real command (about 20-30 s each: `dagster dev` takes 10-15 s to come up);
the others drive `dev.supervise` (what `run_dev` waits with) with small process trees of plain Python processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from stackone_pipeline.dev import supervise

CLI = Path(sys.executable).parent / "stackone-pipeline"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
# Variables that would switch a sink on or move the data if inherited from the caller.
DROPPED_ENV_PREFIXES = ("STACKONE_", "DAGSTER_", "DATADOG_", "LOKI_", "OTEL_", "PROMETHEUS_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> set[tuple[int, float]]:
    """(pid, start time) of every live descendant: the start time tells a reused pid apart."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for child in children:
        try:
            found.add((child.pid, child.create_time()))
        except psutil.NoSuchProcess:
            pass
    return found


def alive(proc: tuple[int, float]) -> bool:
    """Still running (a zombie has finished: it only waits for its parent to collect its status)."""
    pid, started = proc
    try:
        p = psutil.Process(pid)
        return p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(procs, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in procs if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def describe(procs) -> list[str]:
    out = []
    for pid, _ in procs:
        try:
            out.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:160]}")
        except psutil.NoSuchProcess:
            out.append(f"{pid}: (gone)")
    return out


def dev_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
    env["DAGSTER_HOME"] = str(tmp_path / "home")
    return env


# The real command once (SIGTERM, what `kill` and service managers send): ~30 s. SIGINT and
# SIGHUP take the same path, covered in seconds by the supervise tests below.
@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_a_signal_to_dev_stops_dagster_dev_its_children_and_the_simulator(tmp_path, sig):
    port, sim_port = free_port(), free_port()
    log = (tmp_path / "dev.log").open("w")
    cmd = [str(CLI), "dev", "--data-dir", str(tmp_path / "data"), "--port", str(port), "--sim-port", str(sim_port)]
    proc = subprocess.Popen(cmd, env=dev_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    seen: set[tuple[int, float]] = set()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Dagster UI never answered"
            seen |= descendants(proc.pid)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert port_open(sim_port)
        for _ in range(10):  # code servers and the daemon's children come up around now too
            seen |= descendants(proc.pid)
            time.sleep(0.2)
        names = {" ".join(psutil.Process(pid).cmdline()) for pid, _ in seen if alive((pid, _))}
        assert any("dagster_webserver" in n for n in names) and any("dagster._daemon" in n for n in names), names

        started = time.monotonic()
        proc.send_signal(sig)  # to the CLI only, as `kill` or a service manager would
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`stackone-pipeline dev` still running {STOP_TIMEOUT_S} s after {sig.name}")
        took = time.monotonic() - started
        left = wait_gone(seen, 2.0)  # the last ones are reparented and reaped by init
        assert not left, f"still running after {sig.name}: {describe(left)}"
        assert code == 128 + sig, (tmp_path / "dev.log").read_text()[-3000:]
        assert not port_open(port) and not port_open(sim_port)
        assert took < STOP_TIMEOUT_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, _ in [p for p in seen if alive(p)]:
            os.kill(pid, signal.SIGKILL)
        log.close()


# A process tree for `supervise`: the leader starts `n` children (which start a grandchild each),
# writes their pids to a file and then waits, exits or ignores signals as told.
TREE = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    mode, out = sys.argv[1], sys.argv[2]
    grandchild = "import time\\nwhile True: time.sleep(1)"
    child = f"import subprocess, sys, time\\nsubprocess.Popen([sys.executable, '-c', {grandchild!r}])\\nwhile True: time.sleep(1)"
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = "import signal\\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" + child
    procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(2)]
    time.sleep(1.0)  # the grandchildren are up
    with open(out + ".tmp", "w") as f:
        f.write(" ".join(str(p.pid) for p in procs))
    os.rename(out + ".tmp", out)
    if mode == "exit":
        sys.exit(3)
    while True:
        time.sleep(1)
    """
)


def start_tree(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, set]:
    out = tmp_path / f"{mode}.pids"
    proc = subprocess.Popen([sys.executable, "-c", TREE, mode, str(out)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not out.exists():
        assert time.monotonic() < deadline, "the process tree never came up"
        time.sleep(0.05)
    tree = descendants(proc.pid) | {(proc.pid, psutil.Process(proc.pid).create_time())}
    assert len(tree) >= 5 or mode == "exit", tree  # leader, 2 children, 2 grandchildren
    return proc, tree


def signal_me_soon(sig: int, after_s: float = 0.5) -> threading.Timer:
    timer = threading.Timer(after_s, os.kill, (os.getpid(), sig))
    timer.start()
    return timer


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=["SIGHUP", "SIGTERM", "SIGINT"])
def test_supervise_stops_the_whole_group_on_a_signal_and_returns_128_plus_it(tmp_path, sig):
    proc, tree = start_tree(tmp_path, "wait")
    before = signal.getsignal(sig)
    signal_me_soon(sig)
    assert supervise(proc, grace_s=10) == 128 + sig
    assert not wait_gone(tree, 2.0), describe(tree)
    assert signal.getsignal(sig) is before  # handlers are put back


def test_supervise_kills_a_group_that_ignores_sigterm_after_the_grace_period(tmp_path):
    proc, tree = start_tree(tmp_path, "stubborn")
    signal_me_soon(signal.SIGTERM)
    started = time.monotonic()
    assert supervise(proc, grace_s=2) == 128 + signal.SIGTERM
    assert 2 <= time.monotonic() - started < 10
    assert not wait_gone(tree, 2.0), describe(tree)


def test_when_dagster_dev_exits_by_itself_its_code_is_returned_and_its_leftovers_stopped(tmp_path):
    proc, _ = start_tree(tmp_path, "exit")
    children = {(int(p), psutil.Process(int(p)).create_time()) for p in (tmp_path / "exit.pids").read_text().split()}
    assert supervise(proc, grace_s=5) == 3
    assert not wait_gone(children, 2.0), describe(children)  # orphans of the leader, same group


def test_a_leader_killed_by_a_signal_gives_128_plus_that_signal(tmp_path):
    proc, tree = start_tree(tmp_path, "wait")
    threading.Timer(0.5, proc.kill).start()
    assert supervise(proc, grace_s=5) == 128 + signal.SIGKILL
    assert not wait_gone(tree, 2.0), describe(tree)
