"""Which staging a deployment uses: the segment files of the data directory (staging.py), or,
when the state is shared between machines (STACKONE_STATE_URL), a PostgreSQL table
(postgres_staging.py: imported only then, with the deploy extra)."""

from __future__ import annotations

from pathlib import Path

from ..settings import state_url_from_env
from ..state.postgres import PostgresState
from .staging import FileStaging, Staging


def open_staging(data_dir: Path | str, state: PostgresState | str | None = None) -> Staging:
    """The deployment's staging: a PostgreSQL table when the state is shared (`state`: a
    PostgresState or a postgresql:// URL; None follows STACKONE_STATE_URL, "" means none), else
    the segment files of `data_dir`."""
    if state is None:
        state = state_url_from_env()
    if not state:
        return FileStaging(data_dir)
    from .postgres_staging import PostgresStaging

    return PostgresStaging(state if isinstance(state, PostgresState) else PostgresState(state))


def staging_for(storage) -> Staging:
    """The staging a `Storage` loads from: its shared state's table, else its data directory's files."""
    return open_staging(storage.data_dir, storage.shared_state or "")
