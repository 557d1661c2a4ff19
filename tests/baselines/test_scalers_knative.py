"""Knative's KPA: panic and stable windows, scale to zero, the activator, checked against its docs."""

from __future__ import annotations

import numpy as np

from baselines.scaling import make_scaler
from tests.baselines.scaler_loads import make_load, ticks

# ------------------------------------------------------------------------------------------------
# kpa
# ------------------------------------------------------------------------------------------------


def kpa_step(kpa, now_s, concurrency, ready, target, interval_s=2.0, **extra):
    load = make_load(
        now_s=now_s,
        **ticks(dict(replicas_ready=ready, target_replicas=target, **extra), concurrency, interval_s),
    )
    return kpa.desired_replicas(load)


def test_kpa_panics_on_burst_never_scales_down_and_exits_after_calm_stable_window():
    kpa = make_scaler({"kind": "kpa", "target": 10, "target_utilization": 1.0})
    t, ready, out = 0.0, 2, None
    for _ in range(45):  # 90 s steady at 20 concurrent = 2 pods; the start-up panic ends after 60 s
        t += 2.0
        out = kpa_step(kpa, t, 20, ready, 2)
    assert out == 2 and not kpa.panicking
    for _ in range(3):  # burst: 60 concurrent for 6 s -> panic pods 6 >= 2 x 2 ready
        t += 2.0
        out = kpa_step(kpa, t, 60, ready, 2)
    assert kpa.panicking
    assert out == 6
    burst_end = t
    calm = []
    while t < burst_end + 70:  # back to 20 concurrent; replicas still loading (ready stays 2)
        t += 2.0
        calm.append((t, kpa_step(kpa, t, 20, ready, 6), kpa.panicking))
    # No scale-down while panicking, and the panic lasts a full stable window after the last burst tick.
    assert all(d == 6 for (tt, d, p) in calm if p)
    assert all(p for (tt, _, p) in calm if tt <= burst_end + 60)
    assert not calm[-1][2]
    # Out of panic the stable window (all calm by then) sets the count again: 20 / 10 = 2.
    assert calm[-1][1] == 2


def test_kpa_scale_to_zero_after_idle_stable_window_plus_grace():
    kpa = make_scaler({"kind": "kpa", "target": 10, "target_utilization": 1.0})
    t = 0.0
    for _ in range(30):  # 60 s of traffic on 1 replica
        t += 2.0
        assert kpa_step(kpa, t, 5, 1, 1) == 1
    last_busy = t
    decisions = []
    while t < last_busy + 100:
        t += 2.0
        decisions.append((t - last_busy, kpa_step(kpa, t, 0, 1, 1)))
    first_zero = min(dt for dt, d in decisions if d == 0)
    # stable average reaches 0 once the last busy sample left the 60 s window; then the 30 s grace.
    assert 88.0 <= first_zero <= 92.0
    assert all(d == 1 for dt, d in decisions if dt < first_zero)


def test_kpa_without_scale_to_zero_stays_at_one():
    kpa = make_scaler({"kind": "kpa", "target": 10, "enable_scale_to_zero": False})
    t = 0.0
    for _ in range(100):
        t += 2.0
        out = kpa_step(kpa, t, 0, 1, 1)
    assert out == 1


def test_kpa_activator_wakes_model_from_zero():
    kpa = make_scaler("kpa")
    idle = make_load(now_s=2.0, interval_s=2.0, replicas_ready=0, target_replicas=0)
    assert kpa.desired_replicas(idle) == 0
    # a request arrives while nothing is provisioned: counted arrivals but no in-flight sample yet
    woke = make_load(
        now_s=4.0,
        interval_s=2.0,
        replicas_ready=0,
        target_replicas=0,
        arrival_rate_per_s=0.5,
        tick_arrivals=np.array([0.0, 1.0]),
    )
    assert kpa.desired_replicas(woke) >= 1
    kpa.reset()
    buffered = make_load(now_s=2.0, **ticks(dict(replicas_ready=0, target_replicas=0), 150, 2.0))
    assert kpa.desired_replicas(buffered) == 3  # ceil(150 / 70)


def test_kpa_max_scale_down_rate_halves_per_tick():
    kpa = make_scaler({"kind": "kpa", "target": 10, "target_utilization": 1.0})
    # Start with one ready pod (no start-up panic), then report 8 ready pods and no traffic.
    kpa_step(kpa, 2.0, 0, 1, 1)
    assert kpa_step(kpa, 4.0, 0, 8, 8) == 4  # floor(8 / 2)
