"""The text of ``edge-agent stream-info``, from API answers as nats-server sends them."""

from __future__ import annotations

from typing import Any

from nats.js.api import ConsumerInfo, StreamInfo

from edge_agent.nats.streams_report import stream_detail, stream_list


def _stream(name: str, messages: int, size: int, **config: Any) -> StreamInfo:
    return StreamInfo.from_response(
        {
            "config": {
                "name": name,
                "subjects": [f"{name.lower()}.>"],
                "retention": "workqueue",
                "storage": "file",
                "discard": "new",
                "num_replicas": 1,
                "max_msgs": -1,
                "max_age": 0,
                **config,
            },
            "state": {
                "messages": messages,
                "bytes": size,
                "first_seq": 41,
                "last_seq": 40 + messages,
                "consumer_count": 1,
            },
            "created": "2026-12-05T01:00:00Z",
        }
    )


def _consumer(name: str, pending: int, unacked: int) -> ConsumerInfo:
    return ConsumerInfo.from_response(
        {
            "name": name,
            "stream_name": "GRAPH_ENTITIES",
            "created": "2026-12-05T01:00:00Z",
            "config": {"durable_name": name},
            "delivered": {"consumer_seq": 90, "stream_seq": 1_234_567},
            "ack_floor": {"consumer_seq": 80, "stream_seq": 1_234_000},
            "num_ack_pending": unacked,
            "num_redelivered": 2,
            "num_waiting": 0,
            "num_pending": pending,
        }
    )


def test_detail_shows_limits_state_and_each_consumers_backlog() -> None:
    info = _stream("GRAPH_ENTITIES", 2_500, 3 * 1024 * 1024, max_bytes=1 << 30)
    text = stream_detail(info, [_consumer("graph-b", 7, 3), _consumer("graph-a", 12_000, 5)])
    lines = text.splitlines()
    assert lines[0].startswith("Information for Stream GRAPH_ENTITIES created ")
    assert "      Retention: workqueue" in text
    assert "Maximum Bytes: 1.0 GiB" in text
    assert "Maximum Messages: unlimited" in text
    assert "Maximum Age: unlimited" in text
    assert "      Messages: 2,500" in text
    assert "Bytes: 3.0 MiB" in text
    assert "Last Sequence: 2,540" in text
    # Consumers in name order, each with what it has not yet processed or acked.
    assert text.index("Consumer graph-a:") < text.index("Consumer graph-b:")
    assert "Unprocessed Messages: 12,000" in text
    assert "Unacknowledged Messages: 5" in text
    assert "Last Delivered Sequence: 1,234,567" in text
    assert "Acknowledged Floor: 1,234,000" in text


def test_labels_line_up_within_each_section() -> None:
    text = stream_detail(_stream("S", 1, 10), [])
    state = text.split("State:\n")[1].splitlines()
    assert len({line.index(":") for line in state}) == 1


def test_list_is_a_table_sorted_by_name() -> None:
    text = stream_list([_stream("ZED", 3, 100), _stream("ALPHA", 1_000, 2048)])
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["Name", "Subjects", "Messages", "Size", "Consumers"]
    assert rows[1] == ["ALPHA", "alpha.>", "1,000", "2.0", "KiB", "1"]
    assert rows[2] == ["ZED", "zed.>", "3", "100", "B", "1"]
