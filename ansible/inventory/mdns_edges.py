#!/usr/bin/env python3
"""Ansible inventory of the SemStreams edges on this LAN, found by mDNS.

Every agent advertises ``_semstreams-edge._tcp.local.`` with TXT ``id``, ``version`` and
``api_port``. This script browses for them and prints them as an Ansible dynamic
inventory: group ``semstreams_edges`` (and ``semstreams_version_<x_y_z>`` per version),
each host named by its id, with ``ansible_host`` its first IPv4 address.

    ansible-inventory -i ansible/inventory/mdns_edges.py --graph
    ansible-playbook -i ansible/inventory/mdns_edges.py ansible/site.yml ...

It uses ``edge_agent``'s mDNS code: run it with the project's Python (its venv on PATH),
or it starts itself again with the repo's ``.venv/bin/python``.
Environment: ``SEMSTREAMS_MDNS_TIMEOUT`` (seconds to browse, default 3),
``SEMSTREAMS_MDNS_INTERFACES`` (comma-separated local IPv4 addresses; default all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the repo, if the package is not installed
try:
    from edge_agent.provision.mdns import EDGE_SERVICE, Found, browse
except ImportError:
    # Ansible runs this through its shebang, i.e. whichever python3 is on PATH; without
    # the project's venv there, use the repo's own venv.
    VENV_PYTHON = REPO / ".venv/bin/python"
    if not VENV_PYTHON.exists() or Path(sys.executable) == VENV_PYTHON:
        raise
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])

GROUP = "semstreams_edges"


def inventory(found: list[Found]) -> dict[str, Any]:
    """The inventory JSON (``--list``) for these advertised edges."""
    hosts: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[str]] = {GROUP: []}
    for edge in found:
        name = edge.properties.get("id") or edge.name.split(".")[0]
        if not edge.addresses or name in hosts:
            continue
        version = edge.properties.get("version", "")
        hosts[name] = {
            "ansible_host": edge.addresses[0],
            "semstreams_advertised_version": version,
            "semstreams_api_port": int(edge.properties.get("api_port") or edge.port),
        }
        groups[GROUP].append(name)
        if version:
            group = "semstreams_version_" + re.sub(r"\W", "_", version)
            groups.setdefault(group, []).append(name)
    result: dict[str, Any] = {group: {"hosts": sorted(names)} for group, names in groups.items()}
    result["_meta"] = {"hostvars": hosts}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="the whole inventory (default)")
    parser.add_argument("--host", help="one host's variables")
    args = parser.parse_args()
    timeout = float(os.environ.get("SEMSTREAMS_MDNS_TIMEOUT", "3"))
    interfaces = [ip for ip in os.environ.get("SEMSTREAMS_MDNS_INTERFACES", "").split(",") if ip]
    found = asyncio.run(browse(EDGE_SERVICE, timeout=timeout, interfaces=interfaces or None))
    result = inventory(found)
    if args.host:
        result = result["_meta"]["hostvars"].get(args.host, {})
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
