"""Autoscale on the paged engine: the prefix hit rate and preemptions in the observation and ``info["kpi"]``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from tests.envs.test_routing_v1 import conversation_file
from tests.sim.test_paged import model, scenario


def test_paged_block_matches_the_interval_kpis(tmp_path):
    path = conversation_file(tmp_path, n_conv=6, turns=20, gap=0.25)
    sc = scenario(
        path,
        horizon=30.0,
        models=[model(replicas=2, min_replicas=1, max_replicas=3, kv_memory_fraction=0.22)],
    )
    sc.update(control_interval_s=3, routing="kv_aware")
    env = gym.make("InferGym/Autoscale-v1", scenario=sc)
    reserve = gym.make(
        "InferGym/Autoscale-v1", scenario={**sc, "models": [{**sc["models"][0], "kv_policy": "reserve"}]}
    )
    assert env.observation_space.shape[0] == reserve.observation_space.shape[0] + 2
    obs, _ = env.reset(seed=0)
    assert obs[-5] == obs[-4] == 0.0
    n_b = np.log1p(3 * 256)
    hits = pre = 0.0
    for _ in range(10):
        obs, _, term, trunc, info = env.step(np.array([2]))  # hold the fleet (delta 0)
        k = info["kpi"]
        assert obs[-5] == np.float32(k["prefix_hit_rate"])
        assert obs[-4] == np.float32(min(np.log1p(k["preemptions"]) / n_b, 4.0))
        hits += k["prefix_hit_rate"]
        pre += k["preemptions"]
        if term or trunc:
            break
    assert hits > 0 and pre > 0
