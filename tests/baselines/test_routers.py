"""Decisions of the engine's request routers on hand-made arrivals, and the Python routers of ``baselines.routing``.

Arrivals come from a small trace file written per test (exact times), served
by one-request-at-a-time deterministic replicas (1 s each) unless GPU speeds
matter; ``ri[:, R_REPLICA]`` then says where every request went.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from baselines.routing import (
    ROUTERS,
    AffinityRouter,
    Router,
    RouterPolicy,
    build_router,
    make_router,
    splitmix64,
)
from envs.sim import Simulator, run_scenario
from envs.sim import kernel as K
from envs.sim.errors import ConfigError
from envs.sim.routing import RouterSpec, Rule, hash64, score_function

_TRACE_IDS = itertools.count()


def write_trace(folder, times_s) -> str:
    """An Azure-format trace with arrivals at ``times_s`` (the first must be 0: traces are re-based).

    Each call writes a new file: the engine caches parsed traces by path.
    """
    path = folder / f"trace{next(_TRACE_IDS)}.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t in times_s:
        sec, micro = divmod(round(t * 1e6), 1_000_000)
        lines.append(f"2024-01-01 00:{sec // 60:02d}:{sec % 60:02d}.{micro:06d},100,10")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def scenario(tmp_path, times_s, router, replicas=3, nodes=None, service=None) -> dict:
    horizon = max(times_s) + 30.0
    return {
        "horizon_s": horizon,
        "control_interval_s": horizon,
        "nodes": nodes or [{"gpu": "a100-80gb", "count": 1, "gpus_per_node": 8}],
        "models": [{"name": "llama-3-8b", "replicas": replicas, "min_replicas": 1, "max_replicas": 8}],
        "service": service or {"kind": "deterministic", "mean_s": 1.0},
        "workload": {
            "arrival": {"kind": "trace", "path": write_trace(tmp_path, times_s)},
            "sizes": {"kind": "trace"},
        },
        "routing": router,
        "scaling": "static",
    }


def routed(sim: Simulator) -> list[int]:
    return sim.state.ri[: sim.n_requests, K.R_REPLICA].tolist()


def run(sc, sessions=None) -> Simulator:
    sim = Simulator(sc, 0)
    if sessions is not None:
        sim.state.ri[: sim.n_requests, K.R_SESSION] = sessions
    sim.advance(sc["horizon_s"])
    return sim


# ----------------------------------------------------------------------------- in-kernel decisions


def test_round_robin_cycles_over_ready_replicas_whatever_the_load(tmp_path):
    sim = run(scenario(tmp_path, [0.01 * k for k in range(8)], "round_robin"))
    assert routed(sim) == [0, 1, 2, 0, 1, 2, 0, 1]


def test_least_connections_prefers_the_idle_replica_then_the_lowest_id(tmp_path):
    # 1 s service: at 0.3 all three hold one request (tie -> r0); at 0.4 r0 holds two;
    # at 1.05 r0 and r2 hold one, r1 two (its second waits behind the first, done at 1.1)
    sim = run(scenario(tmp_path, [0.0, 0.1, 0.2, 0.3, 0.4, 1.05], "least_connections"))
    assert routed(sim) == [0, 1, 2, 0, 1, 0]


def test_random_takes_the_floor_u1_n_th_ready_replica(tmp_path):
    sim = run(scenario(tmp_path, [0.3 * k for k in range(30)], "random"))
    want = np.minimum((sim.state.rf[: sim.n_requests, K.R_U1] * 3).astype(int), 2)
    assert routed(sim) == want.tolist()
    assert len(set(routed(sim))) == 3


def test_power_of_two_keeps_the_first_pick_on_a_tie_and_avoids_the_busier(tmp_path):
    sim = run(scenario(tmp_path, [3.0 * k for k in range(12)], "power_of_two"))
    # spaced arrivals: every replica idle, so the first pick (floor(U1 n)) wins the tie
    want = np.minimum((sim.state.rf[: sim.n_requests, K.R_U1] * 3).astype(int), 2)
    assert routed(sim) == want.tolist()
    # a burst onto 2 replicas: the second request never joins the one already holding the first
    sim = run(scenario(tmp_path, [0.0, 0.01], "power_of_two", replicas=2))
    assert sorted(routed(sim)) == [0, 1]


def test_central_queue_binds_late_to_the_first_free_replica(tmp_path):
    sim = run(scenario(tmp_path, [0.0, 0.1, 0.2, 0.3], "central_queue"))
    assert routed(sim) == [0, 1, 2, 0]  # idle replicas woken lowest id first; the 4th waits for r0
    assert sim.state.rf[3, K.R_ADMIT] == pytest.approx(1.0)


def test_least_time_tries_unmeasured_replicas_first(tmp_path):
    # spaced arrivals: least_connections would send all to r0; least_time measures each replica
    # once, then with equal EWMA latencies (1 s) behaves as least connections (ties -> r0)
    sim = run(scenario(tmp_path, [0.0, 2.0, 4.0, 6.0, 8.0], "least_time"))
    assert routed(sim) == [0, 1, 2, 0, 0]
    np.testing.assert_allclose(sim.state.pf[:3, K.P_EWMA], 1.0)


def ring_order(sim: Simulator, session: int) -> list[int]:
    """Replica ids clockwise from the session's point on the engine's hash ring."""
    hashes = {r: splitmix64(r + 1) >> 1 for r in range(sim.n_replicas)}
    key = splitmix64(session)
    ring = sorted(hashes, key=hashes.get)
    start = next((k for k, r in enumerate(ring) if hashes[r] >= key), 0)
    return ring[start:] + ring[:start]


def test_affinity_keeps_a_session_on_its_ring_replica_until_the_load_bound(tmp_path):
    sc = scenario(tmp_path, [2.0 * k for k in range(6)], "affinity")
    sim = run(sc, sessions=7)
    order = ring_order(sim, 7)
    assert routed(sim) == [order[0]] * 6
    np.testing.assert_array_equal(sim.state.pi[:3, K.Q_HASH], [splitmix64(r + 1) >> 1 for r in range(3)])
    # a burst of three: the second finds the owner at the bound (in flight 1 + 1 > ceil(1.25 * 2 / 3) = 1)
    # and spills clockwise; the third fits on the owner again (1 + 1 <= ceil(1.25 * 3 / 3) = 2)
    sim = run(scenario(tmp_path, [0.0, 0.01, 0.02], "affinity"), sessions=7)
    assert routed(sim) == [order[0], order[1], order[0]]
    # a looser bound keeps the burst together: ceil(3.5 * 2 / 3) = 3 and ceil(3.5 * 3 / 3) = 4
    sim = run(scenario(tmp_path, [0.0, 0.01, 0.02], {"kind": "affinity", "load_bound_eps": 2.5}), sessions=7)
    assert routed(sim) == [order[0]] * 3


def test_affinity_spreads_different_sessions(tmp_path):
    sessions = np.arange(60) * 17
    sim = run(scenario(tmp_path, [2.0 * k for k in range(60)], "affinity"), sessions=sessions)
    assert routed(sim) == [ring_order(sim, int(s))[0] for s in sessions]
    assert len(set(routed(sim))) == 3


HETERO_NODES = [  # first fit puts replica 0 on the L4 and replica 1 on the H100
    {"gpu": "l4", "count": 1, "gpus_per_node": 1},
    {"gpu": "h100-sxm-80gb", "count": 1, "gpus_per_node": 1},
]


def test_sed_prefers_the_faster_gpu_where_least_connections_and_min_load_take_the_lowest_id(tmp_path):
    times = [5.0 * k for k in range(5)]
    sims = {
        name: run(scenario(tmp_path, times, name, replicas=2, nodes=HETERO_NODES, service="roofline"))
        for name in ("shortest_expected_delay", "least_connections", "min_load")
    }
    speed = sims["min_load"].state.pf[:2, K.P_SPEED]
    assert speed[1] > 2 * speed[0]  # the H100 replica is much faster
    assert routed(sims["shortest_expected_delay"]) == [1] * 5
    assert routed(sims["least_connections"]) == [0] * 5
    assert routed(sims["min_load"]) == [0] * 5  # 0 / speed ties: lowest id


def test_sed_sends_a_burst_to_the_fast_gpu_until_its_expected_delay_is_longer(tmp_path):
    sim = run(scenario(tmp_path, [0.0001 * k for k in range(30)], "shortest_expected_delay", replicas=2,
                       nodes=HETERO_NODES, service="roofline"))  # fmt: skip
    speed = sim.state.pf[:2, K.P_SPEED]
    # nothing finishes within the 3 ms burst, so each arrival takes the lowest (n_r + 1) / speed_r:
    # ~20 to the H100 (about 20x the L4's capacity) before the L4 gets one
    n, want = [0, 0], []
    for _ in range(30):
        r = 1 if (n[1] + 1) / speed[1] < (n[0] + 1) / speed[0] else 0
        want.append(r)
        n[r] += 1
    assert routed(sim) == want
    assert 0 < n[0] < n[1]  # both used, the H100 more


def test_weighted_round_robin_shares_are_proportional_to_replica_speed():
    sim = Simulator("heterogeneous", 0, overrides={"horizon_s": 60.0}, router="weighted_round_robin")
    sim.advance(60.0)
    n = sim.n_requests
    counts = np.bincount(sim.state.ri[:n, K.R_REPLICA], minlength=sim.n_replicas)
    speed = sim.state.pf[: sim.n_replicas, K.P_SPEED]
    assert len(np.unique(np.round(speed, 6))) == 3  # three GPU types
    # smooth WRR: every prefix is within one pick per replica of the exact share
    assert np.all(np.abs(counts - n * speed / speed.sum()) <= sim.n_replicas)


# ----------------------------------------------------------------------------- replaying and custom routers


@pytest.mark.parametrize("name", sorted(n for n in ROUTERS if n not in ("external", "central_queue")))
def test_choose_replica_replays_the_engine_router(name):
    """Every request of a heterogeneous run routed by Simulator.choose_replica lands where the router sends it."""
    over = {"horizon_s": 90.0}
    ref = Simulator("heterogeneous", 11, overrides=over, router=name)
    ref.advance(90.0)
    sim = Simulator("heterogeneous", 11, overrides=over, router="external")
    spec = build_router(name).kernel_spec()
    i = sim.advance(90.0)
    while i is not None:
        sim.route(sim.choose_replica(spec))
        i = sim.advance(90.0)
    np.testing.assert_array_equal(sim.state.ri[:, K.R_REPLICA], ref.state.ri[:, K.R_REPLICA])
    assert sim.episode_kpis() == ref.episode_kpis()


class PyLeastConnections:
    """least_connections as a Python callable router over the views."""

    def choose(self, request, replicas):
        best = min(replicas, key=lambda r: (r.in_flight, r.id), default=None)
        return -1 if best is None else best.id


@score_function
def my_expected_delay(in_flight, queued, running, max_batch, kv_reserved_tokens, kv_capacity_tokens, speed_rps,
                      latency_ewma_s, prompt_tokens, cached_prefix_tokens):  # fmt: skip
    return (in_flight + 1.0) / speed_rps


class MySed:
    def kernel_spec(self):
        return RouterSpec(Rule.SCORE, my_expected_delay)


@pytest.mark.parametrize(("custom", "builtin"), [(PyLeastConnections(), "least_connections"),
                                                   (MySed(), "shortest_expected_delay")])  # fmt: skip
def test_custom_routers_match_the_builtin_they_reimplement(custom, builtin):
    over = {"horizon_s": 120.0}
    assert run_scenario("heterogeneous", 3, overrides={**over, "routing": custom}) == run_scenario(
        "heterogeneous", 3, overrides={**over, "routing": builtin}
    )
    ref = Simulator("heterogeneous", 3, overrides=over, router=builtin)
    sim = Simulator("heterogeneous", 3, overrides=over, router=custom)
    ref.advance(120.0)
    sim.advance(120.0)
    np.testing.assert_array_equal(sim.state.ri[:, K.R_REPLICA], ref.state.ri[:, K.R_REPLICA])


def test_a_registered_custom_router_is_usable_by_name():
    ROUTERS.register("test_my_sed", MySed)
    try:
        kpis = run_scenario("default", 0, overrides={"horizon_s": 60.0, "routing": "test_my_sed"})
        assert kpis == run_scenario(
            "default", 0, overrides={"horizon_s": 60.0, "routing": "shortest_expected_delay"}
        )
    finally:
        ROUTERS.unregister("test_my_sed")


def test_score_function_checks_its_arguments():
    with pytest.raises(TypeError, match="must take"):
        score_function(lambda in_flight: 0.0)


def test_python_router_bad_answer_is_a_named_error():
    class Bad:
        def choose(self, request, replicas):
            return 10_000

    with pytest.raises(ValueError, match="router.choose: 10000 is not a READY replica"):
        run_scenario("default", 0, overrides={"horizon_s": 30.0, "routing": Bad()})


def test_splitmix64_is_the_engine_hash():
    for x in (0, 1, 7, 1023, 2**40 + 3):
        assert splitmix64(x) == int(hash64(np.uint64(x)))


# ----------------------------------------------------------------------------- registry and make_router


def test_registry_covers_every_router_with_a_source():
    assert {"external", "central_queue", "least_connections", "affinity"} <= set(ROUTERS)
    for name in ROUTERS:
        cls = ROUTERS[name]
        assert cls.name == name and len(cls.source) > 10
        if name != "external":
            assert issubclass(cls, Router)


def test_make_router_returns_what_the_engine_takes():
    assert make_router("least_connections") == "least_connections"
    assert make_router({"kind": "affinity"}) == {"kind": "affinity", "load_bound_eps": 0.25}
    assert make_router({"kind": "affinity", "load_bound_eps": 0.5}) == {
        "kind": "affinity",
        "load_bound_eps": 0.5,
    }
    assert make_router(AffinityRouter(load_bound_eps=1.0)) == {"kind": "affinity", "load_bound_eps": 1.0}
    assert make_router("external") == "external"
    sim = Simulator("default", 0, overrides={"horizon_s": 15.0}, router=make_router({"kind": "affinity"}))
    assert sim.router_name == "affinity" and sim.state.gf[K.G_AFFINITY_EPS] == 0.25


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("least_conn", r"routing: 'least_conn' must be one of"),
        ({"kind": "nope"}, r"routing\.kind: 'nope' must be one of"),
        ({"load_bound_eps": 0.1}, r"routing\.kind: required key is missing"),
        ({"kind": "affinity", "load_bound_eps": -1}, r"routing\.load_bound_eps: -1 must be >= 0"),
        ({"kind": "affinity", "load_bound_eps": "x"}, r"routing\.load_bound_eps: 'x' must be a number"),
        ({"kind": "affinity", "eps": 0.1}, r"routing\.eps: unknown key"),
        ({"kind": "round_robin", "weight": 2}, r"routing\.weight: unknown key"),
        (3, r"routing: 3 must be a router name"),
    ],
)
def test_make_router_errors_name_the_key_and_value(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_router(spec)


def test_make_router_error_uses_the_given_path():
    with pytest.raises(ConfigError, match=r"env\.router\.load_bound_eps: -2"):
        make_router({"kind": "affinity", "load_bound_eps": -2}, path="env.router")


def test_router_policy_refuses_central_queue_and_unknown_routers():
    with pytest.raises(ConfigError, match="central_queue"):
        RouterPolicy("central_queue")
    with pytest.raises(ConfigError, match=r"policy: 'fastest' must be one of"):
        RouterPolicy("fastest")


def test_a_pickled_simulator_with_a_score_router_continues_in_another_process(tmp_path):
    """The score function's entry point is per process: unpickling must point the loop at the new one."""
    import pickle
    import subprocess
    import sys

    sim = Simulator("heterogeneous", 5, overrides={"horizon_s": 90.0}, router="shortest_expected_delay")
    sim.advance(45.0)
    (tmp_path / "sim.pkl").write_bytes(pickle.dumps(sim))
    sim.advance(90.0)
    code = (
        "import pickle, sys; import envs; sim = pickle.load(open(sys.argv[1], 'rb')); sim.advance(90.0); "
        "print(repr(sim.episode_kpis()))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sim.pkl")], capture_output=True, text=True,
                         check=True, timeout=300)  # fmt: skip
    assert out.stdout.strip() == repr(sim.episode_kpis())
