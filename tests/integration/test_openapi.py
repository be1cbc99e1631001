"""Property-based: schemathesis generates requests from the OpenAPI document; no 5xx.

The edge agent and the hub run as real processes (the generated tests are synchronous
and must not share an event loop with the server); each document lists exactly the
routes its program serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.helpers import AgentProcess, config_dict, http_json
from tests.integration.sync_harness import hub_process


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(str(value), "utf-8")


INDEXES = {"indexer": {"indexes": {"alias": True, "spatial": True, "temporal": True}}}


@pytest.fixture(scope="module")
def running_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    workdir: Path = tmp_path_factory.mktemp("openapi")
    agent = AgentProcess(config_dict(workdir / "state", graph={"config": INDEXES}), workdir)
    agent.start()
    seed = b'{"entity_id": "UAV-001", "entity_type": "drone", "properties": {"battery": 80}}'
    assert http_json(f"{agent.api}/ingest", seed)[0] == 202
    yield agent
    assert agent.stop() == 0


@pytest.fixture(scope="module")
def running_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    hub = hub_process(tmp_path_factory.mktemp("openapi-hub"))
    hub.start()
    yield hub
    assert hub.stop() == 0


@pytest.fixture(params=["running_agent", "running_hub"])
def program(request: pytest.FixtureRequest) -> AgentProcess:
    running: AgentProcess = request.getfixturevalue(request.param)
    return running


def test_no_server_errors(program: AgentProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{program.api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def no_5xx(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error], timeout=30)

        no_5xx()


def test_document_lists_every_route(running_agent: AgentProcess) -> None:
    status, document = http_json(f"{running_agent.api}/openapi.json")
    assert status == 200
    assert {"/health", "/ingest", "/graph/query/path", "/admin/export"} <= set(document["paths"])
    assert "/edges" not in document["paths"]
    assert "PathQuery" in document["components"]["schemas"]


def test_the_hubs_document_lists_its_views_and_not_the_edges_write_routes(
    running_hub: AgentProcess,
) -> None:
    status, document = http_json(f"{running_hub.api}/openapi.json")
    assert status == 200
    assert document["info"]["title"] == "SemStreams cloud hub"
    paths = set(document["paths"])
    assert {"/edges", "/graph/types", "/graph/shared", "/graph/conflicts"} <= paths
    assert {"/health", "/graph/query/spatial", "/admin/export"} <= paths
    assert not {"/ingest", "/admin/import", "/admin/config"} & paths
    entity = document["paths"]["/graph/entities/{entity_id}"]["get"]
    assert "provenance" in {parameter["name"] for parameter in entity["parameters"]}
    for path in paths - {"/metrics"}:  # every JSON GET it documents answers
        if "{" not in path and "get" in document["paths"][path]:
            assert http_json(f"{running_hub.api}{path}")[0] == 200, path
