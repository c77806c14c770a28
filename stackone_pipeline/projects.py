"""StackOne projects: a platform team often has several (production, staging, one per product),
each with its own API key and its own rate budget.

    STACKONE_PROJECTS=default=STACKONE_API_KEY,staging=STACKONE_API_KEY_STAGING

names each project and the variable that holds its key. Unset, there is one implicit project,
`default`, keyed by STACKONE_API_KEY: the single-key configuration, unchanged. The `default`
project keeps the unprefixed asset keys (`request_logs`, ...) and the data directory itself;
any other project `p` gets its own asset family (`p/request_logs`, ... : its own partitions,
jobs and schedules) and its own directory `<data dir>/projects/p/` (lake, warehouse, state), so
projects ingest in parallel without sharing a writer. Every row carries its `project`, and the
views of `query.duckdb` hold every project's rows. A name is a bounded label (sinks tag with it):
a lower-case identifier of at most 31 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PROJECT = "default"
DEFAULT_KEY_VAR = "STACKONE_API_KEY"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Project:
    name: str = DEFAULT_PROJECT
    api_key_var: str = DEFAULT_KEY_VAR

    @property
    def is_default(self) -> bool:
        """The single-key configuration's project: unprefixed asset keys, the data directory itself."""
        return self.name == DEFAULT_PROJECT

    def asset_prefix(self) -> list[str]:
        return [] if self.is_default else [self.name]

    def suffix(self, name: str) -> str:
        """`name` for this project: `hourly_job` for the default one, `hourly_job_staging` else."""
        return name if self.is_default else f"{name}_{self.name}"


def parse_projects(spec: str) -> tuple[Project, ...]:
    """`name=VAR,name=VAR` -> projects; empty -> the one implicit project. ValueError says what is wrong."""
    if not spec.strip():
        return (Project(),)
    projects: list[Project] = []
    for part in spec.split(","):
        name, sep, var = (x.strip() for x in part.strip().partition("="))
        if not sep or not name or not var:
            raise ValueError(f"each project is name=VARIABLE (the variable holding its API key), got {part.strip()!r}")
        if not _NAME.match(name):
            raise ValueError(f"project name {name!r}: a lower-case letter, then letters, digits or _ (at most 31)")
        if not _VAR.match(var):
            raise ValueError(f"{var!r} is not an environment variable name (project {name})")
        if any(p.name == name for p in projects):
            raise ValueError(f"project {name!r} is named twice")
        projects.append(Project(name, var))
    return tuple(projects)
