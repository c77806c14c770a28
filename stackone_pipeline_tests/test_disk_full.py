"""A full disk, on a real small filesystem (a tmpfs mounted for the test): the error says so in
words, and the hour is published nowhere, so lake, warehouse and views still agree; once there
is room, a re-run completes it."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from stackone_pipeline.ingest import ingest_hour
from stackone_pipeline.simulator import SimulatorConfig, start_simulator
from stackone_pipeline.storage import Storage, StorageFullError
from stackone_pipeline.warehouse.schema import REQUEST_LOGS

from .conftest import closed_hour
from .needs import unavailable


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB filesystem of its own (root only: mount)."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if out.returncode:
        unavailable(f"cannot mount a tmpfs here: {out.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_named_and_leaves_the_hour_unpublished(small_disk, make_client):
    storage = Storage(small_disk / "data", lock_timeout_s=30)
    small, big = closed_hour(3), closed_hour(2)
    ingest_hour(make_client(), storage, small)  # 300 rows: fits
    with start_simulator(SimulatorConfig(seed=3, rows_per_hour=60_000, diurnal=False)) as sim:
        client = make_client(base_url=sim.url, page_size=1000)
        with pytest.raises(StorageFullError) as err:
            ingest_hour(client, storage, big)
    message = str(err.value)
    assert f"the disk holding {storage.data_dir} is full" in message and "MB free" in message
    assert "rollback" not in message.lower()
    # nothing of the big hour anywhere: not in the lake, not in the warehouse, no partial file
    assert not storage.lake.has_hour(REQUEST_LOGS, big)
    assert not list(storage.data_dir.rglob("*.partial"))
    with storage.warehouse.reader() as con:
        hours = dict(con.execute("SELECT hour, count(*) FROM request_logs GROUP BY hour").fetchall())
    assert hours == {small: 300}
    # room again (the filesystem grows), and the same run completes the hour
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    with start_simulator(SimulatorConfig(seed=3, rows_per_hour=60_000, diurnal=False)) as sim:
        done = ingest_hour(make_client(base_url=sim.url, page_size=1000), storage, big)
    assert done.rows == 60_000 and storage.lake.has_hour(REQUEST_LOGS, big)
