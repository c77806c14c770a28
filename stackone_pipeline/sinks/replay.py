"""The dead letters from the command line: `sinks dead-letters` lists them, `sinks replay` sends them again.

A replay goes through the delivery of delivery.py (same batching, retries, ledger and lock as
the hourly run), one hour at a time, oldest first, and stops at the first hour the sink fails:
what it delivered before is on record, and a second replay carries on.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ..http import Transport
from ..storage import Storage
from . import dead_letters
from .delivery import DeliveryReport, Sink, replay_hour


def replay(
    sink: Sink, storage: Storage, hours: Iterable[datetime], transport: Transport, reason: str | None = None
) -> Iterable[DeliveryReport]:
    """Replay the dead letters of `sink` in each of `hours` (those of `reason` only, if given)."""
    for hour in hours:
        yield replay_hour(sink, storage, hour, transport, reason)


def replay_line(r: DeliveryReport) -> str:
    """One hour's replay, as `sinks replay` prints it."""
    left = sum(r.dead_letters.values())
    text = (
        f"{r.sink} {r.hour:%Y-%m-%dT%H}:00Z: replayed {r.replayed}, accepted {r.accepted}, "
        f"refused again {r.dead_lettered}, dead letters left {left}"
    )
    if r.possibly_duplicated:
        text += f"; {r.possibly_duplicated} possibly stored twice ({r.on_resend})"
    return text


def summary_lines(storage: Storage, sink: str | None, start: datetime | None, end: datetime | None) -> list[str]:
    """The dead letters by sink, hour and reason, as `sinks dead-letters` prints them."""
    rows = dead_letters.summary(storage, sink, start, end)
    if not rows:
        return ["no dead letters" + (f" for {sink}" if sink else "") + "."]
    lines = [f"{'sink':<10} {'hour (UTC)':<16} {'records':>8} {'refused':>8}  reason"]
    for name, hour, reason, records, refused in rows:
        lines.append(f"{name:<10} {hour:%Y-%m-%dT%H}:00 {records:>8} {refused:>8}  {reason}")
    total = sum(r[3] for r in rows)
    lines.append(f"{total} dead letters in {len({(r[0], r[1]) for r in rows})} sink-hours.")
    if any(records != refused for *_, records, refused in rows):
        lines.append(
            "records > refused: an OTLP partial_success refused that many of a batch without saying which; "
            "a replay sends the whole batch again, and the collector may store the rest twice."
        )
    return lines
