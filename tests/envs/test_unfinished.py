"""Serving nothing is never the best policy: requests left in the system at the horizon are charged.

The loophole this closes: with the schema defaults (``min_replicas: 0``, no class timeout) a policy
that always asks for 0 replicas scored 0.0 and SLO attainment 1.0 on ``Autoscale-v0``, better than
any policy that served. ``Autoscale-v0`` keeps that reward (for reproducing old results) and is
tested here to still have it (same dynamics, old reward), so the difference is pinned.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.sim import run_scenario

NO_TIMEOUT = {
    "horizon_s": 600.0,
    "models": [{"name": "llama-3-8b", "replicas": 1, "min_replicas": 0, "max_replicas": 8}],
    "workload": {"classes": [{"name": "c", "slo": {"ttft_s": 2.0}}]},  # no timeout: nothing is dropped
}


def episode(env_id: str, replicas: int, scenario: str = "default", **overrides) -> tuple[float, dict]:
    env = gym.make(env_id, scenario=scenario, action_mode="target", **{**NO_TIMEOUT, **overrides})
    env.reset(seed=0)
    base = env.unwrapped
    action = np.array([replicas - base.min_replicas[0]], np.int64)
    total, done, info = 0.0, False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
    return total, {"last": info, "episode": base.sim.episode_kpis()}


@pytest.mark.parametrize("scenario", ["default", "bursty"])
def test_serving_nothing_is_worse_than_serving(scenario):
    nothing, out = episode("InferGym/Autoscale-v1", 0, scenario)
    kpi = out["episode"]
    assert kpi["requests_completed"] == 0
    assert kpi["requests_unfinished"] == kpi["requests_arrived"] > 0
    assert kpi["slo_attainment"] == 0.0
    assert out["last"]["rewards"]["unfinished"] > 0
    for replicas in (1, 2, 4, 8):
        served, _ = episode("InferGym/Autoscale-v1", replicas, scenario)
        assert served > nothing, (replicas, served, nothing)


def test_v0_keeps_the_loophole_and_shares_v1s_dynamics():
    v0_nothing, _ = episode("InferGym/Autoscale-v0", 0)
    v0_one, _ = episode("InferGym/Autoscale-v0", 1)
    assert v0_nothing == 0.0 and v0_one < v0_nothing  # the loophole, pinned
    env0 = gym.make("InferGym/Autoscale-v0", scenario="bursty", **NO_TIMEOUT)
    env1 = gym.make("InferGym/Autoscale-v1", scenario="bursty", **NO_TIMEOUT)
    obs0, _ = env0.reset(seed=3)
    obs1, _ = env1.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(env1.unwrapped.n_steps):
        action = env1.action_space.sample() if rng.random() < 0.5 else np.array([2], np.int64)
        obs0, _, _, _, info0 = env0.step(action)
        obs1, _, _, _, info1 = env1.step(action)
        assert obs0.tobytes() == obs1.tobytes() and info0["kpi"] == info1["kpi"]
    assert "unfinished" in info1["rewards"] and "unfinished" not in info0["rewards"]


def test_episode_kpis_count_requests_left_at_the_horizon():
    kpi = run_scenario("default", 0, overrides={"horizon_s": 300.0})
    left = kpi["requests_arrived"] - kpi["requests_completed"] - kpi["requests_dropped"]
    assert kpi["requests_unfinished"] == kpi["requests_in_system"] == left > 0
    finished = kpi["requests_completed"] + kpi["requests_dropped"] + kpi["requests_unfinished"]
    assert kpi["slo_violations"] >= kpi["requests_unfinished"]
    assert kpi["slo_attainment"] == pytest.approx((finished - kpi["slo_violations"]) / finished, abs=0)
