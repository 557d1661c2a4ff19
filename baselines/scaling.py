"""Classical replica autoscalers, re-implemented from the real systems' documentation and source.

Each scaler is a small stateful object with frozen, validated parameters. Once
per control interval and per model the simulator hands it a read-only
:class:`envs.sim.view.ModelLoad`; the scaler answers with the number of
replicas (ready + loading) that should exist. The algorithms follow the
Kubernetes HorizontalPodAutoscaler controller, the Knative Pod Autoscaler, Ray
Serve's default policy, AWS Application Auto Scaling (target tracking, step,
scheduled, predictive) and the hand-written formulas operators use; every
published default is cited where it is defined, and every place where the
simulator's view cannot express what the real system sees is said so in the
class docstring (and in ``docs/baselines-scaling.md``). ``make_scaler`` builds a
scaler from a scenario's YAML (``"hpa"`` or ``{"kind": "hpa", "target": 0.7}``).
"""

from __future__ import annotations

import abc
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from baselines.base import ParametrizedController
from envs.sim.errors import ConfigError, check_choice, check_keys, check_number, fail, split_controller_spec
from envs.sim.view import ModelLoad

# Float slack for time comparisons and for ceil() of ratios that are integers in exact arithmetic.
_EPS = 1e-9

# --------------------------------------------------------------------------------------------------
# Metrics a scaler can track
# --------------------------------------------------------------------------------------------------

#: Metrics that are averages over ready replicas (they fall as replicas are added), so
#: "replicas x value / target" is meaningful. Value = total / replicas_ready.
PER_REPLICA_METRICS: tuple[str, ...] = (
    "utilization",
    "kv_usage",
    "in_flight_per_replica",
    "queue_len_per_replica",
    "arrival_rate_per_replica",
)
#: Metrics an alarm (step scaling) may watch: the per-replica ones plus cluster-level values.
ALARM_METRICS: tuple[str, ...] = PER_REPLICA_METRICS + (
    "in_flight",
    "queue_len",
    "arrival_rate_per_s",
    "ttft_p99_s",
    "slo_attainment",
)

#: Default targets where a published default exists for an equivalent metric.
#: - utilization 0.8: Kubernetes autoscaling/v1 ``targetCPUUtilizationPercentage`` defaults to 80
#:   (``DefaultCPUUtilization``, pkg/apis/autoscaling).
#: - in_flight_per_replica 2.0: Ray Serve ``target_ongoing_requests`` default 2 (Ray Serve
#:   "Advanced Ray Serve Autoscaling", autoscaling_config), the same per-replica concurrency metric.
#: Other metrics have no published default; a target must be given.
DEFAULT_TARGETS: dict[str, float] = {"utilization": 0.8, "in_flight_per_replica": 2.0}


def _metric_total(load: ModelLoad, metric: str) -> float:
    """Sum of a per-replica metric over ready replicas (what the average is taken of)."""
    if metric == "utilization":
        return load.utilization * load.replicas_ready
    if metric == "kv_usage":
        return load.kv_usage * load.replicas_ready
    if metric == "in_flight_per_replica":
        return float(load.in_flight_mean)
    if metric == "queue_len_per_replica":
        return float(load.queue_len)
    if metric == "arrival_rate_per_replica":
        return float(load.arrival_rate_per_s)
    raise KeyError(metric)


def metric_value(load: ModelLoad, metric: str) -> float | None:
    """Value of ``metric`` for this load; ``None`` when undefined (per-replica metric, no ready replica).

    Per-replica metrics are averaged over *ready* replicas, as a metrics pipeline
    only scrapes serving pods. ``in_flight`` uses the interval mean
    (``in_flight_mean``); queue length is instantaneous (the view has no mean).
    """
    if metric in PER_REPLICA_METRICS:
        if load.replicas_ready <= 0:
            return None
        return _metric_total(load, metric) / load.replicas_ready
    if metric == "in_flight":
        return float(load.in_flight_mean)
    if metric == "queue_len":
        return float(load.queue_len)
    if metric == "ttft_p99_s":
        return float(load.ttft_p99_s)
    if metric == "slo_attainment":
        return float(load.slo_attainment)
    if metric == "arrival_rate_per_s":
        return float(load.arrival_rate_per_s)
    raise KeyError(metric)


def _has_traffic(load: ModelLoad) -> bool:
    """Whether any request is waiting or arriving (what an activator / router would notice)."""
    return (
        load.in_flight > 0
        or load.queue_len > 0
        or load.arrival_rate_per_s > 0
        or bool(np.any(np.asarray(load.tick_arrivals) > 0))
        or bool(np.any(np.asarray(load.tick_in_flight) > 0))
    )


def _ceil(x: float) -> int:
    """Ceiling that ignores float noise (3.0000000001 -> 3), for ratios exact in real arithmetic."""
    return math.ceil(x - 1e-9)


def _clamp(n: int, lo: int, hi: int | None) -> int:
    n = max(int(n), lo, 0)
    return n if hi is None else min(n, hi)


class _TickHistory:
    """Time-stamped samples of the engine's per-tick in-flight count, for windowed averages.

    Sample ``i`` of ``tick_in_flight`` (n samples, one per ``tick_s``, oldest
    first) is stamped ``now_s - (n - 1 - i) * tick_s``: the newest sample is taken
    at the decision time. Without tick samples the interval mean stands in as one
    sample at ``now_s``.
    """

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.times: deque[float] = deque()
        self.values: deque[float] = deque()

    def ingest(self, load: ModelLoad) -> None:
        ticks = np.asarray(load.tick_in_flight, dtype=float)
        if ticks.size == 0:
            stamps, values = [load.now_s], [float(load.in_flight_mean)]
        else:
            n = ticks.size
            stamps = [load.now_s - (n - 1 - i) * load.tick_s for i in range(n)]
            values = ticks.tolist()
        for t, v in zip(stamps, values, strict=True):
            if self.times and t <= self.times[-1] + _EPS:
                continue  # overlapping sample already held
            self.times.append(t)
            self.values.append(v)
        cutoff = load.now_s - self.keep_s
        while self.times and self.times[0] < cutoff:
            self.times.popleft()
            self.values.popleft()

    def window_mean(self, now_s: float, window_s: float) -> float | None:
        """Mean of the samples in ``(now_s - window_s, now_s]``; 0 if only older data exist; None if none."""
        if not self.times or self.times[0] > now_s + _EPS:
            return None
        total, count = 0.0, 0
        lo = now_s - window_s + _EPS
        for t, v in zip(self.times, self.values, strict=True):
            if t > now_s + _EPS:
                break
            if t >= lo:
                total += v
                count += 1
        # Knative's TimedFloat64Buckets returns 0 when nothing was recorded for a whole window.
        return total / count if count else 0.0


