"""What to do when a test needs a program this machine lacks (Prometheus, Alertmanager, Chromium,
root for a tmpfs): skip on a developer's machine, fail in CI. CI installs all of them, so a skip
there would only hide a broken setup behind a green run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run every test (unset CI to skip it locally)", pytrace=False)
    pytest.skip(reason)
