"""A faithful, deterministic simulator of StackOne's Request Logs REST API.

Serves ``GET /requests/logs`` (cursor pagination, filters in the bracketed and/or the flat
spelling, inclusive ``end_date``, 90-day retention by default, per-key sliding-window rate
limit) and ``GET /requests/logs/{id}`` over real HTTP on loopback, with HTTP Basic auth
(username = API key, empty password), as StackOne's API reference and published SDK describe.
List pages carry the SDK's partial records unless ``SimulatorConfig(list_shape="full")`` asks
for the guide's full ones; the detail endpoint always answers the full record. Errors are
``{statusCode, message, timestamp}``. ``filter_encoding`` ("both", "bracket", "flat", "none")
and ``reject_unknown_params`` imitate an API that takes only one spelling of the filters. Records are synthetic but realistic: 13 providers over hris/ats/crm,
40 accounts, lognormal latencies with one slow provider, a daily error burst,
timeouts with ``status: null``, credentials in headers/URLs (every secret contains
``SECRET_MARKER``) and personal data in bodies (every value contains ``PII_MARKER``).

Record ``i`` of hour ``h`` is a pure function of ``(seed, h, i)``, so any page is
O(page_size) to produce and ``Simulator.expected_records`` gives tests the ground
truth. ``Faults`` injects what real APIs do to pipelines: 408/429/503, truncated or
wrong-shape bodies, duplicates across pages, boundary records, late arrivals,
non-UTC offsets, camelCase keys. ``/_simulator/{stats,faults,config,reset}`` are admin
endpoints for out-of-process tests.

    with start_simulator(SimulatorConfig(seed=7)) as sim:
        httpx.get(f"{sim.url}/requests/logs", auth=(DEFAULT_API_KEY, ""))
"""

from .api import Simulator
from .config import DEFAULT_API_KEY, FILTER_ENCODINGS, LIST_SHAPES, Faults, SimulatorConfig, Stats
from .records import PII_MARKER, SECRET_MARKER
from .server import RunningSimulator, serve, start_simulator

__all__ = [
    "DEFAULT_API_KEY",
    "FILTER_ENCODINGS",
    "LIST_SHAPES",
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
