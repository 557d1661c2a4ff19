"""``scheduled``: AWS-style scheduled scaling (Application Auto Scaling "Scheduled scaling", without cron)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from baselines.scaling.base import (
    _EPS,
    Scaler,
    ScalerParams,
    _check_int,
    _clamp,
    _set,
    max_replicas_param,
    min_replicas_param,
    register,
)
from envs.sim.errors import ConfigError, check_keys, check_number, fail
from envs.sim.schema import param
from envs.sim.view import ModelLoad


@dataclass(frozen=True)
class ScheduledParams(ScalerParams):
    """``schedule``: list of ``{at_s, replicas}``; ``period_s`` repeats it (e.g. 86400 for daily)."""

    schedule: Any = None
    period_s: float | None = param(
        None,
        gt=0,
        optional=True,
        doc="repeat the schedule every period_s seconds (86400: daily); null = one-shot",
    )
    min_replicas: int = min_replicas_param(0)
    max_replicas: int | None = max_replicas_param()

    def _check(self) -> None:
        path = self.path
        raw = self.schedule
        if raw is None:
            raise ConfigError(f"{path}.schedule: required (a list of {{at_s, replicas}})")
        if isinstance(raw, (Mapping, str)) or not isinstance(raw, Sequence) or not raw:
            raise fail(f"{path}.schedule", raw, "must be a non-empty list of {at_s, replicas}")
        entries = []
        for i, e in enumerate(raw):
            epath = f"{path}.schedule[{i}]"
            check_keys(epath, e, ("at_s", "replicas"), required=("at_s", "replicas"))
            at = float(check_number(f"{epath}.at_s", e["at_s"], ge=0))
            if self.period_s is not None and at >= self.period_s:
                raise fail(f"{epath}.at_s", e["at_s"], f"must be < period_s ({self.period_s})")
            entries.append((at, _check_int(f"{epath}.replicas", e["replicas"])))
        entries.sort()
        for (a, _), (b, _) in zip(entries, entries[1:], strict=False):
            if a == b:
                raise ConfigError(f"{path}.schedule: two entries at at_s={a}")
        _set(self, "schedule", tuple(entries))
        super()._check()


@register
class ScheduledScaler(Scaler):
    """Scheduled scaling: the last entry at or before now sets the replica count.

    The AWS Application Auto Scaling "Scheduled scaling" idea without cron
    syntax: times are simulated seconds since the episode start, optionally
    repeating every ``period_s``. Before the first entry of a one-shot schedule
    the current target is kept; a periodic schedule wraps to its last entry.
    """

    name = "scheduled"
    params_cls = ScheduledParams
    params: ScheduledParams

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        now = load.now_s if p.period_s is None else load.now_s % p.period_s
        chosen: int | None = None
        for at, replicas in p.schedule:
            if at <= now + _EPS:
                chosen = replicas
        if chosen is None:
            chosen = p.schedule[-1][1] if p.period_s is not None else int(load.target_replicas)
        return _clamp(chosen, p.min_replicas, p.max_replicas)
