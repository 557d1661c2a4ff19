"""Disaggregated prefill and decode (envs.sim.paged): pools, handoff, KV transfers, conservation."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim import Simulator, load_scenario, run_scenario
from envs.sim import layout as L
from envs.sim.errors import ConfigError

MODEL = "llama-3-8b"


def scenario(
    prefill=None, decode=None, *, rate=6.0, prompt=None, output=128, horizon=120.0, nodes=None, **extra
):
    """One 8B model on one node of 4 A100s: disaggregated (``prefill``/``decode`` pool mappings) or not."""
    m = {"name": MODEL}
    if prefill is not None:
        m.update(serving="disaggregated", prefill=prefill, decode=decode)
    else:
        m.update(replicas=4, max_replicas=4)
    sizes = {"kind": "lognormal"} if prompt is None else {"kind": "fixed", "prompt": prompt, "output": output}
    return {
        "name": "pd",
        "horizon_s": horizon,
        "control_interval_s": 15,
        "nodes": nodes or [{"gpu": "a100-80gb", "count": 1, "gpus_per_node": 4, "cached_models": [MODEL]}],
        "models": [m],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": rate},
            "sizes": sizes,
            "classes": [{"name": "chat", "slo": {"ttft_s": 2.0, "tpot_s": 0.1}, "timeout_s": 600}],
        },
        **extra,
    }


TWO_TWO = ({"replicas": 2, "max_replicas": 4}, {"replicas": 2, "max_replicas": 4})


# ----------------------------------------------------------------------------- config


def test_a_disaggregated_model_is_two_pools():
    sc = load_scenario(
        scenario({"replicas": 1, "max_batched_tokens": 8192}, {"replicas": 3, "max_batch": 512})
    )
    assert [m.name for m in sc.models] == [f"{MODEL}:prefill", f"{MODEL}:decode"]
    assert [m.role for m in sc.models] == ["prefill", "decode"]
    assert sc.served_models == (MODEL,)
    assert sc.disaggregated
    assert sc.model_index(MODEL) == 0 and sc.pools_of(MODEL) == [0, 1] and sc.decode_pool(0) == 1
    pre, dec = sc.models
    assert (pre.replicas, pre.max_batched_tokens, dec.replicas, dec.max_batch) == (1, 8192, 3, 512)
    assert pre.prefix_caching and not dec.prefix_caching  # the decode pool receives its KV, caches none
    assert sc.decode_routing is not None and sc.decode_routing.kind == "least_connections"
    assert not load_scenario("default").disaggregated


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"models": [{"name": MODEL, "serving": "split"}]}, "models[0].serving"),
        ({"models": [{"name": MODEL, "serving": "disaggregated", "replicas": 2}]}, "models[0].replicas"),
        ({"models": [{"name": MODEL, "serving": "disaggregated", "prefill": {}}]}, "models[0].decode"),
        ({"models": [{"name": MODEL, "prefill": {"replicas": 1}}]}, "models[0].prefill"),
        (
            {
                "models": [
                    {
                        "name": MODEL,
                        "serving": "disaggregated",
                        "prefill": {"prefix_caching": True},
                        "decode": {},
                    }
                ]
            },
            "models[0].prefill.prefix_caching",
        ),
        (
            {
                "models": [
                    {
                        "name": MODEL,
                        "serving": "disaggregated",
                        "kv_policy": "reserve",
                        "prefill": {},
                        "decode": {},
                    }
                ]
            },
            "models[0].kv_policy",
        ),
        (
            {
                "models": [
                    {"name": MODEL, "serving": "disaggregated", "prefill": {"replicas": 9}, "decode": {}}
                ]
            },
            "models[0].prefill.replicas",
        ),
        ({"decode_routing": "round_robin", "models": [{"name": MODEL}]}, "decode_routing"),
        ({"decode_routing": "external"}, "decode_routing"),
        ({"decode_routing": "no_such_router"}, "decode_routing"),
        (
            {"nodes": [{"gpu": "a100-80gb", "count": 1, "gpus_per_node": 4, "network_gbps": 0}]},
            "nodes[0].network_gbps",
        ),
    ],
)
def test_bad_disaggregated_configs_name_the_key(change, key):
    raw = {**scenario(*TWO_TWO), **change}
    with pytest.raises(ConfigError) as err:
        load_scenario(raw)
    assert str(err.value).startswith(key), str(err.value)


# ----------------------------------------------------------------------------- conservation


def _stage_counts(sim: Simulator) -> dict[str, int]:
    st = sim.state
    n = int(st.gi[L.I_NEXT_ARR])
    done = st.log_done[: st.gi[L.I_NDONE]]
    drops = st.log_drop[: st.gi[L.I_NDROP]]
    dropped_by = np.bincount(st.ri[drops, L.R_MODEL], minlength=2)
    return {
        "arrived": n,
        "done": len(done),
        "dropped0": int(dropped_by[0]),
        "dropped1": int(dropped_by[1]),
        "handout": int(st.mi[0, L.M_HANDOUT]),
        "handin": int(st.mi[1, L.M_HANDIN]),
        "inflight0": int(st.mi[0, L.M_INFLIGHT]),
        "inflight1": int(st.mi[1, L.M_INFLIGHT]),
        "transfer": int(np.count_nonzero(st.ri[:n, L.R_STATE] == L.REQ_TRANSFER)),
        "xin": int(st.pi[: st.n_replicas, L.Q_XIN].sum()),
        "done_unique": len(np.unique(done)),
        "done_model": int(np.count_nonzero(st.ri[done, L.R_MODEL] == 1)),
    }


@pytest.mark.parametrize("rate", [4.0, 40.0])  # light load, and overload (queues, preemptions, drops)
def test_nothing_is_lost_across_the_two_stages(rate):
    sim = Simulator(scenario(*TWO_TWO, rate=rate, horizon=90.0), seed=3)
    for t in np.arange(7.5, 90.0 + 1e-9, 7.5):
        sim.advance(float(t))
        c = _stage_counts(sim)
        assert c["arrived"] == c["done"] + c["dropped0"] + c["dropped1"] + sim.in_system()
        assert c["arrived"] == c["handout"] + c["dropped0"] + c["inflight0"]  # prefill stage
        assert c["handin"] == c["handout"] == c["done"] + c["dropped1"] + c["inflight1"]  # decode stage
        assert c["transfer"] == c["xin"]
        assert c["done_unique"] == c["done"] and c["done_model"] == c["done"]  # all finish at decode, once
    assert c["handout"] > 0 and c["done"] > 0
    if rate > 10:
        assert sim.episode_kpis()["requests_in_system"] > 0  # overloaded: the stages hold work


def test_episode_kpis_add_up_over_intervals_and_repeat_with_the_seed():
    sc = scenario(*TWO_TWO, rate=8.0, horizon=60.0)
    sim = Simulator(sc, seed=1)
    parts = []
    for t in (15.0, 30.0, 45.0, 60.0):
        sim.advance(t)
        parts.append(sim.interval_kpis())
    ep = sim.episode_kpis()
    for key in ("requests_handed_off", "kv_transfers", "kv_transfer_gb"):
        assert sum(p[key] for p in parts) == pytest.approx(ep[key], rel=1e-12), key
    assert ep["kv_transfers"] > 0 and 0 < ep["kv_link_utilization"] < 1
    assert run_scenario(sc, seed=1) == run_scenario(sc, seed=1)


# ----------------------------------------------------------------------------- latency


def _ttfts(raw, seed=0):
    sim = Simulator(raw, seed=seed)
    sim.advance(raw["horizon_s"])
    st = sim.state
    done = np.sort(st.log_done[: st.gi[L.I_NDONE]])
    return done, st.rf[done, L.R_FIRST] - st.rf[done, L.R_ARR]


@pytest.mark.parametrize("links", [{}, {"nvlink_gbps": 1e5, "nvlink_latency_s": 0.0}])
def test_ttft_is_the_prefill_pools_own(links):
    """The first token comes from the prefill replica: TTFT is what the prefill pool alone gives (the same
    two replicas serving every request for one token), whatever the link."""
    node = [{"gpu": "a100-80gb", "count": 1, "gpus_per_node": 4, "cached_models": [MODEL], **links}]
    pd = scenario(
        {"replicas": 2}, {"replicas": 2}, rate=10.0, prompt=1024, output=64, horizon=60.0, nodes=node
    )
    alone = scenario(rate=10.0, prompt=1024, output=1, horizon=60.0, nodes=node)
    alone["models"] = [{"name": MODEL, "replicas": 2, "max_replicas": 2}]
    ids_pd, ttft_pd = _ttfts(pd)
    ids_alone, ttft_alone = _ttfts(alone)
    common = np.intersect1d(ids_pd, ids_alone)
    assert len(common) > 400
    np.testing.assert_array_equal(ttft_pd[np.isin(ids_pd, common)], ttft_alone[np.isin(ids_alone, common)])


def test_a_lone_transfer_takes_bytes_over_bandwidth_plus_latency():
    """One request at a time (1 req / 10 s): the cache's wait is exactly its transfer, within a node
    (NVLink, 300 GB/s per A100) and across nodes (a decode pool on another node pool's H100s: the
    A100 side's 50 Gb/s network share is the bottleneck)."""
    kv = 131072  # llama-3-8b: 2 x 32 layers x 8 KV heads x 128 x 2 bytes per token
    same = scenario({"replicas": 1}, {"replicas": 1}, rate=0.1, prompt=2000, output=8, horizon=100.0)
    cross = scenario(
        {"replicas": 1, "gpu_types": ["a100-80gb"]},
        {"replicas": 1, "gpu_types": ["h100-sxm-80gb"]},
        rate=0.1,
        prompt=2000,
        output=8,
        horizon=100.0,
        nodes=[
            {"gpu": "a100-80gb", "count": 1, "gpus_per_node": 1, "cached_models": [MODEL]},
            {"gpu": "h100-sxm-80gb", "count": 1, "gpus_per_node": 1, "cached_models": [MODEL]},
        ],
    )
    for raw, seconds in ((same, 2000 * kv / 300e9 + 5e-6), (cross, 2000 * kv / (50e9 / 8) + 2e-5)):
        k = run_scenario(raw, seed=0)
        assert k["kv_transfers"] >= 5
        assert k["kv_transfer_mean_s"] == pytest.approx(seconds, rel=1e-9)


def test_disaggregation_removes_prefill_interference_from_decode():
    """Same 4 GPUs (4 replicas, or 2 prefill + 2 decode), the same requests with short or long prompts.
    Short: both give about the same time per output token. Long: prefill chunks share the aggregated
    replicas' iterations and slow every decode step; the decode pool's steps only read the longer
    contexts' KV (DistServe, OSDI 2024, Sec. 2.2: prefill-decode interference)."""

    def tpot(split, prompt):
        raw = scenario(*(TWO_TWO if split else ()), rate=5.0, prompt=prompt, output=256, horizon=120.0)
        return run_scenario(raw, seed=0)["tpot_mean_s"]

    short = tpot(False, 256) / tpot(True, 256)
    long = tpot(False, 4096) / tpot(True, 4096)
    print(f"TPOT aggregated / disaggregated: short prompts {short:.3f}, long prompts {long:.3f}")
    assert 0.9 < short < 1.1
    assert long > 1.3


def _random_scenario(seed: int) -> dict:
    """A random disaggregated setting that stresses the handoff: small batches and KV caches (queues,
    preemptions, rejections), prefix-cached sessions or lognormal sizes, one or two node pools."""
    rng = np.random.default_rng(seed)
    pool = lambda: {  # noqa: E731
        "replicas": int(rng.integers(1, 3)),
        "max_replicas": 3,
        "max_batch": int(rng.choice([4, 16, 64])),
        "kv_memory_fraction": float(rng.choice([0.22, 0.3, 0.9])),
        "chunked_prefill": bool(rng.random() < 0.7),
    }
    two_nodes = bool(rng.random() < 0.5)
    nodes = [
        {"gpu": "a100-80gb", "count": 2 if two_nodes else 1, "gpus_per_node": 3, "cached_models": [MODEL]}
    ]
    raw = scenario(pool(), pool(), rate=float(rng.uniform(2, 40)), horizon=40.0, nodes=nodes)
    if rng.random() < 0.5:
        raw["workload"]["arrival"] = {"kind": "sessions", "session_rate_per_s": float(rng.uniform(0.5, 4)),
                                      "think_time_s": 5.0, "turns_mean": 3}  # fmt: skip
        raw["workload"]["sizes"] = {"kind": "lognormal", "prompt_mean": 300, "prompt_p99": 3000}
    raw["decode_routing"] = str(rng.choice(["least_connections", "round_robin", "kv_aware", "power_of_two"]))
    raw["routing"] = str(rng.choice(["least_connections", "prefix_aware", "round_robin"]))
    return raw


@pytest.mark.parametrize("seed", range(8))
def test_random_settings_keep_every_request_and_block(seed):
    """At every 2.5 s: conservation over and within the stages; every decode replica's private blocks
    are exactly those of its requests (running, in transfer, or waiting with their cache), every
    prefill replica's include those it holds for transfers; links and lists agree."""
    raw = _random_scenario(seed)
    sim = Simulator(raw, seed=seed)
    st = sim.state
    for t in np.arange(2.5, 40.0 + 1e-9, 2.5):
        sim.advance(float(t))
        c = _stage_counts(sim)
        assert c["arrived"] == c["done"] + c["dropped0"] + c["dropped1"] + sim.in_system()
        assert c["arrived"] == c["handout"] + c["dropped0"] + c["inflight0"]
        assert c["handout"] == c["done"] + c["dropped1"] + c["inflight1"]
        assert c["transfer"] == c["xin"]
        n = c["arrived"]
        ri = st.ri[:n]
        live = (
            (ri[:, L.R_STATE] == L.REQ_RUNNING)
            | (ri[:, L.R_STATE] == L.REQ_TRANSFER)
            | ((ri[:, L.R_STATE] == L.REQ_QUEUED) & (ri[:, L.R_BLOCKS] > 0))
        )
        for r in range(st.n_replicas):
            pi = st.pi[r]
            if pi[L.Q_STATE] == L.REP_RELEASED:
                assert pi[L.Q_BLKPRIV] == 0 or pi[L.Q_ROLE] == L.ROLE_PREFILL
                continue
            own = int(ri[live & (ri[:, L.R_REPLICA] == r), L.R_BLOCKS].sum())
            held = int(ri[ri[:, L.R_KVSRC] == r + 1, L.R_PBLOCKS].sum())
            assert pi[L.Q_BLKPRIV] == own + held, (r, pi[L.Q_BLKPRIV], own, held)
            assert pi[L.Q_XOUT] == np.count_nonzero(ri[:, L.R_KVSRC] == r + 1)
            assert pi[L.Q_XIN] == np.count_nonzero(
                (ri[:, L.R_STATE] == L.REQ_TRANSFER) & (ri[:, L.R_REPLICA] == r)
            )
            assert 0 <= pi[L.Q_BLKPRIV] <= pi[L.Q_BLKCAP]
    k = run_scenario(raw, seed=seed)
    assert k["requests_arrived"] == k["requests_completed"] + k["requests_dropped"] + k["requests_in_system"]


def test_views_name_each_pool_and_its_transfers():
    sim = Simulator(scenario(*TWO_TWO, rate=20.0, prompt=4096, output=32, horizon=15.0), seed=0)
    seen_in = seen_out = 0
    for t in np.arange(0.05, 10.0, 0.05):
        sim.advance(float(t))
        views = sim.replica_views()
        seen_in += sum(v.kv_transfers_in for v in views)
        seen_out += sum(v.kv_transfers_out for v in views if v.role == "prefill")
        assert all(v.kv_transfers_in == 0 for v in views if v.role == "prefill")
    assert seen_in > 0 and seen_out > 0
    assert sorted({v.role for v in sim.replica_views()}) == ["decode", "prefill"]
    assert [m.role for m in sim.model_loads()] == ["prefill", "decode"]
    table = sim.requests()
    assert "transfer" in table.state_names


def test_load_aware_decode_routers_count_caches_in_transfer():
    """A decode replica's requests whose KV is still on the wire are its load: with them left out,
    least_connections sent every new request to the replica whose caches were all in transit, and on
    a slow cross-node link (prefill on H100s, decode on A100s of another node, 50 Gb/s per A100) the
    transfers queued for seconds at a link utilisation of 0.18 (mean 4.5 s before the fix)."""
    nodes = [
        {
            "name": "h100",
            "gpu": "h100-sxm-80gb",
            "count": 1,
            "gpus_per_node": 8,
            "cached_models": ["llama-3-8b"],
        },
        {"name": "a100", "gpu": "a100-80gb", "count": 1, "gpus_per_node": 8, "cached_models": ["llama-3-8b"]},
    ]
    model = {
        "name": "llama-3-8b",
        "serving": "disaggregated",
        "prefill": {"replicas": 2, "min_replicas": 2, "max_replicas": 2, "gpu_types": ["h100-sxm-80gb"]},
        "decode": {"replicas": 6, "min_replicas": 6, "max_replicas": 6, "gpu_types": ["a100-80gb"]},
    }
    over = {"nodes": nodes, "models": [model], "horizon_s": 300, "workload.arrival.rate_per_s": 45,
            "decode_routing": "least_connections"}  # fmt: skip
    k = run_scenario("default", 0, overrides=over)
    assert k["kv_link_utilization"] < 0.25 and k["kv_transfer_mean_s"] < 0.2
    assert k["preemptions"] == 0 and k["slo_attainment"] > 0.98
    sim = Simulator("default", 0, overrides=over)
    sim.advance(100.0)
    for v in sim.replica_views():
        assert v.in_flight == v.queued + v.running + v.kv_transfers_in


def test_both_pools_see_the_models_arrivals_and_latencies_and_their_own_counts():
    raw = scenario(*TWO_TWO, rate=20.0, prompt=4096, output=64, horizon=30.0)
    sim = Simulator(raw, seed=2)
    pending = []
    for step in range(1, 601):
        sim.advance(0.05 * step)
        pre, dec = sim.model_loads()
        pending.append((pre.kv_transfers_pending, dec.kv_transfers_pending))
        # what each pool's replicas hold or receive, summed
        views = sim.replica_views()
        assert pre.kv_transfers_pending == sum(v.kv_transfers_out for v in views if v.role == "prefill")
        assert dec.kv_transfers_pending == sum(v.kv_transfers_in for v in views if v.role == "decode")
        if step % 50:
            continue
        loads, kpi = sim.step_views()
        pre, dec = loads
        # every request arrives at the model, so both pools see all arrivals and completions
        assert pre.arrival_rate_per_s * pre.interval_s == pytest.approx(kpi["requests_arrived"])
        assert dec.arrival_rate_per_s == pre.arrival_rate_per_s
        assert pre.completion_rate_per_s * pre.interval_s == pytest.approx(kpi["requests_completed"])
        for f in ("completion_rate_per_s", "ttft_p99_s", "tpot_p99_s", "slo_attainment"):
            assert getattr(pre, f) == getattr(dec, f), f
        if kpi["requests_completed"] > 0:
            assert pre.ttft_p99_s == kpi["ttft_p99_s"]  # one served model: its requests are all there are
            assert pre.prompt_tokens_mean == 4096 and pre.output_tokens_mean == 64
            assert 0 < pre.tpot_p99_s < 1
        # in flight: the pool's own (until the first token at prefill, then at decode)
        assert pre.in_flight + dec.in_flight == sim.in_system()
    assert any(p > 0 for p, _ in pending) and any(d > 0 for _, d in pending)


def test_an_aggregated_models_view_has_tpot_and_token_means():
    sim = Simulator(scenario(prompt=512, output=32, rate=4.0, horizon=30.0), seed=1)
    sim.advance(30.0)
    (ld,), kpi = sim.step_views()
    assert ld.role == "aggregated" and ld.kv_transfers_pending == 0
    assert ld.prompt_tokens_mean == 512 and ld.output_tokens_mean == 32
    assert kpi["tpot_mean_s"] <= ld.tpot_p99_s < 1.0


# ----------------------------------------------------------------------------- the decode stage's decisions


@pytest.mark.parametrize("rule", ["least_connections", "round_robin", "kv_aware"])
def test_external_decode_decisions_taken_by_a_rule_equal_the_rule_in_the_loop(rule):
    from envs.sim.routing import ROUTERS

    raw = {**scenario(*TWO_TWO, rate=10.0, horizon=60.0), "decode_routing": rule}
    ref = Simulator(raw, seed=4)
    ref.advance(60.0)
    sim = Simulator(raw, seed=4, decode_router="external")
    router = ROUTERS.build(rule, "decode_router")
    decisions = 0
    pending = sim.advance(60.0)
    while pending is not None:
        assert sim.pending_stage == "decode" and sim.pending_request == pending
        assert sim.state.ri[pending, L.R_MODEL] == 1  # counted in the decode pool while it waits
        pending = sim.route(sim.choose_replica(router), until=60.0)
        decisions += 1
    assert sim.pending_stage is None
    assert decisions == sim.episode_kpis()["requests_handed_off"] > 0
    assert sim.episode_kpis() == ref.episode_kpis()
    np.testing.assert_array_equal(sim.state.ri[:, L.R_REPLICA], ref.state.ri[:, L.R_REPLICA])


def test_a_python_router_object_decides_the_decode_stage():
    class EmptiestDecode:
        """Fewest requests queued or running; asked once per handoff."""

        calls = 0

        def reset(self):
            pass

        def choose(self, request, replicas):
            EmptiestDecode.calls += 1
            assert all(v.role == "decode" for v in replicas)
            return min(replicas, key=lambda v: (v.queued + v.running, v.id)).id

    raw = {**scenario(*TWO_TWO, rate=10.0, horizon=60.0), "decode_routing": EmptiestDecode()}
    k = run_scenario(raw, seed=1)
    assert EmptiestDecode.calls == k["requests_handed_off"] > 0
    assert k["requests_arrived"] == k["requests_completed"] + k["requests_dropped"] + k["requests_in_system"]
    with pytest.raises(ConfigError, match=r"decode_routing: 'external' must be a router that decides"):
        load_scenario({**scenario(*TWO_TWO), "decode_routing": "external"})
    with pytest.raises(ConfigError, match=r"decode_router: 'external' needs a model with serving"):
        Simulator(scenario(), seed=0, decode_router="external")
