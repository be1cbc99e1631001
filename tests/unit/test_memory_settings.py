"""The memory settings: typed, checked once, and reaching the embedded server and SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config, load_config_bytes
from edge_agent.errors import ConfigError
from edge_agent.graph.database import Database
from edge_agent.graph.migrations import MIGRATIONS
from edge_agent.nats.server import EmbeddedNatsServer

ROOT = Path(__file__).resolve().parents[2]


def problems(raw: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config_bytes(json.dumps(raw).encode(), env={})
    return " | ".join(caught.value.problems)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"nats": {"server_memory_limit": "1MB"}}, "nats.server_memory_limit: at least 16MiB"),
        ({"nats": {"server_memory_limit": "lots"}}, "nats.server_memory_limit: expected a size"),
        ({"graph": {"config": {"sqlite_cache_size": "1KB"}}}, "sqlite_cache_size: 1000 bytes"),
        (
            {"graph": {"config": {"sqlite_cache_size": -5}}},
            "graph.config.sqlite_cache_size: a size cannot",
        ),
    ],
)
def test_a_bad_memory_setting_names_its_key(raw: dict[str, object], expected: str) -> None:
    assert expected in problems(raw)


def test_the_small_profile_loads_with_its_values() -> None:
    config = load_config(ROOT / "examples" / "edge-small.json", env={})
    assert config.nats.server_memory_limit == 32 << 20
    settings = config.graph.config
    assert settings.sqlite_cache_size == 512 << 10
    assert settings.querier.max_cache_bytes == 4 << 20
    assert (settings.workers, settings.queue_size) == (1, 500)


def test_defaults_limit_the_server_and_keep_sqlites_cache() -> None:
    config = load_config_bytes(b"{}", env={})
    assert config.nats.server_memory_limit == 64 << 20
    assert config.graph.config.sqlite_cache_size == 2000 << 10  # SQLite's own -2000


def test_the_memory_limit_reaches_the_server_as_gomemlimit(tmp_path: Path) -> None:
    def command(limit: int) -> list[str]:
        server = EmbeddedNatsServer(
            tmp_path, port=4222, max_file_store=1 << 30, name="t", memory_limit=limit
        )
        return server.command(tmp_path / "nats-server.conf")

    limited = command(32 << 20)
    assert limited[:2] == ["env", f"GOMEMLIMIT={32 << 20}"]
    assert limited[2].endswith("nats-server") and limited[3:] == [
        "-c",
        str(tmp_path / "nats-server.conf"),
    ]
    assert command(0)[0].endswith("nats-server")
    # What env(1) hands the server: the variable, parsed by Go as bytes.
    argv = [*limited[:2], "printenv", "GOMEMLIMIT"]
    shown = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == str(32 << 20)


def test_the_cache_size_applies_to_the_writer_and_to_readers(tmp_path: Path) -> None:
    database = Database(tmp_path / "g.db", MIGRATIONS, what="graph store")
    try:
        database.set_cache_size(512 << 10)
        (writer,) = database.connection.execute("PRAGMA cache_size").fetchone()
        with database.reader() as db:
            (reader,) = db.execute("PRAGMA cache_size").fetchone()
        assert writer == reader == -512
    finally:
        database.close()


def test_an_agent_imports_no_optional_crypto_until_configured() -> None:
    code = (
        "import sys, edge_agent.app; "
        "print(sorted({'jwt', 'cryptography', 'nkeys', 'nacl'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
