"""The delivery ledger: per sink and hour, which records the sink has taken (or will never take), and when.

A record is keyed by its `request_id`; a stored row without one by `row:<sha256>` of its stored
fields (`RECORD_KEY`), so the same row has the same key on every run and is delivered once like
any other. The outcome says how its delivery ended: `accepted`, `partial` (its batch was
partly rejected by the sink), or `rejected: <why>` for records that are never sent again, short
of a forced resend: `rejected: too large` (the sink refused it even alone) and `rejected: no event
time` (the stored row has none, so no sink can place it; should a later ingest give the row a
time, it is delivered and its outcome replaced), `rejected: too old` (older than the sink
accepts), or the sink's own reason for an entry it refused (`rejected: too far behind`, ...).
Refused records (`rejected: ...`, `partial`) are the sink's dead letters (dead_letters.py): a
replay sends them again, and the outcome it gets replaces theirs.

Table `delivery_ledger` in the state store (storage.state). Opening it costs tens of milliseconds,
too much per batch, so accepted ids first go to a small journal file per (sink, hour), appended
and fsync'd after every answered batch, and are merged into the table in one transaction when
the hour's delivery stops (success or failure). A journal left by a killed run is merged before
the next delivery of that hour reads the ledger, so a crash mid-push resumes exactly where it
stopped, and a re-run of a delivered hour sends only what is new (late arrivals). A journal
line is `key, outcome, time, reason, detail, batch_refused, batch_size, "."`: the final "."
tells a whole line from one torn by a kill, which is skipped (that batch is not a delivery we
can vouch for, so it is sent again).

With the state in PostgreSQL (`storage.shared_state`, shared by every machine of a deployment), a
journal on one machine's disk would be invisible to a retry on another, which would send the
accepted batches again. There the journal is the table `delivery_journal`: `add()` copies each
answered batch's lines into it and commits, before the next batch is sent (the fsync's guarantee),
and `flush()` merges the (sink, hour) rows into `delivery_ledger` with the same rules, the dead
letters in the same transaction, and deletes them in it (a merge of one (sink, hour) at a time, by
an advisory lock). A COPY is whole or absent: no torn line. Rows carry the project (one database
holds every project's state), and (project, sink, hour[, request_id]) keys every table.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from ..stackone.records import COLUMNS
from ..state import PostgresState
from ..storage import Storage
from ..warehouse import in_transaction
from . import dead_letters
from .payload import json_object

CREATE = """CREATE TABLE IF NOT EXISTS delivery_ledger (
  sink VARCHAR, hour TIMESTAMPTZ, request_id VARCHAR, outcome VARCHAR, delivered_at TIMESTAMPTZ
)"""
# The same tables in PostgreSQL, by project (module docstring); created on first use, in this order.
PG_CREATE = (
    """CREATE TABLE IF NOT EXISTS delivery_ledger (
  project TEXT NOT NULL, sink TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL, request_id TEXT NOT NULL,
  outcome TEXT NOT NULL, delivered_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (project, sink, hour, request_id)
)""",
    """CREATE TABLE IF NOT EXISTS delivery_journal (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, project TEXT NOT NULL, sink TEXT NOT NULL,
  hour TIMESTAMPTZ NOT NULL, request_id TEXT NOT NULL, outcome TEXT NOT NULL, delivered_at TIMESTAMPTZ NOT NULL,
  reason TEXT, detail TEXT, batch_refused INTEGER, batch_size INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS delivery_journal_hour ON delivery_journal (project, sink, hour)",
    dead_letters.PG_CREATE,
)

ACCEPTED, PARTIAL = "accepted", "partial"
REJECTED = "rejected: "  # the prefix of every outcome that ends delivery without the sink having it
TOO_LARGE = REJECTED + "too large"
NO_EVENT_TIME = REJECTED + "no event time"
TOO_OLD = REJECTED + "too old"
# Outcomes about the stored row or the sink's window, not the sink's answer: every delivery checks
# them again (the row may have been given a time, the sink's age limit raised).
RECHECKED = (NO_EVENT_TIME, TOO_OLD)
RECHECKED_SQL = ", ".join(f"'{o}'" for o in RECHECKED)


