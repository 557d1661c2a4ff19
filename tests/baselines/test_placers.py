"""Tests for baselines.placement: each placer's choice by hand, feasibility always, and packing quality."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baselines.placement import (
    PLACERS,
    BestFit,
    FragmentationGradientDescent,
    Placer,
    make_placer,
)
from envs.sim.cluster import ClusterState, Demand, TaskMix, cluster_from_nodes
from envs.sim.errors import ConfigError
from envs.sim.jobtrace import cluster_from_trace, synthetic_job_trace

TYPES = ("A100", "T4")
ALL_KINDS = sorted(PLACERS)


def node(gpus: int, gpu_type: str | None = "A100", cpu: int = 64000, mem: int = 262144) -> dict:
    return {"gpu_type": gpu_type if gpus else None, "gpus": gpus, "cpu_milli": cpu, "memory_mib": mem}


def choose(kind: str | dict, state: ClusterState, demand: Demand, seed: int = 0) -> int:
    return make_placer(kind).select(state, demand, np.random.default_rng(seed))


def fill_until_failure(placer: Placer, state: ClusterState, demands: list[Demand]) -> int:
    """How many demands in a row the placer places before the first one it cannot."""
    rng = np.random.default_rng(0)
    for i, d in enumerate(demands):
        if placer.place(state, d, rng) is None:
            return i
    return len(demands)


# ------------------------------------------------------------- by hand
@pytest.fixture
def mixed_state() -> ClusterState:
    """Node 0: 4 A100 with 2 taken; node 1: 2 T4, GPU 0 half used; node 2: CPU-only; node 3: 4 idle A100."""
    c = cluster_from_nodes([node(4), node(2, "T4"), node(0), node(4)], TYPES)
    c.allocate(0, Demand(num_gpu=2))
    c.allocate(1, Demand(num_gpu=1, gpu_milli=500))
    return c


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("first_fit", 0),
        ("best_fit", 1),  # free GPU after: node 0 1000, node 1 500, node 3 3000
        ("worst_fit", 3),
        ("spread", 3),
        ("packing", 1),  # busy nodes 0 and 1; best fit among them
        ("cache_aware", 1),  # no model: best fit
        ("fgd", 0),  # only whole-GPU tasks seen: no placement adds fragment, ties go to node 0
    ],
)
def test_whole_gpu_choice(mixed_state: ClusterState, kind: str, expected: int) -> None:
    assert choose(kind, mixed_state, Demand(num_gpu=1)) == expected


def test_packing_prefers_busy_nodes_then_lowest_index() -> None:
    c = cluster_from_nodes([node(4), node(4), node(8)], TYPES)
    assert choose("packing", c, Demand(num_gpu=4)) == 0
    c.allocate(2, Demand(num_gpu=1))
    assert choose("packing", c, Demand(num_gpu=4)) == 2  # best fit would say node 0
    assert choose("best_fit", c, Demand(num_gpu=4)) == 0


def test_cpu_only_best_fit_goes_to_cpu_node(mixed_state: ClusterState) -> None:
    d = Demand(cpu_milli=1000)
    assert choose("best_fit", mixed_state, d) == 2
    assert choose("worst_fit", mixed_state, d) == 3
    assert choose("first_fit", mixed_state, d) == 0


def test_random_is_uniform_over_feasible_nodes(mixed_state: ClusterState) -> None:
    rng = np.random.default_rng(7)
    placer = make_placer("random")
    picks = Counter(placer.select(mixed_state, Demand(num_gpu=1), rng) for _ in range(3000))
    assert set(picks) == {0, 1, 3}
    assert all(900 < n < 1100 for n in picks.values())


def test_cache_aware_prefers_cached_feasible_nodes() -> None:
    c = cluster_from_nodes([node(4), node(4), node(4)], TYPES, n_models=2)
    c.touch_cache(2, 0, now_s=0.0)
    assert choose("cache_aware", c, Demand(num_gpu=1, model=0)) == 2
    assert choose("cache_aware", c, Demand(num_gpu=1, model=1)) == 0
    c.allocate(2, Demand(num_gpu=4))
    assert choose("cache_aware", c, Demand(num_gpu=1, model=0)) == 0  # cached node is full


@pytest.fixture
def k8s_state() -> ClusterState:
    """Two nodes of 4 GPUs, 10 cores, 10000 MiB; node 0 runs (1 GPU, 6 cores), node 1 (3 GPUs, 2 cores)."""
    c = cluster_from_nodes([node(4, cpu=10000, mem=10000), node(4, cpu=10000, mem=10000)], TYPES)
    c.allocate(0, Demand(num_gpu=1, cpu_milli=6000, memory_mib=1000))
    c.allocate(1, Demand(num_gpu=3, cpu_milli=2000, memory_mib=1000))
    return c


def test_kubernetes_scores_by_hand(k8s_state: ClusterState) -> None:
    d = Demand(num_gpu=1, cpu_milli=1000, memory_mib=1000)
    # Fractions after placing: node 0 (cpu .7, mem .2, gpu .5), node 1 (.3, .2, 1.0).
    # LeastAllocated: node 0 mean(30, 80, 50) = 53.3 > node 1 mean(70, 80, 0) = 50.
    assert choose("least_allocated", k8s_state, d) == 0
    # MostAllocated: node 0 46.7 < node 1 50.
    assert choose("most_allocated", k8s_state, d) == 1
    # BalancedAllocation: std node 0 0.205 < node 1 0.356.
    assert choose("balanced_allocation", k8s_state, d) == 0
    # Weighting only the GPU turns LeastAllocated into GPU spreading: node 0 (50) > node 1 (0).
    assert choose({"kind": "least_allocated", "resources": {"gpu": 1}}, k8s_state, d) == 0
    assert choose({"kind": "most_allocated", "resources": {"cpu": 1}}, k8s_state, d) == 0


def test_kubernetes_bypasses_gpu_for_cpu_only_pods(k8s_state: ClusterState) -> None:
    # cpu/mem after: node 0 (.7, .2) -> 55, node 1 (.3, .2) -> 75. Counting the GPU (node 0 25 %
    # used, node 1 75 %) would flip the choice to node 0 (61.7 vs 58.3).
    assert choose("least_allocated", k8s_state, Demand(cpu_milli=1000, memory_mib=1000)) == 1


def test_kubernetes_random_tie_break_draws_among_tied_nodes() -> None:
    c = cluster_from_nodes([node(4), node(4), node(4)], TYPES)
    placer = make_placer({"kind": "least_allocated", "tie_break": "random"})
    rng = np.random.default_rng(3)
    assert {placer.select(c, Demand(num_gpu=1), rng) for _ in range(60)} == {0, 1, 2}
    assert {choose("least_allocated", c, Demand(num_gpu=1), seed=s) for s in range(10)} == {0}


def test_fgd_differs_from_best_fit_where_best_fit_strands_a_node() -> None:
    # Node 0 has 2 idle GPUs, node 1 has 3. Best fit puts the share on node 0, after which node 0
    # cannot host the popular 2-GPU task: FGD puts it on node 1, which still can.
    c = cluster_from_nodes([node(2), node(3)], TYPES)
    workload = [{"num_gpu": 2, "popularity": 1}, {"num_gpu": 1, "gpu_milli": 500, "popularity": 1}]
    share = Demand(num_gpu=1, gpu_milli=500)
    assert choose("best_fit", c, share) == 0
    assert choose({"kind": "fgd", "workload": workload}, c, share) == 1


def test_fgd_gpu_choice_within_node_is_used_by_place() -> None:
    c = cluster_from_nodes([node(2)], TYPES)
    c.allocate(0, Demand(num_gpu=1, gpu_milli=300), gpus=(0,))  # GPU 0 has 700 free
    # With only 600-milli tasks expected, 200 on GPU 0 leaves 500 there, too little for them;
    # on GPU 1 it leaves 800, still usable: FGD picks GPU 1, best fit within the node GPU 0.
    fgd = make_placer({"kind": "fgd", "workload": [{"num_gpu": 1, "gpu_milli": 600, "popularity": 1}]})
    a = fgd.place(c, Demand(num_gpu=1, gpu_milli=200), np.random.default_rng(0))
    assert a is not None and a.gpus == (1,)
    assert c.default_gpus(0, Demand(num_gpu=1, gpu_milli=200)) == (0,)


def test_fgd_matches_brute_force_on_a_trace() -> None:
    trace = synthetic_job_trace(np.random.default_rng(5), n_nodes=6, n_jobs=120, gpu_spec_share=0.3)
    c = cluster_from_trace(trace)
    fgd = FragmentationGradientDescent()
    rng = np.random.default_rng(0)
    for d in trace.demands():
        chosen = fgd.select(c, d, rng)
        if chosen < 0:
            assert not c.feasible(d).any()
            continue
        mix = fgd._mix
        before = c.node_fragment_milli(mix)
        deltas = []
        for n in np.flatnonzero(c.feasible(d)):
            options = (
                [None]
                if not d.is_fractional
                else [(g,) for g in range(c.node_gpus[n]) if c.gpu_free_milli[n, g] >= d.gpu_milli]
            )
            for gpus in options:
                trial = c.copy()
                trial.allocate(n, d, gpus)
                deltas.append(trial.node_fragment_milli(mix)[n] - before[n])
        trial = c.copy()
        trial.allocate(chosen, d, fgd.gpu_choice(c, d, chosen))
        assert trial.node_fragment_milli(mix)[chosen] - before[chosen] == pytest.approx(min(deltas), abs=1e-6)
        c.allocate(chosen, d, fgd.gpu_choice(c, d, chosen))


def test_fgd_counts_demands_since_reset() -> None:
    c = cluster_from_nodes([node(4)], TYPES)
    fgd = FragmentationGradientDescent()
    rng = np.random.default_rng(0)
    for d in (Demand(num_gpu=1), Demand(num_gpu=1, model=3), Demand(num_gpu=2)):
        fgd.select(c, d, rng)
    assert fgd._mix.types == (Demand(num_gpu=1), Demand(num_gpu=2))
    np.testing.assert_allclose(fgd._mix.popularity, [2 / 3, 1 / 3])
    fgd.reset()
    fgd.select(c, Demand(num_gpu=2), rng)
    assert fgd._mix.types == (Demand(num_gpu=2),)


# ---------------------------------------------------------- constraints
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_gpu_type_constraint_respected(kind: str) -> None:
    c = cluster_from_nodes([node(8), node(4, "T4"), node(8), node(2, "T4")], TYPES)
    for d in (Demand(num_gpu=1, gpu_type=1), Demand(num_gpu=1, gpu_milli=300, gpu_types=(1,))):
        assert choose(kind, c, d) in (1, 3)
    assert choose(kind, c, Demand(num_gpu=3, gpu_type=1)) == 1
    assert choose(kind, c, Demand(num_gpu=8, gpu_type=1)) == -1


@st.composite
def cluster_and_demands(draw):
    n = draw(st.integers(1, 6))
    nodes = [
        node(
            g := draw(st.integers(0, 4)),
            draw(st.sampled_from(TYPES)),
            cpu=draw(st.integers(0, 8)) * 1000,
            mem=draw(st.integers(0, 4)) * 1000,
        )
        for _ in range(n)
    ]
    del g
    demand = st.one_of(
        st.builds(Demand, num_gpu=st.just(1), gpu_milli=st.integers(1, 999), cpu_milli=st.integers(0, 3000)),
        st.builds(
            Demand,
            num_gpu=st.integers(1, 4),
            gpu_types=st.sets(st.integers(0, 1), max_size=2),
            memory_mib=st.integers(0, 3000),
        ),
        st.builds(
            Demand, num_gpu=st.just(0), cpu_milli=st.integers(0, 4000), memory_mib=st.integers(0, 3000)
        ),
    )
    return nodes, draw(st.lists(demand, min_size=1, max_size=25))


@settings(max_examples=100, deadline=None)
@given(case=cluster_and_demands(), seed=st.integers(0, 2**16))
def test_every_placer_returns_a_feasible_node_or_minus_one(case, seed: int) -> None:
    nodes, demands = case
    for kind in ALL_KINDS:
        c = cluster_from_nodes(nodes, TYPES, n_models=2)
        c.touch_cache(0, 0, now_s=0.0)
        placer = make_placer(kind)
        rng = np.random.default_rng(seed)
        for i, d in enumerate(demands):
            if i % 3 == 0:
                d = Demand(d.num_gpu, d.gpu_milli, d.gpu_type, d.cpu_milli, d.memory_mib, 0, d.gpu_types)
            ok = c.feasible(d)
            chosen = placer.select(c, d, rng)
            if not ok.any():
                assert chosen == -1, kind
                continue
            assert 0 <= chosen < c.n_nodes and ok[chosen], kind
            c.allocate(chosen, d, placer.gpu_choice(c, d, chosen))


# ------------------------------------------------------ packing quality
def place_all(kind: str | dict, state: ClusterState, demands: list[Demand]) -> int:
    placer = make_placer(kind)
    rng = np.random.default_rng(0)
    return sum(placer.place(state, d, rng) is not None for d in demands)


def test_best_fit_leaves_fewer_fragmented_gpus_than_spread() -> None:
    shares = [300, 500, 200, 600, 400, 250, 700, 100, 350, 450]
    demands = [Demand(num_gpu=1, gpu_milli=m) for m in shares] + [Demand(num_gpu=1)] * 3
    results = {}
    for kind in ("best_fit", "spread"):
        c = cluster_from_nodes([node(4)] * 4, TYPES)
        assert place_all(kind, c, demands) == len(demands)
        results[kind] = c.fragmented_gpus()
    # Shares sum to 3.85 GPUs. Best fit packs them onto 4 GPUs of node 0 (0.15 GPU left on the
    # last); spread opens a GPU on every node and leaves 2.15 GPUs of shares stranded.
    assert results == pytest.approx({"best_fit": 0.15, "spread": 2.15})


def test_fgd_fragments_less_than_best_fit_on_trace_prefixes() -> None:
    """FGD with the workload known in advance (as in Weng et al.) and every task type kept, vs best
    fit, on the first 150 jobs of six synthetic Alibaba-like traces on 32 nodes (arrivals only,
    before saturation), measured with that same workload."""
    for seed in range(6):
        trace = synthetic_job_trace(np.random.default_rng(seed), n_nodes=32, n_jobs=150)
        demands = trace.demands()
        counts = Counter(d.task_type() for d in demands)
        mix = TaskMix(list(counts.items()))
        workload = [
            {
                "num_gpu": d.num_gpu,
                "gpu_milli": d.gpu_milli,
                "gpu_types": d.gpu_types,
                "cpu_milli": d.cpu_milli,
                "memory_mib": d.memory_mib,
                "popularity": n,
            }
            for d, n in counts.items()
        ]
        frag = {}
        fgd = {"kind": "fgd", "workload": workload, "popularity_threshold": 1.0}
        for name, kind in (("best_fit", "best_fit"), ("fgd", fgd)):
            c = cluster_from_trace(trace)
            place_all(kind, c, demands)
            frag[name] = c.fragmented_gpu_milli(mix)
        assert frag["fgd"] <= frag["best_fit"], (seed, frag)


def test_long_alibaba_like_sequence_until_first_failure() -> None:
    """Arrivals only, 64 nodes, 2000 jobs, no GPU-type constraints: jobs placed before the first
    failure. FGD is far ahead of spread; it does not beat first fit on this workload (see the
    placement docs), and here it stays within 10 % of it."""
    placed: dict[str, list[int]] = {k: [] for k in ("first_fit", "spread", "fgd")}
    for seed in range(3):
        trace = synthetic_job_trace(np.random.default_rng(seed), n_nodes=64, n_jobs=2000, gpu_spec_share=0.0)
        demands = trace.demands()
        for kind in placed:
            placed[kind].append(fill_until_failure(make_placer(kind), cluster_from_trace(trace), demands))
    # At the time of writing: first_fit [321, 387, 386], spread [99, 68, 66], fgd [318, 383, 386].
    for i in range(3):
        assert placed["fgd"][i] > 3 * placed["spread"][i]
        assert placed["fgd"][i] >= 0.9 * placed["first_fit"][i]


# --------------------------------------------------------------- config
def test_make_placer_accepts_names_mappings_and_instances() -> None:
    assert isinstance(make_placer("best_fit"), BestFit)
    assert make_placer("spread").name == "worst_fit"
    p = BestFit()
    assert make_placer(p) is p
    k8s = make_placer({"kind": "most_allocated", "resources": {"gpu": 2, "cpu": 1}, "tie_break": "random"})
    assert k8s.resources == {"cpu": 1.0, "gpu": 2.0} and k8s.tie_break == "random"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("best_fitt", r"placement: 'best_fitt' must be one of"),
        ({"kind": "nope"}, r"placement\.kind: 'nope' must be one of"),
        ({"resources": {}}, r"placement\.kind: required key is missing"),
        ({"kind": "best_fit", "alpha": 1}, r"placement\.alpha: unknown key"),
        ({"kind": "least_allocated", "resources": {"disk": 1}}, r"placement\.resources\.disk: unknown key"),
        ({"kind": "least_allocated", "resources": {"cpu": -1}}, r"placement\.resources\.cpu: -1"),
        ({"kind": "least_allocated", "tie_break": "first"}, r"placement\.tie_break: 'first'"),
        ({"kind": "fgd", "workload": [{"num_gpu": 1}]}, r"placement\.workload\[0\]\.popularity: required"),
        (
            {"kind": "fgd", "workload": [{"num_gpu": 2, "gpu_milli": 10, "popularity": 1}]},
            r"placement\.workload\[0\]: demand\.gpu_milli: 10",
        ),
        (3, r"placement: 3 must be a placer name"),
    ],
)
def test_make_placer_errors_name_path_and_value(spec, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_placer(spec)
