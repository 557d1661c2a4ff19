"""The least-in-flight index (``Rule.LEAST_IN_FLIGHT``, ``least_connections``) picks exactly what a scan
of the READY replicas in id order picks, through replica churn, array growth, lost nodes, timeouts and
both stages of disaggregated serving."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.routing import in_flight_score
from envs.sim import Simulator
from envs.sim import layout as L
from envs.sim.clock import ControlClock
from envs.sim.routing import RouterSpec, Rule


class ScanLeastConnections:
    """``least_connections`` as a compiled score router: the loop scans every READY replica."""

    name = "scan_least_connections"

    def kernel_spec(self) -> RouterSpec:
        return RouterSpec(Rule.SCORE, in_flight_score)


def _run(scenario: str, overrides: dict, scan: bool) -> Simulator:
    router = ScanLeastConnections() if scan else "least_connections"
    decode = router if scenario == "disaggregated" else None
    sim = Simulator(scenario, 0, overrides=overrides, router=router, decode_router=decode)
    clock = ControlClock(sim)
    while not clock.done:
        clock.advance()
        sim.control_step(kpis=False)
    return sim


CASES = {
    # the bursty load scales the fleet up and down: replicas join and leave the READY lists and the
    # replica arrays grow past their first 16 rows
    "churn": ("bursty", {"horizon_s": 1200, "scaling": {"kind": "hpa", "target": 8}}),
    # spot nodes reclaimed: replicas lost with their work, which is routed again
    "lost nodes": ("spot", {"horizon_s": 3600}),
    # prefill and decode stages both route by fewest in flight; KV caches in transfer count
    "disaggregated": ("disaggregated", {"horizon_s": 600}),
    # overload: requests time out of the replicas' queues (60 s class timeout)
    "timeouts": (
        "default",
        {
            "horizon_s": 300,
            "models": [{"name": "llama-3-8b", "replicas": 3}],
            "workload": {"arrival": {"rate_per_s": 60}},
        },
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_index_picks_what_a_scan_picks(case: str) -> None:
    scenario, overrides = CASES[case]
    fast, scan = _run(scenario, overrides, False), _run(scenario, overrides, True)
    assert fast.state.gi[L.I_LC_ON] == 1 and scan.state.gi[L.I_LC_ON] == 0
    n = fast.n_requests
    np.testing.assert_array_equal(fast.state.ri[:n, L.R_REPLICA], scan.state.ri[:n, L.R_REPLICA])
    assert fast.episode_kpis() == scan.episode_kpis()
    kpis = fast.episode_kpis()
    if case == "churn":
        assert fast.state.replica_rows > 16  # the index was rebuilt after the arrays grew
        assert len({r.rid for r in fast.state.records}) > 3
    if case == "lost nodes":
        assert kpis["spot_preemptions"] > 0 and kpis["requests_requeued"] > 0
    if case == "timeouts":
        assert kpis["requests_dropped"] > 0
