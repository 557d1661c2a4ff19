"""The engine state: sized by what the simulation holds, grown in place without changing a number."""

from __future__ import annotations

import numpy as np

from envs.sim import layout as L
from envs.sim.engine import Simulator
from envs.sim.state import MIN_REPLICA_ROWS

BIG_FLEET = {
    "nodes": [{"name": "a100", "gpu": "a100-80gb", "count": 8, "gpus_per_node": 8}],
    "models": [{"name": "llama-3-8b", "replicas": 2, "min_replicas": 1, "max_replicas": 1_000_000}],
    "horizon_s": 120.0,
}


def test_replica_rows_follow_the_fleet_not_max_replicas():
    sim = Simulator("default", 0, overrides=BIG_FLEET)
    assert sim.state.replica_rows == MIN_REPLICA_ROWS  # not 2 x 1,000,000
    assert sim.state.nbytes() < 8 * 2**20
    sim.set_target_replicas(0, 64)  # 64 GPUs: every one of them
    assert sim.n_replicas == 64
    assert sim.state.replica_rows == 64  # doubled twice from 16
    assert sim.replicas_of(0) == {"ready": 2, "loading": 62, "draining": 0}


def test_growing_the_state_mid_run_changes_no_number():
    """A run that grows its replica arrays equals one whose arrays were large from the start."""
    small = Simulator("default", 3, overrides=BIG_FLEET)
    large = Simulator("default", 3, overrides=BIG_FLEET)
    for _ in range(3):  # pre-grow: 16 -> 128 rows, before anything happens
        large.state._grow_replicas()
    assert large.state.replica_rows == 128 and small.state.replica_rows == 16
    for k, n in enumerate([2, 9, 30, 64, 40, 64], start=1):
        for sim in (small, large):
            sim.set_target_replicas(0, n)
            sim.advance(20.0 * k)
    assert 64 < small.n_replicas <= small.state.replica_rows == 128  # grown twice, mid-run
    assert small.episode_kpis() == large.episode_kpis()
    n = small.n_replicas
    np.testing.assert_array_equal(small.state.pf[:n], large.state.pf[:n])
    np.testing.assert_array_equal(small.state.ri, large.state.ri)


def test_growth_moves_the_batch_rows_of_unreleased_replicas_only():
    sim = Simulator("default", 3, overrides=BIG_FLEET)
    sim.set_target_replicas(0, 12)
    sim.advance(60.0)
    sim.set_target_replicas(0, 4)  # 8 replicas drain their batches, then are released
    sim.advance(100.0)
    st = sim.state
    state = st.pi[: st.n_replicas, L.Q_STATE]
    gone, kept = np.flatnonzero(state == L.REP_RELEASED), np.flatnonzero(state != L.REP_RELEASED)
    assert len(gone) and len(kept) and np.count_nonzero(st.pi[kept, L.Q_NRUN])  # some batches run
    st.run[gone, :] = 7  # stale contents of released rows: nothing reads them
    run, pfl = st.run.copy(), st.pfl.copy()
    st._grow_replicas()
    np.testing.assert_array_equal(st.run[kept], run[kept])
    np.testing.assert_array_equal(st.pfl[kept], pfl[kept])
    assert not st.run[gone].any() and not st.run[len(run) :].any()
    assert np.all(st.pi[gone, L.Q_NRUN] == 0)  # why they need not move


def test_a_simulator_pickled_without_the_replica_caches_still_adds_replicas():
    """A checkpoint's simulator from before the replica templates were cached restores and runs."""
    sim = Simulator("default", 0)
    old = Simulator.__new__(Simulator)
    old.__setstate__({k: v for k, v in sim.__dict__.items() if k not in ("_templates", "_type_order")})
    assert old.set_target_replicas(0, 6) == 6 and old.replicas_of(0)["loading"] == 2
