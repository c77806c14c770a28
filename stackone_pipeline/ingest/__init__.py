"""Ingestion: StackOne API -> lake -> warehouse, one UTC hour at a time.

hour.py           one hour: pages -> normalise, redact, clip, de-duplicate -> lake -> warehouse
concurrent.py     many hours at once, sharing one rate limit; a failing hour spares the others
progress.py       a progress line for long runs
late_arrivals.py  what a re-ingest found that the previous ingest of the hour had not
"""

from .concurrent import HourFailures, ingest_hours
from .hour import HourResult, RedactionSettings, ingest_hour
from .late_arrivals import LateArrivals, count_late_arrivals, count_late_arrivals_hours, late_arrivals_table
from .progress import HourLines, Progress

__all__ = [
    "HourFailures",
    "HourResult",
    "LateArrivals",
    "HourLines",
    "Progress",
    "RedactionSettings",
    "count_late_arrivals",
    "count_late_arrivals_hours",
    "ingest_hour",
    "ingest_hours",
    "late_arrivals_table",
]
