"""Tests for envs.placement.vector (PlacementVecEnv) and the compiled jobs step (envs.placement.fast).

Sub-env i of a vector env reset with seed s follows the single env reset with seed s + i bit for bit;
the single env's compiled step follows the Python cluster model (ClusterState, FgdTracker,
ItemEncoder, synthetic_job_trace) bit for bit; infos follow gymnasium's SyncVectorEnv in SAME_STEP
mode key for key.
"""

from __future__ import annotations

import heapq
import math
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import envs  # noqa: F401  (registers the ids)
from envs.common import weighted_reward
from envs.placement import JobPlacementEnv, PlacementEnv
from envs.placement.fast import _python_sum
from envs.placement.fgd import FgdTracker
from envs.placement.items import ItemEncoder
from envs.placement.jobs import synthetic_episode
from envs.placement.layout import COMPENSATED_SUM
from envs.placement.vector import PlacementVecEnv
from envs.sim.cluster import GPU_MILLI, ClusterState
from envs.sim.jobtrace import JobTrace, read_alibaba_trace, synthetic_job_trace
from tests.envs.test_placement import write_trace

ENV_ID = "InferGym/Placement-v0"
# episodes of 25 jobs: several hundred steps cross many episode ends
SMALL = {"source": "jobs", "n_nodes": 5, "n_jobs": 25, "mean_interarrival_s": 30.0, "mean_duration_s": 400.0}
SHAPED = {
    **SMALL,
    "n_nodes": 4,
    "shaping": 7.0,
    "reward": {"placement_failures": 2.5, "fragmented_gpus": 0.3},
}


def hand_trace(tmp_path: Path) -> dict:
    """A written trace with what synthetic traces lack: a CPU-only node, typed CPU jobs, jobs that
    end when they start, jobs that never end, 8-GPU jobs, ties of creation and deletion times."""
    rng = np.random.default_rng(3)
    nodes = [(0, 2), (1, 4), (-1, 0), (0, 8)]
    jobs, t = [], 0.0
    for _ in range(60):
        kind = int(rng.integers(5))
        num, milli = [(1, int(rng.integers(1, 100)) * 10), (int(rng.integers(1, 5)), 1000), (0, 0), (1, 1000),
                      (8, 1000)][kind]  # fmt: skip
        types = () if rng.random() < 0.6 else (int(rng.integers(2)),)
        t += float(rng.integers(0, 3))
        end = None if rng.random() < 0.05 else t + float(rng.integers(0, 20))
        jobs.append((num, milli, types, t, end))
    return write_trace(
        tmp_path, nodes, jobs,
        node_cpu_milli=[16000, 32000, 64000, 96000], node_memory_mib=[65536, 131072, 262144, 393216],
        cpu_milli=[int(x) * 1000 for x in rng.integers(0, 20, len(jobs))],
        memory_mib=[int(x) * 1024 for x in rng.integers(0, 64, len(jobs))],
    )  # fmt: skip


@pytest.fixture(params=["small", "shaped", "file", "max_jobs"])
def config(request, tmp_path) -> dict:
    if request.param == "file":
        return {**hand_trace(tmp_path), "shaping": 2.0}
    if request.param == "max_jobs":
        return {**SMALL, "n_jobs": 200, "max_jobs": 18}
    return SMALL if request.param == "small" else SHAPED


