"""``cloud-hub embed-server``: an OpenAI-compatible embeddings service on a packaged model.

``POST /v1/embeddings`` takes ``{"input": str | [str], "model": "..."}`` and answers
``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}],
"model": ..., "usage": {...}}``; ``GET /health`` says which model it serves. Requests
are bounded (:mod:`cloud_hub.graphrag.embedding.protocol`): too many texts, a text too
long, an empty one or a body too large is a 4xx naming the bound. The model runs in a
worker thread, one request at a time, so the event loop keeps answering ``/health``.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloud_hub.graphrag.embedding.models import EmbeddingModel
from cloud_hub.graphrag.embedding.protocol import (
    MAX_BODY_BYTES,
    MAX_INPUT_CHARS,
    MAX_ITEMS,
    Datum,
    EmbeddingReply,
    EmbeddingRequest,
    Usage,
)
from edge_agent.api.views import BodyTooLarge, error, json_response, read_body, too_large

__all__ = ["embedding_app", "input_problem"]

log = logging.getLogger(__name__)
_decoder = msgspec.json.Decoder(EmbeddingRequest)


def input_problem(texts: list[str]) -> str | None:
    """Why these texts can't be embedded in one request, or ``None``."""
    if not texts:
        return "input is empty: give a string or a non-empty list of strings"
    if len(texts) > MAX_ITEMS:
        return f"input has {len(texts)} texts; at most {MAX_ITEMS} a request"
    for index, text in enumerate(texts):
        if not text:
            return f"input[{index}] is empty"
        if len(text) > MAX_INPUT_CHARS:
            return f"input[{index}] has {len(text)} characters; at most {MAX_INPUT_CHARS}"
    return None


def embedding_app(model: EmbeddingModel) -> Starlette:
    """The ASGI app serving ``model``."""
    lock = asyncio.Lock()

    def embed(texts: list[str]) -> EmbeddingReply:
        vectors = model.embed(texts)
        tokens = model.tokens(texts)
        return EmbeddingReply(
            data=[Datum(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)],
            model=model.name,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def embeddings(request: Request) -> Response:
        try:
            body = _decoder.decode(await read_body(request, MAX_BODY_BYTES))
        except msgspec.DecodeError as exc:
            return error(400, f"bad embeddings request: {exc}")
        if body.model and body.model != model.name:
            return error(404, f"model {body.model!r} is not served here (this serves {model.name})")
        if body.encoding_format != "float":
            return error(400, "encoding_format: only 'float' is offered")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if problem := input_problem(texts):
            return error(400, problem)
        async with lock:
            reply = await run_in_threadpool(embed, texts)
        return json_response(reply)

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "model": model.name, "dim": model.dim})

    return Starlette(
        routes=[
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={BodyTooLarge: too_large},
    )
