"""Automation: the hourly job, its schedules, the sensors, and the late_arrivals asset.

Add to Definitions: `assets=[*ASSETS]`, `jobs=JOBS`, `schedules=SCHEDULES`, `sensors=SENSORS`,
and the `notify` resource (`NotifyResource.from_env()`). Settings come from the environment once,
when the definitions load (config.py): STACKONE_AUTOMATION=on starts every schedule and sensor.
"""

from .assets import late_arrivals_asset
from .config import AutomationSettings
from .jobs import hourly_job
from .resources import NotifyResource
from .schedules import build_schedules
from .sensors import build_sensors

SETTINGS = AutomationSettings.from_env()
ASSETS = [late_arrivals_asset(SETTINGS.keep_baseline_hours)]
JOBS = [hourly_job]
SCHEDULES = build_schedules(SETTINGS)
SENSORS = build_sensors(SETTINGS)

__all__ = ["ASSETS", "JOBS", "SCHEDULES", "SENSORS", "SETTINGS", "AutomationSettings", "NotifyResource",
           "build_schedules", "build_sensors", "hourly_job", "late_arrivals_asset"]
