"""Node failures: what they do to replicas, requests, placement and KPIs; conservation through them."""

from __future__ import annotations

import numpy as np
import pytest

from envs.sim import Simulator, load_scenario, run_scenario
from envs.sim import layout as L
from envs.sim.clock import ControlClock
from envs.sim.errors import ConfigError

ONE_NODE_DOWN = {
    "faults": [{"at_s": 100.0, "pool": "a100", "nodes": [0], "duration_s": 300.0}],
    "horizon_s": 600.0,
}
FLAKY = {"nodes": [{"name": "a100", "gpu": "a100-80gb", "count": 4, "gpus_per_node": 8, "mtbf_s": 900.0,
                    "mttr_s": 200.0}]}  # fmt: skip


FAULT_KPIS = ("node_failures", "spot_preemptions", "replica_crashes", "requests_requeued",
              "requests_lost_to_faults", "gpu_seconds_lost")  # fmt: skip


def held_by_node(sim: Simulator, node: int) -> set[int]:
    """Ids of the requests queued at or running on the replicas of ``node``."""
    reps = {r.rid for r in sim.state.live if r.alloc.node == node}
    req = sim.requests()
    on = np.isin(req.replica, list(reps)) & (req.is_state("queued") | req.is_state("running"))
    return set(np.flatnonzero(on).tolist())


@pytest.mark.parametrize("policy", ["requeue", "drop"])
def test_a_scripted_failure_takes_exactly_the_work_on_that_node(policy):
    sim = Simulator("default", 0, overrides={**ONE_NODE_DOWN, "fault_policy": policy})
    sim.advance(np.nextafter(100.0, 0.0))
    lost = held_by_node(sim, 0)
    reps = [r.rid for r in sim.state.live if r.alloc.node == 0]
    assert lost and reps
    dropped_before = int(sim.state.gi[L.I_NDROP])
    sim.advance(100.0)
    kpi = sim.episode_kpis()
    assert kpi["node_failures"] == 1
    assert all(sim.replica_view(r).state == "released" for r in reps)
    assert sim.replica_view(reps[0]).allocated_at_s == 0.0
    ri = sim.state.ri
    if policy == "requeue":
        assert kpi["requests_requeued"] == len(lost) and kpi["requests_lost_to_faults"] == 0
        # every one is back in a queue (none on a lost replica), its progress gone
        assert all(ri[i, L.R_STATE] == L.REQ_QUEUED and ri[i, L.R_REPLICA] not in reps for i in lost)
        assert np.isnan(sim.state.rf[list(lost), L.R_FIRST]).all()
    else:
        assert kpi["requests_lost_to_faults"] == len(lost) and kpi["requests_requeued"] == 0
        assert int(sim.state.gi[L.I_NDROP]) - dropped_before == len(lost)
        assert all(ri[i, L.R_STATE] == L.REQ_DROPPED for i in lost)
        req = sim.requests()
        assert {req.drop_reason_names[req.drop_reason[i]] for i in lost} == {"failure"}


def test_a_failed_node_takes_nothing_until_its_repair_and_its_weights_are_gone():
    sim = Simulator("default", 0, overrides=ONE_NODE_DOWN)
    sim.advance(100.0)
    assert sim.cluster.cached[0].sum() == 0
    sim.set_target_replicas(0, 12)  # 8 fit on node 1, node 0 is down
    nodes = [r.alloc.node for r in sim.state.live]
    assert nodes.count(1) == 8 and 0 not in nodes
    assert sim.placement_failures == 1  # the 9th found no room
    sim.advance(400.0)  # repaired at 400
    sim.set_target_replicas(0, 12)
    assert [r.alloc.node for r in sim.state.live].count(0) == 4
    assert sim.episode_kpis()["gpu_seconds_lost"] == 8 * 300.0


def test_requests_are_conserved_and_never_counted_twice_through_random_failures():
    sim = Simulator("bursty", 3, overrides={**FLAKY, "scaling": {"kind": "hpa", "metric": "in_flight_per_replica",
                                                                  "target": 16}})  # fmt: skip
    clock = ControlClock(sim)
    summed: dict[str, float] = {}
    while not clock.done:
        clock.advance()
        for k, v in sim.control_step().items():
            if k in FAULT_KPIS:
                summed[k] = summed.get(k, 0.0) + v
        ep = sim.episode_kpis()
        assert ep["requests_arrived"] == ep["requests_completed"] + ep["requests_dropped"] + sim.in_system()
    # each interval reports its own faults: they add up to the episode's
    assert set(summed) == set(FAULT_KPIS)
    assert all(summed[k] == pytest.approx(ep[k], abs=1e-6) for k in FAULT_KPIS)
    gi = sim.state.gi
    done, dropped = sim.state.log_done[: gi[L.I_NDONE]], sim.state.log_drop[: gi[L.I_NDROP]]
    assert len(set(done.tolist())) == len(done) and len(set(dropped.tolist())) == len(dropped)
    assert not set(done.tolist()) & set(dropped.tolist())
    assert ep["node_failures"] >= 3 and ep["requests_requeued"] > 0


