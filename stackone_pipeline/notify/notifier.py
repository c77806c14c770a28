"""Bring the notification state up to date and send what is due, once.

`Notifier.sync(open_alerts=..., events=...)`:
1. in one state-store transaction (milliseconds): open new conditions, resolve alert conditions
   that are no longer failing, list the messages due (state.py);
2. without that lock, send them, each channel through the shared `Transport` with a short
   deadline; a channel that fails is not tried again in this sync (its other messages wait),
   so a channel that is down costs one deadline, never more;
3. under the lock again, record what got through.
Messages that did not get through stay pending: the next sync (the next sensor tick) retries.
A lock held from 1 to 3 serialises syncs of several sensors, so nothing is sent twice: a file
lock (`.notify.lock`) in the data directory, or, when the state is shared between machines
(PostgreSQL), an advisory lock in that database, which the notifiers of every machine take.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..http import Action, Transport, Verdict
from ..storage import Storage
from . import state
from .channels import Channel
from .model import Condition, Notification

log = logging.getLogger(__name__)
_thread_lock = threading.Lock()  # flock is per open file: threads of one process need their own guard
NOTIFY_LOCK = "notify"  # the advisory lock of the shared state's notifications


@dataclass
class SyncReport:
    opened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    sent: Counter = field(default_factory=Counter)  # channel -> messages delivered
    rejected: Counter = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)  # channel -> why it will be retried
    waiting: int = 0  # messages left pending for the next sync

    def summary(self) -> str:
        parts = [
            f"{len(self.opened)} opened",
            f"{len(self.resolved)} resolved",
            "sent " + (", ".join(f"{k} {v}" for k, v in sorted(self.sent.items())) or "nothing"),
        ]
        if self.rejected:
            parts.append("rejected " + ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())))
        if self.failed:
            down = ", ".join(f"{k} ({v})" for k, v in sorted(self.failed.items()))
            parts.append(f"{self.waiting} waiting for {down}")
        return "; ".join(parts)


class Notifier:
    def __init__(
        self,
        storage: Storage,
        channels: list[Channel],
        *,
        transport: Callable[[], Transport] | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.storage, self.channels = storage, channels
        self.transport = transport or (lambda: Transport(timeout_s=5.0, max_attempts=3, deadline_s=10.0))
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    def sync(self, open_alerts: list[Condition] | None = None, events: list[Condition] = ()) -> SyncReport:
        """`open_alerts`: every alert condition open now (None: leave alerts as they are);
        `events`: one-shot conditions (already known ones are ignored)."""
        report = SyncReport()
        self.storage.data_dir.mkdir(parents=True, exist_ok=True)
        with _thread_lock, self._exclusive():
            now = self.clock()
            with state.transaction(self.storage) as con:
                work, report.opened, report.resolved = state.plan(con, now, self.channels, open_alerts, list(events))
            outcomes = self._send(work, now, report) if work else []
            if outcomes:
                with state.transaction(self.storage) as con:
                    state.record(con, self.clock(), outcomes)
        if report.failed:
            log.warning("notifications: %s", report.summary())
        return report

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Only this sync plans, sends and records, among every notifier that shares the state."""
        shared = self.storage.shared_state
        if shared is not None:  # a session lock: released when the block ends, or if this process dies
            with shared.advisory_lock(NOTIFY_LOCK):
                yield
            return
        with open(self.storage.data_dir / ".notify.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def _send(self, work: list[state.Work], now: datetime, report: SyncReport) -> list:
        by_name = {ch.name: ch for ch in self.channels}
        outcomes = []
        transport = self.transport()
        try:
            for w in work:
                if w.channel in report.failed:  # down: the rest waits for the next sync
                    report.waiting += 1
                    continue
                ch = by_name[w.channel]
                message = Notification(w.condition, w.phase, w.opened_at, w.resolved_at, now)
                verdict, transient = self._post(transport, ch, message)
                if verdict.action in (Action.OK, Action.PARTIAL):
                    report.sent[ch.name] += 1
                    outcomes.append((w, "delivered", None))
                elif transient:
                    report.failed[ch.name] = verdict.reason[:300]
                    report.waiting += 1
                    outcomes.append((w, "pending", verdict.reason[:1000]))
                else:  # the channel refuses this message for good (e.g. Slack 400 invalid_payload)
                    report.rejected[ch.name] += 1
                    log.error("notifications: %s rejected %s (%s)", ch.name, w.condition.key, verdict.reason)
                    outcomes.append((w, "rejected", verdict.reason[:1000]))
        finally:
            transport.close()
        return outcomes

    @staticmethod
    def _post(transport: Transport, ch: Channel, n: Notification) -> tuple[Verdict, bool]:
        """(verdict, transient): transient when the last answer asked for a retry or none came."""
        last: list[Verdict] = []

        def classify(resp):
            last.append(ch.classify(resp))
            return last[-1]

        url, body, headers = ch.request(n)
        sent = transport.post(url, body, headers, classify)
        return sent.verdict, not last or last[-1].action is Action.RETRY
