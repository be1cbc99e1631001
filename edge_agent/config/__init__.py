"""Typed configuration: decoded and validated once, at start-up, then trusted."""

from edge_agent.config.loader import load_config, load_config_bytes
from edge_agent.config.schema import (
    ApiGatewayConfig,
    AuthConfig,
    ComponentConfig,
    Config,
    GraphConfig,
    GraphSettings,
    HttpTlsConfig,
    IndexesConfig,
    JetStreamConfig,
    LoggingConfig,
    MetricsConfig,
    NatsConfig,
    PlatformConfig,
    RateLimitConfig,
    ServicesConfig,
    SimulatorConfig,
    TelemetryConfig,
    TlsConfig,
)
from edge_agent.config.units import ByteSize, Duration

__all__ = [
    "ApiGatewayConfig",
    "AuthConfig",
    "ByteSize",
    "ComponentConfig",
    "Config",
    "Duration",
    "GraphConfig",
    "GraphSettings",
    "HttpTlsConfig",
    "IndexesConfig",
    "JetStreamConfig",
    "LoggingConfig",
    "MetricsConfig",
    "NatsConfig",
    "PlatformConfig",
    "RateLimitConfig",
    "ServicesConfig",
    "SimulatorConfig",
    "TelemetryConfig",
    "TlsConfig",
    "load_config",
    "load_config_bytes",
]
