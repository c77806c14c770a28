"""The report (text + self-contained HTML), the demo's summary lines, and the query cookbook."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from stackone_pipeline.reporting import ReportError, run_report, summary_lines
from stackone_pipeline.settings import Thresholds
from stackone_pipeline.storage import Storage

from .analytics_expected import HOUR, expected_tables, simulated_dataset

COOKBOOK = Path(__file__).resolve().parent.parent / "docs" / "query-cookbook.md"


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return simulated_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def report(sim_data, tmp_path_factory):
    html_path = tmp_path_factory.mktemp("report") / "out" / "report.html"
    start, end = sim_data.hours[0], sim_data.hours[-1] + HOUR
    text = run_report(sim_data.data_dir, start, end, html_path)
    return text, html_path.read_text()


def test_the_text_report_is_the_key_metrics_table_for_the_window(sim_data, report):
    text, _ = report
    h13, h14, h15 = sim_data.hours
    table, _, after = text.partition("\n\n")
    lines = table.splitlines()
    assert after == "Dead letters: none (every record the sinks were sent was accepted)."
    assert (
        lines[0]
        == f"Key metrics for 3 whole hour(s): {h13:%Y-%m-%d %H:%M} .. {h15 + HOUR:%Y-%m-%d %H:%M} UTC (end exclusive)"
    )
    observed, status, metric = {}, {}, None
    for line in lines[3:]:  # title, header, separator, then rows whose 4th cell may wrap onto more lines
        cells = [c.strip() for c in line.strip("|").split("|")]
        metric = cells[0] or metric
        observed[metric] = (observed.get(metric, "") + " " + cells[3]).strip()
        status[metric] = status.get(metric) or cells[4]
    assert list(observed) == ["Error Rate", "P95 Latency", "Provider Health", "Request Volume"]
    assert set(status.values()) == {"WARN"}
    expected = expected_tables(sim_data.rows, sim_data.all_hours, sim_data.thresholds)
    requests = sum(expected["request_volume_hourly"][(h,)]["requests"] for h in sim_data.hours)
    assert observed["Request Volume"].startswith(
        f"{requests:,} requests in 3 of 3 hours; anomalies: {h15:%Y-%m-%d %H:%M}"
    )
    assert "unhealthy: workday 1 h" in observed["Provider Health"]
    assert "providers above: successfactors 3 h" in observed["P95 Latency"]
    buckets_above = sum(
        1
        for k, v in expected["alert_evaluations"].items()
        if k[1] == "overall_error_rate_5m" and k[0] in sim_data.hours and not v["passed"]
    )
    assert f"{buckets_above} of 36 buckets above" in observed["Error Rate"]


def test_the_html_report_is_self_contained_with_three_kinds_of_chart(report):
    _, html = report
    lowered = html.lower()
    for forbidden in ("<script", "http://", "https://", "src=", "href=", "@import", "url(", "<link"):
        assert forbidden not in lowered, forbidden
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    labels = [ET.fromstring(s).get("aria-label") for s in svgs]  # each chart is well-formed XML
    assert labels == [
        "Error rate per provider (hourly)",
        "Error rate, all providers, per 5-minute bucket",
        "p95 latency per provider (hourly)",
        "Requests per hour",
    ]
    for svg in svgs:  # every drawn coordinate lies inside the chart's view box
        root = ET.fromstring(svg)
        width, height = (float(v) for v in root.get("viewBox").split()[2:])
        for el in root.iter():
            for name in ("x", "x1", "x2", "cx"):
                if el.get(name) is not None:
                    assert 0 <= float(el.get(name)) <= width
            for name in ("y", "y1", "y2", "cy"):
                if el.get(name) is not None:
                    assert 0 <= float(el.get(name)) <= height
    volume = ET.fromstring(svgs[3])
    anomalies = [c for c in volume.iter("circle") if c.findtext("title", "").startswith("anomaly")]
    assert len(anomalies) == 1  # the x5 spike at 15:00


def test_summary_lines_give_the_headline_figures(sim_data):
    lines = summary_lines(sim_data.data_dir, sim_data.hours[0], sim_data.hours[-1] + HOUR)
    assert lines[0].startswith("requests: ")
    joined = "\n".join(lines)
    assert "workday" in joined and "successfactors" in joined
    assert f"volume anomalies: {sim_data.hours[2]:%Y-%m-%d %H:%M}" in joined
    quiet = summary_lines(sim_data.data_dir, sim_data.day - 30 * 24 * HOUR, sim_data.day - 29 * 24 * HOUR)
    assert quiet == [
        f"no requests between {sim_data.day - 30 * 24 * HOUR:%Y-%m-%d %H:%M} and "
        f"{sim_data.day - 29 * 24 * HOUR:%Y-%m-%d %H:%M} UTC"
    ]


def test_the_report_follows_the_thresholds_it_is_given(sim_data):
    strict = Thresholds(p95_ms=1e9, provider_error_rate=1.0, error_rate_5m=1.0, volume_score=1e9)
    text = run_report(sim_data.data_dir, sim_data.hours[0], sim_data.hours[-1] + HOUR, None, thresholds=strict)
    assert "WARN" not in text.split("\n", 2)[2] and text.count("| OK ") == 4


def test_a_report_window_is_whole_utc_hours_and_needs_a_warehouse(sim_data, tmp_path):
    h14 = sim_data.hours[1]
    a = run_report(sim_data.data_dir, h14 + timedelta(minutes=10), h14 + timedelta(minutes=50), None)
    b = run_report(sim_data.data_dir, h14, h14 + HOUR, None)
    assert a == b
    with pytest.raises(ValueError):
        run_report(sim_data.data_dir, h14, h14, None)
    with pytest.raises(ReportError, match="no warehouse"):
        run_report(tmp_path / "nothing", h14, h14 + HOUR, None)
    with Storage(tmp_path / "bare").warehouse.writer() as con:
        con.execute("CREATE TABLE x (a INTEGER)")
    with pytest.raises(ReportError, match="materialise the analytics"):
        run_report(tmp_path / "bare", h14, h14 + HOUR, None)


def cookbook_blocks() -> list[tuple[str, str]]:
    """(heading, sql) of every ```sql block of docs/query-cookbook.md, in order."""
    out, heading = [], ""
    for m in re.finditer(r"^(#+ [^\n]*)$|^```sql\n(.*?)^```", COOKBOOK.read_text(), re.M | re.S):
        if m.group(1):
            heading = m.group(1).lstrip("# ").strip()
        else:
            out.append((heading, m.group(2)))
    return out


def test_every_cookbook_query_runs_on_query_duckdb(sim_data):
    blocks = cookbook_blocks()
    assert len(blocks) >= 15
    con = duckdb.connect(str(sim_data.data_dir / "query.duckdb"), read_only=True)
    results: dict[str, list] = {}
    try:
        for heading, sql in blocks:
            statements = [s for s in sql.split(";") if s.strip() and not s.strip().startswith("--")]
            for statement in statements:
                cur = con.execute(statement)
                if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                    results.setdefault(heading, []).append(cur.fetchall())
    finally:
        con.close()
    h13, h14, h15 = sim_data.hours
    expected = expected_tables(sim_data.rows, sim_data.all_hours, sim_data.thresholds)
    for heading, got in results.items():
        assert all(rows for rows in got), f"cookbook query under {heading!r} returned nothing"
    overall = {
        k[2].removeprefix("bucket "): v
        for k, v in expected["alert_evaluations"].items()
        if k[1] == "overall_error_rate_5m" and k[0] in sim_data.hours
    }
    five = results["2. Overall error rate per 5 minutes, and the buckets over the 5% alert"][0]
    assert len(five) == 36 == len(overall)
    assert [r[4] for r in five] == [not overall[f"{r[0]:%Y-%m-%dT%H:%M}Z"]["passed"] for r in five]
    p95 = results['3. P95 latency of the window (the "P95 Latency" stat)'][0][0]
    durations = [
        r["duration_ms"] for r in sim_data.rows if r["hour"] in sim_data.hours and r["duration_ms"] is not None
    ]
    assert p95[0] == sum(1 for r in sim_data.rows if r["hour"] in sim_data.hours)
    assert abs(p95[1] - float(np.quantile(durations, 0.95))) < 1e-6
    volume = results["6. Request volume per hour, its baseline and anomalies"][0]
    assert [(r[0], r[5]) for r in volume] == [(h13, False), (h14, False), (h15, True)]


def test_a_window_without_data_says_no_data_instead_of_ok(sim_data, tmp_path):
    before = sim_data.hours[0] - 30 * HOUR
    text = run_report(sim_data.data_dir, before, before + 3 * HOUR, tmp_path / "r.html")
    lines = text.splitlines()
    assert lines[1].startswith("NO DATA: nothing is ingested for these hours")
    assert (
        f"stackone-pipeline backfill --start {before:%Y-%m-%dT%H:%MZ} --end {before + 3 * HOUR:%Y-%m-%dT%H:%MZ}" in text
    )
    assert "| OK " not in text and text.count("| NO DATA |") == 4
    assert 'class="NO_DATA"' in (tmp_path / "r.html").read_text()


def test_a_window_partly_ingested_names_the_missing_hours(sim_data):
    h13, _, h15 = sim_data.hours
    text = run_report(sim_data.data_dir, h13 - HOUR, h15 + 2 * HOUR, None)
    lines = text.splitlines()
    assert lines[0].startswith(f"Key metrics for 5 whole hour(s): {h13 - HOUR:%Y-%m-%d %H:%M}")
    assert lines[1] == "2 of 5 hour(s) have no ingested data; ingest them with:"
    assert lines[2].endswith(f"--start {h13 - HOUR:%Y-%m-%dT%H:%MZ} --end {h13:%Y-%m-%dT%H:%MZ}")
    assert lines[3].endswith(f"--start {h15 + HOUR:%Y-%m-%dT%H:%MZ} --end {h15 + 2 * HOUR:%Y-%m-%dT%H:%MZ}")
    assert "| NO DATA |" not in text


def test_the_query_command_runs_sql_on_query_duckdb(sim_data):
    import os
    import subprocess
    import sys

    env = {**os.environ, "STACKONE_DATA_DIR": str(sim_data.data_dir)}

    def query(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "stackone_pipeline.cli", "query", sql], env=env, capture_output=True, text=True
        )

    with Storage(sim_data.data_dir).warehouse.reader() as con:
        n = con.execute("SELECT count(*) FROM request_logs").fetchone()[0]
    out = query("SELECT count(*) AS n FROM request_logs")
    assert out.returncode == 0 and str(n) in out.stdout
    bad = query("SELECT nope FROM request_logs")
    assert bad.returncode == 1 and bad.stderr.startswith("error: Binder Error") and len(bad.stderr.splitlines()) == 1
