"""The event logs our dagster.yaml files name (dagster_event_log.py). SQLite: a run's events reuse one
connection per database file, the UI still sees a running run's events as they come, the files
it keeps open are bounded, and no write-ahead log is left behind when the process ends.
PostgreSQL (docs/deploy/dagster.yaml, a real server): one kept connection instead of one a
statement, a step's materializations of many hours stored in one batch, and a connection the
server closed replaced rather than failing the next event."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from stackone_pipeline.dagster_event_log import KEPT_RUN_FILES, KeptSqliteEventLogStorage
from stackone_pipeline.instance import prepare_home

HOURLY = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00")


@dg.asset(partitions_def=HOURLY, backfill_policy=dg.BackfillPolicy.single_run())
def hours(context) -> None:
    for key in context.partition_keys:
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=key, metadata={"n": 1}))


@pytest.fixture
def instance(tmp_path):
    prepare_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as inst:
        assert isinstance(inst.event_log_storage, KeptSqliteEventLogStorage)
        yield inst


def range_tags(first: str, last: str) -> dict:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def test_a_runs_events_reuse_one_connection_per_file(instance, tmp_path):
    events_dir = str(tmp_path / "home" / "history" / "runs") + "/"
    opened = []

    def connected(dbapi_connection, _record) -> None:
        (_, _, path), *_ = dbapi_connection.execute("PRAGMA database_list").fetchall()
        # The event log's files (not the run storage's runs.db), less the empty run file made
        # once a home, of which new runs' files are copies.
        if path.startswith(events_dir) and not Path(path).name.startswith(".new-run-"):
            opened.append(Path(path).name)

    sa.event.listen(sa.Engine, "connect", connected)
    try:
        first = dg.materialize([hours], instance=instance, tags=range_tags("2026-01-01-00:00", "2026-01-01-05:00"))
        second = dg.materialize([hours], instance=instance, tags=range_tags("2026-01-01-00:00", "2026-01-01-05:00"))
    finally:
        sa.event.remove(sa.Engine, "connect", connected)
    assert len(instance.all_logs(second.run_id)) > 25  # six hours: planned, observed and materialised each
    # Dagster's own opens a connection for every event it stores (~100 for these two runs). Kept:
    # one or two for each file (a second while the first is in use: a new file's schema checks).
    counts = {name: opened.count(name) for name in opened}
    assert set(counts) <= {"index.db", f"{first.run_id}.db", f"{second.run_id}.db"}, counts
    assert all(n <= 2 for n in counts.values()), counts
    assert instance.get_materialized_partitions(hours.key) == {f"2026-01-01-0{h}:00" for h in range(6)}


def test_the_files_it_keeps_open_are_bounded(instance):
    for _ in range(KEPT_RUN_FILES + 3):
        dg.materialize([hours], instance=instance, partition_key="2026-01-01-00:00")
    storage = instance.event_log_storage
    assert len(storage._engines) == KEPT_RUN_FILES + 1  # the runs' most recent, and the index
    assert len(instance.get_runs()) == KEPT_RUN_FILES + 3
    for run in instance.get_runs():  # an evicted run's events are read through a new engine
        assert any(e.dagster_event and e.dagster_event.is_step_success for e in instance.all_logs(run.run_id))


def test_the_ui_sees_a_running_runs_events_as_they_come(tmp_path):
    """The webserver follows a run by watching its .db file for changes; with the connection
    kept open, new events would stay in the -wal file, unseen, until the run ended."""
    home = tmp_path / "home"
    prepare_home(home)
    watching, release = threading.Event(), threading.Event()

    @dg.asset
    def slow(context) -> None:
        context.log.info("first")
        assert watching.wait(60)
        context.log.info("second, while the UI watches")
        assert release.wait(60)

    marker = uuid.uuid4().hex
    with dg.DagsterInstance.from_config(str(home)) as run_side, dg.DagsterInstance.from_config(str(home)) as ui_side:
        thread = threading.Thread(
            target=lambda: dg.materialize([slow], instance=run_side, tags={"test/marker": marker})
        )
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                runs = ui_side.get_runs(dg.RunsFilter(tags={"test/marker": marker}))
                if runs and any(e.user_message == "first" for e in ui_side.all_logs(runs[0].run_id)):
                    break
                assert time.monotonic() < deadline, "the run did not start"
                time.sleep(0.05)
            seen = []
            ui_side.event_log_storage.watch(runs[0].run_id, None, lambda entry, cursor: seen.append(entry.user_message))
            watching.set()
            deadline = time.monotonic() + 10
            while "second, while the UI watches" not in seen:
                assert time.monotonic() < deadline, f"the watcher saw {seen}"
                time.sleep(0.05)
            assert thread.is_alive()  # seen while the run still runs
        finally:
            watching.set()
            release.set()
            thread.join(60)


def test_no_write_ahead_log_is_left_when_the_process_ends(tmp_path):
    home = tmp_path / "home"
    program = textwrap.dedent(
        f"""
        import dagster as dg
        from stackone_pipeline.footprint import exit_now, imports_frozen
        from stackone_pipeline.instance import prepare_home
        from pathlib import Path
        with imports_frozen():
            pass
        prepare_home(Path({str(home)!r}))
        instance = dg.DagsterInstance.from_config({str(home)!r})

        @dg.asset
        def one() -> None:
            pass

        assert dg.materialize([one], instance=instance).success
        exit_now(0)  # as the command ends: no interpreter teardown
        """
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    runs = Path(home, "history", "runs")
    assert list(runs.glob("*.db")), "no event log was written"
    assert not list(runs.glob("*.db-wal")), sorted(p.name for p in runs.iterdir())


def test_a_new_run_file_is_what_dagster_makes(tmp_path):
    """New run files are copies of one Dagster made: the same tables, indexes and schema revision
    as Dagster's own SqliteEventLogStorage gives a new run."""
    from dagster._core.storage.event_log import SqliteEventLogStorage

    def schema(storage, run_id: str) -> tuple[set, list]:
        with storage.run_connection(run_id) as conn:
            objects = set(conn.execute(sa.text("SELECT type, name, sql FROM sqlite_master")).fetchall())
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).fetchall()
        return objects, revision

    ours = KeptSqliteEventLogStorage(str(tmp_path / "ours"))
    dagsters = SqliteEventLogStorage(str(tmp_path / "dagsters"))
    try:
        first, second = schema(ours, "run-a"), schema(ours, "run-b")  # both copies of the template
        assert first == second == schema(dagsters, "run-a")
        assert first[1] and first[0]  # stamped, with tables
        assert (tmp_path / "ours" / "run-b.db").exists()
        assert sorted(ours.get_all_run_ids()) == ["run-a", "run-b"]  # the template is no run
    finally:
        ours.dispose()
        dagsters.dispose()


