"""Ansible inventory plugin ``semstreams_fleet``: the edges from the hub's device registry,
or from mDNS when the hub cannot be reached.

The logic lives in the installed package (``cloud_hub.provision.inventory``); this file
reads the options and the token, asks the hub, and fills Ansible's inventory. Run
Ansible with the Python that has ``semstreams-edge`` installed (the project's venv).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin
from ansible.utils.display import Display

DOCUMENTATION = r"""
name: semstreams_fleet
short_description: SemStreams edges from the hub's device registry, or from mDNS
description:
  - Lists the devices of the hub's registry (C(GET /devices)) whose status is in
    O(statuses), each named by its device id with C(ansible_host) the address its last
    sync link came from.
  - Every host is in C(semstreams_edges); a registry device also in the group named
    after its registry group, C(semstreams_status_<status>) and
    C(semstreams_version_<x_y_z>).
  - When the hub cannot be reached (or O(hub_url) is unset) and O(mdns_fallback) is on,
    the edges advertising C(_semstreams-edge._tcp.local.) on this LAN are listed
    instead. A hub that answers with an error, too much or malformed data is an error,
    never a fallback.
  - The token is read from the file O(token_file) (mode 0600) or the environment
    variable named by O(token_env); it never appears in the inventory file, on a
    command line or in output.
options:
  plugin:
    description: The name of this plugin.
    required: true
    choices: [semstreams_fleet]
  hub_url:
    description: The hub's API, e.g. C(https://hub.example:8080). Unset, only mDNS is used.
    type: str
    env:
      - name: SEMSTREAMS_HUB_URL
  token_file:
    description: A file (mode 0600) holding a bearer token with the C(admin) scope.
    type: path
    env:
      - name: SEMSTREAMS_HUB_TOKEN_FILE
  token_env:
    description: The environment variable holding the token when O(token_file) is unset.
    type: str
    default: SEMSTREAMS_HUB_TOKEN
  cafile:
    description: The CA that signs the hub's certificate (HTTPS).
    type: path
  timeout:
    description: Seconds for the hub's whole answer.
    type: float
    default: 10
  max_bytes:
    description: The largest answer read from the hub, in bytes.
    type: int
    default: 16777216
  statuses:
    description: The registry statuses listed as hosts.
    type: list
    elements: str
    default: [approved]
  mdns_fallback:
    description: Browse mDNS when the hub cannot be reached.
    type: bool
    default: true
  mdns_timeout:
    description: Seconds to browse mDNS.
    type: float
    default: 3
    env:
      - name: SEMSTREAMS_MDNS_TIMEOUT
  mdns_interfaces:
    description: Local IPv4 addresses to browse on (default all).
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
# fleet.semstreams_fleet.yml
plugin: semstreams_fleet
hub_url: https://hub.example:8080
token_file: ~/.config/semstreams/hub-admin.token
cafile: ~/.config/semstreams/hub-ca.pem
"""

display = Display()


class InventoryModule(BaseInventoryPlugin):
    """The ``semstreams_fleet`` inventory plugin."""

    NAME = "semstreams_fleet"

    def verify_file(self, path: str) -> bool:
        """Only ``*.semstreams_fleet.yml`` / ``.yaml`` files are this plugin's."""
        return super().verify_file(path) and path.endswith(
            ("semstreams_fleet.yml", "semstreams_fleet.yaml")
        )

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        """Fill ``inventory`` from the hub, or from mDNS when the hub is unreachable."""
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            from cloud_hub.provision import inventory as fleet
        except ImportError as exc:
            raise AnsibleParserError(
                f"semstreams_fleet: the semstreams-edge package is not importable by this"
                f" Python; run Ansible from its venv ({exc})"
            ) from None
        try:
            listing = self._listing(fleet)
        except fleet.InventoryError as exc:
            raise AnsibleParserError(f"semstreams_fleet: {exc}") from None
        self.inventory.add_group(fleet.EDGES_GROUP)  # playbooks name it even when empty
        for group, hosts in listing.groups.items():
            self.inventory.add_group(group)
            for host in hosts:
                self.inventory.add_host(host, group=group)
        for host, hostvars in listing.hostvars.items():
            for key, value in hostvars.items():
                self.inventory.set_variable(host, key, value)

    def _listing(self, fleet: Any) -> Any:
        """From the hub; on :class:`HubUnreachable`, from mDNS (if allowed)."""
        url = self.get_option("hub_url")
        if url:
            try:
                body = fleet.read_bounded(
                    url.rstrip("/") + "/devices",
                    token=self._token(),
                    cafile=self.get_option("cafile"),
                    timeout=float(self.get_option("timeout")),
                    max_bytes=int(self.get_option("max_bytes")),
                )
                return fleet.from_registry(fleet.parse_devices(body), self.get_option("statuses"))
            except fleet.HubUnreachable as exc:
                if not self.get_option("mdns_fallback"):
                    raise
                display.warning(f"semstreams_fleet: {exc}; listing the edges found by mDNS")
        return fleet.from_mdns(self._browse())

    def _token(self) -> str:
        """The bearer token, from the private file or the named environment variable."""
        from edge_agent.errors import ConfigError
        from edge_agent.private_files import check_private

        path = self.get_option("token_file")
        if not path:
            return os.environ.get(self.get_option("token_env"), "").strip()
        try:
            check_private(path, "token_file")
            with open(path, encoding="utf-8") as handle:
                return handle.read(4096).strip()
        except (OSError, ConfigError) as exc:
            raise AnsibleParserError(f"semstreams_fleet: {exc}") from None

    def _browse(self) -> list[Any]:
        """The edges advertising ``_semstreams-edge._tcp.local.`` on this LAN."""
        from cloud_hub.provision.inventory import Advertised
        from edge_agent.provision.mdns import EDGE_SERVICE, browse

        interfaces = self.get_option("mdns_interfaces") or None
        found = asyncio.run(
            browse(
                EDGE_SERVICE, timeout=float(self.get_option("mdns_timeout")), interfaces=interfaces
            )
        )
        return [
            Advertised(
                id=edge.properties.get("id") or edge.name.split(".")[0],
                address=edge.addresses[0],
                version=edge.properties.get("version", "")[:64],
                api_port=_port(edge.properties.get("api_port"), edge.port),
            )
            for edge in found
            if edge.addresses
        ]


def _port(text: str | None, default: int) -> int:
    """A TXT record's port, or ``default`` when it is not one."""
    if text and text.isdigit() and 0 < int(text) < 65536:
        return int(text)
    return default
