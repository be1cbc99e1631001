"""The seed's 3-node NATS cluster for real: three nats-servers on loopback, configured by
:mod:`cloud_hub.cluster`, and an R3 stream that survives a ``kill -9`` of its leader.

What the hub relies on when it scales past one machine (ARCHITECTURE §6): an acked
append is on a quorum, so losing the leader loses nothing acked; publishing resumes once
the two survivors elect a new leader; and the killed server catches up when it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from tests.cluster import NatsCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

STREAM = "ORDERS"
#: Raft's election timeout in nats-server is randomised between 4 s and 9 s, then a vote
#: (a split one is retried within 0.8 s); a publisher must be acked again within this bound
#: after the stream leader dies, with room for a slow machine.
FAILOVER_BOUND_S = 20.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    async with NatsCluster(tmp_path) as running:
        yield running


async def publish_until_acked(
    js: JetStreamContext, msg_id: str, deadline: float
) -> tuple[int, bool]:
    """Publish ``msg_id`` (retrying the same id) until acked; (stream seq, was retried)."""
    retried = False
    while True:
        try:
            ack = await js.publish(
                f"orders.{msg_id}", msg_id.encode(), timeout=0.5, headers={"Nats-Msg-Id": msg_id}
            )
            return ack.seq, retried
        except (NatsTimeoutError, NoRespondersError, NoStreamResponseError, APIError):
            if time.monotonic() > deadline:
                raise
            retried = True
            await asyncio.sleep(0.05)


async def stored_ids(js: JetStreamContext) -> list[str]:
    """The ``Nats-Msg-Id`` of every message in the stream, in sequence order."""
    info = await js.stream_info(STREAM)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(STREAM, seq)
        ids.append((msg.headers or {})["Nats-Msg-Id"])
    return ids


def local_stream_state(cluster: NatsCluster, index: int) -> dict[str, Any]:
    """``STREAM``'s state in node ``index``'s own store (from its ``/jsz``)."""
    report = cluster.jsz(index, accounts="true", streams="true")
    for account in report.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream["name"] == STREAM:
                state: dict[str, Any] = stream["state"]
                return state
    return {}


async def test_three_nodes_form_one_cluster_with_one_meta_leader(cluster: NatsCluster) -> None:
    views = [cluster.jsz(index)["meta_cluster"] for index in range(3)]
    assert {view["name"] for view in views} == {"semstreams-cluster"}
    assert {view["cluster_size"] for view in views} == {3}
    assert len({view["leader"] for view in views}) == 1
    for index, view in enumerate(views):
        peers = {peer["name"] for peer in view["replicas"]}
        assert peers == set(cluster.names) - {cluster.names[index]}


async def test_r3_stream_loses_no_acked_message_when_its_leader_is_killed(
    cluster: NatsCluster,
) -> None:
    admin = await nats.connect(servers=cluster.urls)
    publisher: Client | None = None
    try:
        js_admin = admin.jetstream(timeout=5)
        await js_admin.add_stream(
            StreamConfig(
                name=STREAM, subjects=["orders.>"], num_replicas=3, storage=StorageType.FILE
            )
        )
        leader = await cluster.stream_leader(STREAM)
        # The publisher sits on a follower, so what is measured is the election, not
        # the client's own reconnection.
        followers = [cluster.url(i) for i in range(3) if i != leader]
        publisher = await nats.connect(
            servers=followers, dont_randomize=True, max_reconnect_attempts=-1
        )
        js = publisher.jetstream(timeout=2)
        acked: dict[str, int] = {}
        for n in range(200):
            seq, _ = await publish_until_acked(js, f"before-{n}", time.monotonic() + 5)
            acked[f"before-{n}"] = seq

        cluster.kill9(leader)
        killed_at = time.monotonic()
        resumed_after: float | None = None
        for n in range(200):
            msg_id = f"during-{n}"
            seq, _ = await publish_until_acked(js, msg_id, killed_at + FAILOVER_BOUND_S)
            acked[msg_id] = seq
            if resumed_after is None:
                resumed_after = time.monotonic() - killed_at
        assert resumed_after is not None and resumed_after < FAILOVER_BOUND_S
        new_leader = await cluster.stream_leader(STREAM)
        assert new_leader != leader
        print(
            f"\nstream leader {cluster.names[leader]} killed; publishing resumed after "
            f"{resumed_after:.2f}s on {cluster.names[new_leader]}"
        )

        ids = await stored_ids(js)
        assert len(ids) == len(set(ids)), "a retried publish was stored twice"
        assert set(acked) <= set(ids), f"acked but lost: {sorted(set(acked) - set(ids))[:10]}"

        restarted_at = time.monotonic()
        cluster.restart(leader)
        expected = await js.stream_info(STREAM)

        async def caught_up() -> bool:
            info = await js.stream_info(STREAM)
            assert info.cluster is not None
            replica = {peer.name: peer for peer in info.cluster.replicas or []}.get(
                cluster.names[leader]
            )
            if replica is None or not replica.current or (replica.lag or 0) != 0:
                return False
            state = await asyncio.to_thread(local_stream_state, cluster, leader)
            return state.get("last_seq") == expected.state.last_seq

        deadline = time.monotonic() + 20
        while not await caught_up():
            assert time.monotonic() < deadline, "the restarted node did not catch up in 20s"
            await asyncio.sleep(0.1)
        print(
            f"{cluster.names[leader]} restarted and caught up in "
            f"{time.monotonic() - restarted_at:.2f}s"
        )
        state = local_stream_state(cluster, leader)
        assert state["messages"] == expected.state.messages == len(acked)
    finally:
        if publisher is not None:
            await publisher.close()
        await admin.close()
