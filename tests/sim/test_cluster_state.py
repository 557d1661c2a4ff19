"""Tests for envs.sim.cluster: demands, feasibility, allocation, release and fragmentation measures."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.sim.cluster import (
    Allocation,
    ClusterState,
    Demand,
    TaskMix,
    cluster_from_nodes,
)
from envs.sim.errors import ConfigError

TYPES = ("A100", "T4")


def small_cluster(n_models: int = 0) -> ClusterState:
    """Node 0: 4 x A100, node 1: 2 x T4, node 2: CPU-only."""
    return cluster_from_nodes(
        [
            {"gpu_type": "A100", "gpus": 4, "cpu_milli": 32000, "memory_mib": 131072},
            {"gpu_type": "T4", "gpus": 2, "cpu_milli": 16000, "memory_mib": 65536},
            {"gpus": 0, "cpu_milli": 8000, "memory_mib": 32768},
        ],
        TYPES,
        n_models=n_models,
    )


# ------------------------------------------------------------------ Demand
def test_demand_normalises_type_fields() -> None:
    assert Demand(num_gpu=1, gpu_types=[1, 0, 1]).gpu_types == (0, 1)
    assert Demand(num_gpu=1, gpu_types=[1, 0, 1]).gpu_type == -1
    assert Demand(num_gpu=1, gpu_type=1) == Demand(num_gpu=1, gpu_types=(1,))
    assert Demand(num_gpu=1, gpu_type=np.int64(1)).gpu_type == 1


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"num_gpu": 2, "gpu_milli": 500}, "demand.gpu_milli"),
        ({"num_gpu": 1, "gpu_milli": 0}, "demand.gpu_milli"),
        ({"num_gpu": 1, "gpu_milli": 1001}, "demand.gpu_milli"),
        ({"num_gpu": -1}, "demand.num_gpu"),
        ({"cpu_milli": -5}, "demand.cpu_milli"),
        ({"num_gpu": 1, "gpu_type": 0, "gpu_types": (1,)}, "demand.gpu_type"),
        ({"num_gpu": 1.5}, "demand.num_gpu"),
        ({"model": -2}, "demand.model"),
    ],
)
def test_demand_rejects_bad_values(kwargs: dict, path: str) -> None:
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        Demand(**kwargs)


def test_task_type_drops_model_and_cpu_only_gpu_fields() -> None:
    assert Demand(num_gpu=1, gpu_milli=300, model=2).task_type() == Demand(num_gpu=1, gpu_milli=300)
    cpu_a = Demand(num_gpu=0, gpu_milli=1000, cpu_milli=4000)
    cpu_b = Demand(num_gpu=0, gpu_milli=0, cpu_milli=4000)
    assert cpu_a.task_type() == cpu_b.task_type()


# ------------------------------------------------------------ construction
def test_construction_arrays() -> None:
    c = small_cluster(n_models=3)
    assert c.gpu_free_milli.tolist() == [[1000] * 4, [1000, 1000, -1, -1], [-1] * 4]
    assert c.total_gpus() == 6 and c.n_nodes == 3 and c.max_gpus_per_node == 4
    assert c.cached.shape == (3, 3) and not c.cached.any()
    assert c.gpu_full_free.tolist() == [4, 2, 0]
    assert c.gpu_max_free.tolist() == [1000, 1000, -1]


def test_cluster_from_nodes_count_and_errors() -> None:
    c = cluster_from_nodes(
        [{"gpu_type": "T4", "gpus": 2, "cpu_milli": 1, "memory_mib": 1, "count": 3}], TYPES
    )
    assert c.n_nodes == 3 and c.node_gpu_type.tolist() == [1, 1, 1]
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.gpu_type: 'H100'"):
        cluster_from_nodes([{"gpu_type": "H100", "gpus": 1, "cpu_milli": 1, "memory_mib": 1}], TYPES)
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.gpu_type: required"):
        cluster_from_nodes([{"gpus": 1, "cpu_milli": 1, "memory_mib": 1}], TYPES)
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.disk: unknown key"):
        cluster_from_nodes([{"gpus": 0, "cpu_milli": 1, "memory_mib": 1, "disk": 3}], TYPES)
    with pytest.raises(ConfigError, match=r"cluster\.node_gpus\[1\]: -1"):
        ClusterState(TYPES, [0, 0], [1, -1], [1, 1], [1, 1])


# ------------------------------------------------------------- feasibility
def test_feasible_whole_fractional_cpu_and_type() -> None:
    c = small_cluster()
    assert c.feasible(Demand(num_gpu=4)).tolist() == [True, False, False]
    assert c.feasible(Demand(num_gpu=2)).tolist() == [True, True, False]
    assert c.feasible(Demand(num_gpu=1, gpu_milli=300)).tolist() == [True, True, False]
    assert c.feasible(Demand(num_gpu=1, gpu_type=1)).tolist() == [False, True, False]
    assert c.feasible(Demand(num_gpu=1, gpu_types=(0, 1))).tolist() == [True, True, False]
    assert c.feasible(Demand(cpu_milli=16000)).tolist() == [True, True, False]
    assert c.feasible(Demand(memory_mib=70000)).tolist() == [True, False, False]
    # Type constraints bind GPU tasks only.
    assert c.feasible(Demand(num_gpu=0, gpu_types=(1,))).tolist() == [True, True, True]


def test_whole_gpu_tasks_cannot_use_partly_used_gpus() -> None:
    c = small_cluster()
    c.allocate(1, Demand(num_gpu=1, gpu_milli=100))
    c.allocate(1, Demand(num_gpu=1, gpu_milli=100))  # best fit: same GPU again
    assert c.gpu_free_milli[1].tolist() == [800, 1000, -1, -1]
    assert c.feasible(Demand(num_gpu=2))[1] == np.False_
    assert c.feasible(Demand(num_gpu=1))[1] == np.True_
    assert c.feasible(Demand(num_gpu=1, gpu_milli=900))[1] == np.True_


# -------------------------------------------------------------- allocation
def test_allocate_whole_takes_lowest_free_gpus() -> None:
    c = small_cluster()
    c.allocate(0, Demand(num_gpu=1, gpu_milli=500))  # GPU 0 now partly used
    a = c.allocate(0, Demand(num_gpu=2, cpu_milli=1000, memory_mib=10))
    assert a == Allocation(0, (1, 2), 1000, 1000, 10, Demand(num_gpu=2, cpu_milli=1000, memory_mib=10))
    assert c.gpu_free_milli[0].tolist() == [500, 0, 0, 1000]
    assert c.cpu_free_milli[0] == 31000 and c.mem_free_mib[0] == 131072 - 10


def test_allocate_fractional_best_fit_with_lowest_index_tie_break() -> None:
    c = small_cluster()
    c.allocate(0, Demand(num_gpu=1, gpu_milli=600), gpus=(2,))
    c.allocate(0, Demand(num_gpu=1, gpu_milli=600), gpus=(1,))
    c.allocate(0, Demand(num_gpu=1, gpu_milli=300), gpus=(3,))
    # free: [1000, 400, 400, 700]; 350 fits GPUs 1, 2 (400) and 3 (700) and 0: best fit is GPU 1.
    assert c.allocate(0, Demand(num_gpu=1, gpu_milli=350)).gpus == (1,)
    # now [1000, 50, 400, 700]: 400 fits exactly on GPU 2.
    assert c.allocate(0, Demand(num_gpu=1, gpu_milli=400)).gpus == (2,)
    assert c.allocate(0, Demand(num_gpu=1, gpu_milli=800)).gpus == (0,)


def test_allocate_rejects_infeasible_and_bad_gpu_hints() -> None:
    c = small_cluster()
    with pytest.raises(ValueError, match="cannot take"):
        c.allocate(2, Demand(num_gpu=1))
    with pytest.raises(ValueError, match="out of range"):
        c.allocate(7, Demand())
    with pytest.raises(ValueError, match="distinct"):
        c.allocate(0, Demand(num_gpu=2), gpus=(1, 1))
    c.allocate(0, Demand(num_gpu=1, gpu_milli=500), gpus=(0,))
    with pytest.raises(ValueError, match="GPU 0"):
        c.allocate(0, Demand(num_gpu=1), gpus=(0,))
    with pytest.raises(ValueError, match="GPU 3"):
        c.allocate(1, Demand(num_gpu=1, gpu_milli=100), gpus=(3,))


def test_release_restores_and_detects_double_release() -> None:
    c = small_cluster()
    before = c.snapshot()
    a = c.allocate(1, Demand(num_gpu=1, gpu_milli=250, cpu_milli=2000, memory_mib=100))
    b = c.allocate(1, Demand(num_gpu=1, cpu_milli=1000))
    assert c.gpus_in_use() == 2 and c.nodes_in_use() == 1
    c.release(a)
    c.release(b)
    after = c.snapshot()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)
    assert c.gpus_in_use() == 0 and c.nodes_in_use() == 0
    with pytest.raises(ValueError):
        c.release(b)


def test_cpu_only_allocation_counts_node_in_use() -> None:
    c = small_cluster()
    a = c.allocate(2, Demand(cpu_milli=8000))
    assert a.gpus == () and a.milli == 0
    assert c.nodes_in_use() == 1 and c.gpus_in_use() == 0
    assert not c.feasible(Demand(cpu_milli=1))[2]


def test_copy_is_independent() -> None:
    c = small_cluster()
    d = c.copy()
    d.allocate(0, Demand(num_gpu=4, cpu_milli=100))
    assert c.gpu_full_free[0] == 4 and c.cpu_free_milli[0] == 32000
    assert d.gpu_full_free[0] == 0 and d.cpu_free_milli[0] == 31900


def test_model_cache_touch_and_ttl_eviction() -> None:
    c = small_cluster(n_models=2)
    c.touch_cache(0, 1, now_s=10.0)
    c.touch_cache(1, 1, now_s=50.0)
    assert c.evict_cache(now_s=80.0, ttl_s=60.0) == 1
    assert c.cached[:, 1].tolist() == [False, True, False]


# ----------------------------------------------------------- fragmentation
def test_fragmented_gpus_counts_free_shares_on_partly_used_gpus() -> None:
    c = small_cluster()
    c.allocate(0, Demand(num_gpu=1, gpu_milli=300))
    c.allocate(0, Demand(num_gpu=1, gpu_milli=700))  # fills GPU 0 exactly: not fragmented
    c.allocate(1, Demand(num_gpu=1, gpu_milli=250))
    c.allocate(0, Demand(num_gpu=2))
    assert c.fragmented_gpus() == pytest.approx(0.75)
    assert c.fragmented_gpu_milli() == pytest.approx(750.0)


def test_fgd_fragment_measure_by_hand() -> None:
    # Node 0: GPUs free [1000, 400, 200, 0] (A100); node 1: [1000, 1000] (T4).
    c = small_cluster()
    c.allocate(0, Demand(num_gpu=1, gpu_milli=600), gpus=(1,))
    c.allocate(0, Demand(num_gpu=1, gpu_milli=800), gpus=(2,))
    c.allocate(0, Demand(num_gpu=1), gpus=(3,))
    mix = [
        (Demand(num_gpu=1, gpu_milli=500), 0.5),  # node 0: 400 and 200 too small -> 600
        (Demand(num_gpu=1), 0.25),  # whole GPU: 400 + 200 partial -> 600
        (Demand(num_gpu=2), 0.125),  # only one idle GPU on node 0 -> all 1600 free
        (Demand(cpu_milli=1000), 0.125),  # CPU-only: every free GPU is fragment -> 1600
    ]
    f = c.node_fragment_milli(mix)
    assert f[0] == pytest.approx(0.5 * 600 + 0.25 * 600 + 0.125 * 1600 + 0.125 * 1600)
    # Node 1 fits all GPU types: only the CPU-only share of its 2000 free milli counts.
    assert f[1] == pytest.approx(0.125 * 2000)
    assert f[2] == 0.0
    assert c.fragmented_gpu_milli(mix) == pytest.approx(f.sum())


def test_fgd_fragment_measure_type_and_cpu_constraints() -> None:
    c = small_cluster()
    t4_only = [(Demand(num_gpu=1, gpu_type=1), 1.0)]
    f = c.node_fragment_milli(t4_only)
    assert f.tolist() == [4000.0, 0.0, 0.0]  # the A100 node is all fragment for a T4-only task
    big_cpu = [(Demand(num_gpu=1, cpu_milli=20000), 1.0)]
    assert c.node_fragment_milli(big_cpu).tolist() == [0.0, 2000.0, 0.0]


def test_task_mix_normalises_and_merges() -> None:
    mix = TaskMix([(Demand(num_gpu=1, model=1), 1), (Demand(num_gpu=1, model=2), 1), (Demand(num_gpu=2), 2)])
    assert len(mix.types) == 2
    np.testing.assert_allclose(mix.popularity, [0.5, 0.5])
    with pytest.raises(ConfigError, match=r"demand_dist\[0\]\.popularity"):
        TaskMix([(Demand(), -1)])


# ------------------------------------------------------------- properties
def reference_feasible(c: ClusterState, d: Demand) -> np.ndarray:
    """Per-node loop over the definition, to check the vectorised version against."""
    out = []
    for n in range(c.n_nodes):
        ok = c.cpu_free_milli[n] >= d.cpu_milli and c.mem_free_mib[n] >= d.memory_mib
        if d.num_gpu > 0:
            ok = ok and (not d.gpu_types or c.node_gpu_type[n] in d.gpu_types)
            row = c.gpu_free_milli[n, : c.node_gpus[n]]
            if d.gpu_milli < 1000:
                ok = ok and bool((row >= d.gpu_milli).any())
            else:
                ok = ok and int((row == 1000).sum()) >= d.num_gpu
        out.append(ok)
    return np.array(out, dtype=bool)


demands = st.one_of(
    st.builds(Demand, num_gpu=st.just(1), gpu_milli=st.integers(1, 999), cpu_milli=st.integers(0, 9000)),
    st.builds(Demand, num_gpu=st.integers(1, 4), gpu_types=st.sets(st.integers(0, 1), max_size=2)),
    st.builds(Demand, num_gpu=st.just(0), cpu_milli=st.integers(0, 9000), memory_mib=st.integers(0, 40000)),
)


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.tuples(demands, st.integers(0, 2), st.booleans()), max_size=40))
def test_allocate_release_invariants(steps: list[tuple[Demand, int, bool]]) -> None:
    c = small_cluster()
    live: list[Allocation] = []
    for d, node, release_one in steps:
        np.testing.assert_array_equal(c.feasible(d), reference_feasible(c, d))
        if c.feasible(d)[node]:
            live.append(c.allocate(node, d))
        else:
            with pytest.raises(ValueError):
                c.allocate(node, d)
        if release_one and live:
            c.release(live.pop(0))
        g = c.gpu_free_milli
        present = np.arange(g.shape[1])[None, :] < c.node_gpus[:, None]
        assert ((g >= 0) & (g <= 1000))[present].all() and (g[~present] == -1).all()
        assert (c.cpu_free_milli >= 0).all() and (c.mem_free_mib >= 0).all()
        assert c.gpu_free_total.tolist() == np.where(present, g, 0).sum(axis=1).tolist()
        assert c.nodes_in_use() == len({a.node for a in live})
    for a in live:
        c.release(a)
    assert c.gpu_free_milli.tolist() == small_cluster().gpu_free_milli.tolist()
    assert (c.cpu_free_milli == c.node_cpu_milli).all() and c.nodes_in_use() == 0
