"""The deployment shapes of issue 17, run for real: where a deep backfill's time goes.

    python benchmarks/deploy_bench.py [--hours 48] [--rate-limit 600] [--rows-per-hour 100]
                                      [--only sqlite,postgres,distributed] [--markdown PATH]

The same backfill (the last N closed hours; `--hours 2160` asks for the full 90 days, clamped to
the 2,150 that stay inside the API's retention while the run goes) of `request_logs` and everything
downstream of it that is executable (STACKONE_DETAILS=false, no sink configured), launched as the
UI launches it: `dagster dev` + the GraphQL backfill mutation (as stackone_pipeline_tests/e2e/
test_deploy.py), against a fresh simulator process (same seed each time) whose rate limit is the
pipeline's (`--rate-limit`, default 600/min), 100 rows an hour so each hour is one page. The
instance storage (SQLite or PostgreSQL) against the run shape (one run, or chunks of hours/4 on two
workers at once), each configuration with its own DAGSTER_HOME and data directory:

sqlite            SQLite instance (the dagster.yaml `stackone-pipeline dev` writes), local lake
                  and state, one run (the default single_run backfill policy)
sqlite-chunked    the same, STACKONE_BACKFILL_RUN_HOURS = hours/4 (4 chunks) and the run queue of
                  docs/deploy/dagster.yaml (at most 2 backfill runs at once: two workers)
postgres          PostgreSQL instance (docs/deploy/dagster.yaml), local lake and state, one run
postgres-chunked  the same, 4 chunks on two workers
distributed       PostgreSQL instance + PostgreSQL state (STACKONE_STATE_URL) + the lake in S3
                  (moto), 4 chunks on two workers, STACKONE_SCRATCH_PER_RUN=true: nothing a run
                  needs on a worker's disk

For each: the wall time from the launch mutation to the end of the backfill's last run, set beside
the pure fetch time the limit allows (successful API requests / (limit/60), counted at the
simulator) -- the ratio is what the deployment adds on top of the rate limit -- and where the time
goes, from each run's step statistics (GraphQL `stepStats`): step seconds per step kind
(request_logs, analytics, late_arrivals, details), summed over runs, and the time no step ran
anywhere (wall minus the union of the step intervals: the backfill daemon's ticks, the run queue,
run workers starting and loading the code location, run and step bookkeeping), split into "until
the first run started" and the rest.

One run per configuration. PostgreSQL (a throwaway cluster, stackone_pipeline_tests/postgres_server.py)
and moto (stackone_pipeline_tests/s3_server.py) start only when a configuration needs them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from ingest_bench import free_port, wait_until_serving  # noqa: E402

from stackone_pipeline.simulator import DEFAULT_API_KEY  # noqa: E402
from stackone_pipeline_tests.e2e.dagster_dev import (  # noqa: E402
    DROPPED_ENV_PREFIXES,
    FINISHED_BACKFILL,
    DagsterDev,
    closed_hours,
    partition_key,
    partitions_by_assets,
)

CONFIGS = ("sqlite", "sqlite-chunked", "postgres", "postgres-chunked", "distributed")
TITLES = {
    "sqlite": "SQLite instance, local lake + state, 1 run",
    "sqlite-chunked": "SQLite instance, local lake + state, hours/4 a run, 2 workers",
    "postgres": "PostgreSQL instance, local lake + state, 1 run",
    "postgres-chunked": "PostgreSQL instance, local lake + state, hours/4 a run, 2 workers",
    "distributed": "PostgreSQL instance + state, S3 lake, hours/4 a run, 2 workers",
}
STEP_KINDS = ("request_logs", "analytics", "late_arrivals", "details")
MAX_HOURS = 2150  # 90 days is 2,160 hours; the oldest few would cross the retention while the run goes
SEED = 7
ARTIFACTS = ROOT / "artifacts" / "deploy_bench"
DEPLOY_YAML = ROOT / "docs" / "deploy" / "dagster.yaml"
TERMINAL_RUN = ("SUCCESS", "FAILURE", "CANCELED")
# The caller's AWS variables would point the distributed configuration's lake elsewhere.
DROPPED = (*DROPPED_ENV_PREFIXES, "AWS_")

RUN_QUERY = """query R($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { runId status creationTime startTime endTime tags { key value }
               stepStats { stepKey status startTime endTime } }
  ... on Error { message } } }"""


# ---- the simulator ------------------------------------------------------------------------------


class Simulator:
    """A fresh simulator process: flat volume, the given seed and rate limit (a 60 s sliding window)."""

    def __init__(self, rows_per_hour: int, rate_limit: int, seed: int = SEED):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = (
            "from stackone_pipeline.simulator import SimulatorConfig, serve;"
            f"serve(SimulatorConfig(seed={seed}, rows_per_hour={rows_per_hour}, diurnal=False, "
            f"rate_limit_per_minute={rate_limit}), '127.0.0.1', {self.port})"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_until_serving(f"{self.url}/_simulator/stats", self.proc, "simulator", timeout_s=30)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_simulator/stats?events=1", timeout=30).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- one configuration --------------------------------------------------------------------------


@dataclass
class Outcome:
    config: str
    hours: int
    rate_limit: int
    status: str = ""  # the backfill's final status
    wall: float = 0.0  # launch -> the last run's end
    settled: float = 0.0  # launch -> the backfill seen finished with every run terminal (polled each 1 s)
    ready: float = 0.0  # dagster dev start -> code location loaded (not part of the wall)
    runs: list[dict] = field(default_factory=list)
    requests: int = 0
    throttled: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    launched: float = 0.0  # time.time() at the launch mutation
    fetch_span: float = 0.0  # first to last successful API request at the simulator
    error: str | None = None
    log_tail: str = ""

    @property
    def ok_requests(self) -> int:
        return self.requests - self.throttled

    @property
    def fetch_floor(self) -> float:
        return self.ok_requests / (self.rate_limit / 60)

    @property
    def ratio(self) -> float:
        return self.wall / self.fetch_floor if self.fetch_floor else float("nan")

    @property
    def first_tries(self) -> list[dict]:
        return [r for r in self.runs if "dagster/parent_run_id" not in r["tags"]]

    def steps(self) -> list[tuple[str, float, float]]:
        """(kind, start, end) of every step that started, over every run."""
        out = []
        for r in self.runs:
            for s in r["stepStats"]:
                if s["startTime"] and s["endTime"]:
                    out.append((step_kind(s["stepKey"]), s["startTime"], s["endTime"]))
        return out

    def by_kind(self) -> dict[str, float]:
        sums = dict.fromkeys((*STEP_KINDS, "other"), 0.0)
        for kind, a, b in self.steps():
            sums[kind] += b - a
        return sums

    def breakdown(self) -> dict[str, float]:
        """Seconds of the wall: when no step ran anywhere, until the first run started, and after."""
        t0 = self.launched
        end = t0 + self.wall
        busy = union([(a, b) for _k, a, b in self.steps()], t0, end)
        starts = [r["startTime"] for r in self.runs if r["startTime"]]
        first_start = min(starts) - t0 if starts else self.wall
        created = [r["creationTime"] for r in self.runs if r["creationTime"]]
        first_created = min(created) - t0 if created else first_start
        in_runs = union([(r["startTime"], r["endTime"]) for r in self.runs if r["startTime"] and r["endTime"]], t0, end)
        return {
            "no_step": self.wall - busy,
            "until_first_run": first_start,
            "until_first_created": first_created,  # the backfill daemon's tick that requested the first run
            "created_to_started": first_start - first_created,  # run queue, run worker start, code loading
            "no_step_later": self.wall - busy - first_start,
            "no_run": self.wall - in_runs,  # no run started and unfinished anywhere
            "step_seconds": sum(b - a for _k, a, b in self.steps()),
        }


def step_kind(step_key: str) -> str:
    for kind, needle in (
        ("request_logs", "request_logs"),
        ("analytics", "analytics"),
        ("late_arrivals", "late_arrivals"),
        ("details", "detail"),
    ):
        if needle in step_key:
            return kind
    return "other"


def union(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of `spans`, clipped to [lo, hi]."""
    total, cur_a, cur_b = 0.0, None, None
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans):
        if b <= a:
            continue
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


