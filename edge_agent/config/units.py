"""Human-friendly config units: durations (``"2s"``, ``"500ms"``) and sizes (``"64MB"``)."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ByteSize", "Duration", "decode_hook"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_SCALE = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


class Duration(float):
    """A non-negative duration in seconds: ``"2s"``, ``"500ms"``, ``"1m"`` or a number."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        """Parse a duration.

        Raises:
            ValueError: the value is not a duration (the message says why).
        """
        if isinstance(value, bool):
            raise ValueError('expected a duration such as "2s" or "500ms", got a boolean')
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls(value)
        if isinstance(value, str) and (match := _DURATION.match(value)):
            return cls(float(match[1]) * _DURATION_SCALE[match[2] or "s"])
        raise ValueError(f'expected a duration such as "2s" or "500ms", got {value!r}')


class ByteSize(int):
    """A size in bytes; config accepts ``"64MB"``, ``"1GiB"``, ``"512KB"`` or an integer."""

    @classmethod
    def parse(cls, value: object) -> ByteSize:
        """Parse a byte size.

        Raises:
            ValueError: the value is not a size (the message says why).
        """
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError("a size cannot be negative")
            return cls(value)
        if isinstance(value, str) and (match := _SIZE.match(value)):
            return cls(int(float(match[1]) * _SIZE_SCALE[(match[2] or "b").lower()]))
        raise ValueError(f'expected a size such as "64MB" or "1GiB", got {value!r}')


def decode_hook(kind: type, value: Any) -> Any:
    """msgspec ``dec_hook`` that builds :class:`Duration` and :class:`ByteSize` fields."""
    if kind is Duration:
        return Duration.parse(value)
    if kind is ByteSize:
        return ByteSize.parse(value)
    raise NotImplementedError(f"no decoder for {kind!r}")
