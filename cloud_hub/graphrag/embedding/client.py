"""The hub's client of an OpenAI-compatible ``/v1/embeddings`` service.

Texts go in batches of ``batch_size``; each request has its own ``timeout`` and is
tried ``max_retries`` more times after a failure, waiting a full-jitter exponential
back-off between tries. Every request's outcome feeds a circuit :class:`Breaker`:
while it is open, calls fail at once without touching the service, and a search asks
for its query's vector once, without retries, so a down service costs a query
:data:`QUERY_TIMEOUT` at most and, once the breaker is open, nothing.

A failure to reach the service, a timeout, a 5xx, 408 or 429, or a reply that is not
the expected shape is :class:`ServiceDown`; any other 4xx is :class:`Rejected` (the
service is up and said no: sending the same again would not help).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx
import msgspec
import numpy as np
from numpy.typing import NDArray

from cloud_hub.graphrag.embedding.breaker import Breaker, State
from cloud_hub.graphrag.embedding.protocol import (
    MAX_INPUT_CHARS,
    EmbeddingReply,
    EmbeddingRequest,
)
from edge_agent.config.schema import EmbeddingConfig

__all__ = [
    "QUERY_TIMEOUT",
    "EmbeddingClient",
    "EmbeddingError",
    "Embeddings",
    "Rejected",
    "ServiceDown",
    "backoff",
    "parse_reply",
    "request_body",
]

log = logging.getLogger(__name__)

#: The longest a search waits for its query's vector (or ``timeout``, when shorter).
QUERY_TIMEOUT = 5.0
#: The first retry waits up to this; each further one up to twice as long, ...
_BACKOFF_BASE = 0.5
#: ... but never more than this.
_BACKOFF_CAP = 10.0
_RETRYABLE = {408, 429}
_reply_decoder = msgspec.json.Decoder(EmbeddingReply)


class EmbeddingError(Exception):
    """No vectors: see :class:`ServiceDown` and :class:`Rejected`."""


class ServiceDown(EmbeddingError):
    """The service did not answer usefully (or the breaker is open): try again later."""


class Rejected(EmbeddingError):
    """The service refused the request (a 4xx, with its message)."""


class Embeddings(msgspec.Struct, frozen=True):
    """Vectors of texts, one row each in order, unit length, and the model that made them."""

    model: str
    vectors: NDArray[np.float32]


def request_body(texts: Sequence[str], model: str) -> bytes:
    """The JSON request for ``texts``, each cut to the server's limit; ``model`` empty
    leaves the choice to the service."""
    cut = [text[:MAX_INPUT_CHARS] for text in texts]
    return msgspec.json.encode(EmbeddingRequest(input=cut, model=model))


def parse_reply(body: bytes, count: int) -> Embeddings:
    """The vectors of a reply to ``count`` texts, in request order, made unit length.

    Raises:
        ServiceDown: the reply is not JSON of the expected shape, has another number of
            vectors, or vectors of different or zero length.
    """
    try:
        reply = _reply_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ServiceDown(f"embedding service sent a bad reply: {exc}") from exc
    ordered = sorted(reply.data, key=lambda datum: datum.index)
    if [datum.index for datum in ordered] != list(range(count)):
        raise ServiceDown(f"embedding service sent {len(ordered)} vectors for {count} texts")
    if count and len({len(datum.embedding) for datum in ordered}) != 1:
        raise ServiceDown("embedding service sent vectors of different lengths")
    vectors = np.array([datum.embedding for datum in ordered], dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True) if count else vectors
    if count and (vectors.shape[1] == 0 or not np.all(norms > 0)):
        raise ServiceDown("embedding service sent an empty or zero vector")
    return Embeddings(model=reply.model, vectors=vectors / norms if count else vectors)


def backoff(attempt: int, rand: float) -> float:
    """Seconds to wait before retry ``attempt`` (0 for the first): full jitter, i.e.
    ``rand`` (in [0, 1)) times ``0.5 s * 2**attempt``, capped at 10 s."""
    return rand * min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**attempt)


class EmbeddingClient:
    """Calls ``{service_url}/v1/embeddings`` as ``settings`` say.

    Args:
        settings: ``graph.config.indexer.embedding``.
        on_request: told each request's outcome: ``ok``, ``failed`` (service down),
            ``rejected`` (4xx) or ``refused`` (the breaker was open: not sent).
        clock: monotonic seconds, for the breaker.
        rand: uniform numbers in [0, 1), for the jitter.
        sleep: waits between retries.
    """

    def __init__(
        self,
        settings: EmbeddingConfig,
        *,
        on_request: Callable[[str], None] = lambda outcome: None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.url = settings.service_url.rstrip("/") + "/v1/embeddings"
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_reset)
        self._lock = threading.Lock()  # the breaker: the event loop and query threads
        self._on_request = on_request
        self._clock = clock
        self._rand = rand
        self._sleep = sleep
        headers = {"content-type": "application/json"}
        self._async = httpx.AsyncClient(headers=headers, timeout=settings.timeout)
        self._sync = httpx.Client(headers=headers, timeout=min(settings.timeout, QUERY_TIMEOUT))

    async def aclose(self) -> None:
        """Close the connections."""
        await self._async.aclose()
        self._sync.close()

    def state(self) -> State:
        """The breaker's state now."""
        with self._lock:
            return self.breaker.state(self._clock())

    def retry_in(self) -> float:
        """Seconds until the breaker lets a request through again (0: it does now)."""
        with self._lock:
            return self.breaker.retry_in(self._clock())

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Vectors of ``texts``, ``batch_size`` a request, each retried as configured.

        Raises:
            ServiceDown: a batch failed every try, or the breaker is open.
            Rejected: the service refused a batch.
        """
        size = self.settings.batch_size
        parts = [
            await self._batch(texts[start : start + size]) for start in range(0, len(texts), size)
        ]
        if not parts:
            return Embeddings(model="", vectors=np.zeros((0, 0), dtype=np.float32))
        return Embeddings(
            model=parts[-1].model, vectors=np.concatenate([part.vectors for part in parts])
        )

    def embed_now(self, text: str) -> NDArray[np.float32] | None:
        """One text's vector, one try (a search waits for it); ``None`` when the service
        is down, refuses, or the breaker is open. Blocking: call it from a thread."""
        if not self._allow():
            return None
        try:
            reply = self._sync.post(self.url, content=request_body([text], self.settings.model))
        except httpx.HTTPError as exc:
            self._failure(exc)
            return None
        try:
            vector: NDArray[np.float32] = self._settle(reply.status_code, reply.content, 1).vectors[
                0
            ]
        except EmbeddingError:
            return None
        return vector

    async def _batch(self, texts: Sequence[str]) -> Embeddings:
        body = request_body(texts, self.settings.model)
        last: EmbeddingError = ServiceDown("no request made")
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                await self._sleep(backoff(attempt - 1, self._rand()))
            if not self._allow():
                raise ServiceDown(f"embedding service breaker open ({last})")
            try:
                reply = await self._async.post(self.url, content=body)
            except httpx.HTTPError as exc:
                last = self._failure(exc)
                continue
            try:
                return self._settle(reply.status_code, reply.content, len(texts))
            except ServiceDown as exc:
                last = exc
        raise last

    def _allow(self) -> bool:
        with self._lock:
            allowed = self.breaker.allow(self._clock())
        if not allowed:
            self._on_request("refused")
        return allowed

    def _failure(self, exc: Exception) -> ServiceDown:
        with self._lock:
            self.breaker.failed(self._clock())
        self._on_request("failed")
        log.debug("embedding request failed: %s", exc)
        return ServiceDown(f"embedding service {self.url}: {type(exc).__name__}: {exc}")

    def _settle(self, status: int, content: bytes, count: int) -> Embeddings:
        """Record a reply's outcome in the breaker and the counter; its vectors.

        Raises:
            ServiceDown: a 5xx, 408 or 429, or a body that is not ``count`` vectors.
            Rejected: another 4xx.
        """
        if status >= 500 or status in _RETRYABLE:
            raise self._failure(ValueError(f"HTTP {status}: {content[:200]!r}"))
        if status >= 400:
            self._succeeded("rejected")
            raise Rejected(f"embedding service refused: HTTP {status}: {content[:300]!r}")
        try:
            embeddings = parse_reply(content, count)
        except ServiceDown as exc:
            raise self._failure(exc) from exc
        self._succeeded("ok")
        return embeddings

    def _succeeded(self, outcome: str) -> None:
        with self._lock:
            self.breaker.succeeded()
        self._on_request(outcome)
