"""Shared fixtures: running in-process agents on free loopback ports, NATS clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from edge_agent.app import Agent
from tests.helpers import make_config

StartAgent = Callable[..., Awaitable[Agent]]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--opt-in``: also run the tests marked ``opt_in`` (long variants)."""
    parser.addoption(
        "--opt-in", action="store_true", help="also run tests marked opt_in (long variants)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out (deselect, not skip) the ``opt_in`` tests unless ``--opt-in`` is given:
    they would push ``make test`` past its time budget."""
    if config.getoption("--opt-in"):
        return
    left_out = [item for item in items if item.get_closest_marker("opt_in")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("opt_in")]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[StartAgent]:
    """Start in-process agents with config ``sections``; all are stopped at teardown."""
    agents: list[Agent] = []

    async def start(**sections: Any) -> Agent:
        agent = Agent(make_config(tmp_path / f"state{len(agents)}", **sections))
        agents.append(agent)
        await agent.start()
        return agent

    yield start
    for agent in agents:
        await agent.stop()


@pytest.fixture
async def agent(start_agent: StartAgent) -> Agent:
    """A running agent with default settings."""
    return await start_agent()


@pytest.fixture
async def nats_client(agent: Agent) -> AsyncIterator[Client]:
    """A NATS client connected to the agent's embedded server."""
    assert agent.nats_server is not None
    client = await nats.connect(agent.nats_server.url)
    yield client
    await client.close()
