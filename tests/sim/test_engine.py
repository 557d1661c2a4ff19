"""Engine behaviour: conservation, determinism, replica lifecycle, queues, roofline timing, cost.

Each test builds a small scenario that isolates one mechanism of
:mod:`envs.sim.engine` / :mod:`envs.sim.kernel` and checks it against the number
the documented model predicts (cold-start seconds from weight bytes and storage
bandwidth, TPOT from :func:`envs.sim.perf.iteration_time_s`, cost from $/GPU-hour),
or against an independent count taken from the request arrays. The property
tests run random small scenarios through every kernel router and service kind.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.sim import Simulator, run_scenario, saturation_throughput
from envs.sim import kernel as K
from envs.sim.hardware import GPU_PRESETS, MODEL_PRESETS
from envs.sim.metrics import KPI_KEYS
from envs.sim.perf import iteration_time_s
from envs.sim.routing import ROUTERS

MODEL = "llama-3-8b"
WEIGHT_BYTES = MODEL_PRESETS[MODEL].weight_bytes
REMOTE_BPS, LOCAL_BPS, STARTUP_S = 2e9, 8e9, 20.0  # StorageSpec defaults
KERNEL_ROUTERS = sorted(r for r in ROUTERS if r != "external")


def llm_scenario(**extra: Any) -> dict:
    """Llama-3-8B on the default 2 x 8 A100-80GB, Poisson 0.5 req/s, no replicas until asked."""
    sc = {
        "models": [{"name": MODEL, "replicas": 0, "min_replicas": 0, "max_replicas": 4}],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 0.5}, "classes": [{"name": "c"}]},
        "horizon_s": 600,
        "control_interval_s": 15,
    }
    sc.update(extra)
    return sc


def queue_scenario(rate_per_s: float, replicas: int, routing: str = "round_robin", **extra: Any) -> dict:
    """Unit-mean exponential service (one request at a time per replica), one class."""
    sc = {
        "service": {"kind": "exponential", "mean_s": 1.0},
        "models": [{"name": "m", "replicas": replicas, "max_replicas": 8}],
        "routing": routing,
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": rate_per_s}, "classes": [{"name": "c"}]},
        "horizon_s": 600,
        "control_interval_s": 15,
    }
    sc.update(extra)
    return sc


def run_keeping_sim(scenario: Any, seed: int, check=None, **kw: Any) -> tuple[Simulator, dict[str, float]]:
    """``run_scenario`` that returns the simulator too; ``check(sim, interval_kpis)`` runs every interval."""
    sims: list[Simulator] = []

    def on_interval(sim: Simulator, kpis: dict[str, float]) -> None:
        if not sims:
            sims.append(sim)
        if check is not None:
            check(sim, kpis)

    kpis = run_scenario(scenario, seed, on_interval=on_interval, **kw)
    return sims[0], kpis


def assert_conserved(sim: Simulator) -> None:
    """arrived = completed + dropped + in system, against counts taken from the request state column."""
    n = sim.n_requests
    state = sim.state.ri[:n, K.R_STATE]
    arrived = int(np.count_nonzero(state != K.REQ_FUTURE))
    done = int(np.count_nonzero(state == K.REQ_DONE))
    dropped = int(np.count_nonzero(state == K.REQ_DROPPED))
    queued = int(np.count_nonzero(state == K.REQ_QUEUED))
    running = int(np.count_nonzero(state == K.REQ_RUNNING))
    # every request that arrived by now (events at exactly `now` included) and no other
    assert arrived == int(np.searchsorted(sim.state.rf[:n, K.R_ARR], sim.now, side="right"))
    assert np.all(state[:arrived] != K.REQ_FUTURE) and np.all(state[arrived:] == K.REQ_FUTURE)
    assert int(sim.state.gi[K.I_NDONE]) == done and int(sim.state.gi[K.I_NDROP]) == dropped
    assert sim.in_system() == queued + running == arrived - done - dropped
    assert int(sim.state.mi[:, K.M_INFLIGHT].sum()) == queued + running
    assert int(sim.state.mi[:, K.M_QUEUED].sum()) == queued == int(sim.state.qn.sum())
    assert (
        int(sim.state.mi[:, K.M_RUNNING].sum())
        == running
        == int(sim.state.pi[: sim.n_replicas, K.Q_NRUN].sum())
    )
    # the logs hold each finished request exactly once
    assert set(sim.state.log_done[:done].tolist()) == set(np.flatnonzero(state == K.REQ_DONE).tolist())
    assert set(sim.state.log_drop[:dropped].tolist()) == set(np.flatnonzero(state == K.REQ_DROPPED).tolist())


def assert_request_times_ordered(sim: Simulator) -> None:
    """arrival <= admission < first token <= last token for every completed request."""
    n = sim.n_requests
    done = sim.state.ri[:n, K.R_STATE] == K.REQ_DONE
    f = sim.state.rf[:n][done]
    assert np.all(f[:, K.R_ADMIT] >= f[:, K.R_ARR])
    assert np.all(f[:, K.R_FIRST] > f[:, K.R_ADMIT])
    assert np.all(f[:, K.R_DONE] >= f[:, K.R_FIRST])  # ttft <= e2e
    assert np.all(f[:, K.R_DONE] <= sim.now)
    dropped = sim.state.rf[:n][sim.state.ri[:n, K.R_STATE] == K.REQ_DROPPED]
    assert np.all(dropped[:, K.R_DONE] >= dropped[:, K.R_ARR]) and np.all(dropped[:, K.R_DONE] <= sim.now)


def assert_kpis_in_range(kpis: dict[str, float]) -> None:
    assert all(math.isfinite(kpis[k]) for k in KPI_KEYS)
    assert 0.0 <= kpis["slo_attainment"] <= 1.0
    assert 0.0 <= kpis["utilization"] <= 1.0
    assert kpis["gpu_seconds"] >= 0.0 and kpis["cost_usd"] >= 0.0
    finished = kpis["requests_completed"] + kpis["requests_dropped"] + kpis["requests_unfinished"]
    assert kpis["requests_unfinished"] <= kpis["slo_violations"] <= finished
    if kpis["requests_completed"] > 0:
        assert 0.0 <= kpis["wait_mean_s"] <= kpis["e2e_mean_s"] + 1e-9
        assert kpis["ttft_p50_s"] <= kpis["ttft_p99_s"] + 1e-9


# ----------------------------------------------------------------------------- conservation


def test_conservation_every_interval_with_drops_and_hpa():
    # 60 req/s is above what even 6 replicas serve (~9.3 req/s each): queues build, the
    # 20 s timeout drops requests and the HPA scales from 2 up to its limit.
    sc = llm_scenario(horizon_s=900)
    sc["models"] = [{"name": MODEL, "replicas": 2, "min_replicas": 1, "max_replicas": 6}]
    sc["workload"] = {
        "arrival": {"kind": "poisson", "rate_per_s": 60},
        "classes": [{"name": "c", "slo": {"ttft_s": 2.0}, "timeout_s": 20}],
    }
    sc["scaling"] = {"kind": "hpa", "metric": "in_flight_per_replica", "target": 48}
    totals = dict.fromkeys(("requests_arrived", "requests_completed", "requests_dropped", "gpu_seconds"), 0.0)
    provisioned = []

    def check(sim: Simulator, kpis: dict[str, float]) -> None:
        assert_conserved(sim)
        assert_kpis_in_range(kpis)
        for key in totals:
            totals[key] += kpis[key]
        counts = sim.replicas_of(0)
        provisioned.append(counts["ready"] + counts["loading"])

    sim, episode = run_keeping_sim(sc, 0, check=check)
    assert episode["requests_dropped"] > 100
    assert max(provisioned) == 6 and provisioned[0] > 2
    assert episode["requests_in_system"] == sim.in_system()
    assert (
        episode["requests_arrived"]
        == episode["requests_completed"] + episode["requests_dropped"] + sim.in_system()
    )
    for key, total in totals.items():
        assert total == pytest.approx(episode[key], rel=1e-9)
    assert_request_times_ordered(sim)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["bursty", "multi-model"])
def test_same_seed_same_kpis_other_seed_differs(name: str):
    over = {"horizon_s": 600}
    a = run_scenario(name, 7, overrides=over)
    b = run_scenario(name, 7, overrides=over)
    c = run_scenario(name, 8, overrides=over)
    assert a == b
    assert a != c
    assert a["requests_arrived"] != c["requests_arrived"]


def test_same_seed_same_request_arrays():
    sims = [run_keeping_sim("steady", 3, overrides={"horizon_s": 300})[0] for _ in range(2)]
    np.testing.assert_array_equal(sims[0].state.ri, sims[1].state.ri)
    np.testing.assert_array_equal(
        sims[0].state.rf, sims[1].state.rf
    )  # NaN in the same places counts as equal


# ----------------------------------------------------------------------------- property tests


@st.composite
def small_scenarios(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["roofline", "exponential", "deterministic"]))
    replicas = draw(st.integers(1, 4))
    n_classes = draw(st.integers(1, 2))
    classes = []
    for c in range(n_classes):
        cls: dict[str, Any] = {
            "name": f"c{c}",
            "share": draw(st.floats(0.1, 1.0)),
            "priority": draw(st.integers(0, 2)),
            "slo": {"ttft_s": draw(st.floats(0.05, 10.0)), "e2e_s": draw(st.floats(0.5, 100.0))},
        }
        timeout = draw(st.none() | st.floats(0.5, 60.0))
        if timeout is not None:
            cls["timeout_s"] = timeout
        classes.append(cls)
    workload: dict[str, Any] = {"classes": classes}
    service: dict[str, Any] = {"kind": kind}
    if kind == "roofline":
        workload["arrival"] = {"kind": "poisson", "rate_per_s": draw(st.floats(0.5, 60.0))}
        if draw(st.booleans()):
            workload["sizes"] = {
                "kind": "fixed",
                "prompt": draw(st.integers(1, 3000)),
                "output": draw(st.integers(1, 400)),
            }
    else:
        service["mean_s"] = draw(st.floats(0.05, 2.0))
        load = draw(st.floats(0.1, 3.0))  # offered load per replica: up to 3x overload
        workload["arrival"] = {"kind": "poisson", "rate_per_s": load * replicas / service["mean_s"]}
    scaling = draw(
        st.sampled_from(["static", {"kind": "hpa", "metric": "in_flight_per_replica", "target": 8}])
    )
    return {
        "service": service,
        "models": [
            {
                "name": MODEL,
                "replicas": replicas,
                "min_replicas": 1,
                "max_replicas": draw(st.integers(replicas, 6)),
                "max_batch": draw(st.integers(1, 64)),
            }
        ],
        "workload": workload,
        "routing": draw(st.sampled_from(KERNEL_ROUTERS)),
        "queue": draw(st.sampled_from(["fifo", "priority"])),
        "scaling": scaling,
        "horizon_s": draw(st.floats(60.0, 300.0)),
        "control_interval_s": 15,
    }


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=small_scenarios(), seed=st.integers(0, 2**31 - 1))
def test_invariants_hold_on_random_small_scenarios(scenario: dict, seed: int):
    def check(sim: Simulator, kpis: dict[str, float]) -> None:
        assert_conserved(sim)
        assert_kpis_in_range(kpis)

    sim, episode = run_keeping_sim(scenario, seed, check=check)
    assert_kpis_in_range(episode)
    assert_request_times_ordered(sim)
    assert episode["placement_failures"] == 0  # at most 6 one-GPU replicas on 16 GPUs
    assert sim.now == pytest.approx(scenario["horizon_s"])


# ----------------------------------------------------------------------------- cold starts


def test_scale_up_loads_from_remote_storage_then_becomes_ready():
    sim = Simulator(llm_scenario(), 0)
    sim.advance(10.0)
    sim.set_target_replicas(MODEL, 1)
    assert sim.replicas_of(0) == {"ready": 0, "loading": 1, "draining": 0}
    assert sim.cluster.gpus_in_use() == 1  # GPUs are held (and billed) while loading
    expected = 10.0 + WEIGHT_BYTES / REMOTE_BPS + STARTUP_S
    sim.advance(expected - 1e-6)
    assert sim.replicas_of(0)["loading"] == 1
    sim.advance(expected + 1e-6)
    assert sim.replicas_of(0) == {"ready": 1, "loading": 0, "draining": 0}
    assert sim.state.pf[0, K.P_READY] == pytest.approx(expected, rel=1e-12)


def test_simultaneous_remote_loads_share_the_bandwidth():
    # one-GPU nodes put the two replicas on different nodes, so both load from remote storage
    sim = Simulator(llm_scenario(nodes=[{"gpu": "a100-80gb", "count": 2, "gpus_per_node": 1}]), 0)
    sim.advance(10.0)
    sim.set_target_replicas(MODEL, 2)
    sim.advance(200.0)
    assert [sim.state.records[r].alloc.node for r in range(2)] == [0, 1]
    np.testing.assert_allclose(
        sim.state.pf[:2, K.P_READY], 10.0 + 2 * WEIGHT_BYTES / REMOTE_BPS + STARTUP_S, rtol=1e-12
    )


def test_staggered_remote_loads_follow_processor_sharing():
    # The first load runs alone for d seconds, then both share: the first finishes its transfer
    # at t0 + 2 W / B - d, the second (which then has d B bytes left, at full speed) at t0 + 2 W / B.
    t0, d = 10.0, 2.0
    sim = Simulator(llm_scenario(nodes=[{"gpu": "a100-80gb", "count": 2, "gpus_per_node": 1}]), 0)
    sim.advance(t0)
    sim.set_target_replicas(MODEL, 1)
    sim.advance(t0 + d)
    sim.set_target_replicas(MODEL, 2)
    sim.advance(200.0)
    both = t0 + 2 * WEIGHT_BYTES / REMOTE_BPS + STARTUP_S
    np.testing.assert_allclose(sim.state.pf[:2, K.P_READY], [both - d, both], rtol=1e-12)


def test_cancelled_load_frees_its_gpu_and_its_bandwidth_share():
    # Both loads share the bandwidth for 2 s (1 GB/s each); then the newer one is cancelled and
    # the other gets the full 2 GB/s for its remaining W - 2 GB.
    t0, d = 10.0, 2.0
    sim = Simulator(llm_scenario(nodes=[{"gpu": "a100-80gb", "count": 2, "gpus_per_node": 1}]), 0)
    sim.advance(t0)
    sim.set_target_replicas(MODEL, 2)
    sim.advance(t0 + d)
    sim.set_target_replicas(MODEL, 1)
    assert sim.replicas_of(0) == {"ready": 0, "loading": 1, "draining": 0}
    assert sim.cluster.gpus_in_use() == 1
    assert sim.state.pi[1, K.Q_STATE] == K.REP_RELEASED and sim.state.pf[1, K.P_RELEASE] == t0 + d
    sim.advance(200.0)
    expected = t0 + d + (WEIGHT_BYTES - d * REMOTE_BPS / 2) / REMOTE_BPS + STARTUP_S
    assert sim.state.pf[0, K.P_READY] == pytest.approx(expected, rel=1e-12)
    assert sim.state.pi[1, K.Q_STATE] == K.REP_RELEASED  # its stale READY event was ignored


def test_cached_node_loads_from_local_disk_until_the_ttl_expires():
    nodes = [{"gpu": "a100-80gb", "count": 2, "gpus_per_node": 8, "cached_models": [MODEL]}]
    local = WEIGHT_BYTES / LOCAL_BPS + STARTUP_S
    sim = Simulator(llm_scenario(nodes=nodes, storage={"cache_ttl_s": 60}), 0)
    sim.advance(10.0)
    sim.set_target_replicas(MODEL, 1)
    sim.advance(100.0)
    assert sim.state.pf[0, K.P_READY] == pytest.approx(10.0 + local, rel=1e-12)
    assert sim.state.pf[0, K.P_READY] - 10.0 < WEIGHT_BYTES / REMOTE_BPS + STARTUP_S
    # cached at t=0 with a 60 s TTL: at t=100 the copy is stale, so the load is remote again
    stale = Simulator(llm_scenario(nodes=nodes, storage={"cache_ttl_s": 60}), 0)
    stale.advance(100.0)
    stale.set_target_replicas(MODEL, 1)
    stale.advance(200.0)
    assert stale.state.pf[0, K.P_READY] == pytest.approx(
        100.0 + WEIGHT_BYTES / REMOTE_BPS + STARTUP_S, rel=1e-12
    )


def test_second_load_on_a_node_waits_for_the_weights_to_arrive():
    # Two replicas start together on node 0, which has never held the model. The second must
    # not read the weights from node 0's disk before the first transfer has put them there:
    # whether it shares that transfer or runs its own, it cannot be READY before the first.
    sim = Simulator(llm_scenario(), 0)
    sim.advance(10.0)
    sim.set_target_replicas(MODEL, 2)
    sim.advance(200.0)
    assert [sim.state.records[r].alloc.node for r in range(2)] == [0, 0]
    first, second = sim.state.pf[:2, K.P_READY]
    # neither is local: two remote transfers share the storage bandwidth and finish together
    assert first == pytest.approx(10.0 + 2 * WEIGHT_BYTES / REMOTE_BPS + STARTUP_S, rel=1e-12)
    assert second == pytest.approx(first, rel=1e-12)


# ----------------------------------------------------------------------------- draining, placement


def test_draining_replica_finishes_its_work_then_releases_its_gpus():
    sim = Simulator(queue_scenario(3.5, 4), 0)
    sim.advance(100.0)
    assert sim.cluster.gpus_in_use() == 4
    sim.set_target_replicas(0, 3)
    draining = [r for r in range(4) if sim.state.pi[r, K.Q_STATE] == K.REP_DRAINING]
    assert len(draining) == 1
    r = draining[0]
    mine = np.flatnonzero(sim.state.ri[: sim.n_requests, K.R_REPLICA] == r)
    assert np.count_nonzero(sim.state.ri[mine, K.R_STATE] != K.REQ_DONE) > 0  # it has work left
    assert sim.cluster.gpus_in_use() == 4  # still held while draining
    sim.advance(300.0)
    assert sim.state.pi[r, K.Q_STATE] == K.REP_RELEASED
    assert sim.replicas_of(0) == {"ready": 3, "loading": 0, "draining": 0}
    assert sim.cluster.gpus_in_use() == 3
    # everything it had was served, nothing new was routed to it, and it left at its last completion
    after = np.flatnonzero(sim.state.ri[: sim.n_requests, K.R_REPLICA] == r)
    np.testing.assert_array_equal(after, mine)
    assert np.all(sim.state.ri[mine, K.R_STATE] == K.REQ_DONE)
    assert sim.state.pf[r, K.P_RELEASE] == sim.state.rf[mine, K.R_DONE].max()
    # billing stops at the release
    kpis = sim.episode_kpis()
    assert kpis["gpu_seconds"] == pytest.approx(3 * 300.0 + sim.state.pf[r, K.P_RELEASE], rel=1e-12)


def test_no_room_counts_a_placement_failure_without_raising():
    sim = Simulator(queue_scenario(1.0, 1, nodes=[{"gpu": "a100-80gb", "count": 1, "gpus_per_node": 2}]), 0)
    sim.advance(5.0)
    sim.set_target_replicas(0, 4)
    assert sim.replicas_of(0) == {"ready": 1, "loading": 1, "draining": 0}
    assert sim.placement_failures == 1
    sim.set_target_replicas(0, 4)  # a retry fails again and is counted again
    assert sim.placement_failures == 2
    sim.advance(60.0)
    assert sim.episode_kpis()["placement_failures"] == 2.0
    assert sim.cluster.gpus_in_use() == 2


# ----------------------------------------------------------------------------- queues


def class_waits(sim: Simulator) -> list[float]:
    n = sim.n_requests
    done = sim.state.ri[:n, K.R_STATE] == K.REQ_DONE
    wait = sim.state.rf[:n, K.R_ADMIT] - sim.state.rf[:n, K.R_ARR]
    cls = sim.state.ri[:n, K.R_CLASS]
    return [float(wait[done & (cls == c)].mean()) for c in (0, 1)]


def test_priority_queue_serves_priority_zero_first_under_overload():
    # rho = 1.2 in total, 0.6 from each class. With a priority queue the high class alone is a
    # stable M/M/1 at 0.6 behind a server that is always busy: W_q = 1 s / (1 - 0.6) = 2.5 s
    # (Cobham); the low class gets the leftover 0.4 and its queue grows without bound.
    def scenario(queue: str) -> dict:
        sc = queue_scenario(1.2, 1, routing="central_queue", queue=queue, horizon_s=5000)
        # listed low class first, so the priority (not the list order) must do the work
        sc["workload"]["classes"] = [{"name": "lo", "priority": 1}, {"name": "hi", "priority": 0}]
        return sc

    lo, hi = class_waits(run_keeping_sim(scenario("priority"), 0)[0])
    assert hi == pytest.approx(2.5, rel=0.2)
    assert lo > 200.0
    lo_fifo, hi_fifo = class_waits(run_keeping_sim(scenario("fifo"), 0)[0])
    assert hi_fifo > 200.0 and lo_fifo > 200.0


def test_classes_of_equal_priority_share_one_fifo_queue():
    # Two classes with the same priority must be served in arrival order between them, as with
    # queue: fifo (at rho = 1.2 both then wait ~250 s on average); neither may starve the other.
    sc = queue_scenario(1.2, 1, routing="central_queue", queue="priority", horizon_s=3000)
    sc["workload"]["classes"] = [{"name": "a", "priority": 0}, {"name": "b", "priority": 0}]
    wait_a, wait_b = class_waits(run_keeping_sim(sc, 0)[0])
    assert wait_a > 100.0 and wait_b > 100.0
    assert wait_a == pytest.approx(wait_b, rel=0.2)


def test_queue_timeout_drops_and_records_requests():
    timeout = 5.0
    sc = queue_scenario(2.0, 1, routing="central_queue", horizon_s=1000)
    sc["workload"]["classes"] = [{"name": "c", "slo": {"e2e_s": 100.0}, "timeout_s": timeout}]
    sim, kpis = run_keeping_sim(sc, 0, check=lambda s, _k: assert_conserved(s))
    n = sim.n_requests
    state = sim.state.ri[:n, K.R_STATE]
    dropped = state == K.REQ_DROPPED
    done = state == K.REQ_DONE
    assert kpis["requests_dropped"] == np.count_nonzero(dropped) > 100
    rf = sim.state.rf[:n]
    # a drop is recorded at its deadline and was never admitted
    np.testing.assert_allclose(rf[dropped, K.R_DONE], rf[dropped, K.R_ARR] + timeout, rtol=1e-12)
    assert np.all(np.isnan(rf[dropped, K.R_ADMIT]))
    # nobody was admitted after waiting past the timeout
    assert np.all(rf[done, K.R_ADMIT] - rf[done, K.R_ARR] < timeout)
    # a drop never attains its SLO; every completion here does (e2e <= 5 s wait + service << 100 s)
    slow = np.count_nonzero(rf[done, K.R_DONE] - rf[done, K.R_ARR] > 100.0)
    # requests left at the horizon count as missing their SLO too
    assert kpis["requests_unfinished"] == sim.in_system()
    assert kpis["slo_violations"] == kpis["requests_dropped"] + slow + kpis["requests_unfinished"]


def test_request_too_long_for_the_kv_cache_is_dropped_when_it_reaches_a_replica():
    # kv_memory_fraction 0.21 leaves ~5.6k KV tokens; prompts of up to ~20k tokens do not fit.
    # (The reserve engine; the paged engine's rejections are tested in test_paged.py.)
    sc = llm_scenario()
    sc["models"] = [{"name": MODEL, "replicas": 1, "kv_memory_fraction": 0.21, "kv_policy": "reserve"}]
    sc["workload"]["sizes"] = {"kind": "lognormal", "prompt_mean": 3000, "prompt_p99": 20000}
    sim, kpis = run_keeping_sim(sc, 0, check=lambda s, _k: assert_conserved(s))
    n = sim.n_requests
    cap = sim.state.pi[0, K.Q_KVCAP]
    too_long = sim.state.ri[:n, K.R_PROMPT] + sim.state.ri[:n, K.R_OUTPUT] > cap
    state = sim.state.ri[:n, K.R_STATE]
    assert np.count_nonzero(too_long) > 10
    assert np.all(state[too_long] == K.REQ_DROPPED)
    assert kpis["requests_dropped"] == np.count_nonzero(state == K.REQ_DROPPED)
    # the drop happens when the replica tries to admit it: at or after arrival, by now, and finite
    # (these requests have no timeout, so there is no deadline to stand in for the drop time)
    dropped_at = sim.state.rf[:n][too_long, K.R_DONE]
    assert np.all(np.isfinite(dropped_at))
    assert np.all(dropped_at >= sim.state.rf[:n][too_long, K.R_ARR]) and np.all(dropped_at <= sim.now)


# ----------------------------------------------------------------------------- roofline timing


def test_ttft_is_before_the_last_token():
    sim, kpis = run_keeping_sim("default", 0, overrides={"horizon_s": 300})
    n = sim.n_requests
    done = (sim.state.ri[:n, K.R_STATE] == K.REQ_DONE) & (sim.state.ri[:n, K.R_OUTPUT] > 1)
    assert np.count_nonzero(done) > 1000
    assert np.all(sim.state.rf[:n][done, K.R_FIRST] < sim.state.rf[:n][done, K.R_DONE])
    assert kpis["ttft_p50_s"] < kpis["e2e_mean_s"]
    assert kpis["tpot_mean_s"] > 0


def test_lone_request_ttft_and_tpot_match_the_roofline():
    # At 0.002 req/s requests almost never overlap; each lone request runs one prefill iteration
    # (its TTFT) and output - 1 decode iterations whose KV read grows by one token each.
    prompt, output = 700, 50
    sc = llm_scenario(horizon_s=20_000, control_interval_s=100)
    sc["models"] = [{"name": MODEL, "replicas": 1}]
    sc["workload"] = {
        "arrival": {"kind": "poisson", "rate_per_s": 0.002},
        "sizes": {"kind": "fixed", "prompt": prompt, "output": output},
        "classes": [{"name": "c"}],
    }
    sim, _ = run_keeping_sim(sc, 3)
    n = sim.n_requests
    rf = sim.state.rf[:n]
    assert np.all(sim.state.ri[:n, K.R_STATE] == K.REQ_DONE)
    alone = np.ones(n, bool)
    alone[1:] &= rf[1:, K.R_ARR] > rf[:-1, K.R_DONE]
    alone[:-1] &= rf[1:, K.R_ARR] > rf[:-1, K.R_DONE]
    assert np.count_nonzero(alone) >= 20
    ttft = iteration_time_s("a100-80gb", MODEL, prefill_tokens=prompt)
    decode = [
        iteration_time_s("a100-80gb", MODEL, decode_seqs=1, kv_tokens_read=prompt + j)
        for j in range(1, output)
    ]
    np.testing.assert_allclose(rf[alone, K.R_FIRST] - rf[alone, K.R_ARR], ttft, rtol=1e-9)
    np.testing.assert_allclose(
        (rf[alone, K.R_DONE] - rf[alone, K.R_FIRST]) / (output - 1), np.mean(decode), rtol=1e-9
    )


def test_h100_is_faster_than_a100_on_the_same_load():
    kpis = {
        gpu: run_scenario(
            "default",
            0,
            overrides={"nodes": [{"gpu": gpu, "count": 2, "gpus_per_node": 8}], "horizon_s": 600},
        )
        for gpu in ("a100-80gb", "h100-sxm-80gb")
    }
    a100, h100 = kpis["a100-80gb"], kpis["h100-sxm-80gb"]
    assert h100["requests_arrived"] == a100["requests_arrived"]  # same seed, same requests
    for key in ("e2e_mean_s", "ttft_p50_s", "tpot_mean_s", "wait_mean_s"):
        assert h100[key] < a100[key], key


def test_gpu_cost_is_replicas_times_tp_times_price_times_time():
    horizon = 600.0
    sc = llm_scenario(horizon_s=horizon)
    sc["models"] = [{"name": "llama-2-70b", "replicas": 2, "max_replicas": 4}]  # tensor_parallel 4
    sc["workload"]["arrival"]["rate_per_s"] = 2.0
    kpis = run_scenario(sc, 0)
    usd_per_gpu_s = GPU_PRESETS["a100-80gb"].usd_per_hour / 3600.0
    assert kpis["gpu_seconds"] == pytest.approx(2 * 4 * horizon, rel=1e-12)
    assert kpis["cost_usd"] == pytest.approx(2 * 4 * usd_per_gpu_s * horizon, rel=1e-12)


# ----------------------------------------------------------------------------- saturation


def saturation_scenario(max_batch: int, load: float, replicas: int = 2) -> tuple[dict, float]:
    """The default scenario's sizes on ``replicas`` static replicas at ``load`` x their saturation rate.

    ``saturation_throughput`` is the steady state of the reserve engine (whole prefills, a batch of
    ``max_batch``), so the replicas run ``kv_policy: reserve``."""
    sat = saturation_throughput(
        "a100-80gb", MODEL, prompt_tokens=1155.0, output_tokens=211.0, max_batch=max_batch
    )["requests_per_s"]
    sc = llm_scenario(horizon_s=1200, control_interval_s=60)
    sc["models"] = [{"name": MODEL, "replicas": replicas, "max_batch": max_batch, "kv_policy": "reserve"}]
    sc["workload"] = {
        "arrival": {"kind": "poisson", "rate_per_s": load * replicas * sat},
        "sizes": {"kind": "lognormal", "prompt_mean": 1155.0, "output_mean": 211.0},
        "classes": [{"name": "c"}],
    }
    return sc, replicas * sat


@pytest.mark.parametrize("max_batch", [16, 256])
def test_queue_grows_only_above_the_saturation_throughput(max_batch: int):
    # Least-squares slope of the per-second number in system over the second half of a 20-minute
    # run. Above capacity it grows at about lambda - capacity; below, it is stationary: across
    # seeds the slope scatters by ~0.04/s at max_batch 256, so 2% of lambda (0.3/s) is ~8 sigma.
    for load in (0.85, 1.15):
        sc, capacity = saturation_scenario(max_batch, load)
        sim, _ = run_keeping_sim(sc, 0)
        t = np.arange(600, 1200)
        slope = float(np.polyfit(t, sim.state.tick_inflight[t, 0], 1)[0])
        if load > 1:
            excess = (load - 1.0) * capacity
            assert slope > 0.5 * excess, f"above saturation: grows {slope:.2f}/s, expected ~{excess:.2f}/s"
        else:
            assert abs(slope) < 0.02 * load * capacity, f"below saturation: grows {slope:.2f}/s"


@pytest.mark.parametrize("max_batch", [16, 64, 256])
def test_overloaded_replicas_complete_at_the_saturation_throughput(max_batch: int):
    # At 1.3x overload the replicas never idle; completions per second over the last 10 minutes
    # are their saturation throughput. 10% allows for the mean-value approximation.
    sc, capacity = saturation_scenario(max_batch, 1.3)
    done = []
    run_scenario(sc, 0, on_interval=lambda _s, k: done.append(k["requests_completed"]))
    measured = sum(done[-10:]) / 600.0
    assert measured == pytest.approx(capacity, rel=0.10)
