"""The per-step shortcuts of the environments equal the computations they stand for, bit for bit.

Autoscale reads the KPI window once through ``Simulator.step_views``; Placement keeps cluster-wide
sums, FGD fragments and its node observation current incrementally. Each is compared with the
plain computation on the same state.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from envs.placement import PlacementEnv
from envs.sim import kernel as K
from envs.sim.cluster import GPU_MILLI, Demand, TaskMix, cluster_from_nodes
from envs.sim.engine import Simulator
from envs.sim.metrics import overlap_s, request_kpis


def same_load(a, b) -> bool:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or x.tobytes() != y.tobytes():
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


@pytest.mark.parametrize("scenario", ["default", "multi-model"])
def test_step_views_equal_model_loads_then_interval_kpis(scenario):
    a = Simulator(scenario, 3, overrides={"horizon_s": 300.0})
    b = Simulator(scenario, 3, overrides={"horizon_s": 300.0})
    rng = np.random.default_rng(3)
    for k in range(1, 21):
        for m in range(a.n_models):
            want = int(rng.integers(1, 6))
            a.set_target_replicas(m, want)
            b.set_target_replicas(m, want)
        a.advance(15.0 * k)
        b.advance(15.0 * k)
        loads, kpis = a.step_views()
        ref_loads, ref_kpis = b.model_loads(), b.interval_kpis()
        assert all(same_load(x, y) for x, y in zip(loads, ref_loads, strict=True))
        assert list(kpis) == list(ref_kpis)
        assert [v.hex() for v in kpis.values()] == [v.hex() for v in ref_kpis.values()]
    assert a.episode_kpis() == b.episode_kpis()


def test_window_kpis_equal_the_metrics_functions():
    sim = Simulator("multi-model", 1, overrides={"horizon_s": 200.0})
    sim.advance(120.0)
    busy0 = sim.busy_s()
    sim.advance(180.0)
    t0, t1 = 120.0, sim.now
    done = sim.state.log_done[: int(sim.state.gi[K.I_NDONE])]
    done = done[sim.state.rf[done, K.R_DONE] >= t0]  # completed in [t0, t1)
    out = sim.window_kpis(t0, t1, done, 0, 10, busy0)
    ref = request_kpis(sim.state.rf, sim.state.ri, done, 0, sim.slo)
    for key, value in ref.items():
        assert out[key] == value, key
    pf = sim.state.pf[: sim.n_replicas]
    alloc_s = overlap_s(pf[:, K.P_ALLOC], pf[:, K.P_RELEASE], t0, t1)
    assert out["gpu_seconds"] == float(np.dot(alloc_s, sim.state.rep_gpus[: sim.n_replicas]))


def test_cluster_sums_follow_allocations():
    c = cluster_from_nodes(
        [{"gpu_type": "A", "gpus": 4, "cpu_milli": 64000, "memory_mib": 65536, "count": 3},
         {"gpus": 0, "cpu_milli": 32000, "memory_mib": 65536}],
        ["A"],
    )  # fmt: skip
    rng = np.random.default_rng(0)
    live = []
    for _ in range(200):
        if live and rng.random() < 0.4:
            c.release(live.pop(int(rng.integers(len(live)))))
        else:
            num = int(rng.integers(0, 3))
            milli = int(rng.choice([300, 1000])) if num == 1 else 1000
            d = Demand(num_gpu=num, gpu_milli=milli, cpu_milli=2000)
            ok = np.flatnonzero(c.feasible(d))
            if ok.size:
                live.append(c.allocate(int(rng.choice(ok)), d))
        assert c.idle_gpus == int(c.gpu_full_free.sum())
        assert c.free_gpu_milli == int(c.gpu_free_total.sum())
        assert c.live_allocations == int(c.node_alloc_count.sum()) == len(live)
        assert c.nodes_in_use() == int(np.count_nonzero(c.node_alloc_count))
        g = c.gpu_free_milli
        assert c.total_gpus() - c.idle_gpus == int(((g >= 0) & (g < GPU_MILLI)).sum())
    copy = c.copy()
    if live:
        copy.release(live[0])
        assert copy.live_allocations == c.live_allocations - 1


def test_placement_observation_and_fgd_equal_full_recomputation():
    env = PlacementEnv(source="jobs", n_nodes=10, n_jobs=200)
    env.reset(seed=4)
    rng = np.random.default_rng(4)
    seen = [env.pending_demand]
    for _ in range(150):
        mask = env.action_masks()
        valid = np.flatnonzero(mask)
        obs, _, _, trunc, info = env.step(int(valid[rng.integers(len(valid))]) if valid.size else 0)
        if trunc:
            break
        seen.append(env.pending_demand)
        env._obs_version[:] = -1  # forget what the buffer shows: the next observation is built whole
        assert env._observe().tobytes() == obs.tobytes()
        counts: dict = {}
        for d in seen:
            counts[d.task_type()] = counts.get(d.task_type(), 0) + 1
        fgd = env.cluster.fragmented_gpu_milli(TaskMix(list(counts.items())))
        assert info["kpi"]["fgd_fragmentation_milli"] == pytest.approx(fgd, rel=1e-12)
