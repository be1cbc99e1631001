"""Load a config file: expand ``${VAR}``, decode into typed Structs, check what types can't.

This is the only module that reads config files or the environment for settings. Every
problem is reported as ``key.path: cause`` so a typo names itself.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from edge_agent.config.schema import (
    COMPONENT_TYPES,
    ComponentConfig,
    Config,
    Section,
    WebsocketOutputConfig,
)
from edge_agent.config.units import decode_hook
from edge_agent.errors import ConfigError
from edge_agent.sync.filters import compile_filter

__all__ = ["STATE_DIR_ENV", "load_config", "load_config_bytes"]

#: Environment variable that overrides ``state_dir``; a systemd unit sets it from
#: ``StateDirectory`` (``Environment=SEMSTREAMS_STATE_DIR=%S/semstreams``).
STATE_DIR_ENV = "SEMSTREAMS_STATE_DIR"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MSGSPEC_AT = re.compile(r"^(?P<cause>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_SUBJECT_PREFIX = "events.graph.entity."
_MIN_HS256_SECRET = 32
_T = TypeVar("_T")


ComponentTypes = Mapping[str, type[Section]]


def load_config(
    path: Path | str | None,
    env: Mapping[str, str] | None = None,
    *,
    component_types: ComponentTypes = COMPONENT_TYPES,
) -> Config:
    """Read, expand and validate a JSON config file; ``None`` gives the defaults.

    Args:
        path: the JSON file, or ``None`` for the built-in defaults.
        env: the environment for ``${VAR}`` and ``SEMSTREAMS_STATE_DIR`` (default: ``os.environ``).
        component_types: the ``components[].type`` values this program runs, with the
            struct each one's ``config`` decodes into (the hub passes its own).

    Returns:
        The validated config.

    Raises:
        ConfigError: the file is unreadable or invalid; each problem names its key path.
    """
    if path is None:
        return load_config_bytes(b"{}", env=env, component_types=component_types)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror}"]) from exc
    return load_config_bytes(data, env=env, component_types=component_types)


def load_config_bytes(
    data: bytes,
    env: Mapping[str, str] | None = None,
    *,
    component_types: ComponentTypes = COMPONENT_TYPES,
) -> Config:
    """Like :func:`load_config`, from the JSON text itself."""
    env = os.environ if env is None else env
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError([f"not valid JSON: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(["the config must be a JSON object"])
    config = _convert(_expand(raw, env), Config, prefix="")
    config = msgspec.structs.replace(
        config,
        components=[
            _typed_component(c, i, component_types) for i, c in enumerate(config.components)
        ],
    )
    config = _apply_overrides(config, env)
    problems = _check(config)
    if problems:
        raise ConfigError(problems)
    return config


def _expand(value: Any, env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; unset variables become ''."""
    if isinstance(value, str):
        return _VAR.sub(_substitute(env), value)
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    return value


def _substitute(env: Mapping[str, str]) -> Callable[[re.Match[str]], str]:
    """``${VAR}``: its value or ''; ``${VAR:-default}``: the default when unset or empty."""

    def value(match: re.Match[str]) -> str:
        found = env.get(match[1], "")
        return found if found or match[2] is None else match[2]

    return value


def _convert(raw: Any, kind: type[_T], prefix: str) -> _T:
    try:
        return msgspec.convert(raw, type=kind, dec_hook=decode_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError([_describe(str(exc), prefix)]) from exc


def _describe(message: str, prefix: str) -> str:
    """Turn a msgspec message into ``key.path: cause``."""
    match = _MSGSPEC_AT.match(message)
    cause, path = (match["cause"], match["path"] or "") if match else (message, "")
    path = (prefix + path).lstrip(".")
    if field := re.fullmatch(r"Object contains unknown field `([^`]*)`", cause):
        return f"{_join(path, field[1])}: unknown key"
    if field := re.fullmatch(r"Object missing required field `([^`]*)`", cause):
        return f"{_join(path, field[1])}: required key is missing"
    cause = cause[:1].lower() + cause[1:]
    return f"{path or '(top level)'}: {cause}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _typed_component(
    component: ComponentConfig, index: int, component_types: ComponentTypes
) -> ComponentConfig:
    where = f"components[{index}]"
    kind = component_types.get(component.type)
    if kind is None:
        known = ", ".join(sorted(component_types))
        raise ConfigError([f"{where}.type: unknown component type {component.type!r} ({known})"])
    typed = _convert(component.config, kind, prefix=f".{where}.config")
    return msgspec.structs.replace(component, config=typed)


def _apply_overrides(config: Config, env: Mapping[str, str]) -> Config:
    state_dir = env.get(STATE_DIR_ENV) or config.state_dir
    platform = config.platform
    if not platform.id:
        platform = msgspec.structs.replace(platform, id=socket.gethostname())
    return msgspec.structs.replace(
        config, state_dir=str(Path(state_dir).absolute()), platform=platform
    )


