"""``InferGym/Routing-v1``: Routing-v0 plus the paged engine's per-slot features (prefix match, free KV
blocks, preemptions), single and vector."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from envs.routing import SLOT_FEATURES, SLOT_FEATURES_V1
from envs.sim import kernel as K
from envs.sim import kvcache as C
from tests.envs.test_vector_routing import _masked, _same_step_info
from tests.envs.vector_cases import assert_matches_single
from tests.sim.test_paged import HB, model, scenario, write_mooncake

N8, N11 = len(SLOT_FEATURES), len(SLOT_FEATURES_V1)


def conversation_file(tmp_path, n_conv=4, turns=8, gap=0.7):
    rows, t = [], 0.0
    blocks = {c: list(range(1000 * (c + 1), 1000 * (c + 1) + 3)) for c in range(n_conv)}
    for turn in range(turns):
        for c in range(n_conv):
            ids = blocks[c]
            rows.append((t, len(ids) * HB - 7, 60, list(ids)))
            blocks[c] = ids + [1000 * (c + 1) + 100 + turn]
            t += gap
    return write_mooncake(tmp_path / "conv.jsonl", rows)


def paged_scenario(path, **kw):
    return scenario(path, horizon=30.0, models=[model(replicas=3, min_replicas=3, max_replicas=3, **kw)])


def slot_rows(env, obs):
    lay = env.unwrapped.obs_layout
    return obs[lay["slots_start"] :].reshape(lay["n_slots"], lay["slot_dim"])


def test_v1_adds_three_features_and_keeps_v0s(tmp_path):
    sc = paged_scenario(conversation_file(tmp_path))
    v0, v1 = gym.make("InferGym/Routing-v0", scenario=sc), gym.make("InferGym/Routing-v1", scenario=sc)
    o0, _ = v0.reset(seed=3)
    o1, _ = v1.reset(seed=3)
    assert v1.observation_space.shape[0] - v0.observation_space.shape[0] == 3 * v1.unwrapped.max_slots
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        s0, s1 = slot_rows(v0, o0), slot_rows(v1, o1)
        np.testing.assert_array_equal(s1[:, :N8], s0)
        sim, env = v1.unwrapped.sim, v1.unwrapped
        i = env._pending
        if i >= 0:
            prompt = sim.state.ri[i, K.R_PROMPT]
            for slot, r in enumerate(env.slot_replicas):
                if r < 0:
                    continue
                st = sim.state
                k, _ = C.match(st.ri, st.pi, st.pc, st.kc, st.gi, r, i, prompt)
                assert s1[slot, 8] == np.float32(k * HB / prompt)
                hits += k > 0
                free = C.available_blocks(st.pi, r) / st.pi[r, K.Q_BLKCAP]
                assert s1[slot, 9] == np.float32(free)
                assert s1[slot, 10] == np.float32(min(st.pi[r, K.Q_PREEMPT] / st.pi[r, K.Q_MAXB], 8.0))
        a = int(rng.choice(np.flatnonzero(v1.unwrapped.action_masks())))
        o0, r0, t0, tr0, _ = v0.step(a)
        o1, r1, t1, tr1, _ = v1.step(a)
        assert (r0, t0, tr0) == (r1, t1, tr1)
        if t1 or tr1:
            break
    assert hits > 0  # later turns find their conversation's blocks


def test_v1_features_are_zero_on_reserve_replicas():
    env = gym.make("InferGym/Routing-v1", horizon_s=20)
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        assert not slot_rows(env, obs)[:, N8:].any()
        obs, *_ = env.step(int(np.argmax(env.unwrapped.action_masks())))


def test_preemptions_feature_counts_preemptions(tmp_path):
    sc = paged_scenario(conversation_file(tmp_path, turns=12, gap=0.3), kv_memory_fraction=0.21)
    env = gym.make("InferGym/Routing-v1", scenario=sc)
    obs, _ = env.reset(seed=0)
    seen = 0.0
    done = False
    while not done:
        seen = max(seen, float(slot_rows(env, obs)[:, 10].max()))
        obs, _, term, trunc, info = env.step(
            0 if env.unwrapped.action_masks()[0] else int(np.argmax(env.unwrapped.action_masks()))
        )
        done = term or trunc
    assert env.unwrapped.sim.episode_kpis()["preemptions"] > 0 and seen > 0


@pytest.mark.parametrize("n_envs", [3])
def test_vector_v1_sub_envs_equal_the_single_env(tmp_path, n_envs):
    sc = paged_scenario(conversation_file(tmp_path))
    ends = assert_matches_single(
        "InferGym/Routing-v1", {"scenario": sc}, n_envs, 300, 5, _masked, _same_step_info
    )
    assert ends >= 1
