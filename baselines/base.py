"""What every parametrised controller shares: validated, frozen parameters built from keywords.

A controller class names its frozen parameters dataclass (``params_cls``,
whose ``path`` field prefixes its error messages) and the scenario key it is
configured under (``config_key``); it is then built either from a params
object or from the keyword parameters of a scenario's mapping.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from envs.sim.errors import check_keys


class ParametrizedController:
    """Base of routers and scalers: ``Cls(params)`` or ``Cls(path=..., **keyword_params)``."""

    params_cls: ClassVar[type]
    config_key: ClassVar[str]

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        if params is None:
            path = kwargs.pop("path", self.config_key)
            check_keys(path, kwargs, self.param_names())
            params = self.params_cls(path=path, **kwargs)
        elif kwargs:
            raise TypeError("pass either a params object or keyword parameters, not both")
        elif not isinstance(params, self.params_cls):
            raise TypeError(
                f"{type(self).__name__} needs {self.params_cls.__name__}, got {type(params).__name__}"
            )
        self.params = params
        self.reset()

    @classmethod
    def param_names(cls) -> list[str]:
        """Parameter names accepted in a scenario mapping (besides ``kind``)."""
        return [f.name for f in dataclasses.fields(cls.params_cls) if f.init and f.name != "path"]

    def reset(self) -> None:
        """Forget all history (start of an episode); stateless controllers need nothing."""
