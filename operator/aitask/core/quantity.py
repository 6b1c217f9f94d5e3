"""Kubernetes resource quantities <-> floats (cores, bytes, counts), without the client library."""

from __future__ import annotations

import functools
import re

_SUFFIX = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}
_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$")
GIB = 2.0**30


def parse_quantity(value: str | int | float) -> float:
    """Parse '500m', '4', '16Gi', '1e3' into a float (cores, bytes or a count)."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return _parse_text(value)


@functools.lru_cache(maxsize=4096)
def _parse_text(value: str) -> float:
    """A cluster uses a few hundred distinct quantities; every cycle reads each pod's and plan's again."""
    match = _RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, exponent, suffix = match.groups()
    scaled = float(number) * (10.0 ** int(exponent[1:]) if exponent else 1.0)
    return scaled * _SUFFIX[suffix or ""]


def format_cpu(cores: float) -> str:
    """Cores as a canonical quantity: whole cores plainly, otherwise millicores."""
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(size: float) -> str:
    """Bytes as the largest binary unit that keeps an integer (Gi, Mi, Ki), else plain bytes."""
    amount = round(size)
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount and amount % factor == 0:
            return f"{amount // factor}{suffix}"
    return str(amount)
