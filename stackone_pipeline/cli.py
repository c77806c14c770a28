"""`stackone-pipeline`: demo, backfill, report, check, query, sinks, simulate, webhooks, dev.

Wrong input (a setting, an option, a date range) is one `error: …` line and exit code 2, before
anything runs; a run that fails is one `error: …` line per failed step and exit code 1, with
Dagster's stack traces behind `--verbose` (and always in the run's logs).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import shutil
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .arguments import build_parser
from .settings import Settings, UsageError, require_api_key

DEMO_MARKER = ".stackone-demo"
# `dagster._core.errors.`, `stackone_pipeline.stackone.client.`: module paths say nothing to a user
MODULE_PATH = re.compile(r"\b(?:dagster|stackone_pipeline)\.[\w.]*\.(?=\w+: )")
CAUSED_BY = "The above exception was caused by the following exception:\n"


def _quiet_dagster() -> None:
    """Before a command runs the pipeline in this process: no beta warnings, and a lean process
    (footprint.py)."""
    from .footprint import imports_frozen, lean_process

    with imports_frozen():
        lean_process()
        for name in ("BetaWarning", "PreviewWarning", "SupersessionWarning"):
            warnings.filterwarnings("ignore", message=".*", category=getattr(__import__("dagster"), name, Warning))
        # Every module a run needs: the definitions, and the SQLite instance's storage.
        from dagster._core.storage import legacy_storage, sqlite_storage  # noqa: F401

        from . import dagster_event_log, definitions, instance  # noqa: F401


def short_error(text: str) -> str:
    """Dagster's failure text (wrapper, stack traces, causes) cut to its deepest cause, on one line."""
    if CAUSED_BY in text:
        text = text.rsplit(CAUSED_BY, 1)[1]
    text = text.split("\nStack Trace:", 1)[0]
    text = MODULE_PATH.sub("", text).strip().removeprefix("Failure: ")  # dg.Failure carries our own words
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()).replace(":;", ":")


