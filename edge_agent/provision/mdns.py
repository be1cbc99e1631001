"""Thin asyncio wrappers over python-zeroconf: advertise a service, browse for one.

The hub advertises :data:`HUB_SERVICE` and every edge advertises :data:`EDGE_SERVICE`
(ARCHITECTURE §7). There is no business logic here: the TXT values are whatever the
caller passes in, and everything found is returned as is.

mDNS is only a *hint*. Anyone on the LAN can advertise anything, so an address, port
or TXT record found here (a fingerprint included) proves nothing. Trust comes from
keys checked elsewhere: the device accepts a hub only once it proves knowledge of the
claim secret or matches a pinned fingerprint.

``interfaces`` (both for :class:`Advertiser` and :func:`browse`) is a list of local
IPv4 addresses to bind mDNS on; ``None`` means every interface of the current network
namespace (``InterfaceChoice.All``). Only IPv4 is used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import ifaddr
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

HUB_SERVICE = "_semstreams-hub._tcp.local."
EDGE_SERVICE = "_semstreams-edge._tcp.local."

#: How long :func:`browse` waits, after its browse window, for the instances seen
#: to resolve (normally instant: the answers that revealed them carry SRV, TXT and A).
RESOLVE_TIMEOUT = 1.0

_LOOPBACK = "127.0.0.1"


log = logging.getLogger(__name__)


@dataclass
class Found:
    """One service instance found by :func:`browse`."""

    name: str
    addresses: list[str]
    port: int
    properties: dict[str, str]


class AdvertiseError(Exception):
    """The service could not be advertised: mDNS cannot run here, or its name is taken."""


class Advertiser:
    """Advertise one service instance by mDNS until :meth:`stop`.

    ``addresses`` are the IPv4 addresses put in the A records; ``None`` means the
    addresses of the interfaces in use (loopback only when there is nothing else).
    """

    def __init__(
        self,
        service_type: str,
        instance_name: str,
        port: int,
        properties: dict[str, str],
        *,
        addresses: list[str] | None = None,
        interfaces: list[str] | None = None,
    ) -> None:
        self.service_type = service_type
        self.instance_name = instance_name
        self.port = port
        self.properties = dict(properties)
        self.interfaces = interfaces
        self.addresses = addresses if addresses is not None else advertised_addresses(interfaces)
        self._zeroconf: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        #: Why the last :meth:`start` failed ("" when it did not).
        self.failure = ""

    @property
    def status(self) -> str:
        """For ``/health``: ``on``, ``off`` (not started, or stopped), or ``failed: <why>``."""
        if self._zeroconf is not None:
            return "on"
        return f"failed: {self.failure}" if self.failure else "off"

    @property
    def name(self) -> str:
        """The full service instance name, e.g. ``hub-1._semstreams-hub._tcp.local.``."""
        return f"{self.instance_name}.{self.service_type}"

    async def start(self) -> None:
        """Bind mDNS, probe for the name and announce the service.

        Raises:
            AdvertiseError: mDNS cannot run here (no multicast, an address no interface
                has, a socket option the system lacks), or another host answers for
                the name (a device with the same id, or a neighbour squatting it).
        """
        if self._zeroconf is not None:
            raise RuntimeError("advertiser already started")
        try:
            self._zeroconf = _open(self.interfaces)
            self._info = self._make_info()
            await self._zeroconf.async_register_service(self._info)
        except OSError as exc:
            await self._close()
            self.failure = f"mDNS cannot run here: {exc}"
            raise AdvertiseError(self.failure) from exc
        except NonUniqueNameException as exc:
            await self._close()
            self.failure = f"another host answers for {self.name}"
            raise AdvertiseError(self.failure) from exc
        except BaseException:
            await self._close()
            raise

    async def update(self, properties: dict[str, str]) -> None:
        """Replace the TXT properties and announce the change."""
        self.properties = dict(properties)
        if self._zeroconf is None:
            return
        self._info = self._make_info()
        await (await self._zeroconf.async_update_service(self._info))

    async def stop(self) -> None:
        """Send goodbyes (unregister) and close the sockets; a no-op when not started."""
        if self._zeroconf is None:
            return
        if self._info is not None:
            await (await self._zeroconf.async_unregister_service(self._info))
        await self._close()

    async def _close(self) -> None:
        zeroconf, self._zeroconf, self._info = self._zeroconf, None, None
        if zeroconf is not None:
            await zeroconf.async_close()

    def _make_info(self) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            self.service_type,
            self.name,
            port=self.port,
            properties=dict(self.properties),
            server=f"{host_label(self.instance_name)}.local.",
            parsed_addresses=list(self.addresses),
        )


async def start_or_report(advertiser: Advertiser, on_failure: Callable[[], None]) -> None:
    """Start ``advertiser``; where it cannot run, log why, call ``on_failure`` and go on
    without it (its :attr:`~Advertiser.status` says why).

    Nothing else waits on being found (devices with a hub URL enrol and sync anyway), so
    a host without multicast, or a LAN neighbour answering for the name, must cost only
    discovery, never a stopped program.
    """
    try:
        await advertiser.start()
    except AdvertiseError as exc:
        log.warning("not advertised by mDNS, running on without it: %s", exc)
        on_failure()


async def browse(
    service_type: str, *, timeout: float, interfaces: list[str] | None = None
) -> list[Found]:
    """Browse for ``timeout`` seconds and return every instance seen, resolved.

    Instances that said goodbye during the window, or that do not resolve within
    :data:`RESOLVE_TIMEOUT` after it, are left out. Each call uses its own zeroconf
    instance, closed before returning, so calls can be repeated freely.
    """
    zeroconf = _open(interfaces)
    try:
        names = await _watch(zeroconf.zeroconf, service_type, timeout)
        found = await asyncio.gather(
            *(_resolve(zeroconf.zeroconf, service_type, name) for name in sorted(names))
        )
    finally:
        await zeroconf.async_close()
    return [item for item in found if item is not None]


async def _watch(zeroconf: Zeroconf, service_type: str, timeout: float) -> set[str]:
    """The instance names present at the end of a ``timeout``-second browse."""
    names: set[str] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            names.discard(name)
        else:
            names.add(name)

    browser = AsyncServiceBrowser(zeroconf, service_type, handlers=[on_change])
    try:
        await asyncio.sleep(timeout)
    finally:
        await browser.async_cancel()
    return names


async def _resolve(zeroconf: Zeroconf, service_type: str, name: str) -> Found | None:
    """Resolve one instance (SRV, TXT, A), or None if it does not answer in time."""
    info = AsyncServiceInfo(service_type, name)
    if not await info.async_request(zeroconf, RESOLVE_TIMEOUT * 1000):
        return None
    return Found(
        name=name,
        addresses=info.parsed_addresses(IPVersion.V4Only),
        port=info.port or 0,
        properties=decode_properties(info),
    )


def decode_properties(info: AsyncServiceInfo) -> dict[str, str]:
    """TXT properties as strings; a key without a value maps to ``""``."""
    return {key: value or "" for key, value in info.decoded_properties.items()}


def advertised_addresses(interfaces: list[str] | None) -> list[str]:
    """The IPv4 addresses to advertise for these ``interfaces`` (None: all local ones).

    Loopback is left out unless it is the only address there is.
    """
    candidates = interfaces if interfaces is not None else local_ipv4_addresses()
    ipv4 = [ip for ip in candidates if ipaddress.ip_address(ip).version == 4]
    routable = [ip for ip in ipv4 if not ipaddress.ip_address(ip).is_loopback]
    return routable or [_LOOPBACK]


def local_ipv4_addresses() -> list[str]:
    """The IPv4 addresses of every interface in the current network namespace."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and ip.ip not in found:
                found.append(ip.ip)
    return found


def host_label(instance_name: str) -> str:
    """A DNS host label derived from an instance name (lowercase, ``[a-z0-9-]``)."""
    label = re.sub(r"[^a-z0-9-]+", "-", instance_name.lower()).strip("-")
    return label[:63] or "host"


def _open(interfaces: list[str] | None) -> AsyncZeroconf:
    """An IPv4-only zeroconf bound on ``interfaces`` (None: all interfaces)."""
    choice: list[str] | InterfaceChoice = (
        list(interfaces) if interfaces is not None else InterfaceChoice.All
    )
    return AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
