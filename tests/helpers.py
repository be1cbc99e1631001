"""Test helpers: ports, waiting, events, configs and a real agent subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
import msgspec
import psutil
from websockets.sync.client import connect

from edge_agent.config import Config, load_config_bytes
from edge_agent.provision.client import challenge_request, renew_request
from edge_agent.provision.identity import Identity, from_b64, possession_message
from edge_agent.sync.frames import Challenge, Hello, Proof, Welcome, decode_frame, encode_frame

FIXTURES = Path(__file__).parent / "fixtures"
#: An HS256 secret long enough for the config loader (32 bytes or more).
JWT_SECRET = "test-secret-0123456789abcdef0123456789"


#: Ports free_port handed out in this process: the kernel may offer a port it just
#: handed out again once its socket is closed, and a test asking for several (a
#: cluster's nine) would then give two listeners the same one.
_handed_out: set[int] = set()


def load_script(path: str, name: str) -> ModuleType:
    """The repository's file ``path`` (a script or plugin, not in a package) as module
    ``name``, loaded by path: putting its directory on ``sys.path`` would let its
    neighbours' names (bench/'s sync, hub, common, ...) shadow other modules."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago, never the same one twice."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def event(entity_id: str, entity_type: str = "drone", **properties: Any) -> dict[str, Any]:
    """A minimal valid entity event."""
    return {"entity_id": entity_id, "entity_type": entity_type, "properties": properties}


def ndjson(events: list[dict[str, Any]]) -> bytes:
    """Events as NDJSON bytes."""
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


#: Every scope: what the tests' tokens grant unless a test says otherwise.
ALL_SCOPES = "read write admin"


def token(
    secret: str = JWT_SECRET, *, issuer: str = "semstreams", ttl: float = 300, **claims: Any
) -> str:
    """An HS256 JWT from ``issuer`` expiring in ``ttl`` seconds with every scope;
    ``claims`` override or add (``scope=None`` leaves the claim out)."""
    payload: dict[str, Any] = {
        "iss": issuer,
        "exp": int(time.time() + ttl),
        "scope": ALL_SCOPES,
        **claims,
    }
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


def bearer(raw: str | None = None, **kwargs: Any) -> dict[str, str]:
    """An ``Authorization: Bearer`` header with ``raw`` or a fresh :func:`token`."""
    return {"authorization": f"Bearer {raw if raw is not None else token(**kwargs)}"}


