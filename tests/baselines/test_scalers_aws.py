"""AWS Application Auto Scaling: target tracking, the queue target and step scaling, checked against its docs."""

from __future__ import annotations

from baselines.scaling import aws_percent_change, make_scaler
from tests.baselines.scaler_loads import make_load

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
