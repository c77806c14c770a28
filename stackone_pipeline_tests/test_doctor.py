"""`stackone-pipeline check` (doctor.py): corrupt or partial lake files, lake/warehouse mismatches
and failing views are found, named by hour, and the commands it prints repair them."""

from __future__ import annotations

import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from stackone_pipeline.backfill import parse_time, run_backfill
from stackone_pipeline.cli import main
from stackone_pipeline.doctor import DoctorError, backfill_commands, run_check
from stackone_pipeline.ingest import ingest_hours
from stackone_pipeline.resources import build_resources
from stackone_pipeline.settings import Settings
from stackone_pipeline.storage import Storage
from stackone_pipeline.warehouse.schema import CREATE_REQUEST_LOGS, REQUEST_LOG_DETAILS, REQUEST_LOGS

from .conftest import closed_hour, pipeline_resources

H = timedelta(hours=1)


def query(storage: Storage, sql: str):
    con = duckdb.connect(str(storage.query_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def truncate(path: Path) -> None:
    """Cut a file to half its size, as a full disk or a killed copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def backfill(sim, data_dir: Path, start: datetime, end: datetime, instance) -> None:
    """What `stackone-pipeline backfill` runs (every hourly asset), against the simulator."""
    settings = Settings.from_env({})
    resources = {**build_resources(settings), **pipeline_resources(sim.url, data_dir)}
    result = run_backfill(start, end, resources=resources, instance=instance, settings=settings, log_level="WARNING")
    assert result.success


def command_lines(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip().startswith(("stackone-pipeline ", "rm "))]


def test_a_truncated_lake_file_is_named_by_hour_and_the_printed_commands_repair_it(sim, tmp_path):
    data = tmp_path / "data"
    storage = Storage(data, lock_timeout_s=30)
    first = closed_hour(4)
    hours = [first, first + H, first + 2 * H]
    with dg.DagsterInstance.ephemeral() as instance:
        backfill(sim, data, first, first + 3 * H, instance)
        total = query(storage, "SELECT count(*) FROM request_logs")[0][0]
        assert total == 900
        (details,) = query(storage, f"SELECT count(*) FROM {REQUEST_LOG_DETAILS}")[0]
        assert details > 0

        # A healthy directory, with a temporary file left by a killed run: nothing to report.
        bad = hours[1]
        lake_file = storage.lake.hour_file(REQUEST_LOGS, bad)
        (lake_file.parent / ".tmp-999999-deadbeef-part-0.parquet.partial").write_bytes(b"PAR1 half a file")
        ok = run_check(data)
        assert ok.ok, ok.lines()
        assert ok.hours_checked == 3 and ok.hours_to_rerun == [] and ok.views_checked >= 13
        assert ok.lines()[-1].startswith("OK")

        # The symptom: one truncated file and every query over request_logs fails.
        truncate(lake_file)
        with pytest.raises(duckdb.Error, match="part-0.parquet"):
            query(storage, "SELECT count(*) FROM request_logs")
        result = run_check(data)
        assert not result.ok
        assert result.hours_to_rerun == [bad]
        text = "\n".join(result.lines())
        assert f"PROBLEM {bad:%Y-%m-%d %H}:00 UTC request_logs: " in text
        assert str(lake_file.relative_to(data)) in text
        assert "view request_logs fails" in text
        expected = f"stackone-pipeline backfill --start {bad:%Y-%m-%dT%H}:00Z --end {bad + H:%Y-%m-%dT%H}:00Z"
        assert result.lines()[-1].strip() == expected
        assert command_lines(result.lines()) == [expected]

        # A truncated details file too: the same re-run repairs it (the details are fetched again).
        details_file = storage.lake.hour_file(REQUEST_LOG_DETAILS, bad)
        truncate(details_file)
        result = run_check(data)
        assert result.hours_to_rerun == [bad]
        assert command_lines(result.lines()) == [expected]
        assert f"{REQUEST_LOG_DETAILS}: " in "\n".join(result.lines())

        # Do exactly what it says.
        for line in command_lines(result.lines()):
            args = shlex.split(line)
            if args[0] == "rm":
                Path(args[1]).unlink()
            else:
                assert args[:2] == ["stackone-pipeline", "backfill"]
                backfill(sim, data, parse_time(args[args.index("--start") + 1]), parse_time(args[-1]), instance)

    repaired = run_check(data)
    assert repaired.ok, repaired.lines()
    assert query(storage, "SELECT count(*) FROM request_logs") == [(total,)]
    assert query(storage, f"SELECT count(*) FROM {REQUEST_LOG_DETAILS}") == [(details,)]


def test_warehouse_rows_missing_or_a_lake_file_missing_is_a_mismatch(make_client, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    storage = Storage(data, lock_timeout_s=30)
    h0 = closed_hour(5)
    hours = [h0, h0 + H, h0 + 2 * H]
    ingest_hours(make_client(), storage, hours)
    assert run_check(data).ok

    with storage.warehouse.transaction() as con:  # the warehouse lost an hour
        con.execute("DELETE FROM request_logs WHERE hour = ?", [h0])
    storage.lake.hour_file(REQUEST_LOGS, h0 + H).unlink()  # the lake lost another
    result = run_check(data)
    assert result.hours_to_rerun == [h0, h0 + H]
    text = "\n".join(result.lines())
    assert f"PROBLEM {h0:%Y-%m-%d %H}:00 UTC request_logs: the lake file has 300 rows, warehouse.duckdb 0" in text
    assert f"PROBLEM {h0 + H:%Y-%m-%d %H}:00 UTC request_logs: 300 rows in warehouse.duckdb, but no lake file" in text
    # consecutive hours: one range
    assert command_lines(result.lines()) == [
        f"stackone-pipeline backfill --start {h0:%Y-%m-%dT%H}:00Z --end {h0 + 2 * H:%Y-%m-%dT%H}:00Z"
    ]

    # A run of h0 in progress: its mismatch is not judged, the other hour still is.
    with storage.hour_lock(REQUEST_LOGS, h0):
        busy = run_check(data)
    assert busy.hours_to_rerun == [h0 + H]
    assert any("in progress" in n and f"{h0:%Y-%m-%d %H}:00 UTC" in n for n in busy.notes)

    # The CLI: exit 1 with the problems, 0 once the hours are re-run.
    monkeypatch.setenv("STACKONE_DATA_DIR", str(data))
    assert main(["check"]) == 1
    assert "stackone-pipeline backfill --start" in capsys.readouterr().out
    ingest_hours(make_client(), storage, [h0, h0 + H])
    assert main(["check"]) == 0
    assert "OK" in capsys.readouterr().out


def test_zero_byte_files_and_hours_past_retention(tmp_path):
    data = tmp_path / "data"
    storage = Storage(data)
    with storage.warehouse.writer() as con:
        con.execute(CREATE_REQUEST_LOGS)
    recent, old = closed_hour(3), datetime(2020, 1, 1, 5, tzinfo=timezone.utc)
    for hour, content in ((recent, b""), (old, b"not parquet at all")):
        path = storage.lake.hour_file(REQUEST_LOGS, hour)
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    result = run_check(data)
    text = "\n".join(result.lines())
    assert f"PROBLEM {recent:%Y-%m-%d %H}:00 UTC request_logs: " in text and "is empty (0 bytes)" in text
    assert "PROBLEM 2020-01-01 05:00 UTC request_logs: " in text and "90-day log retention" in text
    assert result.hours_to_rerun == [recent]  # the API no longer has 2020: no backfill offered for it
    assert command_lines(result.lines()) == backfill_commands([recent])


def test_consecutive_hours_merge_into_ranges():
    t = datetime(2026, 12, 1, 10, tzinfo=timezone.utc)
    assert backfill_commands([t + 5 * H, t, t + H, t + 2 * H, t + H]) == [
        "stackone-pipeline backfill --start 2026-12-01T10:00Z --end 2026-12-01T13:00Z",
        "stackone-pipeline backfill --start 2026-12-01T15:00Z --end 2026-12-01T16:00Z",
    ]
    assert backfill_commands([datetime(2026, 12, 31, 23, tzinfo=timezone.utc)]) == [
        "stackone-pipeline backfill --start 2026-12-31T23:00Z --end 2027-01-01T00:00Z"
    ]


def test_a_directory_without_pipeline_data_is_an_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(DoctorError, match="neither warehouse.duckdb nor lake/"):
        run_check(tmp_path / "nowhere")
    monkeypatch.setenv("STACKONE_DATA_DIR", str(tmp_path))
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no pipeline data in") and err.count("\n") == 1
