"""Admin views: export and import the graph, change settings at run time.

``POST /admin/export`` streams JSONL from one consistent snapshot in constant memory. A
worker thread reads the snapshot a few chunks ahead of the client and lets go of it when
done, when the client leaves, or at ``graph.config.export_timeout``, whichever comes
first: a snapshot held open keeps SQLite from checkpointing, so a client that stops
reading must not decide how long it is held. One export runs at a time.
``POST /admin/import`` reads NDJSON records as they arrive and applies them on the
single writer thread, a few hundred per transaction; importing the same records twice
changes nothing. ``POST /admin/config`` applies run-time settings at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from edge_agent.api.views import (
    AgentServices,
    agent_of,
    error,
    json_response,
    read_body,
    service_of,
)
from edge_agent.config import Config
from edge_agent.errors import ConfigError, EventError, GraphError
from edge_agent.graph import GraphStore
from edge_agent.graph.database import SnapshotBusy
from edge_agent.graph.records import EntityRecord, export_jsonl
from edge_agent.metrics import Metrics
from edge_agent.model import check_id

__all__ = ["admin_config", "admin_export", "admin_import"]

_IMPORT_BATCH = 500
_MAX_LINE_BYTES = 16 << 20
_MAX_REPORTED = 100
_record_decoder = msgspec.json.Decoder(EntityRecord)
_encoder = msgspec.json.Encoder()
#: Export lines go out in chunks of about this many bytes ...
_CHUNK_BYTES = 64 << 10
#: ... and reading runs at most this many chunks ahead of the client.
_AHEAD_CHUNKS = 4
log = logging.getLogger(__name__)


class ExportRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /admin/export``."""

    entity_type: str | None = None
    format: Literal["jsonl"] = "jsonl"


