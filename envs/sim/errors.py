"""Configuration errors and the small validation helpers every config class uses.

Every check names the full key path of the offending field and the value it
received, e.g. ``workload.arrival.rate_per_s: -3 must be > 0``, so a user can
find the line of YAML to fix without reading a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A scenario, controller or trace setting is missing, unknown or out of range."""


def show(value: Any, limit: int = 200) -> str:
    """``repr(value)``, shortened: an error message stays readable whatever a user typed.

    Integers of more than 60 digits are described rather than printed (Python refuses to print
    one of more than 4,300 digits at all).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(path: str, value: Any, requirement: str) -> ConfigError:
    """Build the canonical error ``<path>: <value> <requirement>``."""
    return ConfigError(f"{path}: {show(value)} {requirement}")


def check_number(
    path: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    integer: bool = False,
) -> float:
    """Return ``value`` as a number after checking type, finiteness and bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, value, "must be a number")
    if isinstance(value, float):
        if integer and not value.is_integer():
            raise fail(path, value, "must be an integer")
        if not math.isfinite(value):
            raise fail(path, value, "must be finite")
    # Python compares integers of any size with floats exactly, so the bounds come first; only an
    # integer within them but beyond int64 is refused for its size (numpy could not hold it).
    if gt is not None and not value > gt:
        raise fail(path, value, f"must be > {gt}")
    if ge is not None and not value >= ge:
        raise fail(path, value, f"must be >= {ge}")
    if lt is not None and not value < lt:
        raise fail(path, value, f"must be < {lt}")
    if le is not None and not value <= le:
        raise fail(path, value, f"must be <= {le}")
    if isinstance(value, int) and not -(2**63) <= value <= 2**63 - 1:
        raise fail(path, value, "is too large (outside the 64-bit integer range)")
    return int(value) if integer else value


def check_choice(path: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise fail(path, value, f"must be one of {sorted(choices)}")
    return value


def check_keys(path: str, mapping: Any, allowed: Iterable[str], required: Iterable[str] = ()) -> Mapping:
    """Reject non-mappings, unknown keys and missing required keys."""
    if not isinstance(mapping, Mapping):
        raise fail(path or "<root>", mapping, "must be a mapping")
    allowed = set(allowed)
    for key in mapping:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (allowed: {sorted(allowed)})")
    for key in required:
        if key not in mapping:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: required key is missing")
    return mapping