def test_faults_leave_the_workload_draws_and_a_seed_fixes_them():
    never = {"nodes": [{"name": "a100", "gpu": "a100-80gb", "count": 2, "gpus_per_node": 8, "mtbf_s": 1e9,
                        "mttr_s": 1.0}]}  # fmt: skip
    a, b = Simulator("default", 5), Simulator("default", 5, overrides=never)
    assert np.array_equal(a.state.rf, b.state.rf, equal_nan=True) and np.array_equal(a.state.ri, b.state.ri)
    assert run_scenario("bursty", 1, overrides=FLAKY) == run_scenario("bursty", 1, overrides=FLAKY)
    assert run_scenario("bursty", 1, overrides=FLAKY) != run_scenario("bursty", 2, overrides=FLAKY)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"nodes": [{"gpu": "a100-80gb", "count": 2, "mtbf_s": 100}]}, r"nodes\[0\]\.mttr_s: None is required with mtbf_s"),
        ({"faults": [{"at_s": 1, "pool": "h100"}]}, r"faults\[0\]\.pool: 'h100' must be a node pool name"),
        ({"faults": [{"at_s": 1, "pool": 0, "nodes": [5]}]}, r"faults\[0\]\.nodes\[0\]: 5 must be < 2"),
        ({"faults": {"at_s": 1}}, r"faults: .* must be a list"),
        ({"fault_policy": "retry"}, r"fault_policy: 'retry' must be one of \['drop', 'requeue'\]"),
    ],
)  # fmt: skip
def test_fault_settings_are_checked(over, message):
    with pytest.raises(ConfigError, match=message):
        load_scenario("default", over)


SPOT = {
    "nodes": [
        {"name": "od", "gpu": "a100-80gb", "count": 1, "gpus_per_node": 8},
        {"name": "spot", "gpu": "a100-80gb", "count": 3, "gpus_per_node": 8,
         "spot": {"price_factor": 0.35, "preemptions_per_hour": 2.0, "down_s": 600.0, "notice_s": 120.0}},
    ],
    "models": [{"name": "llama-3-8b", "replicas": 4, "max_replicas": 32}],
}  # fmt: skip


def test_a_spot_notice_comes_notice_s_before_the_loss_and_is_visible():
    sim = Simulator("default", 2, overrides=SPOT)
    events = sim.faults.events
    notices = [e for e in events if e.kind == 2]
    fails = [e for e in events if e.kind == 0]
    assert notices and len(notices) == len(fails)
    for n, f in zip(notices, fails, strict=True):
        assert n.node == f.node and f.time_s - n.time_s == pytest.approx(min(120.0, f.time_s))
    first = notices[0]
    sim.set_target_replicas(0, 32)  # every GPU, spot nodes included
    sim.advance(first.time_s)
    assert sim.cluster.node_noticed[first.node] and sim.cluster.node_spot[first.node]
    loads = sim.model_loads()
    on_node = sum(1 for r in sim.state.live if r.alloc.node == first.node)
    assert loads[0].replicas_noticed == on_node > 0
    sim.advance(fails[0].time_s)
    assert not sim.cluster.node_noticed[first.node]
    assert sim.episode_kpis()["spot_preemptions"] == 1 and sim.model_loads()[0].replicas_noticed == 0


def test_spot_gpus_cost_their_price_factor_and_spot_aware_placement_prefers_on_demand():
    sim = Simulator("default", 2, overrides={**SPOT, "placement": "spot_aware"})
    sim.set_target_replicas(0, 12)
    nodes = [r.alloc.node for r in sim.state.live]
    assert nodes.count(0) == 8  # the on-demand node fills first
    per_s = {r.alloc.node: r.usd_per_s for r in sim.state.live}
    assert per_s[1] == pytest.approx(0.35 * per_s[0])
    # under a notice, a spot node takes nothing
    sim.cluster.node_noticed[1] = True
    sim.set_target_replicas(0, 16)
    assert [r.alloc.node for r in sim.state.live if r.rid >= 12].count(1) == 0


