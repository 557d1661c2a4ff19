"""The cache-aware routers (``prefix_aware``, ``kv_aware``) on workloads with prompt prefixes."""

from __future__ import annotations

import pytest

from baselines.routing import build_router
from envs.sim.engine import Simulator, run_scenario
from envs.sim.errors import ConfigError
from tests.sim.test_paged import ids_for, model, scenario, write_mooncake


def conversations(n_conv=3, turns=6, gap=3.0):
    """Interleaved multi-turn conversations: each turn extends its conversation's blocks."""
    rows, t = [], 0.0
    blocks = {c: list(range(1000 * (c + 1), 1000 * (c + 1) + 4)) for c in range(n_conv)}
    for turn in range(turns):
        for c in range(n_conv):
            ids = blocks[c]
            rows.append((t, len(ids) * 512 - 10, 20, list(ids)))
            blocks[c] = ids + [1000 * (c + 1) + 100 + 2 * turn, 1000 * (c + 1) + 101 + 2 * turn]
            t += gap
    return rows


@pytest.mark.parametrize("router", ["prefix_aware", "kv_aware"])
def test_cache_aware_routers_send_a_conversation_back_to_its_cache(tmp_path, router):
    rows = conversations()
    path = write_mooncake(tmp_path / "conv.jsonl", rows)
    models = [model(replicas=4, min_replicas=4, max_replicas=4)]
    sims = {}
    for name in (router, "round_robin"):
        sims[name] = sim = Simulator(scenario(path, models=models, routing=name), 0)
        sim.advance(600)
    k, rr = sims[router].episode_kpis(), sims["round_robin"].episode_kpis()
    assert k["requests_completed"] == rr["requests_completed"] == len(rows)
    # every later turn finds its whole earlier context: all but the first turn's and the partial blocks
    assert k["prefix_hit_rate"] > 0.6
    assert rr["prefix_hit_rate"] < 0.5 * k["prefix_hit_rate"]
    # one replica per conversation (3 conversations on 4 replicas: round robin rotates them)
    replica = sims[router].requests().replica
    for c in range(3):
        assert len(set(replica[c::3].tolist())) == 1


def test_prefix_aware_falls_back_to_the_least_loaded_when_imbalanced(tmp_path):
    # a shared prefix cached on one replica, then a burst of requests with it
    shared = list(range(7))
    rows = [(0.0, 4000, 400, ids_for(4000, shared=shared))]
    rows += [(2.0 + 0.001 * j, 4000, 400, ids_for(4000, shared=shared, start=100 * j)) for j in range(1, 41)]
    path = write_mooncake(tmp_path / "burst.jsonl", rows)
    models = [model(replicas=4, min_replicas=4, max_replicas=4)]
    tight = {"kind": "prefix_aware", "balance_abs_threshold": 2, "balance_rel_threshold": 1.0}
    spread = Simulator(scenario(path, models=models, routing=tight), 0)
    spread.advance(2.05)
    loose = Simulator(scenario(path, models=models, routing="prefix_aware"), 0)
    loose.advance(2.05)
    in_flight = lambda sim: [v.in_flight for v in sim.replica_views()]  # noqa: E731
    assert max(in_flight(spread)) - min(in_flight(spread)) <= 3  # beyond 2 apart, the least loaded
    assert max(in_flight(loose)) == 41  # within 64 of the others, the cached prefix wins: a hot spot


def test_cache_aware_routers_validate_their_parameters():
    assert build_router({"kind": "kv_aware", "prefix_weight": 1.0}).kernel_spec().params == (1.0, 2.0, 2.0)
    with pytest.raises(ConfigError, match=r"routing\.cache_threshold"):
        build_router({"kind": "prefix_aware", "cache_threshold": 2})
    with pytest.raises(ConfigError, match=r"routing\.queue_weight"):
        build_router({"kind": "kv_aware", "queue_weight": -1})


def test_cache_aware_routers_run_without_prefixes():
    # no prompt hashes (a lognormal workload, reserve engine): they still route by load, deterministically
    for router in ("prefix_aware", "kv_aware"):
        a = run_scenario("default", 1, overrides={"horizon_s": 300, "routing": router})
        b = run_scenario("default", 1, overrides={"horizon_s": 300, "routing": router})
        assert a == b and a["requests_completed"] > 5000
