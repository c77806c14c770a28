"""`stackone-pipeline`: demo, backfill, report, simulate, webhooks, dev."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

DEMO_MARKER = ".stackone-demo"


def _quiet_dagster() -> None:
    for name in ("BetaWarning", "PreviewWarning", "SupersessionWarning"):
        warnings.filterwarnings("ignore", message=".*", category=getattr(__import__("dagster"), name, Warning))


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
    )
    serve(config, args.host, args.port)
    return 0


def cmd_backfill(args) -> int:
    _quiet_dagster()
    from .backfill import BackfillError, parse_time, run_backfill

    try:
        result = run_backfill(parse_time(args.start), parse_time(args.end))
    except BackfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data.error:
                print(f"error: {event.step_failure_data.error.message.strip()}", file=sys.stderr)
        print(f"backfill failed (run {result.run_id})", file=sys.stderr)
        return 1
    print(f"backfill succeeded (run {result.run_id})")
    return 0


def parse_since(value: str) -> timedelta:
    """`24h`, `90m`, `7d` -> a timedelta."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    try:
        return timedelta(**{units[value[-1]]: float(value[:-1])})
    except (KeyError, ValueError):
        raise SystemExit(f"error: --since takes a number and a unit m, h or d (e.g. 24h), not {value!r}") from None


def cmd_report(args) -> int:
    from .backfill import BackfillError, parse_time
    from .reporting import ReportError, run_report
    from .settings import Settings

    now = datetime.now(timezone.utc)
    try:
        end = parse_time(args.end) if args.end else now
        start = parse_time(args.start) if args.start else end - parse_since(args.since)
    except BackfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data_dir = Settings.from_env().data_dir
    try:
        print(run_report(data_dir, start, end, args.html))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nHTML report (opens offline): {Path(args.html).resolve()}")
    return 0


def _fresh_demo_dir(path: Path) -> Path:
    if path.exists() and any(path.iterdir()):
        if not (path / DEMO_MARKER).exists():
            raise SystemExit(f"error: {path} exists and was not made by the demo; pass --data-dir to another folder")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / DEMO_MARKER).write_text("made by `stackone-pipeline demo`; safe to delete\n")
    return path.resolve()


def cmd_demo(args) -> int:
    _quiet_dagster()
    from .partitions import floor_hour
    from .settings import Settings
    from .simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator

    data_dir = _fresh_demo_dir(Path(args.data_dir))
    home = data_dir / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    end = floor_hour(datetime.now(timezone.utc))
    start = end - timedelta(hours=args.hours)
    retention = Settings.from_env().retention_days  # the simulated project keeps what the pipeline expects
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
        print("demo backfill failed; see the log above", file=sys.stderr)
        return 1
    from .reporting.demo import print_summary

    print_summary(data_dir, start, end)
    print(
        "\nOpen the same data in the Dagster UI (serves the simulator too):\n"
        f"  DAGSTER_HOME={home} STACKONE_DATA_DIR={data_dir} stackone-pipeline dev\n"
        f"Query it:  duckdb {data_dir / 'query.duckdb'}"
    )
    return 0


def cmd_webhooks(args) -> int:
    from .settings import Settings, WebhookSettings
    from .webhooks import StagingBusyError, WebhookConfigError, serve

    try:
        serve(
            args.host,
            args.port,
            Settings.from_env().data_dir,
            WebhookSettings.from_env().secrets,
            signature_header=args.signature_header,
            tolerance_s=args.tolerance,
        )
    except (WebhookConfigError, StagingBusyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_dev(args) -> int:
    from .dev import run_dev

    return run_dev(args.data_dir, args.port, args.sim_port, args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stackone-pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole pipeline for the last 24 hours on the built-in simulator")
    d.add_argument("--data-dir", default="./demo-data")
    d.add_argument("--hours", type=int, default=24)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--port", type=int, default=0, help="simulator port (default: a free one)")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("backfill", help="materialise [start, end) through Dagster in one run")
    b.add_argument("--start", required=True, help="ISO-8601, e.g. 2026-11-25T00:00Z")
    b.add_argument("--end", required=True, help="ISO-8601, exclusive")
    b.set_defaults(func=cmd_backfill)

    r = sub.add_parser("report", help="the guide's key metrics for a window, as text and a self-contained HTML file")
    r.add_argument("--since", default="24h", help="window ending now, e.g. 24h, 90m, 7d (default 24h)")
    r.add_argument("--start", help="ISO-8601 start (instead of --since)")
    r.add_argument("--end", help="ISO-8601 end (default now)")
    r.add_argument("--html", default="stackone-report.html", help="where to write the HTML report")
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("simulate", help="serve the StackOne request-logs API simulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--rows-per-hour", type=int, default=1200)
    s.add_argument("--rate-limit", type=int, default=1000, help="requests per minute per key")
    s.add_argument("--retention-days", type=int, default=90, help="days of logs the API keeps (default 90)")
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
    s.set_defaults(func=cmd_simulate)

    w = sub.add_parser(
        "webhooks",
        help="receive signed StackOne webhooks into <data dir>/webhooks/staging "
        "(needs STACKONE_WEBHOOK_SECRET, or STACKONE_WEBHOOK_SECRETS=old,new while rotating)",
    )
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8780)
    w.add_argument("--signature-header", default="X-StackOne-Signature", help="header carrying the HMAC-SHA256")
    w.add_argument("--tolerance", type=float, default=300.0, help="seconds an event timestamp may be from now")
    w.set_defaults(func=cmd_webhooks)

    v = sub.add_parser("dev", help="start the simulator and `dagster dev` on the same data directory")
    v.add_argument("--data-dir", default="./data")
    v.add_argument("--port", type=int, default=3000)
    v.add_argument("--sim-port", type=int, default=8765)
    v.add_argument("--seed", type=int, default=42)
    v.set_defaults(func=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
