"""A hostile relay on the LAN, for tests: it forwards, records, rewrites, then attacks.

``python -m tests.relay forward LISTEN_PORT TARGET_HOST TARGET_PORT RECORD_DIR [OLD NEW]``
forwards TCP to the target, appending every byte to ``RECORD_DIR/up`` (client → target)
and ``RECORD_DIR/down`` (target → client); with OLD and NEW it replaces OLD by NEW in
what flows down (a relay rewriting the hub's answers).

``python -m tests.relay attack HUB_URL RECORD_DIR`` plays the relay afterwards, from its
own namespace and with its own key, using only what it recorded: it enrols its own key
with the device's claim proof, replays the device's enrolment, and says hello and
renews with the device's credential. It prints a JSON object of what each attempt got.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.provision.client import challenge_request, renew_request
from edge_agent.provision.identity import Identity, b64, enrol_message, from_b64
from edge_agent.provision.messages import EnrolRequest
from tests.helpers import sync_hello


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    record: Path,
    swap: tuple[bytes, bytes] | None,
) -> None:
    with record.open("ab") as out:
        while data := await reader.read(65536):
            out.write(data)
            out.flush()
            if swap is not None:
                data = data.replace(*swap)
            writer.write(data)
            await writer.drain()
    writer.close()


async def forward(
    listen: int, host: str, port: int, records: Path, swap: tuple[bytes, bytes] | None
) -> None:
    """Relay every connection on ``listen`` to ``host:port``, recording both directions."""
    records.mkdir(parents=True, exist_ok=True)

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        target_r, target_w = await asyncio.open_connection(host, port)
        await asyncio.gather(
            _pump(client_r, target_w, records / "up", None),
            _pump(target_r, client_w, records / "down", swap),
            return_exceptions=True,
        )

    server = await asyncio.start_server(relay, "0.0.0.0", listen)
    async with server:
        await server.serve_forever()


def _bodies(stream: bytes, start_line: bytes) -> list[bytes]:
    """The bodies of the HTTP messages in ``stream`` whose first line starts so."""
    bodies = []
    for match in re.finditer(re.escape(start_line) + rb"[^\r]*\r\n(.*?)\r\n\r\n", stream, re.S):
        length = re.search(rb"(?i)content-length: *(\d+)", match.group(1))
        end = match.end() + int(length.group(1)) if length else match.end()
        bodies.append(stream[match.end() : end])
    return bodies


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def attack(hub: str, records: Path) -> dict[str, Any]:
    """Everything the relay can try with what it recorded (see the module's doc)."""
    up, down = (records / "up").read_bytes(), (records / "down").read_bytes()
    seen = msgspec.json.decode(_bodies(up, b"POST /enrol HTTP")[0], type=EnrolRequest)
    answers = [json.loads(body) for body in _bodies(down, b"HTTP/1.1 200")]
    stolen = next(a["credential"] for a in answers if a.get("credential"))
    device_id = seen.device_id
    mine = Identity(Ed25519PrivateKey.generate())
    results: dict[str, Any] = {}

    # 1. Enrol its own key under the device's id with the device's claim proof (for a
    #    fresh hub nonce of its own, and for the nonce the device answered).
    challenge, _ = challenge_request(mine, device_id, seen.claim_id)
    _, hub_answer = _post(f"{hub}/enrol/challenge", msgspec.json.encode(challenge))
    for name, hub_nonce in (("own_nonce", hub_answer["hub_nonce"]), ("seen_nonce", seen.hub_nonce)):
        nonce = bytes(32)
        message = enrol_message(
            nonce, from_b64(hub_nonce), device_id, mine.public_key, seen.claim_id
        )
        forged = msgspec.structs.replace(
            seen,
            public_key=b64(mine.public_key),
            nonce=b64(nonce),
            hub_nonce=hub_nonce,
            signature=b64(mine.sign(message)),
        )
        results[f"enrol_own_key_{name}"] = _post(f"{hub}/enrol", msgspec.json.encode(forged))
    # 2. Replay the device's enrolment as it was (its key, its signature).
    results["replay_enrolment"] = _post(f"{hub}/enrol", msgspec.json.encode(seen))
    # 3. Hello with the stolen credential (and with what the replay got): without a
    #    proof, and with its own key's.
    ws = hub.replace("http://", "ws://", 1) + "/edge-sync"
    replayed = results["replay_enrolment"][1].get("credential", "")
    for name, key, credential in (
        ("no_proof", None, stolen),
        ("own_key", mine, stolen),
        ("replayed_credential", mine, replayed),
    ):
        welcome = sync_hello(ws, device_id, credential, key)
        results[f"hello_{name}"] = [welcome.accepted, welcome.reason]
    # 4. Renew with the stolen credential, for a hub nonce bound to the device's (public)
    #    key, signed with its own.
    challenge = msgspec.structs.replace(
        challenge_request(mine, device_id)[0], public_key=seen.public_key
    )
    _, hub_answer = _post(f"{hub}/enrol/challenge", msgspec.json.encode(challenge))
    renewal, _ = renew_request(mine, device_id, from_b64(hub_answer["hub_nonce"]))
    headers = {"authorization": f"Bearer {stolen}"}
    results["renew"] = _post(f"{hub}/enrol/renew", msgspec.json.encode(renewal), headers)
    return results


def main(argv: list[str]) -> None:
    """The command line (see the module's doc)."""
    if argv[0] == "forward":
        swap = (argv[5].encode(), argv[6].encode()) if len(argv) > 6 else None
        asyncio.run(forward(int(argv[1]), argv[2], int(argv[3]), Path(argv[4]), swap))
    else:
        print(json.dumps(attack(argv[1], Path(argv[2]))))


if __name__ == "__main__":
    main(sys.argv[1:])
