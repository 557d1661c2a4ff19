"""One registry per controller kind: name -> implementation -> parameter schema.

The simulator core defines the registries; it never imports ``baselines``.
Built-in controllers register themselves when ``baselines`` is imported (which
importing ``envs`` does), and users register their own the same way::

    from envs.sim.registry import SCALERS

    @SCALERS.register("my_scaler")
    class MyScaler:
        ...

A registered implementation is a class with a ``params_cls`` (a frozen
dataclass whose ``path`` field prefixes error messages; its fields are the
schema), a class with ``accepted_params`` (keyword names it validates itself,
given ``path=``), a class or factory taking no parameters, or a ready object. Scenario validation,
:func:`envs.sim.run_scenario`, the environments and the docs all read these
registries, so a name exists in exactly one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from envs.sim.errors import ConfigError, check_choice, check_keys, fail
from envs.sim.schema import describe


class Registry:
    """Names of one controller kind (``routing``, ``scaling`` or ``placement``) and their implementations."""

    def __init__(self, config_key: str, noun: str, protocol: type | None = None) -> None:
        self.config_key = config_key
        self.noun = noun
        self.protocol = protocol
        self._entries: dict[str, Any] = {}

    # -------------------------------------------------------------- registering

    def register(self, name: str, impl: Any = None, *, replace: bool = False) -> Any:
        """Register ``impl`` under ``name`` (usable as a decorator: ``@REG.register("name")``).

        Registering a taken name raises unless ``replace`` is true.
        """
        if not isinstance(name, str) or not name:
            raise fail(f"{self.config_key} name", name, "must be a non-empty string")

        def deco(obj: Any) -> Any:
            if name in self._entries and not replace and self._entries[name] is not obj:
                raise ConfigError(
                    f"{self.config_key}: {name!r} is already registered ({self._entries[name]!r})"
                )
            self._entries[name] = obj
            return obj

        return deco if impl is None else deco(impl)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    # -------------------------------------------------------------- reading

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __getitem__(self, name: str) -> Any:
        return self._entries[name]

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str, path: str | None = None) -> Any:
        check_choice(path or self.config_key, name, self._entries)
        return self._entries[name]

    def schema(self, name: str) -> list[dict[str, Any]]:
        """The parameters ``name`` accepts: one dict per parameter (name, default, bounds, doc)."""
        impl = self.get(name)
        params_cls = getattr(impl, "params_cls", None)
        return describe(params_cls) if params_cls is not None else []

    def param_names(self, name: str) -> list[str]:
        return [p["name"] for p in self.schema(name)]

    # -------------------------------------------------------------- building

    def is_instance(self, obj: Any) -> bool:
        """Whether ``obj`` is already a controller object (passed through by :meth:`build`)."""
        if isinstance(obj, (str, Mapping)) or obj is None:
            return False
        if self.protocol is not None:
            return isinstance(obj, self.protocol)
        return True

    def split(self, spec: Any, path: str | None = None) -> tuple[str, dict[str, Any]]:
        """``"name"`` or ``{"kind": name, **params}`` -> (name, params), with named errors."""
        path = path or self.config_key
        if isinstance(spec, str):
            kind, params, kind_path = spec, {}, path
        elif isinstance(spec, Mapping):
            if "kind" not in spec:
                raise ConfigError(f"{path}.kind: required key is missing")
            kind, kind_path = spec["kind"], f"{path}.kind"
            params = {str(k): v for k, v in spec.items() if k != "kind"}
        elif hasattr(spec, "kind") and hasattr(spec, "params"):  # a config ControllerSpec
            kind, params, kind_path = spec.kind, dict(spec.params), path
        else:
            raise fail(
                path, spec, f"must be a {self.noun} name, a mapping with 'kind', or a {self.noun} object"
            )
        check_choice(kind_path, kind, self._entries)
        return kind, params

    def validate(self, spec: Any, path: str | None = None) -> None:
        """Check a spec (name, mapping or object) without keeping the result."""
        if not self.is_instance(spec):
            self.build(spec, path)

    def build(self, spec: Any, path: str | None = None) -> Any:
        """A controller object from a name, a ``{"kind": ..., **params}`` mapping, or pass an object through.

        Unknown names, unknown parameters and out-of-range values raise
        :class:`ConfigError` naming ``<path>.<param>`` and the bad value.
        """
        path = path or self.config_key
        if getattr(spec, "obj", None) is not None:  # a config ControllerSpec holding an object
            spec = spec.obj
        if self.is_instance(spec):
            return spec
        kind, params = self.split(spec, path)
        impl = self._entries[kind]
        params_cls = getattr(impl, "params_cls", None)
        if params_cls is not None:
            allowed = [f.name for f in dataclasses.fields(params_cls) if f.init and f.name != "path"]
            check_keys(path, params, allowed)
            return impl(path=path, **params)
        accepted = getattr(impl, "accepted_params", None)
        if accepted:  # a class taking keyword parameters it validates itself
            check_keys(path, params, accepted)
            return impl(path=path, **params)
        check_keys(path, params, ())
        return impl() if isinstance(impl, type) or not self.is_instance(impl) else impl


def build_with(registry: Registry, spec: Any, path: str | None = None) -> Any:
    """:meth:`Registry.build` as a function (for ``functools.partial`` in builders)."""
    return registry.build(spec, path)


Factory = Callable[..., Any]
