"""Automation settings from the environment (read once, when the definitions load).

| variable                         | default | meaning                                              |
|----------------------------------|---------|------------------------------------------------------|
| STACKONE_AUTOMATION              | off     | `on`: schedules and sensors start RUNNING            |
| STACKONE_SCHEDULE_LAG_MINUTES    | 5       | minutes after the hour closes that it is ingested (0-59) |
| STACKONE_LOOKBACK_HOURS          | 3       | earlier hours re-ingested each hour for late logs (0 = off) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from ..settings import env_bool, env_int


@dataclass(frozen=True)
class AutomationSettings:
    enabled: bool = False
    lag_minutes: int = 5
    lookback_hours: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AutomationSettings":
        env = os.environ if env is None else env
        return cls(
            enabled=env_bool(env, "STACKONE_AUTOMATION", False),
            lag_minutes=env_int(env, "STACKONE_SCHEDULE_LAG_MINUTES", cls.lag_minutes, 0, 59),
            lookback_hours=env_int(env, "STACKONE_LOOKBACK_HOURS", cls.lookback_hours, 0, 24 * 7),
        )

    @property
    def keep_baseline_hours(self) -> int:
        """Hours of late-arrival baselines to keep behind the newest: the lookback and a margin."""
        return max(48, self.lookback_hours + 2)