def run_config(
    config: str,
    n_hours: int,
    rate_limit: int,
    rows_per_hour: int,
    stack: ExitStack,
    services: dict,
    timeout_s: float | None = None,
) -> Outcome:
    """One configuration: a fresh simulator and `dagster dev`, one GraphQL backfill, its figures."""
    out = Outcome(config, n_hours, rate_limit)
    hours = closed_hours(n_hours + 1, 2)  # the last N closed hours but the newest one
    keys = [partition_key(h) for h in hours]
    with tempfile.TemporaryDirectory(prefix=f"deploy-bench-{config}-") as tmp:
        base = Path(tmp)
        data_dir, home = base / "data", base / "dagster_home"
        data_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED)}
        sim = Simulator(rows_per_hour, rate_limit)
        env.update(
            STACKONE_API_KEY=DEFAULT_API_KEY,
            STACKONE_BASE_URL=sim.url,
            STACKONE_RATE_LIMIT_PER_MINUTE=str(rate_limit),
            STACKONE_DETAILS="false",
            STACKONE_DATA_DIR=str(data_dir),
            DAGSTER_HOME=str(home),
            PYTHONUNBUFFERED="1",
            # the daemon as docs/deploy.md sets it up, in every configuration so that they differ
            # only in what they name: one planned event per asset, not per asset and hour
            DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS="true",
        )
        if config.startswith("postgres") or config == "distributed":
            pg = services.get("postgres") or services.setdefault("postgres", _postgres(stack))
            url = pg.create_database(f"dagster_{config}")
            # dagster-postgres is built on psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for postgresql://
            env["DAGSTER_POSTGRES_URL"] = url.replace("postgresql://", "postgresql+psycopg2://", 1)
            dagster_yaml = DEPLOY_YAML.read_text()
        else:
            dagster_yaml = dagster_yaml_for_sqlite(home, chunked=config.endswith("chunked"))
        if config.endswith("chunked") or config == "distributed":
            env["STACKONE_BACKFILL_RUN_HOURS"] = str(max(1, -(-n_hours // 4)))
        if config == "distributed":
            s3 = services.get("s3") or services.setdefault("s3", _s3(stack))
            env.update(
                s3.env(),
                STACKONE_LAKE_URL=f"s3://{s3.create_bucket('bench')}/stackone",
                STACKONE_STATE_URL=services["postgres"].create_database("state"),
                STACKONE_SCRATCH_PER_RUN="true",
            )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        dev = DagsterDev(
            home=home, data_dir=data_dir, env=env, log_path=ARTIFACTS / f"{config}.log", dagster_yaml=dagster_yaml
        )
        try:
            dev.start()
            dev.wait_ready()
            out.ready = dev.ready_s or 0.0
            assets = [a for a in dev.downstream_of("request_logs") if a.executable]
            limit = timeout_s or max(300.0, 4 * n_hours * 60 / rate_limit + 240)
            out.launched = time.time()
            t0 = time.monotonic()
            launch = dev.launch_backfill(partitions_by_assets(assets, keys[0], keys[-1]), f"deploy_bench: {config}")
            if not launch.backfill_id:
                raise RuntimeError(f"launch refused: {launch.error}")
            while True:
                b = dev.backfill(launch.backfill_id)
                runs = b.get("runs") or []
                if b.get("status") in FINISHED_BACKFILL and all(r["status"] in TERMINAL_RUN for r in runs):
                    out.settled = time.monotonic() - t0
                    out.status = b["status"]
                    break
                if time.monotonic() - t0 > limit:
                    raise RuntimeError(f"backfill not settled after {limit:.0f} s: {b.get('status')}, {runs}")
                dev._alive_or_fail()
                time.sleep(1.0)
            for r in runs:
                run = dev.gql(RUN_QUERY, {"id": r["runId"]})["runOrError"]
                run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
                out.runs.append(run)
            ends = [r["endTime"] for r in out.runs if r["endTime"]]
            out.wall = (max(ends) - out.launched) if ends else out.settled
            if out.status != "COMPLETED_SUCCESS" or any(r["status"] != "SUCCESS" for r in out.first_tries):
                failed = [r["runId"] for r in out.runs if r["status"] != "SUCCESS"]
                msgs = [m for rid in failed[:2] for m in dev.run_failure_messages(rid)]
                out.error = f"backfill {out.status}; runs not successful: {failed}; {msgs[:4]}"
        except Exception as exc:  # keep the other configurations going; report this one's log
            out.error = f"{type(exc).__name__}: {str(exc)[:3000]}"
        finally:
            try:
                dev.stop()
            except Exception as exc:
                out.error = (out.error or "") + f" | stopping dagster dev: {exc}"
            stats = sim.stats()
            sim.stop()
            out.log_tail = dev.log_tail(4000) if out.error else ""
        out.requests = stats["total"]
        out.throttled = stats["by_status"].get("429", 0)
        ok_times = []
        for _mono, wall, path, status in stats.get("events", []):
            out.by_path[path] = out.by_path.get(path, 0) + 1
            if status != 429:
                ok_times.append(wall)
        out.fetch_span = (max(ok_times) - min(ok_times)) if ok_times else 0.0
    return out


def dagster_yaml_for_sqlite(home: Path, chunked: bool) -> str:
    """The laptop's dagster.yaml (what `stackone-pipeline dev` writes); chunked, with the run queue
    and pools of docs/deploy/dagster.yaml, so that two backfill runs go at once as on PostgreSQL."""
    from stackone_pipeline.instance import dagster_yaml

    text = dagster_yaml(home)
    if chunked:
        deploy = DEPLOY_YAML.read_text()
        start = deploy.index("concurrency:\n")
        end = deploy.index("\n\n", start)
        text += deploy[start:end] + "\n"
    return text


def _postgres(stack: ExitStack):
    from stackone_pipeline_tests.postgres_server import running_postgres

    print("  starting PostgreSQL ...", flush=True)
    return stack.enter_context(running_postgres())


def _s3(stack: ExitStack):
    from stackone_pipeline_tests.s3_server import running_s3

    print("  starting moto (S3) ...", flush=True)
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deploy-bench-moto-")))
    return stack.enter_context(running_s3(work))


def run(
    n_hours: int = 48,
    rate_limit: int = 600,
    rows_per_hour: int = 100,
    configs: tuple[str, ...] = CONFIGS,
) -> list[Outcome]:
    if n_hours > MAX_HOURS:
        print(f"  --hours {n_hours}: clamped to {MAX_HOURS} (the API's 90-day retention)", flush=True)
        n_hours = MAX_HOURS
    results = []
    services: dict = {}
    with ExitStack() as stack:
        for config in configs:
            print(f"  {config}: {TITLES[config]}, {n_hours} hours at {rate_limit}/min ...", flush=True)
            r = run_config(config, n_hours, rate_limit, rows_per_hour, stack, services)
            print("  " + describe(r), flush=True)
            for line in timeline(r):
                print(f"    {line}", flush=True)
            if r.error:
                print(f"  {config} FAILED: {r.error}\n  log tail:\n{r.log_tail}", flush=True)
            results.append(r)
    return results


# ---- output ------------------------------------------------------------------------------------


def describe(r: Outcome) -> str:
    if not r.runs:
        return f"{r.config}: no runs ({r.error})"
    k, b = r.by_kind(), r.breakdown()
    steps = ", ".join(f"{name} {k[name]:.1f}s" for name in (*STEP_KINDS, "other") if k[name] or name in STEP_KINDS)
    return (
        f"{r.config}: {len(r.runs)} run(s) ({len(r.first_tries)} first tries), wall {r.wall:.1f}s vs pure fetch "
        f"{r.fetch_floor:.1f}s ({r.ok_requests} requests at {r.rate_limit}/min) = {r.ratio:.2f}x; "
        f"steps: {steps}; no step running {b['no_step']:.1f}s (until the first run was created "
        f"{b['until_first_created']:.1f}s, then until it started {b['created_to_started']:.1f}s, later "
        f"{b['no_step_later']:.1f}s); fetch span at the simulator "
        f"{r.fetch_span:.1f}s; 429s {r.throttled}; settled after {r.settled:.1f}s; dagster dev ready in "
        f"{r.ready:.1f}s"
    )


def timeline(r: Outcome) -> list[str]:
    """Each run, in order of creation: created / started / ended, seconds after the launch."""
    lines = []
    for i, run in enumerate(sorted(r.runs, key=lambda x: x["creationTime"] or 0), 1):
        at = {k: (run[k] - r.launched if run[k] else float("nan")) for k in ("creationTime", "startTime", "endTime")}
        steps = ", ".join(
            f"{s['stepKey']} {s['endTime'] - s['startTime']:.1f}s"
            for s in run["stepStats"]
            if s["startTime"] and s["endTime"]
        )
        retry = " (a retry)" if "dagster/parent_run_id" in run["tags"] else ""
        lines.append(
            f"run {i}{retry}: created +{at['creationTime']:.1f}s, started +{at['startTime']:.1f}s, "
            f"ended +{at['endTime']:.1f}s, {run['status']}; {steps}"
        )
    return lines


HEADER = (
    "| configuration | runs | wall | pure fetch | ratio | request_logs | analytics | late_arrivals | details "
    "| no step running | of which: launch → 1st run created / → started / later | backfill settled | 429s |"
)


def table(results: list[Outcome]) -> str:
    lines = [HEADER, "| " + " | ".join(["---"] * 13) + " |"]
    for r in results:
        if not r.runs:
            lines.append(f"| {TITLES[r.config]} | — | FAILED |" + " |" * 10)
            continue
        k, b = r.by_kind(), r.breakdown()
        lines.append(
            f"| {TITLES[r.config]} | {len(r.runs)} | {r.wall:.1f} s | {r.fetch_floor:.1f} s ({r.ok_requests} req) "
            f"| {r.ratio:.2f}x | {k['request_logs']:.1f} s | {k['analytics']:.1f} s | {k['late_arrivals']:.1f} s "
            f"| {k['details']:.1f} s | {b['no_step']:.1f} s | {b['until_first_created']:.1f} / "
            f"{b['created_to_started']:.1f} / {b['no_step_later']:.1f} s | {r.settled:.1f} s | {r.throttled} |"
        )
    return "\n".join(lines)


def markdown(results: list[Outcome], command: str) -> str:
    r0 = results[0]
    out = [
        f"### Deployment shapes: a {r0.hours:,}-hour backfill at {r0.rate_limit}/min",
        "",
        f"`{command}`: `dagster dev` + a GraphQL backfill of `request_logs` and everything downstream "
        "(details off, no sinks), a fresh simulator (same seed, one page an hour) per configuration. "
        "Wall: launch to the end of the last run; pure fetch: successful API requests at the limit. "
        "Step columns are step seconds summed over runs (with 2 workers they overlap); "
        "'no step running' is the wall minus the union of every step's interval: until the backfill "
        "daemon's tick created the first run, then until that run started (run queue, run worker, code "
        "location loaded), and later (between and around steps and runs). 'Backfill settled': launch to "
        "the backfill's status seen finished (polled each second).",
        "",
        table(results),
        "",
    ]
    for r in results:
        if len(r.runs) > 1:
            out.append(f"- {r.config}, each run (seconds after the launch):")
            out += [f"  - {line}" for line in timeline(r)]
        if r.error:
            out.append(f"- {r.config}: ERROR {r.error[:500]}")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=int, default=48, help="hours to backfill (2160: 90 days, clamped to 2150)")
    p.add_argument("--rate-limit", type=int, default=600, help="requests/minute, simulator and pipeline")
    p.add_argument("--rows-per-hour", type=int, default=100, help="100: one page an hour")
    p.add_argument("--only", help=f"comma-separated configurations: {','.join(CONFIGS)}")
    p.add_argument("--markdown", help="also write the markdown block to this file")
    args = p.parse_args(argv)
    configs = tuple(args.only.split(",")) if args.only else CONFIGS
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configuration(s) {sorted(unknown)}; choose from {CONFIGS}")
    command = "python benchmarks/deploy_bench.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    results = run(args.hours, args.rate_limit, args.rows_per_hour, configs)
    print()
    print(table(results))
    print()
    for r in results:
        print(f"  {r.config:12} ratio to pure fetch: {r.ratio:.2f}x" if r.runs else f"  {r.config:12} FAILED")
    block = markdown(results, command)
    if args.markdown:
        Path(args.markdown).write_text(block)
        print(f"\nwrote {args.markdown}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
