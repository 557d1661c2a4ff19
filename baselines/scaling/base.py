"""What every scaler shares: metrics, the Scaler base class, parameter helpers and :func:`make_scaler`.

Scalers register by name in :data:`envs.sim.controllers.SCALERS` (re-exported
here as :data:`SCALERS`) with the :func:`register` class decorator; their
parameters are frozen dataclasses whose simple fields are declared with
:func:`envs.sim.schema.param` and checked by one generic validator
(:meth:`ScalerParams.__post_init__`). Only structured parameters (HPA
behavior, step adjustments, schedules) and cross-field rules are checked by
hand, in a params class's :meth:`ScalerParams._check`.
"""

from __future__ import annotations

import abc
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from baselines.base import ParametrizedController
from envs.sim.controllers import SCALERS
from envs.sim.controllers import Scaler as ScalerProtocol
from envs.sim.errors import ConfigError, check_number, fail
from envs.sim.schema import param, validate
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
# Parameter helpers
# --------------------------------------------------------------------------------------------------


def _set(obj: Any, name: str, value: Any) -> None:
    """Store a parsed structured parameter on a frozen params object."""
    object.__setattr__(obj, name, value)


def _check_int(path: str, value: Any, ge: int = 0) -> int:
    """An integer >= ``ge`` inside a structured parameter (policy values, schedule entries)."""
    return int(check_number(path, value, ge=ge, integer=True))


def min_replicas_param(default: int, doc: str = "lower bound of the answer") -> Any:
    """The ``min_replicas`` field every bounded scaler has: an integer >= 0."""
    return param(default, ge=0, integer=True, doc=doc)


def max_replicas_param(
    doc: str = "upper bound of the answer; null = unbounded (the cluster's GPUs bound it)",
) -> Any:
    """The ``max_replicas`` field every bounded scaler has: null or an integer >= 1 (and >= min_replicas)."""
    return param(None, ge=1, integer=True, optional=True, doc=doc)


def _check_replica_range(p: Any) -> None:
    """Cross-field rule of ``min_replicas`` / ``max_replicas``: max >= min."""
    if getattr(p, "max_replicas", None) is not None and p.max_replicas < p.min_replicas:
        raise fail(f"{p.path}.max_replicas", p.max_replicas, f"must be >= min_replicas ({p.min_replicas})")


def _resolve_target(p: Any) -> None:
    """Fill ``target`` = None from :data:`DEFAULT_TARGETS` for the (already checked) ``metric``."""
    if p.target is None:
        if p.metric not in DEFAULT_TARGETS:
            raise ConfigError(f"{p.path}.target: required for metric {p.metric!r} (no published default)")
        _set(p, "target", DEFAULT_TARGETS[p.metric])


@dataclass(frozen=True)
class ScalerParams:
    """Base of every scaler's frozen parameters; ``path`` only names fields in error messages.

    ``__post_init__`` validates and coerces every field declared with
    :func:`~envs.sim.schema.param`, then runs :meth:`_check` for what a
    schema cannot express.
    """

    path: str = field(default="scaling", kw_only=True, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate(self)
        self._check()

    def _check(self) -> None:
        """Structured parameters and cross-field rules (default: ``max_replicas >= min_replicas``)."""
        _check_replica_range(self)


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
    #: Whether decisions read the load; False lets the control loop pass None (see the core's Scaler protocol).
    reads_load: ClassVar[bool] = True

    @abc.abstractmethod
    def desired_replicas(self, load: ModelLoad) -> int:
        """Target replica count (ready + loading that should exist) for this model."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


def register(cls: type[Scaler]) -> type[Scaler]:
    """Class decorator: register a scaler class in :data:`SCALERS` under its ``name``."""
    return SCALERS.register(cls.name, cls)


def make_scaler(spec: str | Mapping[str, Any] | ScalerProtocol, path: str = "scaling") -> ScalerProtocol:
    """Build a scaler from a registry name, a ``{"kind": name, **params}`` mapping, or pass one through.

    Objects that already are scalers (a :class:`Scaler`, or any object with
    ``reset`` and ``desired_replicas``) are returned as they are. Unknown
    kinds, unknown parameters and out-of-range values raise
    :class:`ConfigError` naming ``<path>.<param>`` and the bad value.
    """
    if isinstance(spec, Scaler):
        return spec
    if isinstance(spec, type):  # a class satisfies the protocol's attribute check, but is no scaler
        raise fail(path, spec, "must be a scaler name, a mapping with 'kind', or a scaler object")
    return SCALERS.build(spec, path)