def test_a_batch_of_materializations_is_one_transaction_per_file_and_every_hour_is_indexed(instance):
    import stackone_pipeline.definitions  # noqa: F401  (sets DAGSTER_EVENT_BATCH_SIZE, as in every run)

    commits = []

    def committed(_conn) -> None:
        commits.append(1)

    sa.event.listen(sa.Engine, "commit", committed)
    try:
        result = dg.materialize([made], instance=instance, tags=range_tags("2026-01-02-00:00", "2026-01-03-23:00"))
    finally:
        sa.event.remove(sa.Engine, "commit", committed)
    assert result.success
    events = instance.all_logs(result.run_id)
    mats = [e for e in events if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"]
    assert len(mats) == 48 and len({e.dagster_event.partition for e in mats}) == 48
    assert len(instance.get_materialized_partitions(dg.AssetKey("made"))) == 48  # the index has each hour
    record = instance.get_latest_materialization_event(dg.AssetKey("made"))
    assert record is not None and record.dagster_event.partition == "2026-01-03-23:00"
    # stored one at a time, each event is a commit and each materialization one more (its mirror in
    # the index), besides the run storage's: 226 here, against 132 with the batch
    assert len(commits) < len(events) + len(mats), (len(commits), len(events))


# -- PostgreSQL: the event log docs/deploy/dagster.yaml names ------------------------------------------
DEPLOY_YAML = Path(__file__).resolve().parent.parent / "docs" / "deploy" / "dagster.yaml"


@dg.asset(partitions_def=HOURLY, backfill_policy=dg.BackfillPolicy.single_run())
def made(context) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"hours": len(context.partition_keys)})


@pytest.fixture
def pg_instance(postgres_url, tmp_path, monkeypatch):
    """An instance from the deployment's dagster.yaml, on a fresh database."""
    from stackone_pipeline.dagster_event_log import KeptPostgresEventLogStorage

    monkeypatch.setenv("DAGSTER_POSTGRES_URL", postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DEPLOY_YAML.read_text())
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert isinstance(inst.event_log_storage, KeptPostgresEventLogStorage)
        yield inst


def test_the_postgres_event_log_keeps_its_connection_and_stores_every_hour(pg_instance, monkeypatch):
    """Dagster's own opens a connection per statement: hundreds for this run. Ours opens it once
    (and one more per thread that stores while another does), and loses no event."""
    import stackone_pipeline.definitions  # noqa: F401  (sets DAGSTER_EVENT_BATCH_SIZE, as in every run)

    connects, inserts = [], []

    def connected(*_) -> None:
        connects.append(1)

    def executed(_conn, _cursor, statement, *_) -> None:
        if statement.lstrip().startswith("INSERT INTO event_logs"):
            inserts.append(statement)

    engine = pg_instance.event_log_storage._engine
    sa.event.listen(engine, "connect", connected)
    sa.event.listen(engine, "before_cursor_execute", executed)
    try:
        result = dg.materialize([made], instance=pg_instance, tags=range_tags("2026-01-02-00:00", "2026-01-03-23:00"))
    finally:
        sa.event.remove(engine, "connect", connected)
        sa.event.remove(engine, "before_cursor_execute", executed)
    events = pg_instance.all_logs(result.run_id)
    assert result.success
    assert len(events) > 48
    assert len(inserts) <= len(events) - 47  # the 48 materializations in one INSERT
    assert len(connects) <= 5, len(connects)  # Dagster's own: 110 here, one a statement (3 when measured)
    mats = pg_instance.get_materialized_partitions(dg.AssetKey("made"))
    assert len(mats) == 48  # every hour stored, in one batch
    assert (
        sum(1 for e in events if e.dagster_event and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION") == 48
    )


def test_the_postgres_event_log_survives_a_connection_the_server_closed(pg_instance, postgres_url):
    """A connection closed under it (a PostgreSQL restart, a proxy's idle timeout) is replaced at
    the next event, not used and failed."""
    import psycopg

    dg.materialize([made], instance=pg_instance, tags=range_tags("2026-01-05-00:00", "2026-01-05-01:00"))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert killed >= 1  # the kept connection was there, and is gone
    again = dg.materialize([made], instance=pg_instance, tags=range_tags("2026-01-06-00:00", "2026-01-06-01:00"))
    assert again.success
    assert len(pg_instance.get_materialized_partitions(dg.AssetKey("made"))) == 4
