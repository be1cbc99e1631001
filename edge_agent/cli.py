"""``edge-agent``: run the agent, check a config, publish events, show stats and streams.

Each command is a few lines over a library call. Exit codes: 0 ok, 1 failure,
2 invalid config or usage, 3 events refused by JetStream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from edge_agent import __version__
from edge_agent.config import Config, Duration, load_config
from edge_agent.errors import ConfigError, SemStreamsError
from edge_agent.private_files import check_private

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = [
    "Service",
    "add_api_arguments",
    "call_api",
    "connect_for_command",
    "load_or_exit",
    "main",
    "run_service",
]

EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3


def load_or_exit(path: str | None, loader: Callable[[str | None], Config] = load_config) -> Config:
    """The config at ``path`` (read by ``loader``); on problems, print each with its key
    and exit 2."""
    try:
        return loader(path)
    except ConfigError as exc:
        where = path or "(defaults)"
        for problem in exc.problems:
            print(f"{where}: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from exc


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file; print each problem with its key path."""
    config = load_or_exit(args.file)
    print(
        f"{args.file}: ok (platform {config.platform.type} id={config.platform.id}, "
        f"state_dir={config.state_dir}, {len(config.components)} components)"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT."""
    from edge_agent.app import Agent
    from edge_agent.logs import setup_logging

    config = load_or_exit(args.config)
    setup_logging(config.logging)
    return run_service(Agent(config), "edge-agent")


class Service(Protocol):
    """Something with an async start and stop: the agent, the hub.

    It may also have ``status_line() -> str``, a one-line summary for systemd's
    ``STATUS=``; :func:`run_service` falls back to "running" without it.
    """

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _status_line(service: Service) -> str:
    describe = getattr(service, "status_line", None)
    try:
        return str(describe()) if callable(describe) else "running"
    except Exception as exc:  # a summary must never keep READY=1 from going out
        return f"running (no status: {exc})"


def _freeze_start_up_heap() -> None:
    """Take what start-up built out of the cyclic collector's sight.

    Modules, config, the app and its routes live as long as the process, yet every full
    collection walked all of them: the graph writer triggers those while it allocates a
    batch's rows, and paid for them (8.5 % of its samples under the ingest benchmark,
    2.4 % in the same writes without the agent around them). Start-up's own garbage is
    collected first, so freezing keeps nothing that is already dead.
    """
    gc.collect()
    gc.freeze()


def run_service(service: Service, prog: str) -> int:
    """Start ``service``, run it until SIGTERM or SIGINT, stop it; the exit code.

    Under systemd (``$NOTIFY_SOCKET``) it sends ``READY=1`` once ``start()`` returns,
    ``WATCHDOG=1`` and ``STATUS=`` from the service's event loop, and ``STOPPING=1``.
    """
    from edge_agent.systemd.notify import Notifier, keep_alive

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        notifier = Notifier.from_environ()
        notifier.status("starting")
        # A signal during start-up (say, waiting for an external NATS) stops it too.
        starting = asyncio.create_task(service.start())
        stopping = asyncio.create_task(stop.wait())
        pinging: asyncio.Task[None] | None = None
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                _freeze_start_up_heap()
                # start() returning means NATS, the store and the API are up.
                notifier.ready(_status_line(service))
                pinging = asyncio.create_task(keep_alive(notifier, lambda: _status_line(service)))
                await stopping
        finally:
            starting.cancel()
            stopping.cancel()
            if pinging is not None:
                pinging.cancel()
            notifier.stopping()
            # A start cut short unwinds first (it stops what it started), so that no
            # part is stopped by two coroutines at once; its error was raised above.
            with contextlib.suppress(BaseException):
                await starting
            await service.stop()
            notifier.close()

    try:
        asyncio.run(main())
    except (SemStreamsError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _read_events(source: str) -> list[bytes]:
    data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    from edge_agent.ingest.publisher import split_body

    return split_body(data, ndjson=True)


async def connect_for_command(config: Config, nats_url: str | None, name: str) -> Client:
    """A NATS connection for a one-shot command: the config's servers (or ``nats_url``),
    its credentials, and a few tries instead of the agent's wait-forever."""
    from edge_agent.nats.client import connect

    urls = [nats_url] if nats_url else list(config.nats.urls)
    urls = urls or [f"nats://127.0.0.1:{config.nats.port}"]
    patient = msgspec.structs.replace(config.nats, max_reconnect=3, reconnect_wait=Duration(0.5))
    return await connect(patient, urls, name=name)


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish events (one per line, or one JSON object) to the agent's JetStream."""
    from edge_agent.ingest.dead_letters import DeadLetters
    from edge_agent.ingest.publisher import EventPublisher, PublishError
    from edge_agent.metrics import Metrics

    config = load_or_exit(args.config)
    events = _read_events(args.file)

    async def main() -> int:
        nc = await connect_for_command(config, args.nats_url, "edge-agent publish")
        try:
            js = nc.jetstream()
            metrics = Metrics()
            publisher = EventPublisher(
                js,
                DeadLetters(js, metrics),
                metrics,
                max_event_bytes=config.graph.config.max_event_bytes,
            )
            result = await publisher.publish(events, path="cli")
        except PublishError as exc:
            print(f"edge-agent publish: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            await nc.close()
        print(msgspec.json.encode(result).decode())
        return EXIT_FAILURE if result.rejected else 0

    try:
        return asyncio.run(main())
    except (OSError, SemStreamsError, TimeoutError) as exc:
        print(f"edge-agent publish: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_stream_info(args: argparse.Namespace) -> int:
    """Show one JetStream stream and its consumers, or list the streams (the runbooks'
    ``nats stream info`` / ``nats stream ls``)."""
    import nats.js.errors

    from edge_agent.nats.streams_report import stream_detail, stream_list

    config = load_or_exit(args.config)

    async def main() -> str:
        nc = await connect_for_command(config, args.nats_url, "edge-agent stream-info")
        try:
            js = nc.jetstream()
            if not args.stream:
                return stream_list(await js.streams_info())
            info = await js.stream_info(args.stream)
            return stream_detail(info, await js.consumers_info(args.stream))
        finally:
            await nc.close()

    try:
        print(asyncio.run(main()))
    except nats.js.errors.NotFoundError:
        print(f"edge-agent stream-info: no stream named {args.stream}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, SemStreamsError, TimeoutError, nats.errors.Error) as exc:
        print(f"edge-agent stream-info: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Print ``GET /graph/stats`` of a running agent."""
    return call_api(args, "/graph/stats", prog="edge-agent stats")


def cmd_backup(args: argparse.Namespace) -> int:
    """Back up a running agent's state into a new directory (see docs/operations.md)."""
    from edge_agent.backup.commands import backup_command
    from edge_agent.backup.plan import edge_plan

    config = load_or_exit(args.config)
    return backup_command(
        lambda: edge_plan(config),
        args.dest,
        connect=lambda: connect_for_command(config, args.nats_url, "edge-agent backup"),
        prog="edge-agent backup",
        include_secrets=args.include_secrets,
    )


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup into the stopped agent's emptied state directory."""
    from edge_agent.app import sync_output_settings
    from edge_agent.backup.commands import restore_command
    from edge_agent.backup.plan import DEVICE_KEY, edge_plan
    from edge_agent.graph.recovery import request_resync

    config = load_or_exit(args.config)
    # With provisioning, the id may derive from the device key: the one in the state
    # directory, else the backup's own (checked against the manifest later).
    keys = [Path(config.state_dir) / DEVICE_KEY, Path(args.src) / "secrets" / "device_key.pem"]
    key = next((k for k in keys if k.is_file() and k.stat().st_size < 16 << 10), None)
    ports = [config.services.service_manager.config.http_port]
    prog = "edge-agent restore"
    code = restore_command(config, lambda: edge_plan(config, key), args.src, prog=prog, ports=ports)
    if code == 0 and sync_output_settings(config) is not None:
        # The hub may hold what this edge did after the backup, and what it sent of the
        # changes the backup holds as waiting: the share brings the one back and keeps
        # the other from being sent again.
        request_resync(Path(config.state_dir))
        print(f"{prog}: the next link asks the hub for this edge's share (a resync)")
    return code


def cmd_request_resync(args: argparse.Namespace) -> int:
    """Make the agent ask the hub for this edge's whole share on its next link."""
    from edge_agent.graph.recovery import RESYNC_MARKER, request_resync

    config = load_or_exit(args.config)
    state_dir = Path(config.state_dir)
    if not state_dir.is_dir():
        print(f"edge-agent request-resync: no state directory {state_dir}", file=sys.stderr)
        return EXIT_FAILURE
    request_resync(state_dir)
    print(
        f"{state_dir / RESYNC_MARKER}: the next link to the hub asks for this edge's share"
        " (a running agent asks when it next connects, e.g. after a restart)"
    )
    return 0


def cmd_firstboot(args: argparse.Namespace) -> int:
    """Give a freshly flashed device its identity (run once by semstreams-firstboot.service)."""
    from edge_agent.systemd.firstboot import FirstBoot, FirstbootError

    root = Path(args.root)
    boot_file = Path(args.boot_file) if args.boot_file else None
    state_dir = Path(args.state_dir) if args.state_dir else None
    try:
        for line in FirstBoot(root, boot_file, state_dir, args.user).run():
            print(f"edge-agent firstboot: {line}")
    except FirstbootError as exc:
        print(f"edge-agent firstboot: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--config``, ``--token-file`` and ``--cafile``: how to reach a running API."""
    parser.add_argument("--url", help="the API, e.g. http://127.0.0.1:8080")
    parser.add_argument("--config", "-c", help="config file naming the API port")
    parser.add_argument("--token-file", help="file holding a JWT for an API with auth on")
    parser.add_argument("--cafile", help="CA bundle to trust for an https API")


def call_api(
    args: argparse.Namespace,
    path: str,
    *,
    prog: str,
    data: bytes | None = None,
    method: str | None = None,
) -> int:
    """Call the running API named by :func:`add_api_arguments`; print the answer.

    ``data`` makes it a POST (unless ``method`` says otherwise). Returns the exit code:
    0, or 1 with the reason on stderr.
    """
    url = args.url
    if url is None:
        service = load_or_exit(args.config).services.service_manager.config
        scheme = "https" if service.tls else "http"
        url = f"{scheme}://{service.http_host}:{service.http_port}"
    request = urllib.request.Request(f"{url.rstrip('/')}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        if args.token_file:
            # A file, not an argument: a token on the command line shows in `ps`.
            check_private(args.token_file, "--token-file")
            token = Path(args.token_file).read_text().strip()
            request.add_header("Authorization", f"Bearer {token}")
        context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    except (OSError, ConfigError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            print(reply.read().decode())
    except urllib.error.HTTPError as exc:
        print(f"{prog}: {url} answered {exc.code}: {exc.read().decode()}", file=sys.stderr)
        return EXIT_FAILURE
    except (urllib.error.URLError, OSError) as exc:
        print(f"{prog}: cannot reach {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``edge-agent``."""
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", help="JSON config file (default: built-in defaults)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    publish = commands.add_parser("publish", help="publish events from a file or stdin")
    publish.add_argument("file", nargs="?", default="-", help="NDJSON file, or - for stdin")
    publish.add_argument("--config", "-c", help="config file naming the NATS servers")
    publish.add_argument("--nats-url", help="NATS server URL (overrides the config)")
    publish.set_defaults(func=cmd_publish)

    stream_info = commands.add_parser(
        "stream-info", help="show a JetStream stream and its consumers, or list the streams"
    )
    stream_info.add_argument("stream", nargs="?", help="e.g. GRAPH_ENTITIES (default: list)")
    stream_info.add_argument("--config", "-c", help="config file naming the NATS servers")
    stream_info.add_argument("--nats-url", help="NATS server URL (overrides the config)")
    stream_info.set_defaults(func=cmd_stream_info)

    stats = commands.add_parser("stats", help="show the graph stats of a running agent")
    add_api_arguments(stats)
    stats.set_defaults(func=cmd_stats)

    backup = commands.add_parser("backup", help="back up a running agent's state")
    backup.add_argument("dest", help="the backup directory to make (must not exist)")
    backup.add_argument("--config", "-c", help="the agent's config file")
    backup.add_argument("--nats-url", help="NATS server URL (overrides the config)")
    backup.add_argument(
        "--include-secrets", action="store_true", help="also the device key and credential"
    )
    backup.set_defaults(func=cmd_backup)

    restore = commands.add_parser("restore", help="restore a backup (agent stopped)")
    restore.add_argument("src", help="a directory made by edge-agent backup")
    restore.add_argument("--config", "-c", help="the agent's config file")
    restore.set_defaults(func=cmd_restore)

    resync = commands.add_parser(
        "request-resync", help="ask the hub for this edge's whole share on the next link"
    )
    resync.add_argument("--config", "-c", help="JSON config file (default: built-in defaults)")
    resync.set_defaults(func=cmd_request_resync)

    firstboot = commands.add_parser("firstboot", help="first-boot setup of a flashed device")
    firstboot.add_argument("--root", default="/", help="the system's root (default: /)")
    firstboot.add_argument(
        "--boot-file",
        help="provisioning file (default: <root>/boot/firmware/semstreams-provision.json)",
    )
    firstboot.add_argument("--state-dir", help="default: <root>/var/lib/semstreams")
    firstboot.add_argument("--user", default="semstreams", help="owner of the state dir")
    firstboot.set_defaults(func=cmd_firstboot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-agent`` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
