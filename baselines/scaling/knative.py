"""``kpa``: the Knative Pod Autoscaler on request concurrency (stable / panic windows, scale to zero)."""

from __future__ import annotations

import math
from collections import deque
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
class KpaParams(ScalerParams):
    """Parameters of :class:`KpaScaler`; names follow Knative's ``config-autoscaler`` keys."""

    target: float = param(
        100.0, gt=0, doc="concurrent requests per replica (container-concurrency-target-default)"
    )
    target_utilization: float = param(
        0.7, gt=0, le=1, doc="fraction of target aimed at (container-concurrency-target-percentage / 100)"
    )
    stable_window_s: float = param(60.0, gt=0, doc="stable window in seconds (stable-window)")
    panic_window_percentage: float = param(
        10.0, gt=0, le=100, doc="panic window as a percentage of the stable window (panic-window-percentage)"
    )
    panic_threshold_percentage: float = param(
        200.0,
        gt=100,
        doc="panic when desired panic pods >= this % of ready pods (panic-threshold-percentage)",
    )
    max_scale_up_rate: float = param(
        1000.0, gt=1, doc="at most ready x rate pods per tick (max-scale-up-rate)"
    )
    max_scale_down_rate: float = param(
        2.0, gt=1, doc="at least ready / rate pods per tick (max-scale-down-rate)"
    )
    enable_scale_to_zero: bool = param(True, boolean=True, doc="allow 0 replicas (enable-scale-to-zero)")
    scale_to_zero_grace_period_s: float = param(
        30.0, ge=0, doc="seconds a desired 0 must last before it is applied (scale-to-zero-grace-period)"
    )
    scale_down_delay_s: float = param(
        0.0,
        ge=0,
        doc="scale down only to the highest decision of the last this many seconds (scale-down-delay)",
    )
    activation_scale: int = param(
        1,
        ge=1,
        integer=True,
        doc="replicas the activator asks for when a model at 0 gets traffic (activation-scale)",
    )
    tick_interval_s: float = param(2.0, gt=0, doc="seconds between decider ticks (tick-interval)")
    min_replicas: int = min_replicas_param(0, doc="lower bound of the answer (min-scale)")
    max_replicas: int | None = max_replicas_param(
        doc="upper bound of the answer; null = unbounded (max-scale 0)"
    )

    @property
    def target_value(self) -> float:
        """Concurrency per replica the autoscaler aims at: ``target * target_utilization``."""
        return self.target * self.target_utilization

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0


