"""Start and stop a real `dagster dev` (webserver + daemon) for the e2e tests, and talk to it.

Loaded as a pytest plugin by the e2e test modules (`pytest_plugins = [...]`), so its
session-scoped fixtures are shared: the simulator and `dagster dev` start once for both
test_dagster_dev.py and test_ui.py, and the 6-hour backfill runs once.

Everything `dagster dev` starts lives in its own process group (`start_new_session=True`). It is
stopped (SIGINT to the group, as Ctrl-C would, then SIGTERM, then SIGKILL, each after a bounded
wait; leftover descendants by PID) by the fixture finalizer, and already after the last e2e test
(`pytest_runtest_teardown`), so the rest of the suite never runs next to an idle Dagster.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psutil
import pytest

from stackone_pipeline.partitions import hourly_partitions
from stackone_pipeline.simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator

ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "artifacts" / "e2e"
SEED = 11
ROWS_PER_HOUR = 300
STAGING_KEY = "v1.sim.e2e-staging-key"  # a second StackOne project (projects.py) beside the default one
READY_TIMEOUT_S = 120.0
BACKFILL_TIMEOUT_S = 300.0
# Variables that would switch a sink on (or change the pipeline) if inherited from the caller.
DROPPED_ENV_PREFIXES = ("STACKONE_", "DAGSTER_", "DATADOG_", "LOKI_", "OTEL_", "PROMETHEUS_")
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

WORKSPACE_QUERY = """{ workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } }
  ... on PythonError { message } } }"""

LAUNCH_BACKFILL = """mutation L($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename
  ... on LaunchBackfillSuccess { backfillId }
  ... on PythonError { message stack }
  ... on Error { message } } }"""

BACKFILL_QUERY = """query B($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { id status numPartitions error { message }
      runs(limit: 100) { runId status tags { key value } }
      assetBackfillData { assetBackfillStatuses { __typename
          ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted numPartitionsInProgress
                                               numPartitionsMaterialized numPartitionsFailed }
          ... on UnpartitionedAssetStatus { assetKey { path } inProgress materialized failed } } } }
  ... on Error { message } } }"""

RUN_EVENTS = """query R($id: ID!) { logsForRun(runId: $id) { __typename
  ... on EventConnection { events { __typename
      ... on MessageEvent { message }
      ... on ExecutionStepFailureEvent { error { message } }
      ... on MaterializationEvent { assetKey { path } partition }
      ... on ObservationEvent { assetKey { path } partition
          metadataEntries { label ... on TextMetadataEntry { text } } } } }
  ... on Error { message } } }"""

ASSET_GRAPH = """{ assetNodes { assetKey { path } groupName isPartitioned isExecutable description dependedByKeys { path }
  assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }"""

CHECK_EXECUTIONS = """query C($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 20) { id runId status partition
    evaluation { success severity description
      metadataEntries { label ... on IntMetadataEntry { intValue } } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def partition_key(hour: datetime) -> str:
    return hourly_partitions.get_partition_key_for_timestamp(hour.timestamp())


def closed_hours(first_hours_ago: int, last_hours_ago: int) -> list[datetime]:
    """Closed UTC hours from `first_hours_ago` to `last_hours_ago` hours before the current one."""
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return [now - timedelta(hours=h) for h in range(first_hours_ago, last_hours_ago - 1, -1)]


@dataclass
class Launch:
    """What launchPartitionBackfill answered: a backfill id, or an error (HTTP status + message)."""

    http_status: int
    backfill_id: str | None = None
    error: str | None = None


@dataclass
class Backfill:
    id: str
    status: str
    runs: list[dict]
    seconds: float
    error: str | None = None
    assets: dict[str, dict] = field(default_factory=dict)  # "a/b" -> AssetPartitionsStatusCounts

    @property
    def run_ids(self) -> set[str]:
        return {r["runId"] for r in self.runs}

    @classmethod
    def from_graphql(cls, b: dict, seconds: float) -> Backfill:
        statuses = ((b.get("assetBackfillData") or {}).get("assetBackfillStatuses")) or []
        return cls(
            b["id"],
            b["status"],
            b["runs"],
            seconds,
            (b.get("error") or {}).get("message"),
            {"/".join(s["assetKey"]["path"]): s for s in statuses},
        )


@dataclass(frozen=True)
class AssetNode:
    """One asset as the running code location defines it."""

    name: str  # "/"-joined key path
    path: tuple[str, ...]
    group: str
    partitioned: bool
    children: tuple[str, ...]
    checks: tuple[str, ...]
    executable: bool = True  # False: a stand-in, e.g. a sink that is not configured
    description: str = ""


@dataclass
class DagsterDev:
    """One `dagster dev -w workspace.yaml` subprocess in its own process group."""

    home: Path
    data_dir: Path
    env: dict
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_s: float | None = None
    _log_file: object = None
    _stopped: bool = False
    stop_log: list = field(default_factory=list)
    dagster_yaml: str = "telemetry:\n  enabled: false\n"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text(self.dagster_yaml)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _alive_or_fail(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /server_info answers and the code location is LOADED (a load error fails at once)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._alive_or_fail()
            try:
                if httpx.get(f"{self.url}/server_info", timeout=5).status_code == 200:
                    ws = self.gql(WORKSPACE_QUERY)["workspaceOrError"]
                    entries = ws.get("locationEntries") or []
                    for e in entries:
                        err = e.get("locationOrLoadError") or {}
                        if err.get("__typename") == "PythonError":
                            raise AssertionError(f"code location {e['name']} failed to load: {err['message']}")
                    if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                        self.ready_s = time.monotonic() - self.started_at
                        return
                    last = f"locations {[(e['name'], e['loadStatus']) for e in entries]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise AssertionError(f"dagster dev not ready after {timeout_s:.0f}s ({last}):\n{self.log_tail()}")

    # ---- GraphQL ------------------------------------------------------------------------

    def post(self, query: str, variables: dict | None = None, timeout_s: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=timeout_s)

    def gql(self, query: str, variables: dict | None = None) -> dict:
        resp = self.post(query, variables)
        body = resp.json()
        if resp.status_code != 200 or body.get("errors"):
            raise AssertionError(f"GraphQL HTTP {resp.status_code}: {str(body)[:3000]}")
        return body["data"]

    def launch_backfill(self, partitions_by_assets: list[dict], title: str) -> Launch:
        """The UI's backfill mutation. Dagster 1.13 answers some invalid launches with HTTP 500 +
        a PythonError (seen on 1.13.28, not only GraphQL errors): both shapes become `Launch.error`."""
        resp = self.post(LAUNCH_BACKFILL, {"p": {"partitionsByAssets": partitions_by_assets, "title": title}})
        try:
            body = resp.json()
        except ValueError:
            return Launch(resp.status_code, error=resp.text[:3000])
        result = (body.get("data") or {}).get("launchPartitionBackfill") or {}
        if result.get("__typename") == "LaunchBackfillSuccess":
            return Launch(resp.status_code, backfill_id=result["backfillId"])
        messages = [result.get("message")] + [e.get("message") for e in body.get("errors") or []]
        return Launch(resp.status_code, error=" | ".join(m for m in messages if m) or str(body)[:3000])

    def backfill(self, backfill_id: str) -> dict:
        return self.gql(BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]

    def wait_backfill(self, backfill_id: str, timeout_s: float = BACKFILL_TIMEOUT_S) -> Backfill:
        """Poll until the backfill is finished and none of its runs is still going."""
        t0 = time.monotonic()
        b: dict = {}
        while time.monotonic() - t0 < timeout_s:
            self._alive_or_fail()
            b = self.backfill(backfill_id)
            if b.get("status") in FINISHED_BACKFILL and all(
                r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in b["runs"]
            ):
                return Backfill.from_graphql(b, time.monotonic() - t0)
            time.sleep(2)
        raise AssertionError(f"backfill {backfill_id} not finished after {timeout_s:.0f}s: {b}\n{self.log_tail()}")

    def run_events(self, run_id: str) -> list[dict]:
        return self.gql(RUN_EVENTS, {"id": run_id})["logsForRun"].get("events") or []

    def run_failure_messages(self, run_id: str) -> list[str]:
        out = []
        for e in self.run_events(run_id):
            if e["__typename"] == "ExecutionStepFailureEvent" and e.get("error"):
                out.append(e["error"]["message"])
            elif e["__typename"] in ("RunFailureEvent", "ExecutionStepFailureEvent") and e.get("message"):
                out.append(e["message"])
        return out

    def asset_graph(self) -> dict[str, AssetNode]:
        """The asset graph the webserver has loaded (the truth for this process, whatever
        definitions.py says by the time a test reads it)."""
        nodes = {}
        for n in self.gql(ASSET_GRAPH)["assetNodes"]:
            checks = n.get("assetChecksOrError") or {}
            name = "/".join(n["assetKey"]["path"])
            nodes[name] = AssetNode(
                name,
                tuple(n["assetKey"]["path"]),
                n["groupName"],
                n["isPartitioned"],
                tuple("/".join(c["path"]) for c in n["dependedByKeys"]),
                tuple(c["name"] for c in checks.get("checks") or []),
                n["isExecutable"],
                n["description"] or "",
            )
        return nodes

    def downstream_of(self, root: str) -> list[AssetNode]:
        """`root` and everything downstream of it, in name order."""
        graph = self.asset_graph()
        seen, todo = set(), [root]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name].children)
        return [graph[n] for n in sorted(seen)]

    def check_executions(self, asset_path: list[str], check_name: str) -> list[dict]:
        return self.gql(CHECK_EXECUTIONS, {"key": {"path": asset_path}, "name": check_name})["assetCheckExecutions"]

    # ---- stop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process this started: SIGINT to the group (Ctrl-C), then SIGTERM, then SIGKILL.

        dagster dev itself exits a few seconds after SIGINT; its code servers may linger until their
        heartbeat times out, so after a short grace they get SIGTERM (and SIGKILL if need be).
        """
        if self._stopped or self.proc is None:
            return
        self._stopped = True
        t0 = time.monotonic()
        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        try:
            for sig, leader_wait_s, family_wait_s in (
                (signal.SIGINT, 20, 5),
                (signal.SIGTERM, 10, 10),
                (signal.SIGKILL, 5, 5),
            ):
                self._signal(sig, family)
                try:
                    self.proc.wait(timeout=leader_wait_s)
                except subprocess.TimeoutExpired:
                    pass
                _, family = psutil.wait_procs(family, timeout=family_wait_s)
                self.stop_log.append(
                    f"{signal.Signals(sig).name}: {len(family)} left after {time.monotonic() - t0:.1f}s"
                )
                if not family and self.proc.poll() is not None:
                    break
            leftovers = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            assert not leftovers, f"processes left running after dagster dev stopped: {leftovers}"
        finally:
            if self._log_file is not None:
                self._log_file.close()
            with open(self.log_path, "a") as f:
                f.write(f"\n[e2e] stopped dagster dev (pid {self.proc.pid}): {'; '.join(self.stop_log)}\n")

    def _signal(self, sig: int, family: list) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # start_new_session: the group id is the leader's pid
        except ProcessLookupError:
            pass
        for p in family:  # a child that left the group still gets it
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass


@dataclass
class E2E:
    """The running simulator + `dagster dev`, and the hours the shared backfill covers."""

    dev: DagsterDev
    sim: object  # RunningSimulator
    data_dir: Path
    hours: list[datetime]

    @property
    def keys(self) -> list[str]:
        return [partition_key(h) for h in self.hours]


@dataclass
class BackfillOutcome:
    launch: Launch
    result: Backfill | None
    assets: list[AssetNode]  # what the backfill targeted
    seconds: float

    @property
    def asset_names(self) -> list[str]:
        return [a.name for a in self.assets]

    def describe(self, dev: DagsterDev) -> str:
        return (
            f"launch={self.launch} result={self.result} after {self.seconds:.0f}s\n"
            f"dagster dev log tail:\n{dev.log_tail()}"
        )


# Stops for what the session fixture started, most recent last; each runs once.
_TO_STOP: list = []


def _stop_all() -> None:
    errors = []
    while _TO_STOP:
        try:
            _TO_STOP.pop()()
        except Exception as exc:  # keep stopping the rest
            errors.append(exc)
    if errors:
        raise errors[0]


def partitions_by_assets(assets: list[AssetNode], first_key: str, last_key: str) -> list[dict]:
    """The launch parameters of the UI's backfill dialog for a range of hours."""
    return [
        {"assetKey": {"path": list(a.path)}, "partitions": {"range": {"start": first_key, "end": last_key}}}
        if a.partitioned
        else {"assetKey": {"path": list(a.path)}}
        for a in assets
    ]


def run_backfill(dev: DagsterDev, keys: list[str], title: str, assets: list[AssetNode]) -> BackfillOutcome:
    t0 = time.monotonic()
    launch = dev.launch_backfill(partitions_by_assets(assets, keys[0], keys[-1]), title)
    result = dev.wait_backfill(launch.backfill_id) if launch.backfill_id else None
    return BackfillOutcome(launch, result, assets, time.monotonic() - t0)


@pytest.fixture(scope="session")
def e2e(request, tmp_path_factory) -> E2E:
    """The simulator (in a thread) and `dagster dev` on fresh DAGSTER_HOME and data directories."""
    request.addfinalizer(_stop_all)  # registered first: runs even if starting fails half-way
    base = tmp_path_factory.mktemp("e2e")
    sim = start_simulator(
        SimulatorConfig(
            seed=SEED, rows_per_hour=ROWS_PER_HOUR, diurnal=False, extra_projects=(("staging", STAGING_KEY),)
        )
    )
    _TO_STOP.append(sim.stop)
    data_dir, home = base / "data", base / "dagster_home"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
    env.update(
        STACKONE_PROJECTS="default=STACKONE_API_KEY,staging=STACKONE_STAGING_KEY",
        STACKONE_API_KEY=DEFAULT_API_KEY,
        STACKONE_STAGING_KEY=STAGING_KEY,
        STACKONE_BASE_URL=sim.url,
        STACKONE_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    dev = DagsterDev(home=home, data_dir=data_dir, env=env, log_path=ARTIFACTS / "dagster-dev.log")
    _TO_STOP.append(dev.stop)
    dev.start()
    dev.wait_ready()
    return E2E(dev=dev, sim=sim, data_dir=data_dir, hours=closed_hours(8, 3))


@pytest.fixture(scope="session")
def e2e_backfill(e2e) -> BackfillOutcome:
    """One backfill of the 6 hours, request_logs and everything downstream, as the UI launches it
    ("Materialize all" leaves out assets that cannot be executed: sinks that are not configured)."""
    assets = [a for a in e2e.dev.downstream_of("request_logs") if a.executable]
    return run_backfill(e2e.dev, e2e.keys, "e2e: 6 hours, request_logs and downstream", assets)


@pytest.fixture(scope="session")
def e2e_staging_backfill(e2e, e2e_backfill) -> BackfillOutcome:
    """The second project's family: its request_logs and everything downstream, the last two of
    the hours, launched like the UI does (after the default project's, which the others assert on)."""
    assets = [a for a in e2e.dev.downstream_of("staging/request_logs") if a.executable]
    return run_backfill(e2e.dev, e2e.keys[-2:], "e2e: project staging, 2 hours", assets)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop dagster dev right after the last e2e test instead of at the end of the session."""
    if _TO_STOP and (nextitem is None or E2E_DIR not in Path(str(nextitem.path)).parents):
        _stop_all()