def _check(config: Config) -> list[str]:
    """The rules a type can't express; each problem names its key."""
    problems = []
    graph = config.graph.config
    subject = graph.input_subject
    if not (subject.startswith(_SUBJECT_PREFIX) and len(subject) > len(_SUBJECT_PREFIX)):
        problems.append(
            f"graph.config.input_subject: {subject!r} must lie under {_SUBJECT_PREFIX}> "
            "(e.g. events.graph.entity.drone)"
        )
    problems += _check_http(config)
    seen: set[str] = set()
    for index, component in enumerate(config.components):
        if component.id in seen:
            problems.append(f"components[{index}].id: duplicate id {component.id!r}")
        seen.add(component.id)
        where = f"components[{index}].config"
        problems += [f"{where}.{key}: {cause}" for key, cause in component.config.problems()]
        if isinstance(component.config, WebsocketOutputConfig):
            problems += _check_output(component.config, f"components[{index}].config")
    outputs = [c for c in config.components if isinstance(c.config, WebsocketOutputConfig)]
    if len(outputs) > 1:
        problems.append(
            f"components: {len(outputs)} websocket_output components; an agent has one link"
        )
    problems += _check_interfaces(config.provisioning.interfaces)
    if config.nats.embedded is False and not config.nats.urls:
        problems.append("nats.urls: must name a server when nats.embedded is false")
    for index, url in enumerate(config.nats.urls):
        if re.match(r"^wss?://", url):
            # nats-py speaks WebSocket only through aiohttp, which the agent does not
            # ship, and the graph processor's delivery connection is TCP (or TLS) only.
            problems.append(
                f"nats.urls[{index}]: {url!r}: NATS over WebSocket is not supported;"
                " use the server's nats:// or tls:// port"
            )
        elif not re.match(r"^(nats|tls)://[^/]+$", url):
            problems.append(f"nats.urls[{index}]: {url!r} is not a nats:// or tls:// URL")
    if config.telemetry.enabled and importlib.util.find_spec("opentelemetry.sdk") is None:
        problems.append(
            "telemetry.enabled: the OpenTelemetry packages are not installed "
            "(pip install 'semstreams-edge[otel]')"
        )
    tls = config.nats.tls
    if tls and bool(tls.cert_file) != bool(tls.key_file):
        problems.append("nats.tls: cert_file and key_file must be given together")
    problems += [f"nats.{key}: {cause}" for key, cause in config.nats.problems()]
    embedding = config.graph.config.indexer.embedding
    where = "graph.config.indexer.embedding"
    problems += [f"{where}.{key}: {cause}" for key, cause in embedding.problems()]
    return problems


def _check_interfaces(interfaces: list[str]) -> list[str]:
    """mDNS binds to IPv4 addresses, not interface names."""
    problems = []
    for index, address in enumerate(interfaces):
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            problems.append(
                f"provisioning.interfaces[{index}]: {address!r} is not an IPv4 address"
                " (e.g. 192.168.1.10; not an interface name)"
            )
    return problems


def _check_output(output: WebsocketOutputConfig, where: str) -> list[str]:
    """A ``websocket_output``'s URL, filter, credential and TLS settings."""
    problems = []
    if not re.match(r"^wss?://[^/]+(/.*)?$", output.url):
        problems.append(f"{where}.url: {output.url!r} is not a ws:// or wss:// URL")
    try:
        compile_filter(output.filters, where=f"{where}.filters")
    except ValueError as exc:
        problems.append(str(exc))
    if output.token and output.token_file:
        problems.append(f"{where}.token_file: give token or token_file, not both")
    tls = output.tls
    if tls and bool(tls.cert_file) != bool(tls.key_file):
        problems.append(f"{where}.tls: cert_file and key_file must be given together")
    return problems


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _check_http(config: Config) -> list[str]:
    """The API listener's auth and TLS settings."""
    problems = []
    where = "services.service-manager.config"
    service = config.services.service_manager.config
    auth = service.auth
    secret = auth.jwt_secret.encode()
    if auth.type == "jwt" and not secret:
        problems.append(
            f"{where}.auth.jwt_secret: must not be empty when type is jwt "
            "(is the environment variable it names set?)"
        )
    elif auth.type == "jwt" and len(secret) < _MIN_HS256_SECRET:
        # RFC 7518 section 3.2: an HS256 key MUST be at least as long as the hash output.
        problems.append(
            f"{where}.auth.jwt_secret: too short for HS256 ({len(secret)} bytes); "
            f"use at least {_MIN_HS256_SECRET} random bytes"
        )
    if auth.type == "none" and not is_loopback(service.http_host):
        if not auth.allow_unauthenticated:
            problems.append(
                f"{where}.auth.type: the API listens on {service.http_host!r}, beyond this"
                ' host, without auth: set "jwt" (with jwt_secret), bind http_host to'
                " 127.0.0.1, or set auth.allow_unauthenticated: true to accept that anyone"
                " who reaches it can approve devices and write the graph"
            )
    elif auth.allow_unauthenticated and auth.type != "none":
        problems.append(f"{where}.auth.allow_unauthenticated: only meaningful with type none")
    for index, prefix in enumerate(auth.open_paths):
        if not prefix.startswith("/"):
            problems.append(f"{where}.auth.open_paths[{index}]: {prefix!r} must start with /")
    tls = service.tls
    if tls and bool(tls.cert_file) != bool(tls.key_file):
        missing, given = ("key_file", "cert_file") if tls.cert_file else ("cert_file", "key_file")
        problems.append(f"{where}.tls.{missing}: required when {given} is set")
    return problems
