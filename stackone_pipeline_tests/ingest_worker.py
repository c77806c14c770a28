"""Ingest hours in a separate process (for the kill and concurrent-writer tests).

python -m stackone_pipeline_tests.ingest_worker URL DATA_DIR REQUESTS_PER_SECOND PAGE_SIZE HOUR_ISO...
"""

import sys
from datetime import datetime

from stackone_pipeline.ingest import ingest_hours
from stackone_pipeline.simulator import DEFAULT_API_KEY
from stackone_pipeline.stackone.client import StackOneClient
from stackone_pipeline.stackone.ratelimit import RateLimiter
from stackone_pipeline.storage import Storage

url, data_dir, rps, page_size, *hours = sys.argv[1:]
limiter = RateLimiter(float(rps), window_s=1.0)
with StackOneClient(DEFAULT_API_KEY, url, rate_limiter=limiter, page_size=int(page_size)) as client:
    done = ingest_hours(client, Storage(data_dir, lock_timeout_s=60), [datetime.fromisoformat(h) for h in hours])
print(sum(r.rows for r in done), flush=True)
