"""The command line's arguments: every command of `stackone-pipeline`, its options and their
checks (a wrong one is one `error:` line and exit code 2). cli.py runs what they name."""

from __future__ import annotations

import argparse
import math


def project_key(value: str) -> tuple[str, str]:
    name, sep, key = value.partition("=")
    if not sep or not name or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=KEY, got {value!r}")
    return name, key


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


def build_parser(description: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show Dagster's stack traces and debug logs")
    p = Parser(prog="stackone-pipeline", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str):
        return sub.add_parser(name, help=help, parents=[common])

    d = command("demo", "run the whole pipeline for the last 24 hours on the built-in simulator")
    d.add_argument("--data-dir", default="./demo-data")
    d.add_argument("--hours", type=bounded_int(1), default=24, help="closed hours to backfill (default 24)")
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--port", type=PORT, default=0, help="simulator port (default: a free one)")
    d.set_defaults(command_name="demo")

    b = command("backfill", "materialise [start, end) through Dagster in one run")
    b.add_argument("--start", required=True, help="ISO-8601, e.g. 2026-11-25T00:00Z")
    b.add_argument("--end", required=True, help="ISO-8601, exclusive")
    b.add_argument("--project", help="one project of STACKONE_PROJECTS (default: each, in parallel)")
    b.set_defaults(command_name="backfill")

    r = command("report", "the guide's key metrics for a window, as text and a self-contained HTML file")
    r.add_argument("--since", default="24h", help="the last closed hours, e.g. 24h, 90m, 7d (default 24h)")
    r.add_argument("--start", help="ISO-8601 start (instead of --since)")
    r.add_argument("--end", help="ISO-8601 end (default now)")
    r.add_argument("--html", default="stackone-report.html", help="where to write the HTML report")
    r.set_defaults(command_name="report")

    c = command("check", "verify the lake, the warehouse and query.duckdb against each other; say what to re-run")
    c.set_defaults(command_name="check")

    q = command("query", "run SQL on query.duckdb (read-only) and print the result")
    q.add_argument("sql", help="the SQL, or - to read it from stdin")
    q.add_argument("--max-rows", type=bounded_int(1), default=40)
    q.set_defaults(command_name="query")

    k = command("sinks", "list what the sinks refused (dead-letters), or send it again (replay)")
    k.add_argument("action", choices=("dead-letters", "replay"))
    k.add_argument("--sink", choices=("loki", "datadog", "otlp"), help="required for replay")
    k.add_argument("--hour", help="one hour, ISO-8601 (e.g. 2026-11-25T13:00Z)")
    k.add_argument("--start", help="ISO-8601, the first hour")
    k.add_argument("--end", help="ISO-8601, exclusive")
    k.add_argument("--reason", help="replay only the dead letters of this reason (as `dead-letters` shows it)")
    k.set_defaults(command_name="sinks")

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
        type=project_key,
        metavar="NAME=KEY",
        help="one more StackOne project with its own API key, traffic and rate limit (repeatable)",
    )
    s.add_argument(
        "--page-size-policy",
        choices=("clamp", "refuse"),
        default="clamp",
        help="a larger page_size is served as the maximum (clamp, default) or answered 400 (refuse)",
    )
    s.set_defaults(command_name="simulate")

    w = command(
        "webhooks",
        "receive signed StackOne webhooks into <data dir>/webhooks/staging (with STACKONE_STATE_URL: "
        "the webhook_staging table) "
        "(needs STACKONE_WEBHOOK_SECRET, or STACKONE_WEBHOOK_SECRETS=old,new while rotating)",
    )
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=PORT, default=8780)
    w.add_argument("--signature-header", default="X-StackOne-Signature", help="header carrying the HMAC-SHA256")
    w.add_argument("--tolerance", type=positive_float, default=300.0, help="seconds an event time may be from now")
    w.set_defaults(command_name="webhooks")

    v = command("dev", "start the simulator and `dagster dev` on the same data directory")
    v.add_argument("--data-dir", default="./data")
    v.add_argument("--port", type=PORT, default=3000)
    v.add_argument("--sim-port", type=PORT, default=8765)
    v.add_argument("--seed", type=int, default=42)
    v.set_defaults(command_name="dev")
    return p
