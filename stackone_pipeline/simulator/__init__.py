"""A faithful, deterministic simulator of StackOne's Request Logs REST API.

Serves ``GET /requests/logs`` (cursor pagination, bracket filters, inclusive
``filter[end_date]``, 90-day retention, per-key sliding-window rate limit) and
``GET /requests/logs/{id}`` over real HTTP on loopback, with HTTP Basic auth
(username = API key, empty password), exactly as StackOne's API reference (and the README)
describes. Records are synthetic but realistic: 13 providers over hris/ats/crm,
40 accounts, lognormal latencies with one slow provider, a daily error burst,
timeouts with ``status: null``, credentials in headers/URLs (every secret contains
``SECRET_MARKER``) and personal data in bodies (every value contains ``PII_MARKER``).

Record ``i`` of hour ``h`` is a pure function of ``(seed, h, i)``, so any page is
O(page_size) to produce and ``Simulator.expected_records`` gives tests the ground
truth. ``Faults`` injects what real APIs do to pipelines: 429/503, truncated or
wrong-shape bodies, duplicates across pages, boundary records, late arrivals,
non-UTC offsets, camelCase keys. ``/_simulator/{stats,faults,reset}`` are admin
endpoints for out-of-process tests.

    with start_simulator(SimulatorConfig(seed=7)) as sim:
        httpx.get(f"{sim.url}/requests/logs", auth=(DEFAULT_API_KEY, ""))
"""

from .api import Simulator
from .config import DEFAULT_API_KEY, Faults, SimulatorConfig, Stats
from .records import PII_MARKER, SECRET_MARKER
from .server import RunningSimulator, serve, start_simulator

__all__ = [
    "DEFAULT_API_KEY",
    "PII_MARKER",
    "SECRET_MARKER",
    "Faults",
    "RunningSimulator",
    "Simulator",
    "SimulatorConfig",
    "Stats",
    "serve",
    "start_simulator",
]
