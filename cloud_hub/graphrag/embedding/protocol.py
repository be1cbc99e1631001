"""The OpenAI-compatible ``/v1/embeddings`` wire format, and the server's bounds.

Both ends use these: the server decodes a :class:`EmbeddingRequest` and encodes an
:class:`EmbeddingReply`; the client the other way round.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_INPUT_CHARS",
    "MAX_ITEMS",
    "Datum",
    "EmbeddingReply",
    "EmbeddingRequest",
    "Usage",
]

#: Texts in one request at most (the client's ``batch_size`` is at most this).
MAX_ITEMS = 256
#: Characters of one text at most; the client cuts longer texts to this (e5 reads 512
#: tokens, about 2,000 characters of English, so nothing it would read is lost).
MAX_INPUT_CHARS = 8192
#: A request body at most: MAX_ITEMS texts of MAX_INPUT_CHARS, JSON-escaped, fit.
MAX_BODY_BYTES = 16 << 20


class EmbeddingRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """``POST /v1/embeddings``: one text or a list; ``model`` empty means the default.

    Other OpenAI fields (``encoding_format: "float"``, ``user``) are accepted and
    ignored; ``dimensions`` is not offered.
    """

    input: str | list[str]
    model: str = ""
    encoding_format: str = "float"


class Datum(msgspec.Struct, frozen=True):
    """One text's vector, at its index in the request."""

    index: int
    embedding: list[float]
    object: str = "embedding"


class Usage(msgspec.Struct, frozen=True):
    """Tokens the model read."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingReply(msgspec.Struct, frozen=True):
    """The answer: one :class:`Datum` per text, in request order."""

    data: list[Datum]
    model: str
    usage: Usage
    object: str = "list"
