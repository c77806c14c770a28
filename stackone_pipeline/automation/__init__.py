"""Automation: the hourly job, its schedules and the sensors (notifications, webhook actions).

Built from `AutomationSettings` by definitions.py: STACKONE_AUTOMATION=on starts every schedule
and sensor RUNNING, otherwise they are STOPPED (Dagster's default) until turned on in the UI.
"""

from .jobs import HOURLY_JOB, hourly_job, hourly_job_for
from .schedules import build_schedules
from .sensors import build_sensors

__all__ = ["HOURLY_JOB", "build_schedules", "build_sensors", "hourly_job", "hourly_job_for"]
