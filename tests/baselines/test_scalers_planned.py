"""Scalers that plan from a formula, a schedule or a forecast (capacity formula, scheduled, Holt-Winters predictive)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines.scaling import HoltWinters, make_scaler
from tests.baselines.scaler_loads import make_load

# ------------------------------------------------------------------------------------------------
# formula / formula_half
# ------------------------------------------------------------------------------------------------


def test_formula_closes_the_capacity_gap():
    load = make_load(
        replicas_ready=4, target_replicas=4, arrival_rate_per_s=100.0, capacity_rps_per_replica=10.0
    )
    assert make_scaler("formula").desired_replicas(load) == 10  # 4 + (100 - 40)/10
    assert make_scaler("formula_half").desired_replicas(load) == 7  # 4 + 0.5 * 6
    assert make_scaler({"kind": "formula", "alpha": 0.25}).desired_replicas(load) == 6  # ceil(5.5)
    low = make_load(replicas_ready=10, target_replicas=10, arrival_rate_per_s=15.0)
    assert make_scaler("formula_half").desired_replicas(low) == 6  # ceil(10 + 0.5 * (1.5 - 10)) = ceil(5.75)
    assert make_scaler({"kind": "formula", "max_replicas": 8}).desired_replicas(load) == 8
    idle = make_load(replicas_ready=3, arrival_rate_per_s=0.0)
    assert make_scaler("formula").desired_replicas(idle) == 1  # min_replicas


# ------------------------------------------------------------------------------------------------
# scheduled
# ------------------------------------------------------------------------------------------------


def test_scheduled_last_entry_at_or_before_now_wins():
    sched = make_scaler(
        {
            "kind": "scheduled",
            "schedule": [
                {"at_s": 100, "replicas": 4},
                {"at_s": 0, "replicas": 1},
                {"at_s": 200, "replicas": 2},
            ],
        }
    )
    assert [sched.desired_replicas(make_load(now_s=t)) for t in (0, 99, 100, 199, 200, 10_000)] == [
        1,
        1,
        4,
        4,
        2,
        2,
    ]
    periodic = make_scaler(
        {
            "kind": "scheduled",
            "period_s": 300,
            "schedule": [{"at_s": 60, "replicas": 5}, {"at_s": 240, "replicas": 1}],
        }
    )
    assert [periodic.desired_replicas(make_load(now_s=t)) for t in (30, 60, 250, 330, 365)] == [1, 5, 1, 1, 5]


# ------------------------------------------------------------------------------------------------
# predictive / Holt-Winters
# ------------------------------------------------------------------------------------------------


def test_holt_winters_forecasts_sinusoid_plus_trend_within_5_percent():
    m = 24
    t = np.arange(5 * m)
    y = 100.0 + 0.5 * t + 20.0 * np.sin(2 * np.pi * t / m)
    hw = HoltWinters(alpha=0.5, beta=0.1, gamma=0.3, season_length=m)
    for v in y[: 3 * m]:
        hw.update(v)
    forecasts = np.array([hw.forecast(h) for h in range(1, 2 * m + 1)])
    truth = y[3 * m : 5 * m]
    assert np.max(np.abs(forecasts - truth) / truth) < 0.05
    # A trend-only forecast would miss the season by far more than 5 %.
    trend_only = hw.level + np.arange(1, 2 * m + 1) * hw.trend
    assert np.max(np.abs(trend_only - truth) / truth) > 0.05


def test_holt_falls_back_to_linear_trend_before_a_season():
    hw = HoltWinters(alpha=0.5, beta=0.1, gamma=0.3, season_length=100)
    for k in range(20):
        hw.update(10.0 + 2.0 * k)
    assert hw.season is None
    assert hw.forecast(5) == pytest.approx(10.0 + 2.0 * 24)


def test_predictive_provisions_ahead_of_a_ramp():
    pred = make_scaler({"kind": "predictive", "cold_start_s": 60, "target_utilization": 0.5})
    out = None
    for k in range(1, 21):  # demand ramps by 2 req/s every 15 s interval
        rate = 2.0 * k
        out = pred.desired_replicas(
            make_load(now_s=15.0 * k, arrival_rate_per_s=rate, capacity_rps_per_replica=10.0)
        )
    # horizon = 60 + 15 s = 5 intervals: forecast 40 + 5 * 2 = 50 req/s at 5 req/s per replica -> 10,
    # ahead of the 8 replicas today's demand needs.
    assert out == 10
    assert out > math.ceil(40.0 / 5.0)
