"""The `report` command: the guide's key metrics for a time window, as text and as HTML.

Reads the analytics tables through the warehouse reader (read-only; it waits only while a write
is in progress). Both functions take a UTC window [start, end), widened to whole hours.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ..lake import write_atomically
from ..settings import Thresholds
from ..sinks import dead_letters
from ..storage import Storage
from .html import render
from .metrics import ReportData, ReportError, key_metrics, load
from .text import dead_letter_lines, summary, table

__all__ = ["ReportData", "ReportError", "run_report", "summary_lines"]


def run_report(
    data_dir: Path | str,
    start: datetime,
    end: datetime,
    html_path: Path | str | None,
    thresholds: Thresholds | None = None,
) -> str:
    """Write the HTML report to `html_path` (skipped when None); return the key-metrics table as text."""
    metrics = key_metrics(load(data_dir, start, end, thresholds))
    if html_path is not None:
        write_atomically(Path(html_path), render(metrics).encode())
    letters = dead_letters.summary(Storage(data_dir), start=metrics.data.start, end=metrics.data.end)
    return "\n".join([table(metrics), *dead_letter_lines(letters)])


def summary_lines(
    data_dir: Path | str, start: datetime, end: datetime, thresholds: Thresholds | None = None
) -> list[str]:
    """A few headline figures of the window (for the end of `stackone-pipeline demo`)."""
    return summary(key_metrics(load(data_dir, start, end, thresholds)))