def config_dict(state_dir: Path, **sections: Any) -> dict[str, Any]:
    """A loopback-only agent config on free ports, with ``sections`` merged on top."""
    raw: dict[str, Any] = {
        "state_dir": str(state_dir),
        "platform": {"id": "test-edge"},
        "nats": {"port": free_port(), "jetstream": {"max_bytes": "256MB"}},
        "services": {"service-manager": {"config": {"http_port": free_port()}}},
        "logging": {"level": "INFO", "format": "json", "output": "stderr"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def make_config(state_dir: Path, **sections: Any) -> Config:
    """A loaded :class:`Config` from :func:`config_dict`."""
    return load_config_bytes(json.dumps(config_dict(state_dir, **sections)).encode())


def wait_until(
    check: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.1
) -> float:
    """Poll ``check`` until it is true, or fail naming ``what``; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(interval)
    return time.monotonic() - start


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll an async predicate until it is true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_json(
    url: str,
    data: bytes | None = None,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
    method: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """GET (or POST ``data``, or ``method``) and decode the JSON reply, whatever the status."""
    method = method or ("POST" if data is not None else "GET")
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class AgentProcess:
    """``edge-agent run`` (or ``cloud-hub run``) as a real child process, for kill -9 tests.

    Args:
        config: the config, written to ``<workdir>/<name>.json``.
        workdir: where the config and the log go.
        program: the CLI module to run: ``edge_agent.cli`` or ``cloud_hub.cli``.
        name: names the config and log files, so several processes share a workdir.
        env: extra environment variables for the child (e.g. ``NOTIFY_SOCKET``).
    """

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        *,
        program: str = "edge_agent.cli",
        name: str = "agent",
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.env = env or {}
        self.program = program
        self.config_path = workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        tls = config.get("services", {}).get("service-manager", {}).get("config", {}).get("tls")
        #: Trusts the API's own (self-signed) certificate when it speaks HTTPS.
        self.context = ssl.create_default_context(cafile=tls["cert_file"]) if tls else None

    @property
    def api(self) -> str:
        """The agent's API base URL."""
        port = self.config["services"]["service-manager"]["config"]["http_port"]
        return f"{'https' if self.context else 'http'}://127.0.0.1:{port}"

    @property
    def nats_url(self) -> str:
        """The embedded nats-server's URL."""
        return f"nats://127.0.0.1:{self.config['nats']['port']}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the agent and wait until ``/health`` answers."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.program, "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.log_path.read_text()[-2000:]}")
            try:
                status, _ = http_json(f"{self.api}/health", timeout=1, context=self.context)
                if status in (200, 503):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent not up in {timeout}s: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """``kill -9`` the agent, reap it, and wait for its embedded nats-server to exit.

        The kernel sends the server SIGTERM when the agent dies (``PR_SET_PDEATHSIG``); it
        still writes its store for a moment, which a test that then damages or removes
        the state directory would race (``rmtree``: Directory not empty).
        """
        assert self.proc is not None
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:  # it died already: reaped below
            children = []
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"still running after the agent was killed: {alive}"

    def stop(self) -> int:
        """SIGTERM, wait, return the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        return self.proc.wait(30)

    def stats(self) -> dict[str, Any]:
        """``GET /graph/stats``."""
        status, body = http_json(f"{self.api}/graph/stats")
        assert status == 200, body
        result: dict[str, Any] = body
        return result


async def cli(
    *args: str, stdin: bytes = b"", program: str = "edge_agent.cli"
) -> tuple[int, str, str]:
    """Run ``edge-agent ARGS`` (or ``program``'s CLI) in a child process; (exit code,
    stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        program,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def post_oversized(url: str, *, declared: int | None, send: int = 256 << 10) -> tuple[int, Any]:
    """POST ``send`` bytes of body to ``url`` on a raw socket, with ``Content-Length:
    declared`` (``None``: chunked, no length), and read the answer even when the server
    answers before the body is all sent (a server refusing a large body does just that,
    which breaks the pipe of clients that insist on sending it all first)."""
    parts = urllib.parse.urlsplit(url)
    length = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\n{length}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode())
        piece = b" " * 4096
        with contextlib.suppress(OSError):  # the server may have answered and closed
            for _ in range(send // len(piece)):
                chunk = piece if declared is not None else b"1000\r\n" + piece + b"\r\n"
                sock.sendall(chunk)
        answer = b""
        with contextlib.suppress(OSError):
            while part := sock.recv(65536):
                answer += part
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body or b"null")


def sync_hello(
    ws_url: str, device_id: str, credential: str, key: Identity | None = None
) -> Welcome:
    """Say hello on the sync link at ``ws_url`` as ``device_id``; the hub's Welcome.

    A hub that challenges the credential's device key gets a Proof signed by ``key``
    (without one: an empty Proof, as an attacker holding only the credential sends).
    """
    with connect(ws_url, proxy=None) as ws:
        ws.send(encode_frame(Hello(edge_id=device_id, token=credential)))
        frame = decode_frame(_as_bytes(ws.recv(timeout=5)), max_bytes=1 << 20)
        if isinstance(frame, Challenge):
            message = possession_message("hello", frame.nonce, device_id)
            ws.send(encode_frame(Proof(signature=key.sign(message) if key else b"")))
            frame = decode_frame(_as_bytes(ws.recv(timeout=5)), max_bytes=1 << 20)
    assert isinstance(frame, Welcome), frame
    return frame


def renew(api: str, device_id: str, credential: str, key: Identity) -> tuple[int, Any]:
    """``/enrol/renew`` with ``credential``, proving ``key`` over a fresh hub nonce."""
    challenge, _ = challenge_request(key, device_id)
    status, answer = http_json(f"{api}/enrol/challenge", msgspec.json.encode(challenge))
    assert status == 200, answer
    request, _ = renew_request(key, device_id, from_b64(answer["hub_nonce"]))
    headers = {"authorization": f"Bearer {credential}"}
    return http_json(f"{api}/enrol/renew", msgspec.json.encode(request), headers=headers)


def _as_bytes(message: str | bytes) -> bytes:
    return message.encode() if isinstance(message, str) else message
