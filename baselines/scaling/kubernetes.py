"""``hpa``: the Kubernetes HorizontalPodAutoscaler (autoscaling/v2), with its behavior rules."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from baselines.scaling.base import (
    _EPS,
    Scaler,
    ScalerParams,
    _ceil,
    _check_int,
    _clamp,
    _metric_total,
    _resolve_target,
    _set,
    max_replicas_param,
    min_replicas_param,
    register,
)
from envs.sim.errors import check_choice, check_keys, check_number, fail
from envs.sim.schema import param
from envs.sim.view import ModelLoad

#: Metrics the HPA can track: a Resource metric with a Utilization target, and three Pods metrics (a
#: model server's custom metrics through a metrics adapter: vLLM exports ``vllm:num_requests_running``
#: / ``_waiting`` and ``vllm:kv_cache_usage_perc``).
HPA_METRICS: tuple[str, ...] = ("utilization", "in_flight_per_replica", "queue_len_per_replica", "kv_usage")


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
    """Parameters of :class:`HpaScaler` (see its docstring for sources).

    ``behavior`` (``{scale_up, scale_down}``, each ``{stabilization_window_s,
    select_policy, policies}``) is parsed into ``scale_up`` / ``scale_down``;
    missing parts take the Kubernetes defaults.
    """

    metric: str = param(
        "utilization",
        choices=HPA_METRICS,
        doc="utilization (Resource metric, Utilization target), in_flight_per_replica, "
        "queue_len_per_replica or kv_usage (Pods metrics, AverageValue targets)",
    )
    target: float | None = param(
        None,
        gt=0,
        optional=True,
        doc="target value per ready replica; null = DEFAULT_TARGETS[metric] (utilization 0.8, the "
        "autoscaling/v1 default 80 %; in_flight_per_replica 2), required for queue_len_per_replica and kv_usage",
    )
    tolerance: float = param(
        0.1, ge=0, doc="keep the count while |ratio - 1| <= tolerance (--horizontal-pod-autoscaler-tolerance)"
    )
    min_replicas: int = min_replicas_param(1, doc="minReplicas (API default 1)")
    max_replicas: int | None = max_replicas_param(
        doc="maxReplicas; null = unbounded (required in the API; the cluster's GPUs bound it)"
    )
    sync_period_s: float = param(
        15.0, gt=0, doc="seconds between syncs (--horizontal-pod-autoscaler-sync-period)"
    )
    behavior: Mapping[str, Any] | None = None
    scale_up: HpaScalingRules = field(init=False, default=HPA_DEFAULT_SCALE_UP)
    scale_down: HpaScalingRules = field(init=False, default=HPA_DEFAULT_SCALE_DOWN)

    def _check(self) -> None:
        _resolve_target(self)
        super()._check()
        if self.behavior is not None:
            bpath = f"{self.path}.behavior"
            check_keys(bpath, self.behavior, ("scale_up", "scale_down"))
            up = _parse_hpa_rules(f"{bpath}.scale_up", self.behavior.get("scale_up"), HPA_DEFAULT_SCALE_UP)
            down = _parse_hpa_rules(
                f"{bpath}.scale_down", self.behavior.get("scale_down"), HPA_DEFAULT_SCALE_DOWN
            )
            _set(self, "scale_up", up)
            _set(self, "scale_down", down)


@register
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
    Resource metric with a Utilization target), ``in_flight_per_replica``,
    ``queue_len_per_replica`` and ``kv_usage`` (Pods metrics with AverageValue targets).

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
