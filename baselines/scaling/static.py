"""``static``: a fixed replica count (over-provisioning baseline, or "no autoscaler")."""

from __future__ import annotations

from dataclasses import dataclass

from baselines.scaling.base import Scaler, ScalerParams, register
from envs.sim.schema import param
from envs.sim.view import ModelLoad


@dataclass(frozen=True)
class StaticParams(ScalerParams):
    """``replicas``: fixed count; ``None`` keeps whatever target the model already has."""

    replicas: int | None = param(
        None,
        ge=0,
        integer=True,
        optional=True,
        doc="fixed replica count; null keeps the model's current target",
    )


@register
class StaticScaler(Scaler):
    """A fixed replica count (over-provisioning baseline, or "no autoscaler")."""

    name = "static"
    params_cls = StaticParams
    params: StaticParams

    def desired_replicas(self, load: ModelLoad) -> int:
        if self.params.replicas is None:
            return max(0, int(load.target_replicas))
        return self.params.replicas
