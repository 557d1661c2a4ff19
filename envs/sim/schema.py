"""Parameter schemas: bounds declared next to the field, checked by one generic validator.

A controller's parameters are a frozen dataclass whose numeric, boolean and
choice fields are declared with :func:`param`; the bounds live in the field's
metadata and :func:`validate` (called from ``__post_init__``) checks every such
field, coerces it (``int`` for ``integer=True``, ``float`` otherwise) and names
the key path and the value on error, e.g. ``scaling.target: -1 must be > 0``.
The same metadata is what :mod:`envs.sim.registry` reports as a controller's
schema, so the docs, config validation and the objects agree by construction.

    @dataclass(frozen=True)
    class KpaParams(ScalerParams):
        target: float = param(100.0, gt=0, doc="concurrency per replica")
        panic_window_percentage: float = param(10.0, gt=0, le=100)

        def __post_init__(self):
            validate(self)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from envs.sim.errors import check_choice, check_number, fail

_KEY = "infergym"


def param(
    default: Any = dataclasses.MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    integer: bool = False,
    boolean: bool = False,
    choices: Sequence[Any] | None = None,
    optional: bool = False,
    doc: str = "",
) -> Any:
    """A dataclass field with its validation rule.

    ``optional`` lets the value be None (meaning "not set"); ``boolean`` asks for
    a real bool; ``choices`` for one of the given values; otherwise the value is a
    finite number within the bounds (an integer when ``integer``).
    """
    rule = {"gt": gt, "ge": ge, "lt": lt, "le": le, "integer": integer, "boolean": boolean,
            "choices": tuple(choices) if choices is not None else None, "optional": optional, "doc": doc}  # fmt: skip
    return dataclasses.field(default=default, metadata={_KEY: rule})


def rule_of(f: dataclasses.Field) -> dict[str, Any] | None:
    """The validation rule of a field declared with :func:`param` (None for other fields)."""
    return f.metadata.get(_KEY)


def check_value(path: str, value: Any, rule: dict[str, Any]) -> Any:
    """Check one value against a rule; returns it coerced (int or float for numbers)."""
    if value is None and rule["optional"]:
        return None
    if rule["boolean"]:
        if not isinstance(value, bool):
            raise fail(path, value, "must be true or false")
        return value
    if rule["choices"] is not None:
        return check_choice(path, value, rule["choices"])
    bounds = {k: rule[k] for k in ("gt", "ge", "lt", "le")}
    num = check_number(path, value, integer=rule["integer"], **bounds)
    return int(num) if rule["integer"] else float(num)


def validate(obj: Any, path: str | None = None) -> None:
    """Check and coerce every :func:`param` field of the frozen dataclass ``obj`` in place.

    ``path`` prefixes the error messages (default: ``obj.path`` when it has one).
    """
    prefix = path if path is not None else getattr(obj, "path", "")
    for f in dataclasses.fields(obj):
        rule = rule_of(f)
        if rule is None:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        object.__setattr__(obj, f.name, check_value(key, getattr(obj, f.name), rule))


def describe(cls: type) -> list[dict[str, Any]]:
    """The schema of a parameters dataclass: one dict per settable field (name, default, rule)."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "path":
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        out.append({"name": f.name, "default": default, **(rule_of(f) or {})})
    return out