def refused_sql(alias: str) -> str:
    """SQL (DuckDB and PostgreSQL alike) over a journal or ledger row `alias`: the record is not in
    the sink (a dead letter), and an outcome a later one (a replay's, or a delivery's once the row
    has a time) replaces. The one rule of both backends' merges."""
    return f"(starts_with({alias}.outcome, '{REJECTED}') OR {alias}.outcome = '{PARTIAL}')"


REFUSED = refused_sql("j")
JOURNAL_COLUMNS = (
    "{'request_id': 'VARCHAR', 'outcome': 'VARCHAR', 'delivered_at': 'TIMESTAMPTZ', 'reason': 'VARCHAR', "
    "'detail': 'VARCHAR', 'batch_refused': 'INTEGER', 'batch_size': 'INTEGER', 'end': 'VARCHAR'}"
)


def _field(text: str) -> str:
    return " ".join(text.split())[:500]  # one journal field: no tab or newline


NO_IDS = pa.table(
    {"request_id": pa.array([], pa.string()), "outcome": pa.array([], pa.string())}
)  # (schema.empty_table() imports pandas)

# The ledger's key of a stored row, as SQL over it: its request_id, else a hash of every other
# stored field (keys sorted, nulls left out, times as epoch microseconds: the same bytes from the
# same row on every run, and a column added later as null changes nothing).
_ROW_FIELDS = {
    name: f"to_json(epoch_us({name}))" if pa.types.is_timestamp(typ) else f"to_json({name})"
    for name, typ, _ in sorted(COLUMNS)
    if name not in ("hour", "request_id")
}
ROW_HASH = f"'row:' || sha256({json_object(_ROW_FIELDS)})"
RECORD_KEY = f"CASE WHEN request_id IS NOT NULL THEN request_id ELSE {ROW_HASH} END"


