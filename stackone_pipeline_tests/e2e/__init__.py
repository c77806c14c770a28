"""End-to-end tests through a real `dagster dev` (webserver + daemon) and the UI in Chromium.

`dagster_dev.py` starts the StackOne simulator and `dagster dev` once for the whole e2e package
(the test modules load it with `pytest_plugins`) and stops every process it started as soon as
the last e2e test is done, pass or fail.
"""

import pytest

# The helper is both imported by the test modules and loaded as their plugin: rewrite its asserts
# on first import (and no "already imported" warning when it is registered as a plugin).
pytest.register_assert_rewrite("stackone_pipeline_tests.e2e.dagster_dev")
