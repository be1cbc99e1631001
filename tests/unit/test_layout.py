"""Architecture rules that a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from edge_agent.nats.client import subjects_overlap

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(str(path), alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add((str(path), node.module))
    return found


def test_edge_agent_never_imports_cloud_hub() -> None:
    offenders = [p for p, m in imported_modules("edge_agent") if m.split(".")[0] == "cloud_hub"]
    assert offenders == []


def test_only_the_config_package_reads_settings_from_the_environment() -> None:
    readers = {
        Path(p).relative_to(ROOT).as_posix()
        for p, _ in imported_modules("edge_agent")
        if "os.environ" in Path(p).read_text() or "getenv" in Path(p).read_text()
    }
    # NOTIFY_SOCKET and WATCHDOG_USEC are systemd's notification protocol, not settings:
    # the process environment is the only place the service manager puts them.
    assert readers <= {"edge_agent/config/loader.py", "edge_agent/systemd/notify.py"}


def test_sql_stays_inside_the_graph_package() -> None:
    users = {Path(p).parent.name for p, m in imported_modules("edge_agent") if m == "sqlite3"}
    assert users == {"graph"}


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("events.graph.entity.>", "events.graph.entity.drone", True),
        ("events.graph.entity.drone", "events.graph.entity.sensor", False),
        ("events.graph.entity.*", "events.graph.entity.drone", True),
        ("events.graph.entity.drone", "events.graph.entity.drone.v2", False),
        ("events.graph.entity.drone.>", "events.graph.entity.drone", False),
    ],
)
def test_subjects_overlap(first: str, second: str, overlap: bool) -> None:
    assert subjects_overlap(first, second) is overlap
    assert subjects_overlap(second, first) is overlap
