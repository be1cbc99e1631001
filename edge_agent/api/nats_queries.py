"""Graph queries over NATS request/reply: ``graph.query.<name>`` with the HTTP API's JSON.

The reply body is exactly what ``POST /graph/query/<name>`` answers; the ``Status``
header carries the HTTP status code (200, 400, 404 …).
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edge_agent.graph.querier import Querier
from edge_agent.nats.subjects import QUERY_QUEUE_GROUP, QUERY_SUBJECTS

__all__ = ["serve_queries"]


async def serve_queries(nc: Client, querier: Querier) -> Subscription:
    """Answer ``graph.query.*`` requests until the subscription is drained."""

    async def answer(msg: Msg) -> None:
        if not msg.reply:
            return
        name = msg.subject.rsplit(".", 1)[-1]
        status, body = await asyncio.to_thread(querier.handle, name, msg.data)
        await nc.publish(msg.reply, body, headers={"Status": str(status)})

    return await nc.subscribe(QUERY_SUBJECTS, queue=QUERY_QUEUE_GROUP, cb=answer)
