"""Scalers for the two pools of a disaggregated model: ``per_pool`` and ``pd_ratio``.

A disaggregated model (``models[].serving: disaggregated``) is two deployments, its prefill pool and
its decode pool, and the simulator asks one scaler per deployment; the scaler tells them apart by
:attr:`envs.sim.view.ModelLoad.role`. Both pools see the model's arrivals and latencies; queues,
in-flight requests, KV usage and replicas are each pool's own.

* ``per_pool`` runs a different scaler per role, e.g. the HPA on each pool's own metric: the prefill
  pool on its queue, the decode pool on its KV-cache usage, the two signals NVIDIA Dynamo's load
  planner watches ("Prefill worker: planner monitors the number of requests pending in the prefill
  queue"; "Decode/aggregated worker: ... average KV cache utilization rate",
  ``docs/architecture/load_planner.md``, ai-dynamo/dynamo).
* ``pd_ratio`` keeps the pools at a fixed prefill:decode ratio and sizes the model's total with its
  arrival rate. Splitwise (Patel et al., ISCA 2024, Sec. V) sizes its pools by a design-space search
  of (prompt machines, token machines) for the target load, SLOs and cost with its simulator
  (splitwise-sim ``configs/experiment/splitwise_*_costopt.yaml`` sweep both counts); a calibration
  over ``requests_per_s_per_replica`` and ``prefill_fraction`` on held-out seeds is that search, and
  scaling the total with the load keeps the ratio it found.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baselines.scaling.base import (
    Scaler,
    ScalerParams,
    _ceil,
    _clamp,
    make_scaler,
    max_replicas_param,
    min_replicas_param,
    register,
)
from envs.sim.errors import fail
from envs.sim.schema import param
from envs.sim.view import ModelLoad

ROLES = ("prefill", "decode", "aggregated")


@dataclass(frozen=True)
class PerPoolParams(ScalerParams):
    """``prefill``, ``decode``: the scaler of each pool (a name or ``{"kind": ..., **params}``);
    ``aggregated``: the scaler of aggregated models (null: such a model is an error)."""

    prefill: Any = None
    decode: Any = None
    aggregated: Any = None

    def _check(self) -> None:
        for role in ("prefill", "decode"):
            if getattr(self, role) is None:
                raise fail(f"{self.path}.{role}", None, "must name the scaler of the pool")
        for role in ROLES:
            spec = getattr(self, role)
            if spec is not None:
                if isinstance(spec, Mapping) and spec.get("kind") == "per_pool":
                    raise fail(f"{self.path}.{role}.kind", "per_pool", "cannot nest")
                make_scaler(spec, f"{self.path}.{role}")  # validates it now, not at the first decision


@register
class PerPoolScaler(Scaler):
    """One scaler per pool role: ``{kind: per_pool, prefill: <scaler>, decode: <scaler>}``.

    Each deployment gets its own instance of the role's scaler (built from the spec), so the
    prefill and decode pools are scaled independently, each on what its scaler reads of its own
    :class:`~envs.sim.view.ModelLoad`. With ``prefill: {kind: hpa, metric: queue_len_per_replica,
    ...}`` and ``decode: {kind: hpa, metric: kv_usage, ...}`` it is the HPA on each pool's own metric.
    """

    name = "per_pool"
    params_cls = PerPoolParams
    params: PerPoolParams

    def reset(self) -> None:
        self._inner: Scaler | None = None
        self._role: str | None = None

    def desired_replicas(self, load: ModelLoad) -> int:
        if self._inner is None:
            spec = getattr(self.params, load.role)
            if spec is None:
                raise fail(
                    f"{self.params.path}.aggregated",
                    None,
                    f"must name a scaler: model {load.model!r} is aggregated",
                )
            self._inner, self._role = make_scaler(spec, f"{self.params.path}.{load.role}"), load.role
        elif load.role != self._role:
            raise RuntimeError(
                f"per_pool: one instance scales one deployment ({self._role}), got a {load.role} pool"
            )
        return self._inner.desired_replicas(load)


@dataclass(frozen=True)
class PdRatioParams(ScalerParams):
    """Parameters of :class:`PdRatioScaler` (found by calibration; no published default)."""

    requests_per_s_per_replica: float = param(
        1.0, gt=0, doc="arrivals one replica of the model (either pool) serves within SLO (req/s)"
    )
    prefill_fraction: float = param(0.5, gt=0, lt=1, doc="share of the model's replicas in its prefill pool")
    downscale_window_s: float = param(
        300.0,
        ge=0,
        doc="the total is the largest computed over this window (Kubernetes HPA's default scale-down "
        "stabilization, 300 s)",
    )
    min_replicas: int = min_replicas_param(1, doc="lower bound of each pool")
    max_replicas: int | None = max_replicas_param(
        doc="upper bound of each pool; null = the pool's max_replicas"
    )


@register
class PdRatioScaler(Scaler):
    """A fixed prefill:decode ratio, the model's total sized by its arrival rate.

    ``total = ceil(arrival_rate_per_s / requests_per_s_per_replica)``, the largest over the last
    ``downscale_window_s`` (scale up at once, down slowly); the prefill pool gets
    ``max(1, round(prefill_fraction * total))`` replicas, the decode pool the rest (at least 1),
    each clamped to ``[min_replicas, max_replicas]``. Both pools see the model's arrivals, so the
    two instances compute the same total. Aggregated models get the whole total.
    """

    name = "pd_ratio"
    params_cls = PdRatioParams
    params: PdRatioParams

    def reset(self) -> None:
        self._history: deque[tuple[float, int]] = deque()

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        total = max(_ceil(load.arrival_rate_per_s / p.requests_per_s_per_replica), 1)
        hist = self._history
        hist.append((load.now_s, total))
        while hist and hist[0][0] < load.now_s - p.downscale_window_s:
            hist.popleft()
        total = max(n for _, n in hist)
        prefill = max(1, math.floor(p.prefill_fraction * total + 0.5))
        if load.role == "prefill":
            n = prefill
        elif load.role == "decode":
            n = max(1, total - prefill)
        else:
            n = total
        return _clamp(n, p.min_replicas, p.max_replicas)
