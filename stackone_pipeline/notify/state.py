"""The notification state in the state store (storage.state): open conditions and per-channel deliveries.

`notify_conditions` holds one row per condition episode (opened, maybe resolved);
`notify_deliveries` one row per (condition, channel, phase) with its status:
pending -> delivered | rejected (the channel refused it for good) | cancelled (resolved before
the firing message got through: neither is sent) | expired (still failing after a day).

The tables live in warehouse.duckdb, or in PostgreSQL when the state is shared between machines
(`STACKONE_STATE_URL`): `transaction(storage)` opens either, and one set of statements serves
both (DuckDB's `?` placeholders become psycopg's `%s` on the way to PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..storage import Storage
from .model import FIRING, RESOLVED, Condition

CREATE = """
CREATE TABLE IF NOT EXISTS notify_conditions (
    key VARCHAR NOT NULL,               -- the condition's identity (see notify/conditions.py)
    source VARCHAR NOT NULL,            -- alert, webhook or run
    one_shot BOOLEAN NOT NULL,          -- an event: notified once, never resolved
    body JSON NOT NULL,                 -- the condition as last seen (title, text, labels, ...)
    opened_at TIMESTAMPTZ NOT NULL,
    resolved_at TIMESTAMPTZ,            -- null while open
    last_seen TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_deliveries (
    key VARCHAR NOT NULL,
    channel VARCHAR NOT NULL,           -- webhook, slack, alertmanager
    phase VARCHAR NOT NULL,             -- firing or resolved
    status VARCHAR NOT NULL,            -- pending, delivered, rejected, cancelled, expired
    attempts INTEGER NOT NULL,          -- sensor ticks that tried it
    created_at TIMESTAMPTZ NOT NULL,
    last_attempt_at TIMESTAMPTZ,
    delivered_at TIMESTAMPTZ,           -- last successful post (Alertmanager: last refresh)
    last_error VARCHAR
);
"""
PG_CREATE = tuple(statement.strip() for statement in CREATE.split(";") if statement.strip())  # the same DDL
GIVE_UP = timedelta(days=1)  # a message still undelivered after a day is expired, not retried
KEEP = timedelta(days=30)  # closed conditions and old events are forgotten after this


class _Qmark:
    """A psycopg connection that takes DuckDB's `?` placeholders (the statements here have no
    other `?` or `%`)."""

    def __init__(self, con):
        self._con = con

    def execute(self, sql: str, params=None):
        return self._con.execute(sql.replace("%", "%%").replace("?", "%s"), params)


@contextmanager
def transaction(storage: Storage) -> Iterator:
    """A connection to the notification state inside one transaction (committed when the block
    ends, rolled back if it raises), its tables created: the warehouse's or the shared PostgreSQL's."""
    shared = storage.shared_state
    if shared is None:
        with storage.state.transaction() as con:
            con.execute(CREATE)
            yield con
        return
    with shared.transaction(*PG_CREATE) as con:
        con.execute("SET LOCAL TIME ZONE 'UTC'")  # times come back in UTC, as DuckDB's writer gives them
        yield _Qmark(con)


@dataclass(frozen=True)
class Work:
    """One message to send."""

    condition: Condition
    channel: str
    phase: str
    opened_at: datetime
    resolved_at: datetime | None


def plan(
    con,
    now: datetime,
    channels: list,
    open_alerts: list[Condition] | None,
    events: list[Condition],
) -> tuple[list[Work], list[str], list[str]]:
    """Apply what is true now to the state (`con`: from `transaction`); return (messages due,
    opened keys, resolved keys)."""
    rows = con.execute("SELECT key, one_shot, resolved_at FROM notify_conditions").fetchall()
    known = {k: (one_shot, resolved_at) for k, one_shot, resolved_at in rows}
    opened, resolved = [], []

    def open_condition(c: Condition) -> None:
        con.execute("DELETE FROM notify_conditions WHERE key = ?", [c.key])  # a closed episode, if any
        con.execute("DELETE FROM notify_deliveries WHERE key = ?", [c.key])
        con.execute(
            "INSERT INTO notify_conditions VALUES (?, ?, ?, ?, ?, NULL, ?)",
            [c.key, c.source, c.one_shot, c.to_json(), now, now],
        )
        known[c.key] = (c.one_shot, None)
        opened.append(c.key)

    for c in events:
        if c.key not in known:
            open_condition(c)
    if open_alerts is not None:
        current = {c.key: c for c in open_alerts}
        for c in current.values():
            if c.key in known and known[c.key][1] is None:
                con.execute(
                    "UPDATE notify_conditions SET body = ?, last_seen = ? WHERE key = ?", [c.to_json(), now, c.key]
                )
            else:
                open_condition(c)
        for key, (one_shot, resolved_at) in known.items():
            if key.startswith("alert/") and not one_shot and resolved_at is None and key not in current:
                con.execute("UPDATE notify_conditions SET resolved_at = ? WHERE key = ?", [now, key])
                # Resolved goes where firing went; a firing message not yet through is dropped.
                con.execute(
                    "UPDATE notify_deliveries SET status = CASE WHEN delivered_at IS NULL THEN 'cancelled' "
                    "ELSE 'delivered' END WHERE key = ? AND phase = ? AND status = 'pending'",
                    [key, FIRING],
                )
                con.execute(
                    "INSERT INTO notify_deliveries SELECT key, channel, ?, 'pending', 0, ?, NULL, NULL, NULL "
                    "FROM notify_deliveries WHERE key = ? AND phase = ? AND delivered_at IS NOT NULL",
                    [RESOLVED, now, key, FIRING],
                )
                resolved.append(key)
    # Every open condition (and every new event) has a firing row per channel, including a channel
    # configured after the condition opened.
    for ch in channels:
        con.execute(
            "INSERT INTO notify_deliveries SELECT c.key, ?, ?, 'pending', 0, ?, NULL, NULL, NULL "
            "FROM notify_conditions c "
            "WHERE (c.resolved_at IS NULL AND NOT c.one_shot OR c.one_shot AND c.opened_at = ?) "
            "AND NOT EXISTS (SELECT 1 FROM notify_deliveries d WHERE d.key = c.key AND d.channel = ? AND d.phase = ?)",
            [ch.name, FIRING, now, now, ch.name, FIRING],
        )
    con.execute(
        "UPDATE notify_deliveries SET status = 'expired' WHERE status = 'pending' AND delivered_at IS NULL "
        "AND created_at < ?",
        [now - GIVE_UP],
    )
    con.execute(
        "DELETE FROM notify_deliveries WHERE key IN (SELECT key FROM notify_conditions "
        "WHERE (one_shot OR resolved_at IS NOT NULL) AND coalesce(resolved_at, opened_at) < ?)",
        [now - KEEP],
    )
    con.execute(
        "DELETE FROM notify_conditions WHERE (one_shot OR resolved_at IS NOT NULL) "
        "AND coalesce(resolved_at, opened_at) < ?",
        [now - KEEP],
    )
    return due(con, now, channels), opened, resolved


def due(con, now: datetime, channels: list) -> list[Work]:
    """Pending messages of configured channels, and open conditions whose Alertmanager refresh is due."""
    refresh = {ch.name: ch.refresh_s for ch in channels if ch.refresh_s}
    rows = con.execute(
        "SELECT CAST(c.body AS VARCHAR), d.channel, d.phase, c.opened_at, c.resolved_at, d.status, d.delivered_at "
        "FROM notify_deliveries d JOIN notify_conditions c USING (key) "
        "WHERE d.status = 'pending' OR d.status = 'delivered' AND d.phase = ? AND c.resolved_at IS NULL "
        "AND NOT c.one_shot ORDER BY c.opened_at, c.key, d.phase",
        [FIRING],
    ).fetchall()
    names = {ch.name for ch in channels}
    out = []
    for body, channel, phase, opened_at, resolved_at, status, delivered_at in rows:
        if channel not in names:
            continue
        if status == "delivered":  # an open condition: only a refresh can be due
            if channel not in refresh or delivered_at + timedelta(seconds=refresh[channel]) > now:
                continue
        out.append(Work(Condition.from_json(body), channel, phase, opened_at, resolved_at))
    return out


def record(con, now: datetime, outcomes: list[tuple[Work, str, str | None]]) -> None:
    """Store what each send did: status "delivered", "rejected" or "pending" (try again)."""
    for work, status, error in outcomes:
        con.execute(
            "UPDATE notify_deliveries SET status = ?, attempts = attempts + 1, last_attempt_at = ?, "
            "delivered_at = CASE WHEN ? = 'delivered' THEN ? ELSE delivered_at END, last_error = ? "
            "WHERE key = ? AND channel = ? AND phase = ? AND status IN ('pending', 'delivered')",
            [status, now, status, now, error, work.condition.key, work.channel, work.phase],
        )
