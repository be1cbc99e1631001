"""``cloud-hub``: the hub's command line.

The hub shares the edge's config schema and loader.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from cloud_hub import __version__
from cloud_hub.config import load_hub_config
from edge_agent.errors import ConfigError

__all__ = ["main"]


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a hub config file; print each problem with its key path."""
    try:
        config = load_hub_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok (platform {config.platform.type}, {len(config.components)} components)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the hub until SIGTERM or SIGINT."""
    from cloud_hub.app import Hub
    from edge_agent.cli import load_or_exit, run_service
    from edge_agent.logs import setup_logging

    config = load_or_exit(args.config, load_hub_config)
    setup_logging(config.logging)
    return run_service(Hub(config), "cloud-hub")


def cmd_devices(args: argparse.Namespace) -> int:
    """``cloud-hub devices list|approve|reject|revoke|rotate|delete|claim-token create`` via the
    hub's API."""
    from edge_agent.cli import call_api

    prog = f"cloud-hub devices {args.action}"
    if args.action == "list":
        return call_api(args, "/devices", prog=prog)
    if args.action == "claim-token":
        body = json.dumps({"group": args.group, "ttl": args.ttl}).encode()
        return call_api(args, "/claim-tokens", prog=prog, data=body)
    if args.action == "delete":
        return call_api(args, f"/devices/{args.device_id}", prog=prog, method="DELETE")
    return call_api(args, f"/devices/{args.device_id}/{args.action}", prog=prog, data=b"{}")


def cmd_cluster_config(args: argparse.Namespace) -> int:
    """Write one ``nats-server-N.conf`` per cluster node; print them and the hub's ``nats``."""
    from pathlib import Path

    from cloud_hub.cluster import (
        ClusterOptions,
        ClusterTLS,
        default_nodes,
        hub_nats_settings,
        render_cluster_configs,
    )

    tls_paths = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(tls_paths) and not all(tls_paths):
        print("cluster-config: --tls-cert, --tls-key and --tls-ca go together", file=sys.stderr)
        return 2
    nodes = default_nodes(
        [name.strip() for name in args.nodes.split(",")],
        client_port=args.client_port,
        cluster_port=args.cluster_port,
    )
    options = ClusterOptions(
        store_dir=args.store_dir,
        max_memory=args.max_memory,
        max_file=args.max_file,
        tls=ClusterTLS(cert_file=args.tls_cert, key_file=args.tls_key, ca_file=args.tls_ca)
        if all(tls_paths)
        else None,
        nkeys=tuple(args.nkey),
    )
    try:
        texts = render_cluster_configs(nodes, options)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"cluster-config: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(texts, start=1):
        path = out / f"nats-server-{index}.conf"
        path.write_text(text)
        path.chmod(0o644)
        print(path)
    print(json.dumps(hub_nats_settings(nodes, options), indent=2))
    return 0


def cmd_embed_server(args: argparse.Namespace) -> int:
    """Serve ``/v1/embeddings`` with a packaged model until SIGTERM or SIGINT."""
    import uvicorn

    from cloud_hub.graphrag.embedding.models import load_model
    from cloud_hub.graphrag.embedding.server import embedding_app

    try:
        model = load_model(args.model, threads=args.threads)
    except ValueError as exc:
        print(f"embed-server: {exc}", file=sys.stderr)
        return 2
    print(
        f"embed-server: {model.name} ({model.dim} dimensions) on http://{args.host}:{args.port}",
        flush=True,
    )
    uvicorn.run(embedding_app(model), host=args.host, port=args.port, access_log=False)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Back up a running hub's state into a new directory (see docs/operations.md)."""
    from cloud_hub.backup import hub_plan
    from edge_agent.backup.commands import backup_command
    from edge_agent.cli import connect_for_command, load_or_exit

    config = load_or_exit(args.config, load_hub_config)
    return backup_command(
        lambda: hub_plan(config),
        args.dest,
        connect=lambda: connect_for_command(config, args.nats_url, "cloud-hub backup"),
        prog="cloud-hub backup",
        include_secrets=args.include_secrets,
    )


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup into the stopped hub's emptied state directory."""
    from cloud_hub.backup import hub_plan, hub_ports
    from edge_agent.backup.commands import restore_command
    from edge_agent.cli import load_or_exit

    config = load_or_exit(args.config, load_hub_config)
    return restore_command(
        config,
        lambda: hub_plan(config),
        args.src,
        prog="cloud-hub restore",
        ports=hub_ports(config),
    )


