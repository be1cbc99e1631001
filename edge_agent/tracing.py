"""OpenTelemetry tracing when ``telemetry.enabled``: spans around batch apply and queries.

The OpenTelemetry packages are an optional extra (``pip install semstreams-edge[otel]``);
without them, or with telemetry off, :func:`span` costs one attribute lookup.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from edge_agent.config import TelemetryConfig
from edge_agent.errors import ConfigError

__all__ = ["setup_tracing", "shutdown_tracing", "span"]

log = logging.getLogger(__name__)


class _State:
    """The process's tracer, if tracing is on (OpenTelemetry's provider is global too)."""

    tracer: Any = None
    provider: Any = None


_state = _State()


def setup_tracing(config: TelemetryConfig, *, service: str, exporter: Any = None) -> bool:
    """Install a tracer provider per ``telemetry`` (OTLP exporter, ``sample_rate``).

    Args:
        config: the ``telemetry`` section.
        service: the ``service.name`` resource attribute.
        exporter: a span exporter to use instead of OTLP (tests pass an in-memory one).

    Returns:
        Whether tracing is on.

    Raises:
        ConfigError: telemetry is enabled but the OpenTelemetry packages are missing.
    """
    if not config.enabled:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError(
            [
                "telemetry.enabled: the OpenTelemetry packages are not installed "
                "(pip install 'semstreams-edge[otel]')"
            ]
        ) from exc
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_rate)),
    )
    if exporter is None:
        try:
            exporter = _otlp_exporter(config)
        except ImportError as exc:
            raise ConfigError(
                [
                    "telemetry.exporter: the OTLP exporter is not installed "
                    "(pip install 'semstreams-edge[otel]')"
                ]
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _state.provider = provider
    _state.tracer = provider.get_tracer("edge_agent")
    log.info(
        "tracing on: %s %s, sample rate %s", config.exporter, config.endpoint, config.sample_rate
    )
    return True


def _otlp_exporter(config: TelemetryConfig) -> Any:
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=config.endpoint or None, insecure=config.endpoint.startswith("http://")
    )


def shutdown_tracing() -> None:
    """Flush and stop the tracer provider, if any."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.tracer = _state.provider = None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` with ``attributes``, or nothing when tracing is off."""
    if _state.tracer is None:
        yield None
        return
    with _state.tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current
