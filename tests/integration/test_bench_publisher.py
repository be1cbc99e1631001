"""The ingest benchmark's bulk JetStream publisher (``bench/publisher.py``) counts every
message: acked only on a PubAck naming a stream and sequence, refused on an error or a
status, missing when nothing answers. The benchmark's figures rest on these counts."""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg

from edge_agent.app import Agent
from tests.helpers import load_script

publish_messages = load_script("bench/publisher.py", "bench_publisher").publish_messages


async def test_every_message_is_acked_refused_or_missing(agent: Agent, nats_client: Client) -> None:
    assert agent.nats_server is not None
    url = agent.nats_server.url

    async def answer(msg: Msg) -> None:
        if msg.subject == "answers.garbage":
            await msg.respond(b"garbage")  # answered, but not a PubAck

    # A core subscriber that answers one subject with garbage and another not at all.
    await nats_client.subscribe("answers.>", cb=answer)
    await nats_client.flush()
    event = b'{"entity_id": "drone-%d", "entity_type": "drone", "properties": {"n": 1}}'
    messages = [(b"events.graph.entity.drone", event % n) for n in range(300)]
    messages += [(b"answers.garbage", b"{}")] * 2
    messages += [(b"answers.silent", b"{}")] * 3
    messages += [(b"nobody.listens", b"{}")] * 4

    result = await publish_messages(url, messages, window=50, stall_s=1.0)

    assert result["published"] == 309
    assert result["acked"] == 300
    assert result["refused"] == 6 and result["missing"] == 3 and result["failed"] == 9
    assert result["errors"]["status 503"] == 4
    assert sum(result["errors"].values()) == 6
    assert result["unexpected"] == 0
    info = await nats_client.jetstream().stream_info("GRAPH_ENTITIES")
    assert info.state.last_seq >= 300