@register
class KpaScaler(Scaler):
    """Knative Pod Autoscaler (KPA) on request concurrency.

    Sources: knative.dev "Configuring the autoscaler", "Configuring scale to
    zero", "Autoscale Sample App", and knative/serving
    ``pkg/autoscaler/scaling/autoscaler.go`` (decider) plus the KPA reconciler's
    scale-to-zero handling. Defaults from ``config-autoscaler``:
    container-concurrency-target-default 100, container-concurrency-target-percentage
    70 (so 70 concurrent requests per replica), stable-window 60 s,
    panic-window-percentage 10 (6 s), panic-threshold-percentage 200,
    max-scale-up-rate 1000, max-scale-down-rate 2, enable-scale-to-zero true,
    scale-to-zero-grace-period 30 s, scale-down-delay 0 s, activation-scale 1,
    min-scale 0, max-scale 0 (= unbounded, here ``None``), tick-interval 2 s.

    Algorithm (per decider tick): stable / panic concurrency = average of the
    per-second in-flight samples over the last 60 s / 6 s; desired stable / panic
    pods = ceil(concurrency / target), kept within [floor(ready /
    max_scale_down_rate), ceil(ready * max_scale_up_rate)] with ready >= 1.
    Panic starts when desired panic pods >= 2 x ready pods, is extended while
    that holds, and ends once a full stable window passes without it; while
    panicking the count never decreases. A desired count of 0 (possible only
    when the whole stable window was idle and ready <= 1) is applied after the
    scale-to-zero grace period. When nothing is provisioned and a request
    waits or arrives, the activator asks for ``activation_scale`` replicas at once.
    A new autoscaler starts in panic when it finds more than one ready pod (so
    the first stable window of an episode never scales down), as Knative does
    after an autoscaler restart.

    Fidelity: Knative's decider ticks every 2 s while the simulator asks once per
    control interval; this scaler replays its 2 s ticks inside each interval
    (using the tick samples up to each tick), so panic timing is right, but the
    ready-pod count of all ticks is the one at the decision time and only the
    last tick's answer reaches the cluster. Use a short control interval (a few
    seconds) for KPA. Concurrency is ``tick_in_flight``; if the engine does not
    count requests buffered while at zero replicas as in flight, the activator
    rule above still wakes the model from ``queue_len`` / arrivals.
    """

    name = "kpa"
    params_cls = KpaParams
    params: KpaParams

    def reset(self) -> None:
        p = self.params
        self._history = _TickHistory(keep_s=p.stable_window_s + p.tick_interval_s + 1.0)
        self._tick_origin_s: float | None = None
        self._tick_index = 0
        self._panic_time_s: float | None = None
        self._max_panic_pods = 0
        self._delay_window: deque[tuple[float, int]] = deque()
        self._zero_since_s: float | None = None
        self._decision: int | None = None

    @property
    def panicking(self) -> bool:
        """Whether the decider is in panic mode (read-only, for tests and plots)."""
        return self._panic_time_s is not None

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        self._history.ingest(load)
        if self._tick_origin_s is None:
            self._tick_origin_s = load.now_s - load.interval_s
            if load.replicas_ready > 1:  # newAutoscaler(): start in panic above one pod
                self._panic_time_s = self._tick_origin_s
                self._max_panic_pods = int(load.replicas_ready)
        while True:
            t = self._tick_origin_s + (self._tick_index + 1) * p.tick_interval_s
            if t > load.now_s + _EPS:
                break
            self._tick_index += 1
            self._tick(t, load)
        result = self._decision if self._decision is not None else int(load.target_replicas)
        if load.replicas_provisioned == 0 and _has_traffic(load):
            # The activator buffers the request and pokes the autoscaler immediately.
            result = max(result, p.activation_scale)
            self._zero_since_s = None
        return _clamp(result, max(p.min_replicas, 0 if p.enable_scale_to_zero else 1), p.max_replicas)

    def _tick(self, t: float, load: ModelLoad) -> None:
        p = self.params
        stable = self._history.window_mean(t, p.stable_window_s)
        panic = self._history.window_mean(t, p.panic_window_s)
        if stable is None or panic is None:
            return  # no data yet: Knative returns an invalid scale result
        ready = max(1.0, float(load.replicas_ready))
        max_up = math.ceil(p.max_scale_up_rate * ready)
        max_down = math.floor(ready / p.max_scale_down_rate)
        dspc = _ceil(stable / p.target_value)
        dppc = _ceil(panic / p.target_value)
        stable_pods = int(min(max(dspc, max_down), max_up))
        panic_pods = int(min(max(dppc, max_down), max_up))
        if p.activation_scale > 1:
            if dspc > 0:
                stable_pods = max(stable_pods, p.activation_scale)
            if dppc > 0:
                panic_pods = max(panic_pods, p.activation_scale)

        over_threshold = dppc / ready >= p.panic_threshold_percentage / 100.0
        if over_threshold:
            self._panic_time_s = t  # begin, or extend, the panic
        elif self._panic_time_s is not None and self._panic_time_s + p.stable_window_s < t - _EPS:
            self._panic_time_s = None
            self._max_panic_pods = 0

        desired = stable_pods
        if self._panic_time_s is not None:
            desired = max(desired, panic_pods)
            self._max_panic_pods = max(self._max_panic_pods, desired)
            desired = self._max_panic_pods  # never scale down while panicking

        if p.scale_down_delay_s > 0:
            self._delay_window.append((t, desired))
            while self._delay_window and self._delay_window[0][0] <= t - p.scale_down_delay_s + _EPS:
                self._delay_window.popleft()
            desired = max(d for _, d in self._delay_window)

        if desired == 0:
            if not p.enable_scale_to_zero:
                desired = 1
            else:
                if self._zero_since_s is None:
                    self._zero_since_s = t
                if t - self._zero_since_s < p.scale_to_zero_grace_period_s - _EPS:
                    desired = int(load.target_replicas)  # grace period: keep the current scale
        else:
            self._zero_since_s = None
        self._decision = desired
