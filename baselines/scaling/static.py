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
    reads_load = False  # the control loop may skip building views for it (it then passes None)

    def desired_replicas(self, load: ModelLoad | None) -> int | None:
        if self.params.replicas is not None:
            return self.params.replicas
        if load is None:
            return None  # keep the current target
        return max(0, int(load.target_replicas))
