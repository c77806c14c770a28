"""The job the schedules and sensors launch: an hour (or a range of hours) of everything
downstream of `request_logs` — ingest, late-arrival count, derived tables and their checks, sinks.

Every asset in it is hourly with a single_run backfill policy, so a range (the lookback) is one
run; notifications are not in it (they run in sensors), so a channel that is down never holds up
ingestion.
"""

import functools

import dagster as dg

from ..projects import Project

HOURLY_JOB = "hourly_job"


@functools.cache  # one definition per project: Dagster refuses two of one name
def hourly_job_for(project: Project = Project()):
    """`hourly_job` (the default project), `hourly_job_<name>` (another project's family)."""
    return dg.define_asset_job(
        project.suffix(HOURLY_JOB),
        # materializable: a sink that is not configured is a stand-in spec (assets/sinks.py), not a step
        selection=dg.AssetSelection.assets([*project.asset_prefix(), "request_logs"]).downstream().materializable(),
        description=f"One UTC hour (or a range) of project {project.name}: request_logs, late_arrivals, the "
        "analytics tables and checks, and every sink delivery.",
    )


hourly_job = hourly_job_for()
