"""Decisions of the classical autoscalers on hand-made load sequences, checked against the real systems' docs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines.scaling import (
    SCALERS,
    HoltWinters,
    HpaScaler,
    KpaScaler,
    Scaler,
    aws_percent_change,
    hpa_desired_replicas,
    make_scaler,
)
from envs.sim.errors import ConfigError
from envs.sim.perf import kv_capacity_tokens, replica_coefficients
from envs.sim.profile import ServingProfile
from envs.sim.view import ModelLoad


def make_load(now_s: float = 15.0, **overrides) -> ModelLoad:
    """A ModelLoad with quiet defaults: one ready replica, no traffic, 15 s interval."""
    fields = dict(
        model="m",
        now_s=now_s,
        interval_s=15.0,
        replicas_ready=1,
        replicas_loading=0,
        replicas_draining=0,
        target_replicas=1,
        arrival_rate_per_s=0.0,
        completion_rate_per_s=0.0,
        in_flight=0,
        in_flight_mean=0.0,
        queue_len=0,
        utilization=0.0,
        kv_usage=0.0,
        ttft_p99_s=0.0,
        slo_attainment=1.0,
        capacity_rps_per_replica=10.0,
        tick_s=1.0,
        tick_in_flight=np.zeros(0),
        tick_arrivals=np.zeros(0),
    )
    fields.update(overrides)
    return ModelLoad(**fields)


#: ModelLoad fields of a decode pool with a profile and completions (for the scalers that need them)
POOL_VIEW = {
    "role": "decode",
    "profile": ServingProfile(
        replica_coefficients("a100-80gb", "llama-3-8b", 1),
        1,
        256,
        2048,
        kv_capacity_tokens("a100-80gb", "llama-3-8b", 1),
    ),  # fmt: skip
    "completion_rate_per_s": 4.0,
    "prompt_tokens_mean": 1000.0,
    "output_tokens_mean": 200.0,
    "ttft_mean_s": 0.2,
    "tpot_mean_s": 0.03,
}


def ticks(load_kwargs: dict, concurrency: float, interval_s: float, tick_s: float = 1.0) -> dict:
    """Add per-tick in-flight samples of constant ``concurrency`` to ModelLoad kwargs."""
    n = round(interval_s / tick_s)
    out = dict(load_kwargs)
    out.update(
        interval_s=interval_s,
        tick_s=tick_s,
        tick_in_flight=np.full(n, float(concurrency)),
        in_flight=int(concurrency),
        in_flight_mean=float(concurrency),
    )
    return out


# ------------------------------------------------------------------------------------------------
# registry and configuration errors
# ------------------------------------------------------------------------------------------------


def test_registry_holds_every_documented_scaler():
    expected = {
        "static",
        "hpa",
        "kpa",
        "formula",
        "formula_half",
        "target_tracking",
        "step",
        "scheduled",
        "predictive",
        "ray_serve",
        "queue_target",
        "per_pool",
        "pd_ratio",
        "dynamo_sla",
    }
    assert set(SCALERS) == expected
    for name in SCALERS:
        cls = SCALERS.get(name)
        assert cls.name == name and issubclass(cls, Scaler)


def test_make_scaler_accepts_name_mapping_and_instance():
    hpa = make_scaler({"kind": "hpa", "target": 0.7, "min_replicas": 2})
    assert isinstance(hpa, HpaScaler)
    assert hpa.params.target == 0.7 and hpa.params.min_replicas == 2
    assert make_scaler("kpa").params.target_value == pytest.approx(70.0)
    assert make_scaler(hpa) is hpa


def test_make_scaler_unknown_kind_names_path():
    with pytest.raises(ConfigError, match=r"^scaling\.kind: 'hpaa' must be one of"):
        make_scaler({"kind": "hpaa"})
    with pytest.raises(ConfigError, match=r"^models\.llama\.scaling: 'nope' must be one of"):
        make_scaler("nope", path="models.llama.scaling")


def test_make_scaler_unknown_param_names_path():
    with pytest.raises(ConfigError, match=r"^scaling\.targt: unknown key"):
        make_scaler({"kind": "hpa", "targt": 0.5})
    # "path" is not a user parameter either
    with pytest.raises(ConfigError, match=r"^scaling\.path: unknown key"):
        make_scaler({"kind": "hpa", "path": "x"})


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "hpa", "target": -1}, r"^scaling\.target: -1 must be > 0"),
        ({"kind": "kpa", "target_utilization": 1.5}, r"^scaling\.target_utilization: 1\.5 must be <= 1"),
        (
            {"kind": "ray_serve", "min_replicas": 3, "max_replicas": 2},
            r"^scaling\.max_replicas: 2 must be >= min_replicas",
        ),
        ({"kind": "hpa", "metric": "queue_len_per_replica"}, r"^scaling\.target: required for metric"),
        (
            {"kind": "hpa", "metric": "ttft_p99_s", "target": 1.0},
            r"^scaling\.metric: 'ttft_p99_s' must be one of",
        ),
        (
            {
                "kind": "hpa",
                "behavior": {"scale_up": {"policies": [{"type": "Pod", "value": 1, "period_s": 15}]}},
            },
            r"^scaling\.behavior\.scale_up\.policies\[0\]\.type: 'Pod' must be one of",
        ),
        (
            {"kind": "step", "steps": [{"lower": 0.5, "adjust": 1}, {"lower": 0.8, "adjust": 2}]},
            r"^scaling\.steps: step intervals overlap",
        ),
        ({"kind": "scheduled"}, r"^scaling\.schedule: required"),
        (
            {"kind": "kpa", "enable_scale_to_zero": "yes"},
            r"^scaling\.enable_scale_to_zero: 'yes' must be true or false",
        ),
        ({"kind": "formula", "alpha": 0}, r"^scaling\.alpha: 0 must be > 0"),
    ],
)
def test_make_scaler_invalid_values_name_path_and_value(spec, message):
    with pytest.raises(ConfigError, match=message):
        make_scaler(spec)


def test_direct_construction_validates_like_make_scaler():
    with pytest.raises(ConfigError, match=r"^scaling\.sync_period_s: 0 must be > 0"):
        HpaScaler(sync_period_s=0)
    with pytest.raises(ConfigError, match=r"^scaling\.bogus: unknown key"):
        KpaScaler(bogus=1)


def test_static_keeps_or_fixes_replicas():
    assert make_scaler("static").desired_replicas(make_load(target_replicas=3)) == 3
    fixed = make_scaler({"kind": "static", "replicas": 5})
    assert fixed.desired_replicas(make_load(target_replicas=3, utilization=1.0)) == 5


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
# target tracking / queue target
# ------------------------------------------------------------------------------------------------


def test_target_tracking_scales_out_at_once_and_in_after_cooldown():
    tt = make_scaler({"kind": "target_tracking", "target": 2.0})
    # 4 ready, 16 in flight: 4 per replica vs target 2 -> 8
    assert (
        tt.desired_replicas(make_load(now_s=15, replicas_ready=4, target_replicas=4, in_flight_mean=16.0))
        == 8
    )
    # 8 ready, 4 in flight: 0.5 per replica -> 2 (no earlier scale-in, so no cooldown)
    assert (
        tt.desired_replicas(make_load(now_s=30, replicas_ready=8, target_replicas=8, in_flight_mean=4.0)) == 2
    )
    # another dip 60 s later is blocked by the 300 s scale-in cooldown ...
    assert (
        tt.desired_replicas(make_load(now_s=90, replicas_ready=4, target_replicas=4, in_flight_mean=2.0)) == 4
    )
    # ... but a scale-out is not, and it ends the scale-in cooldown
    assert (
        tt.desired_replicas(make_load(now_s=105, replicas_ready=4, target_replicas=4, in_flight_mean=12.0))
        == 6
    )
    assert (
        tt.desired_replicas(make_load(now_s=120, replicas_ready=6, target_replicas=6, in_flight_mean=2.0))
        == 1
    )


def test_target_tracking_scale_out_cooldown_counts_added_capacity():
    tt = make_scaler({"kind": "target_tracking", "target": 2.0})
    assert (
        tt.desired_replicas(make_load(now_s=15, replicas_ready=2, target_replicas=2, in_flight_mean=8.0)) == 4
    )
    # New replicas still loading: the metric over 2 ready replicas still reads 4 per replica. Inside the
    # scale-out cooldown the added capacity counts, so the same reading does not compound to 8.
    assert (
        tt.desired_replicas(
            make_load(now_s=30, replicas_ready=2, replicas_loading=2, target_replicas=4, in_flight_mean=8.0)
        )
        == 4
    )
    # A larger reading is a larger scale-out and goes through: 2 * 6 / 2 = 6.
    assert (
        tt.desired_replicas(
            make_load(now_s=45, replicas_ready=2, replicas_loading=2, target_replicas=4, in_flight_mean=12.0)
        )
        == 6
    )


def test_queue_target_tracks_waiting_requests_per_replica():
    q = make_scaler({"kind": "queue_target", "target": 2.0, "scale_in_cooldown_s": 0})
    assert q.desired_replicas(make_load(now_s=15, replicas_ready=2, target_replicas=2, queue_len=10)) == 5
    assert (
        q.desired_replicas(
            make_load(now_s=30, replicas_ready=5, target_replicas=5, queue_len=0, in_flight_mean=50.0)
        )
        == 1
    )


# ------------------------------------------------------------------------------------------------
# step
# ------------------------------------------------------------------------------------------------


def test_step_scaling_adjustments_and_cooldowns():
    st = make_scaler("step")  # +1 at [0.8, 0.9), +3 at >= 0.9, -1 at <= 0.3; 300 s cooldowns
    assert (
        st.desired_replicas(make_load(now_s=15, replicas_ready=4, target_replicas=4, utilization=0.85)) == 5
    )
    # still in the scale-out cooldown: a +3 step counts the +1 already added -> base 4 + 3 = 7
    assert (
        st.desired_replicas(make_load(now_s=30, replicas_ready=4, target_replicas=5, utilization=0.95)) == 7
    )
    # the +1 step again inside the cooldown adds nothing (4 + 1 <= 7)
    assert (
        st.desired_replicas(make_load(now_s=45, replicas_ready=7, target_replicas=7, utilization=0.85)) == 7
    )
    # between thresholds nothing happens
    assert st.desired_replicas(make_load(now_s=60, replicas_ready=7, target_replicas=7, utilization=0.5)) == 7
    # scale-in step, then blocked by the scale-in cooldown
    assert st.desired_replicas(make_load(now_s=75, replicas_ready=7, target_replicas=7, utilization=0.2)) == 6
    assert st.desired_replicas(make_load(now_s=90, replicas_ready=6, target_replicas=6, utilization=0.2)) == 6
    assert (
        st.desired_replicas(make_load(now_s=375, replicas_ready=6, target_replicas=6, utilization=0.2)) == 5
    )


def test_step_bounds_inclusivity_follows_aws():
    st = make_scaler({"kind": "step", "scale_in_cooldown_s": 0, "scale_out_cooldown_s": 0})
    assert (
        st.desired_replicas(make_load(now_s=15, replicas_ready=4, target_replicas=4, utilization=0.8)) == 5
    )  # lower inclusive
    assert (
        st.desired_replicas(make_load(now_s=30, replicas_ready=4, target_replicas=4, utilization=0.9)) == 7
    )  # next step
    assert (
        st.desired_replicas(make_load(now_s=45, replicas_ready=4, target_replicas=4, utilization=0.3)) == 3
    )  # upper inclusive below


def test_aws_percent_change_rounding():
    assert aws_percent_change(10, 127) == 12  # 12.7 rounds down
    assert aws_percent_change(2, 25) == 1  # 0.5 becomes 1
    assert aws_percent_change(2, -25) == -1  # -0.5 becomes -1
    assert aws_percent_change(10, -66.7) == -6  # -6.67 rounds up
    assert aws_percent_change(10, 10, min_magnitude=3) == 3


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


# ------------------------------------------------------------------------------------------------
# ray_serve
# ------------------------------------------------------------------------------------------------


def ray_step(ray, now_s, ongoing, ready, target, interval_s=15.0):
    return ray.desired_replicas(
        make_load(
            now_s=now_s, **ticks(dict(replicas_ready=ready, target_replicas=target), ongoing, interval_s)
        )
    )


def test_ray_serve_upscale_waits_for_upscale_delay():
    ray = make_scaler("ray_serve")  # target 2 ongoing per replica, upscale delay 30 s
    out, target = [], 2
    for k in range(1, 6):
        target = ray_step(ray, 15.0 * k, 8, 2, target)
        out.append(target)
    # decided at t=15, 30, 45: the decision has persisted 30 s at t=45; then 4 is the target.
    assert out == [2, 2, 4, 4, 4]


def test_ray_serve_downscale_waits_600_s_and_resets_on_direction_change():
    ray = make_scaler({"kind": "ray_serve", "min_replicas": 1})
    out = [ray_step(ray, 15.0 * k, 2, 4, 4) for k in range(1, 42)]
    assert out[:40] == [4] * 40  # t = 15 .. 600: streak started at 15, needs until 615
    assert out[40] == 1
    ray.reset()
    seq = [ray_step(ray, 15.0 * k, 2, 4, 4) for k in range(1, 30)]
    seq.append(ray_step(ray, 450.0, 20, 4, 4))  # a busy interval (upscale decision) breaks the streak
    seq += [ray_step(ray, 450.0 + 15.0 * k, 2, 4, 4) for k in range(1, 30)]
    assert set(seq) == {4}


def test_ray_serve_to_zero_only_from_one_and_cold_start_path():
    ray = make_scaler({"kind": "ray_serve", "min_replicas": 0, "downscale_to_zero_delay_s": 30})
    assert [ray_step(ray, 15.0 * k, 0, 1, 1) for k in range(1, 4)] == [1, 1, 0]
    # nothing running, a request waits: scale up immediately, no delay
    ray.reset()
    cold = make_load(now_s=15.0, replicas_ready=0, target_replicas=0, queue_len=1, in_flight=1)
    assert ray.desired_replicas(cold) == 1


def test_ray_serve_downscaling_factor_smooths_and_never_stalls():
    ray = make_scaler({"kind": "ray_serve", "downscaling_factor": 0.1, "downscale_delay_s": 0})
    # desired 1 from 10 running: ceil(10 + 0.1 * (1 - 10)) = ceil(9.1) = 10 -> stalled -> 9
    assert ray_step(ray, 15.0, 2, 10, 10) == 9


# ------------------------------------------------------------------------------------------------
# common contract
# ------------------------------------------------------------------------------------------------


def _spec(name: str, **params) -> dict:
    if name == "scheduled":
        params.setdefault("schedule", [{"at_s": 0, "replicas": 2}, {"at_s": 100, "replicas": 6}])
    if name == "per_pool":  # the bounds are its pools' scalers'
        inner = {"kind": "hpa", "metric": "in_flight_per_replica", **params}
        return {"kind": name, "prefill": inner, "decode": inner, "aggregated": inner}
    if name == "dynamo_sla":
        if "min_replicas" in params:
            params["min_endpoint"] = params.pop("min_replicas")
        params.setdefault("adjustment_interval_s", 15.0)
    return {"kind": name, **params}


@pytest.mark.parametrize("name", sorted(SCALERS))
def test_every_scaler_is_deterministic_bounded_and_resettable(name):
    rng = np.random.default_rng(7)
    loads = []
    target = 2
    for k in range(1, 41):
        ready = int(rng.integers(0, 6))
        c = float(rng.uniform(0, 30))
        loads.append(
            make_load(
                now_s=5.0 * k,
                interval_s=5.0,
                replicas_ready=ready,
                replicas_loading=int(rng.integers(0, 2)),
                target_replicas=target,
                arrival_rate_per_s=float(rng.uniform(0, 50)),
                in_flight=int(c),
                in_flight_mean=c,
                queue_len=int(rng.integers(0, 10)),
                utilization=float(rng.uniform(0, 1)),
                tick_in_flight=rng.uniform(0, 30, 5),
                **(POOL_VIEW if name == "dynamo_sla" else {}),
            )
        )
        target = max(1, ready)

    def run(scaler):
        return [scaler.desired_replicas(load) for load in loads]

    scaler = make_scaler(_spec(name))
    first = run(scaler)
    scaler.reset()
    assert run(scaler) == first
    assert run(make_scaler(_spec(name))) == first
    assert all(isinstance(n, int) and n >= 0 for n in first)
    if name != "static":  # static has no bounds: it is the fixed count itself
        assert max(run(make_scaler(_spec(name, max_replicas=3)))) <= 3
        assert min(run(make_scaler(_spec(name, min_replicas=2)))) >= 2
