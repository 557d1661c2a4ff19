"""The Kubernetes HPA's decisions on hand-made load sequences, checked against its docs and controller source."""

from __future__ import annotations

from baselines.scaling import hpa_desired_replicas, make_scaler
from tests.baselines.scaler_loads import make_load

# ------------------------------------------------------------------------------------------------
# hpa
# ------------------------------------------------------------------------------------------------


def test_hpa_pure_function_docs_examples():
    # kubernetes.io, "Algorithm details": 200m observed vs 100m desired doubles the replicas ...
    assert hpa_desired_replicas(3, 200.0, 100.0) == 6
    # ... 50m vs 100m halves them.
    assert hpa_desired_replicas(4, 50.0, 100.0) == 2
    # A ratio within the 0.1 tolerance skips scaling.
    assert hpa_desired_replicas(4, 108.0, 100.0) == 4
    assert hpa_desired_replicas(4, 92.0, 100.0) == 4
    # Just outside the tolerance it scales: ceil(4 * 1.11) = 5.
    assert hpa_desired_replicas(4, 111.0, 100.0) == 5
    # min/max clamp
    assert hpa_desired_replicas(1, 10.0, 100.0) == 1
    assert hpa_desired_replicas(4, 500.0, 100.0, max_replicas=10) == 10


def test_hpa_controller_utilization_scales_proportionally():
    hpa = make_scaler({"kind": "hpa", "target": 0.5})
    # 1 pod at 100 % with a 50 % target: ratio 2 -> 2 replicas (default policy allows +4 pods).
    assert hpa.desired_replicas(make_load(replicas_ready=1, target_replicas=1, utilization=1.0)) == 2
    # A pod at exactly the target keeps the count.
    hpa.reset()
    assert hpa.desired_replicas(make_load(replicas_ready=1, target_replicas=1, utilization=0.5)) == 1


def test_hpa_unready_pods_are_ignored_and_damp_scale_up():
    hpa = make_scaler({"kind": "hpa", "target": 0.5})
    # 1 ready pod at 100 % plus 1 loading pod counted at 0 %: re-computed ratio 1.0 is within tolerance.
    load = make_load(replicas_ready=1, replicas_loading=1, target_replicas=2, utilization=1.0)
    assert hpa.desired_replicas(load) == 2
    # With 3 ready pods at 100 % and 1 loading: ratio 3/(4*0.5) = 1.5 -> ceil(1.5 * 4) = 6.
    hpa.reset()
    load = make_load(replicas_ready=3, replicas_loading=1, target_replicas=4, utilization=1.0)
    assert hpa.desired_replicas(load) == 6


def test_hpa_missing_metrics_count_as_target_on_scale_down():
    hpa = make_scaler(
        {
            "kind": "hpa",
            "metric": "in_flight_per_replica",
            "target": 2.0,
            "behavior": {"scale_down": {"stabilization_window_s": 0}},
        }
    )
    # 2 ready pods with 1 request each (ratio 0.5) + 2 loading pods assumed at the target:
    # (2 + 2*2) / (4*2) = 0.75 -> ceil(0.75 * 4) = 3, not the naive ceil(0.5 * 2) = 1.
    load = make_load(replicas_ready=2, replicas_loading=2, target_replicas=4, in_flight_mean=2.0)
    assert hpa.desired_replicas(load) == 3


def run_hpa(hpa, steps, interval_s=15.0, start_replicas=4, ready_follows=True):
    """Drive the HPA with (utilization) per step, feeding its answer back as target and ready replicas."""
    target, out = start_replicas, []
    for k, util in enumerate(steps, start=1):
        load = make_load(
            now_s=k * interval_s,
            interval_s=interval_s,
            replicas_ready=target,
            target_replicas=target,
            utilization=util,
        )
        target = hpa.desired_replicas(load)
        out.append(target)
    return out


def test_hpa_short_dip_inside_stabilization_window_does_not_scale_down():
    hpa = make_scaler({"kind": "hpa", "target": 0.5})
    steps = [0.5] * 10 + [0.1] * 4 + [0.5] * 10  # a 60 s dip at 15 s syncs
    out = run_hpa(hpa, steps)
    assert out == [4] * len(steps)


def test_hpa_scales_down_only_after_window_of_low_recommendations():
    hpa = make_scaler({"kind": "hpa", "target": 0.5})
    steps = [0.5] * 10 + [0.1] * 30
    out = run_hpa(hpa, steps)
    # Last high recommendation at step 10 (t=150 s). The window keeps samples newer than now - 300 s,
    # so it still holds at t=435 s (step 29) and is gone at t=450 s (step 30).
    assert out[:29] == [4] * 29
    assert out[29] == 1  # ceil(4 * 0.2) = 1, and the 100 %/15 s policy lets it drop at once
    assert out[-1] == 1


def test_hpa_sync_period_holds_the_answer_between_syncs():
    hpa = make_scaler({"kind": "hpa", "target": 0.5})
    out = []
    target = 2
    for k in range(1, 7):  # 5 s control interval, 15 s sync period
        load = make_load(
            now_s=5.0 * k, interval_s=5.0, replicas_ready=target, target_replicas=target, utilization=1.0
        )
        target = hpa.desired_replicas(load)
        out.append(target)
    # syncs at t=5 (2 -> 4), t=20 (4 -> 8); t=10, 15, 25, 30 repeat the last answer
    assert out == [4, 4, 4, 8, 8, 8]


def test_hpa_default_scale_up_policy_max_of_4_pods_or_100_percent():
    hpa = make_scaler({"kind": "hpa", "target": 0.1})
    out = run_hpa(hpa, [1.0] * 4, start_replicas=1)
    # per 15 s: max(+4 pods, +100 %): 1 -> 5 -> 10 -> 20 -> 40
    assert out == [5, 10, 20, 40]


def test_hpa_pods_policy_limits_growth_per_period():
    behavior = {"scale_up": {"policies": [{"type": "Pods", "value": 1, "period_s": 60}]}}
    hpa = make_scaler({"kind": "hpa", "target": 0.1, "behavior": behavior})
    out = run_hpa(hpa, [1.0] * 6, start_replicas=1)
    # +1 at t=15; the event stays in the 60 s period until t=75 exclusive; +1 again at t=75.
    assert out == [2, 2, 2, 2, 3, 3]


def test_hpa_percent_policy_and_min_select_policy():
    behavior = {
        "scale_up": {
            "select_policy": "Min",
            "policies": [
                {"type": "Percent", "value": 50, "period_s": 15},
                {"type": "Pods", "value": 10, "period_s": 15},
            ],
        }
    }
    hpa = make_scaler({"kind": "hpa", "target": 0.1, "behavior": behavior})
    out = run_hpa(hpa, [1.0] * 3, start_replicas=4)
    # Min of (+50 % rounded up, +10 pods): 4 -> 6 -> 9 -> 14
    assert out == [6, 9, 14]


def test_hpa_disabled_scale_down_never_shrinks():
    hpa = make_scaler(
        {"kind": "hpa", "target": 0.5, "behavior": {"scale_down": {"select_policy": "Disabled"}}}
    )
    assert run_hpa(hpa, [0.05] * 30) == [4] * 30


def test_hpa_zero_replicas_returns_min_and_max_is_enforced():
    hpa = make_scaler({"kind": "hpa", "min_replicas": 2, "max_replicas": 3})
    assert hpa.desired_replicas(make_load(replicas_ready=0, target_replicas=0)) == 2
    hpa.reset()
    assert hpa.desired_replicas(make_load(replicas_ready=5, target_replicas=5, utilization=0.8)) == 3
