"""Bearer auth, rate limits and HTTPS on a real agent's API, over loopback sockets."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.app import Agent
from edge_agent.errors import ConfigError
from tests.certs import self_signed
from tests.conftest import StartAgent
from tests.helpers import (
    JWT_SECRET,
    bearer,
    cli,
    event,
    free_port,
    ndjson,
    post_oversized,
    token,
)

JWT_AUTH = {"type": "jwt", "jwt_secret": JWT_SECRET, "jwt_issuer": "semstreams"}


def service(**settings: Any) -> dict[str, Any]:
    """The ``services`` section: the API on a free port with ``settings``."""
    return {"service-manager": {"config": {"http_port": free_port(), **settings}}}


def api(agent: Agent, scheme: str = "http", **kwargs: Any) -> httpx.AsyncClient:
    base = f"{scheme}://127.0.0.1:{agent.http_port}"
    return httpx.AsyncClient(base_url=base, timeout=10, **kwargs)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


# ---- JWT -----------------------------------------------------------------------------

PROTECTED = [
    ("GET", "/graph/stats"),
    ("GET", "/graph/entities/UAV-001"),
    ("POST", "/graph/query/path"),
    ("POST", "/ingest"),
    ("GET", "/admin/config"),
    ("POST", "/admin/export"),
]


async def test_every_refusal_names_its_reason(start_agent: StartAgent) -> None:
    agent = await start_agent(services=service(auth=JWT_AUTH))
    cases = [
        ({}, "missing bearer token"),
        ({"authorization": "Basic dXNlcjpwdw=="}, "malformed authorization header"),
        (bearer("not-a-jwt"), "malformed token"),
        (bearer(ttl=-3600), "token expired"),
        (bearer(secret="another-secret-0123456789abcdef01234"), "bad signature"),
        (bearer(issuer="someone-else"), "wrong issuer"),
        (bearer(exp=None), "token has no exp claim"),
    ]
    async with api(agent) as client:
        for method, path in PROTECTED:
            for headers, reason in cases:
                reply = await client.request(method, path, headers=headers, content=b"{}")
                assert reply.status_code == 401, (method, path, reason, reply.text)
                assert reply.json()["error"].startswith(reason), (path, reply.json())
                assert reply.headers["www-authenticate"].startswith("Bearer")
        text = (await client.get("/metrics")).text
    refused = len(PROTECTED) * len(cases)
    assert metric(text, 'semstreams_errors_total{reason="auth"}') == refused


async def test_valid_token_reaches_the_api(start_agent: StartAgent) -> None:
    agent = await start_agent(services=service(auth=JWT_AUTH))
    async with api(agent, headers=bearer(sub="ops")) as client:
        stats = await client.get("/graph/stats")
        assert stats.status_code == 200, stats.text
        assert "entities" in stats.json()
        ingest = await client.post("/ingest", content=ndjson([event("auth-1"), event("auth-2")]))
        assert ingest.status_code == 202, ingest.text
        assert ingest.json()["accepted"] == 2
        settings = await client.get("/admin/config")
        assert settings.status_code == 200, settings.text
        missing = await client.get("/graph/entities/nobody")
        assert missing.status_code == 404  # past auth, answered by the view


async def test_health_and_metrics_stay_open(start_agent: StartAgent) -> None:
    agent = await start_agent(services=service(auth=JWT_AUTH))
    async with api(agent) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "semstreams_rate_limited_total" in metrics.text


async def test_open_paths_are_configurable(start_agent: StartAgent) -> None:
    auth = {**JWT_AUTH, "open_paths": ["/health", "/graph/stats"]}
    agent = await start_agent(services=service(auth=auth))
    async with api(agent) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/graph/stats")).status_code == 200
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/graph/entities/x")).status_code == 401


# ---- rate limits ---------------------------------------------------------------------


async def test_burst_then_429_with_retry_after(start_agent: StartAgent) -> None:
    limit = {"enabled": True, "requests_per_minute": 1, "burst": 3}
    agent = await start_agent(
        services=service(), **{"api-gateway": {"config": {"rate_limit": limit}}}
    )
    async with api(agent) as client:
        for _ in range(3):
            assert (await client.get("/graph/stats")).status_code == 200
        refused = await client.get("/graph/stats")
        assert refused.status_code == 429
        assert "rate limit" in refused.json()["error"]
        # One request a minute: the next token is about a minute away.
        assert 50 <= int(refused.headers["retry-after"]) <= 60
        assert (await client.post("/ingest", content=ndjson([event("x")]))).status_code == 429
        # A load balancer polling /health, or Prometheus scraping, is never throttled.
        for _ in range(10):
            assert (await client.get("/health")).status_code == 200
        text = (await client.get("/metrics")).text
    assert metric(text, "semstreams_rate_limited_total") == 2


async def test_authenticated_clients_are_limited_by_subject(start_agent: StartAgent) -> None:
    limit = {"enabled": True, "requests_per_minute": 1, "burst": 2}
    agent = await start_agent(
        services=service(auth=JWT_AUTH), **{"api-gateway": {"config": {"rate_limit": limit}}}
    )
    alice, bob = bearer(sub="alice"), bearer(sub="bob")
    async with api(agent) as client:
        codes = [(await client.get("/graph/stats", headers=alice)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert (await client.get("/graph/stats", headers=bob)).status_code == 200


# ---- TLS -----------------------------------------------------------------------------


async def test_https_listener(start_agent: StartAgent, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = {"cert_file": str(cert), "key_file": str(key)}
    agent = await start_agent(services=service(auth=JWT_AUTH, tls=tls))
    trusting = ssl.create_default_context(cafile=str(cert))
    async with api(agent, "https", verify=trusting) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "healthy"
        assert (await client.get("/graph/stats")).status_code == 401
        stats = await client.get("/graph/stats", headers=bearer())
        assert stats.status_code == 200
    async with api(agent, "https") as client:  # the system CAs do not know this cert
        with pytest.raises(httpx.ConnectError):
            await client.get("/health")
    async with api(agent, "http") as client:  # plain HTTP is not served on the TLS port
        with pytest.raises(httpx.TransportError):
            await client.get("/health")


async def test_missing_certificate_fails_before_starting(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    cert, _ = self_signed(tmp_path)
    tls = {"cert_file": str(cert), "key_file": str(tmp_path / "nope.pem")}
    with pytest.raises(ConfigError, match=r"services\.service-manager\.config\.tls\.key_file"):
        await start_agent(services=service(tls=tls))


async def test_certificate_and_key_must_match(start_agent: StartAgent, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    tls = {"cert_file": str(cert), "key_file": str(other_key)}
    with pytest.raises(ConfigError, match=r"services\.service-manager\.config\.tls: cannot load"):
        await start_agent(services=service(tls=tls))


async def test_stats_cli_with_a_token_file(start_agent: StartAgent, tmp_path: Path) -> None:
    agent = await start_agent(services=service(auth=JWT_AUTH))
    url = f"http://127.0.0.1:{agent.http_port}"
    secret_file = tmp_path / "token"
    secret_file.write_text(token() + "\n")
    secret_file.chmod(0o600)
    refused = await cli("stats", "--url", url)
    assert refused[0] == 1
    assert "answered 401" in refused[2]
    code, out, err = await cli("stats", "--url", url, "--token-file", str(secret_file))
    assert code == 0, err
    assert json.loads(out)["entities"] == 0


# ---- bounded bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/graph/query/path"),
        ("POST", "/admin/config"),
        ("POST", "/admin/export"),
    ],
)
async def test_small_request_bodies_are_capped(
    start_agent: StartAgent, method: str, path: str
) -> None:
    agent = await start_agent()
    url = f"http://127.0.0.1:{agent.http_port}{path}"
    for declared in (1 << 20, None):  # a declared length, and a chunked body counted as read
        status, body = await asyncio.to_thread(post_oversized, url, declared=declared)
        assert status == 413
        assert body == {"error": "request body over 65536 bytes; send less per request"}
    async with api(agent) as client:  # the agent is fine: a small request still works
        assert (await client.get("/graph/stats")).status_code == 200
