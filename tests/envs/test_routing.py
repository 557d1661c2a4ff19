"""InferGym/Routing-v0: slots and masks, the masked-action consequence, observation content, costs,
scaling between arrivals, parity of the classical routers with the engine, and MaskablePPO.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401 - registers the ids
from baselines.routing import RouterPolicy
from envs.routing import LATENCY_UNIT_S, N_SLOT_FEATURES, PROMPT_UNIT_TOKENS, RoutingEnv
from envs.sim import Simulator, run_scenario
from envs.sim import kernel as K
from envs.sim.errors import ConfigError

SHORT = {"horizon_s": 60.0}


def make(scenario: str = "default", **kw) -> RoutingEnv:
    return gym.make("InferGym/Routing-v0", scenario=scenario, **{**SHORT, **kw}).unwrapped


def slot_features(env: RoutingEnv, obs: np.ndarray) -> np.ndarray:
    return obs[env.n_models + 1 + env.n_classes :].reshape(env.max_slots, N_SLOT_FEATURES)


def random_valid(env: RoutingEnv, rng: np.random.Generator) -> int:
    return int(rng.choice(np.flatnonzero(env.action_masks())))


def test_spaces_follow_the_scenario_and_max_slots():
    env = make("multi-model")
    assert env.action_space.n == 8  # largest max_replicas of the three models
    assert env.observation_space.shape == (3 + 1 + 2 + N_SLOT_FEATURES * 8,)
    assert make(max_slots=5).action_space.n == 5
    with pytest.raises(ConfigError, match=r"max_slots: 0 must be >= 1"):
        make(max_slots=0)


def test_masks_are_the_ready_slots_in_replica_id_order():
    env = make("heterogeneous")
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        mask = env.action_masks()
        slots = env.slot_replicas
        sim = env.sim
        i = env.pending_request
        m = int(sim.state.ri[i, K.R_MODEL])
        live = [
            int(r)
            for r in sim.state.mrep[m, : sim.state.mn[m]]
            if sim.state.pi[r, K.Q_STATE] in (K.REP_READY, K.REP_LOADING)
        ]
        np.testing.assert_array_equal(slots[: len(live)], live)
        assert np.all(slots[len(live) :] == -1)
        want = np.array([r >= 0 and sim.state.pi[r, K.Q_STATE] == K.REP_READY for r in slots])
        np.testing.assert_array_equal(mask, want)
        np.testing.assert_array_equal(slot_features(env, obs)[:, 0], mask)
        obs, *_ = env.step(random_valid(env, rng))


def test_a_masked_action_goes_to_the_central_queue_and_costs_one_invalid_action():
    env = make()
    env.reset(seed=1)
    assert not env.action_masks()[10]  # 4 replicas: slot 10 is empty
    i = env.pending_request
    obs, reward, term, trunc, info = env.step(10)
    assert info["rewards"]["invalid_actions"] == 1.0 and info["replica"] == -1
    assert reward <= -env.scenario.reward["invalid_actions"]
    assert reward == env.reward_from_terms(info["rewards"])
    assert env.decisions[i] == -2 and env.n_invalid == 1
    # late binding: no replica was chosen at dispatch; a READY replica admitted it later and served it
    rng = np.random.default_rng(1)
    while not trunc:
        obs, reward, term, trunc, info = env.step(random_valid(env, rng))
        assert info["rewards"]["invalid_actions"] == 0.0
    sim = env.sim
    assert sim.state.ri[i, K.R_STATE] == K.REQ_DONE and sim.state.ri[i, K.R_REPLICA] >= 0
    assert env.n_invalid == 1


def test_observation_describes_the_request_and_the_replicas():
    env = make("multi-model")
    obs, _ = env.reset(seed=2)
    rng = np.random.default_rng(2)
    for _ in range(400):
        obs, *_ = env.step(random_valid(env, rng))
    sim, i = env.sim, env.pending_request
    m, c = int(sim.state.ri[i, K.R_MODEL]), int(sim.state.ri[i, K.R_CLASS])
    np.testing.assert_array_equal(obs[:3], np.eye(3)[m])
    assert obs[3] == np.float32(min(sim.state.ri[i, K.R_PROMPT] / PROMPT_UNIT_TOKENS, 8.0))
    np.testing.assert_array_equal(obs[4:6], np.eye(2)[c])
    feats = slot_features(env, obs)
    for s, r in enumerate(env.slot_replicas):
        if r < 0:
            assert not feats[s].any()
            continue
        maxb = sim.state.pi[r, K.Q_MAXB]
        q, run = sim.state.qn[sim.n_models + r], sim.state.pi[r, K.Q_NRUN]
        assert feats[s, 2] == np.float32(min(q / maxb, 8.0))
        assert feats[s, 3] == np.float32(run / maxb)
        assert feats[s, 4] == np.float32(1.0 - sim.state.pi[r, K.Q_KVRES] / sim.state.pi[r, K.Q_KVCAP])
        ew = sim.state.pf[r, K.P_EWMA]
        assert feats[s, 6] == np.float32(0.0 if ew < 0 else min(ew / LATENCY_UNIT_S, 8.0))
        assert feats[s, 7] == np.float32(min((q + run) / maxb, 8.0))
    assert sum(feats[:, 7] > 0) >= 1  # the cluster is busy at 40 req/s


def test_speed_feature_is_relative_to_the_fastest_gpu_type():
    env = make("heterogeneous")
    obs, _ = env.reset(seed=0)
    speed = slot_features(env, obs)[:8, 5]
    types = [env.sim.state.records[r].gpu_type for r in env.slot_replicas[:8]]
    names = [env.sim.gpu_types[g].name for g in types]
    assert speed[names.index("h100-sxm-80gb")] == 1.0
    assert 0 < speed[names.index("l4")] < speed[names.index("a100-80gb")] < 1.0


def test_step_costs_add_up_to_the_episode_kpis():
    env = make(horizon_s=150.0)
    env.reset(seed=4)
    rng = np.random.default_rng(4)
    total = dict.fromkeys(("slo_violations", "drops", "latency", "invalid_actions"), 0.0)
    trunc, steps = False, 0
    while not trunc:
        # mostly one replica: queues build up, so SLOs are missed and requests time out
        a = 0 if rng.random() < 0.9 else random_valid(env, rng)
        obs, reward, term, trunc, info = env.step(a)
        assert not term
        steps += 1
        for k in total:
            total[k] += info["rewards"][k]
    ep = info["episode_kpi"]
    assert steps == env.sim.n_requests == ep["requests_arrived"]
    # Routing-v0 charges a request when it finishes: those left at the horizon are not in its terms
    assert total["slo_violations"] == ep["slo_violations"] - ep["requests_unfinished"] > 0
    assert total["drops"] == ep["requests_dropped"] > 0
    assert total["latency"] == pytest.approx(ep["e2e_mean_s"] * ep["requests_completed"] / LATENCY_UNIT_S)
    assert total["invalid_actions"] == 0.0
    assert env.sim.now == 150.0 and env.action_masks().all()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_shaping_is_a_potential_difference_that_leaves_the_trajectory_and_the_return_unchanged():
    plain, shaped = (
        make("heterogeneous", horizon_s=120.0),
        make("heterogeneous", horizon_s=120.0, shaping=2.0),
    )
    o1, _ = plain.reset(seed=7)
    o2, _ = shaped.reset(seed=7)
    rng = np.random.default_rng(7)
    r1 = r2 = 0.0
    first = None
    trunc = False
    while not trunc:
        a = random_valid(plain, rng)
        before = shaped._potential()
        o1, x1, _, t1, i1 = plain.step(a)
        o2, x2, _, trunc, i2 = shaped.step(a)
        assert t1 == trunc and np.array_equal(o1, o2) and i1["rewards"] == i2["rewards"]
        assert "shaping" not in i1
        assert x2 == pytest.approx(x1 + i2["shaping"])
        if first is None:
            first = i2["shaping"]
            # routing one request to replica r costs min((n_r + 1) / mu_r, cap) seconds of work at once
            # (the queues also moved on to the next arrival, so only the sign and an upper bound are exact)
            assert first < 0.0 or before > 0.0
        if not trunc:
            assert i2["shaping"] == pytest.approx(2.0 * (before - shaped._potential()))
        r1 += x1
        r2 += x2
    assert r2 == pytest.approx(r1, rel=1e-9, abs=1e-6)  # the shaping terms telescope to Phi(s0) - 0 = 0


def test_shaping_potential_charges_the_expected_delay_capped_per_request():
    env = make("heterogeneous")
    env.reset(seed=0)
    sim = env.sim
    mu = sim.state.pf[: sim.n_replicas, K.P_SPEED]
    sim.state.qn[:] = 0
    sim.state.pi[: sim.n_replicas, K.Q_NRUN] = 0
    assert env._potential() == 0.0
    fast, slow = int(np.argmax(mu)), int(np.argmin(mu))
    sim.state.qn[env.n_models + fast] = 3
    assert env._potential() == pytest.approx(6.0 / mu[fast])  # 1/mu + 2/mu + 3/mu
    sim.state.qn[env.n_models + fast] = 0
    n = int(40.0 * mu[slow])  # far past the 10 s cap
    sim.state.qn[env.n_models + slow] = n
    j = int(10.0 * mu[slow])
    assert env._potential() == pytest.approx(j * (j + 1) / (2.0 * mu[slow]) + (n - j) * 10.0)
    with pytest.raises(ConfigError, match=r"shaping: -1"):
        make(shaping=-1)


def test_the_scaler_runs_every_control_interval_between_arrivals():
    env = make(scaler={"kind": "static", "replicas": 6})
    obs, _ = env.reset(seed=5)
    rng = np.random.default_rng(5)
    seen_loading = False
    while env.sim.now < 15.0:
        assert env.action_masks().sum() == 4
        obs, *_ = env.step(random_valid(env, rng))
    while env.sim.now < 60.0:
        feats = slot_features(env, obs)
        loading = feats[:6, 1] == 1
        if loading.any():
            seen_loading = True
            assert not env.action_masks()[:6][loading].any()  # cold-starting replicas cannot be chosen
        obs, _, _, trunc, _ = env.step(random_valid(env, rng))
        if trunc:
            break
    assert seen_loading
    assert env.sim.replicas_of(0) == {"ready": 6, "loading": 0, "draining": 0}


def test_scaling_down_drains_and_frees_gpus_during_the_episode():
    env = make(scaler={"kind": "static", "replicas": 2})
    env.reset(seed=6)
    rng = np.random.default_rng(6)
    sim = env.sim
    while sim.now < 15.0:
        env.step(random_valid(env, rng))
    assert sim.replicas_of(0)["ready"] == 2 and env.action_masks().sum() == 2
    while (sim.state.pi[: sim.n_replicas, K.Q_STATE] == K.REP_DRAINING).any():
        env.step(random_valid(env, rng))
    assert sim.cluster.gpus_in_use() == 2  # the drained replicas' GPUs are back at once


def test_bad_scaler_is_reported_under_its_argument_name():
    with pytest.raises(ConfigError, match=r"scaler\.target: -1"):
        make(scaler={"kind": "hpa", "target": -1})
    with pytest.raises(ConfigError, match=r"scaler: 'autopilot' must be one of"):
        make(scaler="autopilot")
    with pytest.raises(ConfigError, match=r"scaler: 3 must be a scaler name"):
        make(scaler=3)


@pytest.mark.parametrize("scenario", ["default", "heterogeneous"])
@pytest.mark.parametrize(
    "router", ["least_connections", "round_robin", "power_of_two", "shortest_expected_delay"]
)
def test_router_policy_through_the_env_equals_the_engine_router(scenario, router):
    env = make(scenario, horizon_s=300.0, scaler="static")
    policy = RouterPolicy(router)
    env.reset(seed=7)
    trunc = False
    while not trunc:
        _, reward, _, trunc, info = env.step(policy.predict(None, env))
        assert info["rewards"]["invalid_actions"] == 0.0
    ref = Simulator(env.scenario, np.random.default_rng(7), router=router)
    ref.advance(300.0)
    assert info["episode_kpi"] == ref.episode_kpis()
    np.testing.assert_array_equal(env.sim.state.ri[:, K.R_REPLICA], ref.state.ri[:, K.R_REPLICA])


def test_router_policy_with_the_scenarios_autoscaler_equals_run_scenario():
    # bursty: HPA scales replicas up and down at the control boundaries crossed between arrivals
    env = make("bursty", horizon_s=600.0)
    policy = RouterPolicy("least_connections")
    env.reset(seed=9)
    trunc = False
    while not trunc:
        _, _, _, trunc, info = env.step(policy(env))
    assert env.sim.n_replicas > 3  # the autoscaler added replicas
    assert info["episode_kpi"] == run_scenario(
        env.unwrapped.scenario, 9
    )  # (the env's engine default filled in)


def test_router_policy_resets_with_each_episode():
    env = make(horizon_s=30.0, scaler="static")
    policy = RouterPolicy("round_robin")
    runs = []
    for _ in range(2):
        env.reset(seed=8)
        actions = []
        for _ in range(5):  # a round-robin counter kept across episodes would start the second at slot 1
            actions.append(policy(env))
            env.step(actions[-1])
        runs.append(actions)
    assert runs[0] == runs[1] == [0, 1, 2, 3, 0]


def test_maskable_ppo_trains_on_routing():
    from sb3_contrib import MaskablePPO

    env = make(horizon_s=30.0)
    model = MaskablePPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
    assert env.action_masks()[int(action)]


@pytest.mark.parametrize("router", ["least_connections", "kv_aware"])
def test_the_decode_stage_routed_through_the_env_equals_the_engines_decode_router(router):
    env = gym.make("InferGym/Routing-v2", scenario="disaggregated", horizon_s=120.0, stage="decode")
    base = env.unwrapped
    assert base.stage == "decode" and base.max_slots == 8
    policy = RouterPolicy(router)
    env.reset(seed=3)
    trunc, steps = False, 0
    while not trunc:
        i = base.pending_request
        if i is not None:
            assert base.sim.pending_stage == "decode"
            assert all(base.sim.state.pi[r, K.Q_ROLE] == K.ROLE_DECODE for r in base.slot_replicas if r >= 0)
        _, _, _, trunc, info = env.step(policy.predict(None, env))
        assert info["rewards"]["invalid_actions"] == 0.0
        steps += 1
    assert steps > 100
    ref = Simulator(base.scenario, np.random.default_rng(3), decode_router=router)
    ref.advance(120.0)
    assert info["episode_kpi"] == ref.episode_kpis()
    np.testing.assert_array_equal(base.sim.state.ri[:, K.R_REPLICA], ref.state.ri[:, K.R_REPLICA])
    with pytest.raises(ConfigError, match=r"stage: 'decode' needs a model with serving: disaggregated"):
        make("default", stage="decode")
    with pytest.raises(ConfigError, match=r"stage: 'encode' must be one of"):
        gym.make("InferGym/Routing-v2", scenario="disaggregated", stage="encode")
