"""Logging: JSON lines carrying the config's fields."""

from __future__ import annotations

import io
import json
import logging

from edge_agent.config import LoggingConfig
from edge_agent.logs import setup_logging


def test_json_lines_with_fields() -> None:
    out = io.StringIO()
    setup_logging(
        LoggingConfig(level="INFO", fields={"service": "semstreams", "region": "r1"}), out
    )
    log = logging.getLogger("edge_agent.test")
    log.info("applied %d events", 5)
    log.debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["message"] == "applied 5 events"
    assert lines[0]["level"] == "INFO"
    assert lines[0]["service"] == "semstreams"
    assert lines[0]["region"] == "r1"
    assert "ValueError: boom" in lines[1]["exception"]


def test_text_format_and_file_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "logs" / "agent.log"
    setup_logging(LoggingConfig(level="warning", format="text", output=str(target)))
    logging.getLogger("edge_agent.test").warning("disk %s", "low")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "WARNING edge_agent.test: disk low" in target.read_text()
    assert target.stat().st_mode & 0o007 == 0  # not world-readable
