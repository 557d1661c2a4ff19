"""``formula`` / ``formula_half``: the capacity formula operators write by hand, ``N + alpha (D - C) / c``."""

from __future__ import annotations

from dataclasses import dataclass

from baselines.scaling.base import (
    Scaler,
    ScalerParams,
    _ceil,
    _clamp,
    max_replicas_param,
    min_replicas_param,
    register,
)
from envs.sim.schema import param
from envs.sim.view import ModelLoad

_ALPHA_DOC = "fraction of the demand-capacity gap closed per decision (1.0 = close it fully)"


@dataclass(frozen=True)
class FormulaParams(ScalerParams):
    """``alpha``: fraction of the demand-capacity gap closed per decision (1.0 = close it fully)."""

    alpha: float = param(1.0, gt=0, le=1, doc=_ALPHA_DOC + "; 1.0 is a project choice")
    min_replicas: int = min_replicas_param(1)
    max_replicas: int | None = max_replicas_param()


@register
class FormulaScaler(Scaler):
    """``N_new = N + alpha * (D - C) / c``, the formula operators write by hand.

    D = ``arrival_rate_per_s`` (req/s), c = ``capacity_rps_per_replica``, N =
    ``replicas_ready`` and C = N * c. The gap D - C is converted into replicas by
    dividing by c, rounded up and clamped. ``alpha`` defaults to 1.0 (close the
    whole gap at once): a project choice, as the formula has no canonical gain.
    There is no hysteresis or delay: it is the naive baseline.
    """

    name = "formula"
    params_cls = FormulaParams
    params: FormulaParams

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        c = load.capacity_rps_per_replica
        if c <= 0:
            return _clamp(load.target_replicas, p.min_replicas, p.max_replicas)
        n = float(load.replicas_ready)
        gap_replicas = (load.arrival_rate_per_s - n * c) / c
        return _clamp(_ceil(n + p.alpha * gap_replicas), p.min_replicas, p.max_replicas)


@dataclass(frozen=True)
class FormulaHalfParams(FormulaParams):
    """As :class:`FormulaParams` with ``alpha`` 0.5: ``C_new = C + (D - C) / 2``."""

    alpha: float = param(0.5, gt=0, le=1, doc=_ALPHA_DOC + "; 0.5 halves the gap")


@register
class FormulaHalfScaler(FormulaScaler):
    """The damped variant ``C_new = C + (D - C) / 2`` (``formula`` with alpha 0.5)."""

    name = "formula_half"
    params_cls = FormulaHalfParams
