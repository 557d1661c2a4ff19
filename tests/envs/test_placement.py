"""Tests for envs.placement (InferGym/Placement-v0): masks, rejection, both item sources, KPIs, policies."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.placement import (
    LLM_FALLBACK_SCALER,
    JobPlacementEnv,
    LlmPlacementEnv,
    PlacementEnv,
    PlacerPolicy,
)
from envs.sim.cluster import TaskMix
from envs.sim.config import DEFAULT_REWARD
from envs.sim.errors import ConfigError
from envs.sim.jobtrace import JobTrace, synthetic_job_trace, write_alibaba_trace

ENV_ID = "InferGym/Placement-v1"
SMALL_JOBS = {"source": "jobs", "n_nodes": 12, "n_jobs": 300}


def write_trace(
    tmp_path: Path,
    nodes: list[tuple],
    jobs: list[tuple],
    types: tuple[str, ...] = ("A", "B"),
    node_cpu_milli: list[int] | None = None,
    node_memory_mib: list[int] | None = None,
    cpu_milli: list[int] | None = None,
    memory_mib: list[int] | None = None,
) -> dict:
    """Write a hand-made trace; nodes are (type index or -1, GPUs), jobs (num_gpu, gpu_milli, allowed
    types, creation_s, deletion_s); CPU and memory default to ample nodes and small jobs. Returns the
    env kwargs that read it."""
    inf = math.inf
    trace = JobTrace(
        gpu_type_names=types,
        node_names=tuple(f"n{i}" for i in range(len(nodes))),
        node_cpu_milli=node_cpu_milli if node_cpu_milli is not None else [64000] * len(nodes),
        node_memory_mib=node_memory_mib if node_memory_mib is not None else [262144] * len(nodes),
        node_gpus=[g for _, g in nodes],
        node_gpu_type=[t for t, _ in nodes],
        job_names=tuple(f"j{i}" for i in range(len(jobs))),
        cpu_milli=cpu_milli if cpu_milli is not None else [1000] * len(jobs),
        memory_mib=memory_mib if memory_mib is not None else [1024] * len(jobs),
        num_gpu=[j[0] for j in jobs],
        gpu_milli=[j[1] for j in jobs],
        job_gpu_types=tuple(j[2] for j in jobs),
        qos=("LS",) * len(jobs),
        pod_phase=("Succeeded",) * len(jobs),
        creation_s=[j[3] for j in jobs],
        deletion_s=[j[4] if j[4] is not None else inf for j in jobs],
        scheduled_s=[j[3] for j in jobs],
    )
    pods, nodes_csv = tmp_path / "pods.csv", tmp_path / "nodes.csv"
    write_alibaba_trace(trace, pods, nodes_csv)
    return {"source": "jobs", "pods_path": str(pods), "nodes_path": str(nodes_csv)}


def random_valid(env: PlacementEnv, rng: np.random.Generator) -> int:
    valid = np.flatnonzero(env.action_masks())
    return int(valid[rng.integers(valid.size)]) if valid.size else 0


# ------------------------------------------------------------------ one class per source
def test_source_selects_the_class_and_a_source_class_refuses_the_other_source():
    assert type(PlacementEnv(**SMALL_JOBS)) is JobPlacementEnv
    assert type(gym.make(ENV_ID, scenario="default").unwrapped) is LlmPlacementEnv
    env = JobPlacementEnv(n_nodes=4, n_jobs=5)  # a source's class defaults to its own source
    assert env.params.source == "jobs" and isinstance(env, PlacementEnv)
    assert type(pickle.loads(pickle.dumps(env))) is JobPlacementEnv
    with pytest.raises(ConfigError, match=r"source: 'llm' is not the source JobPlacementEnv serves"):
        JobPlacementEnv(source="llm")


# ------------------------------------------------------------------ masks and rejection
@pytest.mark.parametrize("kwargs", [SMALL_JOBS, {"scenario": "bursty", "horizon_s": 600.0}])
def test_masks_equal_cluster_feasibility(kwargs):
    env = PlacementEnv(**kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        if env.pending_demand is None:
            break
        assert np.array_equal(env.action_masks(), env.cluster.feasible(env.pending_demand))
        checked += 1
        *_, truncated, _ = env.step(random_valid(env, rng))
        if truncated:
            break
    assert checked >= 5


def test_masked_action_is_rejected_and_costs_an_invalid_action():
    env = PlacementEnv(**SMALL_JOBS)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(300):
        mask = env.action_masks()
        if mask.any() and not mask.all():
            break
        env.step(random_valid(env, rng))
    assert mask.any() and not mask.all(), "the episode should offer an item that fits on some nodes only"
    bad = int(np.flatnonzero(~mask)[0])
    before = env.cluster.copy()
    kpi_before = env._kpi(*env._usage())
    _, reward, _, _, info = env.step(bad)
    terms = info["rewards"]
    assert terms["placement_failures"] == 1.0 and terms["invalid_actions"] == 1.0
    assert info["kpi"]["failures"] == kpi_before["failures"] + 1
    assert info["kpi"]["placed"] == kpi_before["placed"]
    w = env.scenario.reward
    expected = -(w["placement_failures"] + w["invalid_actions"])
    expected -= w["fragmented_gpus"] * terms["fragmented_gpus"] + w["gpus_in_use"] * terms["gpus_in_use"]
    assert reward == pytest.approx(expected)
    # Nothing was allocated: only releases (which never add allocations) may have happened.
    assert env.cluster.node_alloc_count.sum() <= before.node_alloc_count.sum()


def test_llm_masked_action_is_a_simulator_placement_failure():
    env = PlacementEnv(scenario="bursty", horizon_s=600.0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    while env.pending_demand is not None and env.action_masks().all():
        env.step(random_valid(env, rng))
    assert env.pending_demand is not None, "bursty must fill a node so that some node is masked"
    bad = int(np.flatnonzero(~env.action_masks())[0])
    failures = env.sim.placement_failures
    _, _, _, _, info = env.step(bad)
    assert env.sim.placement_failures == failures + 1
    assert info["rewards"]["placement_failures"] == 1.0 and info["rewards"]["invalid_actions"] == 1.0


def test_item_that_fits_nowhere_fails_without_invalid_cost(tmp_path):
    kw = write_trace(tmp_path, [(0, 2), (1, 2)], [(4, 1000, (), 0, 10), (1, 1000, (), 5, 20)])
    env = PlacementEnv(**kw)
    env.reset(seed=0)
    assert not env.action_masks().any()
    _, _, _, truncated, info = env.step(1)
    assert info["rewards"]["placement_failures"] == 1.0 and info["rewards"]["invalid_actions"] == 0.0
    assert not truncated and env.action_masks().all() == np.True_


def test_action_outside_space_raises():
    env = PlacementEnv(**SMALL_JOBS)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(SMALL_JOBS["n_nodes"])
    with pytest.raises(ValueError, match="action"):
        env.step(-1)


# ------------------------------------------------------------------ jobs source
def test_job_source_replays_a_written_trace(tmp_path):
    trace = synthetic_job_trace(np.random.default_rng(3), n_nodes=6, n_jobs=40)
    pods, nodes = tmp_path / "pods.csv", tmp_path / "nodes.csv"
    write_alibaba_trace(trace, pods, nodes)
    env = gym.make(ENV_ID, source="jobs", pods_path=str(pods), nodes_path=str(nodes))
    base = env.unwrapped
    assert base.action_space.n == 6 and base.type_names == trace.gpu_type_names
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, truncated = 0, False
    while not truncated:
        assert base.pending_demand == trace.demand(steps)
        assert base.now_s == trace.creation_s[steps]
        *_, truncated, info = env.step(random_valid(base, rng))
        steps += 1
    assert steps == 40 and base.pending_demand is None
    assert info["kpi"]["placed"] + info["kpi"]["failures"] == 40
    capped = gym.make(ENV_ID, source="jobs", pods_path=str(pods), nodes_path=str(nodes), max_jobs=7)
    capped.reset(seed=0)
    n = 0
    while True:
        n += 1
        if capped.step(random_valid(capped.unwrapped, rng))[3]:
            break
    assert n == 7


def test_jobs_release_their_allocation_at_deletion_time(tmp_path):
    # One node with one GPU. A holds it on [0, 100); B (t=50) finds it taken; C (t=100) gets it
    # because A leaves exactly then; D (t=150) finds C still there (C leaves at 200).
    kw = write_trace(
        tmp_path,
        [(0, 1)],
        [(1, 1000, (), 0, 100), (1, 1000, (), 50, 60), (1, 1000, (), 100, 200), (1, 1000, (), 150, None)],
        types=("A",),
    )
    env = PlacementEnv(**kw)
    env.reset(seed=0)
    assert env.action_masks().tolist() == [True]
    _, _, _, _, info = env.step(0)  # place A
    assert env.now_s == 50 and env.action_masks().tolist() == [False]
    assert info["kpi"]["live_allocations"] == 1.0
    _, _, _, _, info = env.step(0)  # B is rejected
    assert info["rewards"]["placement_failures"] == 1.0 and info["rewards"]["invalid_actions"] == 0.0
    assert env.now_s == 100 and env.action_masks().tolist() == [True], "A must be gone at its deletion time"
    assert info["kpi"]["live_allocations"] == 0.0 and info["kpi"]["gpus_in_use"] == 0.0
    _, _, _, _, info = env.step(0)  # place C
    assert env.now_s == 150 and env.action_masks().tolist() == [False]
    _, _, _, truncated, info = env.step(0)
    assert truncated and info["kpi"]["placed"] == 2.0 and info["kpi"]["failures"] == 2.0


def test_fractional_demands_and_type_constraints(tmp_path):
    # Node 0: 2 GPUs of type A; node 1: 2 GPUs of type B; node 2: CPU only.
    jobs = [
        (1, 300, (1,), 0, None),  # a 0.3 share, type B only
        (1, 800, (), 1, None),  # a 0.8 share, any type
        (2, 1000, (0,), 2, None),  # two whole GPUs of type A
        (1, 750, (1,), 3, None),  # a 0.75 share on B: only the idle B GPU has room
        (0, 0, (), 4, None),  # CPU-only
    ]
    env = PlacementEnv(**write_trace(tmp_path, [(0, 2), (1, 2), (-1, 0)], jobs))
    obs, _ = env.reset(seed=0)
    f = env._node_dim
    item = obs[3 * f :]
    assert item[0] == 1.0 and item[2] == pytest.approx(0.3) and item[3:5].tolist() == [0.0, 1.0]
    assert env.action_masks().tolist() == [False, True, False]
    obs, _, _, _, info = env.step(1)
    assert env.cluster.gpu_free_milli[1].tolist() == [700, 1000]
    node1 = obs[f : 2 * f]
    assert node1[0] == pytest.approx(0.5) and node1[1] == pytest.approx(0.85) and node1[2] == 1.0
    assert node1[3:5].tolist() == [0.0, 1.0] and node1[6] == 1.0  # type B one-hot; in use
    assert info["kpi"]["fragmented_gpus"] == pytest.approx(0.7)
    assert info["rewards"]["fragmented_gpus"] == pytest.approx(0.7 / 4)
    assert info["rewards"]["gpus_in_use"] == pytest.approx(1 / 4)
    assert env.action_masks().tolist() == [True, True, False]  # 0.8 fits an idle GPU anywhere
    env.step(0)
    assert env.cluster.gpu_free_milli[0].tolist() == [200, 1000]
    assert env.action_masks().tolist() == [False, False, False]  # node 0 has one idle A GPU left
    env.step(0)
    assert env.action_masks().tolist() == [False, True, False]
    env.step(1)
    assert sorted(env.cluster.gpu_free_milli[1].tolist()) == [250, 700]  # the share took the idle GPU
    assert env.action_masks().tolist() == [True, True, True]  # CPU-only fits everywhere
    *_, truncated, info = env.step(2)
    assert truncated and info["kpi"]["placed"] == 4.0 and info["kpi"]["failures"] == 1.0


def test_kpis_match_the_cluster_measures():
    env = PlacementEnv(**SMALL_JOBS)
    env.reset(seed=2)
    rng = np.random.default_rng(2)
    seen = []
    for step in range(120):
        seen.append(env.pending_demand)
        _, _, _, _, info = env.step(random_valid(env, rng))
        if step % 20 == 19:
            c, kpi = env.cluster, info["kpi"]
            seen_next = [*seen, env.pending_demand]
            counts: dict = {}
            for d in seen_next:
                counts[d.task_type()] = counts.get(d.task_type(), 0) + 1
            fgd = c.fragmented_gpu_milli(TaskMix(list(counts.items())))
            assert kpi["fgd_fragmentation_milli"] == pytest.approx(fgd, rel=1e-12)
            assert kpi["fragmented_gpus"] == pytest.approx(c.fragmented_gpus())
            assert kpi["gpus_in_use"] == c.gpus_in_use()
            assert kpi["nodes_in_use"] == c.nodes_in_use()
            assert kpi["items"] == len(seen_next)
    assert fgd > 0.0


def test_same_seed_same_episode_and_pickle_mid_episode():
    def rollout(env, seed):
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        out = [obs]
        for _ in range(60):
            obs, reward, _, _, info = env.step(random_valid(env, rng))
            out += [obs, reward, info["kpi"]["fgd_fragmentation_milli"]]
        return out

    a, b = rollout(PlacementEnv(**SMALL_JOBS), 5), rollout(PlacementEnv(**SMALL_JOBS), 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    env = PlacementEnv(**SMALL_JOBS)
    rollout(env, 6)
    clone = pickle.loads(pickle.dumps(env))
    for action in np.random.default_rng(9).integers(0, SMALL_JOBS["n_nodes"], 30).tolist():
        x, y = env.step(action), clone.step(action)
        assert np.array_equal(x[0], y[0]) and x[1:4] == y[1:4] and x[4] == y[4]
    assert not np.array_equal(x[0][: env._node_dim * env.n_nodes], np.zeros(env._node_dim * env.n_nodes))


# ------------------------------------------------------------------ llm source
def test_llm_source_places_the_replicas_bursty_scales_up_to():
    env = PlacementEnv(scenario="bursty", horizon_s=900.0)
    env.reset(seed=0)
    sim = env.sim
    assert env.pending_demand == sim.replica_demand(0)
    rng = np.random.default_rng(0)
    steps, truncated, same_instant = 0, False, 0
    slo = cost = 0.0
    while not truncated:
        provisioned = sim.replicas_of(0)["ready"] + sim.replicas_of(0)["loading"]
        now = sim.now
        ok = bool(env.action_masks().any())
        _, _, _, truncated, info = env.step(random_valid(env, rng))
        steps += 1
        slo += info["rewards"]["slo_violations"]
        cost += info["rewards"]["gpu_cost"]
        if sim.now == now and ok:  # no interval ran: the placement is the only change
            same_instant += 1
            assert sim.replicas_of(0)["ready"] + sim.replicas_of(0)["loading"] == provisioned + 1
            assert info["rewards"]["gpu_cost"] == 0.0
    assert steps >= 5 and same_instant >= 1
    assert info["kpi"]["placed"] + info["kpi"]["failures"] == steps
    assert sim.now == 900.0 and cost > 0.0 and 0.0 <= slo <= 60.0


def test_static_scenario_uses_the_fallback_scaler_and_no_item_episode_truncates():
    env = PlacementEnv(scenario="default", horizon_s=300.0)
    env.reset(seed=0)
    hpa = env.sim.scalers[0]
    assert type(hpa).__name__ == "HpaScaler" and LLM_FALLBACK_SCALER["kind"] == "hpa"
    assert hpa.params.target == LLM_FALLBACK_SCALER["target"]
    idle = PlacementEnv(scenario="default", horizon_s=300.0, scaler="static")
    obs, info = idle.reset(seed=0)
    assert idle.pending_demand is None and obs[-idle._item_dim] == 0.0 and idle.action_masks().all()
    obs, reward, terminated, truncated, info = idle.step(0)
    assert truncated and not terminated and reward == 0.0 and info["kpi"]["items"] == 0.0


# ------------------------------------------------------------------ policies and arguments
def test_placer_policy_matches_the_placer_and_best_fit_fragments_less_than_spread():
    def episode(kind):
        env = PlacementEnv(source="jobs", n_jobs=400)  # 32 nodes; over seeds 0-9 best/spread is 0.34-0.56
        policy = PlacerPolicy(kind, env)
        env.reset(seed=1)
        frag = []
        while True:
            *_, truncated, info = env.step(policy.act())
            frag.append(info["kpi"]["fragmented_gpus"])
            if truncated:
                return float(np.mean(frag)), info["kpi"]

    best, kpi_best = episode("best_fit")
    spread, kpi_spread = episode("spread")
    assert best < 0.7 * spread
    assert kpi_best["invalid_actions"] == 0.0 and kpi_spread["invalid_actions"] == 0.0
    env = PlacementEnv(**SMALL_JOBS)
    env.reset(seed=0)
    from baselines.placement import BestFit

    policy = PlacerPolicy("best_fit", env)
    for _ in range(20):
        want = BestFit().select(env.cluster, env.pending_demand, np.random.default_rng(0))
        action = policy.predict(None, env)
        assert int(action) == max(want, 0)  # no node fits: any action, 0, is rejected alike
        env.step(action)


def test_placer_policy_resets_fgd_each_episode():
    env = PlacementEnv(**SMALL_JOBS)
    policy = PlacerPolicy("fgd", env)
    env.reset(seed=0)
    for _ in range(10):
        env.step(policy.act())
    env.reset(seed=0)
    policy.act()
    assert policy.placer._counts.sum() == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "batch"}, "source"),
        ({"pods_path": "p.csv"}, "pods_path"),
        ({"source": "jobs", "pods_path": "p.csv"}, "nodes_path"),
        ({"source": "jobs", "scaler": "hpa"}, "scaler"),
        ({"source": "jobs", "n_jobs": -1}, "n_jobs"),
        ({"source": "jobs", "max_jobs": 0}, "max_jobs"),
        ({"scaler": {"kind": "hpa", "bogus": 1}}, "bogus"),
        ({"source": "jobs", "pods_path": "p.csv", "nodes_path": "n.csv", "n_nodes": 4}, "n_nodes"),
        ({"source": "jobs", "shaping": -1.0}, r"shaping: -1"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PlacementEnv(**kwargs)


def test_reward_weights_come_from_the_scenario():
    env = PlacementEnv(**SMALL_JOBS, reward={"placement_failures": 2.5})
    assert env.scenario.reward["placement_failures"] == 2.5
    assert env.scenario.reward["gpus_in_use"] == DEFAULT_REWARD["gpus_in_use"]
    terms = {"placement_failures": 1.0, "invalid_actions": 0.0, "fragmented_gpus": 0.5, "gpus_in_use": 0.2}
    expected = -(2.5 + DEFAULT_REWARD["fragmented_gpus"] * 0.5 + DEFAULT_REWARD["gpus_in_use"] * 0.2)
    assert env.reward_from_terms(terms) == pytest.approx(expected)


@pytest.mark.parametrize("kwargs", [SMALL_JOBS, {"scenario": "bursty", "horizon_s": 600.0}])
def test_shaping_is_a_potential_difference_that_leaves_the_trajectory_and_the_return_unchanged(kwargs):
    plain, shaped = PlacementEnv(**kwargs), PlacementEnv(**kwargs, shaping=50.0)
    o1, _ = plain.reset(seed=3)
    o2, _ = shaped.reset(seed=3)
    phi0 = shaped._phi  # > 0 when the episode starts with replicas placed (llm), 0 on an empty cluster
    assert (phi0 > 0.0) == (kwargs.get("source") != "jobs")
    rng = np.random.default_rng(3)
    r1 = r2 = 0.0
    w = shaped.scenario.reward
    trunc, steps = False, 0
    while not trunc:
        a = random_valid(plain, rng)
        before = shaped._phi
        o1, x1, _, t1, i1 = plain.step(a)
        o2, x2, _, trunc, i2 = shaped.step(a)
        assert t1 == trunc and np.array_equal(o1, o2) and i1["rewards"] == i2["rewards"]
        assert "shaping" not in i1 and x2 == pytest.approx(x1 + i2["shaping"])
        if not trunc:
            # the potential: 50 steps of the FGD-fragmentation and GPUs-in-use costs at the new levels
            k = i2["kpi"]
            level = (
                w["fragmented_gpus"] * k["fgd_fragmentation_milli"] / 1000
                + w["gpus_in_use"] * k["gpus_in_use"]
            )
            assert shaped._phi == pytest.approx(50.0 * level / shaped._total_gpus)
            assert i2["shaping"] == pytest.approx(before - shaped._phi)
        r1 += x1
        r2 += x2
        steps += 1
    assert steps > 3
    assert r2 == pytest.approx(r1 + phi0, rel=1e-9, abs=1e-9)  # the shaping terms telescope to Phi(s0) - 0


def test_render_draws_the_jobs_episode():
    env = PlacementEnv(**SMALL_JOBS, render_mode="rgb_array")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(80):
        env.step(random_valid(env, rng))
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 and frame.std() > 5
    assert PlacementEnv(**SMALL_JOBS).render() is None
