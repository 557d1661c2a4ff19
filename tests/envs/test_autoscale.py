"""InferGym/Autoscale-v1: action mapping, clamping, rewards, observations, scaler policies, arguments.

The registry-wide checks (env checkers, determinism, pickling, rendering)
live in test_env_conformance.py; these tests pin down what is specific to
autoscaling, each on a short horizon.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401 - registers the ids
from envs.autoscale import REWARD_KEYS, AutoscaleEnv, ScalerPolicy
from envs.sim import kernel as K
from envs.sim import run_scenario
from envs.sim.errors import ConfigError
from envs.sim.metrics import request_kpis

F = len(AutoscaleEnv.model_features)
IDX = {name: i for i, (name, _, _) in enumerate(AutoscaleEnv.model_features)}


def hold(env: AutoscaleEnv) -> np.ndarray:
    act = np.full(len(env.action_space.nvec), env.max_step)
    act[env.n_models :] = 0
    return act


def delta(env: AutoscaleEnv, *changes: int) -> np.ndarray:
    act = hold(env)
    act[: len(changes)] = np.asarray(changes) + env.max_step
    return act


def run_episode(env, policy) -> list[dict]:
    obs, _ = env.reset(seed=5)
    infos, done = [], False
    while not done:
        obs, _, term, trunc, info = env.step(policy.predict(obs, env))
        infos.append(info)
        done = term or trunc
    return infos


def test_hold_keeps_replicas_and_target():
    env = AutoscaleEnv("default", horizon_s=120)
    _, info = env.reset(seed=0)
    assert info["replicas"].tolist() == [[4, 0, 0]]
    for _ in range(8):
        obs, _, term, trunc, info = env.step(hold(env))
        assert info["replicas"].tolist() == [[4, 0, 0]]
        assert info["kpi"]["target_replicas"] == 4.0 and info["kpi"]["replicas_ready/llama-3-8b"] == 4.0
        assert info["clamped"] == 0 and not term
    assert trunc and obs[IDX["replicas_ready"]] == pytest.approx(4 / 16)


def test_plus_one_adds_a_loading_replica_that_becomes_ready_after_its_cold_start():
    env = AutoscaleEnv("default", horizon_s=300)
    env.reset(seed=0)
    sc = env.scenario
    obs, _, _, _, info = env.step(delta(env, +1))
    # the model is cached on every node: local disk read + fixed startup = 2 s + 20 s > one 15 s interval
    cold_start_s = (
        sc.models[0].spec.weight_bytes / (sc.storage.local_bandwidth_gbps * 1e9) + sc.storage.startup_s
    )
    assert cold_start_s > sc.control_interval_s
    assert info["replicas"].tolist() == [[4, 1, 0]]
    assert obs[IDX["replicas_loading"]] == pytest.approx(1 / 16)
    new = env.sim.n_replicas - 1
    assert env.sim.state.pf[new, K.P_ALLOC] == 0.0
    _, _, _, _, info = env.step(hold(env))
    assert info["replicas"].tolist() == [[5, 0, 0]]
    assert env.sim.state.pf[new, K.P_READY] == pytest.approx(cold_start_s)
    assert info["kpi"]["target_replicas"] == 5.0


def test_minus_one_drains_a_replica_and_stops_paying_for_it():
    env = AutoscaleEnv("default", horizon_s=300)
    env.reset(seed=0)
    usd_per_replica_h = env.scenario.gpu_types[0].usd_per_hour * env.scenario.models[0].tensor_parallel
    for _ in range(4):  # let work build up so the drained replica has requests to finish
        env.step(hold(env))
    _, _, _, _, info = env.step(delta(env, -1))
    ready, loading, draining = info["replicas"][0]
    assert (ready, loading) == (3, 0)
    gone = np.isin(env.sim.state.pi[: env.sim.n_replicas, K.Q_STATE], (K.REP_DRAINING, K.REP_RELEASED))
    assert np.count_nonzero(gone) == 1
    # the drained replica is billed until it has finished its work, then released
    assert 3 * usd_per_replica_h < info["rewards"]["gpu_cost"] <= 4 * usd_per_replica_h + 1e-9
    for _ in range(3):
        _, _, _, _, info = env.step(hold(env))
    assert info["replicas"].tolist() == [[3, 0, 0]]
    assert info["rewards"]["gpu_cost"] == pytest.approx(3 * usd_per_replica_h)


def test_removal_cancels_loading_replicas_first():
    env = AutoscaleEnv("default", horizon_s=300, storage={"startup_s": 60})
    env.reset(seed=0)
    _, _, _, _, info = env.step(delta(env, +2))
    assert info["replicas"].tolist() == [[4, 2, 0]]
    _, _, _, _, info = env.step(delta(env, -1))
    assert info["replicas"].tolist() == [[4, 1, 0]]  # a load was cancelled; no READY replica drains
    assert env.sim.state.pi[env.sim.n_replicas - 1, K.Q_STATE] == K.REP_RELEASED  # the newest load goes first


def test_clamping_at_min_and_max_is_counted():
    env = AutoscaleEnv("default", horizon_s=300, max_step=16)
    env.reset(seed=0)
    _, _, _, _, info = env.step(delta(env, +16))  # 4 + 16 = 20 -> max_replicas 16
    assert info["clamped"] == 4
    assert info["replicas"][0, :2].sum() == 16 and info["kpi"]["target_replicas"] == 16.0
    assert info["rewards"]["placement_failures"] == 0.0  # 2 nodes x 8 GPUs hold exactly 16
    _, _, _, _, info = env.step(delta(env, -16))  # 16 - 16 = 0 -> min_replicas 1
    assert info["clamped"] == 1
    assert info["replicas"][0, :2].sum() == 1
    small = AutoscaleEnv("default", horizon_s=300)
    small.reset(seed=0)
    clamped = [small.step(delta(small, -2))[4]["clamped"] for _ in range(3)]
    assert clamped == [0, 1, 2]  # 4 -> 2 -> 1 (asked 0) -> 1 (asked -1)


def test_reward_is_minus_the_weighted_terms_and_terms_follow_their_definitions():
    weights = {
        "slo_violations": 2.0,
        "drops": 3.0,
        "gpu_cost": 0.5,
        "placement_failures": 7.0,
        "unfinished": 4.0,
    }
    env = AutoscaleEnv("bursty", horizon_s=300, reward=weights)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    seen_violation = False
    arrived = 0.0
    for step in range(1, 21):
        _, reward, _, trunc, info = env.step(rng.integers(0, env.action_space.nvec))
        t, kpi = info["rewards"], info["kpi"]
        assert set(t) == set(weights) == set(REWARD_KEYS)
        assert reward == pytest.approx(-sum(weights[k] * t[k] for k in t))
        n_arr = max(1.0, kpi["requests_arrived"])
        arrived += kpi["requests_arrived"]
        missed = kpi["slo_violations"] - kpi["requests_unfinished"]  # finished and missed
        assert t["slo_violations"] == pytest.approx(missed / n_arr)
        assert t["drops"] == pytest.approx(kpi["requests_dropped"] / n_arr)
        assert t["gpu_cost"] == pytest.approx(kpi["cost_usd"] / env.scenario.control_interval_s * 3600)
        assert t["unfinished"] == pytest.approx(kpi["requests_unfinished"] / (arrived / step))
        assert (kpi["requests_unfinished"] > 0) == trunc  # charged at the horizon only (work is left)
        seen_violation |= t["slo_violations"] > 0
        if trunc:
            break
    assert seen_violation, "random scaling under bursts should miss some SLOs"


def test_gpu_cost_is_replicas_times_dollars_per_hour():
    env = AutoscaleEnv("heterogeneous", horizon_s=120)
    _, info = env.reset(seed=0)
    sc = env.scenario
    price = {i: g.usd_per_hour for i, g in enumerate(sc.gpu_types)}
    expected = sum(price[r.gpu_type] * r.gpus for r in env.sim.state.records)
    for _ in range(3):
        _, _, _, _, info = env.step(hold(env))
        assert info["rewards"]["gpu_cost"] == pytest.approx(expected)
    # 2 x H100 + 2 x A100 + 4 x L4 from the scenario's presets
    assert expected == pytest.approx(2 * price[0] + 2 * price[1] + 4 * price[2])


def test_observation_features_match_the_scaler_view():
    env = AutoscaleEnv("diurnal", horizon_s=600)
    obs, _ = env.reset(seed=2)
    assert obs[IDX["arrival_rate"]] == 0.0 and obs[IDX["ttft_p99"]] == 0.0  # no interval observed yet
    assert obs[IDX["replicas_ready"]] == pytest.approx(3 / 16) and obs[IDX["slo_attainment"]] == 1.0
    obs, _, _, _, _ = env.step(hold(env))
    assert obs[IDX["arrival_rate"]] > 0 and obs[IDX["arrival_trend"]] == 0.0  # no previous interval
    rate = env.model_loads[0].arrival_rate_per_s
    obs, _, _, _, _ = env.step(hold(env))
    scale = env.scenario.models[0].max_replicas * env.nominal_capacity_rps[0]
    assert obs[IDX["arrival_trend"]] == pytest.approx(
        (env.model_loads[0].arrival_rate_per_s - rate) / scale, rel=1e-5
    )
    for _ in range(8):
        obs, _, _, _, _ = env.step(hold(env))
    (ld,) = env.model_loads
    dep = env.scenario.models[0]
    assert obs[IDX["load_ratio"]] == pytest.approx(
        ld.arrival_rate_per_s / (ld.replicas_ready * ld.capacity_rps_per_replica), rel=1e-6
    )
    assert obs[IDX["arrival_rate"]] == pytest.approx(
        ld.arrival_rate_per_s / (dep.max_replicas * env.nominal_capacity_rps[0]), rel=1e-6
    )
    assert obs[IDX["ttft_p99"]] == pytest.approx(min(ld.ttft_p99_s / 2.0, 32.0), rel=1e-6)
    assert obs[IDX["tpot_p99"]] == pytest.approx(ld.tpot_p99_s / 0.2, rel=1e-6) and ld.tpot_p99_s > 0
    assert obs[IDX["kv_transfers_pending"]] == 0.0  # an aggregated model has none
    assert obs[IDX["slo_attainment"]] == pytest.approx(ld.slo_attainment)
    p = env.scenario.workload.arrival.params
    angle = 2 * math.pi * (env.sim.now + p["phase_s"]) / p["period_s"]
    assert obs[-3] == pytest.approx(math.sin(angle), abs=1e-6)
    assert obs[-2] == pytest.approx(math.cos(angle), abs=1e-6)
    assert obs[-1] == pytest.approx(150 / 600)
    assert env.observation_space.contains(obs)


def test_static_scaler_policy_holds_and_hpa_scales_up_under_the_burst():
    env = AutoscaleEnv("bursty", horizon_s=600)
    static = run_episode(env, ScalerPolicy("static"))
    assert {int(i["replicas"][0, :2].sum()) for i in static} == {3}
    hpa = run_episode(env, ScalerPolicy("hpa"))
    targets = [i["kpi"]["target_replicas"] for i in hpa]
    assert max(targets[:8]) > 3, "the episode opens with a 50 req/s burst on 3 replicas"
    assert all(b - a <= env.max_step for a, b in zip([3.0, *targets], targets, strict=False))
    assert max(i["kpi"]["replicas_ready"] for i in hpa) > 3


def test_scaler_policy_without_a_rate_limit_reproduces_run_scenario():
    env = AutoscaleEnv("bursty", horizon_s=600, max_step=16)
    run_episode(env, ScalerPolicy())  # the scenario's own HPA
    reference = run_scenario("bursty", seed=5, overrides={"horizon_s": 600})
    assert env.sim.episode_kpis() == reference


def test_hybrid_scaling_adds_replicas_of_the_requested_gpu_type():
    env = AutoscaleEnv("heterogeneous", horizon_s=300)
    obs, _ = env.reset(seed=0)
    names = [g.name for g in env.scenario.gpu_types]
    assert env.action_space.nvec.tolist() == [5, 3]
    assert [names[g] for g in env.hybrid[0][1]] == ["h100-sxm-80gb", "a100-80gb", "l4"]
    per_type = obs[F : F + 3] * 12
    assert per_type.round().tolist() == [2, 2, 4]  # first fit fills H100, A100, then L4 nodes
    obs, _, _, _, info = env.step(np.array([env.max_step + 1, 2]))
    assert names[env.sim.state.records[-1].gpu_type] == "l4"
    assert info["rewards"]["placement_failures"] == 0.0
    assert (obs[F : F + 3] * 12).round().tolist() == [2, 2, 5]
    obs, _, _, _, info = env.step(np.array([env.max_step + 1, 0]))  # the H100 node is full
    assert info["rewards"]["placement_failures"] == 1.0
    assert obs[IDX["replicas_unplaced"]] == pytest.approx(1 / 12)
    # a scaler run as a policy picks the first allowed type with room: only L4 GPUs are left
    env.step(hold(env))
    policy = ScalerPolicy({"kind": "static", "replicas": 12})
    act = policy.predict(obs, env)
    assert act.tolist() == [env.max_step + 2, 2]  # +3 wanted (9 -> 12), clipped to max_step; L4
    obs, _, _, _, info = env.step(act)
    assert info["rewards"]["placement_failures"] == 0.0
    assert (obs[F : F + 3] * 12).round().tolist() == [2, 2, 7]


def test_env_arguments_are_validated():
    with pytest.raises(ConfigError, match="max_step"):
        AutoscaleEnv("default", max_step=0)
    with pytest.raises(ConfigError, match="max_step"):
        AutoscaleEnv("default", max_step=1.5)
    with pytest.raises(ConfigError, match="no_such_router"):
        AutoscaleEnv("default", router="no_such_router")
    with pytest.raises(ConfigError, match="no_such_placer"):
        AutoscaleEnv("default", placer="no_such_placer")
    with pytest.raises(ConfigError, match="external"):
        AutoscaleEnv("default", router="external")
    with pytest.raises(ConfigError, match="bogus"):
        AutoscaleEnv("default", bogus=1)
    with pytest.raises(ConfigError, match="horizon_s"):
        AutoscaleEnv("default", horizon_s=-5)
    with pytest.raises(ConfigError, match="render_mode"):
        AutoscaleEnv("default", render_mode="human")
    with pytest.raises(ConfigError, match="gpu_type"):
        ScalerPolicy(gpu_type="fastest")
    env = gym.make("InferGym/Autoscale-v1", scenario="default", router="round_robin", placer="best_fit",
                   max_step=3, horizon_s=60)  # fmt: skip
    env.reset(seed=0)
    assert env.unwrapped.sim.router_name == "round_robin"
    assert type(env.unwrapped.sim.placer).__name__.lower().startswith("bestfit")
    assert env.action_space.nvec.tolist() == [7]
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([7]))


def test_a_scenario_dict_with_two_models_works():
    scenario = {
        "name": "two-models",
        "horizon_s": 120,
        "nodes": [{"gpu": "a100-80gb", "count": 1, "gpus_per_node": 8}],
        "models": [
            {"name": "llama-3-8b", "replicas": 2, "max_replicas": 4},
            {"name": "llama-2-7b", "replicas": 1, "min_replicas": 1, "max_replicas": 4},
        ],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 10}},
        "reward": {"gpu_cost": 0.1},
    }
    env = AutoscaleEnv(scenario)
    assert env.action_space.nvec.tolist() == [5, 5]
    assert env.observation_space.shape == (2 * F + 2 * 2 + 3,)  # + both models' paged-engine block
    obs, info = env.reset(seed=0)
    assert info["replicas"][:, 0].tolist() == [2, 1]
    obs, reward, _, _, info = env.step(delta(env, +1, -1))
    assert info["replicas"][:, :2].sum(axis=1).tolist() == [3, 1]  # model 2 is at its minimum
    assert info["clamped"] == 1
    assert set(info["kpi"]) >= {"replicas_ready/llama-3-8b", "target_replicas/llama-2-7b", "cost_usd"}
    assert reward == pytest.approx(env.reward_from_terms(info["rewards"]))
    assert env.scenario.reward["gpu_cost"] == 0.1


def test_stepping_outside_an_episode_raises():
    env = AutoscaleEnv("default", horizon_s=30)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(hold(env))
    env.reset(seed=0)
    env.step(hold(env))
    _, _, _, trunc, _ = env.step(hold(env))
    assert trunc
    with pytest.raises(RuntimeError, match="reset"):
        env.step(hold(env))


def test_scaler_views_equal_the_kpi_definitions():
    """``Simulator.model_load`` computes TTFT p99 and SLO attainment itself (for speed); they must equal request_kpis."""
    env = AutoscaleEnv("multi-model", horizon_s=300)
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    sim = env.sim
    checked = 0
    for _ in range(20):
        env.step(rng.integers(0, env.action_space.nvec))
        nd, nx = int(sim.state.gi[K.I_NDONE]), int(sim.state.gi[K.I_NDROP])
        t0 = float(rng.uniform(0.0, sim.now))
        done = sim.state.log_done[int(rng.integers(0, nd)) : nd]
        for m in range(sim.n_models):
            mine = done[sim.state.ri[done, K.R_MODEL] == m]
            n_drop = int(np.count_nonzero(sim.state.ri[sim.state.log_drop[:nx], K.R_MODEL] == m))
            view = sim.model_load(m, t0, done, n_drop, np.zeros(0))
            ref = request_kpis(sim.state.rf, sim.state.ri, mine, n_drop, sim.slo)
            assert view.ttft_p99_s == ref["ttft_p99_s"]
            assert view.slo_attainment == ref["slo_attainment"]
            checked += len(mine) > 1
    assert checked > 10


def test_target_action_mode_sets_the_replica_count_directly():
    env = AutoscaleEnv("bursty", horizon_s=600, action_mode="target")
    assert env.action_space.nvec.tolist() == [16]  # min_replicas 1 .. max_replicas 16
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([7]))  # 1 + 7 = 8 replicas, from 3: five cold starts
    assert info["replicas"][0, :2].sum() == 8 and info["kpi"]["target_replicas"] == 8.0
    _, _, _, _, info = env.step(np.array([1]))  # 2 replicas: loading ones are cancelled first
    assert info["replicas"][0, :2].sum() == 2 and info["clamped"] == 0
    assert env.scaler_action([40]).tolist() == [15], "a scaler's target is clamped to max_replicas"
    with pytest.raises(ConfigError, match="action_mode: 'absolute'"):
        AutoscaleEnv("default", action_mode="absolute")


def test_scaler_policy_through_target_actions_reproduces_run_scenario():
    env = AutoscaleEnv("bursty", horizon_s=600, action_mode="target")
    run_episode(env, ScalerPolicy())  # the scenario's own HPA, no rate limit in this mode
    assert env.sim.episode_kpis() == run_scenario("bursty", seed=5, overrides={"horizon_s": 600})


def test_in_a_fault_scenario_the_agent_sees_each_pools_capacity_up_and_under_notice():
    env = AutoscaleEnv("spot")
    obs, _ = env.reset(seed=0)
    plain = AutoscaleEnv("diurnal")
    assert env.observation_space.shape[0] == plain.observation_space.shape[0] + 2 * 2  # 2 pools x 2
    hold = np.array([env.max_step, 0], np.int64)  # hold, added replicas where the placer says
    seen_notice = seen_down = False
    for _ in range(env.n_steps):
        obs, _, _, truncated, _ = env.step(hold)
        # (up, noticed) of the on-demand pool, then of the spot pool; then the model's paged block (2)
        pools = obs[-9:-5]
        cluster, down = env.sim.cluster, env.sim.faults.blocked
        spot_nodes = np.arange(1, 4)
        assert pools[0] == 1.0 and pools[1] == 0.0  # on-demand nodes neither fail nor get notices here
        assert pools[2] == np.float32(1 - 8 * len([n for n in down if n in spot_nodes]) / 24)
        assert pools[3] == np.float32(8 * cluster.node_noticed[spot_nodes].sum() / 24)
        seen_notice |= bool(pools[3] > 0)
        seen_down |= bool(pools[2] < 1)
        if truncated:
            break
    assert seen_notice and seen_down


def test_in_a_spot_scenario_the_agent_chooses_the_capacity_of_added_replicas():
    env = AutoscaleEnv("spot", action_mode="target")
    assert env.action_space.nvec.tolist() == [32, 3]  # 1..32 replicas, then (any, on-demand, spot)
    env.reset(seed=1)
    env.step(np.array([12 - 1, 2], np.int64))  # 12 replicas, the added ones on spot nodes only
    nodes = [r.alloc.node for r in env.sim.state.live]
    spot = env.sim.cluster.node_spot
    assert sum(1 for n in nodes if not spot[n]) == 3 and sum(1 for n in nodes if spot[n]) == 9
    failures = env.sim.placement_failures
    env.step(np.array([16 - 1, 1], np.int64))  # on-demand only: its 4 GPUs hold 3 already
    assert sum(1 for r in env.sim.state.live if not spot[r.alloc.node]) == 4
    assert env.sim.placement_failures == failures + 1
    policy = AutoscaleEnv.controller_policy("hpa")
    policy.reset(seed=0)
    action = policy.predict(None, env)
    assert env.action_space.contains(action) and action[1] == 0  # a scaler leaves it to the placer


def test_v3_observes_each_pool_of_a_disaggregated_model_and_v2_is_v3_without_the_pool_features():
    env = AutoscaleEnv("disaggregated", horizon_s=300)
    assert env.action_space.nvec.tolist() == [5, 5]  # the prefill pool, then the decode pool
    v2 = gym.make("InferGym/Autoscale-v2", scenario="disaggregated", horizon_s=300).unwrapped
    assert type(v2).model_features == type(v2).model_features[:13] and len(type(v2).model_features) == 13
    n_rest = env.observation_space.shape[0] - 2 * F  # paged block and time features
    assert v2.observation_space.shape[0] == 2 * 13 + n_rest
    obs, _ = env.reset(seed=4)
    obs2, _ = v2.reset(seed=4)
    for _ in range(10):
        obs, _, _, _, _ = env.step(hold(env))
        obs2, _, _, _, _ = v2.step(hold(v2))
        blocks = obs[: 2 * F].reshape(2, F)
        np.testing.assert_array_equal(blocks[:, :13].ravel(), obs2[:26])  # the same simulation
        np.testing.assert_array_equal(obs[2 * F :], obs2[26:])
        pre, dec = env.model_loads
        inv = [1.0 / np.log1p(d.max_replicas * d.max_batch) for d in env.scenario.models]
        for row, ld, k in ((blocks[0], pre, inv[0]), (blocks[1], dec, inv[1])):
            assert row[IDX["tpot_p99"]] == pytest.approx(ld.tpot_p99_s / 0.2, rel=1e-6)
            assert row[IDX["kv_transfers_pending"]] == pytest.approx(
                np.log1p(ld.kv_transfers_pending) * k, rel=1e-6
            )
        # both pools see the model's arrivals; queues and replicas are each pool's own
        assert blocks[0, IDX["arrival_rate"]] > 0 and blocks[1, IDX["arrival_rate"]] > 0
        assert blocks[0, IDX["tpot_p99"]] == blocks[1, IDX["tpot_p99"]] > 0
    assert env.observation_space.contains(obs)
