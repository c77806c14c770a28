"""API -> lake -> warehouse for whole hours, against the simulator over HTTP."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pyarrow.parquet as pq

from stackone_pipeline.ingest import RedactionSettings, ingest_hour, ingest_hours
from stackone_pipeline.simulator import PII_MARKER, SECRET_MARKER
from stackone_pipeline.stackone.redaction import Redactor
from stackone_pipeline.storage import Storage

from .conftest import closed_hour

H = timedelta(hours=1)


def table(storage, hour=None) -> list[tuple]:
    with storage.warehouse.reader() as con:
        where = "WHERE hour = ?" if hour else ""
        return con.execute(f"SELECT * FROM request_logs {where} ORDER BY request_id", [hour] if hour else []).fetchall()


def expected_ids(sim, hour) -> list[str]:
    return sorted(r["request_id"] for r in sim.simulator.expected_records(hour, hour + H))


def test_an_hour_lands_whole_once_despite_boundaries_and_repeats(sim, make_client, storage):
    sim.config.faults.boundary_records = True
    sim.config.faults.repeat_across_pages = True
    hour = closed_hour()
    res = ingest_hour(make_client(page_size=50), storage, hour)
    ids = [r[1] for r in table(storage, hour)]
    assert ids == expected_ids(sim, hour)  # exact: nothing lost, nothing duplicated
    assert res.rows == len(ids) and res.duplicates_dropped >= res.pages - 1 > 0
    assert res.clipped_outside_hour == 1  # the next hour's 00:00:00.000 record (end_date is inclusive)
    assert pq.read_table(storage.lake.hour_file("request_logs", hour)).num_rows == len(ids)
    with storage.warehouse.reader() as con:  # the boundary record of the next hour was not stored anywhere
        assert con.execute("SELECT count(*) FROM request_logs WHERE event_datetime >= ?", [hour + H]).fetchone() == (0,)


def test_rerunning_an_hour_gives_identical_rows(sim, make_client, storage):
    hour = closed_hour(3)
    ingest_hours(make_client(), storage, [hour, hour + H])
    before, files = table(storage), sorted((storage.data_dir / "lake").rglob("*"))
    ingest_hour(make_client(), storage, hour)
    assert table(storage) == before and len(before) == 600
    assert sorted((storage.data_dir / "lake").rglob("*")) == files
    assert len(list((storage.data_dir / "lake").rglob("*.parquet"))) == 2


def test_late_arrivals_are_picked_up_by_a_rerun(sim, make_client, storage):
    sim.config.faults.late_fraction = 0.2
    hour = closed_hour()
    first = ingest_hour(make_client(), storage, hour)
    second = ingest_hour(make_client(), storage, hour)
    assert first.rows < second.rows == len(expected_ids(sim, hour))
    assert [r[1] for r in table(storage, hour)] == expected_ids(sim, hour)


def test_camel_case_and_offsets_load_exactly_like_snake_case_utc(sim, make_client, tmp_path):
    hour = closed_hour()
    snake = Storage(tmp_path / "snake")
    ingest_hour(make_client(), snake, hour)
    sim.config.faults.camel_case = True
    sim.config.faults.non_utc_offsets = True
    camel = Storage(tmp_path / "camel")
    ingest_hour(make_client(), camel, hour)
    a, b = table(snake), table(camel)
    assert len(a) > 100 and a == b


def _all_text(data_dir) -> str:
    """Every byte on disk, plus the decompressed contents of every Parquet file and table."""
    chunks = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            chunks.append(path.read_bytes().decode("latin-1"))
        if path.suffix == ".parquet":
            chunks.append(str(pq.read_table(path).to_pylist()))
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    chunks.append(str(con.execute("SELECT * FROM request_logs").fetchall()))
    con.close()
    return "\n".join(chunks)


def test_no_secret_or_body_reaches_the_disk(sim, make_client, storage):
    hour = closed_hour()
    served = sim.simulator.expected_records(hour, hour + H)
    assert SECRET_MARKER in str(served) and PII_MARKER in str(served)  # the simulator does send them
    res = ingest_hour(make_client(), storage, hour)
    text = _all_text(storage.data_dir)
    assert SECRET_MARKER not in text
    assert PII_MARKER not in text
    assert "[REDACTED]" in text and res.redactions >= res.rows
    with storage.warehouse.reader() as con:  # the useful, harmless parts survive
        ua = con.execute(
            "SELECT count(*) FROM request_logs WHERE request->'headers'->>'user-agent' IS NOT NULL"
        ).fetchone()[0]
    assert ua > 0


def test_bodies_are_kept_only_when_asked_and_extra_names_are_redacted(sim, make_client, storage):
    hour = closed_hour()
    ingest_hour(make_client(), storage, hour, RedactionSettings(keep_bodies=True, extra_names=("user-agent",)))
    text = _all_text(storage.data_dir)
    assert PII_MARKER in text and SECRET_MARKER not in text
    with storage.warehouse.reader() as con:
        agents = con.execute("SELECT DISTINCT request->'headers'->>'user-agent' FROM request_logs").fetchall()
    assert agents == [("[REDACTED]",)]


def test_an_old_hour_comes_back_empty_from_the_api(sim, make_client, storage):
    hour = closed_hour(24 * 91)
    assert ingest_hour(make_client(), storage, hour).rows == 0


def test_header_names_are_stored_lower_cased_so_one_name_is_one_header():
    redactor = Redactor()
    got = redactor.headers(
        {"Content-Type": "application/json", "X-API-Key": "k", "Accept": "a", "accept": "b", "x-request-id": "req_1"}
    )
    assert got == {
        "content-type": "application/json",
        "x-api-key": "[REDACTED]",
        "accept": "a, b",
        "x-request-id": "req_1",
    }
    assert redactor.count == 1