def choose(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mostly a valid node per row, sometimes any node (masked ones are rejected, not refused)."""
    actions = rng.integers(0, masks.shape[1], masks.shape[0])
    for e, row in enumerate(masks):
        valid = np.flatnonzero(row)
        if valid.size and rng.random() < 0.8:
            actions[e] = valid[rng.integers(valid.size)]
    return actions


def bits(x) -> bytes:
    return np.asarray(x, dtype=np.float64).tobytes()


def same_dict(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], dict):
            same_dict(a[key], b[key])
        else:
            assert type(a[key]) is type(b[key]) and bits(a[key]) == bits(b[key]), key


def same_infos(a: dict, b: dict, where: str = "infos") -> None:
    """Vector infos equal key for key (masks and values, dtypes, nested dicts, final_obs objects)."""
    assert sorted(a) == sorted(b), (where, sorted(a), sorted(b))
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            same_infos(x, y, f"{where}.{key}")
        elif x.dtype == object:
            assert y.dtype == object and len(x) == len(y)
            for u, v in zip(x, y, strict=True):
                assert (u is None and v is None) or (u.dtype == v.dtype and np.array_equal(u, v)), (
                    where,
                    key,
                )
        else:
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), (
                where,
                key,
                x,
                y,
            )


# ------------------------------------------------------------------ vector = single envs
def test_sub_envs_follow_the_single_env_with_seed_plus_i_bit_for_bit(config):
    n = 3
    vec = PlacementVecEnv(n, **config)
    singles = [PlacementEnv(**config) for _ in range(n)]
    obs, infos = vec.reset(seed=11)
    for e, env in enumerate(singles):
        o, info = env.reset(seed=11 + e)
        assert obs[e].tobytes() == o.tobytes()
        assert all(bits(infos["kpi"][k][e]) == bits(v) for k, v in info["kpi"].items())
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(300):
        masks = vec.action_masks()
        assert masks.shape == (n, singles[0].n_nodes) and masks.dtype == np.bool_
        for e, env in enumerate(singles):
            assert np.array_equal(masks[e], env.action_masks())
        actions = choose(masks, rng)
        obs, rewards, terminated, truncated, infos = vec.step(actions)
        assert obs.dtype == np.float32 and rewards.dtype == np.float64
        assert terminated.dtype == truncated.dtype == np.bool_
        for e, env in enumerate(singles):
            o, r, term, trunc, info = env.step(int(actions[e]))
            assert bits(rewards[e]) == bits(r) and terminated[e] == term and truncated[e] == trunc
            if trunc:
                ends += 1
                assert infos["_final_obs"][e] and infos["_final_info"][e]
                assert infos["final_obs"][e].tobytes() == o.tobytes()
                final = {k: infos["final_info"][k] for k in info}
                for key, value in info.items():
                    if isinstance(value, dict):
                        assert all(final[key]["_" + k][e] for k in value)
                        assert all(bits(final[key][k][e]) == bits(v) for k, v in value.items())
                    else:
                        assert (
                            final["_" + key][e] if "_" + key in final else infos["final_info"]["_" + key][e]
                        )
                        assert bits(final[key][e]) == bits(value)
                o, info = env.reset()  # the vector env's autoreset: no seed
                assert not infos.get("_rewards", np.zeros(n, bool))[e]
            else:
                assert not infos.get("_final_obs", np.zeros(n, bool))[e]
                assert infos["_rewards"][e]
                assert all(bits(infos["rewards"][k][e]) == bits(v) for k, v in info["rewards"].items())
                if "shaping" in info:
                    assert infos["_shaping"][e] and bits(infos["shaping"][e]) == bits(info["shaping"])
            assert obs[e].tobytes() == o.tobytes()
            assert all(bits(infos["kpi"][k][e]) == bits(v) for k, v in info["kpi"].items())
    assert ends >= 10, "the test should cross many episode ends"


def _reset_pair(kw: dict, n: int, seed: int) -> tuple[PlacementVecEnv, SyncVectorEnv]:
    """A native vector env and gymnasium's SyncVectorEnv (SAME_STEP) of the same single envs, reset
    with ``seed``; their first observations and infos must already agree."""
    vec = PlacementVecEnv(n, **kw)
    sync = SyncVectorEnv(
        [lambda: PlacementEnv(**kw) for _ in range(n)], autoreset_mode=AutoresetMode.SAME_STEP
    )
    o1, i1 = vec.reset(seed=seed)
    o2, i2 = sync.reset(seed=seed)
    assert o1.tobytes() == o2.tobytes()
    same_infos(i1, i2)
    return vec, sync


def test_infos_and_final_obs_are_those_of_sync_vector_env_in_same_step_mode():
    kw = {**SMALL, "n_jobs": 12, "shaping": 3.0}
    n = 4
    vec, sync = _reset_pair(kw, n, seed=5)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    rng = np.random.default_rng(1)
    ended = 0
    for _ in range(120):
        actions = choose(vec.action_masks(), rng)
        a, b = vec.step(actions), sync.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        same_infos(a[4], b[4])
        ended += int(a[3].sum())
    assert ended >= 20


def test_an_episode_without_jobs_ends_at_every_step():
    kw = {**SMALL, "n_jobs": 0, "shaping": 1.0}
    vec = PlacementVecEnv(2, **kw)
    single = PlacementEnv(**kw)
    obs, _ = vec.reset(seed=0)
    o, _ = single.reset(seed=0)
    assert obs[0].tobytes() == o.tobytes() and vec.action_masks().all()
    for _ in range(3):
        obs, rewards, _, truncated, infos = vec.step(np.zeros(2, np.int64))
        o, r, _, trunc, info = single.step(0)
        assert truncated.all() and trunc and r == 0.0 and rewards.tolist() == [0.0, 0.0]
        assert "rewards" not in infos and "shaping" not in infos and "shaping" not in info
        assert (
            infos["final_info"]["_rewards"].all()
            and not infos["final_info"]["rewards"]["placement_failures"].any()
        )
        single.reset()


# ------------------------------------------------------------------ the compiled step = the cluster model
class ReferenceJobs:
    """Placement-v0's jobs source computed with the Python cluster model: ClusterState.feasible,
    allocate and release, the FgdTracker, the ItemEncoder, synthetic_job_trace, weighted_reward."""

    def __init__(self, env: JobPlacementEnv, trace: JobTrace | None) -> None:
        self.env, self.trace = env, trace
        self.t = len(env.type_names)
        self.encoder = ItemEncoder(self.t, env._max_gpus, env._max_cpu, env._max_mem)
        self.w = env.scenario.reward
        self.shaping = env.params.shaping

    def reset(self, rng: np.random.Generator):
        env, p = self.env, self.env.params
        tr = self.trace or synthetic_job_trace(
            rng, n_nodes=int(p.synthetic("n_nodes")), n_jobs=int(p.synthetic("n_jobs")),
            mean_interarrival_s=float(p.synthetic("mean_interarrival_s")),
            mean_duration_s=float(p.synthetic("mean_duration_s")),
        )  # fmt: skip
        pos = {name: i for i, name in enumerate(env.type_names)}
        remap = np.array([pos[name] for name in tr.gpu_type_names] + [-1])
        c = self.c = ClusterState(env.type_names, remap[tr.node_gpu_type], tr.node_gpus, tr.node_cpu_milli,
                                  tr.node_memory_mib)  # fmt: skip
        n = tr.n_jobs if p.max_jobs is None else min(tr.n_jobs, p.max_jobs)
        keys = [
            (int(tr.num_gpu[i]), int(tr.gpu_milli[i]), int(tr.cpu_milli[i]), int(tr.memory_mib[i]),
             tuple(sorted(int(remap[g]) for g in tr.job_gpu_types[i])), -1)
            for i in range(n)
        ]  # fmt: skip
        self.items, types = self.encoder.episode_items(keys)
        self.creation, self.deletion, self.n = tr.creation_s[:n].tolist(), tr.deletion_s[:n].tolist(), n
        self.fgd = FgdTracker()
        self.fgd.start(c, types)
        self.live: list = []
        self.placed = self.failures = self.invalid = self.offered = 0
        self.total = max(c.total_gpus(), 1)
        gpus = c.node_gpus.astype(np.float64)
        self.inv_gpus = np.where(gpus > 0, 1.0 / np.where(gpus > 0, gpus, 1.0), 0.0)
        self.inv_cpu = np.where(c.node_cpu_milli > 0, 1.0 / np.maximum(c.node_cpu_milli, 1), 0.0)
        self.inv_mem = np.where(c.node_memory_mib > 0, 1.0 / np.maximum(c.node_memory_mib, 1), 0.0)
        self.now = self.creation[0] if n else 0.0
        self.next_job(0)
        kpi = self.kpi()
        self.phi = self.potential(kpi) if self.shaping > 0 else 0.0
        return self.observe(), {"kpi": kpi}

    def next_job(self, i: int) -> None:
        self.job = i
        if i >= self.n:
            self.mask, self.any = np.ones(self.c.n_nodes, bool), False
            return
        self.now = self.creation[i]
        while self.live and self.live[0][0] <= self.now:
            self.c.release(heapq.heappop(self.live)[2])
        self.offered += 1
        self.fgd.see(self.items[i][2])
        self.mask = self.c.feasible(self.items[i][0])
        self.any = bool(self.mask.any())

    def usage(self) -> tuple[float, int]:
        return self.c.fragmented_gpus(), self.c.gpus_in_use()

    def kpi(self) -> dict:
        frag, in_use = self.usage()
        return {"time_s": float(self.now), "items": float(self.offered), "placed": float(self.placed),
                "failures": float(self.failures), "invalid_actions": float(self.invalid),
                "fragmented_gpus": frag, "fgd_fragmentation_milli": self.fgd.value(), "gpus_in_use": float(in_use),
                "nodes_in_use": float(self.c.nodes_in_use()), "live_allocations": float(self.c.live_allocations)}  # fmt: skip

    def potential(self, kpi: dict) -> float:
        level = self.w["fragmented_gpus"] * (kpi["fgd_fragmentation_milli"] / GPU_MILLI)
        level += self.w["gpus_in_use"] * kpi["gpus_in_use"]
        return self.shaping * level / self.total

    def observe(self) -> np.ndarray:
        c, t = self.c, self.t
        nodes = np.zeros((c.n_nodes, 7 + t), np.float32)
        nodes[:, 0] = c.gpu_full_free * self.inv_gpus
        nodes[:, 1] = c.gpu_free_total * (self.inv_gpus / GPU_MILLI)
        nodes[:, 2] = np.maximum(c.gpu_max_free, 0) * (1.0 / GPU_MILLI)
        typed = np.flatnonzero(c.node_gpu_type >= 0)
        nodes[typed, 3 + c.node_gpu_type[typed]] = 1.0
        nodes[:, 4 + t] = c.node_alloc_count > 0
        nodes[:, 5 + t] = c.cpu_free_milli * self.inv_cpu
        nodes[:, 6 + t] = c.mem_free_mib * self.inv_mem
        item = self.items[self.job][1] if self.job < self.n else np.zeros(self.encoder.dim, np.float32)
        return np.concatenate([nodes.ravel(), item])

    def step(self, node: int):
        terms = dict.fromkeys(PlacementEnv.REWARD_TERMS, 0.0)
        if self.job >= self.n:
            return self.observe(), 0.0, False, True, {"rewards": terms, "kpi": self.kpi()}
        d = self.items[self.job][0]
        if self.mask[node]:
            alloc = self.c.allocate(node, d)
            if self.deletion[self.job] < math.inf:
                heapq.heappush(self.live, (self.deletion[self.job], self.job, alloc))
            self.placed += 1
        else:
            self.failures += 1
            terms["placement_failures"] = 1.0
            if self.any:
                self.invalid += 1
                terms["invalid_actions"] = 1.0
        frag, in_use = self.usage()
        terms["fragmented_gpus"], terms["gpus_in_use"] = frag / self.total, in_use / self.total
        self.next_job(self.job + 1)
        truncated = self.job >= self.n
        reward = weighted_reward(terms, self.w)
        info = {"rewards": terms, "kpi": self.kpi()}
        if self.shaping > 0:
            phi = 0.0 if truncated else self.potential(info["kpi"])
            info["shaping"] = shaped = self.phi - phi
            self.phi = phi
            reward += shaped
        return self.observe(), reward, False, truncated, info


@pytest.mark.parametrize("kwargs", [SMALL, SHAPED, {"source": "jobs", "n_jobs": 400}, "file"])
def test_the_compiled_step_is_the_cluster_model_bit_for_bit(kwargs, tmp_path):
    if kwargs == "file":
        kwargs = {**hand_trace(tmp_path), "shaping": 2.0}
    env = PlacementEnv(**kwargs)
    trace = read_alibaba_trace(kwargs["pods_path"], kwargs["nodes_path"]) if "pods_path" in kwargs else None
    ref = ReferenceJobs(env, trace)
    ref_rng = np.random.default_rng(21)
    obs, info = env.reset(seed=21)
    o, i = ref.reset(np.random.default_rng(21))
    ref_rng = np.random.default_rng(21)
    ref.reset(ref_rng)
    rng = np.random.default_rng(2)
    for step in range(500):
        assert obs.tobytes() == o.tobytes(), step
        same_dict(info, i)
        assert np.array_equal(env.action_masks(), ref.mask)
        node = int(choose(env.action_masks()[None], rng)[0])
        obs, reward, term, trunc, info = env.step(node)
        o, r, t2, tr2, i = ref.step(node)
        assert bits(reward) == bits(r) and term == t2 and trunc == tr2, step
        if trunc:
            same_dict(info, i)
            assert obs.tobytes() == o.tobytes()
            obs, info = env.reset()
            o, i = ref.reset(ref_rng)
    cluster = env.cluster  # the ClusterState view follows the compiled state
    assert np.array_equal(cluster.gpu_free_milli, ref.c.gpu_free_milli)
    assert cluster.idle_gpus == ref.c.idle_gpus and cluster.nodes_in_use() == ref.c.nodes_in_use()
    assert env.pending_demand == (ref.items[ref.job][0] if ref.job < ref.n else None)


@pytest.mark.parametrize(("n_nodes", "n_jobs", "ia", "dur"), [(32, 1000, 20.0, 3600.0), (3, 50, 5.0, 100.0),
                                                               (1, 7, 60.0, 30.0), (9, 0, 1.0, 1.0)])  # fmt: skip
def test_the_compiled_trace_draw_is_synthetic_job_trace(n_nodes, n_jobs, ia, dur):
    env = JobPlacementEnv(n_nodes=n_nodes, n_jobs=n_jobs)
    typed = 0
    for seed in range(12):
        r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
        tr = synthetic_job_trace(
            r1, n_nodes=n_nodes, n_jobs=n_jobs, mean_interarrival_s=ia, mean_duration_s=dur
        )
        ep = synthetic_episode(
            r2, n_nodes, n_jobs, ia, dur, n_jobs, env._max_gpus, env._max_cpu, env._max_mem
        )
        assert r1.bit_generator.state == r2.bit_generator.state  # the same draws, the same number
        pos = {name: i for i, name in enumerate(env.type_names)}
        remap = np.array([pos[name] for name in tr.gpu_type_names] + [-1])
        assert ep.node_type.tolist() == remap[tr.node_gpu_type].tolist()
        assert ep.node_gpus.tolist() == tr.node_gpus.tolist() and ep.node_names == tr.node_names
        assert (
            ep.node_cpu.tolist() == tr.node_cpu_milli.tolist()
            and ep.node_mem.tolist() == tr.node_memory_mib.tolist()
        )
        assert (
            ep.jint[:, 0].tolist() == tr.num_gpu.tolist() and ep.jint[:, 1].tolist() == tr.gpu_milli.tolist()
        )
        assert (
            ep.jint[:, 2].tolist() == tr.cpu_milli.tolist()
            and ep.jint[:, 3].tolist() == tr.memory_mib.tolist()
        )
        types = [ep.typesets[s] for s in ep.jint[:, 4].tolist()]
        assert types == [tuple(sorted(int(remap[g]) for g in ts)) for ts in tr.job_gpu_types]
        assert bits(ep.jtime[:, 0]) == bits(tr.creation_s) and bits(ep.jtime[:, 1]) == bits(tr.deletion_s)
        typed += sum(1 for ts in types if ts)
    assert n_jobs == 0 or typed > 0, "some jobs should be restricted to GPU types"


def test_the_compiled_reward_sums_its_terms_as_weighted_reward():
    rng = np.random.default_rng(0)
    names = PlacementEnv.REWARD_TERMS
    for _ in range(3000):
        w = dict(zip(names, rng.choice([0.0, 0.1, 1.0, 1e-9, 3.3e7, 0.3], 4).tolist(), strict=True))
        t = rng.choice([0.0, 1.0, 1 / 3, 1e-12, 0.7], 4) * rng.random(4)
        terms = dict(zip(names, t.tolist(), strict=True))
        got = -_python_sum(*[w[k] * terms[k] for k in names], COMPENSATED_SUM)
        assert bits(got) == bits(weighted_reward(terms, w))


# ------------------------------------------------------------------ the vector API
def test_spaces_are_the_single_env_spaces_batched():
    vec = PlacementVecEnv(6, **SMALL)
    single = PlacementEnv(**SMALL)
    assert vec.num_envs == 6
    assert vec.single_observation_space == single.observation_space
    assert vec.single_action_space == single.action_space
    assert vec.observation_space == gym.vector.utils.batch_space(single.observation_space, 6)
    assert vec.action_space == gym.spaces.MultiDiscrete([SMALL["n_nodes"]] * 6)
    obs, _ = vec.reset(seed=0)
    assert vec.observation_space.contains(obs) and obs.shape == (6, single.observation_space.shape[0])
    obs, *_ = vec.step(vec.action_space.sample())
    assert vec.observation_space.contains(obs)


def test_same_seed_same_trajectory_and_seed_forms():
    def rollout(vec, seed):
        out = [vec.reset(seed=seed)[0]]
        rng = np.random.default_rng(3)
        for _ in range(80):
            obs, rewards, _, truncated, _ = vec.step(choose(vec.action_masks(), rng))
            out += [obs, rewards, truncated]
        return out

    a, b = rollout(PlacementVecEnv(3, **SMALL), 7), rollout(PlacementVecEnv(3, **SMALL), 7)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    c = rollout(PlacementVecEnv(3, **SMALL), 8)
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a, c, strict=True))
    vec = PlacementVecEnv(3, **SMALL)
    listed, _ = vec.reset(seed=[7, 8, 9])
    assert listed.tobytes() == PlacementVecEnv(3, **SMALL).reset(seed=7)[0].tobytes()
    vec.reset(seed=[None, 8, None])  # None: a sub-env's generator continues (or starts at random)
    with pytest.raises(ValueError, match="seed"):
        vec.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="options"):
        vec.reset(seed=0, options={"bogus": 1})


@pytest.mark.parametrize(
    "actions",
    [
        [0, 1],
        [0, 1, 2, 3],
        [0, 1, 5],
        [0, -1, 2],
        [0, 1.5, 2],
        np.array([0, 1, np.nan]),
        [[0], [1], [2]],
        "abc",
        np.array([0, 1, 2], dtype=object),
        [0, [1, 2], 3],
    ],  # fmt: skip
)
def test_bad_actions_raise_value_errors_naming_actions(actions):
    vec = PlacementVecEnv(3, **SMALL)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        vec.step(actions)


def test_good_action_forms_and_step_before_reset():
    vec = PlacementVecEnv(3, **SMALL)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros(3, np.int64))
    vec.reset(seed=0)
    for actions in ([0, 1, 4], np.array([2, 2, 2], np.uint8), np.array([1.0, 0.0, 3.0]), np.arange(6)[::2]):
        vec.step(actions)
    with pytest.raises(ValueError, match="render_mode"):
        PlacementVecEnv(2, render_mode="rgb_array", **SMALL)
    with pytest.raises(ValueError, match="num_envs"):
        PlacementVecEnv(0, **SMALL)
    with pytest.raises(ValueError, match="bogus"):
        PlacementVecEnv(2, bogus=1, **SMALL)


def test_a_sub_env_is_a_single_env_on_its_row_of_the_shared_batch():
    vec = PlacementVecEnv(3, **SMALL)
    vec.reset(seed=4)
    single = PlacementEnv(**SMALL)
    single.reset(seed=5)
    sub = vec.envs[1]
    rng = np.random.default_rng(6)
    for _ in range(60):  # stepped on its own (its row only), across episode ends and array growth
        node = int(choose(sub.action_masks()[None], rng)[0])
        a, b = sub.step(node), single.step(node)
        assert a[0].tobytes() == b[0].tobytes() and a[1:4] == b[1:4] and a[4] == b[4]
        assert sub.pending_demand == single.pending_demand and sub.now_s == single.now_s
        if a[3]:
            assert sub.reset()[0].tobytes() == single.reset()[0].tobytes()
    assert np.array_equal(sub.cluster.gpu_free_milli, single.cluster.gpu_free_milli)
    assert vec.envs[0]._si_row[0] == 0 and vec.envs[2]._si_row[0] == 0  # the other rows did not move


def test_pickle_round_trips_mid_episode_and_continues_identically():
    vec = PlacementVecEnv(4, **SHAPED)
    vec.reset(seed=3)
    rng = np.random.default_rng(4)
    for _ in range(37):
        vec.step(choose(vec.action_masks(), rng))
    clone = pickle.loads(pickle.dumps(vec))
    assert np.array_equal(clone.action_masks(), vec.action_masks())
    ended = 0
    for _ in range(150):
        actions = choose(vec.action_masks(), rng)
        x, y = vec.step(actions), clone.step(actions)
        for u, v in zip(x[:4], y[:4], strict=True):
            assert u.tobytes() == v.tobytes()
        same_infos(x[4], y[4])
        ended += int(x[3].sum())
    assert ended > 4  # the copy's generators continue too


def test_make_vec_builds_the_native_vector_env():
    spec = gym.spec(ENV_ID)
    env_id = ENV_ID
    if spec.vector_entry_point is None:  # not registered yet: a test id with it
        env_id = "InferGymTest/PlacementVec-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=spec.entry_point, vector_entry_point=PlacementVecEnv)
    vec = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point", **SMALL)
    assert isinstance(vec.unwrapped, PlacementVecEnv) and vec.num_envs == 3
    direct = PlacementVecEnv(3, **SMALL)
    assert vec.reset(seed=2)[0].tobytes() == direct.reset(seed=2)[0].tobytes()
    a = np.array([0, 1, 2])
    assert vec.step(a)[0].tobytes() == direct.step(a)[0].tobytes()
    vec.close()


def test_llm_source_steps_its_single_envs_as_sync_vector_env_does():
    # bursty, 300 s: episodes of 35 to 45 placements, so sub-envs end in different steps
    kw = {"scenario": "bursty", "horizon_s": 300.0, "shaping": 1.0}
    n = 4
    vec, sync = _reset_pair(kw, n, seed=0)
    rng = np.random.default_rng(0)
    partial = 0
    for _ in range(60):
        masks = vec.action_masks()
        assert masks.shape == (n, vec.single_action_space.n)
        assert np.array_equal(masks, np.stack([env.action_masks() for env in sync.envs]))
        actions = choose(masks, rng)
        a, b = vec.step(actions), sync.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        same_infos(a[4], b[4])
        partial += int(0 < a[3].sum() < n)
    assert partial >= 1
