"""The hub against hostile or broken edges: bad credentials, bad frames, replayed batches,
and an enrolled edge that tries to overwrite, erase or mask another edge's entity.

A raw WebSocket client speaks to a real hub process frame by frame. Each refusal is
counted, closes only the offending link, and loses nothing another edge sent.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import nats
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from edge_agent.sync.codec import encode_deltas
from edge_agent.sync.frames import (
    Ack,
    Batch,
    EntityDelta,
    Hello,
    Nack,
    Slow,
    Welcome,
    decode_frame,
    encode_frame,
)
from tests.helpers import AgentProcess, http_json, wait_until
from tests.integration.sync_harness import hub_process, metric

pytestmark = pytest.mark.slow

MAX_FRAME = 64 << 10
CLOCK_SKEW_S = 1.0
DAY_MS = 86_400_000
TOKENS = {"edge-a": secrets.token_urlsafe(24), "edge-b": secrets.token_urlsafe(24)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    devices = {edge: {"token": t} for edge, t in TOKENS.items()}
    process = hub_process(
        tmp_path_factory.mktemp("hub"),
        sync_input={
            "max_frame_bytes": MAX_FRAME,
            "devices": devices,
            "slow_threshold": 2,
            "max_clock_skew": f"{CLOCK_SKEW_S}s",
        },
    )
    process.start()
    yield process
    process.stop()


def _connect(hub: AgentProcess) -> ClientConnection:
    return connect(f"ws{hub.api.removeprefix('http')}/edge-sync", compression=None, proxy=None)


def _hello(ws: ClientConnection, edge: str, token: str, acked: int = 0) -> Welcome:
    ws.send(encode_frame(Hello(edge_id=edge, token=token, acked_seq=acked)))
    welcome = decode_frame(ws.recv(timeout=5), max_bytes=1 << 20)  # type: ignore[arg-type]
    assert isinstance(welcome, Welcome)
    return welcome


def _batch(seq: int, *deltas: EntityDelta) -> bytes:
    payload, _ = encode_deltas(deltas, "zstd")
    return encode_frame(Batch(seq=seq, encoding="zstd", count=len(deltas), payload=payload))


def _delta(entity: str, version: int, value: int) -> EntityDelta:
    return EntityDelta(
        entity,
        "drone",
        version,
        1_700_000_000_000 + version,
        3,
        [("battery", value, 1_700_000_000_000 + version, "t")],
    )


def _answer(ws: ClientConnection) -> Ack | Nack:
    frame = decode_frame(ws.recv(timeout=5), max_bytes=1 << 20)  # type: ignore[arg-type]
    assert isinstance(frame, Ack | Nack), frame
    return frame


def _closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    return ws.close_code, ws.close_reason or ""


def _refused(hub: AgentProcess, reason: str) -> float:
    return metric(hub.api, "semstreams_sync_refused_total", f'reason="{reason}"')


@pytest.mark.parametrize(
    ("edge", "token", "reason"),
    [
        ("edge-a", "wrong", "bad credential"),
        ("edge-z", "anything", "unknown device 'edge-z'"),
        ("sync.batches.>", "anything", "edge id 'sync.batches.>' is not allowed"),
        ("hub", "anything", "edge id 'hub' is not allowed"),  # the hub's own id
    ],
)
def test_bad_credentials_are_refused_in_the_welcome(
    hub: AgentProcess, edge: str, token: str, reason: str
) -> None:
    before = _refused(hub, "credentials")
    with _connect(hub) as ws:
        welcome = _hello(ws, edge, token)
        assert (welcome.accepted, welcome.reason) == (False, reason)
        code, _ = _closed_with(ws)
        assert code == 1008
    assert _refused(hub, "credentials") == before + 1
    assert http_json(f"{hub.api}/graph/entities/never")[0] == 404


@pytest.mark.parametrize(
    ("frame", "said"),
    [
        (b"\xc1garbage", "malformed frame"),
        (b"x" * (MAX_FRAME + 1), "over the"),
        (encode_frame(Ack(seq=1)), "unexpected Ack frame"),
        ("a text frame", "text frame"),
    ],
    ids=["garbage", "oversized", "out-of-protocol", "text"],
)
def test_a_bad_frame_closes_only_that_link_with_a_reason(
    hub: AgentProcess, frame: bytes | str, said: str
) -> None:
    before = _refused(hub, "protocol")
    with _connect(hub) as good, _connect(hub) as bad:
        assert _hello(good, "edge-b", TOKENS["edge-b"]).accepted
        assert _hello(bad, "edge-a", TOKENS["edge-a"]).accepted
        bad.send(frame)
        code, reason = _closed_with(bad)
        assert code == 1002 and said in reason
        # The other edge's link is untouched and still makes batches durable.
        hwm = int(http_json(f"{hub.api}/edges")[1][1]["hwm"])
        good.send(_batch(hwm + 1, _delta("B-1", hwm + 1, 7)))
        assert _answer(good) == Ack(seq=hwm + 1)
    assert _refused(hub, "protocol") == before + 1


def test_a_corrupt_payload_closes_the_link_and_applies_nothing(hub: AgentProcess) -> None:
    with _connect(hub) as ws:
        hwm = _hello(ws, "edge-a", TOKENS["edge-a"]).hwm
        ws.send(encode_frame(Batch(seq=hwm + 1, encoding="zstd", count=1, payload=b"\x28\xb5junk")))
        code, reason = _closed_with(ws)
        assert code == 1002 and "corrupt zstd payload" in reason
    with _connect(hub) as ws:
        assert _hello(ws, "edge-a", TOKENS["edge-a"]).hwm == hwm


@pytest.mark.parametrize(
    "hostile_id", ["sync.batches.>", "two words", "x" * 300], ids=["wildcards", "space", "long"]
)
def test_a_batch_with_a_hostile_entity_id_is_refused_before_the_log(
    hub: AgentProcess, hostile_id: str
) -> None:
    with _connect(hub) as ws:
        hwm = _hello(ws, "edge-a", TOKENS["edge-a"]).hwm
        ws.send(_batch(hwm + 1, _delta("fine-1", 1, 1), _delta(hostile_id, 1, 1)))
        code, reason = _closed_with(ws)
        assert code == 1002 and "malformed batch payload" in reason
    with _connect(hub) as ws:
        assert _hello(ws, "edge-a", TOKENS["edge-a"]).hwm == hwm  # never reached the log
    assert http_json(f"{hub.api}/graph/entities/fine-1")[0] == 404


def test_a_replayed_seq_is_acked_and_changes_nothing(hub: AgentProcess) -> None:
    with _connect(hub) as ws:
        hwm = _hello(ws, "edge-a", TOKENS["edge-a"]).hwm
        ws.send(_batch(hwm + 1, _delta("R-1", 1, 50)))
        assert _answer(ws) == Ack(seq=hwm + 1)
    duplicates = metric(hub.api, "semstreams_sync_batches_total", 'direction="duplicate"')
    with _connect(hub) as ws:
        assert _hello(ws, "edge-a", TOKENS["edge-a"]).hwm == hwm + 1
        # The same seq again, now carrying something else: acked, not applied.
        ws.send(_batch(hwm + 1, _delta("R-1", 2, 99)))
        assert _answer(ws) == Ack(seq=hwm + 1)
        # A seq past the next one is refused until the gap is filled.
        ws.send(_batch(hwm + 5, _delta("R-1", 3, 1)))
        answer = _answer(ws)
        assert isinstance(answer, Nack) and answer.reason.startswith("out of order")
    # The graph follows the log (the materialiser): wait for the first batch to show.
    wait_until(
        lambda: http_json(f"{hub.api}/graph/entities/R-1")[0] == 200,
        "the hub to show it",
        timeout=10.0,
        interval=0.05,
    )
    _, entity = http_json(f"{hub.api}/graph/entities/R-1")
    assert (entity["version"], entity["properties"]["battery"]) == (1, 50)
    assert (
        metric(hub.api, "semstreams_sync_batches_total", 'direction="duplicate"') == duplicates + 1
    )


def test_a_hub_that_forgot_batches_resumes_where_the_edge_says_it_was_acked(
    hub: AgentProcess,
) -> None:
    with _connect(hub) as ws:
        hwm = _hello(ws, "edge-b", TOKENS["edge-b"]).hwm
    # As after restoring the hub's graph from an older copy: the edge had more acked.
    with _connect(hub) as ws:
        welcome = _hello(ws, "edge-b", TOKENS["edge-b"], acked=hwm + 10)
        assert welcome.hwm == hwm + 10
        ws.send(_batch(hwm + 11, _delta("F-1", 1, 5)))
        assert _answer(ws) == Ack(seq=hwm + 11)


def test_the_welcome_caps_batches_at_what_the_hub_can_store(hub: AgentProcess) -> None:
    with _connect(hub) as ws:
        welcome = _hello(ws, "edge-b", TOKENS["edge-b"])
    # The frame limit here (64 KiB) is below the NATS message limit (1 MiB).
    assert welcome.max_batch_bytes == MAX_FRAME


def test_a_hub_with_a_long_queue_tells_the_edge_to_slow_down(hub: AgentProcess) -> None:
    with _connect(hub) as ws:
        hwm = _hello(ws, "edge-a", TOKENS["edge-a"]).hwm
        # Many deltas a batch, sent without waiting: the hub's queue passes 2 batches.
        bulk = [_delta(f"S-{i}", 1, i) for i in range(2000)]
        for seq in range(hwm + 1, hwm + 9):
            ws.send(_batch(seq, *bulk[(seq % 4) * 500 : (seq % 4 + 1) * 500]))
        frames = []
        while len([f for f in frames if isinstance(f, Ack)]) < 8:
            frames.append(decode_frame(ws.recv(timeout=10), max_bytes=1 << 20))  # type: ignore[arg-type]
    slows = [f for f in frames if isinstance(f, Slow)]
    assert slows and slows[0].window == 1
    assert [f.seq for f in frames if isinstance(f, Ack)] == list(range(hwm + 1, hwm + 9))


def _send_acked(hub: AgentProcess, edge: str, *deltas: EntityDelta) -> None:
    """One batch of ``deltas`` from ``edge`` on a link of its own, acked by the hub."""
    with _connect(hub) as ws:
        hwm = _hello(ws, edge, TOKENS[edge]).hwm
        ws.send(_batch(hwm + 1, *deltas))
        assert _answer(ws) == Ack(seq=hwm + 1)


def _reading(entity: str, version: int, at_ms: int, battery: float) -> EntityDelta:
    return EntityDelta(entity, "drone", version, at_ms, 3, [("battery", battery, at_ms, "t")])


def _hub_entity(hub: AgentProcess, entity: str) -> dict[str, Any]:
    """The hub's merged view of ``entity`` with each edge's contribution."""
    status, body = http_json(f"{hub.api}/graph/entities/{entity}?provenance=1")
    assert status == 200, body
    return body


def _conflict_kinds(hub: AgentProcess, entity: str) -> dict[str, set[str]]:
    """Per conflict kind recorded for ``entity``, the edges that caused it."""
    _, found = http_json(f"{hub.api}/graph/conflicts?entity_id={entity}")
    kinds: dict[str, set[str]] = {}
    for conflict in found:
        kinds.setdefault(conflict["kind"], set()).add(conflict["edge_id"])
    return kinds


def test_a_compromised_edge_cannot_overwrite_erase_or_mask_another_edges_entity(
    hub: AgentProcess,
) -> None:
    victim = f"B-{secrets.token_hex(4)}"
    now = int(time.time() * 1000)
    _send_acked(hub, "edge-b", _reading(victim, 3, now, battery=80.0))
    wait_until(
        lambda: http_json(f"{hub.api}/graph/entities/{victim}")[0] == 200,
        "the hub to show it",
        timeout=10.0,
        interval=0.05,
    )

    # edge-a has valid credentials and hostile intent: a replace, then a delete.
    takeover = EntityDelta(victim, "drone", 1000, now + 1, 3, replace=True)
    erase = EntityDelta(victim, "drone", 1001, now + 2, 3, deleted=True)
    _send_acked(hub, "edge-a", takeover)
    _send_acked(hub, "edge-a", erase)
    wait_until(
        lambda: "foreign_delete" in _conflict_kinds(hub, victim),
        "the hub to show it",
        timeout=10.0,
        interval=0.05,
    )
    entity = _hub_entity(hub, victim)
    assert entity["properties"] == {"battery": 80.0}, "edge-a erased edge-b's reading"
    assert set(entity["provenance"]) == {"edge-b"}

    # Then a reading stamped a day ahead: the hub clamps it to its own clock plus the
    # allowed skew, so it wins for that long at most, and is listed.
    _send_acked(hub, "edge-a", _reading(victim, 1002, now + DAY_MS, battery=0.0))
    wait_until(
        lambda: "future_timestamp" in _conflict_kinds(hub, victim),
        "the hub to show it",
        timeout=10.0,
        interval=0.05,
    )
    assert _conflict_kinds(hub, victim) == {
        "foreign_delete": {"edge-a"},
        "future_timestamp": {"edge-a"},
    }
    assert _hub_entity(hub, victim)["provenance"]["edge-b"]["properties"] == {"battery": 80.0}
    time.sleep(CLOCK_SKEW_S + 0.5)
    _send_acked(hub, "edge-b", _reading(victim, 4, int(time.time() * 1000), battery=70.0))
    wait_until(
        lambda: _hub_entity(hub, victim)["properties"] == {"battery": 70.0},
        "the hub to show it",
        timeout=10.0,
        interval=0.05,
    )
    assert set(_hub_entity(hub, victim)["provenance"]) == {"edge-a", "edge-b"}


def test_numbers_sqlite_cannot_hold_are_refused_and_never_stall_the_hub(
    hub: AgentProcess,
) -> None:
    # 2**63 does not fit an SQLite INTEGER: stored in the log, it would stop the
    # materialiser (and so every edge's data) on every hub instance.
    huge = EntityDelta("H-1", "drone", 2**63, 1_700_000_000_000, 3, [("b", 1, 2**64 - 1, "t")])
    with _connect(hub) as ws:
        hwm = _hello(ws, "edge-a", TOKENS["edge-a"]).hwm
        ws.send(_batch(hwm + 1, huge))
        code, reason = _closed_with(ws)
        assert code == 1002 and "malformed batch payload" in reason
    # Such a message already in the log (from an older hub) is skipped, not retried forever.
    asyncio.run(_append_raw(hub.nats_url, "edge-b", huge))
    _send_acked(hub, "edge-b", _reading("after-huge", 1, int(time.time() * 1000), battery=5.0))
    wait_until(
        lambda: http_json(f"{hub.api}/graph/entities/after-huge")[0] == 200,
        "the hub to show it",
        timeout=10.0,
        interval=0.05,
    )
    assert http_json(f"{hub.api}/graph/entities/H-1")[0] == 404


async def _append_raw(url: str, edge: str, *deltas: EntityDelta) -> None:
    """Put a batch straight into SYNC_BATCHES, as a hub that did not check it would."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        last = await js.get_last_msg("SYNC_BATCHES", f"sync.batches.{edge}")
        seq = int((last.headers or {})["Semstreams-Seq"]) + 1
        now = int(time.time() * 1000)
        headers = {
            "Semstreams-Edge": edge,
            "Semstreams-Seq": str(seq),
            "Semstreams-Received-Ms": str(now),
            "Semstreams-Ceiling-Ms": str(now + 60_000),
        }
        payload = msgspec.msgpack.encode(list(deltas))
        frame = encode_frame(Batch(seq=seq, encoding="none", count=len(deltas), payload=payload))
        await js.publish(f"sync.batches.{edge}", frame, headers=headers)
    finally:
        await client.close()
