"""A missing program skips a test on a laptop and fails it in CI."""

from __future__ import annotations

import pytest

from .needs import unavailable


def test_a_missing_program_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI must run every test"):
        unavailable("prometheus is missing")


def test_a_missing_program_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="prometheus is missing"):
        unavailable("prometheus is missing")
