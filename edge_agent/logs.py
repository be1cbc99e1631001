"""Logging per the ``logging`` config block: JSON lines (or text) with fixed extra fields."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import msgspec

from edge_agent.config import LoggingConfig

__all__ = ["JsonFormatter", "setup_logging"]

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the config's fields, exc."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def _stream(output: str) -> logging.Handler:
    if output == "stdout":
        return logging.StreamHandler(sys.stdout)
    if output == "stderr":
        return logging.StreamHandler(sys.stderr)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    path.chmod(0o640)
    return handler


def setup_logging(config: LoggingConfig, stream: IO[str] | None = None) -> None:
    """Configure the root logger once, at start-up.

    Args:
        config: the ``logging`` section.
        stream: write here instead of ``config.output`` (tests).
    """
    handler = logging.StreamHandler(stream) if stream else _stream(config.output)
    if config.format == "json":
        handler.setFormatter(JsonFormatter(dict(config.fields)))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # Third-party chatter (uvicorn access lines, nats reconnect noise) stays at WARNING.
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "nats"):
        logging.getLogger(name).setLevel(logging.WARNING)
