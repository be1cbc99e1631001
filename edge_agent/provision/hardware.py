"""What a device tells the hub about its hardware when it enrols (all optional)."""

from __future__ import annotations

import platform
import socket
from pathlib import Path
from typing import Any

import psutil

__all__ = ["hardware_facts"]

_MODEL = Path("/sys/firmware/devicetree/base/model")
_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(field: str) -> str:
    try:
        for line in _CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == field:
                return value.strip()
    except OSError:
        pass
    return ""


def _model() -> str:
    try:
        return _MODEL.read_text().rstrip("\x00").strip()
    except OSError:
        return _cpuinfo("Model") or _cpuinfo("model name")


def _macs() -> dict[str, str]:
    macs = {}
    for name, addresses in psutil.net_if_addrs().items():
        for address in addresses:
            if address.family == psutil.AF_LINK and name != "lo":
                macs[name] = address.address
    return macs


def hardware_facts() -> dict[str, Any]:
    """Model, serial, MACs, CPU count, memory, architecture, where the system says."""
    return {
        "model": _model(),
        "serial": _cpuinfo("Serial"),
        "mac": _macs(),
        "machine": platform.machine(),
        "cpus": psutil.cpu_count() or 0,
        "memory_bytes": psutil.virtual_memory().total,
        "hostname": socket.gethostname(),
    }
