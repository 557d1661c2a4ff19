"""``predictive``: a Holt-Winters forecast of the arrival rate, provisioned ahead of cold starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from baselines.scaling.base import (
    _EPS,
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
    """Parameters of :class:`PredictiveScaler` (see its docstring); all defaults are project choices."""

    alpha: float = param(0.5, gt=0, le=1, doc="Holt-Winters level smoothing")
    beta: float = param(0.1, ge=0, le=1, doc="Holt-Winters trend smoothing")
    gamma: float = param(0.3, ge=0, le=1, doc="Holt-Winters season smoothing")
    season_intervals: int | None = param(
        None,
        ge=2,
        integer=True,
        optional=True,
        doc="season length in control intervals (5760: a day at 15 s); null = Holt's linear trend",
    )
    cold_start_s: float = param(
        60.0, ge=0, doc="seconds a new replica takes to serve (the view has no load time); forecast horizon"
    )
    target_utilization: float = param(
        0.7, gt=0, le=1, doc="provision for forecast / (capacity_rps_per_replica x target_utilization)"
    )
    include_current_demand: bool = param(
        True, boolean=True, doc="the current rate is a floor on the forecast (AWS's max(predictive, dynamic))"
    )
    min_replicas: int = min_replicas_param(1)
    max_replicas: int | None = max_replicas_param()


@register
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