def test_a_crashed_replica_restarts_on_its_node_and_crashes_come_at_the_configured_rate():
    crashy = {"models": [{"name": "llama-3-8b", "replicas": 4, "max_replicas": 16, "replica_crash_per_hour": 4.0}],
              "horizon_s": 1800.0}  # fmt: skip
    sim = Simulator("default", 0, overrides=crashy)
    crash = next(e for e in sim.faults.events if e.kind == 3)
    sim.advance(np.nextafter(crash.time_s, 0.0))
    ready = sorted(r.rid for r in sim.state.live if sim.replica_view(r.rid).state == "ready")
    k = int(crash.u * 16)
    sim.advance(crash.time_s)
    if k < len(ready):
        victim = sim.replica_view(ready[k])
        assert victim.state == "released"
        newest = sim.replica_view(sim.n_replicas - 1)
        assert newest.state == "loading" and newest.node == victim.node
        assert sim.replicas_of(0)["ready"] + sim.replicas_of(0)["loading"] == 4
    total = sum(run_scenario("default", s, overrides=crashy)["replica_crashes"] for s in range(8))
    expected = 8 * 4 * 4.0 * 0.5  # seeds x replicas x per hour x hours (less the restarts' cold starts)
    assert 0.75 * expected < total <= expected * 1.25


def check_consistent(sim: Simulator) -> None:
    """The engine's counters agree with its requests: per pool queued / running / in flight, the KV
    transfer lists and counts, every replica's private blocks, the queues' lengths, conservation."""
    st = sim.state
    ri, gi, pi, mi, qh, qn = st.ri, st.gi, st.pi, st.mi, st.qh, st.qn
    na, n = int(gi[L.I_NEXT_ARR]), st.n_replicas
    state, model = ri[:na, L.R_STATE], ri[:na, L.R_MODEL]
    for m in range(sim.n_models):
        mine = model == m
        assert mi[m, L.M_QUEUED] == np.count_nonzero(mine & (state == L.REQ_QUEUED)), m
        assert mi[m, L.M_RUNNING] == np.count_nonzero(mine & (state == L.REQ_RUNNING)), m
        flight = (state == L.REQ_QUEUED) | (state == L.REQ_RUNNING) | (state == L.REQ_TRANSFER)
        assert mi[m, L.M_INFLIGHT] == np.count_nonzero(mine & flight), m
    queued = []
    for q in range(qh.shape[0]):
        members = []
        for lst in range(qh.shape[1]):
            i = qh[q, lst]
            while i >= 0:
                members.append(i)
                i = ri[i, L.R_NEXT]
        assert len(members) == qn[q], q
        queued += members
    assert sorted(queued) == np.flatnonzero(state == L.REQ_QUEUED).tolist()
    live = (state == L.REQ_QUEUED) | (state == L.REQ_RUNNING) | (state == L.REQ_TRANSFER)
    for r in range(n):
        fifo, i = [], pi[r, L.Q_XHEAD]
        while i >= 0:
            fifo.append(i)
            i = ri[i, L.R_NEXT]
        assert len(fifo) == pi[r, L.Q_XIN], r
        assert all(ri[i, L.R_STATE] == L.REQ_TRANSFER and ri[i, L.R_REPLICA] == r for i in fifo)
        if pi[r, L.Q_STATE] == L.REP_RELEASED:
            continue
        assert pi[r, L.Q_XOUT] == np.count_nonzero(live & (ri[:na, L.R_KVSRC] == r + 1)), r
        resident = live & (ri[:na, L.R_REPLICA] == r)  # running, in transfer, or queued holding blocks
        blocks = ri[:na, L.R_BLOCKS][resident].sum() + ri[:na, L.R_PBLOCKS][ri[:na, L.R_KVSRC] == r + 1].sum()
        assert pi[r, L.Q_BLKPRIV] == blocks, (r, pi[r, L.Q_BLKPRIV], blocks)
    assert na == int(gi[L.I_NDONE]) + int(gi[L.I_NDROP]) + np.count_nonzero(live)


PD_FAULTS = {
    "nodes": [{"name": "a100", "gpu": "a100-80gb", "count": 4, "gpus_per_node": 2, "mtbf_s": 400.0,
               "mttr_s": 60.0, "cached_models": ["llama-3-8b"]}],
    "models": [{"name": "llama-3-8b", "serving": "disaggregated", "replica_crash_per_hour": 6.0,
                "prefill": {"replicas": 3, "max_replicas": 8}, "decode": {"replicas": 3, "max_replicas": 8}}],
    "workload": {"arrival": {"kind": "poisson", "rate_per_s": 30}},
    "horizon_s": 900.0,
}  # fmt: skip