class Ledger:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.state = storage.state
        self.shared = storage.shared_state  # PostgreSQL: journal and ledger there (module docstring)
        self.journal_dir = storage.data_dir / "ledger-journal"

    def _journal(self, sink: str, hour: datetime) -> Path:
        return self.journal_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', sink)}--{hour:%Y-%m-%dT%H}.tsv"

    def delivered_ids(self, sink: str, hour: datetime) -> pa.Table:
        """Keys `sink` has an outcome for in `hour` (merging any journal a killed run left), with
        the outcome, as Arrow columns: half a million ids cost ~20 MB here, several times that as
        a Python set."""
        self.flush(sink, hour)
        if self.shared is not None:
            with self._pg() as con:
                return PostgresState.query_arrow(
                    con,
                    "SELECT request_id, outcome FROM delivery_ledger WHERE project = %s AND sink = %s AND hour = %s",
                    [self.storage.project, sink, hour],
                    schema=NO_IDS.schema,
                )
        if not self.state.path.exists():
            return NO_IDS
        with self.state.writer() as con:  # writer: the table may not exist yet
            con.execute(CREATE)
            return con.sql(
                "SELECT request_id, outcome FROM delivery_ledger WHERE sink = $sink AND hour = $hour",
                params={"sink": sink, "hour": hour},
            ).to_arrow_table()

    def took_later(self, sink: str, hour: datetime) -> bool:
        """Whether `sink` has taken records of an hour after `hour` (a time-ordered sink's stream has
        moved past it: delivery.py sends such an hour to its own stream)."""
        accepted = f"outcome IN ('{ACCEPTED}', '{PARTIAL}')"
        if self.shared is not None:
            with self._pg() as con:
                (found,) = con.execute(
                    f"SELECT EXISTS (SELECT 1 FROM delivery_ledger WHERE project = %s AND sink = %s AND hour > %s "
                    f"AND {accepted})",
                    [self.storage.project, sink, hour],
                ).fetchone()
            return bool(found)
        if not self.state.path.exists():
            return False
        with self.state.writer() as con:
            con.execute(CREATE)
            (found,) = con.execute(
                f"SELECT EXISTS (SELECT 1 FROM delivery_ledger WHERE sink = ? AND hour > ? AND {accepted})",
                [sink, hour],
            ).fetchone()
        return bool(found)

    def outcomes(self, sink: str, hour: datetime) -> dict[str, str]:
        """key -> outcome, for `sink` and `hour` (small hours and tests)."""
        table = self.delivered_ids(sink, hour)
        return dict(zip(table.column("request_id").to_pylist(), table.column("outcome").to_pylist()))

    def delivered(self, sink: str, hour: datetime) -> set[str]:
        return set(self.delivered_ids(sink, hour).column("request_id").to_pylist())

    def add(
        self,
        sink: str,
        hour: datetime,
        request_ids: list[str],
        outcome: str = ACCEPTED,
        detail: str = "",
        batch: tuple[int, int] | None = None,
    ) -> None:
        """Journal ids the sink has answered for; durable before the next batch is sent. A refusal
        (`rejected: <why>`, `partial`) carries the sink's words (`detail`) and, for a partly refused
        batch, (refused, size)."""
        if not request_ids:
            return
        reason = outcome.removeprefix(REJECTED) if outcome.startswith(REJECTED) else dead_letters.PARTIAL_REASON
        refused, size = batch or (1, 1)
        if self.shared is not None:
            self._add_pg(sink, hour, request_ids, outcome, reason, detail, refused, size)
            return
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc).isoformat()
        tail = f"{now}\t{_field(reason)}\t{_field(detail)}\t{refused}\t{size}\t.\n"
        with open(self._journal(sink, hour), "a", encoding="utf-8") as f:
            f.write("".join(f"{rid}\t{outcome}\t{tail}" for rid in request_ids))
            f.flush()
            os.fsync(f.fileno())

    def _add_pg(
        self, sink: str, hour: datetime, ids: list[str], outcome: str, reason: str, detail: str, refused: int, size: int
    ) -> None:
        """`add` in PostgreSQL: the batch's journal lines in one COPY, committed. Fields as a journal
        file gives them back (one line each, an empty one read as NULL)."""
        n = len(ids)
        fields = {
            "project": self.storage.project,
            "sink": sink,
            "hour": hour.isoformat(),
            "outcome": outcome,
            "delivered_at": datetime.now(timezone.utc).isoformat(),
            "reason": _field(reason) or None,
            "detail": _field(detail) or None,
            "batch_refused": refused,
            "batch_size": size,
        }
        lines = pa.table({"request_id": pa.array(ids, pa.string())} | {k: pa.repeat(v, n) for k, v in fields.items()})
        with self._pg() as con:
            PostgresState.copy_in(con, "delivery_journal", lines)

    def _pg(self):
        """A PostgreSQL transaction on the ledger's tables (created on first use), in UTC."""
        return dead_letters.pg_transaction(self.shared, *PG_CREATE)

    def _pg_lock(self, con, sink: str, hour: datetime) -> None:
        """Merges and forgets of one (sink, hour) take turns, across machines, until the commit."""
        PostgresState.xact_lock(con, f"ledger:{self.storage.project}:{sink}:{hour:%Y-%m-%dT%H}")

    def flush(self, sink: str, hour: datetime) -> None:
        """Merge the (sink, hour) journal into the table in one transaction, then drop it. A key
        keeps its first outcome, unless that was a refusal (`REFUSED`): a later outcome replaces it
        (a replay delivered it, or the row was given a time). The dead letters follow in the same
        transaction, and their lake copy after it."""
        if self.shared is not None:
            letters = self._merge_pg(sink, hour)
            if letters is not None:
                self.storage.lake.publish_part(dead_letters.TABLE, hour, sink, letters)
            return
        path = self._journal(sink, hour)
        if not path.exists():
            return
        lake = self.storage.lake
        tmp = lake.temporary_part(dead_letters.TABLE, hour, sink)
        try:
            with self.state.writer() as con:
                changed = self._merge(con, path, sink, hour, tmp)
            if changed:
                lake.publish_part_file(tmp, dead_letters.TABLE, hour, sink)
        finally:
            tmp.unlink(missing_ok=True)
        path.unlink()

    def _merge(self, con, path: Path, sink: str, hour: datetime, letters: Path) -> bool:
        """`flush` in DuckDB, up to the lake copy (written to `letters` when the dead letters changed;
        returns whether they did). An hour may hold a million keys, a refused one as many lines with
        the sink's words (up to 500 characters), and the writer has `memory_limit` (96 MB): every
        statement is one DuckDB can spill to disk (a hash join or aggregate over narrow columns, a
        sort; never an ordered aggregate such as DISTINCT ON ... ORDER BY, nor NOT IN), and the long
        text stays in `journal_lines`, read once by the dead letters' insert."""
        con.execute(CREATE)
        con.execute("SET preserve_insertion_order = false")  # lets the statements below spill
        key = [sink, hour]
        # The journal's temporary tables are this connection's scratch, made before the transaction,
        # which then holds only the tables' changes. DuckDB reads the journal itself: no Python
        # object per id, in 4 MB buffers (not 32 MB each). A line torn by a kill lacks its final "."
        # (or does not parse, or has no key) and is skipped.
        con.execute(
            'CREATE OR REPLACE TEMP TABLE journal_lines AS SELECT * EXCLUDE ("end") FROM read_csv(?, '
            "delim = '\t', header = false, quote = '', escape = '', null_padding = true, "
            f"columns = {JOURNAL_COLUMNS}, ignore_errors = true, auto_detect = false, buffer_size = {4 << 20}) "
            "WHERE \"end\" = '.' AND delivered_at IS NOT NULL AND request_id IS NOT NULL",
            [str(path)],
        )
        # each key's last line (lines of one time are one add()'s, alike but for the key), by rowid
        con.execute(
            "CREATE OR REPLACE TEMP TABLE journal AS SELECT l.request_id, l.outcome, l.delivered_at, "
            "l.rowid AS line FROM journal_lines l SEMI JOIN (SELECT arg_max(rowid, delivered_at) AS line "
            "FROM journal_lines GROUP BY request_id) last ON l.rowid = last.line"
        )
        with in_transaction(con):
            con.execute(
                "DELETE FROM delivery_ledger j WHERE sink = ? AND hour = ? AND "
                f"{REFUSED} AND request_id IN (SELECT request_id FROM journal)",
                key,
            )
            con.execute(
                "INSERT INTO delivery_ledger SELECT ?, ?, j.request_id, j.outcome, j.delivered_at FROM journal j "
                "WHERE NOT EXISTS (SELECT 1 FROM delivery_ledger l WHERE l.sink = ? AND l.hour = ? "
                "AND l.request_id = j.request_id)",
                key + key,
            )
            # a key the ledger already had accepted keeps that outcome: drop its line before the
            # dead letters read the journal
            con.execute(
                "DELETE FROM journal j USING delivery_ledger l WHERE l.sink = ? AND l.hour = ? "
                "AND l.request_id = j.request_id AND l.outcome IS DISTINCT FROM j.outcome",
                key,
            )
            changed = dead_letters.merge(con, sink, hour, refused=REFUSED, lines="journal_lines")
            if changed:  # before the commit: a copy that cannot be written keeps the journal for a retry
                letters.parent.mkdir(parents=True, exist_ok=True)
                dead_letters.write_rows(con, sink, hour, letters, scratch=self.journal_dir)
        con.execute("DROP TABLE journal")
        con.execute("DROP TABLE journal_lines")
        return bool(changed)

    def _merge_pg(self, sink: str, hour: datetime) -> pa.Table | None:
        """`flush` in PostgreSQL, up to the lake copy: the (sink, hour) journal rows leave the
        journal table (the DELETE hands them over, last line of each key first) and are merged as
        the DuckDB journal is, in one transaction. Returns the dead letters when they changed."""
        key = {"project": self.storage.project, "sink": sink, "hour": hour}
        this_hour = "project = %(project)s AND sink = %(sink)s AND hour = %(hour)s"
        with self._pg() as con:
            if con.execute(f"SELECT FROM delivery_journal WHERE {this_hour} LIMIT 1", key).fetchone() is None:
                return None
            self._pg_lock(con, sink, hour)
            con.execute(
                "CREATE TEMP TABLE journal (request_id TEXT, outcome TEXT, delivered_at TIMESTAMPTZ, reason TEXT, "
                "detail TEXT, batch_refused INTEGER, batch_size INTEGER) ON COMMIT DROP"
            )
            con.execute(
                f"WITH taken AS (DELETE FROM delivery_journal WHERE {this_hour} RETURNING *) "
                "INSERT INTO journal SELECT DISTINCT ON (request_id) request_id, outcome, delivered_at, reason, "
                "detail, batch_refused, batch_size FROM taken ORDER BY request_id, delivered_at DESC, seq DESC",
                key,
            )
            con.execute("ANALYZE journal")  # up to an hour's ids: joins planned for their number
            ledger_row = (
                "l.project = %(project)s AND l.sink = %(sink)s AND l.hour = %(hour)s AND l.request_id = j.request_id"
            )
            con.execute(f"DELETE FROM delivery_ledger l USING journal j WHERE {ledger_row} AND {refused_sql('l')}", key)
            con.execute(
                "INSERT INTO delivery_ledger (project, sink, hour, request_id, outcome, delivered_at) "
                "SELECT %(project)s, %(sink)s, %(hour)s, j.request_id, j.outcome, j.delivered_at FROM journal j "
                "ON CONFLICT (project, sink, hour, request_id) DO NOTHING",
                key,
            )
            # a key the ledger already had accepted keeps that outcome: drop its line before the
            # dead letters read the journal
            con.execute(
                f"DELETE FROM journal j USING delivery_ledger l WHERE {ledger_row} AND l.outcome IS DISTINCT FROM j.outcome",
                key,
            )
            changed = dead_letters.merge(con, sink, hour, refused=REFUSED, project=self.storage.project)
            letters = dead_letters.rows(con, sink, hour, project=self.storage.project) if changed else None
        return letters  # (the temporary journal went with the commit: ON COMMIT DROP)

    def record(self, sink: str, hour: datetime, request_ids: list[str], outcome: str = ACCEPTED) -> None:
        """Journal and merge at once (for callers that answer for a whole hour in one go)."""
        self.add(sink, hour, request_ids, outcome)
        self.flush(sink, hour)

    def forget(self, sink: str, hour: datetime) -> None:
        """For a forced full resend."""
        if self.shared is not None:
            with self._pg() as con:
                self._pg_lock(con, sink, hour)
                for table in ("delivery_journal", "delivery_ledger", dead_letters.TABLE):
                    con.execute(
                        f"DELETE FROM {table} WHERE project = %s AND sink = %s AND hour = %s",
                        [self.storage.project, sink, hour],
                    )
                letters = dead_letters.rows(con, sink, hour, project=self.storage.project)
            if self.storage.lake.has_part(dead_letters.TABLE, hour, sink):
                self.storage.lake.publish_part(dead_letters.TABLE, hour, sink, letters)
            return
        self._journal(sink, hour).unlink(missing_ok=True)
        if not self.state.path.exists():
            return
        with self.state.writer() as con:
            con.execute(CREATE)
            con.execute(dead_letters.CREATE)
            with in_transaction(con):
                con.execute("DELETE FROM delivery_ledger WHERE sink = ? AND hour = ?", [sink, hour])
                con.execute(f"DELETE FROM {dead_letters.TABLE} WHERE sink = ? AND hour = ?", [sink, hour])
            letters = dead_letters.rows(con, sink, hour)
        if self.storage.lake.has_part(dead_letters.TABLE, hour, sink):
            self.storage.lake.publish_part(dead_letters.TABLE, hour, sink, letters)