class ShortErrorsLogger(logging.Logger):
    """What Dagster's console logger is made of in this process unless --verbose: each record as
    it is, but stack traces cut to one line. The run's own logs keep everything."""

    def callHandlers(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Stack Trace:" in message:
            head = message.split("\n", 1)[0]
            record = copy.copy(record)
            record.msg, record.args = f"{head} {short_error(message.split(chr(10), 1)[1])}", ()
        super().callHandlers(record)


def _settings(*, api_key: bool = False) -> Settings:
    """Every setting, validated before anything runs (a SettingsError ends in `error:`, exit 2)."""
    settings = Settings.from_env()
    if api_key:
        for project in settings.projects:
            require_api_key(name=project.api_key_var)
    return settings


def _run_outcome(result, what: str, verbose: bool) -> int:
    if result.success:
        print(f"{what} succeeded (run {result.run_id})")
        return 0
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            error = event.step_failure_data.error
            print(f"error: {event.step_key}: {short_error(error.to_string())}", file=sys.stderr)
    hint = "" if verbose else "; --verbose shows Dagster's stack traces"
    print(f"{what} failed (run {result.run_id}{hint})", file=sys.stderr)
    return 1


def cmd_simulate(args) -> int:
    from .simulator import SimulatorConfig, serve

    config = SimulatorConfig(
        seed=args.seed,
        rows_per_hour=args.rows_per_hour,
        rate_limit_per_minute=args.rate_limit,
        retention_days=args.retention_days,
        list_shape=args.list_shape,
        filter_encoding=args.filter_encoding,
        reject_unknown_params=args.reject_unknown_params,
        max_page_size=args.max_page_size,
        page_size_policy=args.page_size_policy,
        extra_projects=tuple(args.project),
    )
    serve(config, args.host, args.port)
    return 0


def cmd_backfill(args) -> int:
    settings = _settings(api_key=True)
    _quiet_dagster()
    from .backfill import parse_time, partition_keys, run_backfill

    start, end = parse_time(args.start), parse_time(args.end)
    partition_keys(start, end, retention_days=settings.retention_days)  # a wrong range: exit 2 before Dagster
    from .instance import fail_dead_runs, pipeline_instance

    projects = [settings.project(args.project)] if args.project else list(settings.projects)
    if len(projects) > 1:  # several projects ingest in parallel, each within its own key's budget
        from .backfill import backfill_each_project

        return backfill_each_project(_backfill_argv(args), projects)
    instance = pipeline_instance()
    failed = fail_dead_runs(instance)
    if failed:
        print(f"marked {len(failed)} run(s) failed whose process had been killed: {', '.join(failed)}", file=sys.stderr)
    result = run_backfill(start, end, settings=settings, instance=instance, project=projects[0].name)
    return _run_outcome(result, "backfill", args.verbose)


def _backfill_argv(args) -> list[str]:
    return ["--start", args.start, "--end", args.end] + (["--verbose"] if args.verbose else [])


def parse_since(value: str) -> timedelta:
    """`24h`, `90m`, `7d` -> a positive timedelta."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    try:
        amount = float(value[:-1])
        since = timedelta(**{units[value[-1]]: amount})
    except (KeyError, ValueError, IndexError, OverflowError):
        raise UsageError(f"--since takes a number and a unit m, h or d (e.g. 24h), not {value!r}") from None
    if not math.isfinite(amount) or since <= timedelta(0):
        raise UsageError(f"--since must be a positive length of time (e.g. 24h), not {value!r}")
    return since


def report_window(args, now: datetime) -> tuple[datetime, datetime]:
    """--since: the closed hours of the last `since` (24h = the last 24 whole hours, never the one
    still open); --start/--end: the hours holding them."""
    from .backfill import parse_time
    from .partitions import HOUR, floor_hour

    if args.start:
        start = parse_time(args.start)
        end = parse_time(args.end) if args.end else now
    else:
        end = floor_hour(parse_time(args.end) if args.end else now)
        start = end - math.ceil(parse_since(args.since) / HOUR) * HOUR
    if end <= start:
        raise UsageError(f"the report window is empty: --end ({end:%Y-%m-%dT%H:%MZ}) is not after its start")
    return start, end


def cmd_report(args) -> int:
    settings = _settings()
    from .reporting import ReportError, run_report

    start, end = report_window(args, datetime.now(timezone.utc))
    try:
        text = run_report(settings.data_dir, start, end, args.html, settings.thresholds)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text)
    print(f"\nHTML report (opens offline): {Path(args.html).resolve()}")
    return 1 if "NO DATA" in text.splitlines()[1] else 0


def cmd_check(args) -> int:
    settings = _settings()
    from .doctor import DoctorError, run_check

    try:
        result = run_check(settings.data_dir, retention_days=settings.retention_days)
    except DoctorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(result.lines()))
    return 0 if result.ok else 1


def cmd_query(args) -> int:
    """SQL on query.duckdb (read-only), printed as a table: the `duckdb` shell without installing one."""
    settings = _settings()
    import duckdb

    from .storage import Storage

    storage = Storage(settings.data_dir)
    path = storage.query_path
    if storage.remote_lake is not None:  # a reader's own views over the shared lake (new datasets too)
        from .analytics import tables

        storage.publish_views(extra_views=tables.views(), reader=True)
    if not path.exists():
        raise UsageError(f"no {path} yet: ingest some hours first (stackone-pipeline backfill or demo)")
    sql = args.sql if args.sql != "-" else sys.stdin.read()
    con = storage.connect_query_engine(duckdb.connect(str(path), read_only=True))
    try:
        relation = con.sql(sql)
        if relation is not None:
            relation.show(max_width=10_000, max_rows=args.max_rows)
    except duckdb.Error as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


def _replay_hours(args) -> tuple[datetime | None, datetime | None]:
    from .backfill import parse_time
    from .partitions import HOUR, floor_hour

    if args.hour and (args.start or args.end):
        raise UsageError("give --hour or --start/--end, not both")
    if args.hour:
        hour = floor_hour(parse_time(args.hour))
        return hour, hour + HOUR
    start = floor_hour(parse_time(args.start)) if args.start else None
    end = parse_time(args.end) if args.end else None
    if start and end and end <= start:
        raise UsageError(f"--end ({end:%Y-%m-%dT%H:%MZ}) is not after --start ({start:%Y-%m-%dT%H:%MZ})")
    return start, end


def cmd_sinks(args) -> int:
    """`sinks dead-letters` and `sinks replay`: what the sinks refused, and sending it again."""
    settings = _settings()
    from .http import Transport
    from .sinks import dead_letters
    from .sinks.errors import DeliveryError
    from .sinks.registry import BY_NAME
    from .sinks.replay import replay, replay_line, summary_lines
    from .storage import Storage

    storage = Storage(settings.data_dir)
    start, end = _replay_hours(args)
    if args.action == "replay" and not args.sink:
        raise UsageError("sinks replay needs --sink (loki, datadog or otlp)")
    if args.action == "dead-letters":
        print("\n".join(summary_lines(storage, args.sink, start, end)))
        return 0
    spec = BY_NAME[args.sink]
    if spec.family != "logs":
        raise UsageError(f"{spec.name} has no dead letters: it is sent aggregates, not records")
    configured = getattr(settings, spec.name)
    if configured is None:
        raise UsageError(f"{spec.name} is not configured here ({spec.not_configured}): nothing to replay to")
    hours = dead_letters.hours(storage, spec.name, start, end)
    if not hours:
        print(f"no dead letters for {spec.name}{' of reason ' + repr(args.reason) if args.reason else ''}.")
        return 0
    transport = Transport()
    left = 0
    try:
        for report in replay(spec.build(configured), storage, hours, transport, args.reason):
            print(replay_line(report))
            left += sum(report.dead_letters.values())
    except DeliveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        transport.close()
    return 1 if left else 0


def _fresh_demo_dir(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        if not (path / DEMO_MARKER).exists():
            raise UsageError(f"{path} exists and was not made by the demo; pass --data-dir to another folder")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / DEMO_MARKER).write_text("made by `stackone-pipeline demo`; safe to delete\n")
    return path.resolve()


def cmd_demo(args) -> int:
    settings = _settings()
    _quiet_dagster()
    from .partitions import floor_hour
    from .simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator

    retention = settings.retention_days  # the simulated project keeps what the pipeline expects
    if args.hours > retention * 24 - 1:  # the oldest hour must lie wholly inside the retention
        most = retention * 24 - 1
        raise UsageError(f"--hours must be at most {most} (the {retention}-day retention), got {args.hours}")
    data_dir = _fresh_demo_dir(Path(args.data_dir))
    home = data_dir / "dagster_home"
    from .instance import prepare_home

    prepare_home(home)
    end = floor_hour(datetime.now(timezone.utc))
    start = end - timedelta(hours=args.hours)
    with start_simulator(SimulatorConfig(seed=args.seed, retention_days=retention), port=args.port) as sim:
        os.environ.update(
            STACKONE_API_KEY=DEFAULT_API_KEY,
            STACKONE_BASE_URL=sim.url,
            STACKONE_DATA_DIR=str(data_dir),
            DAGSTER_HOME=str(home),
        )
        print(
            f"simulator at {sim.url}; backfilling {args.hours} hours "
            f"{start:%Y-%m-%d %H}:00 -> {end:%Y-%m-%d %H}:00 UTC into {data_dir}",
            file=sys.stderr,
        )
        from .backfill import run_backfill

        result = run_backfill(start, end)
    if not result.success:
        return _run_outcome(result, "demo backfill", args.verbose)
    from .reporting.demo import print_summary

    print_summary(data_dir, start, end)
    print(
        "\nOpen the same data in the Dagster UI (serves the simulator too):\n"
        f"  DAGSTER_HOME={home} STACKONE_DATA_DIR={data_dir} stackone-pipeline dev\n"
        f"Query it (DuckDB views over the lake; any DuckDB {_duckdb_version()} client opens the file):\n"
        f"  STACKONE_DATA_DIR={data_dir} stackone-pipeline query "
        '"SELECT provider, count(*) AS requests FROM request_logs GROUP BY 1 ORDER BY 2 DESC"\n'
        f"  python -c \"import duckdb; print(duckdb.connect('{data_dir / 'query.duckdb'}', read_only=True)"
        ".sql('FROM request_volume_hourly LIMIT 5'))\""
    )
    return 0


def _duckdb_version() -> str:
    import duckdb

    return f"{duckdb.__version__.split('.')[0]}.x"


def cmd_webhooks(args) -> int:
    from .settings import WebhookSettings
    from .webhooks import StagingBusyError, WebhookConfigError, serve

    settings = _settings()
    try:
        serve(
            args.host,
            args.port,
            settings.data_dir,
            WebhookSettings.from_env().secrets,
            signature_header=args.signature_header,
            tolerance_s=args.tolerance,
        )
    except (WebhookConfigError, StagingBusyError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_dev(args) -> int:
    _settings()
    from .dev import run_dev

    return run_dev(args.data_dir, args.port, args.sim_port, args.seed)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser(__doc__).parse_args(argv)
    if not args.verbose:
        logging.setLoggerClass(ShortErrorsLogger)  # Dagster makes its console logger from this class
    try:
        return COMMANDS[args.command_name](args)
    except UsageError as exc:  # wrong settings, options or ranges: nothing has run
        print(f"error: {exc}", file=sys.stderr)
        return 2


COMMANDS = {
    "demo": cmd_demo,
    "backfill": cmd_backfill,
    "report": cmd_report,
    "check": cmd_check,
    "query": cmd_query,
    "sinks": cmd_sinks,
    "simulate": cmd_simulate,
    "webhooks": cmd_webhooks,
    "dev": cmd_dev,
}


def run() -> None:
    """The `stackone-pipeline` program: `main()`, then the process ends (footprint.exit_now)."""
    from .footprint import exit_now

    code = main()
    exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
