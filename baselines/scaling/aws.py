"""AWS Application Auto Scaling: ``target_tracking``, ``queue_target`` and ``step`` scaling."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from baselines.scaling.base import (
    _EPS,
    ALARM_METRICS,
    PER_REPLICA_METRICS,
    Scaler,
    ScalerParams,
    _ceil,
    _check_int,
    _clamp,
    _has_traffic,
    _resolve_target,
    _set,
    max_replicas_param,
    metric_value,
    min_replicas_param,
    register,
)
from envs.sim.errors import ConfigError, check_keys, check_number, fail
from envs.sim.schema import param
from envs.sim.view import ModelLoad

_DISABLE_SCALE_IN_DOC = "never scale in (DisableScaleIn)"
_COOLDOWN_DOCS = {
    "scale-out": "ScaleOutCooldown: seconds after a scale-out during which a further scale-out is "
    "computed from the capacity before it",
    "scale-in": "ScaleInCooldown: seconds after a scale-in during which further scale-ins are blocked",
}


def cooldown_param(direction: str) -> Any:
    """An AWS ``ScaleOutCooldown`` / ``ScaleInCooldown``: seconds >= 0, default 300.

    300 s is the API default for ECS services, SageMaker endpoint variants and
    custom resources (the closest analogues of an inference deployment).
    """
    return param(300.0, ge=0, doc=_COOLDOWN_DOCS[direction] + " (API default 300)")


# --------------------------------------------------------------------------------------------------
# target_tracking / queue_target: target tracking
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetTrackingParams(ScalerParams):
    """Parameters of :class:`TargetTrackingScaler` (see its docstring for sources)."""

    metric: str = param(
        "in_flight_per_replica",
        choices=PER_REPLICA_METRICS,
        doc="per-replica metric tracked (default a project choice: SageMaker's concurrent requests per copy)",
    )
    target: float | None = param(
        None,
        gt=0,
        optional=True,
        doc="TargetValue; null = DEFAULT_TARGETS[metric] (in_flight_per_replica 2, utilization 0.8), "
        "required for other metrics",
    )
    scale_out_cooldown_s: float = cooldown_param("scale-out")
    scale_in_cooldown_s: float = cooldown_param("scale-in")
    disable_scale_in: bool = param(False, boolean=True, doc=_DISABLE_SCALE_IN_DOC)
    min_replicas: int = min_replicas_param(1)
    max_replicas: int | None = max_replicas_param()

    def _check(self) -> None:
        _resolve_target(self)
        super()._check()


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


@register
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

    target: float = param(1.0, gt=0, doc="waiting requests per ready replica (1: project choice)")
    scale_out_cooldown_s: float = cooldown_param("scale-out")
    scale_in_cooldown_s: float = cooldown_param("scale-in")
    disable_scale_in: bool = param(False, boolean=True, doc=_DISABLE_SCALE_IN_DOC)
    min_replicas: int = min_replicas_param(1)
    max_replicas: int | None = max_replicas_param()


@register
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
    """Parameters of :class:`StepScaler` (see its docstring for sources).

    ``steps`` is a list of ``{lower, upper, adjust}`` (parsed into
    :class:`StepAdjustment`; at least one bound each, no overlaps).
    """

    metric: str = param("utilization", choices=ALARM_METRICS, doc="alarm metric (default a project choice)")
    steps: Any = (
        {"lower": 0.8, "upper": 0.9, "adjust": 1},
        {"lower": 0.9, "adjust": 3},
        {"upper": 0.3, "adjust": -1},
    )
    adjustment_type: str = param(
        "ChangeInCapacity",
        choices=("ChangeInCapacity", "PercentChangeInCapacity", "ExactCapacity"),
        doc="how a step's adjust changes the capacity (AdjustmentType)",
    )
    min_adjustment_magnitude: int | None = param(
        None,
        ge=1,
        integer=True,
        optional=True,
        doc="floor on |change| for PercentChangeInCapacity (MinAdjustmentMagnitude); null = none",
    )
    scale_out_cooldown_s: float = cooldown_param("scale-out")
    scale_in_cooldown_s: float = cooldown_param("scale-in")
    min_replicas: int = min_replicas_param(1)
    max_replicas: int | None = max_replicas_param()

    def _check(self) -> None:
        path = self.path
        if self.min_adjustment_magnitude is not None and self.adjustment_type != "PercentChangeInCapacity":
            raise fail(
                f"{path}.min_adjustment_magnitude",
                self.min_adjustment_magnitude,
                "needs adjustment_type PercentChangeInCapacity",
            )
        _set(self, "steps", _parse_steps(f"{path}.steps", self.steps, self.adjustment_type))
        super()._check()


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


@register
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
