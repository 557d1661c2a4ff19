"""``ray_serve``: Ray Serve's default autoscaling policy (``replica_queue_length_autoscaling_policy``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from baselines.scaling.base import (
    _EPS,
    Scaler,
    ScalerParams,
    _ceil,
    _clamp,
    _has_traffic,
    _TickHistory,
    max_replicas_param,
    min_replicas_param,
    register,
)
from envs.sim.schema import param
from envs.sim.view import ModelLoad


@dataclass(frozen=True)
class RayServeParams(ScalerParams):
    """Parameters of :class:`RayServeScaler`; names and defaults follow Ray's ``autoscaling_config``."""

    target_ongoing_requests: float = param(2.0, gt=0, doc="ongoing requests per replica aimed at")
    min_replicas: int = min_replicas_param(1)
    max_replicas: int | None = max_replicas_param(
        doc="upper bound of the answer; null = unbounded (Ray's default 1 would disable autoscaling)"
    )
    upscale_delay_s: float = param(
        30.0, ge=0, doc="seconds an upscale decision must persist before it applies"
    )
    downscale_delay_s: float = param(
        600.0, ge=0, doc="seconds a downscale decision must persist before it applies"
    )
    downscale_to_zero_delay_s: float | None = param(
        None, ge=0, optional=True, doc="delay of the 1 -> 0 downscale; null = downscale_delay_s"
    )
    upscaling_factor: float = param(1.0, gt=0, doc="multiplier of the upscale step (smoothing factor)")
    downscaling_factor: float = param(1.0, gt=0, doc="multiplier of the downscale step (smoothing factor)")
    look_back_period_s: float = param(30.0, gt=0, doc="seconds over which ongoing requests are averaged")


@register
class RayServeScaler(Scaler):
    """Ray Serve's default policy (``replica_queue_length_autoscaling_policy``).

    Sources: Ray docs "Ray Serve Autoscaling" / "Advanced Ray Serve Autoscaling"
    and ``python/ray/serve/autoscaling_policy.py``. Defaults of
    ``AutoscalingConfig``: target_ongoing_requests 2, min_replicas 1,
    upscale_delay_s 30, downscale_delay_s 600, downscale_to_zero_delay_s unset
    (falls back to downscale_delay_s), upscaling/downscaling factor unset (= the
    smoothing factor 1.0), look_back_period_s 30. Ray's ``max_replicas``
    default is 1, which would disable autoscaling; here ``None`` = unbounded.

    desired = total ongoing requests (mean over the look-back period) /
    target_ongoing_requests; then ceil(running + factor x (desired - running))
    (minus one if a downscale would otherwise stall), clamped, and applied only
    when the same direction was decided continuously for the delay
    (Ray counts 0.1 s control-loop iterations; here the streak's elapsed
    simulated time is compared with the delay). Downscaling to 0 only happens
    from 1. With no running replica, a waiting request scales to
    max(ceil(upscaling_factor), current target) at once (Ray's cold-start path).
    Ongoing requests are ``tick_in_flight`` samples.
    """

    name = "ray_serve"
    params_cls = RayServeParams
    params: RayServeParams

    def reset(self) -> None:
        self._history = _TickHistory(keep_s=self.params.look_back_period_s + 1.0)
        self._direction = 0
        self._since_s = 0.0

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        now = load.now_s
        self._history.ingest(load)
        total = self._history.window_mean(now, p.look_back_period_s) or 0.0
        running = int(load.replicas_ready)
        current_target = int(load.target_replicas)
        if running == 0:
            if total > 0 or _has_traffic(load):
                return _clamp(
                    max(math.ceil(p.upscaling_factor), current_target), p.min_replicas, p.max_replicas
                )
            return _clamp(current_target, p.min_replicas, p.max_replicas)

        desired = total / p.target_ongoing_requests
        factor = p.upscaling_factor if desired > running else p.downscaling_factor
        scaled = math.ceil(running + factor * (desired - running) - 1e-9)
        if _ceil(desired) < running and scaled == running:
            scaled -= 1
        bounded = _clamp(scaled, p.min_replicas, p.max_replicas)

        decision = current_target
        if bounded > current_target:
            self._start_streak(+1, now)
            if now - self._since_s >= p.upscale_delay_s - _EPS:
                decision, self._direction = bounded, 0
        elif bounded < current_target:
            self._start_streak(-1, now)
            to_zero = current_target == 1
            delay = p.downscale_delay_s
            if to_zero and p.downscale_to_zero_delay_s is not None:
                delay = p.downscale_to_zero_delay_s
            if not to_zero:
                bounded = max(1, bounded)
            if now - self._since_s >= delay - _EPS:
                decision, self._direction = bounded, 0
        else:
            self._direction = 0
        return _clamp(decision, p.min_replicas, p.max_replicas)

    def _start_streak(self, direction: int, now: float) -> None:
        if self._direction != direction:
            self._direction, self._since_s = direction, now
