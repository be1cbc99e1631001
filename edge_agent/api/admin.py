"""Admin views: export and import the graph, change settings at run time.

``POST /admin/export`` streams JSONL from one consistent snapshot in constant memory.
``POST /admin/import`` reads NDJSON records as they arrive and applies them on the
single writer thread, a few hundred per transaction; importing the same records twice
changes nothing. ``POST /admin/config`` applies run-time settings at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import msgspec
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from edge_agent.api.views import (
    AgentServices,
    agent_of,
    error,
    json_response,
    read_body,
    service_of,
)
from edge_agent.errors import ConfigError, EventError
from edge_agent.graph.records import EntityRecord, export_records
from edge_agent.model import check_id

__all__ = ["admin_config", "admin_export", "admin_import"]

_IMPORT_BATCH = 500
_MAX_LINE_BYTES = 16 << 20
_MAX_REPORTED = 100
_record_decoder = msgspec.json.Decoder(EntityRecord)
_encoder = msgspec.json.Encoder()


class ExportRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /admin/export``."""

    entity_type: str | None = None
    format: Literal["jsonl"] = "jsonl"


async def admin_export(request: Request) -> Response:
    """``POST /admin/export`` ``{"entity_type": "drone", "format": "jsonl"}``: a JSONL stream."""
    try:
        spec = msgspec.json.decode(await read_body(request) or b"{}", type=ExportRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error(400, f"bad export request: {exc}")
    store = service_of(request).store

    def lines() -> Iterator[bytes]:
        with store.snapshot() as db:
            for record in export_records(db, spec.entity_type):
                yield _encoder.encode(record) + b"\n"

    return StreamingResponse(iterate_in_threadpool(lines()), media_type="application/x-ndjson")


class _ImportTally:
    def __init__(self) -> None:
        self.applied = 0
        self.unchanged = 0
        self.rejected = 0
        self.errors: list[dict[str, Any]] = []

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < _MAX_REPORTED:
            self.errors.append({"line": line, "reason": reason})

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "errors": self.errors,
        }


async def admin_import(request: Request) -> Response:
    """``POST /admin/import`` with NDJSON records: counts of applied, unchanged, rejected."""
    agent = agent_of(request)
    tally = _ImportTally()
    batch: list[EntityRecord] = []
    try:
        async for number, line in _lines(request.stream()):
            record = _decode_record(line)
            if isinstance(record, str):
                tally.reject(number, record)
                continue
            batch.append(record)
            if len(batch) >= _IMPORT_BATCH:
                await _import(agent, batch, tally)
                batch = []
    except _LineTooLong:
        await _import(agent, batch, tally)
        return json_response({**tally.as_json(), "error": "a line is over 16 MiB"}, 413)
    await _import(agent, batch, tally)
    status = 400 if tally.rejected and not (tally.applied or tally.unchanged) else 200
    return json_response(tally.as_json(), status)


def _decode_record(line: bytes) -> EntityRecord | str:
    """The record on one line, or why it is refused."""
    try:
        record = _record_decoder.decode(line)
        check_id(record.entity_id, "entity_id")
    except (msgspec.ValidationError, msgspec.DecodeError, EventError) as exc:
        return str(exc)
    return record


class _LineTooLong(ValueError):
    """An import line over the limit."""


async def _import(agent: AgentServices, batch: list[EntityRecord], tally: _ImportTally) -> None:
    if not batch:
        return
    result = await agent.write(agent.store.import_records, batch)
    agent.querier.invalidate(result.touched)
    tally.applied += result.applied
    tally.unchanged += result.unchanged


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """Non-empty lines with their 1-based numbers, as the body arrives."""
    pending = b""
    number = 0
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            number += 1
            if line.strip():
                yield number, line
        if len(pending) > _MAX_LINE_BYTES:
            raise _LineTooLong
    if pending.strip():
        yield number + 1, pending


async def admin_config(request: Request) -> Response:
    """``POST /admin/config`` ``{"graph.workers": 16}``; ``GET`` shows the current values."""
    agent = agent_of(request)
    if request.method == "GET":
        return json_response(agent.runtime_settings())
    try:
        changes = msgspec.json.decode(await read_body(request) or b"{}", type=dict[str, Any])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error(400, f"expected a JSON object of settings: {exc}")
    try:
        current = await agent.change_settings(changes)
    except ConfigError as exc:
        return error(400, str(exc))
    return json_response({"applied": changes, "settings": current})