@pytest.mark.parametrize("policy", ["requeue", "drop"])
def test_disaggregated_serving_through_node_failures_and_crashes(policy):
    """Failures take prefill and decode replicas with KV in transfer between them: every counter stays
    consistent, every request is conserved, and the lost requests restart at the prefill pool."""
    sim = Simulator("disaggregated", 4, overrides={**PD_FAULTS, "fault_policy": policy})
    clock = ControlClock(sim)
    while not clock.done:
        clock.advance()
        check_consistent(sim)
        sim.control_step()  # the static scaler starts replacements for the lost replicas
        check_consistent(sim)
    kpi = sim.episode_kpis()
    assert kpi["node_failures"] >= 3 and kpi["replica_crashes"] >= 1
    moved = kpi["requests_requeued"] if policy == "requeue" else kpi["requests_lost_to_faults"]
    assert moved > 0
    assert kpi["requests_handed_off"] > 0.9 * kpi["requests_completed"]
    again = run_scenario("disaggregated", 4, overrides={**PD_FAULTS, "fault_policy": policy})
    assert again == run_scenario("disaggregated", 4, overrides={**PD_FAULTS, "fault_policy": policy})


def test_a_failed_prefill_replica_takes_the_transfers_it_was_the_source_of():
    """At the instant a prefill replica fails, the requests whose KV it kept for the decode pool, in
    transfer or waiting, go back to the prefill pool; the decode replicas free the blocks they took."""
    # a slow network between nodes: transfers queue up behind each other
    over = {**PD_FAULTS, "nodes": [{**PD_FAULTS["nodes"][0], "mtbf_s": None, "network_gbps": 4.0}],
            "faults": [{"at_s": 200.0, "pool": "a100", "nodes": [0], "duration_s": 100.0},
                       {"at_s": 300.0, "pool": "a100", "nodes": [2], "duration_s": 100.0}]}  # fmt: skip
    over["models"] = [{**PD_FAULTS["models"][0], "replica_crash_per_hour": 0.0}]
    sim = Simulator("disaggregated", 1, overrides=over)
    sim.advance(np.nextafter(200.0, 0.0))
    on_node = {r.rid for r in sim.state.live if r.alloc.node == 0}
    ri = sim.state.ri
    na = int(sim.state.gi[L.I_NEXT_ARR])
    sources = ri[:na, L.R_KVSRC] - 1
    waiting = np.isin(sources, list(on_node)) & np.isin(ri[:na, L.R_STATE], [L.REQ_QUEUED, L.REQ_TRANSFER])
    in_transfer = waiting & (ri[:na, L.R_STATE] == L.REQ_TRANSFER)
    assert on_node and in_transfer.any() and (waiting & ~in_transfer).any()
    decode = [r for r in range(sim.state.n_replicas) if sim.state.pi[r, L.Q_ROLE] == L.ROLE_DECODE]
    kv_before = sim.state.pi[decode, L.Q_BLKPRIV].copy()
    sim.advance(200.0)
    check_consistent(sim)
    back = np.flatnonzero(waiting)
    assert (ri[back, L.R_KVSRC] == 0).all()
    assert set(ri[back, L.R_MODEL].tolist()) == {sim.scenario.model_index("llama-3-8b:prefill")}
    assert (sim.state.pi[decode, L.Q_BLKPRIV] < kv_before).any()  # the blocks taken for their KV, freed
    # then the node of two decode replicas: the transfers into them end, their sources free the KV
    sim.advance(np.nextafter(300.0, 0.0))
    check_consistent(sim)
    lost = {r.rid for r in sim.state.live if r.alloc.node == 2}
    na = int(sim.state.gi[L.I_NEXT_ARR])
    incoming = np.flatnonzero(
        (ri[:na, L.R_STATE] == L.REQ_TRANSFER) & np.isin(ri[:na, L.R_REPLICA], list(lost))
    )
    assert lost and len(incoming) and all(sim.state.pi[r, L.Q_ROLE] == L.ROLE_DECODE for r in lost)
    sources = ri[incoming, L.R_KVSRC] - 1
    xout = {int(p): int(sim.state.pi[p, L.Q_XOUT]) for p in sources}
    sim.advance(300.0)
    check_consistent(sim)
    assert (ri[incoming, L.R_KVSRC] == 0).all() and (ri[incoming, L.R_STATE] != L.REQ_TRANSFER).all()
    for p, before in xout.items():
        assert sim.state.pi[p, L.Q_XOUT] <= before - np.count_nonzero(sources == p)
    sim.advance(500.0)
    check_consistent(sim)
