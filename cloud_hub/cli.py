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
from edge_agent.config import load_config
from edge_agent.errors import ConfigError

__all__ = ["main"]


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a hub config file; print each problem with its key path."""
    try:
        config = load_config(args.file)
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

    config = load_or_exit(args.config)
    setup_logging(config.logging)
    return run_service(Hub(config), "cloud-hub")


def cmd_devices(args: argparse.Namespace) -> int:
    """``cloud-hub devices list|approve|reject|revoke|claim-token create`` via the hub's API."""
    from edge_agent.cli import call_api

    prog = f"cloud-hub devices {args.action}"
    if args.action == "list":
        return call_api(args, "/devices", prog=prog)
    if args.action == "claim-token":
        body = json.dumps({"group": args.group, "ttl": args.ttl}).encode()
        return call_api(args, "/claim-tokens", prog=prog, data=body)
    return call_api(args, f"/devices/{args.device_id}/{args.action}", prog=prog, data=b"{}")


def _devices_parser(commands: Any) -> None:
    from edge_agent.cli import add_api_arguments

    devices = commands.add_parser("devices", help="list, approve, reject, revoke devices")
    actions = devices.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every device with its status")
    add_api_arguments(listing)
    for action in ("approve", "reject", "revoke"):
        sub = actions.add_parser(action, help=f"{action} a device")
        sub.add_argument("device_id")
        add_api_arguments(sub)
    claim = actions.add_parser("claim-token", help="claim tokens for zero-touch enrolment")
    claim.add_argument("create", choices=["create"])
    claim.add_argument("--group", default="default", help="the fleet/group it enrols into")
    claim.add_argument("--ttl", default="1h", help='how long it stays valid ("1h", "7d")')
    add_api_arguments(claim)
    devices.set_defaults(func=cmd_devices)


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
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
