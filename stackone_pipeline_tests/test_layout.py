"""The layout's rules (docs/architecture.md), checked on the source: imports point down the data
flow, there is no import cycle, and only settings.py (and the CLI) reads the environment."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "stackone_pipeline"
# Lower layers never import higher ones; a layer may import itself and anything below.
LAYERS = [
    {"settings", "partitions", "projects", "http"},
    {"stackone", "simulator", "lake", "warehouse", "state"},
    {"storage"},
    {"ingest", "analytics", "sinks", "notify", "webhooks"},
    {"reporting"},
    {"resources"},
    {"assets", "automation"},
    {"definitions"},
    {"arguments", "backfill", "cli", "dagster_event_log", "dev", "doctor", "footprint", "instance"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        out[name or "__init__"] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Modules of the package that `name` imports (relative imports resolved)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("stackone_pipeline"):
                target = node.module.removeprefix("stackone_pipeline").lstrip(".")
            else:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" if target else a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("stackone_pipeline.") for a in node.names if a.name.startswith("stackone_pipeline.")
            )
    known = modules()
    return {t for t in found if t in known and t != name}


def top(name: str) -> str:
    return name.split(".")[0]


def test_every_module_has_a_layer():
    assert {top(n) for n in modules()} - {"__init__"} <= set(RANK)


def test_imports_point_down_the_data_flow():
    upward = {
        name: sorted(t for t in imports_of(name, path) if RANK[top(t)] > RANK[top(name)])
        for name, path in modules().items()
        if name != "__init__"
    }
    assert not {n: ts for n, ts in upward.items() if ts}, "imports from a higher layer"
    assert "storage" in imports_of("sinks.ledger", modules()["sinks.ledger"])  # the walk sees imports


def test_no_import_cycles():
    graph = {n: imports_of(n, p) for n, p in modules().items()}
    # A package's __init__ re-exports its modules: an edge into a package means "into its modules".
    state: dict[str, int] = {}

    def visit(n, trail):
        state[n] = 1
        for m in graph[n]:
            if m.startswith(n + "."):  # a package importing its own modules
                continue
            if state.get(m) == 1 and not n.startswith(m + "."):
                raise AssertionError("import cycle: " + " -> ".join([*trail, n, m]))
            if m not in state:
                visit(m, [*trail, n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_only_settings_and_the_cli_read_the_environment():
    readers = {n for n, p in modules().items() if "os.environ" in p.read_text() or "getenv" in p.read_text()}
    # footprint sets pyarrow's allocator for the commands' own process; it reads no setting
    assert readers <= {"settings", "cli", "backfill", "dev", "instance", "footprint"}, readers
