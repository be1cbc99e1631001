"""The delivery connection's NATS protocol parser: bytes in, deliveries out, no sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_agent.nats.wire import (
    Delivery,
    Reply,
    WireError,
    WireParser,
    ack_commands,
    connect_command,
    pub_ack_error,
    pub_command,
    stored_at_ns,
    stream_sequence,
    sub_command,
)

ACK = b"$JS.ACK.GRAPH_ENTITIES.graph-a-all.1.%d.%d.1796426540724808790.0"


def msg(seq: int, payload: bytes, subject: bytes = b"events.graph.entity.drone") -> bytes:
    reply = ACK % (seq, seq)
    return b"MSG %s 1 %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)


def hmsg(seq: int, headers: bytes, payload: bytes) -> bytes:
    reply = ACK % (seq, seq)
    total = len(headers) + len(payload)
    head = b"HMSG events.graph.entity.drone 1 %s %d %d\r\n" % (reply, len(headers), total)
    return head + headers + payload + b"\r\n"


def test_messages_split_anywhere_come_out_whole_and_in_order() -> None:
    stream = b"".join(msg(seq, b'{"n": %d, "crlf": "\\r\\n"}' % seq) for seq in range(1, 40))
    stream += b"PING\r\n" + msg(40, b"") + b"PONG\r\n"
    for step in (1, 7, 64, len(stream)):
        parser = WireParser()
        deliveries: list[Delivery] = []
        pings = pongs = 0
        for start in range(0, len(stream), step):
            events = parser.feed(stream[start : start + step])
            deliveries += events.deliveries
            pings += events.pings
            pongs += events.pongs
        assert [stream_sequence(d.reply) for d in deliveries] == list(range(1, 41))
        assert deliveries[0] == Delivery(
            "events.graph.entity.drone", ACK % (1, 1), b'{"n": 1, "crlf": "\\r\\n"}'
        )
        assert deliveries[-1].data == b""
        assert (pings, pongs) == (1, 1)


def test_a_payload_holding_crlf_and_protocol_words_is_data() -> None:
    payload = b"MSG x 1 3\r\nPING\r\n-ERR 'no'\r\n"
    events = WireParser().feed(msg(5, payload))
    assert [d.data for d in events.deliveries] == [payload]


def test_headers_are_stripped_and_status_messages_are_not_deliveries() -> None:
    headers = b"NATS/1.0\r\nNats-Msg-Id: abc\r\n\r\n"
    status = b"NATS/1.0 100 Idle Heartbeat\r\n\r\n"
    heartbeat = b"HMSG _INBOX.x 1 %d %d\r\n%s\r\n" % (len(status), len(status), status)
    plain = b"MSG _INBOX.x 1 2\r\nhi\r\n"
    events = WireParser().feed(hmsg(3, headers, b"{}") + heartbeat + plain)
    assert events.deliveries == [Delivery("events.graph.entity.drone", ACK % (3, 3), b"{}")]


def test_info_is_read_and_errors_raise() -> None:
    events = WireParser().feed(b'INFO {"nonce": "abc", "tls_required": false}\r\n+OK\r\n')
    assert events.info == {"nonce": "abc", "tls_required": False}
    with pytest.raises(WireError, match="Authorization Violation"):
        WireParser().feed(b"-ERR 'Authorization Violation'\r\n")
    with pytest.raises(WireError, match="unexpected"):
        WireParser().feed(b"BOGUS\r\n")


def test_commands() -> None:
    assert sub_command("_INBOX.abc", 1) == b"SUB _INBOX.abc 1\r\n"
    assert ack_commands([b"r1", b"r2"]) == b"PUB r1 0\r\n\r\nPUB r2 0\r\n\r\n"
    plain = connect_command({}, name="graph")
    assert plain.startswith(b"CONNECT {") and plain.endswith(b"}\r\n")
    assert b'"nkey"' not in plain
    signed = connect_command({"nonce": "n0"}, name="g", nkey="UABC", sign=lambda n: n + b"!")
    assert b'"nkey": "UABC"' in signed and b'"sig": "bjAh"' in signed  # base64 of b"n0!"


def test_stream_sequence_reads_both_ack_subject_forms() -> None:
    assert stream_sequence(ACK % (7, 3)) == 7
    v2 = b"$JS.ACK.hub.ACCHASH.GRAPH_ENTITIES.c.1.42.9.1796426540724808790.0.tok"
    assert stream_sequence(v2) == 42
    with pytest.raises(WireError):
        stream_sequence(b"_INBOX.x")


def test_the_stored_time_reads_both_ack_subject_forms() -> None:
    assert stored_at_ns(ACK % (7, 3)) == 1796426540724808790
    v2 = b"$JS.ACK.hub.ACCHASH.GRAPH_ENTITIES.c.1.42.9.1796426540724808791.0.tok"
    assert stored_at_ns(v2) == 1796426540724808791


def test_the_parser_imports_no_io() -> None:
    code = (
        "import sys, edge_agent.nats.wire; "
        "print(sorted({'asyncio', 'socket', 'ssl', 'nats'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


INBOX = b"_INBOX.pub1."


def test_inbox_messages_are_replies_with_their_headers() -> None:
    ack = b'{"stream":"GRAPH_ENTITIES","seq":7}'
    status = b"NATS/1.0 503\r\n\r\n"
    stream = (
        b"MSG _INBOX.pub1.0 1 %d\r\n%s\r\n" % (len(ack), ack)
        + b"HMSG _INBOX.pub1.1 1 %d %d\r\n%s\r\n" % (len(status), len(status), status)
        + msg(9, b"{}")
        + b"MSG _INBOX.other.2 1 2\r\nhi\r\n"
    )
    for step in (1, 5, len(stream)):
        parser = WireParser(inbox=INBOX)
        replies: list[Reply] = []
        deliveries: list[Delivery] = []
        for start in range(0, len(stream), step):
            events = parser.feed(stream[start : start + step])
            replies += events.replies
            deliveries += events.deliveries
        assert replies == [
            Reply(b"_INBOX.pub1.0", b"", ack),
            Reply(b"_INBOX.pub1.1", status, b""),
        ]
        assert [stream_sequence(d.reply) for d in deliveries] == [9]
    # Without an inbox prefix the same bytes hold no replies.
    assert WireParser().feed(stream).replies == []


def test_pub_command_is_parsed_back_by_a_server_side_reading() -> None:
    payload = b'{"a": "x\r\ny"}'
    command = pub_command(b"events.graph.entity.drone", b"_INBOX.pub1.42", payload)
    head, rest = command.split(b"\r\n", 1)
    assert head == b"PUB events.graph.entity.drone _INBOX.pub1.42 %d" % len(payload)
    assert rest == payload + b"\r\n"


def test_pub_ack_error_accepts_only_a_stored_message() -> None:
    def reply(data: bytes, headers: bytes = b"") -> Reply:
        return Reply(b"_INBOX.pub1.0", headers, data)

    assert pub_ack_error(reply(b'{"stream":"S","seq":1}')) is None
    assert pub_ack_error(reply(b'{"stream":"S","seq":3,"duplicate":true}')) is None
    refused = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
    assert pub_ack_error(reply(refused)) == "10077: maximum messages exceeded"
    assert pub_ack_error(reply(b"", b"NATS/1.0 503\r\n\r\n")) == "status 503"
    assert pub_ack_error(reply(b"nope")) is not None
    assert pub_ack_error(reply(b"{}")) is not None  # no stream, no sequence
    # A header block without a status is not a refusal by itself.
    assert pub_ack_error(reply(b'{"stream":"S","seq":2}', b"NATS/1.0\r\nX: y\r\n\r\n")) is None