# --------------------------------------------------------------------------------------------------
# Parameter validation helpers
# --------------------------------------------------------------------------------------------------


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _check_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(path, value, "must be true or false")
    return value


def _check_int(path: str, value: Any, ge: int = 0) -> int:
    return int(check_number(path, value, ge=ge, integer=True))


def _check_bounds(p: Any) -> None:
    """Validate ``min_replicas``/``max_replicas`` of a params object in place."""
    _set(p, "min_replicas", _check_int(f"{p.path}.min_replicas", p.min_replicas))
    if p.max_replicas is not None:
        _set(p, "max_replicas", _check_int(f"{p.path}.max_replicas", p.max_replicas, ge=1))
        if p.max_replicas < p.min_replicas:
            raise fail(
                f"{p.path}.max_replicas", p.max_replicas, f"must be >= min_replicas ({p.min_replicas})"
            )


def _resolve_target(p: Any, metrics: Sequence[str]) -> None:
    check_choice(f"{p.path}.metric", p.metric, metrics)
    if p.target is None:
        if p.metric not in DEFAULT_TARGETS:
            raise ConfigError(f"{p.path}.target: required for metric {p.metric!r} (no published default)")
        _set(p, "target", DEFAULT_TARGETS[p.metric])
    _set(p, "target", float(check_number(f"{p.path}.target", p.target, gt=0)))


@dataclass(frozen=True)
class ScalerParams:
    """Base of every scaler's frozen parameters; ``path`` only names fields in error messages."""

    path: str = field(default="scaling", kw_only=True, repr=False, compare=False)


# --------------------------------------------------------------------------------------------------
# Scaler interface and registry
# --------------------------------------------------------------------------------------------------