def _backup_parsers(commands: Any) -> None:
    """``cloud-hub backup DEST`` and ``cloud-hub restore SRC``."""
    backup = commands.add_parser("backup", help="back up a running hub's state")
    backup.add_argument("dest", help="the backup directory to make (must not exist)")
    backup.add_argument("--config", "-c", help="the hub's config file")
    backup.add_argument("--nats-url", help="NATS server URL (overrides the config)")
    backup.add_argument("--include-secrets", action="store_true", help="also the hub's key")
    backup.set_defaults(func=cmd_backup)
    restore = commands.add_parser("restore", help="restore a backup (hub stopped)")
    restore.add_argument("src", help="a directory made by cloud-hub backup")
    restore.add_argument("--config", "-c", help="the hub's config file")
    restore.set_defaults(func=cmd_restore)


def _embed_server_parser(commands: Any) -> None:
    """``cloud-hub embed-server``: the embeddings service the hub's vector search calls."""
    from cloud_hub.graphrag.embedding.models import DEFAULT_MODEL, MODELS

    server = commands.add_parser(
        "embed-server", help="serve OpenAI-compatible /v1/embeddings with a packaged model"
    )
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=8081, help="port to listen on")
    server.add_argument(
        "--model", default=DEFAULT_MODEL, choices=list(MODELS), help="the model to serve"
    )
    server.add_argument("--threads", type=int, default=1, help="CPU threads of the model")
    server.set_defaults(func=cmd_embed_server)


def _devices_parser(commands: Any) -> None:
    from edge_agent.cli import add_api_arguments

    devices = commands.add_parser("devices", help="list, approve, reject, revoke, delete devices")
    actions = devices.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every device with its status")
    add_api_arguments(listing)
    for action in ("approve", "reject", "revoke", "rotate", "delete"):
        sub = actions.add_parser(action, help=f"{action} a device")
        sub.add_argument("device_id")
        add_api_arguments(sub)
    claim = actions.add_parser("claim-token", help="claim tokens for zero-touch enrolment")
    claim.add_argument("create", choices=["create"])
    claim.add_argument("--group", default="default", help="the fleet/group it enrols into")
    claim.add_argument("--ttl", default="1h", help='how long it stays valid ("1h", "7d")')
    add_api_arguments(claim)
    devices.set_defaults(func=cmd_devices)


def _cluster_parser(commands: Any) -> None:
    """``cloud-hub cluster-config``: the seed's NATS cluster as nats-server config files."""
    cluster = commands.add_parser(
        "cluster-config", help="write the nats-server configs of a 3-node JetStream cluster"
    )
    cluster.add_argument("--out", required=True, help="directory for nats-server-N.conf")
    cluster.add_argument(
        "--nodes", default="nats-1,nats-2,nats-3", help="server names, also their host names"
    )
    cluster.add_argument("--store-dir", default="/data/jetstream", help="JetStream store")
    cluster.add_argument("--max-memory", default="4GB", help="JetStream memory limit")
    cluster.add_argument("--max-file", default="100GB", help="JetStream file store limit")
    cluster.add_argument("--client-port", type=int, default=4222, help="clients' port")
    cluster.add_argument("--cluster-port", type=int, default=6222, help="routes' port")
    cluster.add_argument("--tls-cert", default="", help="server certificate (client + routes)")
    cluster.add_argument("--tls-key", default="", help="its private key")
    cluster.add_argument("--tls-ca", default="", help="CA of the servers' certificates")
    cluster.add_argument(
        "--nkey", action="append", default=[], help="an NKey user public key allowed in"
    )
    cluster.set_defaults(func=cmd_cluster_config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cloud-hub`` console script."""
    parser = argparse.ArgumentParser(prog="cloud-hub", description="SemStreams cloud hub")
    parser.add_argument("--version", action="version", version=f"cloud-hub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the hub")
    run.add_argument("--config", "-c", help="JSON config file (default: built-in defaults)")
    run.set_defaults(func=cmd_run)
    check = commands.add_parser("check-config", help="validate a hub config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)
    _devices_parser(commands)
    _cluster_parser(commands)
    _embed_server_parser(commands)
    _backup_parsers(commands)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
