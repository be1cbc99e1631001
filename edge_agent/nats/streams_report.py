"""What ``edge-agent stream-info`` prints: JetStream streams and their consumers as text.

The seed's runbooks read ``nats stream ls`` and ``nats stream info GRAPH_ENTITIES``
(the Go ``nats`` CLI, which an appliance does not ship). These functions render the
same facts from nats-py's API objects, without I/O, so the runbooks work with the
agent alone and the layout is tested without a server.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from nats.js.api import ConsumerInfo, SequenceInfo, StreamInfo

__all__ = ["stream_detail", "stream_list"]


def _size(count: int | None) -> str:
    """Bytes in the units the Go CLI uses (1024-based, one decimal)."""
    value = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _limit(value: int | float | None, render: str) -> str:
    return "unlimited" if value is None or value <= 0 else render


def _name(value: object) -> str:
    """An enum's value; nats-py leaves some as the server's strings."""
    return str(getattr(value, "value", value) or "")


def _created(info: StreamInfo | ConsumerInfo) -> str:
    created = info.created
    if isinstance(created, datetime.datetime):
        return created.isoformat(timespec="seconds")
    return str(created or "")


def stream_list(streams: Sequence[StreamInfo]) -> str:
    """A table of streams: name, subjects, messages, bytes, consumers."""
    rows = [("Name", "Subjects", "Messages", "Size", "Consumers")]
    for info in sorted(streams, key=lambda item: item.config.name or ""):
        rows.append(
            (
                info.config.name or "",
                ", ".join(info.config.subjects or []),
                f"{info.state.messages:,}",
                _size(info.state.bytes),
                str(info.state.consumer_count),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
    return "\n".join(line.rstrip() for line in lines)


def _fields(title: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in pairs)
    return ["", title, *(f"  {label.rjust(width)}: {value}" for label, value in pairs)]


def stream_detail(info: StreamInfo, consumers: Sequence[ConsumerInfo]) -> str:
    """One stream's configuration, state and consumers (with their pending counts)."""
    config, state = info.config, info.state
    max_age = config.max_age or 0
    lines = [f"Information for Stream {config.name} created {_created(info)}"]
    lines += _fields(
        "Configuration:",
        [
            ("Subjects", ", ".join(config.subjects or [])),
            ("Retention", _name(config.retention)),
            ("Storage", _name(config.storage)),
            ("Replicas", str(config.num_replicas)),
            ("Discard Policy", _name(config.discard)),
            ("Maximum Messages", _limit(config.max_msgs, f"{config.max_msgs:,}")),
            ("Maximum Bytes", _limit(config.max_bytes, _size(config.max_bytes))),
            ("Maximum Age", _limit(max_age, f"{max_age:g}s")),
            ("Maximum Message Size", _limit(config.max_msg_size, _size(config.max_msg_size))),
        ],
    )
    lines += _fields(
        "State:",
        [
            ("Messages", f"{state.messages:,}"),
            ("Bytes", _size(state.bytes)),
            ("First Sequence", f"{state.first_seq:,}"),
            ("Last Sequence", f"{state.last_seq:,}"),
            ("Deleted Messages", f"{state.num_deleted or 0:,}"),
            ("Active Consumers", str(state.consumer_count)),
        ],
    )
    for consumer in sorted(consumers, key=lambda item: item.name or ""):
        lines += _fields(
            f"Consumer {consumer.name}:",
            [
                ("Unprocessed Messages", f"{consumer.num_pending or 0:,}"),
                ("Unacknowledged Messages", f"{consumer.num_ack_pending or 0:,}"),
                ("Redelivered Messages", f"{consumer.num_redelivered or 0:,}"),
                ("Last Delivered Sequence", _sequence(consumer.delivered)),
                ("Acknowledged Floor", _sequence(consumer.ack_floor)),
            ],
        )
    return "\n".join(lines)


def _sequence(point: SequenceInfo | None) -> str:
    return f"{point.stream_seq:,}" if point and point.stream_seq is not None else "0"