class Scaler(ParametrizedController, abc.ABC):
    """A replica autoscaler for one model: frozen ``params`` plus history that ``reset`` forgets.

    Build with keyword parameters (``HpaScaler(target=0.7)``), a params object
    (``HpaScaler(HpaParams(target=0.7))``) or :func:`make_scaler`. One scaler
    instance serves one model; make one per model.
    """

    name: ClassVar[str]
    params_cls: ClassVar[type[ScalerParams]]

    config_key: ClassVar[str] = "scaling"

    @abc.abstractmethod
    def desired_replicas(self, load: ModelLoad) -> int:
        """Target replica count (ready + loading that should exist) for this model."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


SCALERS: dict[str, type[Scaler]] = {}


def _register(cls: type[Scaler]) -> type[Scaler]:
    SCALERS[cls.name] = cls
    return cls


def make_scaler(spec: str | Mapping[str, Any] | Scaler, path: str = "scaling") -> Scaler:
    """Build a scaler from a registry name, a ``{"kind": name, **params}`` mapping, or pass one through.

    Unknown kinds, unknown parameters and out-of-range values raise
    :class:`ConfigError` naming ``<path>.<param>`` and the bad value.
    """
    if isinstance(spec, Scaler):
        return spec
    cls, params = split_controller_spec(spec, path, SCALERS, "scaler")
    check_keys(path, params, cls.param_names())
    return cls(path=path, **params)


# --------------------------------------------------------------------------------------------------
# static
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaticParams(ScalerParams):
    """``replicas``: fixed count; ``None`` keeps whatever target the model already has."""

    replicas: int | None = None

    def __post_init__(self) -> None:
        if self.replicas is not None:
            _set(self, "replicas", _check_int(f"{self.path}.replicas", self.replicas))


@_register
class StaticScaler(Scaler):
    """A fixed replica count (over-provisioning baseline, or "no autoscaler")."""

    name = "static"
    params_cls = StaticParams
    params: StaticParams

    def desired_replicas(self, load: ModelLoad) -> int:
        if self.params.replicas is None:
            return max(0, int(load.target_replicas))
        return self.params.replicas


# --------------------------------------------------------------------------------------------------
# hpa: Kubernetes HorizontalPodAutoscaler (autoscaling/v2)
# --------------------------------------------------------------------------------------------------


def hpa_desired_replicas(
    current_replicas: int,
    current_value: float,
    target_value: float,
    tolerance: float = 0.1,
    min_replicas: int = 1,
    max_replicas: int | None = None,
) -> int:
    """The HPA algorithm: ``ceil(current * current_value / target_value)``, clamped to [min, max].

    If ``|ratio - 1| <= tolerance`` the current count is kept (tolerance 0.1 is
    the default of ``--horizontal-pod-autoscaler-tolerance``). Source:
    kubernetes.io "Horizontal Pod Autoscaling", section "Algorithm details".
    This is the case with every pod ready and reporting; :class:`HpaScaler` adds
    the unready/missing-pod rules, stabilization and rate limits.
    """
    if target_value <= 0:
        raise ValueError("target_value must be > 0")
    ratio = current_value / target_value
    desired = current_replicas if abs(1.0 - ratio) <= tolerance else _ceil(current_replicas * ratio)
    return _clamp(desired, min_replicas, max_replicas)


@dataclass(frozen=True)
class HpaScalingPolicy:
    """One ``HPAScalingPolicy``: allow ``value`` Pods or Percent of change per ``period_s``."""

    type: str
    value: int
    period_s: float


@dataclass(frozen=True)
class HpaScalingRules:
    """``HPAScalingRules`` of one direction: stabilization window, policy selection and policies."""

    stabilization_window_s: float
    select_policy: str
    policies: tuple[HpaScalingPolicy, ...]


#: Kubernetes defaults (kubernetes.io "Horizontal Pod Autoscaling", section "Default Behavior"):
#: scale up by max(100 %, 4 pods) per 15 s with no stabilization; scale down by 100 % per 15 s
#: with the 300 s window of ``--horizontal-pod-autoscaler-downscale-stabilization``.
HPA_DEFAULT_SCALE_UP = HpaScalingRules(
    0.0, "Max", (HpaScalingPolicy("Percent", 100, 15.0), HpaScalingPolicy("Pods", 4, 15.0))
)
HPA_DEFAULT_SCALE_DOWN = HpaScalingRules(300.0, "Max", (HpaScalingPolicy("Percent", 100, 15.0),))


def _parse_hpa_rules(path: str, raw: Any, default: HpaScalingRules) -> HpaScalingRules:
    """Parse one direction of ``behavior``; missing fields take the Kubernetes defaults (as API defaulting does)."""
    if raw is None:
        return default
    check_keys(path, raw, ("stabilization_window_s", "select_policy", "policies"))
    window = default.stabilization_window_s
    if "stabilization_window_s" in raw:
        # API validation: stabilizationWindowSeconds in [0, 3600].
        window = float(
            check_number(f"{path}.stabilization_window_s", raw["stabilization_window_s"], ge=0, le=3600)
        )
    select = check_choice(
        f"{path}.select_policy", raw.get("select_policy", "Max"), ("Max", "Min", "Disabled")
    )
    policies = default.policies
    raw_policies = raw.get("policies")
    if raw_policies:  # an empty list is nil in Go and gets the defaults
        if not isinstance(raw_policies, Sequence) or isinstance(raw_policies, str):
            raise fail(f"{path}.policies", raw_policies, "must be a list of {type, value, period_s}")
        parsed = []
        for i, pol in enumerate(raw_policies):
            ppath = f"{path}.policies[{i}]"
            check_keys(ppath, pol, ("type", "value", "period_s"), required=("type", "value", "period_s"))
            ptype = check_choice(f"{ppath}.type", pol["type"], ("Pods", "Percent"))
            value = _check_int(f"{ppath}.value", pol["value"], ge=1)
            # API validation: periodSeconds in (0, 1800].
            period = float(check_number(f"{ppath}.period_s", pol["period_s"], gt=0, le=1800))
            parsed.append(HpaScalingPolicy(ptype, value, period))
        policies = tuple(parsed)
    return HpaScalingRules(window, select, policies)


@dataclass(frozen=True)
class HpaParams(ScalerParams):
    """Parameters of :class:`HpaScaler` (see its docstring for sources)."""

    metric: str = "utilization"
    target: float | None = None
    tolerance: float = 0.1
    min_replicas: int = 1
    max_replicas: int | None = None
    sync_period_s: float = 15.0
    behavior: Mapping[str, Any] | None = None
    scale_up: HpaScalingRules = field(init=False, default=HPA_DEFAULT_SCALE_UP)
    scale_down: HpaScalingRules = field(init=False, default=HPA_DEFAULT_SCALE_DOWN)

    def __post_init__(self) -> None:
        _resolve_target(self, ("utilization", "in_flight_per_replica", "queue_len_per_replica"))
        _set(self, "tolerance", float(check_number(f"{self.path}.tolerance", self.tolerance, ge=0)))
        _check_bounds(self)
        _set(
            self, "sync_period_s", float(check_number(f"{self.path}.sync_period_s", self.sync_period_s, gt=0))
        )
        if self.behavior is not None:
            bpath = f"{self.path}.behavior"
            check_keys(bpath, self.behavior, ("scale_up", "scale_down"))
            up = _parse_hpa_rules(f"{bpath}.scale_up", self.behavior.get("scale_up"), HPA_DEFAULT_SCALE_UP)
            down = _parse_hpa_rules(
                f"{bpath}.scale_down", self.behavior.get("scale_down"), HPA_DEFAULT_SCALE_DOWN
            )
            _set(self, "scale_up", up)
            _set(self, "scale_down", down)


@_register
class HpaScaler(Scaler):
    """Kubernetes HorizontalPodAutoscaler, autoscaling/v2, as the controller implements it.

    Sources: kubernetes.io "Horizontal Pod Autoscaling" (algorithm, tolerance,
    default behavior, stabilization) and kubernetes/kubernetes
    ``pkg/controller/podautoscaler/{horizontal.go, replica_calculator.go}``.

    Defaults: ``sync_period_s`` 15 (``--horizontal-pod-autoscaler-sync-period``),
    ``tolerance`` 0.1 (``--horizontal-pod-autoscaler-tolerance``), ``min_replicas``
    1 (``minReplicas`` API default), target utilization 0.8 (autoscaling/v1
    default 80 %), behavior as :data:`HPA_DEFAULT_SCALE_UP` /
    :data:`HPA_DEFAULT_SCALE_DOWN`. ``max_replicas`` is required by the API; here
    ``None`` means unbounded (the cluster's GPUs bound it).

    Metrics: ``utilization`` (busy fraction averaged over ready replicas, a
    Resource metric with a Utilization target), ``in_flight_per_replica`` and
    ``queue_len_per_replica`` (Pods metrics with AverageValue targets).

    Current replicas are the scale target's ``spec.replicas``, here
    ``load.target_replicas``; the ratio is taken over ready pods. Loading
    replicas follow ``replica_calculator.go``: for ``utilization`` they are
    unready pods whose samples are *ignored* (left out of the average; on a
    scale-up counted at 0 %); for the Pods metrics they are pods with *missing*
    metrics (a model server exports metrics only once loaded), counted at 0 on a
    scale-up and at 100 % of the target on a scale-down. After that re-computation
    the HPA keeps the current count if the ratio is within tolerance or flipped
    direction. Not expressible from the view: per-pod metric values (only sums
    matter to these formulas, so nothing is lost), pending pods, the
    ``cpu-initialization-period`` / ``initial-readiness-delay`` timers (every
    loading replica counts as unready), and the metric window of metrics-server
    (the view's interval values are used).

    Zero replicas: Kubernetes treats ``spec.replicas == 0`` with ``minReplicas >=
    1`` as "autoscaling disabled" and leaves it at 0; here the controller instead
    returns ``min_replicas`` (the "current below minReplicas" branch), since 0 is
    never a manual switch-off in the simulator. With ``min_replicas = 0`` a model
    at 0 stays at 0, as Pods metrics cannot scale from zero.

    Between syncs (``now - last_sync < sync_period_s``) the previous answer is
    returned unchanged; a control interval longer than the sync period makes
    every call a sync.
    """

    name = "hpa"
    params_cls = HpaParams
    params: HpaParams

    def reset(self) -> None:
        self._last_sync_s: float | None = None
        self._last_desired: int | None = None
        self._recommendations: list[tuple[float, int]] = []
        self._up_events: list[tuple[float, int]] = []
        self._down_events: list[tuple[float, int]] = []

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        now = load.now_s
        if self._last_sync_s is not None and now - self._last_sync_s < p.sync_period_s - _EPS:
            return self._last_desired if self._last_desired is not None else int(load.target_replicas)
        self._last_sync_s = now
        current = int(load.target_replicas)
        if current == 0 or current < p.min_replicas:
            desired = p.min_replicas
        elif p.max_replicas is not None and current > p.max_replicas:
            desired = p.max_replicas
        else:
            metric_desired = self._replica_calculator(load, current)
            if metric_desired is None:  # no metrics from any ready pod: the controller does not scale
                desired = current
            else:
                desired = self._normalize(now, current, metric_desired)
        if desired != current:
            self._store_scale_event(now, current, desired)
        self._last_desired = desired
        return desired

    def _replica_calculator(self, load: ModelLoad, current: int) -> int | None:
        """``GetResourceReplicas`` / ``calcPlainMetricReplicas`` of replica_calculator.go."""
        p = self.params
        ready, unready = int(load.replicas_ready), int(load.replicas_loading)
        if ready <= 0:
            return None
        total = _metric_total(load, p.metric)
        ratio = total / (ready * p.target)
        if p.metric == "utilization":
            rebalance = unready > 0 and ratio > 1.0
            if not rebalance:
                return current if abs(1.0 - ratio) <= p.tolerance else _ceil(ratio * ready)
            counted = ready + unready  # unready pods re-enter at 0 % on a scale-up
            new_ratio = total / (counted * p.target)
            if abs(1.0 - new_ratio) <= p.tolerance or new_ratio < 1.0:
                return current
            new = _ceil(new_ratio * counted)
            return current if new < current else new
        if unready == 0:
            return current if abs(1.0 - ratio) <= p.tolerance else _ceil(ratio * ready)
        counted = ready + unready
        filled = total + unready * p.target if ratio < 1.0 else total
        new_ratio = filled / (counted * p.target)
        if abs(1.0 - new_ratio) <= p.tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
            return current
        return _ceil(new_ratio * counted)

    def _normalize(self, now: float, current: int, desired: int) -> int:
        """``normalizeDesiredReplicasWithBehaviors``: stabilize, then rate-limit and clamp."""
        p = self.params
        up_cut = now - p.scale_up.stabilization_window_s
        down_cut = now - p.scale_down.stabilization_window_s
        up_rec, down_rec = desired, desired
        for t, rec in self._recommendations:
            if t > up_cut:
                up_rec = min(up_rec, rec)
            if t > down_cut:
                down_rec = max(down_rec, rec)
        stabilized = min(max(current, up_rec), down_rec)
        oldest_needed = min(up_cut, down_cut)
        self._recommendations = [(t, r) for t, r in self._recommendations if t > oldest_needed]
        self._recommendations.append((now, desired))

        if stabilized > current:
            limit = max(self._scale_up_limit(now, current), current)
            allowed = limit if p.max_replicas is None else min(p.max_replicas, limit)
            return min(stabilized, allowed)
        if stabilized < current:
            limit = min(self._scale_down_limit(now, current), current)
            return max(stabilized, p.min_replicas, limit)
        return stabilized

    def _period_start(self, now: float, current: int, period_s: float) -> int:
        cutoff = now - period_s
        added = sum(c for t, c in self._up_events if t > cutoff)
        deleted = sum(c for t, c in self._down_events if t > cutoff)
        return current - added + deleted

    def _scale_up_limit(self, now: float, current: int) -> int:
        rules = self.params.scale_up
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for pol in rules.policies:
            start = self._period_start(now, current, pol.period_s)
            if pol.type == "Pods":
                proposals.append(start + pol.value)
            else:  # rounded up so a small percentage still permits one more pod
                proposals.append(math.ceil(start * (1 + pol.value / 100)))
        return min(proposals) if rules.select_policy == "Min" else max(proposals)

    def _scale_down_limit(self, now: float, current: int) -> int:
        rules = self.params.scale_down
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for pol in rules.policies:
            start = self._period_start(now, current, pol.period_s)
            if pol.type == "Pods":
                proposals.append(start - pol.value)
            else:  # Go's int32() truncation
                proposals.append(int(start * (1 - pol.value / 100)))
        # "Max" picks the policy allowing the largest change, i.e. the lowest floor.
        return max(proposals) if rules.select_policy == "Min" else min(proposals)

    def _store_scale_event(self, now: float, before: int, after: int) -> None:
        p = self.params
        longest = max([pol.period_s for pol in p.scale_up.policies + p.scale_down.policies], default=0.0)
        self._up_events = [(t, c) for t, c in self._up_events if t > now - longest]
        self._down_events = [(t, c) for t, c in self._down_events if t > now - longest]
        if after > before:
            self._up_events.append((now, after - before))
        else:
            self._down_events.append((now, before - after))


# --------------------------------------------------------------------------------------------------
# kpa: Knative Pod Autoscaler
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KpaParams(ScalerParams):
    """Parameters of :class:`KpaScaler`; names follow Knative's ``config-autoscaler`` keys."""

    target: float = 100.0
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    enable_scale_to_zero: bool = True
    scale_to_zero_grace_period_s: float = 30.0
    scale_down_delay_s: float = 0.0
    activation_scale: int = 1
    tick_interval_s: float = 2.0
    min_replicas: int = 0
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        path = self.path
        _set(self, "target", float(check_number(f"{path}.target", self.target, gt=0)))
        tu = float(check_number(f"{path}.target_utilization", self.target_utilization, gt=0, le=1))
        _set(self, "target_utilization", tu)
        _set(
            self,
            "stable_window_s",
            float(check_number(f"{path}.stable_window_s", self.stable_window_s, gt=0)),
        )
        pwp = float(
            check_number(f"{path}.panic_window_percentage", self.panic_window_percentage, gt=0, le=100)
        )
        _set(self, "panic_window_percentage", pwp)
        ptp = float(
            check_number(f"{path}.panic_threshold_percentage", self.panic_threshold_percentage, gt=100)
        )
        _set(self, "panic_threshold_percentage", ptp)
        _set(
            self,
            "max_scale_up_rate",
            float(check_number(f"{path}.max_scale_up_rate", self.max_scale_up_rate, gt=1)),
        )
        rate_down = float(check_number(f"{path}.max_scale_down_rate", self.max_scale_down_rate, gt=1))
        _set(self, "max_scale_down_rate", rate_down)
        _check_bool(f"{path}.enable_scale_to_zero", self.enable_scale_to_zero)
        grace = float(
            check_number(f"{path}.scale_to_zero_grace_period_s", self.scale_to_zero_grace_period_s, ge=0)
        )
        _set(self, "scale_to_zero_grace_period_s", grace)
        _set(
            self,
            "scale_down_delay_s",
            float(check_number(f"{path}.scale_down_delay_s", self.scale_down_delay_s, ge=0)),
        )
        _set(self, "activation_scale", _check_int(f"{path}.activation_scale", self.activation_scale, ge=1))
        _set(
            self,
            "tick_interval_s",
            float(check_number(f"{path}.tick_interval_s", self.tick_interval_s, gt=0)),
        )
        _check_bounds(self)

    @property
    def target_value(self) -> float:
        """Concurrency per replica the autoscaler aims at: ``target * target_utilization``."""
        return self.target * self.target_utilization

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0


@_register
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


# --------------------------------------------------------------------------------------------------
# formula / formula_half: the hand-written capacity formula
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormulaParams(ScalerParams):
    """``alpha``: fraction of the demand-capacity gap closed per decision (1.0 = close it fully)."""

    alpha: float = 1.0
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        _set(self, "alpha", float(check_number(f"{self.path}.alpha", self.alpha, gt=0, le=1)))
        _check_bounds(self)


@_register
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

    alpha: float = 0.5


@_register
class FormulaHalfScaler(FormulaScaler):
    """The damped variant ``C_new = C + (D - C) / 2`` (``formula`` with alpha 0.5)."""

    name = "formula_half"
    params_cls = FormulaHalfParams


# --------------------------------------------------------------------------------------------------
# target_tracking / queue_target: AWS Application Auto Scaling target tracking
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetTrackingParams(ScalerParams):
    """Parameters of :class:`TargetTrackingScaler` (see its docstring for sources)."""

    metric: str = "in_flight_per_replica"
    target: float | None = None
    scale_out_cooldown_s: float = 300.0
    scale_in_cooldown_s: float = 300.0
    disable_scale_in: bool = False
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        _resolve_target(self, PER_REPLICA_METRICS)
        self._check_common()

    def _check_common(self) -> None:
        path = self.path
        _set(
            self,
            "scale_out_cooldown_s",
            float(check_number(f"{path}.scale_out_cooldown_s", self.scale_out_cooldown_s, ge=0)),
        )
        _set(
            self,
            "scale_in_cooldown_s",
            float(check_number(f"{path}.scale_in_cooldown_s", self.scale_in_cooldown_s, ge=0)),
        )
        _check_bool(f"{path}.disable_scale_in", self.disable_scale_in)
        _check_bounds(self)


class _CooldownState:
    """AWS cooldown bookkeeping shared by target tracking and step scaling.

    Scale-out cooldown: "won't increase the desired capacity again unless a larger
    scale out is triggered; the capacity added by the initiating scale-out is
    calculated as part of the desired capacity for the next scale-out" - so a
    scale-out inside the cooldown is computed from the capacity *before* the
    initiating scale-out. Scale-in cooldown: blocks further scale-ins; a scale-out
    during it happens immediately and ends it.
    """

    def __init__(self) -> None:
        self.last_out_s: float | None = None
        self.out_base = 0
        self.last_in_s: float | None = None

    def out_base_for(self, now: float, current: int, cooldown_s: float) -> int:
        if self.last_out_s is not None and now - self.last_out_s < cooldown_s - _EPS:
            return self.out_base
        return current

    def record_out(self, now: float, current: int, cooldown_s: float) -> None:
        if not (self.last_out_s is not None and now - self.last_out_s < cooldown_s - _EPS):
            self.last_out_s, self.out_base = now, current
        self.last_in_s = None

    def scale_in_blocked(self, now: float, cooldown_s: float) -> bool:
        return self.last_in_s is not None and now - self.last_in_s < cooldown_s - _EPS


@_register
class TargetTrackingScaler(Scaler):
    """AWS Application Auto Scaling target tracking: keep a per-replica metric at ``target``.

    Source: AWS Application Auto Scaling User Guide, "Target tracking scaling
    policies" and the ``TargetTrackingScalingPolicyConfiguration`` API reference.
    desired = ceil(N * metric / target) with N the current capacity
    (``target_replicas``) and the metric averaged over ready replicas; scale out
    as soon as desired > N, scale in when desired < N and the scale-in cooldown
    has expired. Cooldowns default to 300 s for both directions: the API
    reference gives 300 s for ``ScaleOutCooldown`` and ``ScaleInCooldown`` of ECS
    services, SageMaker endpoint variants and custom resources (the closest
    analogues of an inference deployment). Cooldown semantics: see
    ``_CooldownState``. ``disable_scale_in`` mirrors ``DisableScaleIn`` (default
    false).

    Defaults that AWS does not publish (``TargetValue`` and ``MinCapacity`` are
    required there): metric ``in_flight_per_replica`` (SageMaker's concurrent
    requests per model copy is the AWS analogue), target from
    :data:`DEFAULT_TARGETS`, ``min_replicas`` 1. Not modelled: the CloudWatch
    alarms' datapoint counts and 1-minute periods (the metric is the control
    interval's value). With no ready replica the metric has no data and nothing
    changes, except that a model at 0 with traffic is given one replica.
    """

    name = "target_tracking"
    params_cls = TargetTrackingParams
    params: TargetTrackingParams

    def _metric(self) -> str:
        return self.params.metric

    def reset(self) -> None:
        self._cooldown = _CooldownState()

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        now = load.now_s
        current = int(load.target_replicas)
        value = metric_value(load, self._metric())
        if value is None or not math.isfinite(value):
            if current == 0 and _has_traffic(load):
                return _clamp(1, p.min_replicas, p.max_replicas)
            return _clamp(current, p.min_replicas, p.max_replicas)
        base = self._cooldown.out_base_for(now, current, p.scale_out_cooldown_s)
        desired_out = _clamp(_ceil(base * value / p.target), p.min_replicas, p.max_replicas)
        if desired_out > current:
            self._cooldown.record_out(now, current, p.scale_out_cooldown_s)
            return desired_out
        desired_in = _clamp(_ceil(current * value / p.target), p.min_replicas, p.max_replicas)
        if desired_in < current and not p.disable_scale_in:
            if self._cooldown.scale_in_blocked(now, p.scale_in_cooldown_s):
                return _clamp(current, p.min_replicas, p.max_replicas)
            self._cooldown.last_in_s = now
            return desired_in
        return _clamp(current, p.min_replicas, p.max_replicas)


@dataclass(frozen=True)
class QueueTargetParams(ScalerParams):
    """Parameters of :class:`QueueTargetScaler`: ``target`` waiting requests per ready replica."""

    target: float = 1.0
    scale_out_cooldown_s: float = 300.0
    scale_in_cooldown_s: float = 300.0
    disable_scale_in: bool = False
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        _set(self, "target", float(check_number(f"{self.path}.target", self.target, gt=0)))
        TargetTrackingParams._check_common(self)  # type: ignore[arg-type]


@_register
class QueueTargetScaler(TargetTrackingScaler):
    """Target tracking on queue length per ready replica (the queue-based scaler).

    The pattern of AWS's "Scaling based on Amazon SQS" (backlog per instance =
    queue length / in-service instances, tracked at an acceptable backlog) and of
    KEDA queue scalers, with :class:`TargetTrackingScaler`'s cooldowns. The
    default ``target`` of 1 waiting request per replica is a project choice; AWS
    suggests acceptable latency / per-request processing time. Requests already
    in a running batch are not in the queue, so an empty queue reads as "scale in".
    """

    name = "queue_target"
    params_cls = QueueTargetParams  # type: ignore[assignment]

    def _metric(self) -> str:
        return "queue_len_per_replica"


# --------------------------------------------------------------------------------------------------
# step: AWS step scaling
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepAdjustment:
    """Adjust capacity by ``adjust`` while ``lower <= metric < upper`` (``None`` = unbounded)."""

    lower: float | None
    upper: float | None
    adjust: float


def _parse_steps(path: str, raw: Any, adjustment_type: str) -> tuple[StepAdjustment, ...]:
    if isinstance(raw, Mapping) or isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise fail(path, raw, "must be a non-empty list of {lower, upper, adjust}")
    steps = []
    for i, s in enumerate(raw):
        spath = f"{path}[{i}]"
        check_keys(spath, s, ("lower", "upper", "adjust"), required=("adjust",))
        lower = s.get("lower")
        upper = s.get("upper")
        if lower is None and upper is None:
            raise ConfigError(f"{spath}: needs at least one of lower, upper")
        lower = None if lower is None else float(check_number(f"{spath}.lower", lower))
        upper = None if upper is None else float(check_number(f"{spath}.upper", upper))
        if lower is not None and upper is not None and not lower < upper:
            raise fail(f"{spath}.upper", upper, f"must be > lower ({lower})")
        if adjustment_type == "ExactCapacity":
            adjust = float(_check_int(f"{spath}.adjust", s["adjust"]))
        elif adjustment_type == "ChangeInCapacity":
            adjust = float(check_number(f"{spath}.adjust", s["adjust"], integer=True))
            if adjust == 0:
                raise fail(f"{spath}.adjust", s["adjust"], "must be non-zero")
        else:
            adjust = float(check_number(f"{spath}.adjust", s["adjust"], gt=-100))
            if adjust == 0:
                raise fail(f"{spath}.adjust", s["adjust"], "must be non-zero")
        steps.append(StepAdjustment(lower, upper, adjust))
    ordered = sorted(steps, key=lambda st: -math.inf if st.lower is None else st.lower)
    for a, b in zip(ordered, ordered[1:], strict=False):
        a_up = math.inf if a.upper is None else a.upper
        b_lo = -math.inf if b.lower is None else b.lower
        if a_up > b_lo:
            raise ConfigError(f"{path}: step intervals overlap ({a} and {b})")
    return tuple(steps)


@dataclass(frozen=True)
class StepParams(ScalerParams):
    """Parameters of :class:`StepScaler` (see its docstring for sources)."""

    metric: str = "utilization"
    steps: Any = (
        {"lower": 0.8, "upper": 0.9, "adjust": 1},
        {"lower": 0.9, "adjust": 3},
        {"upper": 0.3, "adjust": -1},
    )
    adjustment_type: str = "ChangeInCapacity"
    min_adjustment_magnitude: int | None = None
    scale_out_cooldown_s: float = 300.0
    scale_in_cooldown_s: float = 300.0
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        path = self.path
        check_choice(f"{path}.metric", self.metric, ALARM_METRICS)
        atype = check_choice(
            f"{path}.adjustment_type",
            self.adjustment_type,
            ("ChangeInCapacity", "PercentChangeInCapacity", "ExactCapacity"),
        )
        _set(self, "steps", _parse_steps(f"{path}.steps", self.steps, atype))
        if self.min_adjustment_magnitude is not None:
            if atype != "PercentChangeInCapacity":
                raise fail(
                    f"{path}.min_adjustment_magnitude",
                    self.min_adjustment_magnitude,
                    "needs adjustment_type PercentChangeInCapacity",
                )
            _set(
                self,
                "min_adjustment_magnitude",
                _check_int(f"{path}.min_adjustment_magnitude", self.min_adjustment_magnitude, ge=1),
            )
        _set(
            self,
            "scale_out_cooldown_s",
            float(check_number(f"{path}.scale_out_cooldown_s", self.scale_out_cooldown_s, ge=0)),
        )
        _set(
            self,
            "scale_in_cooldown_s",
            float(check_number(f"{path}.scale_in_cooldown_s", self.scale_in_cooldown_s, ge=0)),
        )
        _check_bounds(self)


def aws_percent_change(capacity: int, percent: float, min_magnitude: int | None = None) -> int:
    """Replica change for ``PercentChangeInCapacity`` with Application Auto Scaling's rounding.

    Source (AWS "Step scaling policies", "Scaling adjustment types"): values
    above 1 round down, between 0 and 1 become 1, between -1 and 0 become -1,
    below -1 round up (toward zero); ``MinAdjustmentMagnitude`` is a floor on |change|.
    """
    raw = capacity * percent / 100.0
    if raw > 1:
        change = math.floor(raw)
    elif raw > 0:
        change = 1
    elif raw >= -1:
        change = -1 if raw < 0 else 0
    else:
        change = math.ceil(raw)
    if min_magnitude is not None and change != 0 and abs(change) < min_magnitude:
        change = min_magnitude if change > 0 else -min_magnitude
    return change


@_register
class StepScaler(Scaler):
    """AWS Application Auto Scaling step scaling on an alarm metric.

    Source: AWS Application Auto Scaling User Guide, "Step scaling policies" and
    the ``StepScalingPolicyConfiguration`` API reference. Each step adjusts the
    current capacity (``target_replicas``) while the metric lies in its interval;
    bounds are absolute metric values here (AWS states them relative to the alarm
    threshold). Per AWS, when the metric is above the threshold the lower bound is
    inclusive and the upper exclusive, below it the reverse: so increasing steps
    match ``lower <= m < upper`` and decreasing steps ``lower < m <= upper``. The
    alarm re-invokes the policy every evaluation while in alarm (here: every
    control interval). Adjustment types ChangeInCapacity (default),
    PercentChangeInCapacity (AWS rounding, :func:`aws_percent_change`) and
    ExactCapacity. ``Cooldown`` defaults to 300 s (ECS, SageMaker, custom
    resources); with separate scale-out and scale-in policies each has its own,
    hence two parameters. Cooldown semantics as in target tracking: during a
    scale-out cooldown a new scale-out is computed from the capacity before the
    initiating one ("+2, then a +3 step adds only 1").

    Defaults AWS does not publish: metric ``utilization`` and the steps (+1 at
    [0.8, 0.9), +3 at >= 0.9, -1 at <= 0.3) are project choices; ``min_replicas``
    1. A metric without data (no ready replica, NaN TTFT) triggers nothing.
    """

    name = "step"
    params_cls = StepParams
    params: StepParams

    def reset(self) -> None:
        self._cooldown = _CooldownState()

    def _match(self, value: float) -> StepAdjustment | None:
        for st in self.params.steps:
            lo = -math.inf if st.lower is None else st.lower
            hi = math.inf if st.upper is None else st.upper
            if st.adjust > 0 or self.params.adjustment_type == "ExactCapacity":
                if lo <= value < hi:
                    return st
            elif lo < value <= hi:
                return st
        return None

    def _apply(self, capacity: int, st: StepAdjustment) -> int:
        p = self.params
        if p.adjustment_type == "ExactCapacity":
            return int(st.adjust)
        if p.adjustment_type == "ChangeInCapacity":
            return capacity + int(st.adjust)
        return capacity + aws_percent_change(capacity, st.adjust, p.min_adjustment_magnitude)

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        now = load.now_s
        current = int(load.target_replicas)
        keep = _clamp(current, p.min_replicas, p.max_replicas)
        value = metric_value(load, p.metric)
        if value is None or not math.isfinite(value):
            return keep
        st = self._match(value)
        if st is None:
            return keep
        scale_out = st.adjust > current if p.adjustment_type == "ExactCapacity" else st.adjust > 0
        if scale_out:
            base = self._cooldown.out_base_for(now, current, p.scale_out_cooldown_s)
            new = _clamp(self._apply(base, st), p.min_replicas, p.max_replicas)
            if new > current:
                self._cooldown.record_out(now, current, p.scale_out_cooldown_s)
                return new
            return keep
        if self._cooldown.scale_in_blocked(now, p.scale_in_cooldown_s):
            return keep
        new = _clamp(self._apply(current, st), p.min_replicas, p.max_replicas)
        if new < current:
            self._cooldown.last_in_s = now
            return new
        return keep


# --------------------------------------------------------------------------------------------------
# scheduled
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledParams(ScalerParams):
    """``schedule``: list of ``{at_s, replicas}``; ``period_s`` repeats it (e.g. 86400 for daily)."""

    schedule: Any = None
    period_s: float | None = None
    min_replicas: int = 0
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        path = self.path
        raw = self.schedule
        if raw is None:
            raise ConfigError(f"{path}.schedule: required (a list of {{at_s, replicas}})")
        if isinstance(raw, (Mapping, str)) or not isinstance(raw, Sequence) or not raw:
            raise fail(f"{path}.schedule", raw, "must be a non-empty list of {at_s, replicas}")
        if self.period_s is not None:
            _set(self, "period_s", float(check_number(f"{path}.period_s", self.period_s, gt=0)))
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
        _check_bounds(self)


@_register
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


# --------------------------------------------------------------------------------------------------
# predictive: Holt-Winters forecast, provisioned ahead of cold starts
# --------------------------------------------------------------------------------------------------


class HoltWinters:
    """Online additive Holt-Winters (level, trend, additive season), plain numpy.

    Recursions (Holt 1957; Winters 1960; Hyndman & Athanasopoulos, "Forecasting:
    Principles and Practice", section 8.3)::

        level_t  = alpha (y_t - s_{t-m}) + (1 - alpha)(level_{t-1} + trend_{t-1})
        trend_t  = beta (level_t - level_{t-1}) + (1 - beta) trend_{t-1}
        s_t      = gamma (y_t - level_t) + (1 - gamma) s_{t-m}
        yhat_{t+h} = level_t + h trend_t + s_{t+h-m(k+1)}

    Before one season of data exists it is Holt's linear trend method (level =
    y_0, trend = y_1 - y_0). After one season the seasonal indices are estimated
    provisionally (trend from the season's end points); after two seasons they
    are re-estimated by the classical decomposition start (trend = difference of
    the two seasonal means / m, season = detrended average), which is exact for a
    noiseless trend + periodic signal. ``season_length=None`` keeps Holt's method.
    """

    def __init__(
        self, alpha: float, beta: float, gamma: float = 0.0, season_length: int | None = None
    ) -> None:
        if not (0 < alpha <= 1 and 0 <= beta <= 1 and 0 <= gamma <= 1):
            raise ValueError("smoothing parameters must lie in [0, 1] (alpha > 0)")
        if season_length is not None and season_length < 2:
            raise ValueError("season_length must be >= 2")
        self.alpha, self.beta, self.gamma, self.season_length = alpha, beta, gamma, season_length
        self.reset()

    def reset(self) -> None:
        self.n_observed = 0
        self.level = 0.0
        self.trend = 0.0
        self.season: np.ndarray | None = None
        self._start: list[float] = []

    def update(self, y: float) -> None:
        """Absorb the next observation."""
        y = float(y)
        n, m = self.n_observed, self.season_length
        if n == 0:
            self.level, self.trend = y, 0.0
        elif n == 1 and self.season is None:
            self.level, self.trend = y, y - self.level
        elif self.season is None:
            prev = self.level
            self.level = self.alpha * y + (1 - self.alpha) * (self.level + self.trend)
            self.trend = self.beta * (self.level - prev) + (1 - self.beta) * self.trend
        else:
            i = n % m
            s_old = self.season[i]
            prev = self.level
            self.level = self.alpha * (y - s_old) + (1 - self.alpha) * (self.level + self.trend)
            self.trend = self.beta * (self.level - prev) + (1 - self.beta) * self.trend
            self.season[i] = self.gamma * (y - self.level) + (1 - self.gamma) * s_old
        self.n_observed += 1
        if m is None:
            return
        if len(self._start) < 2 * m:
            self._start.append(y)
        if self.n_observed == m:
            self._init_one_season()
        elif self.n_observed == 2 * m:
            self._init_two_seasons()

    def _init_one_season(self) -> None:
        m = self.season_length
        y = np.asarray(self._start[:m])
        slope = (y[-1] - y[0]) / (m - 1)
        offsets = np.arange(m) - (m - 1) / 2
        mean = float(y.mean())
        self.season = y - (mean + slope * offsets)
        self.level = mean + slope * (m - 1) / 2
        self.trend = float(slope)

    def _init_two_seasons(self) -> None:
        m = self.season_length
        y = np.asarray(self._start[: 2 * m]).reshape(2, m)
        means = y.mean(axis=1)
        slope = (means[1] - means[0]) / m
        offsets = np.arange(m) - (m - 1) / 2
        detrended = y - (means[:, None] + slope * offsets[None, :])
        self.season = detrended.mean(axis=0)
        self.level = float(means[1] + slope * (m - 1) / 2)
        self.trend = float(slope)

    def forecast(self, steps_ahead: int) -> float:
        """Forecast ``steps_ahead`` (>= 1) observations after the last one."""
        if self.n_observed == 0:
            raise ValueError("no observation yet")
        h = int(steps_ahead)
        value = self.level + h * self.trend
        if self.season is not None:
            value += self.season[(self.n_observed - 1 + h) % self.season_length]
        return float(value)


@dataclass(frozen=True)
class PredictiveParams(ScalerParams):
    """Parameters of :class:`PredictiveScaler` (see its docstring)."""

    alpha: float = 0.5
    beta: float = 0.1
    gamma: float = 0.3
    season_intervals: int | None = None
    cold_start_s: float = 60.0
    target_utilization: float = 0.7
    include_current_demand: bool = True
    min_replicas: int = 1
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        path = self.path
        _set(self, "alpha", float(check_number(f"{path}.alpha", self.alpha, gt=0, le=1)))
        _set(self, "beta", float(check_number(f"{path}.beta", self.beta, ge=0, le=1)))
        _set(self, "gamma", float(check_number(f"{path}.gamma", self.gamma, ge=0, le=1)))
        if self.season_intervals is not None:
            _set(
                self, "season_intervals", _check_int(f"{path}.season_intervals", self.season_intervals, ge=2)
            )
        _set(self, "cold_start_s", float(check_number(f"{path}.cold_start_s", self.cold_start_s, ge=0)))
        tu = float(check_number(f"{path}.target_utilization", self.target_utilization, gt=0, le=1))
        _set(self, "target_utilization", tu)
        _check_bool(f"{path}.include_current_demand", self.include_current_demand)
        _check_bounds(self)


@_register
class PredictiveScaler(Scaler):
    """Forecast-driven provisioning: Holt-Winters on the arrival rate, sized ahead of cold starts.

    The idea of AWS predictive scaling (EC2 Auto Scaling User Guide, "Predictive
    scaling": forecast the load, launch capacity ahead of it, and combine with a
    dynamic policy by taking the larger capacity) with an open forecaster:
    :class:`HoltWinters` on ``arrival_rate_per_s``, one observation per control
    interval. The horizon is ``cold_start_s`` + one interval (a replica asked for
    now serves from then on), and the scaler provisions
    ceil(max forecast over that horizon / (capacity_rps_per_replica *
    target_utilization)). With ``include_current_demand`` the current rate is a
    floor on the forecast (AWS's max(predictive, dynamic)).

    ``cold_start_s`` is a parameter because the view does not carry the model's
    load time. Defaults with no published source (project choices): alpha 0.5,
    beta 0.1, gamma 0.3, cold_start_s 60, target_utilization 0.7, no seasonality
    (set ``season_intervals`` = season length / control interval, e.g. 5760 for
    a day at 15 s).
    """

    name = "predictive"
    params_cls = PredictiveParams
    params: PredictiveParams

    def reset(self) -> None:
        p = self.params
        self.model = HoltWinters(p.alpha, p.beta, p.gamma, p.season_intervals)

    def desired_replicas(self, load: ModelLoad) -> int:
        p = self.params
        demand = max(0.0, float(load.arrival_rate_per_s))
        self.model.update(demand)
        c = load.capacity_rps_per_replica * p.target_utilization
        if c <= 0:
            return _clamp(load.target_replicas, p.min_replicas, p.max_replicas)
        steps = max(1, math.ceil((p.cold_start_s + load.interval_s) / load.interval_s - _EPS))
        peak = max(self.model.forecast(h) for h in range(1, steps + 1))
        if p.include_current_demand:
            peak = max(peak, demand)
        return _clamp(_ceil(max(0.0, peak) / c), p.min_replicas, p.max_replicas)


# --------------------------------------------------------------------------------------------------
# ray_serve: Ray Serve's default autoscaling policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayServeParams(ScalerParams):
    """Parameters of :class:`RayServeScaler`; names follow Ray's ``autoscaling_config``."""

    target_ongoing_requests: float = 2.0
    min_replicas: int = 1
    max_replicas: int | None = None
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    downscale_to_zero_delay_s: float | None = None
    upscaling_factor: float = 1.0
    downscaling_factor: float = 1.0
    look_back_period_s: float = 30.0

    def __post_init__(self) -> None:
        path = self.path
        tor = float(check_number(f"{path}.target_ongoing_requests", self.target_ongoing_requests, gt=0))
        _set(self, "target_ongoing_requests", tor)
        _check_bounds(self)
        _set(
            self,
            "upscale_delay_s",
            float(check_number(f"{path}.upscale_delay_s", self.upscale_delay_s, ge=0)),
        )
        _set(
            self,
            "downscale_delay_s",
            float(check_number(f"{path}.downscale_delay_s", self.downscale_delay_s, ge=0)),
        )
        if self.downscale_to_zero_delay_s is not None:
            d0 = float(
                check_number(f"{path}.downscale_to_zero_delay_s", self.downscale_to_zero_delay_s, ge=0)
            )
            _set(self, "downscale_to_zero_delay_s", d0)
        _set(
            self,
            "upscaling_factor",
            float(check_number(f"{path}.upscaling_factor", self.upscaling_factor, gt=0)),
        )
        _set(
            self,
            "downscaling_factor",
            float(check_number(f"{path}.downscaling_factor", self.downscaling_factor, gt=0)),
        )
        _set(
            self,
            "look_back_period_s",
            float(check_number(f"{path}.look_back_period_s", self.look_back_period_s, gt=0)),
        )


@_register
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
