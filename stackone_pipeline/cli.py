"""`stackone-pipeline`: demo, backfill, report, check, query, sinks, simulate, webhooks, dev.

Wrong input (a setting, an option, a date range) is one `error: …` line and exit code 2, before
anything runs; a run that fails is one `error: …` line per failed step and exit code 1, with
Dagster's stack traces behind `--verbose` (and always in the run's logs).
"""

from __future__ import annotations

import argparse
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

from .settings import Settings, UsageError, require_api_key

DEMO_MARKER = ".stackone-demo"
# `dagster._core.errors.`, `stackone_pipeline.stackone.client.`: module paths say nothing to a user
MODULE_PATH = re.compile(r"\b(?:dagster|stackone_pipeline)\.[\w.]*\.(?=\w+: )")
CAUSED_BY = "The above exception was caused by the following exception:\n"


def _quiet_dagster() -> None:
    """Before a command runs the pipeline in this process: no beta warnings, and a lean process
    (footprint.py)."""
    from .footprint import freeze_imports, lean_process

    lean_process()
    for name in ("BetaWarning", "PreviewWarning", "SupersessionWarning"):
        warnings.filterwarnings("ignore", message=".*", category=getattr(__import__("dagster"), name, Warning))
    freeze_imports()  # Dagster's modules now, the pipeline's once loaded (backfill.py)


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


def _project_key(value: str) -> tuple[str, str]:
    name, sep, key = value.partition("=")
    if not sep or not name or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=KEY, got {value!r}")
    return name, key


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

    path = Storage(settings.data_dir).query_path
    if not path.exists():
        raise UsageError(f"no {path} yet: ingest some hours first (stackone-pipeline backfill or demo)")
    sql = args.sql if args.sql != "-" else sys.stdin.read()
    con = duckdb.connect(str(path), read_only=True)
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
    except (WebhookConfigError, StagingBusyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_dev(args) -> int:
    _settings()
    from .dev import run_dev

    return run_dev(args.data_dir, args.port, args.sim_port, args.seed)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other wrong input
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def bounded_int(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi]."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, not {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"must be between {lo} and {hi}, not {value}"
                if hi is not None
                else f"must be at least {lo}, not {value}"
            )
        return value

    return parse


def positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {raw!r}")
    return value


PORT = bounded_int(0, 65535)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show Dagster's stack traces and debug logs")
    p = Parser(prog="stackone-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str):
        return sub.add_parser(name, help=help, parents=[common])

    d = command("demo", "run the whole pipeline for the last 24 hours on the built-in simulator")
    d.add_argument("--data-dir", default="./demo-data")
    d.add_argument("--hours", type=bounded_int(1), default=24, help="closed hours to backfill (default 24)")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--port", type=PORT, default=0, help="simulator port (default: a free one)")
    d.set_defaults(func=cmd_demo)

    b = command("backfill", "materialise [start, end) through Dagster in one run")
    b.add_argument("--start", required=True, help="ISO-8601, e.g. 2026-11-25T00:00Z")
    b.add_argument("--end", required=True, help="ISO-8601, exclusive")
    b.add_argument("--project", help="one project of STACKONE_PROJECTS (default: each, in parallel)")
    b.set_defaults(func=cmd_backfill)

    r = command("report", "the guide's key metrics for a window, as text and a self-contained HTML file")
    r.add_argument("--since", default="24h", help="the last closed hours, e.g. 24h, 90m, 7d (default 24h)")
    r.add_argument("--start", help="ISO-8601 start (instead of --since)")
    r.add_argument("--end", help="ISO-8601 end (default now)")
    r.add_argument("--html", default="stackone-report.html", help="where to write the HTML report")
    r.set_defaults(func=cmd_report)

    c = command("check", "verify the lake, the warehouse and query.duckdb against each other; say what to re-run")
    c.set_defaults(func=cmd_check)

    q = command("query", "run SQL on query.duckdb (read-only) and print the result")
    q.add_argument("sql", help="the SQL, or - to read it from stdin")
    q.add_argument("--max-rows", type=bounded_int(1), default=40)
    q.set_defaults(func=cmd_query)

    k = command("sinks", "list what the sinks refused (dead-letters), or send it again (replay)")
    k.add_argument("action", choices=("dead-letters", "replay"))
    k.add_argument("--sink", choices=("loki", "datadog", "otlp"), help="required for replay")
    k.add_argument("--hour", help="one hour, ISO-8601 (e.g. 2026-11-25T13:00Z)")
    k.add_argument("--start", help="ISO-8601, the first hour")
    k.add_argument("--end", help="ISO-8601, exclusive")
    k.add_argument("--reason", help="replay only the dead letters of this reason (as `dead-letters` shows it)")
    k.set_defaults(func=cmd_sinks)

    s = command("simulate", "serve the StackOne request-logs API simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=PORT, default=8765)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--rows-per-hour", type=bounded_int(0), default=1200)
    s.add_argument("--rate-limit", type=bounded_int(1), default=1000, help="requests per minute per key")
    s.add_argument("--retention-days", type=bounded_int(1, 3650), default=90, help="days of logs the API keeps")
    s.add_argument(
        "--list-shape",
        choices=("partial", "full"),
        default="partial",
        help="list pages carry the SDK's partial records (default) or the guide's full ones",
    )
    s.add_argument(
        "--filter-encoding",
        choices=("both", "bracket", "flat", "none"),
        default="both",
        help="which filter spelling is honoured: filter[start_date]= (bracket), start_date= (flat), both, none",
    )
    s.add_argument(
        "--reject-unknown-params", action="store_true", help="answer 400 to query parameters it does not know"
    )
    s.add_argument("--max-page-size", type=bounded_int(1), default=1000, help="the largest page served")
    s.add_argument(
        "--project",
        action="append",
        default=[],
        type=_project_key,
        metavar="NAME=KEY",
        help="one more StackOne project with its own API key, traffic and rate limit (repeatable)",
    )
    s.add_argument(
        "--page-size-policy",
        choices=("clamp", "refuse"),
        default="clamp",
        help="a larger page_size is served as the maximum (clamp, default) or answered 400 (refuse)",
    )
    s.set_defaults(func=cmd_simulate)

    w = command(
        "webhooks",
        "receive signed StackOne webhooks into <data dir>/webhooks/staging "
        "(needs STACKONE_WEBHOOK_SECRET, or STACKONE_WEBHOOK_SECRETS=old,new while rotating)",
    )
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=PORT, default=8780)
    w.add_argument("--signature-header", default="X-StackOne-Signature", help="header carrying the HMAC-SHA256")
    w.add_argument("--tolerance", type=positive_float, default=300.0, help="seconds an event time may be from now")
    w.set_defaults(func=cmd_webhooks)

    v = command("dev", "start the simulator and `dagster dev` on the same data directory")
    v.add_argument("--data-dir", default="./data")
    v.add_argument("--port", type=PORT, default=3000)
    v.add_argument("--sim-port", type=PORT, default=8765)
    v.add_argument("--seed", type=int, default=42)
    v.set_defaults(func=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if not args.verbose:
        logging.setLoggerClass(ShortErrorsLogger)  # Dagster makes its console logger from this class
    try:
        return args.func(args)
    except UsageError as exc:  # wrong settings, options or ranges: nothing has run
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