async def admin_export(request: Request) -> Response:
    """``POST /admin/export`` ``{"entity_type": "drone", "format": "jsonl"}``: a JSONL stream.

    Cut off at ``graph.config.export_timeout``, the stream's last line is
    ``{"error": ..., "complete": false}``; while another export runs, 429.
    """
    try:
        spec = msgspec.json.decode(await read_body(request) or b"{}", type=ExportRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return error(400, f"bad export request: {exc}")
    service = service_of(request)
    config: Config = request.app.state.agent.config  # the edge's and the hub's alike
    export = _Export(
        service.store,
        spec.entity_type,
        timeout=config.graph.config.export_timeout,
        metrics=service.metrics,
    )
    try:
        await export.start()
    except SnapshotBusy:
        return error(429, "an export is running; one runs at a time", {"Retry-After": "1"})
    except GraphError as exc:
        return error(503, str(exc))
    return _ExportResponse(export)


class _Expired(Exception):
    """The export's deadline passed."""


class _Left(Exception):
    """The response is over before the export was read to its end."""


class _Room:
    """How many chunks the reader may still put ahead of the client (thread-safe)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._closed = False
        self._changed = threading.Condition()

    def take(self, timeout: float) -> bool:
        """Take a place, waiting at most ``timeout`` seconds; False if none came.

        Raises:
            _Left: :meth:`close` was called.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._free > 0 or self._closed, max(timeout, 0))
            if self._closed:
                raise _Left
            if self._free == 0:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        """A chunk left for the client: one more place."""
        with self._changed:
            self._free += 1
            self._changed.notify()

    def close(self) -> None:
        """No more places, ever: the reader stops at once."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


class _Export:
    """One export: a worker thread reads the snapshot into chunks a bounded distance
    ahead of the client and lets go of the snapshot when it has read everything, when
    the response is over, or at the deadline (``timeout`` after the snapshot opened),
    whichever comes first; the response then sends what was read, and, if that is not
    everything, a last line saying so."""

    def __init__(
        self, store: GraphStore, entity_type: str | None, *, timeout: float, metrics: Metrics
    ) -> None:
        self._store = store
        self._entity_type = entity_type
        self._timeout = timeout
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()  # bounded by _room
        self._room = _Room(_AHEAD_CHUNKS)
        self._deadline = 0.0
        self._open = False  # the worker's own: whether the snapshot opened
        self._records = 0  # records passed on to the response
        self.outcome = ""  # why the worker let go of the snapshot (the metric's label)
        self.reason = ""  # the last line's "error" when the export is not complete

    async def start(self) -> None:
        """Open the snapshot and start reading it.

        Raises:
            SnapshotBusy: another export holds its snapshot.
            GraphError: the snapshot could not be opened.
        """
        self._worker = self._loop.run_in_executor(None, self._read)
        try:
            await self._opened
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """The response is over: the worker stops, and the snapshot is released."""
        self._room.close()

    async def body(self) -> AsyncIterator[bytes]:
        """The chunks as they are read; then the last line if the export is not whole."""
        while (chunk := await self._chunks.get()) is not None:
            self._room.give()
            yield chunk
        if self.outcome != "complete":
            yield _encoder.encode({"error": self.reason, "complete": False}) + b"\n"

    # ---- the worker thread ---------------------------------------------------------

    def _read(self) -> None:
        try:
            with self._store.snapshot() as db:
                self._deadline = time.monotonic() + self._timeout
                self._open = True
                self._tell(self._opened_with, None)
                chunks = export_jsonl(
                    db, self._entity_type, chunk_bytes=_CHUNK_BYTES, deadline=self._deadline
                )
                with contextlib.closing(chunks):  # before the snapshot's connection closes
                    for chunk in chunks:
                        self._hand(chunk)
            self._let_go("complete")
        except (_Expired, TimeoutError):
            self._let_go("timed_out")
        except _Left:
            self._let_go("client_gone")
        except Exception as exc:
            if not self._open:
                self._tell(self._opened_with, exc)
                return
            log.exception("admin export failed after %d records", self._records)
            self._let_go("failed", f"export failed: {exc}")
        finally:
            self._tell(self._chunks.put_nowait, None)

    def _hand(self, chunk: bytes) -> None:
        """Queue ``chunk`` for the response once there is room; never past the deadline."""
        if not self._room.take(self._deadline - time.monotonic()):
            raise _Expired
        self._records += chunk.count(b"\n")
        self._tell(self._chunks.put_nowait, chunk)

    def _let_go(self, outcome: str, reason: str = "") -> None:
        """The snapshot is released: count why, and say it to the client and the log."""
        self.outcome = outcome
        self._metrics.exports.labels(outcome).inc()
        if outcome == "timed_out":
            self.reason = (
                f"export cut off after {self._timeout:g}s (graph.config.export_timeout): the"
                " lines above are whole records, not all of them; read faster, or export"
                " one entity_type at a time"
            )
            log.warning(
                "admin export cut off after %gs (graph.config.export_timeout) with %d records"
                " passed on; its snapshot is released (a slow or stalled client)",
                self._timeout,
                self._records,
            )
        else:
            self.reason = reason

    def _tell(self, fn: Callable[[Any], object], value: Any) -> None:
        """Call ``fn(value)`` on the event loop (from the worker thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the program stops
            self._loop.call_soon_threadsafe(fn, value)

    def _opened_with(self, exc: Exception | None) -> None:
        """(On the loop) :meth:`start` returns, or raises ``exc``; unless it gave up."""
        if self._opened.done():
            return
        if exc is None:
            self._opened.set_result(None)
        else:
            self._opened.set_exception(exc)


class _ExportResponse(StreamingResponse):
    """The export's stream, which lets go of the export's snapshot as soon as it is over
    for whatever reason (sent, the client gone, the server stopping)."""

    def __init__(self, export: _Export) -> None:
        super().__init__(export.body(), media_type="application/x-ndjson")
        self._export = export

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._export.close()


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
