"""`stackone-pipeline dev`: the simulator and `dagster dev` on one data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_dev(data_dir: str, port: int, sim_port: int, seed: int) -> int:
    """Start the simulator and `dagster dev` on the same data directory; return dagster's exit code."""
    from .settings import Settings
    from .simulator import DEFAULT_API_KEY, SimulatorConfig, start_simulator

    data_dir = Path(os.environ.get("STACKONE_DATA_DIR", data_dir)).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    home = Path(os.environ.get("DAGSTER_HOME", data_dir / "dagster_home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    target = ["-w", str(workspace)] if workspace.exists() else ["-m", "stackone_pipeline.definitions"]
    retention = Settings.from_env().retention_days
    with start_simulator(SimulatorConfig(seed=seed, retention_days=retention), port=sim_port) as sim:
        env = dict(
            os.environ,
            STACKONE_API_KEY=DEFAULT_API_KEY,
            STACKONE_BASE_URL=sim.url,
            STACKONE_DATA_DIR=str(data_dir),
            DAGSTER_HOME=str(home),
        )
        print(f"simulator at {sim.url}; data in {data_dir}; Dagster UI on http://127.0.0.1:{port}", file=sys.stderr)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", *target, "-h", "127.0.0.1", "-p", str(port)], env=env
        )
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            return proc.wait()
