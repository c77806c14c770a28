"""The Dagster UI in a real browser: what a user checks after a backfill.

Chromium (Debian's `chromium` package, /usr/bin/chromium) driven by Playwright's Python package,
against the `dagster dev` of the e2e fixture once the shared 6-hour backfill has run. Screenshots
of every page go to artifacts/e2e/ (gitignored); `UPDATE_DOCS_SCREENSHOT=1` also copies the asset
page's partitions view to docs/ui-screenshot.png for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ..needs import unavailable
from .dagster_dev import ARTIFACTS, ROOT

pytest_plugins = ["stackone_pipeline_tests.e2e.dagster_dev"]
pytestmark = pytest.mark.timeout(480)  # run alone, the first test also pays for dagster dev + the backfill

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # a loaded 2-core machine renders the asset graph in seconds, not milliseconds
DOCS_SCREENSHOT = ROOT / "docs" / "ui-screenshot.png"
PROJECTS_SCREENSHOT = ROOT / "docs" / "ui-projects.png"
PROJECTS_PARTITIONS_SCREENSHOT = ROOT / "docs" / "ui-project-partitions.png"

# Visible leaf texts of the page (asset graph nodes are HTML: names are plain text, long ones
# middle-truncated with an ellipsis).
VISIBLE_TEXTS_JS = """() => Array.from(document.querySelectorAll('body *'))
  .filter(e => e.children.length === 0 && e.getClientRects().length > 0)
  .map(e => (e.textContent || '').trim()).filter(t => t.length > 0)"""


def _why_no_browser() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _why_no_browser()
    if reason:
        unavailable(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, e2e, e2e_backfill, request):
    assert e2e_backfill.result is not None and e2e_backfill.result.runs, e2e_backfill.describe(e2e.dev)
    context = browser.new_context(base_url=e2e.dev.url, viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.set_default_navigation_timeout(TIMEOUT_MS)
    # A fresh DAGSTER_HOME greets the first visitor with a "Join the Dagster community" dialog:
    # dismiss it whenever it gets in the way, as a user would.
    page.add_locator_handler(page.get_by_role("button", name="Skip", exact=True), lambda skip: skip.click())
    try:
        yield page
    finally:
        try:
            shot(page, f"last-{request.node.name}")  # where the test ended, pass or fail
        except Exception:  # noqa: BLE001 - an artefact, never a reason to fail
            pass
        context.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"ui-{name}.png"
    page.screenshot(path=str(path))
    return path


def open_asset(page, path: list[str]):
    from playwright.sync_api import expect

    page.goto("/assets/" + "/".join(path))
    expect(page.get_by_role("tablist")).to_be_visible()
    expect(page.get_by_role("tab", name="Overview")).to_be_visible()


def shown(name: str, texts: list[str]) -> bool:
    """`name` is on screen, whole or middle-truncated ("account_er…_hourly")."""
    for t in texts:
        if t == name:
            return True
        if t.count("…") == 1:
            head, tail = t.split("…")
            if len(head) >= 2 and len(tail) >= 2 and name.startswith(head) and name.endswith(tail):
                return True
    return False


def wait_until_shown(page, names: list[str], timeout_s: float = TIMEOUT_MS / 1000) -> list[str]:
    deadline = time.monotonic() + timeout_s
    missing = names
    while time.monotonic() < deadline:
        texts = page.evaluate(VISIBLE_TEXTS_JS)
        missing = [n for n in names if not shown(n, texts)]
        if not missing:
            return []
        page.wait_for_timeout(500)
    return missing


def test_the_asset_page_shows_the_backfilled_hours_as_materialized(page, e2e):
    from playwright.sync_api import expect

    open_asset(page, ["request_logs"])
    expect(page.get_by_text("Latest materialization")).to_be_visible()
    # The newest backfilled hour is the latest materialisation, linked to its partition.
    expect(page.get_by_role("link", name=e2e.keys[-1], exact=True)).to_be_visible()
    shot(page, "request_logs-overview")

    page.get_by_role("tab", name="Partitions").click()
    # The status filters count the partitions: the 6 hours, none still running.
    expect(page.get_by_text("Materialized (6)", exact=True)).to_be_visible()
    expect(page.get_by_text("Materializing (0)", exact=True)).to_be_visible()
    for key in e2e.keys:
        expect(page.get_by_text(key, exact=True).filter(visible=True).first).to_be_visible()
    # Pick the newest hour: it was materialised by a successful run of the backfill.
    page.get_by_text(e2e.keys[-1], exact=True).filter(visible=True).first.click()
    expect(page).to_have_url(re.compile(r"partition=" + re.escape(e2e.keys[-1].replace(":", "%3A"))))
    expect(page.get_by_text("Latest materialization").filter(visible=True).first).to_be_visible()
    expect(page.get_by_role("img", name="run_success").first).to_be_visible()
    expect(page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first).to_be_visible()
    path = shot(page, "request_logs-partitions")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(path, DOCS_SCREENSHOT)


def test_the_lineage_shows_the_path_from_ingestion_to_the_analytics_tables_and_the_sinks(page, e2e, e2e_backfill):
    from playwright.sync_api import expect

    lineage = e2e.dev.downstream_of("request_logs")  # with the sinks' stand-ins (no sink is configured)
    names = [a.name for a in lineage]
    assert "request_logs" in names and len(names) > 1

    open_asset(page, ["request_logs"])
    page.get_by_role("tab", name="Lineage").click()
    page.get_by_role("button", name=re.compile(r"(^|\s)Downstream$")).click()
    all_depth = page.get_by_role("button", name="All", exact=True)
    if all_depth.is_enabled():
        all_depth.click()
    expect(page.get_by_text("request_logs", exact=True).filter(visible=True).first).to_be_visible()
    missing = wait_until_shown(page, names)
    shot(page, "request_logs-lineage")
    assert not missing, f"not in request_logs' downstream lineage: {missing}"

    # The global asset graph: the groups along the way (ingestion -> analytics, sinks).
    page.get_by_role("link", name=re.compile(r"Lineage$")).click()
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    groups = sorted({a.group for a in lineage})
    missing = wait_until_shown(page, groups)
    shot(page, "global-lineage")
    assert not missing, f"groups not on the global asset graph: {missing}"


def test_the_check_results_are_shown_on_the_checked_assets(page, e2e, e2e_backfill):
    from playwright.sync_api import expect

    checked = [(a, c) for a in e2e_backfill.assets for c in a.checks]
    assert len(checked) == 4, checked  # the guide's four thresholds
    for asset, check in checked:
        latest = next(x for x in e2e.dev.check_executions(list(asset.path), check) if x["evaluation"] is not None)
        label = {"SUCCEEDED": "Passed", "FAILED": "Failed"}[latest["status"]]
        open_asset(page, list(asset.path))
        page.get_by_role("tab", name="Checks").click()
        expect(page.get_by_text(check, exact=True).filter(visible=True).first).to_be_visible()
        expect(page.get_by_text(label, exact=True).filter(visible=True).first).to_be_visible()
        expect(page.get_by_text("Evaluation result")).to_be_visible()
        assert any(m["label"] == "evaluated_hours" for m in latest["evaluation"]["metadataEntries"]), latest
        expect(page.get_by_text("evaluated_hours", exact=True).filter(visible=True).first).to_be_visible()
        shot(page, f"check-{asset.name}-{check}")


def test_the_per_hour_metadata_is_plotted(page, e2e):
    from playwright.sync_api import expect

    open_asset(page, ["request_logs"])
    metadata = page.get_by_role("button", name=re.compile(r"(^|\s)Plots$"))
    metadata.scroll_into_view_if_needed()
    metadata.click()
    # By partition: one chart per numeric label of the hours' materialisations.
    expect(page.locator("canvas").first).to_be_visible()
    shot(page, "request_logs-plots-by-partition")
    # By event time: the per-hour observations of a range run too (rows, dagster/partition_row_count).
    page.get_by_role("button", name=re.compile(r"(^|\s)Events$")).click()
    for label in ("rows", "dagster/partition_row_count"):
        heading = page.get_by_text(label, exact=True).filter(visible=True).first
        heading.scroll_into_view_if_needed()
        expect(heading).to_be_visible()
    assert page.locator("canvas").count() >= 2
    shot(page, "request_logs-plots-by-event")


def test_several_projects_are_asset_families_side_by_side(page, e2e, e2e_staging_backfill):
    """With STACKONE_PROJECTS naming a second project, the UI shows its asset family beside the
    default one; its backfill materialises its own hours into its own warehouse."""
    from playwright.sync_api import expect

    from stackone_pipeline.storage import Storage

    outcome = e2e_staging_backfill
    assert outcome.result is not None and outcome.result.status == "COMPLETED_SUCCESS", outcome.describe(e2e.dev)
    hours = e2e.hours[-2:]
    staging = e2e.sim.projects["staging"]
    want = sum(len(staging.expected_records(h, h + timedelta(hours=1))) for h in hours)
    with Storage(e2e.data_dir, project="staging").warehouse.reader() as con:
        assert con.execute("SELECT count(*), min(project), max(project) FROM request_logs").fetchone() == (
            want,
            "staging",
            "staging",
        )
    open_asset(page, ["staging", "request_logs"])
    page.get_by_role("tab", name="Partitions").click()
    expect(page.get_by_text("Materialized (2)", exact=True)).to_be_visible()
    partitions = shot(page, "staging-request_logs-partitions")
    # The global lineage: each project's groups (ingestion, analytics, sinks) side by side.
    page.get_by_role("link", name=re.compile(r"Lineage$")).click()
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    groups = ["ingestion", "analytics", "ingestion_staging", "analytics_staging", "sinks_staging"]
    missing = wait_until_shown(page, groups)
    lineage = shot(page, "global-lineage-two-projects")
    assert not missing, f"groups not on the global asset graph: {missing}"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(lineage, PROJECTS_SCREENSHOT)
        shutil.copyfile(partitions, PROJECTS_PARTITIONS_SCREENSHOT)
