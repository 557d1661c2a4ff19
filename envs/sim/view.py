"""Read-only snapshots of cluster state that controllers and observation builders read.

The engine owns all mutable state. Controllers (``baselines``) and environment
observation builders only ever see these frozen snapshots, so nothing outside
the engine can change the simulation except through its public commands
(``set_target_replicas``, routing decisions, placement decisions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ModelLoad:
    """What a scaler sees about one model at a control decision.

    Rates and means cover the control interval that just ended
    (``[now_s - interval_s, now_s)``); counts are instantaneous at ``now_s``.
    ``tick_*`` arrays are the engine's metric samples inside that interval, one
    per ``tick_s`` seconds (the scrape period of a metrics pipeline), oldest first.
    """

    model: str
    now_s: float
    interval_s: float
    replicas_ready: int
    replicas_loading: int
    replicas_draining: int
    target_replicas: int
    arrival_rate_per_s: float
    completion_rate_per_s: float
    in_flight: int
    in_flight_mean: float
    queue_len: int
    utilization: float
    kv_usage: float
    ttft_p99_s: float
    slo_attainment: float
    capacity_rps_per_replica: float
    tick_s: float = 1.0
    tick_in_flight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tick_arrivals: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def replicas_provisioned(self) -> int:
        """Replicas that exist and are billed but are not draining (ready + loading)."""
        return self.replicas_ready + self.replicas_loading
