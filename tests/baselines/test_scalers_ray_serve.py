"""Ray Serve's autoscaler: upscale and downscale delays, scale to zero, the downscaling factor, checked against its docs."""

from __future__ import annotations

from baselines.scaling import make_scaler
from tests.baselines.scaler_loads import make_load, ticks

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
