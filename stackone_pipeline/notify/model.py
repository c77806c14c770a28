"""What is notified: a condition (an open alert, a webhook event, a failed run) and one
message about it to one channel (firing or resolved)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

import orjson

FIRING, RESOLVED = "firing", "resolved"


@dataclass(frozen=True)
class Condition:
    key: str  # identity: the same key is the same condition (notified once while open)
    source: str  # "alert" (threshold evaluation), "webhook" (StackOne event), "run" (Dagster run)
    title: str  # one line
    text: str  # a few lines for a human
    severity: str  # "warning" or "critical" (Alertmanager's usual values)
    labels: dict[str, str] = field(default_factory=dict)  # identify the alert (Alertmanager labels)
    annotations: dict[str, str] = field(default_factory=dict)  # details that may change
    url: str | None = None  # where to look: the Dagster UI
    one_shot: bool = False  # an event: notified once, never resolved

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> Condition:
        return cls(**orjson.loads(text))


@dataclass(frozen=True)
class Notification:
    condition: Condition
    phase: str  # FIRING or RESOLVED
    opened_at: datetime
    resolved_at: datetime | None
    now: datetime

    @property
    def status_word(self) -> str:
        return "RESOLVED" if self.phase == RESOLVED else "FIRING"
